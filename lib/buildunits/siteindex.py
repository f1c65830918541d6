"""Siteindex: what the site remembers between updates, and INDEX, its file.

The site keeps, per builder (Builder), the highest number known to be
taken, how far its waterfall and history pages go, its last finished
build, the numbers whose pages are not final yet (running, or taken
without a record so far), and the cards of the builds its head pages show
or a page still to be written needs.  INDEX (.buildunits-site.json, in the
site's top directory; private, not part of the API) keeps all of that but
the cards, which a new process reads again from the records:

    {"format": "site-index", "version": 1, "mark": FINAL_MARK, "history_page": 50,
     "waterfall": {"pages": K, "open": [{"page", "members": [[B, n]], "waiting": [[B, n]]}],
                   "seals": [[K, {B: [first, last]}]]},
     "builders": {B: {"known", "sealed", "pages", "skipped": [[first, last]],
                      "unfinal": [n], "last": null or {"number", "status", "finished"},
                      "removed": [[first, last]]}}}

Versions: 1 (buildunits 0.1): first version.  "seals" (what each older
waterfall page holds: each builder's first and last numbers on it, so that a
page holding a build the janitor removed can be written again) and
"removed" (the numbers the janitor removed, as ranges) added in 0.2,
still version 1: an INDEX without them has no seals (its older pages are
written again only by a full rendering) and no removals.  An INDEX of another
version, mark or history page size is not read: the site is then
rendered whole again.

The decisions on that memory are pure functions here: which numbers a
skipped history page leaves out, which history pages became full, what
the next older waterfall page holds, which cards may be forgotten.
"""

import json
from urllib.parse import quote

from . import fsutil
from .siteviews import card_order, num, safe_name, text

INDEX = ".buildunits-site.json"
INDEX_VERSION = 1
HISTORY_PAGE = 50                    # builds per history page; changing it needs a new FINAL_MARK


class Builder:
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
        self.removed = []       # [first, last] ranges of numbers the janitor removed, ascending
        self.listed_for = None  # the counter value that made us list the directory
        self.counter_stamp = None  # State.counter_stamp when it was last read
        self._index_key = self._index_json = None  # index_text(), and what it was made of

    def head_floor(self):
        """The builder's first page shows the numbers above this."""
        return HISTORY_PAGE * max(0, self.known // HISTORY_PAGE - 1)

    def keep_floor(self):
        """Cards of finished builds up to this number no page needs."""
        return min(self.sealed, self.head_floor(), self.pages * HISTORY_PAGE)

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

    def full_pages(self, full):
        """The history pages up to FULL to write now, each yielded once
        self.pages counts it.  A page without a build is skipped: after a
        jump of the numbers, there could be billions.  Every build on a
        page not written yet has its card in memory (see prune)."""
        if self.pages >= full:
            return
        have = sorted({(n - 1) // HISTORY_PAGE + 1 for n in self.cards if n > self.pages * HISTORY_PAGE})
        for page in have + [full + 1]:
            page = min(page, full + 1)
            if page > self.pages + 1:
                if self.skipped and self.skipped[-1][1] == self.pages:
                    self.skipped[-1][1] = page - 1
                else:
                    self.skipped.append([self.pages + 1, page - 1])
                self.pages = page - 1
            if page > full:
                break
            self.pages = page
            yield page

    def prune(self):
        """Forget the cards of finished builds no head page shows and no
        history page still to be written needs; returns their numbers."""
        floor = self.keep_floor()
        gone = [n for n, c in self.cards.items() if n <= floor and c["state"] == "finished"]
        for n in gone:
            del self.cards[n]
            self.stamps.pop(n, None)
        return gone

    def add_removed(self, n):
        """Remember that the janitor removed #N (ranges, merged).

        >>> b = Builder("x"); [b.add_removed(n) for n in (3, 1, 2, 7, 5, 6)] and b.removed
        [[1, 3], [5, 7]]
        """
        if self.is_removed(n):
            return
        r = self.removed
        r.append([n, n])
        r.sort()
        out = []
        for lo, hi in r:
            if out and lo <= out[-1][1] + 1:
                out[-1][1] = max(out[-1][1], hi)
            else:
                out.append([lo, hi])
        self.removed[:] = out

    def is_removed(self, n):
        return any(lo <= n <= hi for lo, hi in self.removed)

    def index_entry(self):
        e = {"known": self.known, "sealed": self.sealed, "pages": self.pages,
             "skipped": self.skipped, "unfinal": sorted(self.unfinal), "last": self.last}
        if self.removed:
            e["removed"] = self.removed
        return e

    def index_text(self):
        """index_entry() as JSON, encoded again only when it changed."""
        key = (self.known, self.sealed, self.pages, repr(self.skipped), frozenset(self.unfinal),
               None if self.last is None else tuple(self.last.values()), repr(self.removed))
        if self._index_key != key:
            self._index_key = key
            self._index_json = json.dumps(self.index_entry(), ensure_ascii=True)
        return self._index_json


def next_seal(builders, size):
    """What the next older waterfall page holds, or None while the first
    page holds fewer than 2 * SIZE builds: (marks {builder: the highest
    number it seals}, the cards, the (builder, number) still running).
    The oldest SIZE builds go, with each builder's part a run of numbers;
    while some of them run, only once 4 * SIZE are waiting."""
    waiting = [c for b in builders for n, c in b.cards.items() if n > b.sealed]
    if len(waiting) < 2 * size:
        return None
    waiting.sort(key=card_order)
    marks = {}
    for c in waiting[:size]:
        marks[c["builder"]] = max(marks.get(c["builder"], 0), c["number"])
    members = [c for c in waiting if c["number"] <= marks.get(c["builder"], 0)]
    running = {(c["builder"], c["number"]) for c in members if c["state"] != "finished"}
    if running and len(waiting) < 4 * size:
        return None
    return marks, members, running


# -------------------------------------------------------------- INDEX
def load(path, mark):
    """({name: Builder}, waterfall pages, open waterfall pages, seals) from the
    INDEX at PATH; ValueError (or OSError) if it is not one to take up
    from: of another version, MARK or page size, or damaged."""
    try:
        with open(path, encoding="utf-8") as f:
            idx = json.load(f)
        if (idx.get("format") != "site-index" or idx.get("version") != INDEX_VERSION
                or idx.get("mark") != mark or idx.get("history_page") != HISTORY_PAGE):
            raise ValueError("another site index")
        wf = idx["waterfall"]
        wf_pages, wf_open, builders = _count(wf["pages"]), {}, {}
        seals = {_count(k): {str(name): [_count(lo), _count(hi)] for name, (lo, hi) in marks.items()}
                 for k, marks in wf.get("seals", [])}
        for o in wf["open"]:
            members = [(str(m[0]), _count(m[1])) for m in o["members"]]
            wf_open[_count(o["page"])] = {
                "members": members, "waiting": {(str(m[0]), _count(m[1])) for m in o["waiting"]}}
        for name, e in idx["builders"].items():
            if safe_name(name):
                builders[name] = _builder(name, e)
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise ValueError("damaged site index: %r" % (e,)) from None
    return builders, wf_pages, wf_open, seals


def _builder(name, e):
    b = Builder(name)
    b.known, b.sealed, b.pages = _count(e["known"]), _count(e["sealed"]), _count(e["pages"])
    b.unfinal = {_count(n) for n in e["unfinal"]}
    b.skipped = [[_count(lo), _count(hi)] for lo, hi in e["skipped"]]
    b.removed = [[_count(lo), _count(hi)] for lo, hi in e.get("removed", [])]
    last = e["last"]
    if last is not None:
        b.last = {"number": _count(last["number"]), "status": text(last["status"]),
                  "finished": num(last["finished"])}
    return b


def save(path, builders, wf_pages, wf_open, mark, previous=None, seals=None, seals_json=None,
         entries=None, changed=None):
    """Write INDEX at PATH (no fsync: a lost INDEX costs a full rendering)
    unless its text would be PREVIOUS; returns the text.  ENTRIES (a dict
    the caller keeps) holds each builder's entry as the last call wrote
    it; CHANGED names the builders whose entries may differ since (None:
    any), so a pass that changed one builder encodes one entry."""
    idx = {"format": "site-index", "version": INDEX_VERSION, "mark": mark,
           "history_page": HISTORY_PAGE,
           "waterfall": {"pages": wf_pages, "open": [
               {"page": k, "members": o["members"], "waiting": sorted(o["waiting"])}
               for k, o in sorted(wf_open.items())],
               "seals": "\0seals"},
           "builders": {}}
    head = json.dumps(idx, ensure_ascii=True).replace(
        '"\\u0000seals"', seals_json if seals_json is not None else seals_text(seals or {}), 1)
    # A builder's entry is encoded again only when it changed: a pass
    # that changed nothing costs a comparison per builder.
    if entries is None:
        entries = {}
    if changed is None or len(entries) != len(builders):
        entries.clear()
        changed = builders
    for name in changed:
        b = builders.get(name)
        if b is not None:
            entries[name] = "%s: %s" % (json.dumps(name, ensure_ascii=True), b.index_text())
    if len(entries) != len(builders):      # one gone: not ours to guess which
        entries.clear()
        entries.update((name, "%s: %s" % (json.dumps(name, ensure_ascii=True), b.index_text()))
                       for name, b in builders.items())
    text = head[:-3] + "{" + ", ".join(entries[name] for name in sorted(entries)) + "}}\n"   # head ends with {}}
    if text != previous:
        fsutil.write_atomic(path, text, durable=False)
    return text


def seals_text(seals):
    """SEALS ({page: {builder: [first, last]}}) as INDEX holds them, in JSON:
    the caller keeps it until a page is sealed (they are as many as older
    pages, and never change once made)."""
    return json.dumps([[k, marks] for k, marks in sorted(seals.items())], ensure_ascii=True)


def _count(v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError("not a count: %r" % (v,))
    return v
