"""Site: render the static pages, feeds and JSON files from state.

Pure rendering, no event loop: htmlgen.py owns the loop and calls update()
with the builds its hints name, and rebuild() at start and on its rescan
timer.  docs/site.md describes the pages and the JSON files for their
readers; this docstring says how they are kept cheap.  Output layout, with
relative links only, so it reads the same through any web server, from
file://, or copied elsewhere (B is a builder, N a build number):

    index.html                  the waterfall's first page: the newest builds
    waterfall/K.html            older waterfall pages, 1 the oldest (sealed)
    console.html                revisions against builders
    builders.html               every builder and its last result
    atom.xml                    the newest finished builds
    builders/B/index.html       B's newest builds
    builders/B/history/C.html   B's builds (C-1)*HISTORY_PAGE+1 .. C*HISTORY_PAGE
    builders/B/atom.xml         B's newest finished builds
    builders/B/badge.svg        B's last result
    builders/B/N/index.html     a build
    builders/B/N/NN-STEP.html   a step's log, its first lines
    builders/B/N/NN-STEP.txt    the whole log: a hard link to state's
                                NN-STEP.log (a copy across filesystems)
    builders/B/N/.final         FINAL_MARK: these pages are done
    api/builders.json, api/builders/B/index.json,
    api/builders/B/history/C.json, api/builders/B/builds/N.json
    .buildunits-site.json       INDEX: what an update must remember

Every file is replaced atomically (temp + rename), so a web server never
serves half a page; without fsync, since the site is derived data that a
rebuild recreates.  Within a pass, a build's pages come before the pages
that link to them, and api/builders.json comes last of the public files:
when it names a build, the whole pass that put it there is visible.

What an update costs.  Pages that show a finished build only never change,
so they are written once: a build's pages (then .final), a full history
page of a builder (HISTORY_PAGE consecutive numbers, all finished), a
sealed waterfall page.  The rest are head pages, rewritten as builds come:
the waterfall's first page, the console, the builders' first pages, the
feeds, badges and JSON lists.  Each shows a bounded number of builds, held
in memory as cards (card()), so an update reads the records it is told
about or finds new, renders those builds and the heads, and never lists or
reads the history:

- New numbers are found through the counter hint builds/B/next.json (and
  a probe for the directory after it, since the counter is written after
  the number is taken), never by listing a builder's directory.
- The waterfall's first page holds the builds not yet sealed: from
  WaterfallDepth= (S) to twice that.  When 2*S are waiting, the oldest S
  (each builder's part a run of numbers, so that "sealed" is one number
  per builder) become page K+1, written once they are all finished (or
  at 4*S waiting, finished or not: then again as they finish).
- A builder's first page shows the numbers above HISTORY_PAGE *
  (known // HISTORY_PAGE - 1): at least one page's worth.  A history page
  is written when its last number is taken, and again only if one of its
  builds was still running or its record appeared late.  A page that
  would hold no build is skipped (numbers that jump would make billions).
- A finished build looks the same on every head that shows it, so its
  waterfall cell, history row, console box, feed entry and JSON summary
  are rendered once and kept with its card (_fragment).
- INDEX remembers, per builder, the highest number known, how far the
  waterfall and history pages go, the last finished build, and the
  numbers not final yet (running, or taken without a record so far).  A
  new process reads it and the records of the builds its heads show;
  without it (or with another FINAL_MARK) it renders everything again,
  skipping builds whose .final is current.

A crash costs a second rendering of what was being written, nothing else;
so does a pass that fails (a full disk): INDEX is written last, and the
next pass starts again from it.
A number taken without a record (a gap) is waited for until GAP_PATIENCE
later numbers are taken; one that shows up after its waterfall page was
sealed is on its builder's pages only.

Log pages show at most MAX_LOG_LINES lines or MAX_LOG_BYTES bytes, read
line by line as the page is written, so memory does not grow with a log.
All record text is hostile: templates escape it, links are made only from
builder names (quoted) and numbers, and text that XML cannot carry
(control characters, lone surrogates) is replaced by U+FFFD.
"""

import contextlib
import heapq
import json
import os
import time
import uuid
from urllib.parse import quote

from . import fsutil, log, sitefiles, siteviews, templates
from .sitelogs import LogPages
from .siteviews import build_json, build_view, card
from .siteviews import (card_order as _card_order, card_time as _card_time, num as _num,
                        safe_name as _safe_name, sort_time as _sort_time, text as _str)
from .siteviews import _is_int

FINAL_MARK = "buildunits-site 2\n"   # bump when finished builds' pages must be rendered again
INDEX = ".buildunits-site.json"
INDEX_VERSION = 1
HISTORY_PAGE = 50                    # builds per history page; changing it needs a new FINAL_MARK
GAP_PATIENCE = 10                    # later numbers taken before a number without a record is a gap
MAX_CATCHUP = 10000                  # more new numbers than this at once: list the directory instead
FEED_ENTRIES = 30                    # at most HISTORY_PAGE: the cards in memory must cover them
CONSOLE_ROWS = 50
CONSOLE_CELL = 3                     # builds shown in a console cell
MAX_QUEUED_SHOWN = 5                 # per builder on the waterfall
REFRESH_SEC = 60                     # pages that change: heads, running builds
_UNREAD = object()

# Badge colours by result word: (background, text).  Never from records.
BADGE_COLOURS = {
    "success": ("#2e7d32", "#fff"), "warnings": ("#e69500", "#000"), "failure": ("#c62828", "#fff"),
    "exception": ("#8e24aa", "#fff"), "retry": ("#d7a6a6", "#000"), "cancelled": ("#8d8080", "#fff"),
    "skipped": ("#4aa3a3", "#000"), "running": ("#e6d800", "#000"),
}
BADGE_OTHER = ("#9e9e9e", "#000")


class _Builder:
    """What the site remembers of one builder."""

    def __init__(self, name):
        self.name = name
        self.q = quote(name, safe="")   # the name as one URL path segment
        self.known = 0          # the highest number known to be taken
        self.sealed = 0         # numbers up to this are on older waterfall pages
        self.pages = 0          # history pages 1..pages are written, but for the skipped
        self.skipped = []       # [first, last] ranges of history pages without builds, ascending
        self.unfinal = set()    # numbers <= known whose pages are not final yet
        self.last = None        # the newest finished build: {"number", "status", "finished"}
        self.cards = {}         # number -> card: the builds head pages show, and running ones
        self.stamps = {}        # number -> State.build_stamp its card was made from
        self.recs = {}          # number -> record of a running build
        self.listed_for = None  # the counter value that made us list the directory

    def head_floor(self):
        """The builder's first page shows the numbers above this."""
        return HISTORY_PAGE * max(0, self.known // HISTORY_PAGE - 1)

    def page_below(self, page):
        """The history page written before PAGE (0 if none)."""
        page -= 1
        for first, last in reversed(self.skipped):
            if first <= page <= last:
                page = first - 1
        return max(0, page)

    def unskip(self, page):
        for i, (first, last) in enumerate(self.skipped):
            if first <= page <= last:
                self.skipped[i:i + 1] = [r for r in ([first, page - 1], [page + 1, last]) if r[0] <= r[1]]
                return

    def numbers(self, low, high):
        """The numbers in (LOW, HIGH] but those on skipped pages: a jump of
        the counter (a lie, or a restore) costs nothing."""
        n = low + 1
        for first, last in self.skipped:
            start, end = (first - 1) * HISTORY_PAGE + 1, last * HISTORY_PAGE
            if end < n:
                continue
            yield from range(n, min(start, high + 1))
            n = max(n, end + 1)
        yield from range(n, high + 1)

    def index_entry(self):
        return {"known": self.known, "sealed": self.sealed, "pages": self.pages,
                "skipped": self.skipped, "unfinal": sorted(self.unfinal), "last": self.last}


class Site:
    """The files under SITE_DIR, rendered from STATE, SPOOL and CFG."""

    def __init__(self, site_dir, state, spool, cfg):
        self.root = site_dir
        self.state = state
        self.spool = spool
        self.cfg = cfg           # htmlgen replaces it on reload
        self._warned = set()     # unreadable build records already logged
        self._loaded = False
        self._index_stamp = None  # INDEX as this process last wrote it
        self.files = sitefiles.SiteFiles(site_dir)
        self.logs = LogPages(self.files, state)
        self._reset()

    def _reset(self):
        self._b = {}             # name -> _Builder
        self._names = []         # the builders of this pass
        self.files.forget_dirs()
        self._badge_words = {}   # builder -> the word its badge shows
        self._wf_pages = 0       # older waterfall pages 1.._wf_pages are written
        self._wf_open = {}       # page -> {"members": [(B, n)], "waiting": {(B, n)}}: not final yet
        self.logs.forget_all()
        self._pieces = {}        # (B, n) -> {(template, root): a finished build's piece of a page}
        self._all = True         # render every head page in this pass
        self._dirty = set()      # builders whose head pages must be rendered
        self._finished = set()   # builders with a newly finished build (feeds)
        self._badges = set()     # builders whose last result changed
        self._dirty_pages = set()  # (B, history page) to render again
        self._dirty_wf = set()   # sealed waterfall pages to render again

    # ------------------------------------------------------------------ API
    def update(self, touched, force=False):
        """Bring the site up to date after the builds in TOUCHED ((builder,
        number) pairs) changed; also finds new and running builds without
        a hint.  FORCE renders the touched builds even if final.  Returns
        the number of files written (pages, feeds, JSON; not the marks)."""
        self.files.count = 0
        if self._loaded and self._index_stamp != sitefiles.stamp(os.path.join(self.root, INDEX)):
            self._loaded = False  # another process (buildunits-htmlgen --rebuild) wrote the site
        with self._forget_on_failure():
            if not self._loaded and not self._load():
                return self._generate(None, force=False)
            self._pass(touched, force)
        return self.files.count

    def rebuild(self, progress=None, force=False):
        """Bring everything up to date.  FORCE renders every page again from
        state, reading every record; otherwise a site this process (or its
        INDEX) knows only gets its head pages again, and one it does not
        know is rendered, skipping builds whose .final is current.
        PROGRESS(done, total) is called after each build.  Returns the
        number of files written."""
        self.files.count = 0
        if self._index_stamp != sitefiles.stamp(os.path.join(self.root, INDEX)):
            self._loaded = False
        with self._forget_on_failure():
            if force or not (self._loaded or self._load()):
                return self._generate(progress, force)
            self._all = True
            self._pass([], False)
        if progress:
            progress(1, 1)
        return self.files.count

    @contextlib.contextmanager
    def _forget_on_failure(self):
        """A pass that fails (a full disk) may leave memory ahead of the
        files: the next one starts again from INDEX, which is written last."""
        try:
            yield
        except BaseException:
            self._loaded = False
            raise

    # ---------------------------------------------------------------- paths
    def build_dir(self, builder, number):
        return os.path.join(self.root, "builders", builder, str(number))

    # ------------------------------------------------------------ the passes
    def _pass(self, touched, force):
        """One incremental update (see the module docstring)."""
        names = self._names = self._builder_names()
        forced, hints = set(), {}
        for builder, number in touched:
            if (builder in names and isinstance(number, int) and not isinstance(number, bool)
                    and number > 0):
                forced.add((builder, number))
                hints[builder] = max(hints.get(builder, 0), number)
        todo = set(forced)
        for name in names:
            b = self._builder(name)
            for n in self._catch_up(b, hints.get(name, 0)):
                todo.add((name, n))
            todo.update((name, n) for n in b.unfinal)
        for name, n in sorted(todo):
            self._visit(self._b[name], n, force=force and (name, n) in forced)
        self._finish()

    def _generate(self, progress, force):
        """Render the whole site from state, reading every record once, in
        the order the builds started (a merge of the builders' histories)."""
        self._reset()
        self._loaded = True
        names = self._names = self._builder_names()
        numbers = {name: self.state.build_numbers(name) for name in names}
        for name, nums in numbers.items():
            b = self._builder(name)
            b.known = nums[-1] if nums else 0
            self._catch_up(b)
            have = set(nums)
            # Recent numbers without a directory: wait for them like gaps.
            b.unfinal.update(n for n in range(max(1, b.known - GAP_PATIENCE + 1), b.known + 1)
                             if n not in have)
        total = sum(len(n) for n in numbers.values()) + 1
        streams = [self._stream(name, nums) for name, nums in numbers.items()]
        done = 0
        for _, name, n, rec, stamp in heapq.merge(*streams, key=lambda item: item[:3]):
            b = self._b[name]
            self._visit(b, n, force=force, rec=rec, stamp=stamp, by_file=not force)
            if n % HISTORY_PAGE == 0 or n == b.known:
                self._complete_pages(b, n // HISTORY_PAGE)
            done += 1
            if done % 16 == 0:
                self._seal()
                self._prune(b)
            if progress:
                progress(done, total)
        for name in names:
            b = self._b[name]
            b.unfinal = {n for n in b.unfinal if n > b.known - GAP_PATIENCE or n in b.recs}
        self._all = True
        self._finish()
        self._remove_stale_waterfall_pages()
        if progress:
            progress(total, total)
        return self.files.count

    def _stream(self, name, numbers):
        """(start time, name, number, record or None, stat) of each build of
        NAME, read lazily, for the merge."""
        when = 0.0
        for n in numbers:
            stamp = self.state.build_stamp(name, n)
            rec = self._read(name, n) if stamp else None
            if rec is not None:
                when = max(when, _sort_time(rec))
            yield when, name, n, rec, stamp

    def _finish(self):
        """The end of every pass: pages that became full, sealing, the
        pages a changed build is on, the heads, then INDEX."""
        for b in self._b.values():
            self._complete_pages(b, b.known // HISTORY_PAGE)
        self._seal()
        for name, page in sorted(self._dirty_pages):
            b = self._b[name]
            if page <= b.pages:
                b.unskip(page)  # a record that came late, alone on its page
                self._render_history(b, page)
        for page in sorted(self._dirty_wf):
            if page in self._wf_open:
                o = self._wf_open[page]
                self._render_waterfall_page(page, [self._card_for(self._b[name], n)
                                                   for name, n in o["members"] if name in self._b])
                if not o["waiting"]:
                    del self._wf_open[page]
        self._render_heads()
        for b in self._b.values():
            self._prune(b)
        self._save_index()
        self._all = False
        self._dirty.clear()
        self._finished.clear()
        self._badges.clear()
        self._dirty_pages.clear()
        self._dirty_wf.clear()

    # ------------------------------------------------------ what is known
    def _builder_names(self):
        """The builders: configured, or in the history."""
        names = set(self.cfg.builders) | set(self.state.builders())
        return sorted(n for n in names if _safe_name(n))

    def _builder(self, name):
        b = self._b.get(name)
        if b is None:
            b = self._b[name] = _Builder(name)
            self._dirty.add(name)
        return b

    def _catch_up(self, b, hint=0):
        """The numbers of B taken since the last pass (now in b.unfinal)."""
        latest = b.known
        nxt = self.state.read_counter(b.name)
        if nxt is not None:
            latest = max(latest, nxt - 1)
        if hint > latest and os.path.isdir(self.state.build_dir(b.name, hint)):
            latest = hint
        if latest - b.known > MAX_CATCHUP and b.listed_for != (nxt, hint):
            # A long absence, or a counter that lies (once per lie): ask the directory.
            b.listed_for = (nxt, hint)
            new = [n for n in self.state.build_numbers(b.name) if n > b.known]
        elif latest - b.known > MAX_CATCHUP:
            new = []
        else:
            # The counter is written after the number is taken: look one further.
            while os.path.isdir(self.state.build_dir(b.name, latest + 1)):
                latest += 1
            new = list(range(b.known + 1, latest + 1))
        if new:
            b.known = max(b.known, new[-1])
            b.unfinal.update(new)
        return new

    def _read(self, builder, number):
        """The build record, or None (a gap, or unreadable: logged once)."""
        try:
            rec = self.state.read_build(builder, number)
        except (OSError, ValueError) as e:
            if (builder, number) not in self._warned:
                self._warned.add((builder, number))
                log.warning("%s #%d: build record unreadable, not shown: %s" % (builder, number, e),
                            builder=builder, build=number)
            return None
        if not isinstance(rec, dict):
            return None
        return dict(rec, builder=builder, number=number)  # the directory names the build

    def _card_for(self, b, n):
        """The card of B #N, read if it is not in memory; None for a gap."""
        c = b.cards.get(n)
        if c is None:
            rec = self._read(b.name, n)
            if rec is not None:
                c = b.cards[n] = card(build_view(rec))
        return c

    def _is_final_file(self, b, n):
        try:
            with open(os.path.join(self.build_dir(b.name, n), ".final"), encoding="utf-8") as f:
                return f.read() == FINAL_MARK
        except (OSError, ValueError):
            return False

    # ------------------------------------------------------------ one build
    def _visit(self, b, n, force=False, rec=_UNREAD, stamp=None, by_file=False):
        """Bring B #N's pages and card up to date.  By_file: whether its
        pages are final is read from .final (a site not known yet)."""
        if n > b.known:
            return
        if by_file:
            final = self._is_final_file(b, n)
        else:
            final = n not in b.unfinal
            if final and not force:
                return
        if rec is _UNREAD:
            # build.json and a running build's progress file (state.py).
            stamp = self.state.build_stamp(b.name, n)
            if stamp is not None and not force and stamp == b.stamps.get(n) and n in b.recs:
                rec = b.recs[n]        # a running build whose record did not change
            else:
                rec = self._read(b.name, n) if stamp is not None else None
        if rec is None:
            self._gap(b, n)
            return
        changed = force or stamp != b.stamps.get(n) or n not in b.cards
        view = build_view(rec)   # the one reshaping of the record; the card is made of it
        c = card(view) if changed else b.cards[n]
        b.cards[n] = c
        b.stamps[n] = stamp
        finished = c["state"] == "finished"
        if force or not final:
            self._render_build(b, n, view, c, pages=changed, force=force)
        if finished:
            b.unfinal.discard(n)
            b.recs.pop(n, None)
            if b.last is None or n >= b.last["number"]:
                last = {"number": n, "status": c["status"], "finished": c["finished"]}
                if last != b.last:
                    b.last = last
                    self._badges.add(b.name)
        else:
            b.unfinal.add(n)
            b.recs[n] = rec
        if not changed or (final and not force):
            return  # nothing another page shows has changed
        self._dirty.add(b.name)
        if finished:
            self._finished.add(b.name)
        self._pieces.pop((b.name, n), None)
        page = (n - 1) // HISTORY_PAGE + 1
        if page <= b.pages:
            self._dirty_pages.add((b.name, page))
        for k, o in self._wf_open.items():
            if (b.name, n) in o["waiting"]:
                self._dirty_wf.add(k)
                if finished:
                    o["waiting"].discard((b.name, n))

    def _gap(self, b, n):
        """B #N has no readable record: wait for it, for a while."""
        if b.known - n >= GAP_PATIENCE:
            b.unfinal.discard(n)
        else:
            b.unfinal.add(n)

    def _render_build(self, b, n, view, c, pages, force):
        """Write a build's log pages (those whose log or step changed) and,
        if PAGES, its page and JSON; then .final once it is finished."""
        bdir = self.build_dir(b.name, n)
        self.files.mkdir(bdir)
        running = view["state"] != "finished"
        for step in view["steps"]:
            if step["log_page"]:
                self.logs.render(bdir, view, step, self.cfg.title, force)
        if pages or not running:
            page = templates.render("build.html", title="%s #%d" % (view["builder"], n), root="../../../",
                                    refresh=REFRESH_SEC if running else 0, site_title=self.cfg.title,
                                    feed="builders/%s/atom.xml" % b.q, build=view,
                                    builder_html="builders/%s/index.html" % b.q, json=c["json"])
            self.files.write(os.path.join(bdir, "index.html"), page)
            self._write_json(c["json"], build_json(view))
        if not running:
            fsutil.write_atomic(os.path.join(bdir, ".final"), FINAL_MARK, durable=False)
            self.logs.forget(bdir)

    def follow_logs(self):
        """Write again the log pages of running steps whose log changed
        since their page was written, and nothing else: htmlgen calls this
        every few seconds while builds run, so a log page follows its log.
        What it costs is one lstat per running step, and a page per log
        that grew.  Returns the number of pages written, or None when no
        build is running (or the site is not loaded): nothing to follow."""
        if not self._loaded or self._index_stamp != sitefiles.stamp(os.path.join(self.root, INDEX)):
            return None
        self.files.count = 0
        running = False
        for b in self._b.values():
            for n, rec in sorted(b.recs.items()):
                running = True
                bdir = self.build_dir(b.name, n)
                grew = self.logs.grew(bdir, b.name, n, rec)
                if grew:
                    view = build_view(rec)
                    for step in view["steps"]:
                        if step["log_page"][:-len(".html")] in grew:
                            self.logs.render(bdir, view, step, self.cfg.title, force=False)
        return self.files.count if running else None

    # ---------------------------------------------------- pages of history
    def _complete_pages(self, b, full):
        """Write B's history pages up to FULL that are full and not written.
        A page without a build is skipped: after a jump of the numbers,
        there could be billions.  Every build on a page not written yet has
        its card in memory (see _prune)."""
        if b.pages >= full:
            return
        have = sorted({(n - 1) // HISTORY_PAGE + 1 for n in b.cards if n > b.pages * HISTORY_PAGE})
        for page in have + [full + 1]:
            page = min(page, full + 1)
            if page > b.pages + 1:
                if b.skipped and b.skipped[-1][1] == b.pages:
                    b.skipped[-1][1] = page - 1
                else:
                    b.skipped.append([b.pages + 1, page - 1])
                b.pages = page - 1
            if page > full:
                break
            b.pages = page
            self._render_history(b, page)

    def _render_history(self, b, page):
        first, last = (page - 1) * HISTORY_PAGE + 1, page * HISTORY_PAGE
        builds = [c for c in (self._card_for(b, n) for n in range(last, first - 1, -1)) if c]
        below = b.page_below(page)
        older = "builders/%s/history/%d.html" % (b.q, below) if below else ""
        newer = ("builders/%s/history/%d.html" % (b.q, page + 1) if page < b.pages
                 else "builders/%s/index.html" % b.q)
        pager = {"newer": newer, "older": older, "pages": []}
        self._write_page("builders/%s/history/%d.html" % (b.q, page), "builder.html",
                         title="%s: builds %d to %d" % (_str(b.name), first, last), root="../../../",
                         refresh=0, head=False, builder=self._column(b, {}),
                         rows=[templates.fragment("row.html", b=c, root="../../../") for c in builds],
                         pager=pager, page_range=(first, last))
        self._write_json("api/builders/%s/history/%d.json" % (b.q, page),
                         siteviews.history_doc(b, page, first, last, builds), builds)

    def _seal(self):
        """Move the oldest builds of the waterfall's first page to a page of
        their own while it holds twice WaterfallDepth= (module docstring)."""
        size = max(1, int(self.cfg.waterfall_depth))
        while True:
            waiting = [c for b in self._b.values() for n, c in b.cards.items() if n > b.sealed]
            if len(waiting) < 2 * size:
                return
            waiting.sort(key=_card_order)
            marks = {}
            for c in waiting[:size]:
                marks[c["builder"]] = max(marks.get(c["builder"], 0), c["number"])
            members = [c for c in waiting if c["number"] <= marks.get(c["builder"], 0)]
            running = {(c["builder"], c["number"]) for c in members if c["state"] != "finished"}
            if running and len(waiting) < 4 * size:
                return
            self._wf_pages += 1
            for name, number in marks.items():
                self._b[name].sealed = number
            self._render_waterfall_page(self._wf_pages, members)
            if running:
                self._wf_open[self._wf_pages] = {
                    "members": [(c["builder"], c["number"]) for c in members], "waiting": running}

    def _render_waterfall_page(self, page, cards):
        cards = [c for c in cards if c]
        names = sorted({c["builder"] for c in cards})
        columns = [self._column(self._b[name], {}) for name in names]
        older = "waterfall/%d.html" % (page - 1) if page > 1 else ""
        newer = "waterfall/%d.html" % (page + 1) if page < self._wf_pages else "index.html"
        self._write_page("waterfall/%d.html" % page, "waterfall.html",
                         title="%s: older builds, page %d" % (self.cfg.title, page), root="../",
                         refresh=0, head=False, columns=columns,
                         rows=self._rows(cards, names, "../"),
                         pager={"newer": newer, "older": older, "pages": []},
                         any_queued=False, max_queued=MAX_QUEUED_SHOWN)

    def _remove_stale_waterfall_pages(self):
        """After a full rendering: older pages of a previous one beyond ours."""
        try:
            names = os.listdir(self.files.path("waterfall"))
        except FileNotFoundError:
            return
        for name in names:
            stem, dot, ext = name.partition(".")
            if ext == "html" and stem.isdigit() and int(stem) > self._wf_pages:
                fsutil._unlink_quietly(os.path.join(self.files.path("waterfall"), name))

    # --------------------------------------------------------- head pages
    def _render_heads(self):
        queued = self._queued()
        bs = [self._b[name] for name in self._names if name in self._b]
        columns = [self._column(b, queued) for b in bs]
        common = dict(root="", refresh=REFRESH_SEC, feed="atom.xml")
        heads = [c for b in bs for n, c in b.cards.items() if n > b.sealed]
        older = "waterfall/%d.html" % self._wf_pages if self._wf_pages else ""
        pages = [("page %d" % k, "waterfall/%d.html" % k)
                 for k in range(self._wf_pages - 1, max(0, self._wf_pages - 5), -1)]
        if self._wf_pages > 5:
            pages.append(("page 1 (oldest)", "waterfall/1.html"))
        self._write_page("index.html", "waterfall.html", title=self.cfg.title, head=True,
                         columns=columns, rows=self._rows(heads, [b.name for b in bs], ""),
                         pager={"newer": "", "older": older, "pages": pages},
                         any_queued=any(c["queued"] for c in columns), max_queued=MAX_QUEUED_SHOWN,
                         **common)
        self._write_page("builders.html", "builders.html", title="%s: builders" % self.cfg.title,
                         columns=columns, **common)
        if self._all or self._dirty:
            self._write_page("console.html", "console.html", title="%s: console" % self.cfg.title,
                             columns=columns, rows=self._console_rows(bs), **common)
        if self._all or self._finished:
            cards = [c for b in bs for c in b.cards.values()]
            self._write_feed("atom.xml", "", "index.html", self.cfg.title, cards, "")
        for b, column in zip(bs, columns):
            if self._all or b.name in self._dirty:
                self._render_builder_head(b, column)
            if self._all or b.name in self._finished:
                self._write_feed("builders/%s/atom.xml" % b.q, "../../", "builders/%s/index.html" % b.q,
                                 "%s: %s" % (self.cfg.title, _str(b.name)), b.cards.values(), b.name)
            if self._all or b.name in self._badges:
                word = b.last["status"] if b.last else "no builds"
                if self._all or self._badge_words.get(b.name) != word:
                    self._write_badge(b, word)
                    self._badge_words[b.name] = word
        # Last, so a reader that sees a build here finds every page of the
        # pass that put it there: the build's own, the heads, feeds, badges.
        self._write_json("api/builders.json", siteviews.builders_doc(self.cfg.title, columns, time.time()))

    def _render_builder_head(self, b, column):
        floor = b.head_floor()
        builds = [b.cards[n] for n in sorted(b.cards, reverse=True) if n > floor]
        top = b.page_below(floor // HISTORY_PAGE + 1)
        older = "builders/%s/history/%d.html" % (b.q, top) if top else ""
        # Every history page is linked from here or from its neighbours,
        # also those that overlap this page's builds.
        near, k = [], b.page_below(b.pages + 1)
        while k and len(near) < 5:
            near.append(k)
            k = b.page_below(k)
        if k:
            near.append(b.skipped[0][1] + 1 if b.skipped and b.skipped[0][0] == 1 else 1)
        pages = [("builds %d-%d" % ((k - 1) * HISTORY_PAGE + 1, k * HISTORY_PAGE),
                  "builders/%s/history/%d.html" % (b.q, k)) for k in near]
        self._write_page("builders/%s/index.html" % b.q, "builder.html", title=_str(b.name),
                         root="../../", refresh=REFRESH_SEC, feed="builders/%s/atom.xml" % b.q, head=True,
                         builder=column, rows=[self._fragment("row.html", c, "../../") for c in builds],
                         pager={"newer": "", "older": older, "pages": pages},
                         page_range=None)
        self._write_json(column["json"], siteviews.builder_doc(b, column, HISTORY_PAGE), builds)

    def _column(self, b, queued):
        """A builder as the heads show it (also its entry in api/builders.json)."""
        return siteviews.column(b, self.cfg.builders.get(b.name), queued.get(b.name, []))

    def _rows(self, cards, names, root):
        """Waterfall rows, newest first: builds of one revision that follow
        each other share a row, one per builder."""
        index = {name: i for i, name in enumerate(names)}
        rows, last_day = [], None
        for c in sorted(cards, key=_card_order, reverse=True):
            col = index.get(c["builder"])
            if col is None:
                continue
            row = rows[-1] if rows else None
            if not (row and c["revision"] and row["revision"] == c["revision"] and row["cells"][col] is None):
                row = {"revision": c["revision"], "started": _card_time(c) or None,
                       "changes": self._fragment("changes.html", c, root), "cells": [None] * len(names), "day": ""}
                rows.append(row)
            row["cells"][col] = self._fragment("cell.html", c, root)
        for row in rows:
            day = time.strftime("%Y-%m-%d", time.localtime(row["started"])) if row["started"] else ""
            row["day"] = day if day != last_day else ""
            last_day = day
        return rows

    def _fragment(self, template, c, root):
        """TEMPLATE rendered for card C: once for a finished build (per
        ROOT), since the head pages show it again on every update."""
        if c["state"] != "finished":
            return self._make_piece(template, c, root)
        pieces = self._pieces.setdefault((c["builder"], c["number"]), {})
        piece = pieces.get((template, root))
        if piece is None:
            piece = pieces[(template, root)] = self._make_piece(template, c, root)
        return piece

    @staticmethod
    def _make_piece(template, c, root):
        if template == "json":
            return json.dumps(c, ensure_ascii=True, separators=(",", ":"))
        if template == "entry.xml":
            c = dict(c, id=_urn("build", c["builder"], c["number"], c["started"]), summary=_feed_summary(c))
        return templates.fragment(template, b=c, root=root)

    def _console_rows(self, bs):
        """Console rows: a revision each, newest first, from the cards in memory."""
        index = {b.name: i for i, b in enumerate(bs)}
        groups = {}
        for b in bs:
            for c in b.cards.values():
                key = c["revision"] or (c["builder"], c["number"])
                groups.setdefault(key, []).append(c)
        rows = []
        for cards in groups.values():
            cards.sort(key=_card_order, reverse=True)
            lead = next((c for c in cards if c["changes"]), cards[-1])
            cells = [[] for _ in bs]
            for c in cards:
                cells[index[c["builder"]]].append(c)
            rows.append({"started": min(_card_time(c) for c in cards) or None, "lead": lead,
                         "branch": lead["branch"], "cells": cells, "order": _card_order(cards[-1])})
        rows.sort(key=lambda r: r["order"], reverse=True)
        rows = rows[:CONSOLE_ROWS]
        for row in rows:
            row["changes"] = self._fragment("changes.html", row.pop("lead"), "")
            row["cells"] = [{"boxes": [self._fragment("consolebox.html", c, "") for c in cell[:CONSOLE_CELL]],
                             "more": max(0, len(cell) - CONSOLE_CELL)} for cell in row["cells"]]
        return rows

    def _write_feed(self, rel, root, alternate, title, cards, builder):
        entries = sorted((c for c in cards if c["state"] == "finished" and c["finished"] is not None),
                         key=lambda c: (c["finished"], c["builder"], c["number"]), reverse=True)
        updated = entries[0]["finished"] if entries else 0.0
        entries = [self._fragment("entry.xml", c, root) for c in entries[:FEED_ENTRIES]]
        text = templates.render("atom.xml", title=_str(title), root=root, self_path=rel, alternate=alternate,
                                feed_id=_urn("feed", self.cfg.title, builder), updated=updated, entries=entries)
        self.files.write(self.files.path(rel), text)

    def _write_badge(self, b, word):
        label = _str(b.name)
        if len(label) > 40:
            label = label[:39] + "\u2026"
        bg, fg = BADGE_COLOURS.get(word, BADGE_OTHER)
        svg = templates.render("badge.svg", label=label, word=word, colour=bg, text=fg,
                               label_width=_text_width(label), word_width=_text_width(word))
        self.files.write(self.files.path("builders/%s/badge.svg" % b.q), svg)

    def _queued(self):
        """{builder: [request, ...]} oldest first, from the spool."""
        out = {}
        for rid in self.spool.pending("requests"):
            req = self.spool.read("requests", rid)
            if isinstance(req, dict) and isinstance(req.get("builder"), str):
                out.setdefault(req["builder"], []).append(req)
        return out

    # -------------------------------------------------------------- INDEX
    def _load(self):
        """Take up where INDEX says a previous process stopped; False if
        there is none usable (the caller then renders everything)."""
        try:
            with open(os.path.join(self.root, INDEX), encoding="utf-8") as f:
                idx = json.load(f)
            if (idx.get("format") != "site-index" or idx.get("version") != INDEX_VERSION
                    or idx.get("mark") != FINAL_MARK or idx.get("history_page") != HISTORY_PAGE):
                return False
            self._reset()
            wf = idx["waterfall"]
            self._wf_pages = _count(wf["pages"])
            for o in wf["open"]:
                members = [(str(m[0]), _count(m[1])) for m in o["members"]]
                self._wf_open[_count(o["page"])] = {
                    "members": members, "waiting": {(str(m[0]), _count(m[1])) for m in o["waiting"]}}
            for name, e in idx["builders"].items():
                if not _safe_name(name):
                    continue
                b = self._b[name] = _Builder(name)
                b.known, b.sealed, b.pages = _count(e["known"]), _count(e["sealed"]), _count(e["pages"])
                b.unfinal = {_count(n) for n in e["unfinal"]}
                b.skipped = [[_count(lo), _count(hi)] for lo, hi in e["skipped"]]
                last = e["last"]
                if last is not None:
                    b.last = {"number": _count(last["number"]), "status": _str(last["status"]),
                              "finished": _num(last["finished"])}
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            self._reset()
            return False
        self._loaded = True
        self._all = True
        # The cards the head pages show; running builds are visited by the pass.
        for b in self._b.values():
            for n in b.numbers(min(b.sealed, b.head_floor(), b.pages * HISTORY_PAGE), b.known):
                if n not in b.unfinal:
                    self._card_for(b, n)
        return True

    def _save_index(self):
        idx = {"format": "site-index", "version": INDEX_VERSION, "mark": FINAL_MARK,
               "history_page": HISTORY_PAGE,
               "waterfall": {"pages": self._wf_pages, "open": [
                   {"page": k, "members": o["members"], "waiting": sorted(o["waiting"])}
                   for k, o in sorted(self._wf_open.items())]},
               "builders": {name: b.index_entry() for name, b in sorted(self._b.items())}}
        self.files.mkdir(self.root)
        path = os.path.join(self.root, INDEX)
        fsutil.write_atomic(path, json.dumps(idx, ensure_ascii=True) + "\n", durable=False)
        self._index_stamp = sitefiles.stamp(path)

    def _prune(self, b):
        """Forget the cards of finished builds no head page shows and no
        history page still to be written needs."""
        floor = min(b.sealed, b.head_floor(), b.pages * HISTORY_PAGE)
        for n in [n for n, c in b.cards.items() if n <= floor and c["state"] == "finished"]:
            del b.cards[n]
            b.stamps.pop(n, None)
            self._pieces.pop((b.name, n), None)

    # ------------------------------------------------------------- writing
    def _write_page(self, rel, template, **context):
        context.setdefault("site_title", self.cfg.title)
        self.files.write_page(rel, template, **context)

    def _write_json(self, rel, doc, builds=None):
        """DOC as JSON; BUILDS (cards) as its last key, from their pieces."""
        self.files.write_json(rel, doc, None if builds is None else
                              [self._fragment("json", c, "") for c in builds])


def _feed_summary(c):
    parts = ["%s after %s." % (c["status"], templates.timespan(c["duration"])) if c["duration"] is not None
             else "%s." % c["status"]]
    steps = ["%s %s%s" % (s["name"], s["status"], " (%s)" % s["summary"] if s["summary"] else "")
             for s in c["steps"] if s["state"] != "pending"]
    if steps:
        parts.append("Steps: %s." % ", ".join(steps))
    if c["changes"]:
        parts.append("Changes: %s." % "; ".join("%s %s: %s" % (templates.shortrev(ch["revision"]),
                                                                 templates.who(ch["author"]), ch["subject"])
                                                 for ch in c["changes"]))
    elif c["revision"]:
        parts.append("Revision %s." % c["revision"])
    if c["reason"]:
        parts.append(c["reason"])
    return " ".join(parts)


def _urn(*parts):
    """A stable Atom id: a name-based UUID of PARTS."""
    return "urn:uuid:%s" % uuid.uuid5(uuid.NAMESPACE_URL, "buildunits:" + json.dumps(parts, default=str))


def _text_width(text):
    """About how wide TEXT is in 11px Verdana, plus padding: a badge's part."""
    return 10 + int(sum(4.5 if ch in "fijlrt.,:;' |" else 8.5 if ch in "mwMW@" else 7 for ch in text))



def _count(v):
    if not _is_int(v) or v < 0:
        raise ValueError("not a count: %r" % (v,))
    return v
