"""Site: the engine of the static site: its passes, and what triggers what.

Pure rendering, no event loop: htmlgen.py owns the loop and calls update()
with the builds its hints name, rebuild() at start and on its rescan
timer, and follow_logs() while builds run.  docs/site.md describes the
pages and the JSON files for their readers; this docstring says how they
are kept cheap.  The work is shared out so:

    site.py        the passes: which builds to read, which pages to write
    siteviews.py   what a page or JSON file shows of a record (pure)
    sitepages.py   the pages of many builds, feeds, badges, a build's page
    sitelogs.py    a step's log page, following a running step's log
    siteindex.py   what the site remembers (cards, INDEX) and its decisions
    sitefiles.py   atomic writes, raw logs linked or copied

Within a pass, a build's pages come before the pages that link to them,
and api/builders.json comes last of the public files (then INDEX): when
it names a build, the whole pass that put it there is visible.

What an update costs.  Pages that show a finished build only never change,
so they are written once: a build's pages (then .final, holding
FINAL_MARK), a full history page of a builder (HISTORY_PAGE consecutive
numbers, all finished), a sealed waterfall page.  The rest are head pages,
rewritten as builds come: the waterfall's first page, the console, the
builders' first pages, the feeds, badges and JSON lists.  Each shows a
bounded number of builds, held in memory as cards (siteviews.card), so an
update reads the records it is told about or finds new, renders those
builds and the heads, and never lists or reads the history:

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
  pieces of the heads are rendered once (sitepages.Pages.fragment).
- INDEX (siteindex) remembers, per builder, the highest number known, how
  far the waterfall and history pages go, the last finished build, and
  the numbers not final yet.  A new process reads it and the records of
  the builds its heads show; without it (or with another FINAL_MARK) it
  renders everything again, skipping builds whose .final is current, the
  builds' pages by worker processes (_render_pool), or, heads first
  (htmlgen), only the heads and their builds until a child wrote INDEX
  (_provisional_load).

A pass with nothing new writes nothing: the heads are rendered only when
a build, the builders, the older waterfall pages or the queue they show
changed, and INDEX only when its text did.  A builder's counter is looked
at by one lstat and read when it changed (sitesource.catch_up): by a pass
named by hints, only the hinted builders' (_pass).

A finished build's page is written again only when a hint names it and
what it shows from outside its record changed: its markers (a pin, logs
or artifacts removed, a notification given up: MARKERS), or the builds
linked to it and from it (LINKS: a downstream build that started or
ended, a linked build removed; see "links between builds" below).

A crash costs a second rendering of what was being written, nothing else;
so does a pass that fails (a full disk): INDEX is written last, and the
next pass starts again from it.
A number taken without a record (a gap) is waited for until GAP_PATIENCE
later numbers are taken; one that shows up after its waterfall page was
sealed is on its builder's pages only.
"""

import bisect
import contextlib
import fcntl
import heapq
import json
import os
import time
import stat

from . import fsutil, sitefill, sitefiles, siteindex, templates  # noqa: F401 (fsutil: what the tests see write)
from .siteindex import HISTORY_PAGE, INDEX
from .sitelogs import LogPages
from .sitepages import MAX_QUEUED_SHOWN, Pages
from .sitesource import Source
from .numbers import parse_number
from .siteviews import LINKS_TO, annotate, build_view, card, card_order, link_targets, removed_card, safe_name

FINAL_MARK = "buildunits-site 2\n"   # bump when finished builds' pages must be rendered again
MARKERS = ".markers"                 # beside .final: the markers the pages show (State.marker_stamp)
LINKS = ".links"                     # beside .final: the builds linked to it and from it (_add_links)
LINKS_LOCK = ".buildunits-links.lock"  # held while a .links is read and replaced (another process: the fill)
LINKS_VERSION = 1
GAP_PATIENCE = 10                    # later numbers taken before a number without a record is a gap
PARALLEL_MIN_BUILDS = 400            # a full rendering of fewer builds stays in one process
MAX_WORKERS = 8
_UNREAD = object()


class Site:
    """The files under SITE_DIR, rendered from STATE, SPOOL and CFG."""

    def __init__(self, site_dir, state, spool, cfg, workers=None):
        self.root = site_dir
        self.state = state
        self.spool = spool
        self.cfg = cfg           # htmlgen replaces it on reload
        self._loaded = False
        self._index_stamp = None  # INDEX as this process last wrote it
        self.source = Source(state, spool)
        self.files = sitefiles.SiteFiles(site_dir)
        self.logs = LogPages(self.files, state)
        self.pages = Pages(self.files)
        # Worker processes of a full rendering (sitefill.Pool); None: one
        # per CPU when there are PARALLEL_MIN_BUILDS builds or more.
        self.workers = workers
        # Heads first (a number of builds, or None): a site without a
        # usable INDEX whose history holds at least that many builds gets
        # only its head pages (and the builds they show), and keeps
        # needs_fill set until the full rendering, done elsewhere
        # (htmlgen's fill), wrote INDEX (_provisional_load).
        self.heads_first = None
        self.needs_fill = False
        # A full rendering's links ({(B, N): [entry]}), written at its end
        # (_reconcile_links), and the pages to render again then.
        self._collect = None
        self._relink = set()
        self._reset()

    def _reset(self):
        self._b = {}             # name -> siteindex.Builder
        self._names = []         # the builders of this pass
        self.files.forget_dirs()
        self._wf_pages = 0       # older waterfall pages 1.._wf_pages are written
        self._wf_open = {}       # page -> {"members": [(B, n)], "waiting": {(B, n)}}: not final yet
        self._wf_seals = {}      # page -> {B: [first, last]}: the numbers of B it holds (removals)
        self._seal_index = None  # {B: [(first, last, page)]} of _wf_seals, made when needed
        self._seals_json = None  # (_wf_seals, its length, its JSON): INDEX's seals, encoded once
        self._dirty_sealed = set()  # sealed waterfall pages holding a build removed
        self.logs.forget_all()
        self.pages.forget()
        self._all = True         # render every head page in this pass
        self._dirty = set()      # builders whose head pages must be rendered
        self._finished = set()   # builders with a newly finished build (feeds)
        self._badges = set()     # builders whose last result changed
        self._dirty_pages = set()  # (B, history page) to render again
        self._dirty_wf = set()   # sealed waterfall pages to render again
        self._touched = set()    # builders whose numbers, builds or seal changed in this pass
        self._index_text = None  # INDEX's text as this process last wrote it
        self._index_entries = {}  # builder -> its entry in INDEX's text (siteindex.save)
        self._shown = None       # (builders, older waterfall pages, queue) the heads show
        self._provisional = False  # the heads of a site whose full rendering is under way

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
                if not self._heads_first():
                    return self._generate(None, force=False)
                self._provisional_load()
            self._pass(touched, force)
        return self.files.count

    def rebuild(self, progress=None, force=False, touched=()):
        """Bring everything up to date.  FORCE renders every page again from
        state, reading every record; otherwise a site this process (or its
        INDEX) knows only gets its head pages again, and one it does not
        know is rendered, skipping builds whose .final is current.
        PROGRESS(done, total) is called after each build.  Returns the
        number of files written."""
        self.files.count = 0
        if self._index_stamp != sitefiles.stamp(os.path.join(self.root, INDEX)):
            self._loaded = False
        self.source.rescan()
        with self._forget_on_failure():
            if force or not (self._loaded or self._load()):
                if force or not self._heads_first():
                    return self._generate(progress, force)
                self._provisional_load()
            self._all = True
            self._pass(list(touched), False)
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

    def _heads_first(self):
        """Whether to take up a site without INDEX heads first: its history
        is as long as self.heads_first builds or longer (the counters say)."""
        if self.heads_first is None:
            return False
        total = 0
        for name in self.source.builder_names(self.cfg.builders):
            total += max(0, (self.state.read_counter(name) or 1) - 1)
            if total >= self.heads_first:
                return True
        return False

    def build_dir(self, builder, number):
        return os.path.join(self.root, "builders", builder, str(number))

    # ------------------------------------------------------------ the passes
    def _pass(self, touched, force):
        """One incremental update (see the module docstring)."""
        full = self._all or any(b not in self._b for b, _ in touched)
        names = self._names = self.source.builder_names(self.cfg.builders, full)
        forced, hints = set(), {}
        for builder, number in touched:
            if (builder in names and isinstance(number, int) and not isinstance(number, bool)
                    and number > 0):
                forced.add((builder, number))
                hints[builder] = max(hints.get(builder, 0), number)
        todo = set(forced)
        # A pass named by hints looks at the counters of the builders they
        # name only (at 1000 builders, a stat each would be most of what a
        # finished build costs); one without (a signal, the queue, the
        # timers), and every full one, at all of them, so a lost hint is
        # found by the next such pass, or the rescan at the latest.
        every = full or not hints
        for name in names:
            b = self._b.get(name)
            if b is None or every or name in hints:
                b = self._builder(name)
                new = self.source.catch_up(b, hints.get(name, 0), full)
                if new:
                    self._touched.add(name)
                    todo.update((name, n) for n in new)
            if b.unfinal:
                self._touched.add(name)
                todo.update((name, n) for n in b.unfinal)
        for name, n in sorted(todo):
            b = self._b[name]
            if (name, n) in forced and self._is_removed(b, n):
                self._removed(b, n)
            else:
                # A hint of a build whose pages are final and whose markers
                # (a pin, the logs removed) are not those they show: again.
                again = (name, n) in forced and n not in b.unfinal and self._markers_changed(b, n)
                self._visit(b, n, force=(force or again) and (name, n) in forced)
        self._finish()

    def _generate(self, progress, force):
        """Render the whole site from state, reading every record once, in
        the order the builds started (a merge of the builders' histories).
        The builds' own pages, most of the work, are rendered by worker
        processes when they are many (_render_pool); this process makes
        the cards, the pages of many builds and INDEX meanwhile."""
        self._reset()
        self._loaded = True
        self._collect, self._relink = {}, set()
        try:
            return self._generate_all(progress, force)
        finally:
            self._collect = None
            self._relink = set()

    def _generate_all(self, progress, force):
        names = self._names = self.source.builder_names(self.cfg.builders)
        numbers = {name: self.state.build_numbers(name) for name in names}
        for name, nums in numbers.items():
            b = self._builder(name)
            b.known = nums[-1] if nums else 0
            self.source.catch_up(b)
            have = set(nums)
            self._forget_removed(b, have)
            # Recent numbers without a directory: wait for them like gaps.
            b.unfinal.update(n for n in range(max(1, b.known - GAP_PATIENCE + 1), b.known + 1)
                             if n not in have)
        total = sum(len(n) for n in numbers.values()) + 1
        pool = self._render_pool(numbers, force, total - 1)
        try:
            streams = [self.source.stream(name, nums) for name, nums in numbers.items()]
            done = 0
            for _, name, n, rec, stamp in heapq.merge(*streams, key=lambda item: item[:3]):
                b = self._b[name]
                self._visit(b, n, force=force, rec=rec, stamp=stamp, by_file=not force, render=pool is None)
                if n % HISTORY_PAGE == 0 or n == b.known:
                    self._complete_pages(b, n // HISTORY_PAGE)
                done += 1
                if n % 16 == 0:
                    # Each builder every 16 of its own builds: by DONE, the
                    # builders taking turns, one builder alone was pruned
                    # and every seal went through the others' whole history.
                    self._prune(b)
                if done % 16 == 0:
                    self._seal()
                    if pool is not None:
                        pool.poll()
                if progress:
                    progress(done if pool is None else min(done, pool.done), total)
            if pool is not None:
                # INDEX, the commit point of the whole rendering, is written
                # (by _finish) only once every worker has done its share.
                pool.wait(progress, total)
        except BaseException:
            if pool is not None:
                pool.kill()
                # What the workers began and did not commit (SiteFiles.
                # begin_dir): their processes are gone, so are these.
                for name in names:
                    fsutil.sweep_stale_tmp(os.path.dirname(self.build_dir(name, 1)), everything=False, dead=True)
            raise
        for name in names:
            b = self._b[name]
            b.unfinal = {n for n in b.unfinal if n > b.known - GAP_PATIENCE or n in b.recs}
        if pool is not None:
            # A build a worker saw running, or without a record, which this
            # process saw finished: the next pass renders it again.
            for name, n in pool.lines.unfinal:
                b = self._b.get(name)
                if b is not None and 0 < n <= b.known and self.state.build_stamp(name, n) is not None:
                    b.unfinal.add(n)
        self._reconcile_links()
        self._all = True
        self._finish()
        self.pages.remove_stale_waterfall_pages(self._wf_pages)
        if progress:
            progress(total, total)
        return self.files.count

    def _render_pool(self, numbers, force, builds):
        """Worker processes rendering the pages of the builds in NUMBERS
        ({builder: [n]}), build n of every builder by worker n % count;
        None if this process is to render them (few builds, one CPU).

        A worker renders a build as _visit would: unless FORCE, only if its
        .final is not current; it reports each build it leaves without
        .final.  Crash safety is the single process's: .final follows a
        build's pages, INDEX follows every worker's end (_generate), so a
        crash of any of them leaves builds with their pages and .final or
        without .final, and no new INDEX: the next start renders again
        the builds without .final, and every page of many builds."""
        count = self.workers
        if count is None:
            count = min(MAX_WORKERS, sitefill.cpus()) if builds >= PARALLEL_MIN_BUILDS else 1
        if count <= 1:
            return None

        def share(k, count, tick, unfinal):
            for name, nums in numbers.items():
                b = siteindex.Builder(name)
                for n in nums:
                    if n % count != k:
                        continue
                    if force or not self._is_final_file(b, n):
                        rec = self.source.read(name, n) if self.state.build_stamp(name, n) else None
                        if rec is None:
                            unfinal(name, n)
                        else:
                            view = build_view(rec)
                            self._render_build(b, n, view, pages=True, force=force)
                            if view["state"] != "finished":
                                unfinal(name, n)
                    tick()
        self.files.prepare_mark(FINAL_MARK)
        return sitefill.Pool(count, share)

    def _finish(self):
        """The end of every pass: pages that became full, sealing, the
        pages a changed build is on, the heads, then INDEX."""
        if not self._provisional:
            for b in self._touched_builders():
                self._complete_pages(b, b.known // HISTORY_PAGE)
            self._seal()
        for name, page in sorted(self._dirty_pages):
            b = self._b[name]
            if page <= b.pages:
                b.unskip(page)  # a record that came late, alone on its page
                self._render_history(b, page)
        for page in sorted(self._dirty_sealed - set(self._wf_open)):
            self.pages.waterfall_page(self.cfg, self._b, page, self._wf_pages, self._sealed_cards(page))
        self._dirty_sealed.clear()
        for page in sorted(self._dirty_wf):
            if page in self._wf_open:
                o = self._wf_open[page]
                self.pages.waterfall_page(self.cfg, self._b, page, self._wf_pages,
                                          [self._card_for(self._b[name], n)
                                           for name, n in o["members"] if name in self._b])
                if not o["waiting"]:
                    del self._wf_open[page]
        self._heads()
        for b in self._touched_builders():
            self._prune(b)
        self._save_index()
        self._all = False
        self._dirty.clear()
        self._finished.clear()
        self._badges.clear()
        self._dirty_pages.clear()
        self._dirty_wf.clear()
        self._touched.clear()

    def _touched_builders(self):
        """The builders a pass may have to complete a page of or prune the
        cards of: all in a full pass, else those it changed (the others'
        pages and cards are as the last pass left them)."""
        if self._all:
            return list(self._b.values())
        return [self._b[name] for name in sorted(self._touched | self._dirty) if name in self._b]

    def _heads(self):
        """The head pages, if anything they show changed: a build, the
        builders, the older waterfall pages, the queue (see _pass)."""
        queued = self.source.queued(MAX_QUEUED_SHOWN)
        shown = (tuple(self._names), self._wf_pages, queued)
        if not (self._all or self._dirty or self._finished or self._badges or shown != self._shown):
            return
        bs = [self._b[name] for name in self._names if name in self._b]
        self.pages.heads(self.cfg, bs, self._wf_pages, queued,
                         None if self._all else (self._dirty, self._finished, self._badges))
        self._shown = shown

    # ------------------------------------------------------ what is known
    def _builder(self, name):
        b = self._b.get(name)
        if b is None:
            b = self._b[name] = siteindex.Builder(name)
            self._dirty.add(name)
        return b

    def _card_for(self, b, n):
        """The card of B #N, read if it is not in memory; None for a gap,
        a removed card for a build the janitor removed."""
        if b.is_removed(n):
            return removed_card(b.name, n)
        c = b.cards.get(n)
        if c is None:
            rec = self.source.read(b.name, n)
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
    def _visit(self, b, n, force=False, rec=_UNREAD, stamp=None, by_file=False, render=True):
        """Bring B #N's pages and card up to date.  By_file: whether its
        pages are final is read from .final (a site not known yet).  Not
        RENDER: only its card (worker processes write its pages)."""
        if n > b.known:
            return
        if by_file:
            final = self._is_final_file(b, n) if render else False
        else:
            final = n not in b.unfinal
            if final and not force:
                return
        marks = _UNREAD
        if rec is _UNREAD:
            # The markers first: a pin made while the record is read is
            # then rendered again at its hint (_markers_changed).
            marks = self.state.marker_stamp(b.name, n)
            # build.json and a running build's progress file (state.py).
            stamp = self.state.build_stamp(b.name, n)
            if stamp is not None and not force and stamp == b.stamps.get(n) and n in b.recs:
                rec = b.recs[n]        # a running build whose record did not change
            else:
                rec = self.source.read(b.name, n) if stamp is not None else None
        if rec is None:
            self._gap(b, n)
            return
        changed = force or stamp != b.stamps.get(n) or n not in b.cards
        view = build_view(rec)   # the one reshaping of the record; the card is made of it
        if self._collect is not None:
            self._collect_links(b, n, view)
        c = b.cards[n] = card(view) if changed else b.cards[n]
        b.stamps[n] = stamp
        if render and (force or not final):
            self._render_build(b, n, view, pages=changed, force=force, marks=marks)
        self._remember(b, n, c, rec)
        if changed and (force or not final):
            self._changed(b, n, c["state"] == "finished")

    def _remember(self, b, n, c, rec):
        """What B's memory keeps of B #N, of card C made from REC."""
        if c["state"] != "finished":
            b.unfinal.add(n)
            b.recs[n] = rec
            return
        b.unfinal.discard(n)
        b.recs.pop(n, None)
        if b.last is None or n >= b.last["number"]:
            last = {"number": n, "status": c["status"], "finished": c["finished"]}
            if last != b.last:
                b.last = last
                self._badges.add(b.name)

    def _changed(self, b, n, finished):
        """B #N looks different: mark the pages that show it."""
        self._dirty.add(b.name)
        if finished:
            self._finished.add(b.name)
        self.pages.forget_build(b.name, n)
        page = (n - 1) // HISTORY_PAGE + 1
        if page <= b.pages:
            self._dirty_pages.add((b.name, page))
        for k, o in self._wf_open.items():
            if (b.name, n) in o["waiting"]:
                self._dirty_wf.add(k)
                if finished:
                    o["waiting"].discard((b.name, n))

    # ------------------------------------------------------------ removals
    def _is_removed(self, b, n):
        """True if B #N was taken and is no build any more: the janitor
        renamed its directory away (janitor.py), and says so by a hint.  A
        number taken has its directory from the mkdir that took it."""
        return 0 < n <= b.known and not os.path.lexists(self.state.build_dir(b.name, n))

    def _removed(self, b, n):
        """B #N was removed: its pages go, and every page that listed it is
        written again with "removed" in its place (its builder's history
        page, the older waterfall page holding it) or without it (the
        heads).  INDEX remembers it (Builder.removed), so a page written
        later says "removed" too."""
        b.add_removed(n)
        b.cards.pop(n, None)
        b.stamps.pop(n, None)
        b.recs.pop(n, None)
        b.unfinal.discard(n)
        self.pages.forget_build(b.name, n)
        # The builds whose pages link to it say "removed" instead, before
        # its .links goes with its pages: a crash between leaves its pages,
        # which the next full rendering removes, with the same renderings.
        for builder, m in sorted({(tb, tn) for _k, tb, tn, _s in self._read_links(self.build_dir(b.name, n))}):
            self._render_page(builder, m)
        self.files.remove(self.build_dir(b.name, n))
        self.files.remove(self.files.path("api/builders/%s/builds/%d.json" % (b.q, n)))
        self._unlatest(b, n)
        self._dirty.add(b.name)
        self._touched.add(b.name)
        page = (n - 1) // HISTORY_PAGE + 1
        if page <= b.pages:
            self._dirty_pages.add((b.name, page))
        for k, o in self._wf_open.items():
            if (b.name, n) in o["members"]:
                o["waiting"].discard((b.name, n))
                self._dirty_wf.add(k)
        k = self._sealed_page(b.name, n)
        if k is not None:
            self._dirty_sealed.add(k)
        if b.last is not None and b.last["number"] == n:
            b.last = None
            self._badges.add(b.name)

    def _forget_removed(self, b, have):
        """A full rendering: the pages of B's builds the janitor removed
        (a page here, no build in HAVE, the numbers in the state) go."""
        try:
            names = os.listdir(os.path.dirname(self.build_dir(b.name, 1)))
        except OSError:
            return
        for name in names:
            n = parse_number(name)
            if n is not None and n <= b.known and n not in have:
                b.add_removed(n)
                self._relink.update((tb, tn) for _k, tb, tn, _s in self._read_links(self.build_dir(b.name, n)))
                self.files.remove(self.build_dir(b.name, n))
                self.files.remove(self.files.path("api/builders/%s/builds/%d.json" % (b.q, n)))

    def _sealed_page(self, name, n):
        """The older waterfall page holding NAME #N, or None (not sealed, or
        sealed by a release that did not keep seals: see siteindex)."""
        if self._seal_index is None:
            idx = {}
            for k, marks in self._wf_seals.items():
                for builder, (lo, hi) in marks.items():
                    idx.setdefault(builder, []).append((lo, hi, k))
            for v in idx.values():
                v.sort()
            self._seal_index = idx
        ranges = self._seal_index.get(name, ())
        i = bisect.bisect_right(ranges, (n, float("inf"), 0)) - 1
        if i >= 0 and ranges[i][0] <= n <= ranges[i][1]:
            return ranges[i][2]
        return None

    def _sealed_cards(self, page):
        """The cards of the older waterfall page PAGE, from its seals."""
        cards = []
        for name, (lo, hi) in sorted(self._wf_seals.get(page, {}).items()):
            b = self._b.get(name)
            if b is not None:
                cards += [self._card_for(b, n) for n in b.numbers(lo - 1, hi)]
        return cards

    def _gap(self, b, n):
        """B #N has no readable record: wait for it, for a while."""
        if b.known - n >= GAP_PATIENCE:
            b.unfinal.discard(n)
        else:
            b.unfinal.add(n)

    def _markers_changed(self, b, n):
        """True if the janitor's markers of B #N (keep.json, pruned.json)
        are not those its pages were rendered with (MARKERS beside them)."""
        try:
            with open(os.path.join(self.build_dir(b.name, n), MARKERS), encoding="utf-8") as f:
                shown = f.read()
        except (OSError, ValueError):
            shown = ""
        marks = self.state.marker_stamp(b.name, n)
        return shown != ("" if marks is None else repr(marks))

    # --------------------------------------------------- links between builds
    # A build's record names the builds it links to (its upstream, the
    # build it rebuilds, those its Trigger= steps queued), never the builds
    # made later that name it, and a finished build's pages are written
    # once.  So the site keeps, beside each build's pages, LINKS: the
    # builds linked to it and from it, entries [kind, builder, number,
    # status] (kinds: siteviews.link_targets, and LINKS_TO for the builds
    # its own page links to).  A build that names others adds itself to
    # theirs when its page is written (and again when its status
    # changed), and their pages are written again; a build removed has its
    # referrers' pages written again, from its LINKS, saying "removed".
    # LINKS is the site's own, derived from the records: a full rendering
    # makes them again from the records it reads anyway (_collect_links).
    def _annotate(self, bdir, view):
        """VIEW, of the build whose pages are in BDIR, with its links."""
        return annotate(view, self._read_links(bdir), self._gone)

    def _gone(self, builder, n):
        """True if BUILDER #N is no build: the janitor removed it (one lstat)."""
        return not safe_name(builder) or not os.path.lexists(self.state.build_dir(builder, n))

    def _read_links(self, bdir):
        """The entries of BDIR's LINKS, as tuples; none if there is no
        usable one (a full rendering makes it again)."""
        try:
            with open(os.path.join(bdir, LINKS), encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return []
        if not isinstance(doc, dict) or doc.get("version") != LINKS_VERSION or not isinstance(doc.get("links"), list):
            return []
        return [tuple(e) for e in doc["links"]
                if isinstance(e, list) and len(e) == 4 and isinstance(e[0], str) and safe_name(e[1])
                and isinstance(e[2], int) and not isinstance(e[2], bool) and e[2] > 0 and isinstance(e[3], str)]

    @contextlib.contextmanager
    def _links_locked(self):
        """One writer of any LINKS at a time: htmlgen and its fill (another
        process) may both add to one (a read, then a replacement)."""
        self.files.mkdir(self.root)
        fd = os.open(os.path.join(self.root, LINKS_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _add_links(self, builder, n, entries, render=False):
        """Add ENTRIES to BUILDER #N's LINKS (an entry of the same kind and
        build replaced: a new status), and if RENDER and what its page
        shows of them changed, write its page again first.  Returns
        whether what its page shows changed.  Nothing for a build that
        is not there (removed: the page linking to it says so).

        Crash safety: LINKS is replaced after the page (its commit
        point), so a crash between leaves LINKS without the entries its
        page shows: the next linking finds them new, and writes both
        again; a crash before leaves neither."""
        if not safe_name(builder) or not os.path.isdir(self.state.build_dir(builder, n)):
            return False
        bdir = self.build_dir(builder, n)
        with self._links_locked():
            have = {e[:3]: e[3] for e in self._read_links(bdir)}
            new = dict(have)
            new.update((e[:3], e[3]) for e in entries)
            if new == have:
                return False
            links = [list(k) + [v] for k, v in sorted(new.items())]
            shown = any(k[0] != LINKS_TO and have.get(k) != v for k, v in new.items())
            if render and shown:
                self._render_page(builder, n, [tuple(e) for e in links])
            self.files.write(os.path.join(bdir, LINKS), json.dumps(
                {"version": LINKS_VERSION, "links": links}, ensure_ascii=False) + "\n")
        return shown

    def _link(self, b, n, view):
        """B #N's page was written from VIEW: the builds it links to learn
        it (their LINKS), and those whose entry changed (a new downstream
        build, or its new status) get their page written again.

        Crash safety: this comes before B #N's .final, so a crash before
        their pages and LINKS are written leaves B #N not final, visited
        again by the next process (from INDEX, or a full rendering), and
        linked again (_add_links: the page first, then LINKS).  Not while a full rendering collects the links (it makes
        them at its end), nor in its workers."""
        if self._collect is not None:
            return
        targets = link_targets(view)
        if not targets:
            return
        self._add_links(b.name, n, [(LINKS_TO, tb, tn, "") for _k, tb, tn in targets])
        for kind, tb, tn in targets:
            self._add_links(tb, tn, [(kind, b.name, n, view["status"])], render=True)

    def _render_page(self, builder, n, links=None):
        """Write BUILDER #N's page and JSON file again (not its logs): its
        LINKS (those of its file, or LINKS) changed, or a build they name
        was removed.  Not if it has none yet (its rendering, to come,
        reads its LINKS) or no record."""
        bdir = self.build_dir(builder, n)
        if not os.path.isfile(os.path.join(bdir, "index.html")):
            return
        rec = self.source.read(builder, n)
        if rec is None:
            return
        b = self._b.get(builder) or siteindex.Builder(builder)
        view = build_view(rec)
        view = annotate(view, self._read_links(bdir) if links is None else links, self._gone)
        self.pages.build(self.cfg, b, bdir, view)

    def _collect_links(self, b, n, view):
        """A full rendering: B #N's links, written at its end."""
        for kind, tb, tn in link_targets(view):
            self._collect.setdefault((b.name, n), []).append((LINKS_TO, tb, tn, ""))
            self._collect.setdefault((tb, tn), []).append((kind, b.name, n, view["status"]))

    def _reconcile_links(self):
        """The end of a full rendering, once every build's page is written
        (by this process or its workers) and before INDEX: each LINKS made
        from the records read, added to what is there (the entries of
        builds removed stay: their referrers say "removed"), and the pages
        whose links changed, or that linked to a build removed, written
        again.  A crash before INDEX renders everything again: this too."""
        collect, again = self._collect or {}, set(self._relink)
        self._collect = None
        for (builder, n), entries in sorted(collect.items()):
            if self._add_links(builder, n, entries, render=True):
                again.discard((builder, n))
        for builder, n in sorted(again):
            self._render_page(builder, n)

    def _render_build(self, b, n, view, pages, force, marks=_UNREAD):
        """Write a build's log pages (those whose log or step changed) and,
        if PAGES, its page and JSON; then .final once it is finished.

        A finished build whose directory does not exist yet (a full
        rendering, a build seen first when it is over) is written whole
        in a fresh hidden directory and renamed into place (SiteFiles.
        begin_dir): its pages, raw logs, artifacts and MARKERS; then its
        JSON, builders/B/latest and .final, as for any build, so .final
        still comes last and a crash before it has the build rendered
        again (in place then: its directory exists)."""
        final_dir = self.build_dir(b.name, n)
        running = view["state"] != "finished"
        # With its links (LINKS, beside its pages where they are: none in a
        # directory not made yet), for its page and its JSON.
        shown = self._annotate(final_dir, view) if pages or not running else view
        bdir = final_dir
        if not running and final_dir not in self.files._dirs and not os.path.lexists(final_dir):
            bdir = self.files.begin_dir(final_dir)
        else:
            self.files.mkdir(bdir)
        try:
            for step in view["steps"]:
                if step["log_removed"]:
                    self._log_removed(b, bdir, view, step)
                elif step["log_page"]:
                    self.logs.render(bdir, view, step, self.cfg.title, force)
            if pages or not running:
                self.pages.build_page(self.cfg, b, bdir, shown)
            if not running:
                if view["artifacts_removed"] is None:
                    newest = self._artifacts(b, n, bdir, view)
                else:
                    newest = False
                    self._artifacts_removed(b, n, bdir)
                if marks is _UNREAD:
                    marks = self.state.marker_stamp(b.name, n)
                if marks is None:
                    if bdir == final_dir:
                        fsutil._unlink_quietly(os.path.join(bdir, MARKERS))
                else:
                    self.files.write(os.path.join(bdir, MARKERS), repr(marks))
        except BaseException:
            if bdir != final_dir:
                self.files.abandon_dir(bdir)
            raise
        if bdir != final_dir:
            self.logs.forget(bdir)
            if not self.files.commit_dir(bdir, final_dir):     # commit point of its pages
                # Another writer made the directory meanwhile: in place.
                return self._render_build(b, n, view, pages, force, marks)
            bdir = final_dir
        if pages or not running:
            self.pages.build_json(shown)
            self._link(b, n, view)
        if not running:
            if newest:
                self._latest(b, n)
            self.files.mark(os.path.join(bdir, ".final"), FINAL_MARK)
            self.logs.forget(bdir)

    def _log_removed(self, b, bdir, view, step):
        """A log the janitor removed: its page says so (the pages of many
        builds link to it), its raw file goes (a hard link to the log: the
        disk is freed only then)."""
        stem = step["log_page"][:-len(".html")]
        self.files.remove(os.path.join(bdir, stem + ".txt"))
        self.files.write(os.path.join(bdir, step["log_page"]), templates.render(
            "logremoved.html", site_title=self.cfg.title, root="../../../", refresh=0, feed="",
            title="%s #%d: %s (log removed)" % (view["builder"], view["number"], step["name"]),
            generated=time.time(), zone=time.strftime("%z"), builder_html="builders/%s/index.html" % b.q,
            build=view, step=step))
        self.logs.forget(bdir)

    def _artifacts_removed(self, b, n, bdir):
        """The janitor removed B #N's artifacts (KeepArtifactDays=): the
        site's links to them go too (hard links: the disk is freed only
        then), and builders/B/latest if it led there (it would lead
        nowhere; the next successful build with artifacts makes it again)."""
        self.files.remove(os.path.join(bdir, "artifacts"))
        self._unlatest(b, n)

    def _unlatest(self, b, n):
        latest = os.path.join(os.path.dirname(self.build_dir(b.name, n)), "latest")
        try:
            if os.readlink(latest) == "%d/artifacts" % n:
                os.unlink(latest)
        except OSError:
            pass

    def _artifacts(self, b, n, bdir, view):
        """The finished build's artifacts in its directory of the site (a
        hard link from the state, or a copy on another file system: the
        state's copies are the history's own, which no step can change),
        True if builders/B/latest is to lead to them (_latest): a
        symbolic link to the artifacts of the newest successful build that
        kept some (Laminar's archive/latest)."""
        kept = []
        for a in view["artifacts"]:
            parts = a["name"].split("/")
            if any(p in ("", ".", "..") or "\0" in p for p in parts):
                continue
            try:
                fd = self.state.open_file("builds", b.name, str(n), "artifacts", *parts)
            except OSError:
                continue        # removed, or not what the record says
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                dst = os.path.join(bdir, "artifacts", *parts)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                self.files.link_or_copy(self.state.artifact_path(b.name, n, *parts), dst, fd)
                kept.append(a)
            finally:
                os.close(fd)
        return bool(kept) and view["result"] == "success"

    def _latest(self, b, n):
        """builders/B/latest made to lead to B #N's artifacts, if N is newer
        than the build it leads to (after N's directory is in place)."""
        latest = os.path.join(os.path.dirname(self.build_dir(b.name, n)), "latest")
        try:
            current = int(os.readlink(latest).split("/")[0])
        except (OSError, ValueError):
            current = 0
        if n > current:
            tmp = latest + ".tmp-%d" % os.getpid()
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            os.symlink("%d/artifacts" % n, tmp)
            os.rename(tmp, latest)          # replaced whole: never missing

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
        running = [(self.build_dir(b.name, n), rec)
                   for b in self._b.values() for n, rec in sorted(b.recs.items())]
        self.logs.follow(running, self.cfg.title)
        return self.files.count if running else None

    # ---------------------------------------------------- pages of history
    def _complete_pages(self, b, full):
        """Write B's history pages up to FULL that are full and not written."""
        for page in b.full_pages(full):
            self._render_history(b, page)

    def _render_history(self, b, page):
        first, last = (page - 1) * HISTORY_PAGE + 1, page * HISTORY_PAGE
        cards = [c for c in (self._card_for(b, n) for n in range(last, first - 1, -1)) if c]
        self.pages.history(self.cfg, b, page, cards)

    def _seal(self):
        """Move the oldest builds of the waterfall's first page to a page of
        their own while it holds twice WaterfallDepth= (module docstring)."""
        size = max(1, int(self.cfg.waterfall_depth))
        while True:
            cut = siteindex.next_seal(self._b.values(), size)
            if cut is None:
                return
            marks, members, running = cut
            self._wf_pages += 1
            self._wf_seals[self._wf_pages] = {name: [self._b[name].sealed + 1, number]
                                              for name, number in marks.items()}
            self._seal_index = None
            for name, number in marks.items():
                self._b[name].sealed = number
                self._touched.add(name)
            self.pages.waterfall_page(self.cfg, self._b, self._wf_pages, self._wf_pages, members)
            if running:
                self._wf_open[self._wf_pages] = {
                    "members": [(c["builder"], c["number"]) for c in members], "waiting": running}

    # -------------------------------------------------------------- INDEX
    def _load(self):
        """Take up where INDEX says a previous process stopped; False if
        there is none usable (the caller then renders everything)."""
        try:
            loaded = siteindex.load(os.path.join(self.root, INDEX), FINAL_MARK)
        except (OSError, ValueError):
            self._reset()
            return False
        self._reset()
        self._b, self._wf_pages, self._wf_open, self._wf_seals = loaded
        self._loaded = True
        self.needs_fill = False
        self._all = True
        # The cards the head pages show; running builds are visited by the pass.
        for b in self._b.values():
            for n in b.numbers(b.keep_floor(), b.known):
                if n not in b.unfinal:
                    self._card_for(b, n)
        return True

    def _provisional_load(self):
        """Heads first (htmlgen's first start, or a lost INDEX): take up a
        site without a usable INDEX from the newest builds only, so that
        its head pages come in the time of a few pages, not of the whole
        history.  For each builder, the builds its first page shows are
        read and rendered (those whose .final is not current); the
        waterfall's first page shows the newest 2*WaterfallDepth- 1
        builds of these.  Until the full rendering, run elsewhere (the
        fill), writes INDEX, passes go on so, but for what needs the
        whole history: no older waterfall or history page is written
        (the heads link to none of the waterfall's, and each builder's
        page to the history page below it, which the fill writes), and
        no INDEX, which would say the history is rendered.

        Crash safety: this writes nothing the fill does not write again
        but the builds' pages, each followed by its .final as in any
        pass; a crash at any point leaves no INDEX, so the next start
        does this again and starts the fill again, which renders only
        the builds without a current .final."""
        self._reset()
        self._loaded = True
        self._provisional = True
        self.needs_fill = True
        # The INDEX found unusable (or None): the fill's INDEX is a change.
        self._index_stamp = sitefiles.stamp(os.path.join(self.root, INDEX))
        names = self._names = self.source.builder_names(self.cfg.builders)
        window = []
        for name in names:
            b = self._builder(name)
            self.source.catch_up(b)
            b.unfinal.clear()
            for n in range(b.head_floor() + 1, b.known + 1):
                self._visit(b, n, by_file=True)
                c = b.cards.get(n)
                if c is not None:
                    window.append(c)
        size = max(1, int(self.cfg.waterfall_depth))
        window.sort(key=card_order, reverse=True)
        for c in window[2 * size - 1:]:
            b = self._b[c["builder"]]
            b.sealed = max(b.sealed, c["number"])

    def _save_index(self):
        if self._provisional:
            return   # INDEX is the full rendering's to write (_provisional_load)
        self.files.mkdir(self.root)
        path = os.path.join(self.root, INDEX)
        # Written only when it changed: a pass with nothing new writes nothing.
        if self._seals_json is None or self._seals_json[0] is not self._wf_seals \
                or self._seals_json[1] != len(self._wf_seals):
            self._seals_json = (self._wf_seals, len(self._wf_seals), siteindex.seals_text(self._wf_seals))
        # A builder's entry changes only with its numbers, builds, seal or
        # pages, which put it in _touched or _dirty (_badges: its last).
        changed = None if self._all else self._touched | self._dirty | self._badges
        text = siteindex.save(path, self._b, self._wf_pages, self._wf_open, FINAL_MARK, self._index_text,
                              seals_json=self._seals_json[2], entries=self._index_entries, changed=changed)
        if text != self._index_text:
            self._index_text = text
            self._index_stamp = sitefiles.stamp(path)

    def _prune(self, b):
        for n in b.prune():
            self.pages.forget_build(b.name, n)
