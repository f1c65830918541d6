"""sandbox.py and the runner's side of it (executor_unit.Sandbox): a
builder's steps run one after another inside one sandbox process.

The real buildunits-sandbox runs here, as a child of the test, with the
socket the runner's side made as its standard input.  What stands in is
the launcher alone (LauncherStandIn, below): it starts the program
directly instead of asking systemd for a unit, so there is no sandbox
around it; the unit, its user and its namespaces are the system tier's
(tests/system/test_boundary.py).
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

import pytest
from gi.repository import GLib

import harness
from buildunits import executor, executor_unit, sandbox
from support.procs import alive

PROGRAM = os.path.join(harness.BIN_DIR, "buildunits-sandbox")


class LauncherStandIn:
    """A stand-in for buildunits-launcher: its "sandbox" operation runs
    buildunits-sandbox as a plain child process (no systemd, no unit),
    with the runner's socket as its standard input.  Release and kill
    end that process."""

    def __init__(self, clean=()):
        self.clean = list(clean)
        self.started = []       # the fields of each sandbox started
        self.procs = []
        self.released = []

    def request(self, op, fields=None, fd=None):
        if op == "sandbox":
            args = [sys.executable, PROGRAM]
            for d in self.clean:
                args += ["--clean", d]
            self.procs.append(subprocess.Popen(args, stdin=fd, close_fds=True))
            self.started.append(fields)
            return {"ok": True, "unit": executor_unit.sandbox_unit_name(fields["builder"], fields["worker"])}
        if op in ("release", "kill"):
            self.released.append(fields["unit"])
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            return {"ok": True}
        raise AssertionError("not a sandbox operation: %s" % op)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.fixture
def launcher():
    s = LauncherStandIn()
    yield s
    s.stop()


@pytest.fixture
def ex(launcher):
    e = executor_unit.TransientUnitExecutor(grace=1, user=None, launcher=launcher, systemd=object(), worker="w1")
    yield e
    if e._sandbox is not None:
        e._sandbox.close()


_fds = []


@pytest.fixture(autouse=True)
def _close_logs():
    yield
    while _fds:
        os.close(_fds.pop())


def spin(seconds, until):
    ctx = GLib.MainContext.default()
    deadline = time.monotonic() + seconds
    while not until() and time.monotonic() < deadline:
        ctx.iteration(False) or time.sleep(0.005)
    return until()


class Run:
    """One step through EX in the sandbox of builder BUILDER."""

    def __init__(self, ex, tmp_path, script, builder="hello", unit=(), token=None, name="test"):
        self.log = tmp_path / ("%s-%s.log" % (name, secrets.token_hex(4)))
        self.fd = os.open(str(self.log), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        _fds.append(self.fd)
        self.ended = []
        self.token = token or secrets.token_hex(8)
        spec = executor.StepSpec(builder, 1, name, self.token, unit=tuple(unit), shared=(tuple(unit), ()))
        self.handle = ex.start(spec, ["/bin/sh", "-c", script], dict(os.environ), str(tmp_path), self.fd,
                               self.ended.append)

    def wait(self, timeout=15):
        assert spin(timeout, lambda: self.ended), "no end; log: %r" % self.text()
        return self.ended[0]

    def text(self):
        return self.log.read_text()


def wait_gone(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not alive(pid)


def test_steps_of_a_builder_share_one_sandbox_and_report_their_ends(ex, launcher, tmp_path):
    r = Run(ex, tmp_path, 'echo out; echo err >&2; echo "$BUILDUNITS_BUILD_TOKEN $HOME"; exit 3')
    assert r.wait() == 3
    assert r.text().splitlines() == ["out", "err", "%s /tmp" % r.token]
    assert r.handle.pid > 0 and "buildunits-build-hello-sandbox-w1.service" in r.handle.identity
    assert set(r.handle.usage) >= {"cpu_sec", "io_read_bytes", "io_write_bytes"}
    r2 = Run(ex, tmp_path, "kill -TERM $$", token=r.token)
    assert r2.wait() == -15
    assert len(launcher.started) == 1, "the second step needed a sandbox of its own"
    # Another builder's turn: a sandbox set up for it.
    r3 = Run(ex, tmp_path, "true", builder="other")
    assert r3.wait() == 0
    assert [f["builder"] for f in launcher.started] == ["hello", "other"]
    assert wait_gone(launcher.procs[0].pid), "the first builder's sandbox was not closed"


def test_a_command_that_cannot_run_ends_with_127_and_says_why(ex, launcher, tmp_path):
    log = tmp_path / "log"
    fd = os.open(str(log), os.O_WRONLY | os.O_CREAT, 0o644)
    _fds.append(fd)
    ended = []
    spec = executor.StepSpec("hello", 1, "test", "ab" * 8, shared=((), ()))
    ex.start(spec, ["/no/such/program"], {}, str(tmp_path), fd, ended.append)
    assert spin(10, lambda: ended) and ended == [127]
    assert "cannot run /no/such/program: No such file" in log.read_text()
    ex.start(spec, ["/bin/true"], {}, str(tmp_path / "gone"), fd, ended.append)
    assert spin(10, lambda: len(ended) == 2) and ended[1] == 127
    assert "cannot change to %s" % (tmp_path / "gone") in log.read_text()
    assert Run(ex, tmp_path, "exit 0").wait() == 0
    assert len(launcher.started) == 1


def test_what_a_step_leaves_running_ends_with_it(ex, tmp_path):
    pidfile = tmp_path / "daemon.pid"
    r = Run(ex, tmp_path, "setsid sh -c 'sleep 1000 & echo $! > %s; wait' & sleep 0.2; "
                          "while [ ! -s %s ]; do sleep 0.01; done; exit 0" % (pidfile, pidfile))
    assert r.wait() == 0
    pid = int(pidfile.read_text())
    assert wait_gone(pid), "the step's daemon outlived its step"


def test_stop_sends_sigterm_then_sigkill_after_the_grace(ex, tmp_path):
    r = Run(ex, tmp_path, "sleep 1000")
    r.handle.stop(1)
    assert r.wait() == -15
    r = Run(ex, tmp_path, "trap '' TERM; echo ready; while :; do sleep 0.05; done")
    assert spin(10, lambda: "ready" in r.text())
    r.handle.stop(1)
    assert r.wait() == -9
    assert "SIGKILL" in r.text()


def test_a_step_that_kills_its_sandbox_costs_its_own_step_only(ex, launcher, tmp_path):
    r = Run(ex, tmp_path, "kill -KILL $PPID; sleep 1000")
    assert r.wait() == -1
    assert "ended while the step ran" in r.text()
    assert launcher.released, "the sandbox's unit was not stopped"
    r2 = Run(ex, tmp_path, "echo again")
    assert r2.wait() == 0 and r2.text() == "again\n"
    assert len(launcher.started) == 2


def test_a_sandbox_that_does_not_answer_is_stopped_at_the_end_of_the_grace(ex, launcher, tmp_path):
    r = Run(ex, tmp_path, "kill -STOP $PPID; echo stopped; sleep 1000")
    assert spin(10, lambda: "stopped" in r.text())
    r.handle.stop(1)
    assert r.wait(timeout=20) == -1
    assert "stopping buildunits-build-hello-sandbox-w1.service" in r.text()
    assert launcher.released


def test_a_new_build_finds_an_empty_tmp(launcher, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    launcher.clean = [str(tmp)]
    ex = executor_unit.TransientUnitExecutor(grace=1, user=None, launcher=launcher, systemd=object(), worker="w1")
    try:
        r = Run(ex, tmp_path, "mkdir %s/d && touch %s/d/f %s/g" % (tmp, tmp, tmp))
        assert r.wait() == 0
        r2 = Run(ex, tmp_path, "ls %s" % tmp, token=r.token)          # the same build
        assert r2.wait() == 0 and r2.text().split() == ["d", "g"]
        r3 = Run(ex, tmp_path, "ls -A %s | wc -l" % tmp)              # the next build
        assert r3.wait() == 0 and r3.text().strip() == "0"
        assert len(launcher.started) == 1
    finally:
        ex._sandbox.close()


def test_the_builders_rlimits_apply_to_each_step(ex, launcher, tmp_path):
    r = Run(ex, tmp_path, "ulimit -n; ulimit -Hn", unit=[("LimitNOFILE", "64:128")])
    assert r.wait() == 0
    assert r.text().split() == ["64", "128"]
    r2 = Run(ex, tmp_path, "ulimit -n")
    assert r2.wait() == 0 and r2.text().strip() != "64"
    assert len(launcher.started) == 2, "other settings need a sandbox set up with them"


def test_halt_stops_the_step_without_the_main_loop(ex, tmp_path):
    r = Run(ex, tmp_path, "trap '' TERM; echo ready; sleep 1000")
    assert spin(10, lambda: "ready" in r.text())
    pid = r.handle.pid
    t = time.monotonic()
    r.handle.halt(1)
    assert time.monotonic() - t < 60, "halt waited for the step, not the grace"
    assert wait_gone(pid)
    assert r.ended == []


def test_the_runner_gone_ends_the_step_and_the_sandbox(ex, launcher, tmp_path):
    r = Run(ex, tmp_path, "echo ready; exec sleep 1000")
    assert spin(10, lambda: "ready" in r.text())
    ex._sandbox.sock.close()        # what the runner's death does to its end
    ex._sandbox.sock = None
    assert wait_gone(r.handle.pid)
    assert launcher.procs[0].wait(timeout=10) == 0


def _raw_driver():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    p = subprocess.Popen([sys.executable, PROGRAM], stdin=theirs, close_fds=True)
    theirs.close()
    ours.settimeout(10)
    return ours, p


@pytest.mark.parametrize("message", [
    b"\xff\xfe", b"[]", b"{}", json.dumps({"v": 2, "op": "run"}).encode(),
    json.dumps({"v": 1, "op": "run", "argv": ["true"], "env": {}, "cwd": "/", "token": "t"}).encode(),  # no fd
    json.dumps({"v": 1, "op": "signal", "signal": "SIGSTOP"}).encode(),
    json.dumps({"v": 1, "op": "format-disk"}).encode(),
])
def test_a_bad_message_is_answered_with_an_error_and_the_sandbox_goes_on(message, tmp_path):
    s, p = _raw_driver()
    try:
        s.sendall(message)
        reply = json.loads(s.recv(65536))
        assert reply["op"] == "error" and reply["error"]
        fd = os.open(str(tmp_path / "log"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            socket.send_fds(s, [sandbox.encode({"op": "run", "argv": ["/bin/sh", "-c", "echo fine"], "env": {},
                                                "cwd": str(tmp_path), "token": "t", "rlimits": []})], [fd])
        finally:
            os.close(fd)
        assert json.loads(s.recv(65536))["op"] == "started"
        end = json.loads(s.recv(65536))
        assert end["op"] == "ended" and end["code"] == 0
        assert (tmp_path / "log").read_text() == "fine\n"
    finally:
        s.close()
        assert p.wait(timeout=10) == 0


def test_the_sandbox_refuses_a_standard_input_that_is_not_a_socket():
    p = subprocess.run([sys.executable, PROGRAM], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert p.returncode == 2 and "not a socket" in p.stderr


@pytest.mark.parametrize("msg, expected", [
    ({"code": 0, "usage": {"cpu_sec": 0.5, "memory_peak_bytes": 10}}, (0, {"cpu_sec": 0.5, "memory_peak_bytes": 10})),
    ({"code": "0", "usage": []}, (-1, {})),
    ({"code": True, "usage": {"cpu_sec": -1, "io_read_bytes": 2 ** 70, "evil": 1}}, (-1, {})),
    ({"code": 100000}, (-1, {})),
])
def test_what_the_sandbox_says_of_an_end_is_checked(msg, expected):
    assert executor_unit._checked_end(msg) == expected


def test_a_step_with_settings_of_its_own_is_not_run_in_the_sandbox():
    spec = executor.StepSpec("hello", 1, "deploy", "ab" * 8, unit=(("PrivateNetwork", "yes"),), shared=((), ()))
    assert spec.shared != (spec.unit, spec.credentials)
    spec = executor.StepSpec("hello", 1, "deploy", "ab" * 8, credentials=("token",), shared=((), ()))
    assert spec.shared != (spec.unit, spec.credentials)


def test_signal_names_are_the_executors():
    assert set(sandbox.SIGNALS) == {"SIGTERM", "SIGKILL"}
    assert sandbox.SIGNALS["SIGKILL"] == signal.SIGKILL


def test_a_sandbox_with_credentials_serves_one_build(ex, launcher, tmp_path):
    def run(token):
        fd = os.open(str(tmp_path / ("log-" + secrets.token_hex(4))), os.O_WRONLY | os.O_CREAT, 0o644)
        _fds.append(fd)
        ended = []
        spec = executor.StepSpec("hello", 1, "test", token, credentials=("token",), shared=((), ("token",)))
        ex.start(spec, ["/bin/true"], {}, str(tmp_path), fd, ended.append)
        assert spin(10, lambda: ended) and ended == [0]
    run("ab" * 8)
    run("ab" * 8)
    assert len(launcher.started) == 1
    run("cd" * 8)
    assert len(launcher.started) == 2 and launcher.started[0]["credentials"] == ["token"]
