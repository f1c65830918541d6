"""executor.py: LocalExecutor runs real steps, reports how they ended,
stops and kills them with their whole tree.

In process: a GLib main loop stands in for the runner's.  The executor
signals every descendant of this process when it stops a tree (the
runner runs one step at a time), so these tests refuse to run beside
other children of the test process.
"""

import os
import secrets
import signal
import sys
import time

import pytest
from gi.repository import GLib

from buildunits import executor, proctree
from support.procs import alive


@pytest.fixture
def ex():
    proctree.reap()
    if proctree.descendants(os.getpid()):
        pytest.skip("the test process has other children, which stopping a step's tree would kill")
    e = executor.LocalExecutor()
    assert e.prepare() is None          # a subreaper, as the runner is
    yield e
    proctree.kill_tree(None, signal.SIGKILL)
    proctree.reap()
    while _log_fds:
        os.close(_log_fds.pop())


_log_fds = []


class Run:
    """A step started through EX, its log at LOG (a path)."""

    def __init__(self, ex, tmp_path, script, env=None, cwd=None, token=None, unit=()):
        self.log = tmp_path / "step.log"
        self.fd = os.open(str(self.log), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        _log_fds.append(self.fd)
        self.ended = []
        self.token = token or secrets.token_hex(8)
        spec = executor.StepSpec("hello", 1, "test", self.token, unit=unit)
        self.handle = ex.start(spec, ["/bin/sh", "-c", script], dict(os.environ, **(env or {})),
                               cwd or str(tmp_path), self.fd, self.ended.append)

    def text(self):
        return self.log.read_text()

    def wait(self, predicate=None, timeout=15.0):
        """Run the main loop until PREDICATE (default: the step ended)."""
        predicate = predicate or (lambda: self.ended)
        spin(timeout, predicate)
        assert predicate(), "timed out; log: %r" % self.text()


def spin(seconds, until=lambda: False):
    """Run the main loop for SECONDS, or until UNTIL() is true."""
    ctx = GLib.MainContext.default()
    deadline = time.monotonic() + seconds
    while not until() and time.monotonic() < deadline:
        ctx.iteration(False) or time.sleep(0.01)


def gone(*pids, timeout=10.0):
    """True once none of PIDS is alive (reaping what dies meanwhile)."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        proctree.reap()
        time.sleep(0.02)
    return not any(alive(p) for p in pids)


def test_output_goes_to_the_log_and_the_exit_status_is_reported(ex, tmp_path):
    r = Run(ex, tmp_path, 'echo out; echo err >&2; echo "$BUILDUNITS_BUILD_TOKEN $STEP_VAR"; pwd; exit 0',
            env={"STEP_VAR": "given"})
    r.wait()
    assert r.ended == [0]
    assert r.text().splitlines() == ["out", "err", "%s given" % r.token, str(tmp_path)]
    assert r.handle.pid > 0 and str(r.handle.pid) in r.handle.identity


@pytest.mark.parametrize("script, code", [
    ("exit 3", 3),
    ("exit 255", 255),
    ("kill -9 $$", -9),
    ("kill -TERM $$", -15),
    ("read x; exit $?", 1),          # stdin is empty (/dev/null)
])
def test_exit_codes(ex, tmp_path, script, code):
    r = Run(ex, tmp_path, script)
    r.wait()
    assert r.ended == [code]


def test_cannot_start_is_an_oserror(ex, tmp_path):
    with pytest.raises(OSError):
        Run(ex, tmp_path, "true", cwd=str(tmp_path / "missing"))


def test_stop_runs_the_term_trap_within_the_grace(ex, tmp_path):
    r = Run(ex, tmp_path, "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done")
    r.wait(lambda: "ready" in r.text())
    r.handle.stop(grace=10)
    r.wait()
    assert r.ended == [7]
    assert "got TERM" in r.text() and "SIGKILL" not in r.text()   # no kill after the grace


def test_stop_kills_what_ignores_term_after_the_grace(ex, tmp_path):
    r = Run(ex, tmp_path, "trap '' TERM; echo ready; while :; do sleep 0.05; done")
    r.wait(lambda: "ready" in r.text())
    start = time.monotonic()
    r.handle.stop(grace=1)
    r.handle.stop(grace=1)            # a second stop arms no second SIGKILL
    r.wait()
    assert r.ended == [-signal.SIGKILL]
    assert time.monotonic() - start >= 0.9
    assert r.text().count("buildunits: still running 1s after SIGTERM; sending SIGKILL") == 1


def test_what_a_step_leaves_behind_dies_when_it_ends(ex, tmp_path):
    """A setsid'd child escapes the step's session; the subreaper keeps it
    a descendant, and the step's end takes it along."""
    pidfile = tmp_path / "escaped"
    r = Run(ex, tmp_path, "setsid sh -c 'echo $$ > %s; exec sleep 1000' & "
                          "while [ ! -s %s ]; do sleep 0.01; done; echo started" % (pidfile, pidfile))
    r.wait()
    assert r.ended == [0]
    assert gone(int(pidfile.read_text()))


def test_stop_reaches_a_setsid_child_of_a_running_step(ex, tmp_path):
    pidfile = tmp_path / "escaped"
    r = Run(ex, tmp_path, "setsid sh -c 'trap \"\" TERM; echo $$ > %s; while :; do sleep 0.05; done' & "
                          "wait" % pidfile)
    r.wait(lambda: pidfile.exists() and pidfile.read_text().strip())
    escaped = int(pidfile.read_text())
    r.handle.stop(grace=0.5)
    r.wait()
    assert r.ended == [-signal.SIGTERM]        # the step itself obeyed SIGTERM
    assert gone(escaped)                      # its escaped child, which ignored it, is killed


def test_kill_ends_the_tree_and_reports_nothing(ex, tmp_path):
    pidfile = tmp_path / "escaped"
    r = Run(ex, tmp_path, "setsid sh -c 'echo $$ > %s; exec sleep 1000' & sleep 1000" % pidfile)
    r.wait(lambda: pidfile.exists() and pidfile.read_text().strip())
    escaped, pid = int(pidfile.read_text()), r.handle.pid
    r.handle.kill()
    assert gone(escaped, pid)
    spin(0.3)                                 # the main loop runs: no report comes
    assert r.ended == []


def test_halt_waits_without_the_main_loop(ex, tmp_path):
    r = Run(ex, tmp_path, "trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.05; done")
    r.wait(lambda: "ready" in r.text())
    pid = r.handle.pid
    r.handle.halt(grace=5)
    assert not alive(pid)
    assert "bye" in r.text()
    assert r.ended == []


def test_leftovers_of_a_build_are_found_by_its_token(ex, tmp_path):
    """As the next runner finds what a dead one left: the step's processes
    carry the build's token, in or out of its session."""
    r = Run(ex, tmp_path, "setsid sh -c 'trap \"\" TERM; while :; do sleep 0.05; done' & "
                          "exec sleep 1000")
    r.wait(lambda: len(ex.leftovers(r.token)) >= 2)
    assert r.handle.pid in ex.leftovers(r.token)
    assert ex.leftovers(secrets.token_hex(8)) == []
    left = ex.end_leftovers(r.token, grace=0.5)
    assert not any(alive(p) for p in left)
    r.wait()
    assert r.ended == [-signal.SIGTERM]


# ------------------------------------------------- limits and accounting
def test_usage_is_measured_once_the_step_ends_and_absent_keys_are_not_zero(ex, tmp_path):
    # The memory is held by a grandchild the step waits for: wait4's rusage counts it.
    r = Run(ex, tmp_path, "%s -c \"b = b'x' * (32 << 20)\"; echo done" % sys.executable)
    assert r.handle.usage == {}
    r.wait()
    assert r.ended == [0] and r.text() == "done\n"
    u = r.handle.usage
    assert set(u) == {"cpu_sec", "memory_peak_bytes", "io_read_bytes", "io_write_bytes"}
    assert u["cpu_sec"] > 0 and u["memory_peak_bytes"] >= 32 << 20


def test_rlimits_apply_and_the_rest_is_named_as_unhonoured(ex, tmp_path):
    unit = (("LimitNOFILE", "50:60"), ("MemoryMax", "1073741824"), ("LimitCORE", "0:0"))
    r = Run(ex, tmp_path, "ulimit -Sn; ulimit -Hn; ulimit -c", unit=unit)
    r.wait()
    assert r.ended == [0] and r.text() == "50\n60\n0\n"
    assert executor.unhonoured(ex, unit) == ["MemoryMax"]
    assert executor.unhonoured(object(), unit) == []     # an executor that applies all


def test_a_hard_limit_above_the_runners_own_is_refused_without_privilege(ex, tmp_path, monkeypatch):
    monkeypatch.setattr(executor.os, "geteuid", lambda: 1000)
    with pytest.raises(OSError) as e:
        Run(ex, tmp_path, "true", unit=(("LimitNOFILE", "64:infinity"),))
    assert "LimitNOFILE=: a hard limit above the runner's own" in e.value.strerror
