"""What every daemon does the same way (daemon.py), in-process: the instance
lock, reloads (a refused one keeps the running configuration and says so
first in STATUS=), retries after a failed pass, the rescan timer, and a
whole run() from READY=1 to STOPPING=1.

The daemons are built over temporary directories with no bus and a
notifier that records what it would send; timers run on the default GLib
main context, iterated by the test.
"""

import os
import time

import pytest
from gi.repository import GLib

import harness
from support import inprocess
from support.inprocess import RecordingNotifier
from buildunits import config, daemon, log, paths, poller, runner, scheduler
from buildunits.bus import NoBus

BUILDER = "[Builder]\nRepository=/srv/git/hello.git\nPollIntervalSec=0\n[Step s]\nCommand=true\n"




@pytest.fixture
def logged(monkeypatch):
    """The daemon's log lines, as plain text."""
    lines = inprocess.capture_log(monkeypatch)
    monkeypatch.setattr(log, "_identifier", "buildunits")
    return lines


def dirs(tmp_path):
    return paths.Dirs(config=str(tmp_path / "config"), spool=str(tmp_path / "spool"),
                      state=str(tmp_path / "state"), site=str(tmp_path / "site"))


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture
def make(tmp_path):
    """make(cls=Scheduler, args=None) -> a daemon over tmp_path's directories;
    its timers are removed and the main context drained afterwards."""
    made = []
    d = dirs(tmp_path)
    if not os.path.exists(os.path.join(d.config, "builders", "hello.builder")):
        write(os.path.join(d.config, "builders", "hello.builder"), BUILDER)

    def make(cls=scheduler.Scheduler, args=None):
        obj = cls(d, config.load(d.config), NoBus(), RecordingNotifier(), args)
        obj.spool.ensure()
        obj.state.ensure()
        made.append(obj)
        return obj
    yield make
    for obj in made:
        obj.stopping = True
        for src in (obj._rescan_source, getattr(obj, "_retry_source", None), getattr(obj, "_timer", None)):
            if isinstance(src, daemon.Timer):
                src.remove()
        for fd in (getattr(obj, "_lock_fd", None),):
            if fd is not None:
                os.close(fd)
        if getattr(obj, "_lock_sock", None) is not None:
            obj._lock_sock.close()
    ctx = GLib.MainContext.default()
    while ctx.iteration(False):
        pass


def iterate_until(predicate, timeout=5.0):
    ctx = GLib.MainContext.default()
    deadline = time.monotonic() + harness.scaled(timeout)
    while not predicate() and time.monotonic() < deadline:
        ctx.iteration(True)
    assert predicate(), "the main context's deadline passed first"


# ------------------------------------------------------------------ lock
def test_a_second_instance_of_a_daemon_is_refused(make, logged):
    first, second = make(), make()
    assert first._lock() is not None
    assert second._lock() is None
    assert "another buildunits-scheduler is running on %s" % first.dirs.state in logged()
    # Another program on the same state is another role: it may run.
    assert make(poller.Poller)._lock() is not None
    assert os.path.exists(first.state.lock_path("buildunits-scheduler", None))


def test_runners_of_different_workers_lock_apart(make):
    ns = lambda w: type("Args", (), {"worker": w})()
    assert make(runner.Runner, ns("w1"))._lock() is not None
    assert make(runner.Runner, ns("w2"))._lock() is not None
    assert make(runner.Runner, ns("w1"))._lock() is None


def test_the_flock_alone_refuses_a_second_instance(make, monkeypatch):
    # Where no abstract socket can be bound (a sandbox), the lock file counts.
    class NoSocket:
        def __init__(self, *a):
            raise PermissionError(1, "Operation not permitted")
    first = make()
    monkeypatch.setattr(daemon.socket, "socket", NoSocket)
    assert first._lock() is not None
    assert make()._lock() is None


def test_a_deleted_lock_file_is_locked_again(make, logged):
    d = make()
    assert d._lock() is not None
    os.unlink(d._lock_path)
    assert d.check_lock() is True
    assert os.path.exists(d._lock_path)
    assert any("was deleted or replaced while held; locking it again" in line for line in logged())
    assert make()._lock() is None


def test_main_exits_3_when_another_instance_holds_the_lock(make, tmp_path, monkeypatch, logged):
    held = make(poller.Poller)
    assert held._lock() is not None
    monkeypatch.setattr(daemon.busmod, "connect", lambda: (NoBus(), "no bus in this test"))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setattr(daemon.log, "setup", lambda *a, **kw: None)
    d = dirs(tmp_path)
    argv = ["--config-dir", d.config, "--spool-dir", d.spool, "--state-dir", d.state, "--site-dir", d.site]
    assert poller.main(argv) == 3
    assert "another buildunits-poller is running on %s" % d.state in logged()


def test_main_exits_1_on_a_bad_configuration(tmp_path, monkeypatch, logged):
    d = dirs(tmp_path)
    write(os.path.join(d.config, "builders", "hello.builder"), "[Builder]\nTreeStableSec=soon\n")
    monkeypatch.setattr(daemon.busmod, "connect", lambda: pytest.fail("connected with a bad configuration"))
    monkeypatch.setattr(daemon.log, "setup", lambda *a, **kw: None)
    argv = ["--config-dir", d.config, "--spool-dir", d.spool, "--state-dir", d.state, "--site-dir", d.site]
    assert scheduler.main(argv) == 1
    lines = logged()
    assert lines[0].startswith("configuration refused (")
    assert any(line.startswith("  %s:2" % os.path.join(d.config, "builders", "hello.builder")) for line in lines)


# ---------------------------------------------------------------- reload
def test_a_refused_reload_keeps_the_running_configuration_and_says_so(make, logged):
    d = make()
    old = d.cfg
    path = os.path.join(d.dirs.config, "builders", "hello.builder")
    write(path, BUILDER.replace("[Builder]\n", "[Builder]\nTreeStableSec=soon\n"))
    assert d._on_hup() is True
    assert d.cfg is old
    assert d.notifier.sent[0] == "RELOADING=1"
    [status] = d.notifier.statuses()
    assert status.startswith("reload refused: %s:2: [Builder] TreeStableSec=" % path)
    assert status.endswith("(see the journal); 0 requests made; 0 changes waiting for a stable tree")
    assert any(line.startswith("reload refused, keeping the running configuration (1 problem)")
               for line in logged())
    # Every later STATUS= says so first, until a reload succeeds.
    d._do_work()
    assert d.notifier.statuses()[-1].startswith("reload refused: %s:2: [Builder] TreeStableSec=" % path)
    write(os.path.join(d.dirs.config, "builders", "second.builder"), BUILDER)
    write(path, BUILDER)
    d._on_hup()
    assert d.cfg is not old and sorted(d.cfg.builders) == ["hello", "second"]
    assert d.notifier.statuses()[-1] == "0 requests made; 0 changes waiting for a stable tree"
    assert "configuration reloaded: 2 builders" in logged()


def test_a_reload_rearms_the_rescan_timer_with_the_new_interval(make):
    d = make()
    d._set_rescan_timer()
    assert d._rescan_source.seconds == 300.0
    first = d._rescan_source
    write(os.path.join(d.dirs.config, "buildunits.conf"), "[Daemons]\nRescanIntervalSec=10min\n")
    d._on_hup()
    assert d._rescan_source is not first and d._rescan_source.seconds == 600.0
    assert first._removed


# ----------------------------------------------------------------- retry
def test_a_failing_pass_retries_with_a_doubling_delay_and_a_success_resets_it(make, monkeypatch, logged):
    d = make()
    monkeypatch.setattr(daemon, "RETRY_MIN_SEC", 0.01)
    d.cfg.rescan_interval = 0.04
    delays, calls = [], []

    class RecordingTimer(daemon.Timer):
        def __init__(self, seconds, *a, **kw):
            delays.append(seconds)
            super().__init__(seconds, *a, **kw)
    monkeypatch.setattr(daemon, "Timer", RecordingTimer)

    def work():
        calls.append(time.monotonic())
        if len(calls) <= 5:
            raise OSError(28, "No space left on device")
    d.work = work
    d.wake()
    iterate_until(lambda: len(calls) == 6)
    assert delays == [0.01, 0.02, 0.04, 0.04, 0.04]                  # doubling, capped at the rescan interval
    assert all(b - a >= delay for (a, b), delay in zip(zip(calls, calls[1:]), delays))
    statuses = d.notifier.statuses()
    assert statuses[0] == "error: [Errno 28] No space left on device (will retry)"
    assert statuses[-1] == "0 requests made; 0 changes waiting for a stable tree"
    assert d._retry_delay == 0
    assert sum(line.startswith("buildunits-scheduler: work failed: [Errno 28]") for line in logged()) == 5


def test_a_retry_already_armed_is_not_armed_twice(make):
    d = make()
    d.retry_later()
    armed = d._retry_source
    d.retry_later()
    assert d._retry_source is armed and d._retry_delay == daemon.RETRY_MIN_SEC


# ---------------------------------------------------------------- rescan
def test_the_rescan_timer_is_armed_and_wakes_one_pass(make, monkeypatch):
    d = make()
    passes = []
    d.work = lambda: passes.append(1)
    d._set_rescan_timer()
    assert isinstance(d._rescan_source, daemon.Timer) and d._rescan_source.seconds == d.cfg.rescan_interval
    assert d._rescan_source._source is not None                      # a GLib timer is armed under it
    assert d._rescan() is True                                       # it keeps running
    d.wake()                                                         # coalesced with the rescan's wake
    iterate_until(lambda: passes)
    GLib.MainContext.default().iteration(False)
    assert passes == [1]


def test_the_rescan_interval_has_a_floor_of_a_second(make):
    d = make()
    d.cfg.rescan_interval = 0.001
    d._set_rescan_timer()
    assert d._rescan_source.seconds == 1.0


def test_a_stopping_daemon_does_no_more_work(make):
    d = make()
    passes = []
    d.work = lambda: passes.append(1)
    d.wake()
    d.stopping = True
    GLib.MainContext.default().iteration(False)
    d.wake()
    assert passes == [] and d._do_work() is False


# ------------------------------------------------------------------- run
def test_run_recovers_rescans_becomes_ready_and_stops_on_term(make, monkeypatch, logged):
    monkeypatch.setattr(GLib, "unix_signal_add", lambda *a: 0)       # the test process keeps its handlers
    d = make(poller.Poller)
    order = []
    d.startup = lambda: order.append("startup")
    d.work = lambda: order.append("work")
    GLib.idle_add(lambda: d._on_term() and False)
    assert d.run() == 0
    assert order == ["startup", "work"]
    assert d.notifier.sent[0] == "READY=1\nSTATUS=watching 0 repositories; 0 polls, 0 changes queued"
    assert d.notifier.sent[-1] == "STOPPING=1\nSTATUS=stopping"
    assert isinstance(d._rescan_source, daemon.Timer)
    lines = logged()
    assert any(line.startswith("buildunits-poller ") and " ready: watching 0 repositories" in line for line in lines)
    assert lines[-1] == "buildunits-poller: stopped"


def test_run_becomes_ready_even_when_the_first_pass_fails(make, monkeypatch, logged):
    monkeypatch.setattr(GLib, "unix_signal_add", lambda *a: 0)
    d = make(poller.Poller)

    def work():
        raise OSError(30, "Read-only file system")
    d.work = work
    GLib.idle_add(lambda: d._on_term() and False)
    assert d.run() == 0
    assert d.notifier.sent[0].startswith("READY=1")
    assert d._retry_source is not None
    assert "buildunits-poller: work failed: [Errno 30] Read-only file system (will retry)" in logged()


def test_run_exits_3_when_the_lock_is_held(make, monkeypatch):
    monkeypatch.setattr(GLib, "unix_signal_add", lambda *a: pytest.fail("got as far as signals"))
    assert make(poller.Poller)._lock() is not None
    d = make(poller.Poller)
    assert d.run() == 3
    assert d.notifier.sent == []

