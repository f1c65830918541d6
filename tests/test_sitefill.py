"""sitefill.py and the heads-first start of htmlgen: a site rendered by
worker processes, or filled in by a child after the head pages, is the
site one process renders, page for page; READY=1 comes before the fill;
a fill that crashed is finished by the next start.  Real state written
with the project's writers, real child processes, htmlgen in process
(NoBus, a notifier recording what it sends), its main loop iterated."""

import os
import re
import signal

import pytest
from gi.repository import GLib

from buildunits import htmlgen, paths, site, sitefiles, sitepages
from buildunits.bus import NoBus
from buildunits.spool import Spool
from buildunits.state import State
from support.inprocess import RecordingNotifier
from support.wait import scaled

import time

T0 = 1700000000.0
BUILDERS = ("hello", "libfoo", "docs")
INDEX = ".buildunits-site.json"


def write_history(st, count, running=True):
    """COUNT finished builds, the builders taking turns, a failure now and
    then, a build whose record is missing (a gap) and, if RUNNING, a build
    of hello still running at the end."""
    for i in range(count):
        b = BUILDERS[i % len(BUILDERS)]
        n = st.allocate_number(b)
        if b == "libfoo" and n == 7:
            continue   # a number taken without a record
        result = "failure" if i % 11 == 0 else "success"
        steps = []
        for k, name in enumerate(("compile", "test"), 1):
            with open(st.log_path(b, n, k, name), "w") as f:
                f.write("%s of build %d\n<b>not bold</b>\n" % (name, i))
            steps.append({"name": name, "description": "", "command": "make %s" % name, "state": "finished",
                          "result": result if name == "test" else "success", "started": T0 + 60 * i + k,
                          "finished": T0 + 60 * i + k + 5, "log": st.log_name(k, name),
                          "exit_status": 0, "summary": "", "timed_out": False})
        rev = "%040x" % (i * 2654435761 % (1 << 160))
        st.write_build({"builder": b, "number": n, "request_id": "R%d" % i,
                        "request": {"id": "R%d" % i, "builder": b, "branch": "main", "revision": rev,
                                    "repository": "/srv/git/%s.git" % b, "reason": "a test", "changes": [],
                                    "force": None, "properties": {}},
                        "worker": "w1", "state": "finished", "result": result, "reason": "",
                        "started": T0 + 60 * i, "finished": T0 + 60 * i + 20,
                        "repository": "/srv/git/%s.git" % b, "branch": "main", "revision": rev, "steps": steps})
    if running:
        n = st.allocate_number("hello")
        with open(st.log_path("hello", n, 1, "compile"), "w") as f:
            f.write("still compiling\n")
        st.write_build({"builder": "hello", "number": n, "request_id": "Rrun", "request": {},
                        "worker": "w1", "state": "running", "result": None, "reason": "",
                        "started": T0 + 60 * count, "finished": None, "repository": "", "branch": "main",
                        "revision": "e" * 40, "steps": [
                            {"name": "compile", "description": "", "command": "make", "state": "running",
                             "result": None, "started": T0 + 60 * count, "finished": None,
                             "log": st.log_name(1, "compile"), "exit_status": None, "summary": "",
                             "timed_out": False}]})


def make_dirs(root):
    d = paths.Dirs(config=str(root / "config"), spool=str(root / "spool"), state=str(root / "state"),
                   site=str(root / "site"))
    os.makedirs(os.path.join(d.config, "builders"))
    with open(os.path.join(d.config, "buildunits.conf"), "w") as f:
        f.write("[Site]\nTitle=fill test\nWaterfallDepth=10\n")
    for b in BUILDERS:
        with open(os.path.join(d.config, "builders", b + ".builder"), "w") as f:
            f.write("[Builder]\nPollIntervalSec=0\n\n[Step compile]\nCommand=make\n")
    State(d.state).ensure()
    Spool(d.spool).ensure()
    return d


_GENERATED = (re.compile(rb"<footer>Generated .*?</footer>"), re.compile(rb'"generated":[-0-9.e+]+'))


def pages(root):
    """{relative path: content} of every file of the site at ROOT, less
    the time each page says it was generated."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                data = f.read()
            for pat in _GENERATED:
                data = pat.sub(b"", data)
            out[os.path.relpath(p, root)] = data
    return out


def one_process_site(d, tmp_path):
    """The site one process renders of D's state, from nothing."""
    from buildunits import config
    s = site.Site(str(tmp_path / "reference"), State(d.state), Spool(d.spool), config.load(d.config), workers=1)
    s.rebuild()
    return pages(str(tmp_path / "reference"))


def assert_same_site(got, want):
    assert sorted(set(got) ^ set(want)) == []
    assert [p for p in want if got[p] != want[p]] == []


def iterate_until(predicate, what, timeout=60.0):
    """Run GLib's main loop until PREDICATE() (the fill's child watch and
    pipe are its sources), with a deadline."""
    ctx = GLib.MainContext.default()
    deadline = time.monotonic() + scaled(timeout)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        ctx.iteration(False) or ctx.iteration(True)


@pytest.fixture
def gens():
    made = []

    def make(d):
        from buildunits import config
        h = htmlgen.HTMLGen(d, config.load(d.config), NoBus(), RecordingNotifier(), None)
        made.append(h)
        return h
    yield make
    for h in made:
        h.stopping = True
        h.shutdown()
        if h._follow_source is not None:
            GLib.source_remove(h._follow_source)


# ---------------------------------------------------------------- the pool
def test_worker_processes_render_the_site_one_process_renders(tmp_path):
    d = make_dirs(tmp_path)
    write_history(State(d.state), 260)
    from buildunits import config
    s = site.Site(d.site, State(d.state), Spool(d.spool), config.load(d.config), workers=3)
    s.rebuild()
    got = pages(d.site)
    assert_same_site(got, one_process_site(d, tmp_path))
    # Every finished build's pages were written by a worker, and are final;
    # the running one is not, and the next pass renders it again.
    assert got["builders/hello/1/.final"] == site.FINAL_MARK.encode()
    # Each .final is a link to the site's one mark file: no inode of its own.
    mark = os.stat(os.path.join(d.site, sitefiles.MARK_FILE))
    finals = [os.stat(os.path.join(d.site, p)) for p in got if p.endswith("/.final")]
    assert len(finals) > 250 and {(f.st_dev, f.st_ino) for f in finals} == {(mark.st_dev, mark.st_ino)}
    running = max(int(n) for n in os.listdir(os.path.join(d.state, "builds", "hello")) if n.isdigit())
    assert "builders/hello/%d/.final" % running not in got
    assert running in s._b["hello"].unfinal


def test_a_worker_that_fails_fails_the_rendering_and_leaves_no_index(tmp_path, monkeypatch):
    d = make_dirs(tmp_path)
    write_history(State(d.state), 120, running=False)
    real = sitepages.Pages.build_page

    def build(self, cfg, b, bdir, view):
        if (view["builder"], view["number"]) == ("docs", 30):
            os.kill(os.getpid(), signal.SIGKILL)   # a worker dies mid-way
        return real(self, cfg, b, bdir, view)
    monkeypatch.setattr(sitepages.Pages, "build_page", build)
    from buildunits import config
    s = site.Site(d.site, State(d.state), Spool(d.spool), config.load(d.config), workers=2)
    with pytest.raises(RuntimeError, match="killed by signal 9"):
        s.rebuild()
    assert not os.path.exists(os.path.join(d.site, INDEX))
    assert not os.path.exists(os.path.join(d.site, "builders/docs/30/.final"))
    # The next try renders what is missing and commits the whole.
    monkeypatch.setattr(sitepages.Pages, "build_page", real)
    s.rebuild()
    assert os.path.exists(os.path.join(d.site, INDEX))
    assert_same_site(pages(d.site), one_process_site(d, tmp_path))


# ---------------------------------------------------------- heads first
def test_heads_first_then_the_fill_makes_the_site_of_a_full_rendering(tmp_path, gens, monkeypatch):
    monkeypatch.setattr(htmlgen, "HEADS_FIRST_MIN_BUILDS", 100)
    d = make_dirs(tmp_path)
    write_history(State(d.state), 450)
    h = gens(d)
    h.startup()
    h.work()                                    # what runs before READY=1
    head = pages(d.site)
    assert INDEX not in head and h.filling()
    assert {"index.html", "console.html", "builders.html", "api/builders.json",
            "builders/hello/index.html", "builders/hello/150/index.html"} <= set(head)
    assert "builders/hello/1/index.html" not in head          # older builds: the fill's
    assert not any(p.startswith("waterfall/") for p in head)
    assert "filling in the site's history" in h.status_text()
    iterate_until(lambda: not h.filling(), "the fill")
    assert h.fills == 1
    h.work()                                    # the wake the fill's end asked for
    assert "filling" not in h.status_text()
    assert_same_site(pages(d.site), one_process_site(d, tmp_path))
    assert any(re.search(r"filling in the site's history: \d+ of \d+ builds", t) for t in h.notifier.statuses())


def test_ready_is_sent_before_the_fill_starts(tmp_path, gens, monkeypatch):
    """The daemon's own startup (run()): READY=1, then the fill, then
    its end; what the site holds is looked at as each message is sent."""
    monkeypatch.setattr(htmlgen, "HEADS_FIRST_MIN_BUILDS", 100)
    d = make_dirs(tmp_path)
    write_history(State(d.state), 300)
    h = gens(d)
    seen = []
    send = h.notifier._send

    def _send(text):
        seen.append((text, os.path.exists(os.path.join(d.site, INDEX)),
                     os.path.exists(os.path.join(d.site, "builders/hello/1/index.html"))))
        send(text)
    h.notifier._send = _send

    def stop_when_filled():
        if h.fills:
            h._on_term()
            return False
        return True
    GLib.timeout_add(20, stop_when_filled)
    deadline = GLib.timeout_add(int(scaled(60) * 1000), lambda: h._on_term() and False)
    assert h.run() == 0
    GLib.source_remove(deadline)
    ready = [i for i, (text, _, _) in enumerate(seen) if text.startswith("READY=1")]
    assert len(ready) == 1 and h.fills == 1
    text, index, old_page = seen[ready[0]]
    assert "filling in the site's history" in text and not index and not old_page
    assert os.path.exists(os.path.join(d.site, INDEX))
    assert os.path.exists(os.path.join(d.site, "builders/hello/1/index.html"))


def test_a_crash_mid_fill_is_finished_by_the_next_start(tmp_path, gens, monkeypatch):
    monkeypatch.setattr(htmlgen, "HEADS_FIRST_MIN_BUILDS", 100)
    monkeypatch.setattr(site, "PARALLEL_MIN_BUILDS", 10 ** 9)   # the fill's own process renders
    d = make_dirs(tmp_path)
    write_history(State(d.state), 450)
    real = sitepages.Pages.build_page

    def build(self, cfg, b, bdir, view):
        if (view["builder"], view["number"]) == ("libfoo", 60):
            os.kill(os.getpid(), signal.SIGKILL)   # the fill dies here
        return real(self, cfg, b, bdir, view)
    monkeypatch.setattr(sitepages.Pages, "build_page", build)
    h = gens(d)
    h.startup()
    h.work()
    iterate_until(lambda: not h.filling(), "the fill to die")
    assert h.fills == 0 and INDEX not in pages(d.site)
    h._on_term()                                # the daemon is gone too
    half = {p: os.stat(os.path.join(d.site, p)) for p in pages(d.site)}
    assert "builders/hello/20/.final" in half and "builders/libfoo/60/.final" not in half
    monkeypatch.setattr(sitepages.Pages, "build_page", real)
    again = gens(d)                             # the next start
    again.startup()
    again.work()
    assert again.filling()
    iterate_until(lambda: not again.filling(), "the second fill")
    again.work()
    assert again.fills == 1
    assert_same_site(pages(d.site), one_process_site(d, tmp_path))
    # What the first fill finished was not rendered again.
    st = os.stat(os.path.join(d.site, "builders/hello/20/index.html"))
    assert (st.st_ino, st.st_mtime_ns) == (half["builders/hello/20/index.html"].st_ino,
                                           half["builders/hello/20/index.html"].st_mtime_ns)


def test_a_new_build_directory_appears_whole(tmp_path, monkeypatch):
    """A finished build's directory is written hidden and renamed into
    place: while its page is being written (its logs' pages already are)
    no reader finds builders/B/N; once there, it holds every page."""
    d = make_dirs(tmp_path)
    write_history(State(d.state), 20, running=False)
    real = sitepages.Pages.build_page
    seen = []

    def build_page(self, cfg, b, bdir, view):
        shown = os.path.join(d.site, "builders", view["builder"], str(view["number"]))
        seen.append((os.path.lexists(shown), sorted(n for n in os.listdir(bdir) if n.endswith(".html"))))
        return real(self, cfg, b, bdir, view)
    monkeypatch.setattr(sitepages.Pages, "build_page", build_page)
    from buildunits import config
    s = site.Site(d.site, State(d.state), Spool(d.spool), config.load(d.config), workers=1)
    s.rebuild()
    assert seen and all(not there and logs for there, logs in seen)
    for b in ("hello", "docs"):
        names = os.listdir(os.path.join(d.site, "builders", b))
        assert not [n for n in names if n.startswith(".")]          # nothing hidden left behind
    monkeypatch.setattr(sitepages.Pages, "build_page", real)
    assert_same_site(pages(d.site), one_process_site(d, tmp_path))
