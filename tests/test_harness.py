"""The test harness tests itself: private bus, notify socket, git, daemons."""

import os
import signal
import subprocess
import time
import textwrap

import pytest

import harness

PY = harness.PYTHON


@pytest.fixture
def private_bus(tmp_path):
    """Here the harness's own stand-in policy, so that these tests check the
    harness and not the project's policy file (see test_project_policy_*)."""
    sockdir, _ = harness.short_dir(tmp_path)
    bus = harness.PrivateBus(tmp_path / "dbus", sockdir=sockdir, policy=None)
    try:
        yield bus.start()
    finally:
        bus.stop()


OWN_AND_EMIT = textwrap.dedent("""
    import sys
    sys.path.insert(0, %r)
    from buildunits import bus
    b, err = bus.connect()
    assert err is None, err
    b.publish("Runner", worker="w1")
    b.emit("BuildFinished", "hello", 7, "success")
    b._bus.con.flush_sync(None)  # a signal still queued at exit is lost
    print(b.unique_name)
""") % harness.LIB_DIR


def test_wait_for_returns_value_and_names_what_on_timeout():
    assert harness.wait_for(lambda: 42, timeout=1, what="the answer") == 42
    with pytest.raises(harness.WaitTimeout, match="waiting for the moon.*\n.*seen: nothing"):
        harness.wait_for(lambda: False, timeout=0.1, what="the moon", describe=lambda: "seen: nothing")


def test_bus_config_is_system_like_and_private(private_bus):
    text = open(private_bus.config_path).read()
    assert "<type>system</type>" in text
    assert "<listen>unix:path=%s</listen>" % private_bus.socket_path in text
    for absent in ("<user>", "<pidfile>", "<fork", "/etc/", "/run/dbus", "servicehelper"):
        assert absent not in text
    assert "<includedir>%s</includedir>" % private_bus.policy_dir in text
    assert '<deny own="*"' in text  # the machine's default policy is kept
    assert private_bus.address == "unix:path=" + private_bus.socket_path
    assert private_bus.env == {"DBUS_SYSTEM_BUS_ADDRESS": private_bus.address}


def test_private_bus_answers_busctl(private_bus):
    p = subprocess.run(["busctl", "--address=" + private_bus.address, "list", "--no-pager"],
                       capture_output=True, text=True, timeout=harness.scaled(20))
    assert p.returncode == 0, p.stderr
    assert "org.freedesktop.DBus" in p.stdout


def test_private_bus_lets_the_project_own_names_and_signals_reach_the_monitor(private_bus, monitor):
    # A client process pointed at the bus through DBUS_SYSTEM_BUS_ADDRESS,
    # as the daemons are: owns a name, emits a Runner signal.
    env = dict(os.environ, **private_bus.env)
    p = subprocess.run([PY, "-c", OWN_AND_EMIT], env=env, capture_output=True, text=True,
                       timeout=harness.scaled(20))
    assert p.returncode == 0, p.stderr
    s = monitor.wait_for_signal("BuildFinished", ("hello", 7))
    assert s.interface == "org.buildunits.Runner"
    assert s.args == ("hello", 7, "success")
    assert s.sender == p.stdout.strip()
    assert monitor.members() == ["BuildFinished"]
    with pytest.raises(harness.WaitTimeout, match="BuildFinished with args .*'other'.*\n.*signals seen"):
        monitor.wait_for_signal("BuildFinished", ("other",), timeout=0.2)


@pytest.mark.skipif(not os.path.exists(harness.PROJECT_POLICY), reason="no units/dbus/org.buildunits.conf yet")
@pytest.mark.skipif(os.getuid() != 0, reason="the project policy lets root (and the buildunits user) own names")
def test_project_policy_is_accepted_and_lets_root_own_names(tmp_path):
    sockdir, _ = harness.short_dir(tmp_path)
    bus = harness.PrivateBus(tmp_path / "dbus", sockdir=sockdir)
    assert bus.uses_project_policy
    try:
        bus.start()
        p = subprocess.run([PY, "-c", OWN_AND_EMIT], env=dict(os.environ, **bus.env), capture_output=True,
                           text=True, timeout=harness.scaled(20))
        assert p.returncode == 0, p.stderr
    finally:
        bus.stop()


def test_a_policy_file_dbus_daemon_rejects_is_an_error(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text('<busconfig><policy context="default"><allow send_member="X"/></policy></busconfig>')
    sockdir, _ = harness.short_dir(tmp_path)
    bus = harness.PrivateBus(tmp_path / "dbus", sockdir=sockdir, policy=str(bad))
    with pytest.raises(RuntimeError, match="rejected the policy file"):
        bus.start()


def test_pydbus_connection_to_private_bus(private_bus):
    conn = private_bus.pydbus()
    names = conn.dbus.ListNames()
    assert "org.freedesktop.DBus" in names


def test_notify_reader_gets_sdnotify_messages(make_notify_socket):
    a = make_notify_socket("a")
    b = make_notify_socket("b")
    code = "import sdnotify; n = sdnotify.SystemdNotifier(debug=True); n.notify('READY=1\\nSTATUS=up'); n.notify('WATCHDOG=1')"
    subprocess.run([PY, "-c", code], env=dict(os.environ, NOTIFY_SOCKET=a.path), check=True,
                   timeout=harness.scaled(20))
    a.wait_line("WATCHDOG=1")
    assert a.snapshot() == ["READY=1\nSTATUS=up", "WATCHDOG=1"]
    assert a.has("READY=1") and a.status() == "up"
    # When each line first came (what the benchmarks time a start by).
    assert a.arrival("READY=1") <= a.arrival("WATCHDOG=1") <= time.time()
    assert a.arrival("STOPPING=1") is None
    assert b.snapshot() == []  # one socket per process: messages are attributable
    with pytest.raises(harness.WaitTimeout, match="READY=1 on NOTIFY_SOCKET of b"):
        b.wait_line("READY=1", timeout=0.1)


def test_notify_reader_drains_many_messages(notify_socket):
    # More datagrams than a unix socket queues: the sender must not block.
    code = "import sdnotify; n = sdnotify.SystemdNotifier(debug=True)\nfor i in range(500): n.notify('STATUS=%d' % i)"
    subprocess.run([PY, "-c", code], env=dict(os.environ, NOTIFY_SOCKET=notify_socket.path), check=True,
                   timeout=harness.scaled(20))
    notify_socket.wait_for(lambda msgs: len(msgs) == 500, what="500 messages")
    assert notify_socket.status() == "499"


def test_git_helper_commits_are_visible_via_ls_remote(tmp_path):
    repo = harness.make_repo(tmp_path / "hello.git")
    assert repo.ls_remote() == {}
    first = repo.commit({"Makefile": "all:\n\ttrue\n"}, "first")
    p = subprocess.run(["git", "ls-remote", repo.bare], capture_output=True, text=True, check=True,
                       env=harness.git_env())
    assert "%s\trefs/heads/main" % first in p.stdout.splitlines()
    second = repo.commit({"README": b"hi\n"}, "second", push=False)
    assert repo.head() == first
    repo.push()
    assert repo.head() == second
    other = repo.commit({"README": None}, "on release", branch="release-1")
    assert repo.ls_remote() == {"refs/heads/main": second, "refs/heads/release-1": other,
                                "HEAD": second}
    assert harness.git("log", "--format=%an <%ae>", "-1", cwd=repo.bare) == \
        "Test Harness <harness@example.invalid>"
    assert harness.git("config", "--get", "user.name", cwd=repo.work) == "Test Harness"
    repo.delete_branch("release-1")
    assert repo.head("release-1") is None


FAKE_DAEMON = textwrap.dedent("""
    import argparse, os, signal, sys, time
    sys.path.insert(0, os.environ["PYTHONPATH"].split(os.pathsep)[0])
    from buildunits import notify, paths
    p = argparse.ArgumentParser()
    paths.add_arguments(p)
    p.add_argument("worker", nargs="?")
    p.add_argument("--fail", action="store_true")
    args = p.parse_args()
    dirs = paths.from_args(args)
    print("fake daemon", args.worker, dirs.config, os.environ["DBUS_SYSTEM_BUS_ADDRESS"], flush=True)
    if args.fail:
        print("refusing to start", file=sys.stderr, flush=True)
        sys.exit(1)
    n = notify.Notifier()
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    signal.signal(signal.SIGHUP, lambda *a: (n.reloading(), n.reloaded("reloaded")))
    n.ready("idle")
    while not stop:
        signal.pause()
    n.stopping()
    print("stopped", flush=True)
""")


@pytest.fixture
def fake(tmp_path):
    path = tmp_path / "fake-daemon"
    path.write_text(FAKE_DAEMON)
    return str(path)


def test_daemons_start_ready_reload_stop(daemons, fake, private_bus):
    d = daemons.start("runner@w1", program=fake)
    assert d.key == "runner@w1" and daemons.running("runner@w1")
    assert daemons.notify("runner@w1").status() == "idle"
    daemons.reload("runner@w1")
    assert daemons.notify("runner@w1").status() == "reloaded"
    assert daemons.stop("runner@w1") == 0
    log = daemons.log("runner@w1")
    assert "fake daemon w1 %s %s" % (daemons.config_dir, private_bus.address) in log
    assert "stopped" in log
    assert daemons.notify("runner@w1").has("STOPPING=1")
    daemons.restart("runner@w1")
    assert daemons.log("runner@w1", -1).count("fake daemon") == 1
    assert daemons.log("runner@w1").count("fake daemon") == 2


def test_daemons_without_bus_and_exit_before_ready(daemons, fake):
    with pytest.raises(RuntimeError, match=r"(?s)exited with status 1 before READY=1.*refusing to start"):
        daemons.start("poller", "--fail", program=fake)
    daemons.start("scheduler", program=fake, bus=False)
    assert harness.NO_BUS in daemons.log("scheduler")


def test_daemons_kill_takes_the_process_group(daemons, tmp_path):
    script = tmp_path / "parent"
    script.write_text(textwrap.dedent("""
        import os, subprocess, sys, sdnotify
        child = subprocess.Popen(["sleep", "300"])
        print("child", child.pid, flush=True)
        sdnotify.SystemdNotifier().notify("READY=1")
        child.wait()
    """))
    daemons.start("htmlgen", program=str(script))
    child = int(harness.wait_for(lambda: [ln for ln in daemons.log("htmlgen").splitlines()
                                          if ln.startswith("child ")], what="child pid")[0].split()[1])
    assert daemons.kill("htmlgen") == -signal.SIGKILL
    harness.wait_for(lambda: not os.path.exists("/proc/%d" % child) or
                     open("/proc/%d/stat" % child).read().split()[2] == "Z", what="child to die")


def test_write_builder_and_state_helpers(daemons):
    path = daemons.write_builder("hello", """
        [Builder]
        Repository=/nonexistent
        [Step compile]
        Command=true
    """)
    assert path == os.path.join(daemons.config_dir, "builders", "hello.builder")
    assert open(path).read().startswith("[Builder]\nRepository=/nonexistent\n")
    from buildunits import config
    assert list(config.load(daemons.config_dir).builders) == ["hello"]
    assert daemons.builds("hello") == [] and daemons.read_build("hello", 1) is None
    n = daemons.state.allocate_number("hello")
    daemons.state.write_build({"builder": "hello", "number": n, "state": "running", "result": "running"})
    assert daemons.read_build("hello", n)["state"] == "running"
    with pytest.raises(harness.WaitTimeout, match="build hello #1 to finish"):
        daemons.wait_build_finished("hello", 1, timeout=0.1)
    daemons.state.write_build({"builder": "hello", "number": n, "state": "finished", "result": "failure"})
    assert daemons.wait_build_finished("hello", 1)["result"] == "failure"
    assert daemons.builds("hello") == [1]


def test_kill_and_teardown_take_children_in_other_sessions(daemons, tmp_path):
    # The runner starts each step in a session of its own; a crash of the
    # runner must not leave the step behind (systemd would kill the cgroup).
    script = tmp_path / "parent"
    script.write_text(textwrap.dedent("""
        import subprocess, sys, sdnotify
        procs = [subprocess.Popen(["sleep", "301"], start_new_session=True) for _ in range(2)]
        print("children", *[p.pid for p in procs], flush=True)
        sdnotify.SystemdNotifier().notify("READY=1")
        if sys.argv[-1] == "exit":
            sys.exit(0)  # orphans them
        procs[0].wait()
    """))

    def children(key):
        line = harness.wait_for(lambda: [ln for ln in daemons.log(key).splitlines()
                                         if ln.startswith("children ")], what="children of " + key)[-1]
        return [int(p) for p in line.split()[1:]]

    def alive(pid):
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    daemons.start("runner@w1", program=str(script))
    crashed = children("runner@w1")
    daemons.kill("runner@w1")
    harness.wait_for(lambda: not any(alive(p) for p in crashed), what="the steps of a killed runner to die")

    daemons.start("runner@w2", "exit", program=str(script), wait_ready=False)
    assert daemons.wait_exit("runner@w2") == 0
    orphans = children("runner@w2")
    assert all(alive(p) for p in orphans)
    daemons.close()  # what teardown does
    assert not any(alive(p) for p in orphans)
