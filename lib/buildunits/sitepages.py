"""Sitepages: the site's pages of many builds, its feeds and its badges.

Renders, from the cards the site keeps in memory (siteviews.card), the
head pages (the waterfall's first page, builders.html, the console, each
builder's first page, the feeds, the badges and api/builders.json), the
pages written once (a builder's history page, an older waterfall page),
and a build's own page and JSON file.  It decides nothing about when: the
engine (site.py) says which pages a pass needs, in which order.

A finished build looks the same on every page that shows it, so its
waterfall cell, history row, console box, feed entry and JSON summary are
rendered once and kept (fragment()) until the engine forgets its card.
So is a builder's part of the pages with a line or a column per builder
(builders.html, the console, the waterfall and a group's page, and
api/builders.json): its column (siteviews.column) is made again only
when a build of it or what it shows changed, and each part of a page
made of it is rendered once per column and spliced (_part), the page
reading byte for byte as if its template had rendered it whole.  A row
of the console or the waterfall is its cells joined, an empty one a
constant: what a pass costs does not grow with the builders but by a
join of their parts.

Past sitegroups.PAGE_BUILDERS builders, builders.html and console.html
are the index of sections (sitegroups.sections: by WaterfallGroup=, in
chunks of PAGE_BUILDERS builders), each section with its own list of
builders and console, and a group's waterfall is cut into the same
chunks: a finished build rewrites the pages of its section, its chunk of
its group and the indexes, a bounded number of bytes whatever the number
of builders (_sections_pages).

The site's layout, with relative links only, so it reads the same through
any web server, from file://, or copied elsewhere (B is a builder, N a
build number; docs/site.md has the same table for readers):

    index.html                  the waterfall's first page: the newest builds
    groups/G.html, groups/G/K.html   group G's waterfall, its chunk 1 or K
    groups/G/builders-K.html    section (G, K): its builders (sitegroups)
    groups/G/console-K.html     section (G, K): its console
    waterfall/K.html            older waterfall pages, 1 the oldest (sealed)
    console.html                revisions against builders
    builders.html               every builder and its last result
    atom.xml                    the newest finished builds
    builders/B/index.html       B's newest builds
    builders/B/history/C.html   B's builds (C-1)*HISTORY_PAGE+1 .. C*HISTORY_PAGE
    builders/B/atom.xml         B's newest finished builds
    builders/B/badge.svg        B's last result
    builders/B/N/index.html     a build
    builders/B/N/NN-STEP.html   a step's log, its first lines (sitelogs)
    builders/B/N/NN-STEP.txt    the whole log: a hard link to state's
                                NN-STEP.log (a copy across filesystems)
    builders/B/N/.final         site.FINAL_MARK: these pages are done
    api/builders.json, api/builders/B/index.json,
    api/builders/B/history/C.json, api/builders/B/builds/N.json
    .buildunits-site.json       siteindex.INDEX: what an update must remember
"""

import heapq
import itertools
import json
import operator
import os
import time
import uuid

import markupsafe

from . import fsutil, sitegroups, siteviews, templates
from .siteindex import HISTORY_PAGE
from .siteviews import card_order, card_time, text

FEED_ENTRIES = 30                    # at most HISTORY_PAGE: the cards in memory must cover them
CONSOLE_ROWS = 50
CONSOLE_CELL = 3                     # builds shown in a console cell
MAX_QUEUED_SHOWN = 5                 # per builder on the waterfall
REFRESH_SEC = 60                     # pages that change: heads, running builds

# Badge colours by result word: (background, text).  Never from records.
BADGE_COLOURS = {
    "success": ("#2e7d32", "#fff"), "warnings": ("#e69500", "#000"), "failure": ("#c62828", "#fff"),
    "exception": ("#8e24aa", "#fff"), "retry": ("#d7a6a6", "#000"), "cancelled": ("#8d8080", "#fff"),
    "skipped": ("#4aa3a3", "#000"), "running": ("#e6d800", "#000"),
}
BADGE_OTHER = ("#9e9e9e", "#000")
CONSOLE_EMPTY = "<td>\n</td>\n"      # consolecell.html of a cell without builds
WATERFALL_EMPTY = "<td></td>\n"       # a waterfall cell without a build


class Pages:
    """The pages written through FILES (a sitefiles.SiteFiles)."""

    def __init__(self, files):
        self.files = files
        self.forget()

    def forget(self):
        self._pieces = {}        # (B, n) -> {(template, root): a finished build's piece of a page}
        self._group_seen = {}    # group -> what its page showed: (columns, pager)
        self._badge_words = {}   # builder -> the word its badge shows
        self._cols = {}          # builder -> (key, column, {(template, root): part}): _column
        self._parts = {}         # id(column) -> (column, its parts): this pass's columns
        self._group_parts = {}   # group -> (its column, its parts)
        self._cells = {}         # (boxes, more) -> consolecell.html: last pass's and this one's
        self._cells_old = {}
        self._joined = {}        # (template, root, slot) -> (_join_parts' list, those parts joined)
        self._joined_parts = {}  # (template, root, slot) -> (columns, their parts)
        self._row_cells = {}     # (root, columns, cells) -> a row's cells joined: last pass's and this one's
        self._row_cells_old = {}
        self._group_cells = {}   # (cards, href, root) -> groupcell.html: last pass's and this one's
        self._group_cells_old = {}
        self._plan = None        # (names, cfg, sitegroups.plan of them)
        self._feed_last = None   # atom.xml's cards (_feed_cards)
        self._group_cols = {}    # (kind, group, k) -> (a chunk's columns, sitegroups.group_column of them)
        self._group_merged = {}  # group -> (its chunks' group_columns, sitegroups.merge of them)
        self._sections = None    # (names, cfg, sitegroups.sections of them)
        self._section_seen = {}  # (what, group, k) or what -> what its page showed

    def forget_build(self, name, n):
        self._pieces.pop((name, n), None)

    # ------------------------------------------------------- one build
    def build(self, cfg, b, bdir, view):
        """B's build's page (in BDIR) and its JSON file, from a build_view()."""
        self.build_page(cfg, b, bdir, view)
        self.build_json(view)

    def build_json(self, view):
        """The JSON file of a build, from a build_view()."""
        self._write_json(view["json"], siteviews.build_json(view))

    def build_page(self, cfg, b, bdir, view):
        """B's build's page, in BDIR, from a build_view()."""
        running = view["state"] != "finished"
        q = b.q
        page = templates.render("build.html", title="%s #%d" % (view["builder"], view["number"]),
                                root="../../../", refresh=REFRESH_SEC if running else 0,
                                site_title=cfg.title, feed="builders/%s/atom.xml" % q, build=view,
                                builder_html="builders/%s/index.html" % q, json=view["json"])
        self.files.write(os.path.join(bdir, "index.html"), page)

    # ------------------------------------------------ pages written once
    def history(self, cfg, b, page, cards):
        """B's history page PAGE of CARDS, newest first."""
        first, last = (page - 1) * HISTORY_PAGE + 1, page * HISTORY_PAGE
        below = b.page_below(page)
        older = "builders/%s/history/%d.html" % (b.q, below) if below else ""
        newer = ("builders/%s/history/%d.html" % (b.q, page + 1) if page < b.pages
                 else "builders/%s/index.html" % b.q)
        pager = {"newer": newer, "older": older, "pages": []}
        self._write_page(cfg, "builders/%s/history/%d.html" % (b.q, page), "builder.html",
                         title="%s: builds %d to %d" % (text(b.name), first, last), root="../../../",
                         refresh=0, head=False, builder=_column(cfg, b, (0, [])),
                         rows=[templates.fragment("row.html", b=c, root="../../../") for c in cards],
                         pager=pager, page_range=(first, last))
        self._write_json("api/builders/%s/history/%d.json" % (b.q, page),
                         siteviews.history_doc(b, page, first, last, cards), cards)

    def waterfall_page(self, cfg, builders, page, newest, cards):
        """Older waterfall page PAGE of CARDS; NEWEST the newest such page.
        Its columns are those of the first page (sitegroups.plan), but
        only those with a build here."""
        cards = [c for c in cards if c]
        present = {c["builder"] for c in cards}
        layout = sitegroups.plan(sorted(builders), _group_of(cfg))
        if layout is not None:
            layout = [col for col in layout if present.intersection(col[2])]
        else:
            layout = [("builder", name, [name]) for name in sorted(present)]
        columns = [_column(cfg, builders[names[0]], (0, [])) if kind == "builder"
                   else sitegroups.group_column(name, [_column(cfg, builders[n], (0, [])) for n in names])
                   for kind, name, names in layout]
        older = "waterfall/%d.html" % (page - 1) if page > 1 else ""
        newer = "waterfall/%d.html" % (page + 1) if page < newest else "index.html"
        self._write_page(cfg, "waterfall/%d.html" % page, "waterfall.html",
                         title="%s: older builds, page %d" % (cfg.title, page), root="../",
                         refresh=0, head=False, columns=columns, group="",
                         rows=self._rows(cards, _slots(layout), columns, "../"),
                         **self._wf_cells(columns, "../", False, False),
                         pager={"newer": newer, "older": older, "pages": []},
                         any_queued=False, max_queued=MAX_QUEUED_SHOWN)

    def remove_stale_waterfall_pages(self, newest):
        """After a full rendering: older pages of a previous one beyond NEWEST."""
        try:
            names = os.listdir(self.files.path("waterfall"))
        except FileNotFoundError:
            return
        for name in names:
            stem, dot, ext = name.partition(".")
            if ext == "html" and stem.isdigit() and int(stem) > newest:
                fsutil._unlink_quietly(os.path.join(self.files.path("waterfall"), name))

    # -------------------------------------------------------- head pages
    def heads(self, cfg, bs, wf_pages, queued, changed):
        """The head pages of the builders BS (siteindex.Builder, in order);
        WF_PAGES older waterfall pages, QUEUED {builder: (count, [the
        first requests])} (Source.queued).
        CHANGED (dirty, finished, badges: sets of builder names; None:
        everything) says which of the builders' pages, feeds and badges
        to write.  api/builders.json comes last."""
        every = changed is None
        dirty, finished, badges = changed or (set(), set(), set())
        templates.forget_times(time.strftime("%z"))
        if every:
            self._cols, self._group_parts, self._parts = {}, {}, {}
        # What this pass's rows use is kept for the next, and no more.
        self._row_cells_old, self._row_cells = self._row_cells, {}
        self._group_cells_old, self._group_cells = self._group_cells, {}
        self._cells_old, self._cells = self._cells, {}
        if every:
            self._section_seen = {}
        columns = self._columns(cfg, bs, queued, dirty, every)
        common = dict(root="", refresh=REFRESH_SEC, feed="atom.xml")
        by_name = {b.name: (b, col) for b, col in zip(bs, columns)}
        written = set()          # the pages under groups/ a full pass keeps
        layout = self._waterfall_head(cfg, bs, wf_pages, columns, by_name, common, None if every else dirty,
                                      written)
        sections = self._sections_of(cfg, [b.name for b in bs])
        if sections is None:
            self._write_page(cfg, "builders.html", "builders.html", title="%s: builders" % cfg.title,
                             columns=columns, rows=self._join("builderrow.html", columns, ""), **common)
            if every or dirty:
                self._write_page(cfg, "console.html", "console.html", title="%s: console" % cfg.title,
                                 columns=columns, head=self._join("consolehead.html", columns, ""),
                                 rows=self._console_rows(bs, ""), **common)
        else:
            self._sections_pages(cfg, sections, layout, by_name, common, None if every else dirty, written)
        if every:
            self._remove_stale_group_pages(written)
        if every or finished:
            self._feed(cfg, "atom.xml", "", "index.html", cfg.title, self._feed_cards(bs, by_name, dirty | finished,
                                                                                       every), "")
        for b, column in zip(bs, columns):
            if every or b.name in dirty:
                self._builder_head(cfg, b, column)
            if every or b.name in finished:
                self._feed(cfg, "builders/%s/atom.xml" % b.q, "../../", "builders/%s/index.html" % b.q,
                           "%s: %s" % (cfg.title, text(b.name)), b.cards.values(), b.name)
            if every or b.name in badges:
                word = b.last["status"] if b.last else "no builds"
                if every or self._badge_words.get(b.name) != word:
                    self._badge(b, word)
                    self._badge_words[b.name] = word
        # Last, so a reader that sees a build here finds every page of the
        # pass that put it there: the build's own, the heads, feeds, badges.
        doc = siteviews.builders_doc(cfg.title, [], time.time())
        del doc["builders"]   # the last key: the builders' parts, spliced
        self.files.write_json("api/builders.json", doc, self._join_parts("json", columns, ""), key="builders")

    # ------------------------------------------------- a builder's parts
    def _columns(self, cfg, bs, queued, dirty, every):
        """The columns of BS, in order (_column).  A builder not in DIRTY
        whose number, last build (the same object: siteindex.Builder
        replaces it), queue and configuration are what its column was made
        of keeps it without a look at more: at 1000 builders, a key made
        for each would be the most of what a finished build costs."""
        out, cols = [], self._cols
        for b in bs:
            name = b.name
            q = queued.get(name)
            kept = cols.get(name)
            if (kept is not None and not every and name not in dirty and kept[3] is cfg
                    and kept[4] == b.known and kept[5] is b.last and kept[6] == q):
                out.append(kept[1])
            else:
                out.append(self._column(cfg, b, q, every or name in dirty))
        return out

    def _column(self, cfg, b, q, changed):
        """B's column (siteviews.column), that of the last pass unless B's
        builds CHANGED or what else it shows did; then the parts of pages
        made of it are kept too (_part).  Q: (count, [requests]) or None."""
        queued = q or (0, [])
        builder = cfg.builders.get(b.name)
        count, reqs = queued
        key = (b.known, None if b.last is None else tuple(b.last.values()), count,
               tuple(r.get("id") for r in reqs), builder)
        kept = self._cols.get(b.name)
        if kept is not None and not changed and kept[0] == key:
            col, parts = kept[1], kept[2]
        else:
            if kept is not None:
                self._parts.pop(id(kept[1]), None)
            col, parts = siteviews.column(b, builder, queued), {}
        self._cols[b.name] = (key, col, parts, cfg, b.known, b.last, q)
        self._parts[id(col)] = (col, parts)
        return col

    def _part(self, template, c, root):
        """TEMPLATE (a part of a page: templates.part, or "json": c's entry
        in api/builders.json) of column C, rendered once per column: a
        builder's as long as _column keeps it, a group's as long as it
        reads the same."""
        entry = self._parts.get(id(c))
        if entry is None or entry[0] is not c:
            if c["kind"] != "group":
                return _make_part(template, c, root)   # an older page's: written once
            entry = self._group_parts.get(c["name"])
            if entry is None or entry[0] != c:
                entry = self._group_parts[c["name"]] = (c, {})
        parts = entry[1]
        piece = parts.get((template, root))
        if piece is None:
            piece = parts[(template, root)] = _make_part(template, c, root)
        return piece

    def _join(self, template, columns, root, slot=None):
        """The parts of COLUMNS joined, those of the last page of TEMPLATE
        (at SLOT: a section's) again but for the columns that are not the
        same objects."""
        kept = self._joined.get((template, root, slot))
        parts = self._join_parts(template, columns, root, slot)
        if kept is not None and kept[0] is parts:
            return kept[1]
        joined = markupsafe.Markup("".join(parts))
        self._joined[(template, root, slot)] = (parts, joined)
        return joined

    def _join_parts(self, template, columns, root, slot=None):
        """The parts of COLUMNS (_part), the list of the last call at
        TEMPLATE, ROOT and SLOT again (the same object) if every column is
        the same object, else a new list, made again but for those."""
        kept = self._joined_parts.get((template, root, slot))
        if kept is not None and len(kept[0]) == len(columns):
            changed = [i for i, same in enumerate(map(operator.is_, columns, kept[0])) if not same]
            if not changed:
                return kept[1]
            parts = list(kept[1])
            for i in changed:
                parts[i] = self._part(template, columns[i], root)
        else:
            parts = [self._part(template, c, root) for c in columns]
        self._joined_parts[(template, root, slot)] = (list(columns), parts)
        return parts

    def _layout(self, cfg, names):
        """sitegroups.plan of NAMES, made again when they or CFG changed."""
        names = tuple(names)
        if self._plan is None or self._plan[1] is not cfg or self._plan[0] != names:
            self._plan = (names, cfg, sitegroups.plan(list(names), _group_of(cfg)))
        return self._plan[2]

    def _sections_of(self, cfg, names):
        """sitegroups.sections of NAMES, made again when they or CFG changed."""
        names = tuple(names)
        if self._sections is None or self._sections[1] is not cfg or self._sections[0] != names:
            self._sections = (names, cfg, sitegroups.sections(list(names), _group_of(cfg)))
        return self._sections[2]

    def _chunk_column(self, key, name, columns):
        """sitegroups.group_column of COLUMNS (a chunk, at KEY), made again
        when one of them is not the same."""
        kept = self._group_cols.get(key)
        if kept is None or kept[0] != columns:
            kept = self._group_cols[key] = (columns, sitegroups.group_column(name, columns))
        return kept[1]

    def _group_column(self, name, columns):
        """Group NAME's column of index.html: merged from its chunks', so
        that a finished build costs a chunk's summary, not the group's."""
        parts = [self._chunk_column(("group", name, k), name, chunk)
                 for k, chunk in enumerate(sitegroups.chunks(columns), 1)]
        kept = self._group_merged.get(name)
        if kept is None or len(kept[0]) != len(parts) or not all(map(operator.is_, kept[0], parts)):
            kept = self._group_merged[name] = (parts, sitegroups.merge(name, parts))
        return kept[1]

    def _sections_pages(self, cfg, sections, layout, by_name, common, dirty, written):
        """Past PAGE_BUILDERS builders: each section's list of builders
        (when one of its columns changed) and console (when one of its
        builders' builds did: in DIRTY, None for all), then builders.html
        and console.html, their index (when a section's summary changed)."""
        waterfalls = {name for kind, name, _names in (layout or ()) if kind == "group"}
        counts = {}
        for g, _k, _names in sections:
            counts[g] = counts.get(g, 0) + 1
        rows, root = [], "../../"
        for g, k, names in sections:
            members = [by_name[n] for n in names]
            cols = [col for _b, col in members]
            paths = {"builders": sitegroups.builders_path(g, k), "console": sitegroups.console_path(g, k)}
            written.update(paths.values())
            label = text(g) if counts[g] == 1 else "%s %d of %d" % (text(g), k, counts[g])
            nav = {"label": label, "pages": [("%s %d" % (text(g), j), sitegroups.builders_path(g, j))
                                             for j in range(1, counts[g] + 1)] if counts[g] > 1 else []}
            if dirty is None or self._section_seen.get(("builders", g, k)) != cols:
                self._section_seen[("builders", g, k)] = cols
                self._write_page(cfg, paths["builders"], "builders.html", root=root, refresh=REFRESH_SEC,
                                 feed="atom.xml", title="%s: builders, %s" % (cfg.title, label),
                                 columns=cols, rows=self._join("builderrow.html", cols, root, (g, k)),
                                 section=dict(nav, what="builders"))
            if dirty is None or dirty.intersection(names):
                console_nav = dict(nav, what="console", pages=[(lbl, sitegroups.console_path(g, j))
                                                               for j, (lbl, _p) in enumerate(nav["pages"], 1)])
                self._write_page(cfg, paths["console"], "console.html", root=root, refresh=REFRESH_SEC,
                                 feed="atom.xml", title="%s: console, %s" % (cfg.title, label), columns=cols,
                                 head=self._join("consolehead.html", cols, root, (g, k)),
                                 rows=self._console_rows([b for b, _col in members], root), section=console_nav)
            rows.append(dict(paths, group=text(g), label=label, first=text(names[0]), last=text(names[-1]),
                             waterfall=sitegroups.page_path(g, k) if g in waterfalls else "",
                             column=self._chunk_column(("section", g, k), g, cols)))
        total = len(by_name)
        if dirty is None or self._section_seen.get("index") != rows:
            self._section_seen["index"] = rows
            for what, rel in (("builders", "builders.html"), ("console", "console.html")):
                self._write_page(cfg, rel, "sections.html", title="%s: %s" % (cfg.title, what), what=what,
                                 sections=rows, total=total, per_page=sitegroups.PAGE_BUILDERS, **common)

    def _waterfall_head(self, cfg, bs, wf_pages, columns, by_name, common, dirty, written):
        """index.html, and the groups' pages (sitegroups) whose builders
        are in DIRTY (None: all) or whose head rows changed; the layout
        (sitegroups.plan) it used.  WRITTEN gets the group pages' paths."""
        heads = [c for b in bs for n, c in b.cards.items() if n > b.sealed]
        older = "waterfall/%d.html" % wf_pages if wf_pages else ""
        pages = [("page %d" % k, "waterfall/%d.html" % k) for k in range(wf_pages - 1, max(0, wf_pages - 5), -1)]
        if wf_pages > 5:
            pages.append(("page 1 (oldest)", "waterfall/1.html"))
        pager = {"newer": "", "older": older, "pages": pages}
        plan = layout = self._layout(cfg, [b.name for b in bs])
        wf_columns = columns
        if layout is not None:
            wf_columns = [by_name[names[0]][1] if kind == "builder"
                          else self._group_column(name, [by_name[n][1] for n in names])
                          for kind, name, names in layout]
        else:
            layout = [("builder", b.name, [b.name]) for b in bs]
        any_queued = any(c["queued_count"] for c in wf_columns)
        self._write_page(cfg, "index.html", "waterfall.html", title=cfg.title, head=True, group="",
                         columns=wf_columns, rows=self._rows(heads, _slots(layout), wf_columns, ""),
                         pager=pager, any_queued=any_queued, max_queued=MAX_QUEUED_SHOWN,
                         **self._wf_cells(wf_columns, "", True, any_queued), **common)
        groups = {name: [by_name[n] for n in names] for kind, name, names in layout if kind == "group"}
        for name, members in groups.items():
            parts = sitegroups.chunks(members)
            pages = [] if len(parts) == 1 else [
                ("builders %d-%d" % ((k - 1) * sitegroups.PAGE_BUILDERS + 1,
                                     (k - 1) * sitegroups.PAGE_BUILDERS + len(chunk)), sitegroups.page_path(name, k))
                for k, chunk in enumerate(parts, 1)]
            for k, chunk in enumerate(parts, 1):
                written.add(sitegroups.page_path(name, k))
                self._group_page(cfg, name, k, len(parts), chunk, dict(pager, pages=pages), dirty)
        return plan

    def _group_page(self, cfg, name, k, count, members, pager, dirty):
        """groups/G.html (groups/G/K.html: chunk K of COUNT): group NAME's
        waterfall, MEMBERS [(Builder, column)]: their 2*WaterfallDepth=
        newest builds."""
        columns = [col for _b, col in members]
        seen = (columns, pager)
        if dirty is not None and self._group_seen.get((name, k)) == seen and not dirty.intersection(
                b.name for b, _col in members):
            return
        self._group_seen[(name, k)] = seen
        title = text(name) if count == 1 else "%s %d of %d" % (text(name), k, count)
        layout = [("builder", b.name, [b.name]) for b, _col in members]
        # The chunk's newest builds of those in memory (each builder's first
        # page's worth), sealed or not: its share of index.html may be none.
        heads = heapq.nlargest(2 * max(1, int(cfg.waterfall_depth)),
                               (c for b, _col in members for c in b.cards.values()), key=card_order)
        any_queued = any(c["queued_count"] for c in columns)
        root = "../" if k == 1 else "../../"
        self._write_page(cfg, sitegroups.page_path(name, k), "waterfall.html", root=root, refresh=REFRESH_SEC,
                         feed="atom.xml", title="%s: %s" % (cfg.title, title), head=True, group=title,
                         columns=columns, rows=self._rows(heads, _slots(layout), columns, root),
                         pager=pager, any_queued=any_queued, max_queued=MAX_QUEUED_SHOWN,
                         **self._wf_cells(columns, root, True, any_queued, (name, k)))

    def _remove_stale_group_pages(self, written):
        """After a full rendering: the pages under groups/ it did not
        write (WRITTEN: paths from the top), of groups or sections gone."""
        top = self.files.path("groups")
        keep = {self.files.path(rel) for rel in written}
        try:
            names = os.listdir(top)
        except FileNotFoundError:
            return
        for name in names:
            path = os.path.join(top, name)
            if name.endswith(".html") and not name.startswith("."):
                if path not in keep:
                    fsutil._unlink_quietly(path)
            elif not name.startswith(".") and os.path.isdir(path) and not os.path.islink(path):
                for inner in os.listdir(path):
                    if inner.endswith(".html") and not inner.startswith(".") \
                            and os.path.join(path, inner) not in keep:
                        fsutil._unlink_quietly(os.path.join(path, inner))
        groups = {rel for rel in written}
        self._group_seen = {k: v for k, v in self._group_seen.items()
                            if sitegroups.page_path(*k) in groups}

    def _builder_head(self, cfg, b, column):
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
        self._write_page(cfg, "builders/%s/index.html" % b.q, "builder.html", title=text(b.name),
                         root="../../", refresh=REFRESH_SEC, feed="builders/%s/atom.xml" % b.q, head=True,
                         builder=column, rows=[self.fragment("row.html", c, "../../") for c in builds],
                         pager={"newer": "", "older": older, "pages": pages},
                         page_range=None)
        self._write_json(column["json"], siteviews.builder_doc(b, column, HISTORY_PAGE), builds)

    def _rows(self, cards, slots, columns, root):
        """Waterfall rows, newest first: builds of one revision that follow
        each other share a row, once per builder.  SLOTS {builder: column
        index} of COLUMNS; a group's cell summarises its builds of the row."""
        rows, last_day = [], None
        for c in sorted(cards, key=card_order, reverse=True):
            col = slots.get(c["builder"])
            if col is None:
                continue
            row = rows[-1] if rows else None
            if not (row and c["revision"] and row["revision"] == c["revision"]
                    and c["builder"] not in row["builders"]):
                row = {"revision": c["revision"], "started": card_time(c) or None, "builders": set(),
                       "changes": self.fragment("changes.html", c, root), "cells": {}, "day": ""}
                rows.append(row)
            row["builders"].add(c["builder"])
            row["cells"].setdefault(col, []).append(c)
        for row in rows:
            cells = tuple((col, self._cell(cards, columns[col], root)) for col, cards in row["cells"].items())
            row["cells"] = self._join_cells((root, len(columns), cells), len(columns), WATERFALL_EMPTY,
                                            '<td class="build">%s</td>\n')
            day = templates.day(row["started"]) if row["started"] else ""
            row["day"] = day if day != last_day else ""
            last_day = day
        return rows

    def _cell(self, cards, column, root):
        if column["kind"] != "group":
            return self.fragment("cell.html", cards[0], root)
        # What cell_view reads of each card, which a finished build keeps.
        key = (tuple((c["builder"], c["number"], c["status"], c["html"]) for c in cards), column["html"], root)
        cell = self._group_cells.get(key) or self._group_cells_old.get(key)
        if cell is None:
            cell = templates.fragment("groupcell.html", v=sitegroups.cell_view(cards), href=column["html"],
                                      root=root)
        self._group_cells[key] = cell
        return cell

    def _join_cells(self, key, count, empty, form):
        """A row's COUNT cells joined: EMPTY each but those KEY[-1] names,
        ((index, markup), ...), each in FORM; kept while rows reuse it."""
        joined = self._row_cells.get(key) or self._row_cells_old.get(key)
        if joined is None:
            # Most columns have no build in a row: a constant each, joined.
            tds = [empty] * count
            for i, cell in key[-1]:
                tds[i] = form % cell
            joined = markupsafe.Markup("".join(tds))
        self._row_cells[key] = joined
        return joined

    def _console_rows(self, bs, root):
        """Console rows: a revision each, newest first, from the cards in
        memory.  Only the CONSOLE_ROWS newest get cells: a row has a cell
        per builder, so making them all would cost rows x builders."""
        index = {b.name: i for i, b in enumerate(bs)}
        groups, first = {}, {}
        for b in bs:
            for c in b.cards.values():
                key = c["revision"] or (c["builder"], c["number"])
                order = card_order(c)
                cards = groups.get(key)
                if cards is None:
                    groups[key] = [c]
                    first[key] = order
                else:
                    cards.append(c)
                    if order < first[key]:
                        first[key] = order
        newest = [groups[key] for key in heapq.nlargest(CONSOLE_ROWS, groups, key=first.__getitem__)]
        rows = []
        old = self._cells_old                # the cells of this pass are kept for the next (heads)
        for cards in newest:
            cards.sort(key=card_order, reverse=True)
            lead = next((c for c in cards if c["changes"]), cards[-1])
            mine = {}
            for c in cards:
                mine.setdefault(index[c["builder"]], []).append(c)
            cells = []
            for i, cell in sorted(mine.items()):
                key = (tuple(self.fragment("consolebox.html", c, root) for c in cell[:CONSOLE_CELL]),
                       max(0, len(cell) - CONSOLE_CELL))
                td = old.get(key) or self._cells.get(key)
                if td is None:
                    td = templates.part("consolecell.html", cell={"boxes": key[0], "more": key[1]})
                self._cells[key] = td
                cells.append((i, td))
            # Most builders did not build this revision: an empty cell each.
            rows.append({"started": min(card_time(c) for c in cards) or None, "branch": lead["branch"],
                         "changes": self.fragment("changes.html", lead, root),
                         "cells": self._join_cells(("console", len(bs), tuple(cells)), len(bs), CONSOLE_EMPTY,
                                                   "%s")})
        return rows

    # ---------------------------------------------------- feeds, badges
    def _feed_cards(self, bs, by_name, changed, every):
        """The FEED_ENTRIES newest finished builds of BS: of the last
        feed's and those of the builders CHANGED, while every card of the
        last feed is still the builder's (a card not there, replaced or
        pruned or removed, and every full pass: of all the cards).  A card
        of a builder not changed that was not in the last feed is older
        than its entries, so it is not in this one either."""
        last = self._feed_last
        if every or last is None or any(by_name.get(c["builder"], (None,))[0] is None
                                        or by_name[c["builder"]][0].cards.get(c["number"]) is not c for c in last):
            pool = (c for b in bs for c in b.cards.values())
        else:
            pool = itertools.chain(last, (c for name in changed if name in by_name
                                          for c in by_name[name][0].cards.values()))
        seen, cards = set(), []
        for c in pool:
            if c["state"] == "finished" and c["finished"] is not None and id(c) not in seen:
                seen.add(id(c))
                cards.append(c)
        self._feed_last = heapq.nlargest(FEED_ENTRIES, cards, key=_feed_order)
        return self._feed_last

    def _feed(self, cfg, rel, root, alternate, title, cards, builder):
        entries = sorted((c for c in cards if c["state"] == "finished" and c["finished"] is not None),
                         key=_feed_order, reverse=True)
        updated = entries[0]["finished"] if entries else 0.0
        entries = [self.fragment("entry.xml", c, root) for c in entries[:FEED_ENTRIES]]
        xml = templates.render("atom.xml", title=text(title), root=root, self_path=rel, alternate=alternate,
                               feed_id=urn("feed", cfg.title, builder), updated=updated, entries=entries)
        self.files.write(self.files.path(rel), xml)

    def _badge(self, b, word):
        label = text(b.name)
        if len(label) > 40:
            label = label[:39] + "\u2026"
        bg, fg = BADGE_COLOURS.get(word, BADGE_OTHER)
        svg = templates.render("badge.svg", label=label, word=word, colour=bg, text=fg,
                               label_width=text_width(label), word_width=text_width(word))
        self.files.write(self.files.path("builders/%s/badge.svg" % b.q), svg)

    # ----------------------------------------------------------- pieces
    def fragment(self, template, c, root):
        """TEMPLATE rendered for card C: once for a finished build (per
        ROOT), since the head pages show it again on every update."""
        if c["state"] != "finished":
            return _make_piece(template, c, root)
        pieces = self._pieces.setdefault((c["builder"], c["number"]), {})
        piece = pieces.get((template, root))
        if piece is None:
            piece = pieces[(template, root)] = _make_piece(template, c, root)
        return piece

    def _wf_cells(self, columns, root, head, any_queued, slot=None):
        """The columns' parts of a waterfall page (waterfall.html); SLOT
        the page's, for _join (a group's chunk)."""
        none = markupsafe.Markup("")
        return {"head_cells": self._join("wfhead.html", columns, root, slot),
                "last_cells": self._join("wflast.html", columns, root, slot) if head else none,
                "queued_cells": self._join("wfqueued.html", columns, root, slot) if head and any_queued else none}

    def _write_page(self, cfg, rel, template, **context):
        context.setdefault("site_title", cfg.title)
        self.files.write_page(rel, template, **context)

    def _write_json(self, rel, doc, builds=None):
        """DOC as JSON; BUILDS (cards) as its last key, from their pieces."""
        self.files.write_json(rel, doc, None if builds is None else
                              [self.fragment("json", c, "") for c in builds])


def _column(cfg, b, queued):
    return siteviews.column(b, cfg.builders.get(b.name), queued)


def _feed_order(c):
    return (c["finished"], c["builder"], c["number"])


def _make_part(template, c, root):
    if template == "json":
        return json.dumps(siteviews.builder_json(c), ensure_ascii=True, separators=(",", ":"))
    return templates.part(template, c=c, root=root, max_queued=MAX_QUEUED_SHOWN)


def _group_of(cfg):
    """Builder name -> its WaterfallGroup= ("" for none, or not configured)."""
    return lambda name: getattr(cfg.builders.get(name), "group", "")


def _slots(layout):
    """{builder: column index} of a sitegroups.plan()."""
    return {n: i for i, (_kind, _name, names) in enumerate(layout) for n in names}


def _make_piece(template, c, root):
    if template == "json":
        return json.dumps(c, ensure_ascii=True, separators=(",", ":"))
    if template == "entry.xml":
        c = dict(c, id=urn("build", c["builder"], c["number"], c["started"]), summary=feed_summary(c))
    return templates.fragment(template, b=c, root=root)


def feed_summary(c):
    """The text of card C's feed entry."""
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


def urn(*parts):
    """A stable Atom id: a name-based UUID of PARTS."""
    return "urn:uuid:%s" % uuid.uuid5(uuid.NAMESPACE_URL, "buildunits:" + json.dumps(parts, default=str))


def text_width(label):
    """About how wide LABEL is in 11px Verdana, plus padding: a badge's part."""
    return 10 + int(sum(4.5 if ch in "fijlrt.,:;' |" else 8.5 if ch in "mwMW@" else 7 for ch in label))
