"""The container harness itself: it boots a real systemd, runs commands in
it, installs the project, reads the journal, and leaves nothing behind."""

import os
import signal
import sys
import time

import pytest

import container as ct

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PURE_V2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
LEGACY_V1 = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
35 31 0:32 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
"""


def test_cgroup_hierarchies_on_each_host_layout():
    assert ct.cgroup_roots(HYBRID) == ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"]
    assert ct.cgroup_roots(PURE_V2) == ["/sys/fs/cgroup"]
    assert ct.cgroup_roots(LEGACY_V1) == ["/sys/fs/cgroup/systemd"]
    assert ct.cgroup_roots(), "this machine has no usable cgroup hierarchy"


def test_image_is_complete_and_says_what_it_holds(image):
    assert image.ready()
    with open(image.stamp_path) as f:
        stamp = f.read()
    spec, _, installed = stamp.partition(ct.STAMP_SEPARATOR)
    assert spec == image.spec and "--variant=minbase --include=" in spec
    assert any(line.startswith("systemd ") for line in installed.splitlines())
    assert os.readlink(os.path.join(image.path, "etc/systemd/system/getty@.service")) == "/dev/null"
    # Another specification is another tree: nothing stale is ever reused.
    other = ct.Image(extra_packages=["strace"])
    assert other.path != image.path and not other.ready()


def test_boots_to_running(make_container):
    c = make_container(install=False)
    state = c.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    assert state in ("running", "degraded"), c.run(["systemctl", "--failed"], check=False).stdout
    print("boot took %.2f s" % c.boot_seconds)
    assert c.boot_seconds < 30


def test_commands_run_inside_with_systemd_as_pid1(make_container):
    c = make_container(install=False)
    assert c.run(["cat", "/proc/1/comm"]).stdout == "systemd\n"
    assert c.run(["ps", "-o", "comm=", "-p", "1"]).stdout.strip() == "systemd"
    assert c.run("hostname").stdout.strip() == c.name
    # A clean environment, and input.
    env = dict(line.split("=", 1) for line in c.run(["env"]).stdout.splitlines())
    assert env == ct.CLEAN_ENV
    assert c.run(["tr", "a-z", "A-Z"], input="hello\n").stdout == "HELLO\n"
    # Failures raise with what the command said.
    with pytest.raises(ct.CommandFailed) as e:
        c.run("echo to-stdout; echo to-stderr >&2; exit 3")
    assert e.value.returncode == 3 and "to-stderr" in str(e.value) and "to-stdout" in str(e.value)
    assert c.run("exit 4", check=False).returncode == 4
    # Another user; files written inside.
    assert c.run(["id", "-un"], user="nobody").stdout == "nobody\n"
    c.write_file("/etc/buildunits-test/hello.txt", "hi\n", mode=0o640, owner="nobody")
    assert c.run(["stat", "-c", "%a %U", "/etc/buildunits-test/hello.txt"]).stdout == "640 nobody\n"
    assert c.read_file("/etc/buildunits-test/hello.txt") == "hi\n"
    # A timeout kills what the command started, inside too.
    with pytest.raises(ct.subprocess.TimeoutExpired):
        c.run(["sh", "-c", "sleep 123 & sleep 124"], timeout=0.5)
    assert c.run(["pgrep", "-f", "sleep 12[34]"], check=False).returncode == 1


def test_install_project(container):
    c = container
    with open(os.path.join(ct.os.path.dirname(__file__), "..", "..", "lib", "buildunits", "__init__.py")) as f:
        version = f.read().split('__version__ = "')[1].split('"')[0]
    assert c.run(["buildunits", "--version"]).stdout.strip().endswith(version)
    assert c.run(["test", "-f", "/usr/share/dbus-1/system.d/org.buildunits.conf"]).returncode == 0
    c.write_file("/etc/systemd/system/buildunits-version.service",
                 "[Unit]\nDescription=print the version\n\n[Service]\nType=oneshot\n"
                 "ExecStart=/usr/bin/buildunits --version\n")
    p = c.run(["systemd-analyze", "verify", "buildunits-version.service"], check=False)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
    c.run(["systemctl", "daemon-reload"])
    c.run(["systemctl", "start", "buildunits-version.service"])
    # The oneshot has exited; journald may not have read its stdout yet.
    out = ct._wait(lambda: (lambda j: j if version in j else None)(
        c.journal("-u", "buildunits-version.service", "-o", "cat")), 10, "the version in the journal")
    assert version in out


def test_journal_is_readable(make_container):
    c = make_container(install=False)
    c.run(["systemd-cat", "-t", "buildunits-mark", "echo", "hello from the test"])
    ct._wait(lambda: "hello from the test" in c.journal("-t", "buildunits-mark", "-o", "cat"), 10,
             "the message in the journal")
    assert "Startup finished" in c.journal("-b", "_PID=1")


def _traces(name):
    """What is left of container NAME on this machine (empty when nothing)."""
    left = []
    for pid in ct._pids():
        if (ct._stat(pid) or "Z")[0] == "Z":
            continue  # a zombie holds nothing; the host's init reaps it when it will
        if ct._nspawn_machine(pid) == name:
            left.append("nspawn process %d" % pid)
        elif ct._machine_of_cgroup(pid) == name:
            left.append("process %d %s" % (pid, ct._cmdline(pid)))
    left += [p for p in (os.path.join(r, ct.CGROUP_PARENT, name) for r in ct.cgroup_roots()) if os.path.exists(p)]
    left += [p for p in [os.path.join(ct.NSPAWN_PROPAGATE, name)] if os.path.exists(p)]
    left += ct.glob.glob(os.path.join(ct.tempfile.gettempdir(), name + "-*.console"))
    return left


def test_containers_one_after_the_other_leave_nothing_behind(make_container):
    for _ in range(2):
        c = make_container(install=False)
        c.run(["systemd-run", "--unit=buildunits-sleeper", "sleep", "600"])
        nspawn, pid1 = c.nspawn.pid, c.pid
        assert _traces(c.name), "the container should be visible while it runs"
        start = time.monotonic()
        c.stop()
        print("stop took %.2f s" % (time.monotonic() - start))
        assert not ct._alive(nspawn) and not ct._alive(pid1)
        assert _traces(c.name) == []


def test_concurrent_containers_keep_to_their_own_processes(make_container):
    a, b = make_container(install=False), make_container(install=False)
    for c in (a, b):
        c.run(["systemd-run", "--unit=buildunits-sleeper", "sleep", "600"])
    pid_a = int(a.run(["systemctl", "show", "-P", "MainPID", "buildunits-sleeper"]).stdout)
    assert pid_a > 1
    # Each container's processes are in its own cgroup, seen from the host.
    for c in (a, b):
        inner = int(c.run(["systemctl", "show", "-P", "MainPID", "buildunits-sleeper"]).stdout)
        outer = c.host_pid(inner)
        assert ct._cmdline(outer) == ["/usr/bin/sleep", "600"]
        assert ct._machine_of_cgroup(outer) == c.name
    # A live session's containers are not leftovers.
    ct.cleanup_leftovers()
    assert a.running() and b.running()
    b.stop()
    assert a.run(["systemctl", "is-active", "buildunits-sleeper"]).stdout == "active\n"
    assert a.run(["systemctl", "show", "-P", "MainPID", "buildunits-sleeper"]).stdout.strip() == str(pid_a)


HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
import container as ct
image = ct.Image()
assert image.ready(), "the image fixture builds it first"
cs = [ct.Container(image, ct.unique_name()).boot() for _ in range(2)]
print(" ".join("{} {} {}".format(c.name, c.nspawn.pid, c.pid) for c in cs), flush=True)
sys.stdin.read()  # until killed
"""


def test_cleanup_leftovers_stops_what_a_killed_run_left(image):
    # A run that boots two containers and is killed: one container's nspawn
    # is killed too (SIGKILL), the other's lives on without its owner.
    child = ct.subprocess.Popen([sys.executable, "-c", CHILD, HERE], stdin=ct.subprocess.PIPE,
                                stdout=ct.subprocess.PIPE, text=True)
    try:
        words = child.stdout.readline().split()
        assert len(words) == 6, "the child did not boot its containers"
        (name0, nspawn0, init0), (name1, nspawn1, init1) = [
            (words[i], int(words[i + 1]), int(words[i + 2])) for i in (0, 3)]
        os.kill(nspawn0, signal.SIGKILL)
        ct._wait(lambda: not ct._alive(nspawn0), 10, "the killed nspawn to exit")
        assert ct._alive(init0), "without its nspawn the container lives on"
        # While its owner lives, nothing of it is a leftover (another session's cleanup).
        done = ct.cleanup_leftovers()
        assert not [d for d in done if name0 in d or name1 in d], done
        assert ct._alive(init0) and ct._alive(nspawn1) and ct._alive(init1)
    finally:
        child.kill()
        child.wait()
        done = ct.cleanup_leftovers()  # also when the test failed above
    print("cleanup_leftovers: %s" % done)
    assert not ct._alive(init0) and not ct._alive(nspawn1) and not ct._alive(init1)
    assert _traces(name0) == [] and _traces(name1) == []
