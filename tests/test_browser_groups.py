"""Tests with a real browser: the waterfall of many builders, in groups.

Sites written as tests/test_browser.py writes them (config.load on
builder files, State.write_build, Site.rebuild), loaded in headless
Chromium:

  - 1000 builders, in groups of WaterfallGroup= or in none: index.html
    stays under 100 KB, shows a column per group, and each group's page
    a column per builder of it;
  - a small grouped site: every link resolves, no page is an orphan;
  - a builder name from the history that is hostile, summarised in a
    group's cell: no script runs, the name shows as text.
"""

import os
import re
from urllib.parse import unquote

import pytest

import browser
from buildunits import config
from test_browser import (ARTIFACTS, HOSTILE_BUILDER, T0, Rendered, add_build, crawl, parse, render,
                          script_traces)

INDEX_LIMIT = 100 * 1024
OK = [{"name": "compile", "result": "success"}, {"name": "test", "result": "success"}]
BAD = [{"name": "compile", "result": "success"}, {"name": "test", "result": "failure", "summary": "exit status 2"}]


def write_builders(d, groups):
    """A configuration of {builder: WaterfallGroup= value or ""}."""
    os.makedirs(os.path.join(d, "builders"), exist_ok=True)
    with open(os.path.join(d, "buildunits.conf"), "w") as f:
        f.write("[Site]\nTitle=Many builders\n")
    for name, group in groups.items():
        with open(os.path.join(d, "builders", name + ".builder"), "w") as f:
            f.write("[Builder]\n%sRepository=/srv/git/big.git\n\n[Step compile]\nCommand=make\n"
                    % ("WaterfallGroup=%s\n" % group if group else ""))
    return config.load(d)


def many(tmp, groups, extra=()):
    """A site of GROUPS' builders, each with one build of the same revision
    (every 97th a failure, counting from the newest); EXTRA builders only
    the history knows, each with a failure."""
    cfg = write_builders(os.path.join(tmp, "config"), groups)
    st, _sp, s = render(tmp, cfg)
    for i, name in enumerate(groups):
        add_build(st, name, BAD if (len(groups) - 1 - i) % 97 == 0 else OK, started=T0 + i)
    for name in extra:
        add_build(st, name, BAD, started=T0 + len(groups))
    s.rebuild()
    return Rendered(os.path.join(tmp, "site"))


def header_links(tree):
    """The hrefs of the waterfall's column headers (time and changes aside)."""
    ths = [n for n in tree.iter() if n.tag == "th" and n.parent.parent.tag == "thead"]
    return [a.attrs["href"] for th in ths for a in th.iter() if a.tag == "a"]


@pytest.fixture(scope="module", params=["grouped", "ungrouped"])
def thousand(request, tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("thousand-" + request.param))
    names = ["b%04d" % i for i in range(1000)]
    groups = {n: ("g%02d" % (i // 50) if request.param == "grouped" else "") for i, n in enumerate(names)}
    return many(tmp, groups)


def test_a_thousand_builders_make_a_small_first_page_of_groups(thousand):
    index = thousand.path("index.html")
    assert os.path.getsize(index) < INDEX_LIMIT, os.path.getsize(index)
    tree = thousand.tree(index)
    links = header_links(tree)
    grouped = os.path.exists(thousand.path("groups", "g00.html"))
    expected = ["groups/g%02d.html" % k for k in range(20)] if grouped else ["groups/ungrouped.html"]
    assert links == expected
    words = tree.words()
    assert re.search(r"failure \d+ builds?: 1 failure, \d+ success", words), words[:2000]
    # The bad build is named in its group's cell, with a link to it.
    assert "b0999 #1 failure" in words
    assert any(a.attrs.get("href") == "builders/b0999/1/index.html" for a in tree.iter() if a.tag == "a")
    out = browser.screenshot(index, os.path.join(ARTIFACTS, "waterfall-1000-%s.png"
                                                 % ("grouped" if grouped else "ungrouped")), size=(1400, 800))
    assert browser.png_size(out) == (1400, 800)


def test_a_group_page_has_a_column_per_builder_of_it(thousand):
    grouped = os.path.exists(thousand.path("groups", "g00.html"))
    page = thousand.path("groups", "g01.html" if grouped else "ungrouped.html")
    tree = thousand.tree(page)
    # A group of more than 50 builders is cut into pages of 50: 1000
    # builders in no group are groups/ungrouped.html and groups/ungrouped/K.html.
    members = ["b%04d" % i for i in range(50, 100) if grouped] or ["b%04d" % i for i in range(50)]
    assert header_links(tree) == ["../builders/%s/index.html" % n for n in members]
    assert "group %s" % ("g01" if grouped else "ungrouped 1 of 20") in tree.words()
    boxes = [n for n in tree.iter() if "box" in n.classes() and n.tag == "a"]
    assert {unquote(a.attrs["href"]).split("/")[2] for a in boxes if a.attrs["href"].startswith("../builders/")} \
        >= set(members[-5:])
    if not grouped:
        assert "../groups/ungrouped/20.html" in [a.attrs["href"] for a in tree.iter() if a.tag == "a"]
        last = thousand.tree(thousand.path("groups", "ungrouped", "20.html"))
        assert header_links(last) == ["../../builders/b%04d/index.html" % i for i in range(950, 1000)]
        assert "group ungrouped 20 of 20" in last.words()


def test_a_small_grouped_site_links_resolve_and_nothing_is_orphaned(tmp_path):
    groups = {"linux-gcc": "linux", "linux-clang": "linux", "bsd": "bsd", "docs": ""}
    rendered = many(str(tmp_path), groups)
    index = rendered.tree(rendered.path("index.html"))
    assert header_links(index) == ["groups/bsd.html", "groups/linux.html", "builders/docs/index.html"]
    pages, problems = crawl(rendered)
    assert not problems, "\n".join(problems[:40])
    orphans = [os.path.relpath(p, rendered.root) for p in rendered.files((".html",)) if p not in pages]
    assert not orphans, orphans


def test_a_hostile_builder_name_in_a_groups_cell_is_text(tmp_path):
    # 17 loose builders: more columns than fit, so all are in "ungrouped",
    # with the builder only the history knows, whose name is a payload.
    groups = {"b%02d" % i: "" for i in range(17)}
    rendered = many(str(tmp_path), groups, extra=[HOSTILE_BUILDER])
    pages = [rendered.path("index.html"), rendered.path("groups", "ungrouped.html")]
    traces, shown = [], ""
    for p, dom in rendered.doms(pages).items():
        assert "PWNED" not in dom and "data-pwned" not in dom, p
        traces += script_traces(parse(dom), os.path.relpath(p, rendered.root))
        shown += parse(dom).text()
    assert not traces, traces
    assert HOSTILE_BUILDER in shown
