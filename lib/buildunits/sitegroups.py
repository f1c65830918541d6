"""Sitegroups: the waterfall's columns when the builders are many.

A waterfall with a column per builder reads up to about MAX_COLUMNS
builders on a screen; beyond, a row is mostly empty cells and the page
grows with builders times rows.  So the waterfall's first page (and its
older pages) shows groups: a builder's WaterfallGroup= (config.py) names
its group, and

  - with no WaterfallGroup= anywhere and at most MAX_COLUMNS builders,
    every builder is a column (plan() is None: the page of old);
  - otherwise every group is a column, and a builder in no group is a
    column of its own while all the columns fit in MAX_COLUMNS, else is
    in the group DEFAULT_GROUP.

A group's cell in a row summarises that group's builds of the row: the
worst status word, how many builds of each word, and links to the bad
ones (at most MAX_BAD).  Each group has its own waterfall, groups/G.html
(page_path), with a column per builder of the group.

Past PAGE_BUILDERS builders, the pages with a line or a column per
builder are cut into sections (sections()): each group's builders (those
in none in DEFAULT_GROUP) in chunks of at most PAGE_BUILDERS, by name.
A section has its own list of builders and console (builders_path,
console_path), and a chunk of a group its own waterfall (page_path);
builders.html and console.html are then the index of the sections, a
line each (its group_column: the summary of its builders' last results).
So a finished build rewrites pages of at most PAGE_BUILDERS builders and
the index, whatever the number of builders.  Pure functions of the
columns (siteviews.column) and cards (siteviews.card): no I/O.

    >>> plan(["a", "b", "c"], {"a": "x", "b": "x"}.get)
    [('group', 'x', ['a', 'b']), ('builder', 'c', ['c'])]
    >>> plan(["a", "b"], lambda name: "") is None
    True
    >>> [(g, k, len(m)) for g, k, m in sections(["b%03d" % i for i in range(120)], lambda n: "")]
    [('ungrouped', 1, 50), ('ungrouped', 2, 50), ('ungrouped', 3, 20)]
    >>> page_path("x", 2), builders_path("x", 2)
    ('groups/x/2.html', 'groups/x/builders-2.html')
    >>> cell_view([{"builder": "a", "number": 3, "status": "failure", "html": "builders/a/3/index.html"},
    ...            {"builder": "b", "number": 9, "status": "success", "html": "builders/b/9/index.html"}])["counts"]
    [('failure', 1), ('success', 1)]
"""

from urllib.parse import quote

from .siteviews import text

MAX_COLUMNS = 16                     # what a 1400 px window shows side by side
PAGE_BUILDERS = 50                   # builders on one page of a section (sections)
MAX_BAD = 5                          # bad builds or builders named in a group's cell
DEFAULT_GROUP = "ungrouped"
# Status words, worst first: what wants a look first.  A word no release
# writes (a record's own text) counts as the worst: something is off.
ORDER = ("exception", "failure", "retry", "cancelled", "warnings", "running", "pending", "success", "skipped",
         "removed")                  # a build the janitor removed (siteviews.removed_card): never named
_RANK = {w: i for i, w in enumerate(ORDER)}
_FIRST_GOOD = _RANK["running"]       # words ranked below are "bad", named in a cell


def rank(word):
    return _RANK.get(word, -1)


def page_path(group, k=1):
    """The path, from the site's top, of GROUP's waterfall: of its Kth
    chunk of PAGE_BUILDERS builders (chunks())."""
    if k == 1:
        return "groups/%s.html" % quote(group, safe="")
    return "groups/%s/%d.html" % (quote(group, safe=""), k)


def builders_path(group, k):
    """The list of the builders of section (GROUP, K): builders.html's part."""
    return "groups/%s/builders-%d.html" % (quote(group, safe=""), k)


def console_path(group, k):
    """The console of the builders of section (GROUP, K)."""
    return "groups/%s/console-%d.html" % (quote(group, safe=""), k)


def chunks(items):
    """ITEMS in runs of PAGE_BUILDERS, the last shorter: a group's pages."""
    return [items[i:i + PAGE_BUILDERS] for i in range(0, len(items), PAGE_BUILDERS)] or [items]


def sections(names, group_of):
    """The sections of builder NAMES (in order; GROUP_OF(name) its group
    or ""): [(group, k, members)], groups by name (DEFAULT_GROUP for the
    builders in none), each group's builders in chunks; None while the
    builders are at most PAGE_BUILDERS (builders.html and console.html
    are then the one page of old)."""
    if len(names) <= PAGE_BUILDERS:
        return None
    groups = {}
    for name in names:
        groups.setdefault(group_of(name) or DEFAULT_GROUP, []).append(name)
    return [(g, k, members) for g in sorted(groups) for k, members in enumerate(chunks(groups[g]), 1)]


def plan(names, group_of):
    """The columns over builder NAMES (in order), GROUP_OF(name) its group
    or "": [(kind, name, members)], kind "group" or "builder", groups first
    by name; None when every builder is a column of the page of old."""
    groups, loose = {}, []
    for name in names:
        g = group_of(name)
        if g:
            groups.setdefault(g, []).append(name)
        else:
            loose.append(name)
    if not groups and len(loose) <= MAX_COLUMNS:
        return None
    if len(groups) + len(loose) > MAX_COLUMNS and loose:
        groups.setdefault(DEFAULT_GROUP, []).extend(loose)
        loose = []
    return ([("group", g, groups[g]) for g in sorted(groups)]
            + [("builder", name, [name]) for name in loose])


def summary(words):
    """{status: the worst of WORDS or None, counts: [(word, how many)], worst first}."""
    counts = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    ordered = sorted(counts.items(), key=lambda wc: (rank(wc[0]), wc[0]))
    return {"status": ordered[0][0] if ordered else None, "counts": ordered, "total": len(words)}


def _named(items):
    """The bad ones of ITEMS (dicts with a status), worst first, MAX_BAD of them."""
    bad = sorted((i for i in items if rank(i["status"]) < _FIRST_GOOD),
                 key=lambda i: (rank(i["status"]), i["name"], i["number"]))
    return bad[:MAX_BAD], max(0, len(bad) - MAX_BAD)


def group_column(name, columns):
    """Group NAME as the head rows show it, from its builders' COLUMNS."""
    lasts = [dict(c["last"], name=c["name"]) for c in columns if c["last"]]
    last = summary([x["status"] for x in lasts])
    last["bad"], last["more_bad"] = _named(lasts)
    return {"kind": "group", "name": text(name), "html": page_path(name), "size": len(columns), "last": last,
            "running": sum(len(c["running"]) for c in columns),
            "queued": [], "queued_count": sum(c["queued_count"] for c in columns)}


def merge(name, parts):
    """group_column(NAME, columns) from the group_column()s PARTS of runs
    of those columns (a group's chunks): the same dict, made in the time
    of the parts, not of the builders.

    >>> cols = [{"name": n, "last": {"status": w, "number": 1, "html": n}, "running": [], "queued_count": 0}
    ...         for n, w in (("a", "failure"), ("b", "success"), ("c", "failure"))]
    >>> merge("g", [group_column("g", cols[:2]), group_column("g", cols[2:])]) == group_column("g", cols)
    True
    """
    if len(parts) == 1:
        return parts[0]
    counts = {}
    for p in parts:
        for w, n in p["last"]["counts"]:
            counts[w] = counts.get(w, 0) + n
    ordered = sorted(counts.items(), key=lambda wc: (rank(wc[0]), wc[0]))
    bad = sorted((x for p in parts for x in p["last"]["bad"]),
                 key=lambda i: (rank(i["status"]), i["name"], i["number"]))
    more = sum(p["last"]["more_bad"] for p in parts) + max(0, len(bad) - MAX_BAD)
    last = {"status": ordered[0][0] if ordered else None, "counts": ordered,
            "total": sum(p["last"]["total"] for p in parts), "bad": bad[:MAX_BAD], "more_bad": more}
    return {"kind": "group", "name": text(name), "html": page_path(name), "size": sum(p["size"] for p in parts),
            "last": last, "running": sum(p["running"] for p in parts),
            "queued": [], "queued_count": sum(p["queued_count"] for p in parts)}


def cell_view(cards):
    """A group's cell of one row, from the CARDS of its builders there."""
    view = summary([c["status"] for c in cards])
    view["bad"], view["more_bad"] = _named([{"name": c["builder"], "number": c["number"], "status": c["status"],
                                             "html": c["html"]} for c in cards])
    return view
