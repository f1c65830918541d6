"""Tests for site.py and templates.py: real state and spool directories
written with the project's own writers, rendered, and the pages read back
with html.parser, the feeds with xml.etree, the API with json."""

import errno
import html.parser
import json
import os
import subprocess
import time
import tracemalloc
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree

import pytest

from buildunits import config, records, site, sitefiles, siteindex, sitelogs, sitepages, siteviews, templates
from buildunits.spool import Spool
from buildunits.state import State

T0 = 1700000000.0
REV = "3f2c9a1b7e0d4c5a6b7c8d9e0f1a2b3c4d5e6f7a"
ATOM = "{http://www.w3.org/2005/Atom}"
SVG = "{http://www.w3.org/2000/svg}"


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
               running_step=None, changes=None, started=T0, extra=None, request_extra=None, rev=REV):
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
    request = {"id": "r%d" % n, "builder": builder, "branch": "main", "revision": rev,
               "repository": "/srv/git/hello.git", "reason": "1 change on main",
               "changes": [change(rev=rev)] if changes is None else changes, "force": None,
               "properties": {"owner": "ci"}, "queued": started - 1}
    request.update(request_extra or {})
    rec = {"builder": builder, "number": n, "request_id": request["id"], "request": request,
           "worker": "w1", "state": "finished" if finished else "running",
           "result": result if finished else None, "reason": "",
           "started": started, "finished": started + 100 if finished else None,
           "repository": "/srv/git/hello.git", "branch": "main", "revision": rev, "steps": recs}
    rec.update(extra or {})
    st.write_build(rec)
    return n


def finish(st, builder, n, result="success", at=T0 + 60):
    """Mark the running build B #N (made by make_build) finished."""
    rec = st.read_build(builder, n)
    for s in rec["steps"]:
        if s["state"] == "running":
            s.update(state="finished", result=result, finished=at)
        elif s["state"] == "pending":
            s.update(state="finished", result="skipped")
    rec.update(state="finished", result=result, finished=at)
    st.write_build(rec)


def forge_build(st, rec):
    """Write REC as build.json whatever is there (State.write_build never
    rewrites a finished record): a hostile or damaged state."""
    records.write(st.build_path(rec["builder"], rec["number"]), "build", rec)


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


def files_of(root):
    """{relative path: (inode, mtime_ns)} of every file of the site."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_ino, st.st_mtime_ns)
    return out


OLD_MTIME_NS = 10**9 * 10**9     # 2001: before any file a test writes


def backdate(paths):
    """Set the mtime of PATHS to OLD_MTIME_NS, so that a file written again
    afterwards has another mtime whatever the clock's granularity (and an
    inode reused by a replaced file does not hide it).  Doing it again
    changes nothing."""
    for p in paths:
        os.utime(p, ns=(OLD_MTIME_NS, OLD_MTIME_NS))


def backdate_site(root):
    """backdate() every file of the site but its memory (site.INDEX): the
    site reads a change of that file's stat as another process's rebuild."""
    backdate(os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f != site.INDEX)


def written_since(root, before):
    """The files of the site made or replaced since BEFORE (files_of)."""
    return sorted(p for p, v in files_of(root).items() if before.get(p) != v)


def check_link(root, page, href, ids=None):
    """The file HREF in PAGE leads to, checked: relative, inside the site,
    existing (and the fragment, if any, an id of the target)."""
    url = urlsplit(href)
    assert not url.scheme and not url.netloc and not href.startswith("/"), (page, href)
    if not url.path:
        assert ids is not None and url.fragment in ids, (page, href)
        return page
    target = os.path.realpath(os.path.join(os.path.dirname(page), unquote(url.path)))
    assert target.startswith(root + os.sep), (page, href)
    assert os.path.isfile(target), (page, href)
    if url.fragment:
        assert url.fragment in Page(target).ids, (page, href)
    return target


def check_links(root):
    """Every link and resource in every page stays in the site and exists;
    nothing is loaded from anywhere (no script, image, frame)."""
    root = os.path.realpath(root)
    parsed = {}
    for p in pages(root):
        parsed[p] = Page(p)
    for p, page in parsed.items():
        for tag, attrs in page.tags:
            assert tag not in ("script", "iframe", "object", "embed", "img", "frame"), (p, tag)
            if tag == "link":
                assert attrs.get("rel") == "alternate", (p, attrs)
            for key in ("href", "src"):
                if key in attrs:
                    check_link(root, p, attrs[key], page.ids)
    return parsed


def crawl(root):
    """{path: Page} of every page reached from index.html, following links;
    the other files they link to are checked to exist."""
    root = os.path.realpath(root)
    start = os.path.join(root, "index.html")
    seen, todo, others = {}, [start], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        page = seen[p] = Page(p)
        for tag, attrs in page.tags:
            if tag in ("a", "link") and "href" in attrs:
                target = check_link(root, p, attrs["href"], page.ids)
                if target.endswith(".html"):
                    todo.append(target)
                else:
                    others.add(os.path.relpath(target, root))
    return {os.path.relpath(p, root): page for p, page in seen.items()}, others


def rel(root, *parts):
    return os.path.join(str(root), *parts)


# ----------------------------------------------------------- every page

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
    build_files = ["builders/hello/1/index.html", "builders/hello/1/01-checkout.html",
                   "builders/hello/1/01-checkout.txt", "builders/hello/2/02-compile.html",
                   "builders/hello/3/index.html", "builders/hello/3/03-compile.html"]
    heads = ["index.html", "console.html", "builders.html", "atom.xml", "builders/hello/index.html",
             "builders/hello/atom.xml", "builders/hello/badge.svg", "api/builders.json",
             "api/builders/hello/index.json"]
    for f in build_files + heads + ["api/builders/hello/builds/%d.json" % n for n in (1, 2, 3)]:
        assert (root / f).is_file(), f
    # Builds 1, 2: a page, its JSON, a page and raw file per step; build 3
    # has a third (running) step; and the head pages.
    assert written == 2 * (2 + 2 * 2) + (2 + 3 * 2) + len(heads)
    assert (root / "builders/hello/1/.final").exists()
    assert not (root / "builders/hello/3/.final").exists()
    parsed = check_links(str(root))
    assert len(parsed) == 4 + 3 + 7  # waterfall, console, builders, builder; builds; logs
    # Every page is reached from the waterfall, and so are the feeds, badge and JSON.
    reached, others = crawl(str(root))
    assert set(reached) == {os.path.relpath(p, os.path.realpath(root)) for p in parsed}
    assert {"atom.xml", "builders/hello/atom.xml", "builders/hello/badge.svg", "api/builders.json",
            "api/builders/hello/index.json", "api/builders/hello/builds/1.json",
            "builders/hello/1/01-checkout.txt"} <= others


def test_every_page_type_is_linked_and_crawl_reaches_all_builds(tmp_path):
    st = State(str(tmp_path / "state"))
    sp = Spool(str(tmp_path / "spool"))
    cfg = make_cfg(tmp_path, names=("hello", "world"), depth=5)
    for i in range(160):
        make_build(st, "hello" if i % 3 else "world", started=T0 + 60 * i, rev="%040x" % (i // 2),
                   steps=(("compile", "failure" if i % 11 == 0 else "success", "cc\n"),))
    s = site.Site(str(tmp_path / "site"), st, sp, cfg)
    s.rebuild()
    reached, others = crawl(str(tmp_path / "site"))
    kinds = {"waterfall/", "builders/hello/history/", "builders/world/history/", "console.html",
             "builders.html", "builders/hello/index.html"}
    for kind in kinds:
        assert any(p.startswith(kind) for p in reached), kind
    for b in ("hello", "world"):
        for n in st.build_numbers(b):
            assert "builders/%s/%d/index.html" % (b, n) in reached, (b, n)
            assert "builders/%s/%d/01-compile.html" % (b, n) in reached, (b, n)
    assert {"atom.xml", "builders/world/atom.xml", "builders/world/badge.svg"} <= others
    check_links(str(tmp_path / "site"))


def test_raw_log_is_a_hard_link_to_the_state_log(env, tmp_path):
    st, sp, cfg, s = env
    n = make_build(st, "hello")
    s.rebuild()
    raw = tmp_path / "state" / "site" / "builders" / "hello" / str(n) / "01-checkout.txt"
    assert os.path.samestat(os.stat(raw), os.stat(st.log_path("hello", n, 1, "checkout")))
    assert raw.read_text() == "cloning\n"


# ------------------------------------------------------------ the waterfall

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
    assert "step: compile" in text and "#3 running step: compile" in text
    assert "1 queued" in text and "forced by alice" in text
    assert "#2 failure" in text  # the header's last result: the newest finished build
    assert "3f2c9a1b A U Thor: fix the frobnicator" in text
    assert "long story" not in text  # only the first line of a message
    assert "compile failure 41sexit 2" in text  # the summary is a block of its own
    assert "checkout success 41s" in text       # name, result, duration
    classes = page.boxes()
    for word in ("r-success", "r-failure", "r-running", "r-queued"):
        assert any(word in c for c in classes), word
    links = page.links()
    assert "builders/hello/1/index.html" in links
    assert "builders/hello/2/02-compile.html" in links
    assert "builders/hello/3/03-compile.html" in links
    assert "builders/hello/index.html" in links
    # A pending step is not on the waterfall, but is on the build page.
    assert " test pending" not in text
    build = Page(str(tmp_path / "state" / "site" / "builders" / "hello" / "3" / "index.html"))
    assert "pending" in build.all_text


def test_waterfall_shares_a_row_between_builders_of_one_revision(tmp_path):
    st = State(str(tmp_path / "state"))
    sp = Spool(str(tmp_path / "spool"))
    cfg = make_cfg(tmp_path, names=("a", "b", "old"))
    make_build(st, "old", started=T0 - 86400 * 30, rev="1" * 40)
    make_build(st, "a", started=T0, rev="2" * 40)
    make_build(st, "b", started=T0 + 5, rev="2" * 40)
    make_build(st, "a", started=T0 + 100, rev="3" * 40)
    s = site.Site(str(tmp_path / "site"), st, sp, cfg)
    s.update([])
    page = Page(str(tmp_path / "site" / "index.html"))
    rows = []
    for tag, attrs in page.tags:
        if tag == "tr":
            rows.append([])
        elif tag == "a" and rows and attrs.get("href", "").endswith("/index.html") and "box" in attrs.get("class", ""):
            rows[-1].append(attrs["href"])
    body = [r for r in rows if r][1:]  # the first row of boxes: each builder's last build
    assert rows[1] == ["builders/a/2/index.html", "builders/b/1/index.html", "builders/old/1/index.html"]
    assert body[0] == ["builders/a/2/index.html"]
    assert body[1] == ["builders/a/1/index.html", "builders/b/1/index.html"]  # one row, two builders
    assert body[2] == ["builders/old/1/index.html"]
    # The day changes between the old build and the others.
    assert page.all_text.count(time.strftime("%Y-%m-%d", time.localtime(T0))) >= 1


def test_waterfall_depth_limits_builds_on_the_first_page(env, tmp_path):
    st, sp, cfg, s = env
    cfg.waterfall_depth = 2
    for i in range(4):
        make_build(st, "hello", started=T0 + 1000 * i)
    s.update([])
    root = tmp_path / "state" / "site"
    links = Page(str(root / "index.html")).links()
    assert "builders/hello/4/index.html" in links and "builders/hello/3/index.html" in links
    assert "builders/hello/2/index.html" not in links
    assert "waterfall/1.html" in links
    older = Page(str(root / "waterfall" / "1.html")).links()
    assert "../builders/hello/2/index.html" in older and "../builders/hello/1/index.html" in older
    assert "../index.html" in older
    check_links(s.root)


def test_older_waterfall_pages_hold_every_build_once(tmp_path):
    st = State(str(tmp_path / "state"))
    sp = Spool(str(tmp_path / "spool"))
    cfg = make_cfg(tmp_path, names=("a", "b", "c"), depth=5)
    s = site.Site(str(tmp_path / "site"), st, sp, cfg)
    made = []
    for i in range(60):
        name = "abc"[i % 3] if i % 4 else "a"
        n = make_build(st, name, started=T0 + 60 * i, rev="%040x" % i)  # a row each
        made.append((name, n))
        s.update([(name, n)])  # one at a time, as htmlgen follows builds
    root = tmp_path / "site"
    shown = []
    k = 1
    while (root / "waterfall" / ("%d.html" % k)).exists():
        shown += [h for h in Page(str(root / "waterfall" / ("%d.html" % k))).links()
                  if h.startswith("../builders/") and h.count("/") == 4 and h.endswith("/index.html")]
        k += 1
    first = [h for h in Page(str(root / "index.html")).links() if h.count("/") == 3 and h.endswith("/index.html")]
    # The first page's header repeats each builder's last build; count rows only.
    heads = Page(str(root / "index.html"))
    assert 5 <= len(set(first)) <= 10 + 3
    everything = sorted(set(h[3:] for h in shown) | set(first))
    assert everything == sorted("builders/%s/%d/index.html" % m for m in made)
    assert len(shown) == len(set(shown))  # no build on two older pages
    assert k - 1 >= 9
    # Sealed pages are newest first inside, and link to their neighbours.
    p3 = Page(str(root / "waterfall" / "3.html")).links()
    assert "../waterfall/2.html" in p3
    order = [made.index(tuple(h.split("/")[2:4])[:1] + (int(h.split("/")[3]),))
             for h in p3 if h.startswith("../builders/") and h.count("/") == 4 and h.endswith("/index.html")]
    assert order == sorted(order, reverse=True) and len(order) >= 5
    assert "waterfall/%d.html" % (k - 1) in heads.links()
    check_links(str(root))


def test_builders_that_have_not_built_recently_keep_their_last_result(tmp_path):
    st = State(str(tmp_path / "state"))
    sp = Spool(str(tmp_path / "spool"))
    cfg = make_cfg(tmp_path, names=("busy", "rare"), depth=3)
    make_build(st, "rare", started=T0, steps=(("compile", "failure", "x\n"),))
    s = site.Site(str(tmp_path / "site"), st, sp, cfg)
    for i in range(40):
        s.update([("busy", make_build(st, "busy", started=T0 + 60 * (i + 1)))])
    text = Page(str(tmp_path / "site" / "index.html")).all_text
    assert "builders/rare/1/index.html" in Page(str(tmp_path / "site" / "index.html")).links()
    assert "#1 failure" in text
    # And after a restart, from INDEX alone.
    s2 = site.Site(str(tmp_path / "site"), st, sp, cfg)
    s2.update([])
    assert "#1 failure" in Page(str(tmp_path / "site" / "index.html")).all_text


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


def test_empty_site(env, tmp_path):
    st, sp, cfg, s = env
    cfg.builders.clear()
    assert s.rebuild() == 5  # index, console, builders, feed, api/builders.json, and nothing else
    assert "No builders yet" in Page(str(tmp_path / "state" / "site" / "index.html")).all_text
    check_links(s.root)


# ------------------------------------------------- console, builder pages

def test_console_rows_are_revisions_and_cells_results(tmp_path):
    st = State(str(tmp_path / "state"))
    sp = Spool(str(tmp_path / "spool"))
    cfg = make_cfg(tmp_path, names=("a", "b"))
    r1, r2 = "1" * 40, "2" * 40
    make_build(st, "a", started=T0, rev=r1, changes=[change(message="first commit", rev=r1)])
    make_build(st, "b", started=T0 + 10, rev=r1, changes=[change(message="first commit", rev=r1)],
               steps=(("compile", "failure", "x\n"),))
    make_build(st, "a", started=T0 + 100, rev=r2, changes=[change(message="second commit", rev=r2)])
    make_build(st, "b", started=T0 + 110, rev=r2, running_step=("compile", "x\n"),
               changes=[change(message="second commit", rev=r2)])
    s = site.Site(str(tmp_path / "site"), st, sp, cfg)
    s.update([])
    page = Page(str(tmp_path / "site" / "console.html"))
    text = page.all_text
    assert text.index("second commit") < text.index("first commit")
    second = text[text.index("second commit"):text.index("first commit")]
    assert "success #2" in second and "running #2" in second
    assert "failure #1" in text[text.index("first commit"):]
    assert "builders/b/1/index.html" in page.links()
    check_links(str(tmp_path / "site"))


def test_builder_pages_are_paged_and_history_pages_final(tmp_path):
    st = State(str(tmp_path / "state"))
    sp = Spool(str(tmp_path / "spool"))
    cfg = make_cfg(tmp_path)
    P = site.HISTORY_PAGE
    for i in range(2 * P + 20):
        make_build(st, "hello", started=T0 + 60 * i)
    s = site.Site(str(tmp_path / "site"), st, sp, cfg)
    s.rebuild()
    root = tmp_path / "site" / "builders" / "hello"
    head = Page(str(root / "index.html"))

    def numbers_in(page, up):
        prefix = up + "builders/hello/"
        return [int(h[len(prefix):].split("/")[0]) for h in page.links()
                if h.startswith(prefix) and h[len(prefix):].split("/")[0].isdigit() and h.endswith("/index.html")]
    numbers = numbers_in(head, "../../")
    assert max(numbers) == 2 * P + 20 and min(numbers) == P + 1  # at least a page's worth
    assert numbers[0] >= numbers[-1]  # newest first
    assert "../../builders/hello/history/1.html" in head.links()
    page1 = Page(str(root / "history" / "1.html"))
    assert set(numbers_in(page1, "../../../")) == set(range(1, P + 1))
    # Written once, when it filled up: "newer" is the builder's first page.
    assert "../../../builders/hello/index.html" in page1.links()
    assert (root / "history" / "2.html").exists() and not (root / "history" / "3.html").exists()
    doc = json.loads((tmp_path / "site" / "api" / "builders" / "hello" / "history" / "1.json").read_text())
    assert doc["format"] == "site-history" and doc["final"] and len(doc["builds"]) == P
    assert [b["number"] for b in doc["builds"]] == list(range(P, 0, -1))
    check_links(str(tmp_path / "site"))


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
    assert "../../../index.html" in links and "../../../builders/hello/index.html" in links
    assert "../../../api/builders/hello/builds/1.json" in links


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


# ---------------------------------------------------- feeds, JSON, badges

def test_atom_feeds_parse_and_hold_the_finished_builds(env, tmp_path):
    st, sp, cfg, s = env
    cfg.builders.update(make_cfg(tmp_path, names=("other",)).builders)
    for i in range(sitepages.FEED_ENTRIES + 5):
        make_build(st, "hello", started=T0 + 60 * i,
                   steps=(("compile", "failure" if i == sitepages.FEED_ENTRIES + 4 else "success", "x\n"),))
    make_build(st, "other", started=T0 + 30)
    make_build(st, "hello", started=T0 + 10000, running_step=("compile", "x\n"))
    s.update([])
    root = tmp_path / "state" / "site"
    feed = ElementTree.parse(str(root / "atom.xml")).getroot()
    assert feed.tag == ATOM + "feed"
    entries = feed.findall(ATOM + "entry")
    assert len(entries) == sitepages.FEED_ENTRIES
    titles = [e.find(ATOM + "title").text for e in entries]
    assert titles[0] == "hello #%d: failure" % (sitepages.FEED_ENTRIES + 5)
    assert all("#%d:" % (sitepages.FEED_ENTRIES + 6) not in t for t in titles)  # running: not in the feed
    ids = [e.find(ATOM + "id").text for e in entries]
    assert len(set(ids)) == len(ids) and all(i.startswith("urn:uuid:") for i in ids)
    for e in entries:
        href = e.find(ATOM + "link").get("href")
        assert (root / unquote(href)).is_file(), href
        assert e.find(ATOM + "updated").text.endswith("Z")
    assert "compile failure" in entries[0].find(ATOM + "summary").text
    per = ElementTree.parse(str(root / "builders" / "other" / "atom.xml")).getroot()
    (entry,) = per.findall(ATOM + "entry")
    assert entry.find(ATOM + "title").text == "other #1: success"
    href = entry.find(ATOM + "link").get("href")
    assert (root / "builders" / "other" / unquote(href)).resolve().is_file()
    # Ids do not depend on the title of the site.
    cfg.title = "Renamed"
    s2 = site.Site(s.root, st, sp, cfg)
    s2.rebuild(force=True)
    again = ElementTree.parse(str(root / "atom.xml")).getroot().findall(ATOM + "entry")
    assert [e.find(ATOM + "id").text for e in again] == ids


def test_json_api_describes_builders_and_builds(env, tmp_path):
    st, sp, cfg, s = env
    n1 = make_build(st, "hello", steps=(("checkout", "success", "ok\n"), ("compile", "failure", "error\n")))
    n2 = make_build(st, "hello", running_step=("compile", "cc\n"))
    sp.deliver("requests", "request", {"builder": "hello", "branch": "main", "revision": "", "repository": "",
                                       "reason": "forced", "changes": [], "force": None, "properties": {}})
    s.update([])
    api = tmp_path / "state" / "site" / "api"
    root = tmp_path / "state" / "site"
    top = json.loads((api / "builders.json").read_text())
    assert (top["format"], top["version"]) == ("site-builders", siteviews.API_VERSION)
    (b,) = top["builders"]
    assert b["name"] == "hello" and b["configured"] and b["latest"] == n2 and b["queued"] == 1
    assert b["last"]["number"] == n1 and b["last"]["status"] == "failure"
    assert [r["number"] for r in b["running"]] == [n2]
    for key in ("html", "json", "atom", "badge"):
        assert (root / unquote(b[key])).is_file(), key
    one = json.loads((root / unquote(b["json"])).read_text())
    assert (one["format"], one["version"]) == ("site-builder", siteviews.API_VERSION)
    assert [c["number"] for c in one["builds"]] == [n2, n1]
    assert one["history"]["page_size"] == site.HISTORY_PAGE and one["history"]["pages"] == 0
    build = json.loads((root / unquote(one["builds"][1]["json"])).read_text())
    assert (build["format"], build["version"]) == ("site-build", siteviews.API_VERSION)
    assert build["number"] == n1 and build["result"] == "failure" and build["state"] == "finished"
    assert build["changes"][0]["message"] == "fix the frobnicator\n\nlong story"
    assert build["changes"][0]["subject"] == "fix the frobnicator"
    assert build["properties"] == {"owner": "ci"}
    assert [(x["name"], x["result"], x["command"]) for x in build["steps"]] == [
        ("checkout", "success", "make checkout"), ("compile", "failure", "make compile")]
    for x in build["steps"]:
        assert (root / unquote(x["log"]["html"])).is_file() and (root / unquote(x["log"]["raw"])).is_file()
    assert (root / unquote(build["html"])).is_file()
    running = json.loads((api / "builders" / "hello" / "builds" / ("%d.json" % n2)).read_text())
    assert running["state"] == "running" and running["result"] is None and running["current_step"] == "compile"


def test_badge_is_svg_with_the_latest_result(env, tmp_path):
    st, sp, cfg, s = env
    s.update([])
    badge = tmp_path / "state" / "site" / "builders" / "hello" / "badge.svg"
    svg = ElementTree.parse(str(badge)).getroot()
    assert svg.tag == SVG + "svg" and "no builds" in "".join(svg.itertext())
    make_build(st, "hello", steps=(("compile", "failure", "x\n"),))
    s.update([])
    svg = ElementTree.parse(str(badge)).getroot()
    words = [t.text for t in svg.iter(SVG + "text")]
    assert words == ["hello", "failure"]
    assert svg.find(SVG + "title").text == "hello: failure"
    assert int(svg.get("width")) > 0
    ino = os.stat(badge).st_ino
    make_build(st, "hello", steps=(("compile", "failure", "x\n"),))
    s.update([])
    assert os.stat(badge).st_ino == ino  # the same word: not written again
    make_build(st, "hello")
    s.update([])
    assert [t.text for t in ElementTree.parse(str(badge)).getroot().iter(SVG + "text")] == ["hello", "success"]


# ------------------------------------------------------ incremental, cheap

def _history(tmp_path, size, name="h"):
    base = tmp_path / name
    st = State(str(base / "state"))
    sp = Spool(str(base / "spool"))
    cfg = make_cfg(base, names=("hello", "world"))
    for i in range(size):
        make_build(st, "hello" if i % 3 else "world", started=T0 + 60 * i, rev="%040x" % i,
                   steps=(("compile", "success", "x\n"), ("test", "success", "y\n")))
    s = site.Site(str(base / "site"), st, sp, cfg)
    s.rebuild(force=True)
    return st, s


def _one_update(tmp_path, st, s, i):
    backdate_site(s.root)
    before = files_of(s.root)
    n = make_build(st, "hello", started=T0 + 60 * (10**6 + i), rev="%040x" % (10**6 + i),
                   steps=(("compile", "success", "x\n"), ("test", "success", "y\n")))
    count = s.update([("hello", n)])
    return count, written_since(s.root, before), n


def test_one_update_writes_the_same_files_whatever_the_history(tmp_path, monkeypatch):
    small = _history(tmp_path, 30, "small")
    big = _history(tmp_path, 300, "big")
    results = {}
    for name, (st, s) in (("small", small), ("big", big)):
        # No listing, no reading of the history on the update path.
        def no_listing(builder):
            raise AssertionError("build_numbers() on the update path")
        monkeypatch.setattr(st, "build_numbers", no_listing)
        reads = []
        real_read = st.read_build
        monkeypatch.setattr(st, "read_build", lambda b, n: reads.append((b, n)) or real_read(b, n))
        count, written, n = _one_update(tmp_path, st, s, 0)
        assert reads == [("hello", n)], reads
        results[name] = (count, [w.replace("/%d" % n, "/N") for w in written])
    assert results["small"] == results["big"]
    count, written = results["big"]
    assert count == len(written) - 2, written  # all but the .final mark and the index
    assert set(written) == {
        "builders/hello/N/index.html", "builders/hello/N/.final", "builders/hello/N/01-compile.html",
        "builders/hello/N/01-compile.txt", "builders/hello/N/02-test.html", "builders/hello/N/02-test.txt",
        "api/builders/hello/builds/N.json", "index.html", "console.html", "builders.html", "atom.xml",
        "api/builders.json", "builders/hello/index.html", "builders/hello/atom.xml",
        "api/builders/hello/index.json", site.INDEX}


def test_builders_json_is_the_last_public_file_of_every_pass(tmp_path, monkeypatch):
    """docs/site.md promises readers: once api/builders.json names a build,
    every page of the pass that put it there is in place."""
    st, s = _history(tmp_path, 30)
    order = []
    real = site.fsutil.write_atomic
    monkeypatch.setattr(site.fsutil, "write_atomic",
                        lambda path, *a, **k: order.append(os.path.relpath(path, s.root)) or real(path, *a, **k))
    real_mark = sitefiles.SiteFiles.mark      # a build's .final: a link to the site's mark file
    monkeypatch.setattr(sitefiles.SiteFiles, "mark", lambda self, path, text: (
        order.append(os.path.relpath(path, s.root)), real_mark(self, path, text))[1])
    n = make_build(st, "hello", running_step=("compile", "cc a.c\n"), started=T0 + 10**7)
    s.update([("hello", n)])
    finish(st, "hello", n, at=T0 + 10**7 + 60)
    s.update([("hello", n)])
    s.rebuild()
    # INDEX, when a pass changed it, comes after api/builders.json; the
    # last pass (the heads again) changed nothing INDEX remembers.
    passes, current = [], []
    for rel in order:
        if rel == site.INDEX:
            passes[-1].append(rel)
            continue
        current.append(rel)
        if rel == "api/builders.json":
            passes.append(current)
            current = []
    assert len(passes) == 3 and not current, order
    for k, written in enumerate(passes):
        assert written[-2:] == ["api/builders.json", site.INDEX] if k < 2 else written[-1] == "api/builders.json"
        assert written.index("index.html") < written.index("api/builders.json")
    # A build's pages (and its .final) come before the heads that link to them.
    second = passes[1]
    assert second.index("builders/hello/%d/.final" % n) < second.index("index.html"), second
    assert second.index("builders/hello/%d/index.html" % n) < second.index("index.html"), second


def test_older_pages_and_finished_builds_are_never_written_again(tmp_path):
    st, s = _history(tmp_path, 260)
    root = s.root
    backdate_site(root)     # as each _one_update() does
    before = files_of(root)
    older = [p for p in before if p.startswith(("waterfall/", "builders/hello/history/", "builders/world/history/",
                                                 "api/builders/hello/history/"))]
    finished = [p for p in before if p.startswith("builders/") and p.split("/")[2].isdigit()]
    assert len(older) > 10 and len(finished) > 260 * 5
    written = []
    for i in range(120):
        written += _one_update(tmp_path, st, s, i)[1]
    after = files_of(root)
    for p in older + finished:
        assert after[p] == before[p], p
    # And the pages that filled up were written once each.
    new_older = [p for p in written if p.startswith(("waterfall/", "builders/hello/history/"))]
    assert new_older and len(new_older) == len(set(new_older))
    check_links(root)


def test_a_new_process_takes_up_from_the_index(tmp_path, monkeypatch):
    st, s = _history(tmp_path, 200)
    s2 = site.Site(s.root, st, s.spool, s.cfg)
    monkeypatch.setattr(st, "build_numbers", lambda b: pytest.fail("listed %s" % b))
    reads = []
    real_read = st.read_build
    monkeypatch.setattr(st, "read_build", lambda b, n: reads.append((b, n)) or real_read(b, n))
    before = files_of(s.root)
    n = make_build(st, "hello", started=T0 + 10**6)
    s2.update([("hello", n)])
    # The records its head pages show (a bounded number), not the history.
    assert len(reads) <= 2 * site.HISTORY_PAGE + 4 * s.cfg.waterfall_depth
    for p in written_since(s.root, before):
        assert not (p.startswith("builders/") and p.split("/")[2].isdigit() and p.split("/")[2] != str(n)), p
    check_links(s.root)


def test_the_rebuild_of_another_process_is_noticed(tmp_path):
    st, s = _history(tmp_path, 60)
    other = site.Site(s.root, st, s.spool, s.cfg)
    other.rebuild(force=True)
    n = make_build(st, "hello", started=T0 + 10**6)
    s.update([("hello", n)])
    check_links(s.root)
    assert "builders/hello/%d/index.html" % n in Page(os.path.join(s.root, "index.html")).links()


def test_finished_build_is_written_once(env, tmp_path):
    st, sp, cfg, s = env
    n = make_build(st, "hello")
    bdir = tmp_path / "state" / "site" / "builders" / "hello" / str(n)
    s.update([("hello", n)])
    names = ("index.html", "01-checkout.html", "01-checkout.txt")
    backdate(bdir / f for f in names)
    before = {f: os.stat(bdir / f) for f in names}
    s.update([("hello", n)])
    # A new process (no memory of what it wrote) also leaves it alone.
    s2 = site.Site(s.root, st, sp, cfg)
    s2.update([("hello", n)])
    s2.rebuild()
    # Nor does one that has lost the index.
    os.unlink(os.path.join(s.root, site.INDEX))
    site.Site(s.root, st, sp, cfg).rebuild()
    for f, st0 in before.items():
        st1 = os.stat(bdir / f)
        assert (st1.st_ino, st1.st_mtime_ns) == (st0.st_ino, st0.st_mtime_ns), f
    # Unless forced.
    s2.rebuild(force=True)
    assert os.stat(bdir / "index.html").st_ino != before["index.html"].st_ino


def test_running_build_is_rendered_again_until_it_finishes(env, tmp_path):
    st, sp, cfg, s = env
    n = make_build(st, "hello", running_step=("compile", "cc a.c\n"))
    bdir = tmp_path / "state" / "site" / "builders" / "hello" / str(n)
    s.update([("hello", n)])
    ino = os.stat(bdir / "index.html").st_ino
    assert refreshes(bdir / "index.html")  # while running
    log_ino = os.stat(bdir / "03-compile.html").st_ino
    # Nothing changed: neither its page nor its log page is written again.
    s.update([])
    assert os.stat(bdir / "index.html").st_ino == ino
    assert os.stat(bdir / "03-compile.html").st_ino == log_ino
    # The log grows, without a hint: its page follows; the raw link grows by itself.
    with open(st.log_path("hello", n, 3, "compile"), "a") as f:
        f.write("cc b.c\n")
    s.update([])
    assert "cc b.c" in Page(str(bdir / "03-compile.html")).all_text
    assert (bdir / "03-compile.txt").read_text() == "cc a.c\ncc b.c\n"
    # It finishes: rendered once more, then final.
    finish(st, "hello", n, at=T0 + 60)
    s.update([])
    assert (bdir / ".final").exists()
    assert not refreshes(bdir / "index.html")
    assert "success" in Page(str(bdir / "03-compile.html")).all_text
    assert "#1 success" in Page(os.path.join(s.root, "index.html")).all_text
    ino = os.stat(bdir / "index.html").st_ino
    s.update([("hello", n)])
    assert os.stat(bdir / "index.html").st_ino == ino


def test_a_running_build_on_a_sealed_page_finishes_there(tmp_path):
    st = State(str(tmp_path / "state"))
    sp = Spool(str(tmp_path / "spool"))
    cfg = make_cfg(tmp_path, depth=3)
    s = site.Site(str(tmp_path / "site"), st, sp, cfg)
    stuck = make_build(st, "hello", started=T0, running_step=("compile", "x\n"))
    for i in range(20):
        s.update([("hello", make_build(st, "hello", started=T0 + 60 * (i + 1)))])
    root = tmp_path / "site"
    holder = [p for p in (root / "waterfall").iterdir()
              if "../builders/hello/%d/index.html" % stuck in Page(str(p)).links()]
    assert len(holder) == 1 and "#1 running" in Page(str(holder[0])).all_text
    finish(st, "hello", stuck, "failure")
    s.update([])  # no hint: found because it was not final
    assert "#1 failure" in Page(str(holder[0])).all_text
    inode = os.stat(holder[0]).st_ino
    s.update([("hello", stuck)])
    assert os.stat(holder[0]).st_ino == inode  # now final: not replaced
    assert (root / "builders" / "hello" / str(stuck) / ".final").exists()


def test_a_failed_update_is_made_good_by_the_next(tmp_path, monkeypatch):
    st = State(str(tmp_path / "state"))
    sp = Spool(str(tmp_path / "spool"))
    cfg = make_cfg(tmp_path, depth=3)
    s = site.Site(str(tmp_path / "site"), st, sp, cfg)
    for i in range(site.HISTORY_PAGE - 1):
        make_build(st, "hello", started=T0 + 60 * i)
    s.update([])
    real = site.fsutil.write_atomic
    for fail_at in (1, 3, 8):   # a build's page, a history page, the heads
        calls = []

        def full_disk(path, data, **kw):
            calls.append(path)
            if len(calls) == fail_at:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, data, **kw)
        n = make_build(st, "hello", started=T0 + 60 * (100 + fail_at))
        monkeypatch.setattr(site.fsutil, "write_atomic", full_disk)
        with pytest.raises(OSError):
            s.update([("hello", n)])
        monkeypatch.setattr(site.fsutil, "write_atomic", real)
        s.update([])  # no hint: the one before was taken
        assert (tmp_path / "site" / "builders" / "hello" / str(n) / ".final").exists()
        assert "builders/hello/%d/index.html" % n in Page(str(tmp_path / "site" / "index.html")).links()
    assert (tmp_path / "site" / "builders" / "hello" / "history" / "1.html").exists()
    check_links(str(tmp_path / "site"))
    crawl(str(tmp_path / "site"))


def test_lost_hint_is_healed_by_the_next_update(env, tmp_path):
    st, sp, cfg, s = env
    s.update([])
    n = make_build(st, "hello")
    s.update([])  # no hint for the new build
    assert (tmp_path / "state" / "site" / "builders" / "hello" / str(n) / "index.html").exists()
    check_links(str(tmp_path / "state" / "site"))


def test_a_lagging_counter_and_a_late_record_are_caught_up(env, tmp_path):
    st, sp, cfg, s = env
    make_build(st, "hello")
    s.update([])
    # A number taken, its record not written yet: waited for.
    n2 = st.allocate_number("hello")
    s.update([])
    root = tmp_path / "state" / "site"
    assert not (root / "builders" / "hello" / str(n2)).exists()
    rec = st.read_build("hello", 1)
    rec.update(number=n2, started=T0 + 500)
    st.write_build(rec)
    # And one more, with the counter put back as after a crash.
    n3 = make_build(st, "hello", started=T0 + 600)
    with open(os.path.join(st.builder_dir("hello"), "next.json"), "w") as f:
        json.dump({"format": "counter", "version": 1, "next": n2}, f)
    s.update([])
    for n in (n2, n3):
        assert (root / "builders" / "hello" / str(n) / ".final").exists(), n
    assert "builders/hello/%d/index.html" % n3 in Page(str(root / "index.html")).links()


def test_a_counter_that_lies_is_listed_once(env, tmp_path, monkeypatch):
    st, sp, cfg, s = env
    make_build(st, "hello")
    s.update([])
    with open(os.path.join(st.builder_dir("hello"), "next.json"), "w") as f:
        json.dump({"format": "counter", "version": 1, "next": 10**9}, f)
    listed = []
    real = st.build_numbers
    monkeypatch.setattr(st, "build_numbers", lambda b: listed.append(b) or real(b))
    n = make_build(st, "hello", started=T0 + 100)  # takes 10**9: the counter is trusted
    s.update([])
    s.update([])
    assert listed == ["hello"]
    assert n == 10**9 and "builders/hello/%d/index.html" % n in Page(os.path.join(s.root, "index.html")).links()
    # Millions of empty history pages are skipped, by this process and the next.
    history = os.listdir(os.path.join(s.root, "builders", "hello", "history"))
    assert sorted(history) == ["1.html", "%d.html" % (10**9 // site.HISTORY_PAGE)]
    site.Site(s.root, st, sp, cfg).update([("hello", make_build(st, "hello", started=T0 + 200))])
    check_links(s.root)
    crawl(s.root)


def test_numbers_and_pages_skip_empty_history_pages():
    b = siteindex.Builder("x")
    b.skipped = [[2, 4], [6, 6]]
    P = site.HISTORY_PAGE
    assert list(b.numbers(P - 2, 6 * P + 2)) == [P - 1, P] + list(range(4 * P + 1, 5 * P + 1)) + [6 * P + 1, 6 * P + 2]
    assert list(b.numbers(0, 3)) == [1, 2, 3]
    assert [b.page_below(p) for p in (8, 7, 6, 5, 2, 1)] == [7, 5, 5, 1, 1, 0]
    b.unskip(3)
    assert b.skipped == [[2, 2], [4, 4], [6, 6]]


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
    assert os.path.getsize(bdir / "01-compile.html") < 2 * sitelogs.MAX_LOG_BYTES
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
    ex = sitelogs.LogExcerpt(str(p), max_lines=2)
    assert list(ex) == [(1, "a"), (2, "b")] and ex.truncated and ex.shown == 2
    ex = sitelogs.LogExcerpt(str(p), max_lines=3)
    assert list(ex) == [(1, "a"), (2, "b"), (3, "c")] and not ex.truncated
    ex = sitelogs.LogExcerpt(str(tmp_path / "missing"))
    assert list(ex) == [] and ex.missing


@pytest.mark.parametrize("data", [
    b"", b"one\n", b"no newline", b"a\n\nb\n\n", b"<b>&amp;\"'</b>\n", "caf\u00e9 \u20ac\n".encode(),
    b"bad \xff\xe2\x82 utf-8\nnext\n", b"tab\there\n", b"crlf\r\n", b"\x1b[31mred\x1b[0m\n", b"nul\x00\n",
    b"x" * 70000 + b"\n"])
def test_a_log_page_is_the_same_read_whole_or_line_by_line(tmp_path, data):
    # A short plain log is read and escaped at once (LogExcerpt._whole):
    # its lines must come out as the line-by-line reading makes them.
    p = tmp_path / "log"
    p.write_bytes(data)
    fd = os.open(str(p), os.O_RDONLY)
    try:
        for max_lines in (5000, 1):
            whole = sitelogs.LogExcerpt(str(p), max_lines=max_lines, fd=fd)
            by_line = sitelogs.LogExcerpt(str(p), max_lines=max_lines, fd=fd)
            by_line._whole = lambda: None
            assert ("".join(whole.html()), whole.shown, whole.truncated) == \
                ("".join(by_line.html()), by_line.shown, by_line.truncated)
    finally:
        os.close(fd)


def test_raw_log_is_copied_across_filesystems(env, tmp_path, monkeypatch):
    st, sp, cfg, s = env
    n = make_build(st, "hello", running_step=("compile", "cc a.c\n"))

    def no_link(src, dst, **kw):
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


@pytest.fixture
def other_fs(tmp_path):
    """A directory on a tmpfs of its own: another filesystem than the state's."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the tests run as root in CI)")
    d = tmp_path / "othersite"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(d)], check=True)
    yield str(d)
    subprocess.run(["umount", str(d)], check=True)


def test_a_growing_log_on_another_filesystem_is_copied_once(env, tmp_path, other_fs):
    """Each byte of a running step's log is written to the site once,
    whatever the passes while it grows, and a finished log is not copied
    again; a log that was replaced (not grown) is copied whole."""
    st, sp, cfg, _ = env
    s = site.Site(other_fs, st, sp, cfg)
    n = make_build(st, "hello", running_step=("compile", "cc a.c\n"))
    log = st.log_path("hello", n, 3, "compile")
    raw = os.path.join(other_fs, "builders", "hello", str(n), "03-compile.txt")
    copied = _bytes_copied(s, lambda: s.update([("hello", n)]))
    assert os.stat(raw).st_dev != os.stat(log).st_dev
    assert copied == len("cloning\n" "cc a.c\n" "cc a.c\n")   # the three steps' logs
    total, chunk = copied, "line of output\n" * 1000
    for _ in range(20):
        with open(log, "a") as f:
            f.write(chunk)
        total += len(chunk)
        copied += _bytes_copied(s, lambda: (s.update([]), s.follow_logs(), s.update([])))
    assert copied == total
    finish(st, "hello", n)
    assert _bytes_copied(s, lambda: (s.update([("hello", n)]), s.update([]), s.rebuild())) == 0
    with open(raw, "rb") as f:
        assert f.read() == open(log, "rb").read()
    # A copy that is not a prefix of its log is made again whole.
    n2 = make_build(st, "hello", running_step=("compile", "first\n"))
    s.update([("hello", n2)])
    with open(st.log_path("hello", n2, 3, "compile"), "w") as f:
        f.write("rewritten, longer\n")
    assert _bytes_copied(s, lambda: s.update([])) == len("rewritten, longer\n")
    assert open(os.path.join(other_fs, "builders", "hello", str(n2), "03-compile.txt")).read() == "rewritten, longer\n"


def _bytes_copied(s, fn):
    """The bytes the site wrote into raw logs (.txt) while FN ran."""
    sizes = {}
    for d, _dirs, files in os.walk(s.root):
        for f in files:
            if f.endswith(".txt"):
                sizes[os.path.join(d, f)] = (os.stat(os.path.join(d, f)).st_ino, os.path.getsize(os.path.join(d, f)))
    fn()
    out = 0
    for d, _dirs, files in os.walk(s.root):
        for f in files:
            if f.endswith(".txt"):
                p = os.path.join(d, f)
                ino, size = os.stat(p).st_ino, os.path.getsize(p)
                old = sizes.get(p)
                out += size - old[1] if old and old[0] == ino else size
    return out


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
    forge_build(st, rec)
    n5 = make_build(st, "hello", steps=(("compile", "success", "ok\n"),))
    rec = st.read_build("hello", n5)
    rec["steps"][0]["log"] = "index.log"              # would overwrite the build's page
    forge_build(st, rec)
    s.update([("hello", 2), ("hello", n3), ("../evil", 1), (".hidden", 1), ("hello", "x"), ("hello", 10**12)])
    root = tmp_path / "state" / "site"
    assert not (root / "builders" / "hello" / "2").exists()
    assert not (root / "builders" / "hello" / str(n3)).exists()
    assert not (root / "evil").exists() and not (root / "builders" / ".hidden").exists()
    text = Page(str(root / "builders" / "hello" / str(n4) / "index.html")).all_text
    assert "compile" in text
    for n in (n4, n5):
        assert sorted(os.listdir(root / "builders" / "hello" / str(n))) == [".final", "index.html"]
    check_links(str(root))


def test_unknown_and_missing_keys(env, tmp_path):
    st, sp, cfg, s = env
    n = make_build(st, "hello", extra={"result": "frobnicated", "future_key": {"x": 1}})
    rec = st.read_build("hello", n)
    for k in ("worker", "reason", "request", "repository"):
        del rec[k]
    rec["steps"][0]["future"] = [1, 2]
    rec["steps"].append("not a step")
    del rec["steps"][1]["summary"]
    rec["started"] = 1e300  # no calendar shows this
    forge_build(st, rec)
    s.update([("hello", n)])
    root = tmp_path / "state" / "site"
    page = Page(str(root / "builders" / "hello" / str(n) / "index.html"))
    assert "frobnicated" in page.all_text
    assert any("r-other" in c for c in page.boxes())
    ElementTree.parse(str(root / "builders" / "hello" / "badge.svg"))
    check_links(str(root))


def test_a_new_final_mark_renders_old_pages_again(env, tmp_path, monkeypatch):
    st, sp, cfg, s = env
    n = make_build(st, "hello")
    s.update([("hello", n)])
    page = os.path.join(s.build_dir("hello", n), "index.html")
    ino = os.stat(page).st_ino
    monkeypatch.setattr(site, "FINAL_MARK", site.FINAL_MARK + "again\n")
    s2 = site.Site(s.root, st, sp, cfg)
    s2.update([])
    assert os.stat(page).st_ino != ino
    with open(os.path.join(s.build_dir("hello", n), ".final")) as f:
        assert f.read() == site.FINAL_MARK


def test_a_full_mark_file_is_replaced_and_its_links_keep_their_text(env, tmp_path, monkeypatch):
    """Each .final is a hard link to the site's mark file; when the file
    cannot take another link (EMLINK), a new one is made, and the .final
    files linked to the old one still say what they said."""
    import errno as errno_mod
    st, sp, cfg, s = env
    first = make_build(st, "hello")
    s.update([("hello", first)])
    mark = os.path.join(s.root, sitefiles.MARK_FILE)
    old = os.stat(mark)
    real_link = os.link

    def link(src, dst, **kw):
        if src == mark and os.stat(mark).st_ino == old.st_ino:
            raise OSError(errno_mod.EMLINK, "Too many links")
        return real_link(src, dst, **kw)
    monkeypatch.setattr(os, "link", link)
    second = make_build(st, "hello")
    s.update([("hello", second)])
    new = os.stat(mark)
    assert new.st_ino != old.st_ino
    a, b = (os.stat(os.path.join(s.build_dir("hello", n), ".final")) for n in (first, second))
    assert (a.st_ino, b.st_ino) == (old.st_ino, new.st_ino)
    for n in (first, second):
        with open(os.path.join(s.build_dir("hello", n), ".final")) as f:
            assert f.read() == site.FINAL_MARK


def test_odd_names_are_quoted_in_links(env, tmp_path):
    st, sp, cfg, s = env
    make_build(st, "odd name#1%", steps=(("st ep?#", "success", "ok\n"),))
    s.update([])
    root = tmp_path / "state" / "site"
    assert (root / "builders" / "odd name#1%" / "1" / "01-st ep?#.html").is_file()
    assert (root / "builders" / "odd name#1%" / "badge.svg").is_file()
    assert (root / "api" / "builders" / "odd name#1%" / "builds" / "1.json").is_file()
    assert "builders/odd%20name%231%25/index.html" in Page(str(root / "index.html")).links()
    check_links(str(root))
    crawl(str(root))


# ------------------------------------------------------------ hostile text

HOSTILE = [
    '<script>alert(1)</script>',
    '"><img src=x onerror=alert(1)>',
    "'><svg onload=alert(1)>",
    'javascript:alert(1)',
    '</title></textarea><style>*{}</style>',
    ']]><!-- --><!DOCTYPE x [<!ENTITY e "x">]>&e;',
    '\x1b[31mred\x1b[0m\x1b]0;title\x07',
    'nul\x00 bell\x07 SURROGATE lone surrogate \ufffe',
    'x' * 20000,
]


def test_hostile_corpus_comes_out_escaped(tmp_path):
    st = State(str(tmp_path / "state"))
    sp = Spool(str(tmp_path / "spool"))
    sp.ensure()
    evil_builder = '"><img src=x onerror=alert(1)>'
    cfg = make_cfg(tmp_path, title="CI <script>alert('title')</script>")
    text = "\n".join(HOSTILE)
    evil = change(message=text, author=HOSTILE[1] + " <" + HOSTILE[0] + ">", rev=HOSTILE[3])
    log = "\n".join(HOSTILE).encode("utf-8", "surrogatepass") + b"\n\xff\xfe invalid utf-8 \xc3\n"
    for builder in ("hello", evil_builder):
        n = make_build(st, builder, changes=[evil], steps=(("compile", "failure", ""),),
                       extra={"branch": HOSTILE[2], "reason": HOSTILE[0], "worker": HOSTILE[4]},
                       request_extra={"properties": {HOSTILE[0]: HOSTILE[1], "n": [HOSTILE[5]]},
                                      "reason": HOSTILE[6], "force": HOSTILE[7]})
        with open(st.log_path(builder, n, 1, "compile"), "wb") as f:
            f.write(log)
        rec = st.read_build(builder, n)
        rec["steps"][0].update(summary=HOSTILE[1], description=HOSTILE[0])
        forge_build(st, rec)
        # A lone surrogate: JSON can carry one, the record writer cannot write one.
        path = st.build_path(builder, n)
        with open(path, encoding="utf-8") as f:
            data = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(data.replace("SURROGATE", "\\ud800"))
    sp.deliver("requests", "request", {"builder": "hello", "branch": HOSTILE[0], "revision": HOSTILE[1],
                                       "repository": "", "reason": HOSTILE[2], "changes": [],
                                       "force": None, "properties": {}})
    s = site.Site(str(tmp_path / "site"), st, sp, cfg)
    s.rebuild()
    root = os.path.realpath(str(tmp_path / "site"))
    parsed = check_links(root)
    reached, others = crawl(root)
    assert len(parsed) == 9 and set(reached) == {os.path.relpath(p, root) for p in parsed}
    seen = ""
    for p, page in parsed.items():
        tags = {t for t, _ in page.tags}
        assert not tags & {"script", "img", "svg", "textarea", "iframe"}, (p, tags)
        assert [t for t, _ in page.tags].count("style") == 1, p
        assert [t for t, _ in page.tags].count("title") == 1, p
        for _, attrs in page.tags:
            assert not [k for k in attrs if k.startswith("on")], (p, attrs)
            for key in ("href", "src"):
                assert "javascript" not in attrs.get(key, ""), (p, attrs)
        seen += page.all_text
    assert "<script>alert(1)</script>" in seen and '"><img src=x onerror=alert(1)>' in seen
    assert "javascript:alert(1)" in seen and "red" in seen
    assert "\x1b" not in seen and "\x00" not in seen and "\ud800" not in seen
    # Machine-readable files parse, and carry the text as text.
    for p in others | {"atom.xml"}:
        path = os.path.join(root, p)
        if p.endswith(".json"):
            with open(path, encoding="ascii") as f:
                json.load(f)
        elif p.endswith((".xml", ".svg")):
            ElementTree.parse(path)
    feed = ElementTree.parse(os.path.join(root, "atom.xml")).getroot()
    assert "<script>alert(1)</script>" in "".join(feed.itertext())
    badge = os.path.join(root, "builders", evil_builder, "badge.svg")
    assert ElementTree.parse(badge).getroot().find(SVG + "title").text.startswith('"><img')
    log_page = Page(os.path.join(root, "builders", "hello", "1", "01-compile.html"))
    assert "invalid utf-8" in log_page.all_text and "\ufffd" in log_page.all_text


# --------------------------------------------------------------- templates

def test_templates_dir_from_environment(tmp_path, monkeypatch):
    assert os.path.isfile(os.path.join(templates.templates_dir({}), "base.html"))
    assert templates.templates_dir({"BUILDUNITS_TEMPLATES_DIR": str(tmp_path)}) == str(tmp_path)
    (tmp_path / "t.html").write_text("{{ x }}|{{ 90|timespan }}")
    monkeypatch.setenv("BUILDUNITS_TEMPLATES_DIR", str(tmp_path))
    assert templates.render("t.html", x="<a>") == "&lt;a&gt;|1min 30s"
    assert "".join(templates.generate("t.html", x="&")) == "&amp;|1min 30s"
    assert templates.fragment("t.html", x="<b>") == "&lt;b&gt;|1min 30s"
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
    assert templates.rfc3339(T0) == "2023-11-14T22:13:20Z"


def test_installed_templates_path():
    # An install puts the package at PREFIX/lib/buildunits/python/buildunits/.
    rel = os.path.relpath(templates._INSTALLED, templates._PACKAGE)
    assert rel == os.path.join("..", "..", "..", "..", "share", "buildunits", "templates")


def test_the_build_page_and_its_json_show_what_each_step_used(env, tmp_path):
    st, sp, cfg, s = env
    n = make_build(st, "hello", steps=(("checkout", "success", "ok\n"), ("compile", "success", "cc\n"),
                                       ("test", "success", "ok\n")))
    rec = st.read_build("hello", n)
    rec["steps"][1]["usage"] = {"cpu_sec": 1.25, "memory_peak_bytes": 64 << 20, "io_read_bytes": 0,
                                "io_write_bytes": 3 << 10, "tasks_max": 7}
    # From a hostile or newer record: what is not a measure is not shown.
    rec["steps"][2]["usage"] = {"cpu_sec": "<b>lots</b>", "memory_peak_bytes": -1, "tasks_max": True, "new": 1}
    forge_build(st, rec)
    s.rebuild()
    root = tmp_path / "state" / "site"
    page = Page(str(root / "builders" / "hello" / str(n) / "index.html"))
    rows = page.all_text.split(" compile ", 1)[1]
    used = rows.split(" 41s ", 1)[1].split(" make compile ", 1)[0]
    assert used == "CPU 1.25smemory 64.0 MiBread 0 byteswritten 3.0 KiBtasks 7"   # a line each
    assert "lots" not in page.all_text and "<b>" not in open(page.path, encoding="utf-8").read()
    # Not measured is "—", never a zero.
    assert page.all_text.count("—") == 2
    with open(root / "api" / "builders" / "hello" / "builds" / ("%d.json" % n), encoding="utf-8") as f:
        doc = json.load(f)
    assert [step["usage"] for step in doc["steps"]] == [{}, rec["steps"][1]["usage"], {}]
