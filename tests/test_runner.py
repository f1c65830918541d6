"""runner.py in process: a Runner built on real temporary directories, with
NoBus and a notifier that records its STATUS= lines, its steps run by the
real executor and their ends seen by iterating GLib's default main context
(as the daemon's main loop would), with a deadline.

The executor stops every descendant of the runner's process when it ends a
step's tree, so these tests refuse to run beside other children of the
test process (as test_executor.py does).
"""

import os
import signal
import sys
import time
import types

import pytest
from gi.repository import GLib

import harness
from support.inprocess import RecordingNotifier, capture_log
from buildunits import config, paths, proctree, runner, step as stepmod
from buildunits.bus import NoBus

HELLO = """\
[Builder]
PollIntervalSec=0

[Step greet]
Command=echo hello from $BUILDUNITS_STEP on $BUILDUNITS_WORKER

[Step both]
Command=echo out; echo err >&2
"""

HALTS = """\
[Builder]
PollIntervalSec=0

[Step compile]
Command=echo compiling; exit 3
HaltOnFailure=yes

[Step test]
Command=echo should not run

[Step cleanup]
Command=echo cleaning up
AlwaysRun=yes
"""

LENIENT = """\
[Builder]
PollIntervalSec=0

[Step lint]
Command=exit 1
HaltOnFailure=no

[Step test]
Command=echo tested
"""

LONG = """\
[Builder]
PollIntervalSec=0

[Step wait]
Command=echo started; exec sleep 300

[Step after]
Command=echo after
AlwaysRun=yes
"""

ELSEWHERE = """\
[Builder]
PollIntervalSec=0
Workers=w2

[Step s]
Command=echo on $BUILDUNITS_WORKER
"""

# The builder's LimitNOFILE= for every step; a runaway CPU loop and an
# allocation past LimitAS= stopped; MemoryMax= and PrivateNetwork= need a
# unit of their own, which the local executor says.
LIMITS = """\
[Builder]
PollIntervalSec=0
LimitNOFILE=64
MemoryMax=1G

[Step files]
Command=ulimit -n

[Step cpu]
Command=while :; do :; done
LimitCPU=1:5
TimeoutSec=1min

[Step memory]
Command=%(python)s -c "b = bytearray(1 << 30); print('allocated')"
LimitAS=256M
PrivateNetwork=yes

[Step after]
Command=ulimit -n; ulimit -v
""" % {"python": sys.executable}

# A step that burns half a second of CPU and holds 64 MiB.
BURNS = """\
[Builder]
PollIntervalSec=0

[Step burn]
Command=%(python)s -c "import time; b = b'x' * (64 << 20); [0 for _ in iter(lambda: time.process_time() < 0.5, False)]"
""" % {"python": sys.executable}


@pytest.fixture
def root(tmp_path):
    proctree.reap()
    if proctree.descendants(os.getpid()):
        pytest.skip("the test process has other children, which stopping a step's tree would kill")
    made = []
    d = paths.Dirs(config=str(tmp_path / "config"), spool=str(tmp_path / "spool"), state=str(tmp_path / "state"),
                   site=str(tmp_path / "site"))
    os.makedirs(os.path.join(d.config, "builders"))
    for name, text in (("hello", HELLO), ("halts", HALTS), ("lenient", LENIENT), ("elsewhere", ELSEWHERE), ("long", LONG),
                       ("limits", LIMITS), ("burns", BURNS)):
        with open(os.path.join(d.config, "builders", name + ".builder"), "w") as f:
            f.write(text)

    def make(worker="w1"):
        r = runner.Runner(d, config.load(d.config), NoBus(), RecordingNotifier(), types.SimpleNamespace(worker=worker))
        r.spool.ensure()
        r.state.ensure()
        made.append(r)
        return r
    yield make
    for r in made:
        if r.build is not None:
            r._run.drop()
        r.stopping = True          # its pending wakes and retries do nothing
    proctree.kill_tree(None, signal.SIGKILL)
    proctree.reap()


def request(r, builder, **fields):
    f = {"builder": builder, "branch": "main", "revision": "", "repository": "", "reason": "a test",
         "changes": [], "properties": {}}
    f.update(fields)
    return r.spool.deliver("requests", "request", f)


def spin(until, timeout=20.0):
    """Iterate the default main context until UNTIL() is true, or fail at the deadline."""
    ctx = GLib.MainContext.default()
    deadline = time.monotonic() + harness.scaled(timeout)
    while not until() and time.monotonic() < deadline:
        ctx.iteration(False) or time.sleep(0.005)
    assert until(), "the deadline passed first"


def finished(r, builder, number):
    rec = r.state.read_build(builder, number)
    return rec if rec and rec.get("state") == "finished" else None


def built(r, builder, number):
    """Request a build of BUILDER, let R run it as NUMBER: its final record."""
    request(r, builder)
    r.work()
    spin(lambda: finished(r, builder, number))
    return finished(r, builder, number)


def log_text(r, rec, step):
    [s] = [s for s in rec["steps"] if s["name"] == step]
    with open(r.state.build_file(rec["builder"], rec["number"], s["log"])) as f:
        return f.read()


def by_name(rec):
    return {s["name"]: s for s in rec["steps"]}


# ------------------------------------------------------------ a build
def test_a_claimed_request_runs_its_steps_and_the_record_has_results_logs_and_statuses(root):
    r = root()
    r.startup()
    rid = request(r, "hello")
    r.work()
    # Claimed, numbered and recorded before the first step ends.
    assert r.spool.claimed("w1") == [rid] and r.spool.pending("requests") == []
    assert r.state.read_worker("w1")["request"] == rid
    running = r.state.read_build("hello", 1)
    assert running["state"] == "running" and running["request_id"] == rid and running["worker"] == "w1"
    spin(lambda: finished(r, "hello", 1))
    rec = finished(r, "hello", 1)
    assert rec["result"] == "success"
    assert [(s["name"], s["state"], s["result"], s["exit_status"]) for s in rec["steps"]] == \
        [("greet", "finished", "success", 0), ("both", "finished", "success", 0)]
    assert log_text(r, rec, "greet") == "hello from greet on w1\n"
    assert sorted(log_text(r, rec, "both").splitlines()) == ["err", "out"]
    assert rec["started"] <= rec["steps"][0]["started"] <= rec["steps"][1]["finished"] <= rec["finished"]
    # Nothing left held: no claim, no pointer, no progress file.
    assert r.spool.claimed("w1") == [] and r.state.read_worker("w1") is None
    assert not os.path.exists(r.state.progress_path("hello", 1))
    assert "building hello #1: greet" in r.notifier.statuses()
    assert "building hello #1: both" in r.notifier.statuses()
    assert r.notifier.statuses()[-1] == "idle; 1 build run"
    assert r.spool.take_hints() == [("hello", 1)]


def test_the_next_request_is_taken_when_a_build_ends_under_a_new_number(root):
    r = root()
    r.startup()
    request(r, "hello")
    request(r, "hello", reason="the second")
    r.work()
    spin(lambda: finished(r, "hello", 2))
    assert finished(r, "hello", 1)["result"] == finished(r, "hello", 2)["result"] == "success"
    assert finished(r, "hello", 2)["request"]["reason"] == "the second"
    assert r.spool.pending("requests") == [] and r.notifier.statuses()[-1] == "idle; 2 builds run"


def test_a_failing_step_halts_the_build_but_always_run_steps_run(root):
    r = root()
    r.startup()
    rec = built(r, "halts", 1)
    assert rec["result"] == "failure"
    steps = by_name(rec)
    assert (steps["compile"]["result"], steps["compile"]["exit_status"], steps["compile"]["summary"]) == \
        ("failure", 3, "exit status 3")
    assert log_text(r, rec, "compile") == "compiling\n"
    assert steps["test"]["result"] == "skipped" and steps["test"]["log"] is None
    assert steps["test"]["exit_status"] is None and steps["test"]["started"] is None
    assert (steps["cleanup"]["result"], steps["cleanup"]["exit_status"]) == ("success", 0)
    assert log_text(r, rec, "cleanup") == "cleaning up\n"


def test_a_failing_step_without_halt_on_failure_lets_the_rest_run(root):
    r = root()
    r.startup()
    rec = built(r, "lenient", 1)
    steps = by_name(rec)
    assert (steps["lint"]["result"], steps["lint"]["exit_status"]) == ("failure", 1)
    assert (steps["test"]["result"], steps["test"]["exit_status"]) == ("success", 0)
    assert log_text(r, rec, "test") == "tested\n"
    assert rec["result"] == "failure"


# ----------------------------------------------------------- requests
def test_a_request_with_a_bad_revision_goes_to_corrupt_and_is_not_built(root):
    r = root()
    r.startup()
    rid = request(r, "hello", revision="--upload-pack=touch x")
    r.work()
    assert r.build is None
    assert r.spool.pending("requests") == [] and r.spool.claimed("w1") == []
    [(name, reason)] = r.spool.corrupted()
    assert rid in name and "'--upload-pack=touch x'" in reason and "commit id" in reason
    assert r.state.build_numbers("hello") == []
    assert runner.bad_request({"revision": "a" * 40}) is None and runner.bad_request({"revision": ""}) is None
    assert runner.bad_request({"revision": "HEAD"})


def test_a_request_for_a_builder_not_on_this_worker_is_left_queued(root):
    w1 = root("w1")
    w1.startup()
    rid = request(w1, "elsewhere")
    w1.work()
    assert w1.build is None and w1.spool.pending("requests") == [rid] and w1.spool.claimed("w1") == []
    assert w1.state.build_numbers("elsewhere") == []
    # The worker it names takes it.
    w2 = root("w2")
    w2.startup()
    w2.work()
    spin(lambda: finished(w2, "elsewhere", 1))
    rec = finished(w2, "elsewhere", 1)
    assert rec["worker"] == "w2" and log_text(w2, rec, "s") == "on w2\n"


def test_a_request_for_an_unknown_builder_is_left_queued(root):
    r = root()
    r.startup()
    rid = request(r, "nosuch")
    r.work()
    assert r.build is None and r.spool.pending("requests") == [rid] and r.spool.corrupted() == []


# ----------------------------------------------------------- recovery
def _dead_runners_build(r, builder, final):
    """What a runner of worker w1 killed mid-build (FINAL: just after its
    commit point) leaves: a claim, a pointer and a build record."""
    rid = request(r, builder)
    req = r.spool.claim(rid, "w1")
    n = r.state.allocate_number(builder)
    r.state.write_worker("w1", {"request": rid, "builder": builder, "number": n, "pid": 1})
    rec = r._new_record(req, builder, n, stepmod.plan(r.cfg.builders[builder], req))
    if final:
        rec.update(state="finished", result="success", finished=time.time())
        for s in rec["steps"]:
            s.update(state="finished", result="success", exit_status=0)
    else:
        rec["steps"][0].update(state="running", started=time.time())
    r.state.write_build(rec, durable=final)
    return rid, n


def test_new_record_has_every_step_pending_and_the_requests_fields(root):
    r = root()
    req = {"id": "R1", "builder": "hello", "branch": "main", "revision": "b" * 40, "repository": "/srv/x.git",
           "reason": "why"}
    rec = r._new_record(req, "hello", 4, stepmod.plan(r.cfg.builders["hello"], req))
    assert (rec["builder"], rec["number"], rec["worker"], rec["state"], rec["result"]) == \
        ("hello", 4, "w1", "running", None)
    assert (rec["request_id"], rec["branch"], rec["revision"]) == ("R1", "main", "b" * 40)
    assert [(s["name"], s["state"]) for s in rec["steps"]] == [("greet", "pending"), ("both", "pending")]


def test_startup_records_an_interrupted_build_as_retry_and_hands_its_request_back(root):
    dead = root()
    rid, n = _dead_runners_build(dead, "hello", final=False)
    r = root()
    r.startup()
    rec = finished(r, "hello", n)
    assert rec["result"] == "retry" and "interrupted" in rec["reason"] and "w1" in rec["reason"]
    assert rec["steps"][0]["result"] == "retry"
    assert r.spool.pending("requests") == [rid] and r.spool.claimed("w1") == []
    assert r.state.read_worker("w1") is None
    # Built again, under a new number; the interrupted one stays as it was.
    r.work()
    spin(lambda: finished(r, "hello", n + 1))
    assert finished(r, "hello", n + 1)["result"] == "success"
    assert finished(r, "hello", n + 1)["request_id"] == rid
    assert finished(r, "hello", n)["result"] == "retry"


def test_startup_just_drops_the_claim_of_a_finished_build(root):
    dead = root()
    rid, n = _dead_runners_build(dead, "hello", final=True)
    before = dead.state.read_build("hello", n)
    r = root()
    r.startup()
    assert r.spool.claimed("w1") == [] and r.spool.pending("requests") == []
    assert r.state.read_build("hello", n) == before
    assert r.state.read_worker("w1") is None


def test_startup_hands_back_a_claim_the_pointer_does_not_name(root):
    dead = root()
    rid = request(dead, "hello")
    dead.spool.claim(rid, "w1")              # claimed, then killed before the pointer
    r = root()
    r.startup()
    assert r.spool.pending("requests") == [rid] and r.spool.claimed("w1") == []
    assert r.state.build_numbers("hello") == []


# ------------------------------------------------- cancel and SIGTERM
def _running_wait(r):
    rec = r.state.read_build("long", 1)
    return rec is not None and by_name(rec)["wait"]["state"] == "running" and \
        os.path.exists(r.state.build_file("long", 1, by_name(rec)["wait"]["log"])) and \
        log_text(r, rec, "wait") == "started\n"


def test_a_cancelled_build_stops_its_step_skips_the_rest_and_is_not_requeued(root):
    r = root()
    r.startup()
    request(r, "long")
    r.work()
    spin(lambda: _running_wait(r))
    r.spool.request_cancel("long", 1, "alice")
    r.wake()                                   # what the cancel's inotify or signal does
    spin(lambda: finished(r, "long", 1))
    rec = finished(r, "long", 1)
    assert (rec["result"], rec["reason"]) == ("cancelled", "cancelled by alice")
    assert [s["result"] for s in rec["steps"]] == ["cancelled", "skipped"]
    assert "cancelled by alice" in log_text(r, rec, "wait")
    assert r.spool.pending("requests") == [] and r.spool.claimed("w1") == []
    assert r.spool.cancel_requests() == {}


def test_sigterm_records_the_running_build_as_retry_and_hands_its_request_back(root):
    r = root()
    r.startup()
    rid = request(r, "long")
    r.work()
    spin(lambda: _running_wait(r))
    r._on_term()                               # what SIGTERM runs on the main loop
    rec = finished(r, "long", 1)
    assert rec["result"] == "retry" and "was stopped" in rec["reason"]
    assert by_name(rec)["wait"]["result"] == "retry" and by_name(rec)["after"]["state"] == "finished"
    assert r.spool.pending("requests") == [rid] and r.spool.claimed("w1") == []
    assert r.state.read_worker("w1") is None
    proctree.reap()
    assert not proctree.descendants(os.getpid())     # the step's sleep is gone



# ------------------------------------------------- limits and accounting
def test_limits_apply_to_plain_process_steps_and_the_rest_is_said_once(root, monkeypatch):
    lines = capture_log(monkeypatch)
    r = root()
    r.startup()
    rec = built(r, "limits", 1)
    steps = by_name(rec)
    assert steps["files"]["result"] == "success" and log_text(r, rec, "files") == "64\n"
    # The runaway loop gets SIGXCPU after a second of CPU time, long before its time-out.
    assert (steps["cpu"]["result"], steps["cpu"]["exit_status"], steps["cpu"]["timed_out"]) == \
        ("failure", -signal.SIGXCPU, False)
    # (rusage counts CPU time by ticks, the limit by the scheduler's clock: under
    # load the two differ by a good part of a second.)
    assert steps["cpu"]["usage"]["cpu_sec"] >= 0.5
    # Past LimitAS=, the allocation fails.
    assert steps["memory"]["result"] == "failure" and steps["memory"]["exit_status"] == 1
    assert "MemoryError" in log_text(r, rec, "memory")
    # A step's own limit is its own: the next one has the builder's only.
    assert log_text(r, rec, "after") == "64\nunlimited\n"
    built(r, "limits", 2)
    said = [line for line in lines() if "not applied" in line]
    assert said == ["builder limits: MemoryMax=, PrivateNetwork= not applied: build steps run as child processes "
                    "of the runner (the local executor), which applies only Limit*= settings"]


def test_a_steps_record_has_what_it_used(root):
    r = root()
    r.startup()
    [burn] = built(r, "burns", 1)["steps"]
    usage = burn["usage"]
    assert burn["result"] == "success"
    assert 0.5 <= usage["cpu_sec"] < 30
    assert 64 << 20 <= usage["memory_peak_bytes"] < 1 << 30
    assert isinstance(usage["io_read_bytes"], int) and isinstance(usage["io_write_bytes"], int)
    assert "tasks_max" not in usage       # not measured here: absent, not zero
