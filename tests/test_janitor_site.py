"""The site after the janitor: pages of removed builds gone, nothing
pointing nowhere.

A history rendered by the site's engine (site.Site, as htmlgen runs it),
then `buildunits janitor`'s pass (janitor.run, which hints the site
through the spool's hints/), then the site's update from those hints, as
htmlgen takes them: every href of every HTML file of the site resolves to
a file (test_site.check_links), the removed builds have no page or JSON
file, and the pages that listed them (history pages, older waterfall
pages) say "removed" in their place.  Also across a new process (from
INDEX) and a full rendering, and for logs removed and a pinned build.
"""

import os

from buildunits import janitor, site
from buildunits.spool import Spool
from buildunits.state import State
from test_site import T0, check_links, make_build, make_cfg, pages


def _site(tmp_path, size=200, depth=5):
    st, sp = State(str(tmp_path / "state")), Spool(str(tmp_path / "spool"))
    st.ensure()
    sp.ensure()
    cfg = make_cfg(tmp_path, names=("hello", "world"), depth=depth)
    for i in range(size):
        make_build(st, "hello" if i % 3 else "world", started=T0 + 60 * i, rev="%040x" % i,
                   steps=(("compile", "success", "x\n"), ("test", "success", "y\n")))
    s = site.Site(str(tmp_path / "site"), st, sp, cfg)
    s.rebuild(force=True)
    return st, sp, cfg, s


def _janitor(st, sp, cfg, **keys):
    """A janitor pass with the retention KEYS set for every builder."""
    for b in cfg.builders.values():
        for k, v in keys.items():
            setattr(b, k, v)
    try:
        return janitor.run(st, sp, cfg, site=janitor.SiteHints(sp))
    finally:
        for b in cfg.builders.values():
            for k in keys:
                setattr(b, k, float("inf"))


def _texts(root):
    return {os.path.relpath(p, root): open(p, encoding="utf-8").read() for p in pages(root)}


def _assert_gone(s, removed):
    for b, nums in removed.items():
        for n in nums:
            assert not os.path.lexists(os.path.join(s.root, "builders", b, str(n))), (b, n)
            assert not os.path.lexists(os.path.join(s.root, "api", "builders", b, "builds", "%d.json" % n))
            for rel, text in _texts(s.root).items():
                assert "builders/%s/%d/" % (b, n) not in text, (rel, b, n)


def test_removed_builds_leave_no_page_and_no_link_pointing_nowhere(tmp_path):
    st, sp, cfg, s = _site(tmp_path)
    before = _texts(s.root)
    assert "waterfall/1.html" in before and "builders/hello/history/1.html" in before
    rep = _janitor(st, sp, cfg, keep_builds=20)
    assert len(rep.removed["hello"]) == 133 - 20 and len(rep.removed["world"]) == 67 - 20
    s.update(sp.take_hints())
    _assert_gone(s, rep.removed)
    check_links(s.root)
    texts = _texts(s.root)
    # The pages that listed them say so, without a link.
    for rel in ("waterfall/1.html", "builders/hello/history/1.html", "builders/world/history/1.html"):
        assert "removed" in texts[rel] and rel in before, rel
    assert texts["waterfall/1.html"].count('class="box r-removed"') == before["waterfall/1.html"].count(
        'class="box r-') - before["waterfall/1.html"].count('<div class="box r-')
    # The kept builds are on their pages as before.
    for n in st.build_numbers("hello"):
        assert os.path.isfile(os.path.join(s.root, "builders", "hello", str(n), "index.html"))
    # A new process (from INDEX: the seals, the removals) and a second pass.
    s2 = site.Site(s.root, st, sp, cfg)
    rep2 = _janitor(st, sp, cfg, keep_builds=10)
    s2.update(sp.take_hints())
    _assert_gone(s2, rep2.removed)
    check_links(s2.root)
    assert "removed" in _texts(s2.root)["builders/hello/history/2.html"]
    # A full rendering from the state agrees.
    s2.rebuild(force=True)
    _assert_gone(s2, rep.removed)
    _assert_gone(s2, rep2.removed)
    check_links(s2.root)


def test_a_site_that_was_down_catches_up_from_the_hints(tmp_path):
    """htmlgen stopped while the janitor ran: at its start (a full pass,
    given the hints waiting) the removed builds' pages go."""
    st, sp, cfg, s = _site(tmp_path, size=60)
    rep = _janitor(st, sp, cfg, keep_builds=5)
    fresh = site.Site(s.root, st, sp, cfg)
    fresh.rebuild(touched=sp.take_hints())
    _assert_gone(fresh, rep.removed)
    check_links(fresh.root)


def test_removed_logs_keep_their_pages_saying_so_and_a_pin_shows(tmp_path, capsys):
    st, sp, cfg, s = _site(tmp_path, size=30)
    janitor.keep(st, "hello", 3, "alice", "the release")
    sp.hint("hello", 3)
    s.update(sp.take_hints())
    page = open(os.path.join(s.root, "builders", "hello", "3", "index.html"), encoding="utf-8").read()
    assert "kept by alice" in page and "the release" in page
    rep = _janitor(st, sp, cfg, keep_log_days=0)
    assert 3 not in rep.logs["hello"] and 4 in rep.logs["hello"]
    s.update(sp.take_hints())
    bdir = os.path.join(s.root, "builders", "hello", "4")
    assert not os.path.exists(os.path.join(bdir, "01-compile.txt"))
    assert "This log was removed" in open(os.path.join(bdir, "01-compile.html"), encoding="utf-8").read()
    build = open(os.path.join(bdir, "index.html"), encoding="utf-8").read()
    assert "01-compile.txt" not in build and "<dt>logs</dt><dd>removed" in build
    assert os.path.exists(os.path.join(s.root, "builders", "hello", "3", "01-compile.txt"))
    check_links(s.root)
    # Unpinned, and hinted: the page no longer says kept.
    janitor.keep(st, "hello", 3, "alice", unkeep=True)
    sp.hint("hello", 3)
    s.update(sp.take_hints())
    assert "kept by" not in open(os.path.join(s.root, "builders", "hello", "3", "index.html"),
                                 encoding="utf-8").read()


def test_removed_artifacts_leave_the_site_too(tmp_path):
    """The site's copies of removed artifacts go (hard links: the disk is
    freed only then), the build page lists them as removed, and
    builders/B/latest, which led to them, goes."""
    st, sp = State(str(tmp_path / "state")), Spool(str(tmp_path / "spool"))
    st.ensure()
    sp.ensure()
    cfg = make_cfg(tmp_path, names=("hello",))
    for i in range(3):
        n = make_build(st, "hello", started=T0 + 60 * i, rev="%040x" % i, extra={"artifacts": [
            {"name": "dist/a.tgz", "size": 5, "sha256": "0" * 64, "step": ""}]})
        os.makedirs(os.path.join(st.build_dir("hello", n), "artifacts", "dist"))
        with open(os.path.join(st.build_dir("hello", n), "artifacts", "dist", "a.tgz"), "wb") as f:
            f.write(b"hello")
    s = site.Site(str(tmp_path / "site"), st, sp, cfg)
    s.rebuild(force=True)
    latest = os.path.join(s.root, "builders", "hello", "latest")
    assert os.readlink(latest) == "3/artifacts"
    assert os.path.isfile(os.path.join(s.root, "builders", "hello", "2", "artifacts", "dist", "a.tgz"))
    rep = _janitor(st, sp, cfg, keep_artifact_days=0)
    assert rep.artifacts == {"hello": [1, 2, 3]}
    s.update(sp.take_hints())
    for n in (1, 2, 3):
        assert not os.path.lexists(os.path.join(s.root, "builders", "hello", str(n), "artifacts")), n
        page = open(os.path.join(s.root, "builders", "hello", str(n), "index.html"), encoding="utf-8").read()
        assert "<code>dist/a.tgz</code> <span class=\"dim\">removed</span>" in page
        assert "<dt>artifacts</dt><dd>removed" in page
    assert not os.path.lexists(latest)
    check_links(s.root)


def test_a_removal_hint_outlives_a_pass_that_did_not_finish(tmp_path):
    """What the torture run found: htmlgen killed in a pass after it had
    taken the janitor's hints left the removed build's files on the site
    for good (the next start takes up from INDEX, which did not know of
    the removal, and the hint was gone).  Hints are taken for a pass and
    dropped only once it is committed: the next process takes them again."""
    st, sp, cfg, s = _site(tmp_path, size=30)
    rep = _janitor(st, sp, cfg, keep_builds=5)
    touched, _taken = sp.claim_hints()                   # a pass took them...
    assert sorted(touched) == sorted((b, n) for b, nums in rep.removed.items() for n in nums)
    victim = rep.removed["hello"][0]
    os.unlink(os.path.join(s.root, "builders", "hello", str(victim), "index.html"))   # ...and died mid-way
    sp.hint("hello", victim)                             # a hint made again meanwhile: one more
    fresh = site.Site(s.root, st, sp, cfg)               # the next start, from INDEX
    touched, taken = sp.claim_hints()
    assert sorted(touched) == sorted((b, n) for b, nums in rep.removed.items() for n in nums)
    fresh.rebuild(touched=touched)
    sp.drop_hints(taken)
    assert sp.claim_hints() == ([], [])
    _assert_gone(fresh, rep.removed)
    assert not os.path.lexists(os.path.join(s.root, "builders", "hello", str(victim)))
    check_links(fresh.root)
