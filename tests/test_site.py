"""Tests for site.py and templates.py: real state and spool directories
written with the project's own writers, rendered, and the pages read back
with html.parser."""

import errno
import html.parser
import os
import time
import tracemalloc
from urllib.parse import unquote, urlsplit

import pytest

from buildunits import config, site, templates
from buildunits.spool import Spool
from buildunits.state import State

T0 = 1700000000.0
REV = "3f2c9a1b7e0d4c5a6b7c8d9e0f1a2b3c4d5e6f7a"


# ------------------------------------------------------------------ helpers

class Page(html.parser.HTMLParser):
    """Tags, attributes, ids and text of one page."""

    def __init__(self, path):
        super().__init__(convert_charrefs=True)
        self.path = path
        self.tags = []          # (tag, attrs dict)
        self.ids = set()
        self.text = []
        with open(path, encoding="utf-8") as f:
            self.feed(f.read())
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if "id" in a:
            self.ids.add(a["id"])

    def handle_data(self, data):
        if not self.tags or self.tags[-1][0] != "style":
            self.text.append(data)

    @property
    def all_text(self):
        return " ".join("".join(self.text).split())

    def links(self):
        return [a["href"] for t, a in self.tags if t == "a" and "href" in a]

    def boxes(self):
        """The class attribute of each element with class "box"."""
        return [a["class"] for t, a in self.tags if "box" in a.get("class", "").split()]


def change(message="fix the frobnicator\n\nlong story", author="A U Thor <a@example.org>", rev=REV):
    return {"format": "change", "version": 1, "id": "c1", "queued": T0, "source": "poller",
            "repository": "/srv/git/hello.git", "branch": "main", "revision": rev,
            "author": author, "when": T0 - 60, "message": message, "files": ["a.c", "b.c"]}


def step(name, result="success", log=None, state="finished", started=T0, took=41.0, **extra):
    s = {"name": name, "description": "", "command": "make %s" % name, "state": state,
         "result": result if state == "finished" else None,
         "started": started if state != "pending" else None,
         "finished": started + took if state == "finished" else None,
         "log": log, "exit_status": 0 if result == "success" else 2,
         "summary": "" if result == "success" else "exit 2", "timed_out": False}
    s.update(extra)
    return s


def make_build(st, builder, steps=(("checkout", "success", "cloning\n"), ("compile", "success", "cc a.c\n")),
               running_step=None, changes=None, started=T0, extra=None, request_extra=None):
    """Write a build with STEPS ((name, result, log text or None), ...)
    through State; a RUNNING_STEP (name, log text) makes it a running build."""
    n = st.allocate_number(builder)
    recs = []
    for i, (name, result, text) in enumerate(steps, 1):
        logname = None
        if text is not None:
            logname = st.log_name(i, name)
            with open(st.log_path(builder, n, i, name), "w", encoding="utf-8") as f:
                f.write(text)
        recs.append(step(name, result, logname, started=started + i))
    if running_step:
        i = len(recs) + 1
        name, text = running_step
        with open(st.log_path(builder, n, i, name), "w", encoding="utf-8") as f:
            f.write(text)
        recs.append(step(name, state="running", log=st.log_name(i, name), started=started + i))
        recs.append(step("test", state="pending"))
    finished = running_step is None
    results = [r for _, r, _ in steps]
    result = "failure" if "failure" in results else "success"
    request = {"id": "r%d" % n, "builder": builder, "branch": "main", "revision": REV,
               "repository": "/srv/git/hello.git", "reason": "1 change on main",
               "changes": [change()] if changes is None else changes, "force": None,
               "properties": {"owner": "ci"}, "queued": started - 1}
    request.update(request_extra or {})
    rec = {"builder": builder, "number": n, "request_id": request["id"], "request": request,
           "worker": "w1", "state": "finished" if finished else "running",
           "result": result if finished else None, "reason": "",
           "started": started, "finished": started + 100 if finished else None,
           "repository": "/srv/git/hello.git", "branch": "main", "revision": REV, "steps": recs}
    rec.update(extra or {})
    st.write_build(rec)
    return n


def make_cfg(tmp_path, names=("hello",), depth=50, title="Test CI"):
    builders = {n: config.Builder(name=n, path=str(tmp_path / n), description="builds %s" % n,
                                  steps=[config.Step(name="compile", command="make")]) for n in names}
    return config.Config(directory=str(tmp_path / "etc"), builders=builders, title=title,
                         waterfall_depth=depth)


@pytest.fixture
def env(tmp_path):
    st = State(str(tmp_path / "state"))
    st.ensure()
    sp = Spool(str(tmp_path / "spool"))
    sp.ensure()
    cfg = make_cfg(tmp_path)
    s = site.Site(str(tmp_path / "state" / "site"), st, sp, cfg)
    return st, sp, cfg, s


def refreshes(path):
    return any(t == "meta" and a.get("http-equiv") == "refresh" for t, a in Page(str(path)).tags)


def pages(root):
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".html"):
                yield os.path.join(d, f)


def check_links(root):
    """Every link and resource in every page stays in the site and exists."""
    root = os.path.realpath(root)
    parsed = {}
    for p in pages(root):
        parsed[p] = Page(p)
    for p, page in parsed.items():
        for tag, attrs in page.tags:
            assert tag not in ("script", "iframe", "object", "embed", "img", "link"), (p, tag)
            for key in ("href", "src"):
                if key not in attrs:
                    continue
                url = urlsplit(attrs[key])
                assert not url.scheme and not url.netloc, (p, attrs[key])
                if not url.path:
                    assert url.fragment in page.ids, (p, attrs[key])
                    continue
                target = os.path.realpath(os.path.join(os.path.dirname(p), unquote(url.path)))
                assert target.startswith(root + os.sep), (p, attrs[key])
                assert os.path.isfile(target), (p, attrs[key])
                if url.fragment:
                    assert url.fragment in Page(target).ids, (p, attrs[key])
    return parsed


# -------------------------------------------------------------------- tests

def test_rebuild_writes_every_page_and_every_link_resolves(env, tmp_path):
    st, sp, cfg, s = env
    make_build(st, "hello")
    make_build(st, "hello", steps=(("checkout", "success", "ok\n"), ("compile", "failure", "error\n")))
    make_build(st, "hello", running_step=("compile", "cc a.c\ncc b.c\n"))
    sp.deliver("requests", "request", {"builder": "hello", "branch": "main", "revision": "abcdef0123456",
                                       "repository": "/srv/git/hello.git", "reason": "forced by alice",
                                       "changes": [], "force": {"by": "alice"}, "properties": {}})
    calls = []
    written = s.rebuild(progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (4, 4) and len(calls) == 4
    root = tmp_path / "state" / "site"
    for f in ("index.html", "builders/hello/1/index.html", "builders/hello/1/01-checkout.html",
              "builders/hello/1/01-checkout.txt", "builders/hello/2/02-compile.html",
              "builders/hello/3/index.html", "builders/hello/3/03-compile.html"):
        assert (root / f).is_file(), f
    # Builds 1, 2: a page, and a page and raw file per step; build 3 has a
    # third (running) step; and the waterfall.
    assert written == 2 * (1 + 2 * 2) + (1 + 3 * 2) + 1
    assert (root / "builders/hello/1/.final").exists()
    assert not (root / "builders/hello/3/.final").exists()
    parsed = check_links(str(root))
    assert len(parsed) == 1 + 3 + 7


def test_raw_log_is_a_hard_link_to_the_state_log(env, tmp_path):
    st, sp, cfg, s = env
    n = make_build(st, "hello")
    s.rebuild()
    raw = tmp_path / "state" / "site" / "builders" / "hello" / str(n) / "01-checkout.txt"
    assert os.path.samestat(os.stat(raw), os.stat(st.log_path("hello", n, 1, "checkout")))
    assert raw.read_text() == "cloning\n"


def test_waterfall_boxes_labels_and_links(env, tmp_path):
    st, sp, cfg, s = env
    make_build(st, "hello", started=T0)
    make_build(st, "hello", started=T0 + 200,
               steps=(("checkout", "success", "ok\n"), ("compile", "failure", "error\n")))
    make_build(st, "hello", started=T0 + 400, running_step=("compile", "cc\n"))
    sp.deliver("requests", "request", {"builder": "hello", "branch": "main", "revision": "abcdef0123456",
                                       "repository": "", "reason": "forced by alice", "changes": [],
                                       "force": None, "properties": {}})
    s.update([])
    page = Page(str(tmp_path / "state" / "site" / "index.html"))
    text = page.all_text
    # Newest first: the running build's box comes before #2, #2 before #1.
    assert text.index("#3 running") < text.rindex("#2 failure") < text.rindex("#1 success")
    assert "step: compile" in text
    assert "1 queued" in text and "forced by alice" in text
    assert "#2 failure" in text  # the header's last result: the newest finished build
    assert "3f2c9a1b A U Thor: fix the frobnicator" in text
    assert "long story" not in text  # only the first line of a message
    assert "compile failure 41sexit 2" in text  # the summary is a block of its own
    classes = page.boxes()
    for word in ("r-success", "r-failure", "r-running", "r-queued"):
        assert any(word in c for c in classes), word
    links = page.links()
    assert "builders/hello/1/index.html" in links
    assert "builders/hello/2/02-compile.html" in links
    assert "builders/hello/3/03-compile.html" in links
    # A pending step is not on the waterfall, but is on the build page.
    assert " test pending" not in text
    build = Page(str(tmp_path / "state" / "site" / "builders" / "hello" / "3" / "index.html"))
    assert "pending" in build.all_text


def test_build_page_shows_changes_reason_properties_and_steps(env, tmp_path):
    st, sp, cfg, s = env
    n = make_build(st, "hello", steps=(("checkout", "success", "ok\n"), ("compile", "failure", "error\n")))
    s.update([("hello", n)])
    page = Page(str(tmp_path / "state" / "site" / "builders" / "hello" / str(n) / "index.html"))
    text = page.all_text
    for expected in ("hello #1", "failure", "1 change on main", REV, "A U Thor <a@example.org>",
                     "long story", "a.c", "owner", "ci", "w1", "make compile", "exit 2", "took 1min 40s"):
        assert expected in text, expected
    links = page.links()
    assert "02-compile.html" in links and "02-compile.txt" in links
    assert "../../../index.html" in links


def test_log_page_has_line_anchors(env, tmp_path):
    st, sp, cfg, s = env
    text = "".join("line %d\n" % i for i in range(1, 21))
    n = make_build(st, "hello", steps=(("compile", "success", text),))
    s.update([("hello", n)])
    page = Page(str(tmp_path / "state" / "site" / "builders" / "hello" / str(n) / "01-compile.html"))
    assert {"L1", "L12", "L20"} <= page.ids and "L21" not in page.ids
    assert "#L12" in page.links()
    assert "line 12" in page.all_text
    assert "Showing the first" not in page.all_text


def test_hostile_text_is_escaped(env, tmp_path):
    st, sp, cfg, s = env
    evil = change(message="<script>alert(1)</script>\nbody", author='"><img src=x onerror=alert(1)>')
    n = make_build(st, "hello", changes=[evil],
                   steps=(("compile", "failure", "<b>bold</b> & <i>x</i>\n\x1b[31mred\x1b[0m \x00\n"),),
                   request_extra={"properties": {"<p>": "<em>v</em>"}, "reason": "<u>why</u>"})
    s.update([("hello", n)])
    root = tmp_path / "state" / "site"
    parsed = check_links(str(root))
    for p, page in parsed.items():
        tags = {t for t, _ in page.tags}
        assert not tags & {"script", "img", "b", "i", "u", "em"}, (p, tags)
        for _, attrs in page.tags:
            assert "onerror" not in attrs, p
    wf = parsed[os.path.realpath(str(root / "index.html"))].all_text
    assert "<script>alert(1)</script>" in wf
    wf_titles = [a.get("title") for _, a in parsed[os.path.realpath(str(root / "index.html"))].tags]
    assert '"><img src=x onerror=alert(1)>' in wf_titles  # whole, inside its attribute
    bp = parsed[os.path.realpath(str(root / "builders" / "hello" / str(n) / "index.html"))].all_text
    assert '"><img src=x onerror=alert(1)>' in bp
    assert "<p><em>v</em>" in bp and "<u>why</u>" in bp
    log = parsed[os.path.realpath(str(root / "builders" / "hello" / str(n) / "01-compile.html"))]
    assert "<b>bold</b> & <i>x</i>" in log.all_text
    assert "red \ufffd" in log.all_text and "\x1b" not in log.all_text


def test_finished_build_is_written_once(env, tmp_path):
    st, sp, cfg, s = env
    n = make_build(st, "hello")
    bdir = tmp_path / "state" / "site" / "builders" / "hello" / str(n)
    assert s.update([("hello", n)]) == 1 + 2 * 2 + 1
    before = {f: os.stat(bdir / f) for f in ("index.html", "01-checkout.html", "01-checkout.txt")}
    time.sleep(0.01)
    assert s.update([("hello", n)]) == 1  # only the waterfall
    # A new process (no memory of what it wrote) also leaves it alone.
    s2 = site.Site(s.root, st, sp, cfg)
    assert s2.update([("hello", n)]) == 1
    assert s2.rebuild() == 1
    for f, st0 in before.items():
        st1 = os.stat(bdir / f)
        assert (st1.st_ino, st1.st_mtime_ns) == (st0.st_ino, st0.st_mtime_ns), f
    # Unless forced.
    assert s2.rebuild(force=True) == 1 + 2 + 1


def test_running_build_is_rendered_again_until_it_finishes(env, tmp_path):
    st, sp, cfg, s = env
    n = make_build(st, "hello", running_step=("compile", "cc a.c\n"))
    bdir = tmp_path / "state" / "site" / "builders" / "hello" / str(n)
    s.update([("hello", n)])
    ino = os.stat(bdir / "index.html").st_ino
    assert refreshes(bdir / "index.html")  # while running
    log_ino = os.stat(bdir / "03-compile.html").st_ino
    # Nothing touched it, but it is running: rendered again; its unchanged log page is not.
    s.update([])
    assert os.stat(bdir / "index.html").st_ino != ino
    assert os.stat(bdir / "03-compile.html").st_ino == log_ino
    # The log grows: its page follows; the raw link grows by itself.
    with open(st.log_path("hello", n, 3, "compile"), "a") as f:
        f.write("cc b.c\n")
    s.update([("hello", n)])
    assert "cc b.c" in Page(str(bdir / "03-compile.html")).all_text
    assert (bdir / "03-compile.txt").read_text() == "cc a.c\ncc b.c\n"
    # It finishes: rendered once more, then final.
    rec = st.read_build("hello", n)
    rec["steps"][2].update(state="finished", result="success", finished=T0 + 50)
    rec["steps"][3].update(state="finished", result="skipped")
    rec.update(state="finished", result="success", finished=T0 + 60)
    st.write_build(rec)
    s.update([("hello", n)])
    assert (bdir / ".final").exists()
    assert not refreshes(bdir / "index.html")
    assert "success" in Page(str(bdir / "03-compile.html")).all_text
    ino = os.stat(bdir / "index.html").st_ino
    s.update([("hello", n)])
    assert os.stat(bdir / "index.html").st_ino == ino


def test_lost_hint_is_healed_by_the_next_update(env, tmp_path):
    st, sp, cfg, s = env
    s.update([])
    n = make_build(st, "hello")
    s.update([])  # no hint for the new build
    assert (tmp_path / "state" / "site" / "builders" / "hello" / str(n) / "index.html").exists()
    check_links(str(tmp_path / "state" / "site"))


def test_big_log_is_shown_in_part_without_reading_it_all(env, tmp_path):
    st, sp, cfg, s = env
    n = make_build(st, "hello", steps=(("compile", "success", ""),))
    path = st.log_path("hello", n, 1, "compile")
    line = ("x" * 99 + "\n").encode()
    with open(path, "wb") as f:
        for _ in range(30 * 1024 * 1024 // len(line)):
            f.write(line)
    assert os.path.getsize(path) > 30_000_000
    tracemalloc.start()
    try:
        s.update([("hello", n)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, peak
    bdir = tmp_path / "state" / "site" / "builders" / "hello" / str(n)
    page = Page(str(bdir / "01-compile.html"))
    assert "L5000" in page.ids and "L5001" not in page.ids
    assert "Showing the first 5000 lines" in page.all_text
    assert "01-compile.txt" in page.links()
    assert os.path.getsize(bdir / "01-compile.html") < 2 * site.MAX_LOG_BYTES
    assert os.path.samefile(bdir / "01-compile.txt", path)


def test_log_limit_by_bytes_and_overlong_lines(env, tmp_path):
    st, sp, cfg, s = env
    n = make_build(st, "hello", steps=(("compile", "success", ""),))
    with open(st.log_path("hello", n, 1, "compile"), "wb") as f:
        f.write(b"short\n" + b"y" * (5 * 1024 * 1024) + b"\nnever shown\n")
    s.update([("hello", n)])
    page = Page(str(tmp_path / "state" / "site" / "builders" / "hello" / str(n) / "01-compile.html"))
    assert "[line cut]" in page.all_text and "never shown" not in page.all_text
    assert "Showing the first 2 lines" in page.all_text


def test_log_excerpt_counts_and_truncation(tmp_path):
    p = tmp_path / "log"
    p.write_bytes(b"a\nb\nc")
    ex = site.LogExcerpt(str(p), max_lines=2)
    assert list(ex) == [(1, "a"), (2, "b")] and ex.truncated and ex.shown == 2
    ex = site.LogExcerpt(str(p), max_lines=3)
    assert list(ex) == [(1, "a"), (2, "b"), (3, "c")] and not ex.truncated
    ex = site.LogExcerpt(str(tmp_path / "missing"))
    assert list(ex) == [] and ex.missing


def test_raw_log_is_copied_across_filesystems(env, tmp_path, monkeypatch):
    st, sp, cfg, s = env
    n = make_build(st, "hello", running_step=("compile", "cc a.c\n"))

    def no_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", no_link)
    s.update([("hello", n)])
    raw = tmp_path / "state" / "site" / "builders" / "hello" / str(n) / "03-compile.txt"
    assert raw.read_text() == "cc a.c\n"
    assert not os.path.samefile(raw, st.log_path("hello", n, 3, "compile"))
    ino = os.stat(raw).st_ino
    s.update([("hello", n)])
    assert os.stat(raw).st_ino == ino  # a current copy is left alone
    with open(st.log_path("hello", n, 3, "compile"), "a") as f:
        f.write("cc b.c\n")
    s.update([("hello", n)])
    assert raw.read_text() == "cc a.c\ncc b.c\n"


def test_gaps_corrupt_records_and_hostile_names_are_skipped(env, tmp_path):
    st, sp, cfg, s = env
    make_build(st, "hello")
    st.allocate_number("hello")                       # #2: a gap
    n3 = make_build(st, "hello")
    with open(st.build_path("hello", n3), "w") as f:  # #3: torn
        f.write('{"format": "build", "version": 1, "builder": "hel')
    n4 = make_build(st, "hello", steps=(("compile", "success", "ok\n"),))
    rec = st.read_build("hello", n4)
    rec["steps"][0]["log"] = "../../../../etc/passwd"
    st.write_build(rec)
    s.update([("hello", 2), ("hello", n3), ("../evil", 1), (".hidden", 1), ("hello", "x")])
    root = tmp_path / "state" / "site"
    assert not (root / "builders" / "hello" / "2").exists()
    assert not (root / "builders" / "hello" / str(n3)).exists()
    assert not (root / "evil").exists() and not (root / "builders" / ".hidden").exists()
    text = Page(str(root / "builders" / "hello" / str(n4) / "index.html")).all_text
    assert "compile" in text
    assert sorted(os.listdir(root / "builders" / "hello" / str(n4))) == [".final", "index.html"]
    check_links(str(root))


def test_unknown_and_missing_keys(env, tmp_path):
    st, sp, cfg, s = env
    n = make_build(st, "hello", extra={"result": "frobnicated", "future_key": {"x": 1}})
    rec = st.read_build("hello", n)
    for k in ("worker", "reason", "request", "repository"):
        del rec[k]
    rec["steps"][0]["future"] = [1, 2]
    del rec["steps"][1]["summary"]
    st.write_build(rec)
    s.update([("hello", n)])
    root = tmp_path / "state" / "site"
    page = Page(str(root / "builders" / "hello" / str(n) / "index.html"))
    assert "frobnicated" in page.all_text
    assert any("r-other" in c for c in page.boxes())
    check_links(str(root))


def test_builders_from_config_and_from_history_all_appear(env, tmp_path):
    st, sp, cfg, s = env
    cfg.builders.update(make_cfg(tmp_path, names=("idle",)).builders)
    make_build(st, "retired")  # in history, no longer configured
    s.update([])
    page = Page(str(tmp_path / "state" / "site" / "index.html"))
    heads = page.all_text
    assert "hello" in heads and "idle" in heads and "retired (not configured)" in heads
    assert "no finished builds" in heads
    check_links(s.root)


def test_waterfall_depth_limits_builds_per_builder(env, tmp_path):
    st, sp, cfg, s = env
    cfg.waterfall_depth = 2
    for i in range(4):
        make_build(st, "hello", started=T0 + 1000 * i)
    s.update([])
    links = Page(str(tmp_path / "state" / "site" / "index.html")).links()
    assert "builders/hello/4/index.html" in links and "builders/hello/3/index.html" in links
    assert "builders/hello/2/index.html" not in links
    check_links(s.root)


def test_empty_site(env, tmp_path):
    st, sp, cfg, s = env
    cfg.builders.clear()
    assert s.rebuild() == 1
    assert "No builders yet" in Page(str(tmp_path / "state" / "site" / "index.html")).all_text


def test_a_new_final_mark_renders_old_pages_again(env, tmp_path, monkeypatch):
    st, sp, cfg, s = env
    n = make_build(st, "hello")
    s.update([("hello", n)])
    monkeypatch.setattr(site, "FINAL_MARK", "buildunits-site 2\n")
    s2 = site.Site(s.root, st, sp, cfg)
    assert s2.rebuild() == 1 + 2 + 1  # the raw logs are already the right links


def test_templates_dir_from_environment(tmp_path, monkeypatch):
    assert os.path.isfile(os.path.join(templates.templates_dir({}), "base.html"))
    assert templates.templates_dir({"BUILDUNITS_TEMPLATES_DIR": str(tmp_path)}) == str(tmp_path)
    (tmp_path / "t.html").write_text("{{ x }}|{{ 90|timespan }}")
    monkeypatch.setenv("BUILDUNITS_TEMPLATES_DIR", str(tmp_path))
    assert templates.render("t.html", x="<a>") == "&lt;a&gt;|1min 30s"
    assert "".join(templates.generate("t.html", x="&")) == "&amp;|1min 30s"
    with pytest.raises(Exception):
        templates.render("t.html")  # StrictUndefined: a missing name fails


def test_filters():
    assert templates.firstline("\n\n  subject  \nbody") == "subject"
    assert templates.firstline(None) == ""
    assert templates.who("A U Thor <a@example.org>") == "A U Thor"
    assert templates.who("plain") == "plain"
    assert templates.shortrev(REV) == REV[:8]
    assert templates.timespan(41) == "41s" and templates.timespan(None) == ""
    assert templates.timestamp(T0) == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(T0))


def test_installed_templates_path():
    # An install puts the package at PREFIX/lib/buildunits/python/buildunits/.
    rel = os.path.relpath(templates._INSTALLED, templates._PACKAGE)
    assert rel == os.path.join("..", "..", "..", "..", "share", "buildunits", "templates")


def test_odd_names_are_quoted_in_links(env, tmp_path):
    st, sp, cfg, s = env
    make_build(st, "odd name#1%", steps=(("st ep?#", "success", "ok\n"),))
    s.update([])
    root = tmp_path / "state" / "site"
    assert (root / "builders" / "odd name#1%" / "1" / "01-st ep?#.html").is_file()
    check_links(str(root))
