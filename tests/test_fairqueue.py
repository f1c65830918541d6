"""The fair queue: Priority=, a forced build's own priority,
CollapseRequests=, MaxBuilds= and Locks= (runner.py, queueindex.py,
locks.py), with runners in process on a real spool and state.

A build that holds its locks is a runner in the middle of one: its
_start() keeps the build (and so its locks) until the test ends it.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
import types

import pytest

from buildunits import cli, config, locks, runner, spool as spoolmod, status
from buildunits.bus import NoBus
from support.inprocess import RecordingNotifier, dirs as make_dirs, write_builders

BUILDERS = {
    "low": "[Builder]\nPriority=-5\n[Step s]\nCommand=true\n",
    "mid": "[Builder]\n[Step s]\nCommand=true\n",
    "high": "[Builder]\nPriority=10\n[Step s]\nCommand=true\n",
    "deploy-a": "[Builder]\nLocks=prod\n[Step s]\nCommand=true\n",
    "deploy-b": "[Builder]\nLocks=prod db:2\n[Step s]\nCommand=true\n",
    "tests": "[Builder]\nLocks=db:2\nMaxBuilds=1\n[Step s]\nCommand=true\n",
    "squash": "[Builder]\nCollapseRequests=yes\n[Step s]\nCommand=true\n",
}


class Holding(runner.Runner):
    """A runner whose builds start and stay (holding their locks) until
    end() says they finished."""

    def _start(self, rid, req, b, extra=()):
        self.started.append((b.name, rid, req, list(extra)))
        self.build = {"builder": b.name, "number": len(self.started)}
        self._rid, self._extra = rid, list(extra)
        if self._held is not None:
            self._held.note(len(self.started))      # as Runner._start does once it has the number

    def end(self):
        for x in self._extra:
            self.spool.finish(self.worker, x)
        self.spool.finish(self.worker, self._rid)
        self._release_locks()
        self.build = None


@pytest.fixture
def make(tmp_path):
    d = make_dirs(tmp_path)
    write_builders(d, BUILDERS)

    def make(worker="w1"):
        r = Holding(d, config.load(d.config), NoBus(), RecordingNotifier(), types.SimpleNamespace(worker=worker))
        r.spool.ensure()
        r.state.ensure()
        r.started = []
        r.events = True
        r.retry_later = lambda: None
        return r
    make.dirs = d
    return make


def request(sp, builder, priority=None, **fields):
    f = {"builder": builder, "branch": "main", "revision": "", "repository": "", "reason": "a test",
         "changes": [], "properties": {}}
    if priority is not None:
        f["priority"] = priority
    f.update(fields)
    return sp.deliver("requests", "request", f)


def run_one(r):
    r.work()
    assert r.started, "nothing started"
    name = r.started[-1][0]
    r.end()
    return name


def test_the_highest_priority_first_then_the_oldest(make):
    r = make()
    for b in ("low", "mid", "high", "mid", "low"):
        request(r.spool, b)
    order = [run_one(r) for _ in range(5)]
    assert order == ["high", "mid", "mid", "low", "low"]


def test_a_forced_builds_own_priority_comes_before_its_builders(make):
    r = make()
    request(r.spool, "high")
    urgent = request(r.spool, "low", priority=50)
    later = request(r.spool, "mid", priority=-20)
    assert spoolmod.priority_of(urgent) == 50 and spoolmod.priority_of(later) == -20
    request(r.spool, "low")
    assert [run_one(r) for _ in range(4)] == ["low", "high", "low", "mid"]
    assert r.started[0][1] == urgent and r.started[-1][1] == later


def test_an_exclusive_lock_is_held_across_runners_until_the_build_ends(make):
    a, b = make("w1"), make("w2")
    request(a.spool, "deploy-a")
    request(a.spool, "deploy-b")
    request(a.spool, "mid")
    a.work()
    assert [s[0] for s in a.started] == ["deploy-a"]
    held = status.gather_status(make.dirs, a.cfg)["locks"]
    assert held == [{"lock": "db", "slots": 2, "held": []},
                    {"lock": "prod", "slots": 1, "held": [{"worker": "w1", "builder": "deploy-a", "number": 1}]}]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.main(["--config-dir", make.dirs.config, "--spool-dir", make.dirs.spool, "--state-dir", make.dirs.state,
                  "status"])
    assert "prod                 1 of 1 held: deploy-a #1 on w1" in out.getvalue()
    b.work()            # deploy-b needs prod: mid is built instead
    assert [s[0] for s in b.started] == ["mid"]
    b.end()
    b.work()
    assert [s[0] for s in b.started] == ["mid"], "deploy-b started while deploy-a held prod"
    a.end()
    b.work()
    assert [s[0] for s in b.started] == ["mid", "deploy-b"]


def test_counting_locks_and_max_builds(make):
    r1, r2, r3 = make("w1"), make("w2"), make("w3")
    for _ in range(3):
        request(r1.spool, "tests")
    request(r1.spool, "deploy-b")
    r1.work()
    r2.work()
    # tests has MaxBuilds=1: the second runner takes deploy-b (db has 2 slots).
    assert [s[0] for s in r1.started] == ["tests"] and [s[0] for s in r2.started] == ["deploy-b"]
    r3.work()
    assert r3.started == [], "a third build of db:2, or a second of MaxBuilds=1"
    r1.end()
    r3.work()
    assert [s[0] for s in r3.started] == ["tests"]


def test_a_dead_holders_locks_are_free_at_once(make, tmp_path):
    # Another process holds prod, and dies with SIGKILL: nothing to recover.
    code = ("import sys, time; sys.path.insert(0, %r)\n"
            "from buildunits import locks\n"
            "h, _ = locks.acquire(%r, [('named', 'prod', 1)], {'worker': 'gone', 'builder': 'x'})\n"
            "print('held', flush=True); time.sleep(1000)\n" % (os.path.dirname(os.path.dirname(locks.__file__)),
                                                              make.dirs.state))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "held\n"
        r = make()
        request(r.spool, "deploy-a")
        r.work()
        assert r.started == []
        p.kill()
        p.wait()
        r.work()
        assert [s[0] for s in r.started] == ["deploy-a"]
    finally:
        p.kill()
        p.wait()


def test_waiting_requests_of_a_branch_collapse_into_one_build_of_the_newest(make):
    r = make()
    c = [{"id": "c%d" % i, "revision": "%040x" % i} for i in range(4)]
    first = request(r.spool, "squash", revision=c[0]["revision"], changes=[c[0]])
    request(r.spool, "squash", revision=c[1]["revision"], changes=[c[1]])
    other = request(r.spool, "squash", branch="release", revision=c[2]["revision"], changes=[c[2]])
    newest = request(r.spool, "squash", revision=c[3]["revision"], changes=[c[3]])
    r.work()
    [(name, rid, req, extra)] = r.started
    assert rid == first and len(extra) == 2 and newest in extra
    assert req["revision"] == c[3]["revision"] and [x["id"] for x in req["changes"]] == ["c0", "c1", "c3"]
    assert req["collapsed"] == [first] + extra and "3 requests collapsed" in req["reason"]
    assert r.spool.pending("requests") == [other]
    assert sorted(r.spool.claimed("w1")) == sorted([first] + extra)
    r.end()
    assert r.spool.claimed("w1") == []


def _crashed_with_collapsed(make, finished):
    """A runner that claimed a collapsed build and died: its worker record
    and claims as it left them; FINISHED: its build record was final."""
    r = make()
    ids = [request(r.spool, "squash", revision="%040x" % i) for i in range(3)]
    for rid in ids:
        r.spool.claim(rid, "w1")
    number = r.state.allocate_number("squash")
    r.state.write_worker("w1", {"request": ids[0], "builder": "squash", "number": number, "pid": 1,
                                "token": "ab" * 16, "collapsed": ids[1:]})
    rec = {"builder": "squash", "number": number, "request_id": ids[0], "request": {"id": ids[0]},
           "worker": "w1", "state": "finished" if finished else "running", "result": "success" if finished else None,
           "reason": "", "started": 1.0, "finished": 2.0 if finished else None, "steps": []}
    r.state.write_build(rec)
    return ids


@pytest.mark.parametrize("finished", [True, False])
def test_a_crash_settles_collapsed_requests_with_their_build(make, finished):
    ids = _crashed_with_collapsed(make, finished)
    r = make()
    r.startup()
    assert r.spool.claimed("w1") == []
    if finished:
        assert r.spool.pending("requests") == []
    else:
        assert sorted(r.spool.pending("requests")) == sorted(ids)


@pytest.mark.parametrize("text, says", [
    ("Locks=prod:0\n", "the count after ':' must be a whole number from 1 to 9999"),
    ("Locks=../x\n", "lock name '../x' must be"),
    ("Priority=high\n", "not a whole number from -1000 to 1000"),
    ("Priority=5000\n", "not a whole number from -1000 to 1000"),
    ("MaxBuilds=0\n", "must be at least 1"),
])
def test_bad_settings_name_the_file_and_line(tmp_path, text, says):
    d = make_dirs(tmp_path)
    write_builders(d, {"b": "[Builder]\n" + text + "[Step s]\nCommand=true\n"})
    with pytest.raises(config.ConfigError) as e:
        config.load(d.config)
    assert "b.builder:2" in str(e.value) and says in str(e.value)


def test_a_lock_has_one_count_in_every_builder(tmp_path):
    d = make_dirs(tmp_path)
    write_builders(d, {"a": "[Builder]\nLocks=db:2\n[Step s]\nCommand=true\n",
                       "b": "[Builder]\nLocks=db:3\n[Step s]\nCommand=true\n"})
    with pytest.raises(config.ConfigError) as e:
        config.load(d.config)
    assert "lock db has 3 slots here and 2 in builder a" in str(e.value)


def test_the_holder_is_what_the_file_says_only_while_the_flock_is_held(make):
    r = make()
    held, _ = locks.acquire(r.state.root, [("named", "prod", 1)], {"worker": "w1", "builder": "deploy-a"})
    held.note(7)
    assert locks.holders(r.state.root) == {("named", "prod"): [
        dict(json.loads(open(held.slots[0][2]).read()))]}
    assert locks.holders(r.state.root)[("named", "prod")][0]["number"] == 7
    held.release()
    assert locks.holders(r.state.root) == {}


@pytest.mark.parametrize("via", ["spool", "bus"])
def test_force_priority_reaches_the_request_and_goes_first(make, monkeypatch, via):
    from buildunits import bus as busmod, scheduler
    from support.inprocess import RecordingNotifier as N
    d = make.dirs
    s = scheduler.Scheduler(d, config.load(d.config), NoBus(), N())
    s.spool.ensure()
    s.state.ensure()
    s.wake = lambda *a: None

    def call(role, method, *args, **kw):
        if via == "spool":
            raise busmod.Unreachable("no bus")
        return s.methods()[method](*args, "root")
    monkeypatch.setattr(busmod, "call", call)
    base = ["--config-dir", d.config, "--spool-dir", d.spool, "--state-dir", d.state]
    assert cli.main(base + ["force", "low"]) == 0
    assert cli.main(base + ["force", "low", "--priority", "900", "--reason", "urgent"]) == 0
    assert cli.main(base + ["force", "low", "--priority", "5000"]) == 2
    s.work()
    r = make()
    run_one(r)
    assert r.started[0][2]["reason"].endswith("urgent") and r.started[0][2]["priority"] == 900
