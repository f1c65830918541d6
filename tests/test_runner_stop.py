"""How a runner stops, and how the next one takes over: real runners.

- a cancel committed while the runner cannot act on it stays a cancel;
- steps get KILL_GRACE_SEC between SIGTERM and SIGKILL;
- a runner killed outside systemd leaves no process of its build behind
  once the next runner has started;
- a second runner with the same name never runs (even with the lock file
  deleted), and a finished build record is never rewritten.
"""

import os
import signal

import harness
from harness import wait_for


def step_running(daemons, builder, number, index=0):
    rec = daemons.read_build(builder, number) or {}
    steps = rec.get("steps") or [{}]
    return len(steps) > index and steps[index].get("state") == "running"


def wait_step(daemons, builder, number, index=0):
    wait_for(lambda: step_running(daemons, builder, number, index),
             what="step %d of %s #%d to run" % (index, builder, number), describe=daemons._describe_builds)


def test_cancel_committed_while_the_runner_is_stopped_survives_its_sigterm(daemons):
    daemons.write_builder("long", """
        [Builder]
        PollIntervalSec=0

        [Step wait]
        Command=echo waiting; sleep 300
        """)
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.cli("force", "long", check=True)
    wait_step(daemons, "long", 1)
    daemons.signal("runner@w1", signal.SIGSTOP)
    try:
        daemons.cli("cancel", "long", "1", check=True)
        assert daemons.spool.read_cancel("long", 1) is not None
        daemons.signal("runner@w1", signal.SIGTERM)
    finally:
        daemons.signal("runner@w1", signal.SIGCONT)
    assert daemons.wait_exit("runner@w1") == 0
    b1 = daemons.read_build("long", 1)
    assert b1["state"] == "finished" and b1["result"] == "cancelled", b1
    assert "cancelled by" in b1["reason"]
    assert daemons.spool.pending("requests") == [] and daemons.spool.all_claimed() == {}
    assert daemons.spool.read_cancel("long", 1) is None
    # The next runner has nothing to run again.
    daemons.start("runner", "w1")
    daemons.stop("runner@w1")
    assert daemons.builds("long") == [1]


def _finished_records(daemons, builder):
    out = {}
    for n in daemons.builds(builder):
        path = daemons.state.build_path(builder, n)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        rec = daemons.read_build(builder, n)
        if rec and rec.get("state") == "finished":
            out[n] = data
    return out


def test_second_runner_with_the_name_never_runs_even_with_the_lock_file_deleted(daemons):
    flag = os.path.join(daemons.tmp_path, "flag")
    daemons.write_builder("long", """
        [Builder]
        PollIntervalSec=0

        [Step wait]
        Command=while [ ! -e {flag} ]; do sleep 0.05; done
        """.format(flag=flag))
    # Without a bus (the bus name would stop the second runner), as when
    # runners are started by hand or on separate buses: only the lock is left.
    daemons.start("scheduler")
    daemons.start("runner", "w1", bus=False)
    daemons.cli("force", "long", check=True)
    wait_step(daemons, "long", 1)
    lock = os.path.join(daemons.state_dir, "locks", "buildunits-runner@w1.lock")
    os.unlink(lock)
    # The harness knows one process per name: set the first aside to start
    # the second (both stay in its history, and are killed at teardown).
    first = daemons.procs.pop("runner@w1")
    second = daemons.start("runner", "w1", wait_ready=False, bus=False)
    wait_for(lambda: not second.running() or second.notify.has("READY=1"),
             what="the second runner to start or to refuse", describe=daemons._describe_builds)
    seen = _finished_records(daemons, "long")
    open(flag, "w").close()
    daemons.cli("force", "long", check=True)
    daemons.cli("force", "long", check=True)

    def drained():
        sp = daemons.spool
        if sp.pending("requests") or sp.all_claimed() or os.listdir(sp.path("changes", "new")):
            return False
        return len(_finished_records(daemons, "long")) == len(daemons.builds("long"))
    wait_for(drained, what="every request to be built", describe=daemons._describe_builds)
    builds = [daemons.read_build("long", n) for n in daemons.builds("long")]
    per_request = {}
    for b in builds:
        per_request.setdefault(b["request_id"], []).append((b["number"], b["result"]))
    assert all(len(v) == 1 for v in per_request.values()), per_request
    assert len(per_request) == 3 and all(b["result"] == "success" for b in builds), per_request
    after = _finished_records(daemons, "long")
    for n, data in seen.items():
        assert after[n] == data, "finished build #%d was rewritten" % n
    # The second runner refused to run beside the first, and said why.
    assert second.returncode == 3, "a second runner w1 ran"
    assert "another buildunits-runner@w1 is running" in daemons.log("runner@w1", -1)
    # The first one holds a lock again, so that `buildunits status` sees it.
    from buildunits import paths, status
    assert first.running()
    assert status.runner_alive(paths.Dirs(daemons.config_dir, daemons.spool_dir, daemons.state_dir,
                                          daemons.site_dir), "w1")


TRAPPING = """
    [Builder]
    PollIntervalSec=0

    [Step trap]
    Command=trap 'echo got TERM; exit 0' TERM; echo waiting; sleep 300 & wait
    {extra}
    """


def test_a_stopped_runner_gives_the_step_its_grace_period(daemons):
    daemons.write_builder("trap", TRAPPING.format(extra=""))
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.cli("force", "trap", check=True)
    wait_for(lambda: "waiting" in (daemons.step_log("trap", 1, "trap") or ""), what="the step to trap TERM")
    assert daemons.stop("runner@w1") == 0
    assert "got TERM" in daemons.step_log("trap", 1, "trap")
    assert daemons.read_build("trap", 1)["result"] == "retry"


def test_a_cancelled_step_gets_its_grace_period(daemons):
    daemons.write_builder("trap", TRAPPING.format(extra=""))
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.cli("force", "trap", check=True)
    wait_for(lambda: "waiting" in (daemons.step_log("trap", 1, "trap") or ""), what="the step to trap TERM")
    daemons.cli("cancel", "trap", "1", check=True)
    b = daemons.wait_build_finished("trap", 1)
    assert b["result"] == "cancelled"
    assert "got TERM" in daemons.step_log("trap", 1, "trap")


def test_a_timed_out_step_gets_its_grace_period(daemons):
    daemons.write_builder("trap", TRAPPING.format(extra="TimeoutSec=3s"))
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.cli("force", "trap", check=True)
    b = daemons.wait_build_finished("trap", 1)
    assert b["result"] == "failure" and b["steps"][0]["timed_out"]
    assert "got TERM" in daemons.step_log("trap", 1, "trap")


ESCAPING = """#!/bin/sh
if [ -e {flag} ]; then
    # The retry: the first build's escaped process must be gone by now.
    pid=$(cat {pidfile})
    state=$(sed 's/.*) //' /proc/$pid/stat 2>/dev/null | cut -d' ' -f1)
    echo "old process $pid: ${{state:-gone}}"
    [ -z "$state" ] || [ "$state" = Z ]
else
    setsid sh -c 'echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; while :; do echo tick; sleep 0.05; done' &
    while [ ! -e {pidfile} ]; do sleep 0.01; done
    echo escaped
    sleep 1000
fi
"""


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_runner_killed_outside_systemd_leaves_no_process_of_its_build(daemons, tmp_path):
    flag, pidfile, script = tmp_path / "flag", tmp_path / "escaped.pid", tmp_path / "step.sh"
    script.write_text(ESCAPING.format(flag=flag, pidfile=pidfile))
    daemons.write_builder("escape", """
        [Builder]
        PollIntervalSec=0

        [Step run]
        Command=sh {script}
        """.format(script=script))
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.cli("force", "escape", check=True)
    wait_for(lambda: "escaped" in (daemons.step_log("escape", 1, "run") or ""), what="the step's process to escape")
    escaped = int(pidfile.read_text())
    daemons.kill("runner@w1", group=False)      # SIGKILL, and no cgroup to take the steps with it
    log1 = daemons.state.log_path("escape", 1, 1, "run")
    wait_for(lambda: "tick" in daemons.step_log("escape", 1, "run"),
             what="the escaped process to write into the first build's log")
    assert _alive(escaped)
    flag.write_text("")
    daemons.start("runner", "w1")
    # Once the new runner is ready, it has recovered build 1: nothing of it runs.
    assert not _alive(escaped), "process %d of build 1 survived the new runner's start" % escaped
    size = os.path.getsize(log1)
    b1 = daemons.read_build("escape", 1)
    assert b1["result"] == "retry"
    b2 = daemons.wait_build_finished("escape", 2)
    assert b2["result"] == "success", daemons.step_log("escape", 2, "run")
    assert os.path.getsize(log1) == size, "the finished build's log still grows"
    assert "outlived runner w1" in daemons.log("runner@w1", -1)
