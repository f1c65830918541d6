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
