"""htmlgen.py in process: an HTMLGen on real temporary directories, with
NoBus and a notifier recording its STATUS= lines, its passes run by calling
work() as its main loop would; what it writes is seen through os.stat."""

import json
import os
import time

import pytest

from buildunits import buildrecord, config, fsutil, htmlgen, paths
from buildunits import step as stepmod
from buildunits.bus import NoBus
from support.inprocess import RecordingNotifier

HELLO = """\
[Builder]
PollIntervalSec=0

[Step compile]
Command=make
"""


@pytest.fixture
def gen(tmp_path):
    d = paths.Dirs(config=str(tmp_path / "config"), spool=str(tmp_path / "spool"), state=str(tmp_path / "state"),
                   site=str(tmp_path / "site"))
    os.makedirs(os.path.join(d.config, "builders"))
    with open(os.path.join(d.config, "builders", "hello.builder"), "w") as f:
        f.write(HELLO)
    h = htmlgen.HTMLGen(d, config.load(d.config), NoBus(), RecordingNotifier(), None)
    h.spool.ensure()
    h.state.ensure()
    yield h
    h.stopping = True
    if h._follow_source is not None:
        from gi.repository import GLib
        GLib.source_remove(h._follow_source)


def add_build(h, result="success", output="all good\n", exit_status=0, finished=True):
    """A build of hello as a runner records it; its number."""
    st, b = h.state, h.cfg.builders["hello"]
    req = {"id": "R%d" % time.monotonic_ns(), "builder": "hello", "branch": "main", "revision": "c" * 40,
           "repository": "", "reason": "a test"}
    n = st.allocate_number("hello")
    now = time.time()
    rec = buildrecord.new_record(req, "hello", n, "w1", stepmod.plan(b, req), now)
    s = rec["steps"][0]
    s["log"] = st.log_name(1, s["name"])
    fd = st.create_log("hello", n, s["log"])
    os.write(fd, output.encode())
    os.close(fd)
    s.update(state="running", started=now)
    if finished:
        s.update(state="finished", finished=now, exit_status=exit_status, result=result)
        buildrecord.finished(rec, [result], None, now)
    st.write_build(rec)
    return n


def site_files(h):
    """{relative path: (inode, mtime_ns, size)} of every file of the site."""
    out = {}
    for dirpath, _dirs, files in os.walk(h.dirs.site):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            out[os.path.relpath(p, h.dirs.site)] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def read(h, rel):
    with open(os.path.join(h.dirs.site, rel)) as f:
        return f.read()


def test_the_first_pass_renders_the_site_for_existing_builds_with_builders_json_last(gen):
    h = gen
    add_build(h)
    add_build(h, result="failure", output="error: no rule\n", exit_status=2)
    h.startup()
    h.work()
    files = site_files(h)
    for rel in ("index.html", "console.html", "api/builders.json", "builders/hello/index.html",
                "builders/hello/1/index.html", "builders/hello/2/index.html", "builders/hello/badge.svg"):
        assert rel in files, rel
    assert "error: no rule" in "".join(read(h, p) for p in files if p.startswith("builders/hello/2/"))
    api = json.loads(read(h, "api/builders.json"))
    assert "hello" in json.dumps(api) and "failure" in json.dumps(api)
    # api/builders.json is the last public file written (only the site's
    # own memory, a hidden file, comes after it).
    public = {p: v for p, v in files.items() if not os.path.basename(p).startswith(".")}
    last = max(public.values(), key=lambda v: v[1])[1]
    assert public["api/builders.json"][1] == last
    assert h.notifier.statuses() == [] and h.status_text().endswith("1 updates")


def test_startup_sweeps_only_abandoned_temp_files_and_keeps_pages(gen):
    h = gen
    os.makedirs(h.dirs.site)
    stale, fresh, page = (os.path.join(h.dirs.site, n) for n in (".index.html.tmp-1-aa", ".x.tmp-2-bb", "keep.html"))
    for p in (stale, fresh, page):
        open(p, "w").close()
    old = time.time() - fsutil.TMP_SWEEP_AGE_SEC - 60
    os.utime(stale, (old, old))
    os.utime(page, (old, old))
    h.startup()
    assert sorted(os.listdir(h.dirs.site)) == [".x.tmp-2-bb", "keep.html"]


def test_a_hint_for_a_finished_build_brings_its_pages_up(gen):
    h = gen
    add_build(h)
    h.startup()
    h.work()
    before = site_files(h)
    n = add_build(h, result="failure", output="boom\n", exit_status=1)
    h.spool.hint("hello", n)
    h.work()
    after = site_files(h)
    assert "builders/hello/%d/index.html" % n in after and "builders/hello/%d/index.html" % n not in before
    assert "boom" in "".join(read(h, p) for p in after if p.startswith("builders/hello/%d/" % n))
    assert after["api/builders.json"] != before["api/builders.json"]
    assert after["index.html"] != before["index.html"]
    # Build 1's own page shows only finished things: not written again.
    assert after["builders/hello/1/index.html"] == before["builders/hello/1/index.html"]
    assert h.spool.take_hints() == []                     # taken by the pass


def test_a_running_build_is_shown_and_updated_when_it_finishes(gen):
    h = gen
    h.startup()
    h.work()
    st = h.state
    n = add_build(h, finished=False)
    h.spool.hint("hello", n)
    h.work()
    assert "builders/hello/%d/index.html" % n in site_files(h)
    assert h._follow_source is not None                   # its log page is followed
    rec = st.read_build("hello", n)
    rec["steps"][0].update(state="finished", finished=time.time(), exit_status=0, result="success")
    buildrecord.finished(rec, ["success"], None, time.time())
    st.write_build(rec)
    before = site_files(h)
    h.spool.hint("hello", n)
    h.work()
    after = site_files(h)
    assert after["builders/hello/%d/index.html" % n] != before["builders/hello/%d/index.html" % n]
    assert json.loads(read(h, "api/builders/hello/builds/%d.json" % n))["result"] == "success"


def changed(before, after):
    return {p for p in set(before) | set(after) if before.get(p) != after.get(p)}


def test_a_pass_with_nothing_new_writes_nothing(gen):
    h = gen
    add_build(h)
    add_build(h, result="failure", exit_status=1)
    h.startup()
    h.work()
    before = site_files(h)
    h.work()                    # a wake with no hint and nothing new
    after = site_files(h)
    assert changed(before, after) == set()
    assert set(after) == set(before)
    # A request queued is shown on the heads that list the queue.
    h.spool.deliver("requests", "request", {"builder": "hello", "branch": "main", "revision": "d" * 40,
                                            "repository": "", "reason": "queued in a test", "changes": [],
                                            "force": None, "properties": {}})
    h.work()
    queued = site_files(h)
    assert {"index.html", "builders.html", "api/builders.json"} <= changed(after, queued)
    assert not any(p.startswith("builders/hello/1/") for p in changed(after, queued))
    after = queued
    # The rescan timer's whole pass renders the heads again, never a
    # finished build's pages.
    h._rescan()
    h._wake_pending = False
    h.work()
    again = site_files(h)
    assert set(again) == set(before)
    assert not any(p.startswith(("builders/hello/1/", "builders/hello/2/", "api/builders/hello/builds/"))
                   for p in changed(after, again))
