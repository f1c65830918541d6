"""buildunits-poller's polls as jobs of its main loop, in-process.

The poller is built over a test's directories (no bus, a recording
notifier) and its GLib main loop is iterated until what a user would
check has happened, with a deadline: the change records in the spool,
the state records' "problem", the status line, and the git processes
running below this process (read from /proc).  A remote that never
answers is a real one: an http URL of a local socket that is listening
and never accepts, so git (and its git-remote-http) connect and wait.
"""

import os
import socket

import pytest
from gi.repository import GLib

import harness
from support import inprocess
from support.wait import wait_for
from buildunits import config, git, poller, proctree


@pytest.fixture
def hung_server():
    """An http base URL whose server accepts connections and never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(64)                 # the kernel completes the connections; nobody reads them
    yield "http://127.0.0.1:%d" % s.getsockname()[1]
    s.close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


def make(tmp_path, builders, daemons=""):
    """A Poller over TMP_PATH with BUILDERS {name: (repository, interval)}
    and the [Daemons] lines DAEMONS."""
    d = inprocess.dirs(tmp_path / "bu")
    write(d, builders, daemons)
    p = inprocess.make(poller.Poller, d)
    p.spool.ensure()
    p.state.ensure()
    return p


def write(d, builders, daemons=""):
    os.makedirs(d.config, exist_ok=True)
    with open(os.path.join(d.config, "buildunits.conf"), "w") as f:
        f.write("[Daemons]\n" + daemons)
    bdir = os.path.join(d.config, "builders")
    if os.path.isdir(bdir):
        for n in os.listdir(bdir):
            os.remove(os.path.join(bdir, n))
    inprocess.write_builders(d, {name: "[Builder]\nRepository=%s\nPollIntervalSec=%s\n[Step s]\nCommand=true\n"
                                 % (repo, interval) for name, (repo, interval) in builders.items()})


@pytest.fixture
def started():
    """start(poller): its timers armed and every repository due, as at a
    daemon's start; its polls ended at the test's end."""
    polls = []

    def start(p):
        polls.append(p)
        p.startup()
        p.work()
        return p
    yield start
    for p in polls:
        p.stopping = True
        p.shutdown()
        for t in p._timers.values():
            t.remove()


def run_until(predicate, timeout=30.0, what=None, each=None):
    """Iterate the main loop until PREDICATE() is true (a deadline, no
    fixed sleep); EACH() after every round, to watch what happens."""
    ctx = GLib.MainContext.default()

    def step():
        while ctx.pending():
            ctx.iteration(False)
        if each:
            each()
        return predicate()
    return wait_for(step, timeout, what=what)


def git_processes(needle):
    """Live processes below this one whose command line holds NEEDLE:
    {pid: "git COMMAND"} (argv[0]'s base name and argv[1])."""
    table, me = proctree.table(), os.getpid()
    out = {}
    for pid, (_ppid, st) in table.items():
        if st == "Z" or not _below(table, pid, me):
            continue
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(needle.encode() in a for a in argv):
            out[pid] = " ".join([os.path.basename(argv[0].decode(errors="replace"))] +
                                [a.decode(errors="replace") for a in argv[1:2]])
    return out


def _below(table, pid, root):
    seen = 0
    while pid in table and seen < 100:
        pid, seen = table[pid][0], seen + 1
        if pid == root:
            return True
    return False


def record(p, repo):
    path = p.state.poller_path(repo)
    return p.state.read_poller(repo) if os.path.exists(path) else None


def queued(p):
    return [p.spool.read("changes", cid) for cid in p.spool.pending("changes")]


def test_a_hung_remote_does_not_delay_the_other_repositories(tmp_path, hung_server, started):
    r = harness.make_repo(tmp_path / "repos" / "hello.git")
    r.commit({"a": "1"})
    hung = hung_server + "/hung.git"
    p = started(make(tmp_path, {"hung": (hung, "1h"), "hello": (r.bare, "100ms")}))
    hung_git = run_until(lambda: git_processes(hung), what="git asking the hung remote")
    run_until(lambda: (record(p, r.bare) or {}).get("polled"), what="the first poll of hello")
    sha = r.commit({"a": "2"})
    run_until(lambda: [c for c in queued(p) if c["revision"] == sha], what="the new commit queued")
    # ... while the hung remote's git still waits, its poll under way.
    assert set(hung_git) <= set(git_processes(hung))
    assert " polling, 0 waiting" in p.status_text()
    assert record(p, hung) is None
    p.stopping = True
    p.shutdown()                                    # SIGTERM: its git is ended with what it started
    assert git_processes(hung) == {}


def test_a_poll_out_of_time_is_killed_its_problem_recorded_and_it_is_polled_again(tmp_path, hung_server, started):
    hung = hung_server + "/hung.git"
    p = started(make(tmp_path, {"hung": (hung, "1s")}, "PollTimeoutSec=1s\n"))
    def both():
        found = git_processes(hung)
        kinds = {k for n in found.values() for k in ("ls-remote", "remote-http") if k in n}
        return kinds == {"ls-remote", "remote-http"} and found
    first = run_until(both, what="git and its http helper (a group of two) asking the hung remote")
    rec = run_until(lambda: (record(p, hung) or {}).get("problem"), what="the problem recorded")
    assert rec["text"] == "git ls-remote: no answer in 1s"
    assert "; cannot poll %s: git ls-remote: no answer in 1s" % hung in p.status_text()
    assert not set(first) & set(git_processes(hung))                  # the whole group is gone
    # At its next interval it is asked again (and again waits).
    run_until(lambda: git_processes(hung) and not set(first) & set(git_processes(hung)),
              what="the next poll of the hung remote")


def test_max_parallel_polls_bounds_the_git_children(tmp_path, hung_server, started):
    urls = ["%s/hung%d.git" % (hung_server, i) for i in range(5)]
    p = started(make(tmp_path, {"h%d" % i: (u, "1h") for i, u in enumerate(urls)},
                     "MaxParallelPolls=2\nPollTimeoutSec=1s\n"))
    seen = []

    def count():
        seen.append(sum(1 for name in git_processes(hung_server).values() if name == "git ls-remote"))
    run_until(lambda: all((record(p, u) or {}).get("problem") for u in urls), each=count,
              what="every hung remote timed out")
    assert max(seen) == 2
    assert {record(p, u)["problem"]["text"] for u in urls} == {"git ls-remote: no answer in 1s"}


def test_a_reload_changes_the_repository_set(tmp_path, started):
    a = harness.make_repo(tmp_path / "repos" / "a.git")
    b = harness.make_repo(tmp_path / "repos" / "b.git")
    for r in (a, b):
        r.commit({"x": "1"})
    p = started(make(tmp_path, {"a": (a.bare, "100ms")}))
    run_until(lambda: record(p, a.bare), what="the first poll of a")
    assert set(p.repositories()) == {a.bare} and p.status_text().startswith("watching 1 repository;")
    write(p.dirs, {"b": (b.bare, "100ms")})
    p._on_hup()                                    # what SIGHUP runs
    assert set(p.repositories()) == {b.bare}
    run_until(lambda: record(p, b.bare), what="the first poll of b, at the reload")
    a.commit({"x": "2"})
    sha = b.commit({"x": "2"})
    run_until(lambda: queued(p), what="b's new commit queued")
    assert [c["revision"] for c in queued(p)] == [sha]
    assert p.status_text().startswith("watching 1 repository;")


def _age_refs(repo, seconds=3600):
    """Make the files git keeps REPO's heads in look SECONDS old."""
    for top, dirs, files in os.walk(os.path.join(repo, "refs", "heads")):
        for n in dirs + files:
            st = os.lstat(os.path.join(top, n))
            os.utime(os.path.join(top, n), (st.st_atime - seconds, st.st_mtime - seconds))
    st = os.lstat(os.path.join(repo, "refs", "heads"))
    os.utime(os.path.join(repo, "refs", "heads"), (st.st_atime - seconds, st.st_mtime - seconds))


def test_an_unchanged_local_repository_is_polled_without_git(tmp_path, monkeypatch):
    r = harness.make_repo(tmp_path / "repos" / "hello.git")
    r.commit({"a": "1"}, branch="release/1")
    p = make(tmp_path, {"hello": (r.bare, "1h")})
    _age_refs(r.bare)
    runs = []
    real = git._run
    monkeypatch.setattr(git, "_run", lambda args, input=None, *more: runs.append(args[1]) or real(args, input, *more))
    p.poll(r.bare)
    p.poll(r.bare)
    assert runs == ["for-each-ref"]                 # the second poll read no git
    sha = r.commit({"a": "2"}, branch="release/1")  # a push: new file, new times
    p.poll(r.bare)
    assert [c["revision"] for c in queued(p)] == [sha]
    p.work()                                        # a rescan (here without a loop) forgets them
    assert p._fingerprints == {}


def test_the_fingerprint_is_not_trusted_for_a_symbolic_ref_or_a_recent_change(tmp_path):
    r = harness.make_repo(tmp_path / "repos" / "hello.git")
    r.commit({"a": "1"})
    assert git.refs_fingerprint(r.bare) is None      # just written: within RACY_SEC
    _age_refs(r.bare)
    before = git.refs_fingerprint(r.bare)
    assert before is not None and git.refs_fingerprint(r.bare) == before
    harness.git("symbolic-ref", "refs/heads/alias", "refs/tags/v1", cwd=r.bare)
    _age_refs(r.bare)
    assert git.refs_fingerprint(r.bare) is None
    assert git.refs_fingerprint(str(tmp_path / "nowhere.git")) is None


@pytest.mark.parametrize("line", ["MaxParallelPolls=0", "MaxParallelPolls=two"])
def test_max_parallel_polls_must_be_a_whole_number_of_at_least_one(tmp_path, line):
    d = inprocess.dirs(tmp_path)
    write(d, {}, line + "\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(d.config)
    assert "buildunits.conf:2: [Daemons] MaxParallelPolls=" in str(e.value)


def test_poll_timeout_zero_means_no_limit(tmp_path):
    d = inprocess.dirs(tmp_path)
    write(d, {}, "PollTimeoutSec=0\nMaxParallelPolls=9\n")
    cfg = config.load(d.config)
    assert cfg.poll_timeout == float("inf") and cfg.max_parallel_polls == 9
