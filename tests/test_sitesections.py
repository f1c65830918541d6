"""The site at many builders (sitegroups.sections): past PAGE_BUILDERS
builders, builders.html and console.html are the index of sections, each
section with its own list of builders and console, and a group's
waterfall is cut into chunks.  What a reader checks: the page of a
builder's section shows its new result, every link resolves, and one
finished build rewrites a bounded set of files.  Real state, spool and
Site objects; the pages read back with html.parser (test_site's Page)."""

import os

from buildunits import config, site, sitegroups
from buildunits.spool import Spool
from buildunits.state import State

from test_site import Page, T0, backdate_site, check_links, files_of, make_build, written_since


def _cfg(tmp_path, names, group_of=lambda name: ""):
    builders = {n: config.Builder(name=n, path=str(tmp_path / n), description="builds %s" % n,
                                  group=group_of(n), steps=[config.Step(name="compile", command="make")])
                for n in names}
    return config.Config(directory=str(tmp_path / "etc"), builders=builders, title="Many CI", waterfall_depth=10)


def _site(tmp_path, cfg, built):
    st = State(str(tmp_path / "state"))
    sp = Spool(str(tmp_path / "spool"))
    st.ensure()
    sp.ensure()
    for i, name in enumerate(built):
        make_build(st, name, started=T0 + 60 * i, rev="%040x" % i)
    s = site.Site(str(tmp_path / "site"), st, sp, cfg)
    s.rebuild(force=True)
    return st, s


def _text(root, rel):
    return Page(os.path.join(root, rel)).all_text


def _links(root, rel):
    return Page(os.path.join(root, rel)).links()


def test_one_finished_build_at_1000_builders_rewrites_its_section_only(tmp_path):
    names = ["b%04d" % i for i in range(1000)]
    cfg = _cfg(tmp_path, names)
    st, s = _site(tmp_path, cfg, ["b0000", "b0777", "b0999"])
    root = s.root
    # builders.html is the index: a line per section of 50, linking to its pages.
    index = _links(root, "builders.html")
    for k in range(1, 21):
        assert sitegroups.builders_path("ungrouped", k) in index
        assert sitegroups.console_path("ungrouped", k) in index
        assert sitegroups.page_path("ungrouped", k) in index
    assert "ungrouped 16 of 20" in _text(root, "builders.html")
    assert os.path.getsize(os.path.join(root, "index.html")) < 100_000

    backdate_site(root)
    before = files_of(root)
    n = make_build(st, "b0777", steps=(("compile", "failure", "error: no rule\n"),), started=T0 + 10**6,
                   rev="e" * 40)
    s.update([("b0777", n)])
    written = set(written_since(root, before))
    # b0777 is builder 778: section 16 (builders 751 to 800).
    section = {"groups/ungrouped/builders-16.html", "groups/ungrouped/console-16.html",
               "groups/ungrouped/16.html"}
    build = {p for p in written if p.startswith(("builders/b0777/%d/" % n, "api/builders/b0777/builds/"))}
    assert build and all("b0777" in p for p in build)
    heads = {"index.html", "atom.xml", "builders/b0777/index.html", "builders/b0777/atom.xml",
             "builders/b0777/badge.svg", "api/builders/b0777/index.json", "api/builders.json", site.INDEX}
    # The summary of section 16 changed (a failure now): the indexes too.
    indexes = {"builders.html", "console.html"}
    assert written == build | section | heads | indexes, sorted(written ^ (build | section | heads | indexes))
    # Bounded: no page written is of more than one section's builders.
    sizes = {p: os.path.getsize(os.path.join(root, p)) for p in written}
    assert max(v for p, v in sizes.items() if p not in ("api/builders.json", site.INDEX)) < 200_000, sizes
    # What a reader sees: the new result on the section's page, its console
    # and the index, and the failing builder named in the index's summary.
    text = _text(root, "groups/ungrouped/builders-16.html")
    assert "b0777" in text and "#%d failure" % n in text and "b0000" not in text
    assert "builders/b0777/%d/index.html" % n in "".join(_links(root, "groups/ungrouped/console-16.html"))
    assert "b0777 #%d failure" % n in _text(root, "builders.html")
    assert "b0777 #%d failure" % n in _text(root, "console.html")

    # Another success of a builder whose last was a success: the index
    # shows the same summary and is not written again.
    backdate_site(root)
    before = files_of(root)
    n0 = make_build(st, "b0000", started=T0 + 10**6 + 60, rev="f" * 40)
    s.update([("b0000", n0)])
    written = set(written_since(root, before))
    assert {"groups/ungrouped/builders-1.html", "groups/ungrouped/console-1.html"} <= written
    assert not written & {"builders.html", "console.html", "groups/ungrouped/builders-16.html"}, written
    assert "#%d success" % n0 in _text(root, "groups/ungrouped/builders-1.html")

    # A pass with nothing new writes nothing.
    backdate_site(root)
    before = files_of(root)
    assert s.update([]) == 0
    assert written_since(root, before) == []


def test_sections_by_group_link_every_way_and_show_every_builder_once(tmp_path):
    names = ["a%03d" % i for i in range(70)] + ["z%03d" % i for i in range(50)] + ["loose1", "loose2"]
    group = {**{n: "big" for n in names[:70]}, **{n: "small" for n in names[70:120]}}
    cfg = _cfg(tmp_path, names, lambda n: group.get(n, ""))
    _st, s = _site(tmp_path, cfg, ["a000", "a069", "z010", "loose1"])
    root = s.root
    parsed = check_links(root)    # every link of every page resolves
    assert os.path.join(os.path.realpath(root), "groups", "big", "2.html") in parsed
    index = _links(root, "builders.html")
    assert list(dict.fromkeys(p for p in index if p.startswith("groups/") and "/builders-" in p)) == [
        "groups/big/builders-1.html", "groups/big/builders-2.html", "groups/small/builders-1.html",
        "groups/ungrouped/builders-1.html"]
    shown = []
    for p in ("groups/big/builders-1.html", "groups/big/builders-2.html", "groups/small/builders-1.html",
              "groups/ungrouped/builders-1.html"):
        shown += [h.split("/")[3] for h in _links(root, p)
                  if h.startswith("../../builders/") and h.endswith("/index.html") and h.count("/") == 4]
    assert sorted(shown) == sorted(names)
    # A group's waterfall is in chunks of 50, each linking to the others;
    # the group's column on index.html summarises all 70.
    assert "groups/big/2.html" in "".join(_links(root, "groups/big.html"))
    assert "a069" in _text(root, "groups/big/2.html") and "a069" not in _text(root, "groups/big.html")
    top = _links(root, "index.html")
    assert "groups/big.html" in top and "groups/small.html" in top and "builders/loose1/index.html" in top
    assert "groups/big/2.html" not in top


def test_a_full_rendering_removes_the_pages_of_sections_gone(tmp_path):
    names = ["b%03d" % i for i in range(120)]
    st, s = _site(tmp_path, _cfg(tmp_path, names), ["b000"])
    assert os.path.exists(os.path.join(s.root, "groups", "ungrouped", "builders-3.html"))
    s.cfg = _cfg(tmp_path, names[:60])
    s.rebuild()
    gone = [p for p in ("builders-3.html", "console-3.html", "3.html")
            if os.path.exists(os.path.join(s.root, "groups", "ungrouped", p))]
    assert gone == []
    assert os.path.exists(os.path.join(s.root, "groups", "ungrouped", "builders-2.html"))
    check_links(s.root)
    # Down to PAGE_BUILDERS: builders.html is the one list of old again.
    s.cfg = _cfg(tmp_path, names[:40])
    s.rebuild()
    assert "b039" in _text(s.root, "builders.html")
    check_links(s.root)
