"""The integration-test harness: real daemons, a private bus, real git.

Everything a test starts is its own: directories under tmp_path, a private
dbus-daemon with a system-bus-like configuration (never the machine's
/etc, /var or system bus), one NOTIFY_SOCKET per daemon process, and git
repositories isolated from the machine's and the user's git
configuration.  Nothing waits by sleeping: every wait polls for the event
it is about, with a deadline, and a timeout names what was awaited.

The pieces, usable without pytest (conftest.py wraps them as fixtures):

    wait_for(predicate, timeout=, what=)    poll until PREDICATE() is true
    PrivateBus(tmpdir)                      a dbus-daemon; .address, .env
    Monitor                                 dbus-monitor, collecting signals
    NotifyReader(path)                      a NOTIFY_SOCKET, collecting messages
    GitRepo / make_repo(path)               bare repository + work clone
    Daemons(tmp_path, bus)                  start/stop the project's programs

Timeouts can be stretched on a slow machine with
BUILDUNITS_TEST_TIMEOUT_SCALE (a factor, default 1).
"""

import collections
import json
import os
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import xml.etree.ElementTree as ET

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB_DIR = os.path.join(REPO_ROOT, "lib")
BIN_DIR = os.path.join(REPO_ROOT, "bin")
PYTHON = "/usr/bin/python3"
SYSTEM_CONF = "/usr/share/dbus-1/system.conf"
PROJECT_POLICY = os.path.join(REPO_ROOT, "units", "dbus", "org.buildunits.conf")
NO_BUS = "unix:path=/nonexistent"

if LIB_DIR not in sys.path:
    sys.path.insert(0, LIB_DIR)

from buildunits import records, results  # noqa: E402
from buildunits.spool import Spool  # noqa: E402
from buildunits.state import State  # noqa: E402

TIMEOUT_SCALE = float(os.environ.get("BUILDUNITS_TEST_TIMEOUT_SCALE", "1") or 1)
POLL_INTERVAL = 0.02


def scaled(timeout):
    return timeout * TIMEOUT_SCALE


class WaitTimeout(AssertionError):
    """A wait_for() deadline passed; the message names what was awaited."""


def wait_for(predicate, timeout=10.0, what=None, interval=POLL_INTERVAL, describe=None):
    """Poll PREDICATE() until it returns something true; return that value.

    Raises WaitTimeout naming WHAT (default: the predicate's name) after
    TIMEOUT seconds (times BUILDUNITS_TEST_TIMEOUT_SCALE).  DESCRIBE, a
    callable returning text, adds what was seen instead to the message.
    """
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            # One last look: the event may have come during the final interval.
            value = predicate()
            if value:
                return value
            msg = "timed out after %.1fs waiting for %s" % (
                timeout, what or getattr(predicate, "__name__", repr(predicate)))
            if describe is not None:
                try:
                    msg += "\n" + describe()
                except Exception as e:  # the description must not hide the timeout
                    msg += "\n(describe failed: %s)" % e
            raise WaitTimeout(msg)
        time.sleep(interval)


def short_dir(base, prefix="bu-"):
    """A directory for unix sockets under BASE, or in /tmp when BASE is too
    long for sun_path (108 bytes).  Returns (path, remove_at_teardown)."""
    cand = os.path.join(str(base), "run")
    if len(cand) + 24 < 100:
        os.makedirs(cand, exist_ok=True)
        return cand, False
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp"), True


# ------------------------------------------------------- process cleanup
#
# A daemon's children may leave its process group (the runner puts each
# build step in a session of its own, to kill it as a whole).  systemd
# would kill them with the unit's cgroup; here the harness finds them
# through /proc: the tree below a daemon, frozen with SIGSTOP so it cannot
# fork away while it is collected, then killed.  And since a daemon that
# exits orphans its children, the test process is made a child subreaper:
# orphans are reparented to it, and Daemons.close() kills and reaps those
# it did not start itself.

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper():
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: orphans are then left to init


def _proc_table():
    """{pid: (ppid, state)} of every process, read from /proc."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        out[int(name)] = (int(fields[1]), fields[0].decode())
    return out


def children_of(pid):
    return [p for p, (pp, _st) in _proc_table().items() if pp == pid]


def kill_tree(root):
    """SIGKILL ROOT and every process below it, freezing the tree first.
    Returns the pids killed."""
    seen = set()
    todo = {root}
    while todo:
        for p in todo:
            try:
                os.kill(p, signal.SIGSTOP)
            except (ProcessLookupError, PermissionError):
                pass
        seen |= todo
        table = _proc_table()
        todo = {p for p, (pp, st) in table.items() if pp in seen and p not in seen and st != "Z"}
    for p in seen:
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return seen


def _terminate(proc, timeout=5.0, group=True):
    """Stop PROC (and its process group): SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        _kill_group(proc, group)
        return proc.returncode
    try:
        proc.terminate()
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    _kill_group(proc, group)
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    return proc.wait()


def _kill_group(proc, group):
    if not group:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ====================================================================== D-Bus

def _current_user():
    return pwd.getpwuid(os.getuid()).pw_name


def system_like_config(listen_path, includedir, source=SYSTEM_CONF):
    """The text of a bus config with the policies of SOURCE (the machine's
    system.conf), listening on LISTEN_PATH, running as the current user in
    the foreground, and including only INCLUDEDIR."""
    tree = ET.parse(source)
    root = tree.getroot()
    dropped = {"user", "fork", "pidfile", "syslog", "servicehelper", "listen", "include",
               "includedir", "standard_system_servicedirs", "servicedir", "type"}
    for child in list(root):
        if not isinstance(child.tag, str) or child.tag in dropped:
            root.remove(child)
    elems = [("type", "system"), ("listen", "unix:path=%s" % listen_path)]
    for i, (tag, text) in enumerate(elems):
        e = ET.Element(tag)
        e.text = text
        e.tail = "\n  "
        root.insert(i, e)
    e = ET.SubElement(root, "includedir")
    e.text = includedir
    e.tail = "\n"
    return ('<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
            ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
            + ET.tostring(root, encoding="unicode") + "\n")


def stand_in_policy(user=None):
    """Stand-in for units/dbus/org.buildunits.conf while it does not exist:
    USER may own org.buildunits.*, everyone may call it."""
    user = user or _current_user()
    return textwrap.dedent("""\
        <!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
         "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
        <!-- test harness stand-in for units/dbus/org.buildunits.conf -->
        <busconfig>
          <policy user="%s">
            <allow own_prefix="org.buildunits"/>
          </policy>
          <policy context="default">
            <allow send_destination_prefix="org.buildunits"/>
            <allow receive_sender="org.buildunits"/>
          </policy>
        </busconfig>
        """) % user


def _monitor_policy(user):
    # Only the harness needs this (dbus-monitor when not root); system.conf
    # already grants it to root.
    return ('<busconfig><policy user="%s"><allow send_destination="org.freedesktop.DBus" '
            'send_interface="org.freedesktop.DBus.Monitoring"/></policy></busconfig>\n' % user)


class PrivateBus:
    """A dbus-daemon of type system on a socket of its own.

    .address   "unix:path=.../bus.sock"
    .env       {"DBUS_SYSTEM_BUS_ADDRESS": address}
    .policy_dir   the included directory (project policy or test policy)
    .uses_project_policy   whether units/dbus/org.buildunits.conf was used
    """

    def __init__(self, workdir, sockdir=None, policy=PROJECT_POLICY):
        """POLICY: the project's policy file to include; None (or a path
        that does not exist) includes the stand-in policy instead."""
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.sockdir = sockdir or self.workdir
        self.socket_path = os.path.join(self.sockdir, "bus.sock")
        self.policy_dir = os.path.join(self.workdir, "system.d")
        os.makedirs(self.policy_dir, exist_ok=True)
        self.uses_project_policy = bool(policy) and os.path.exists(policy)
        self.policy_source = policy if self.uses_project_policy else "(harness stand-in policy)"
        if self.uses_project_policy:
            shutil.copy(policy, os.path.join(self.policy_dir, os.path.basename(policy)))
        else:
            with open(os.path.join(self.policy_dir, "org.buildunits.test.conf"), "w") as f:
                f.write(stand_in_policy())
        if os.getuid() != 0:
            with open(os.path.join(self.policy_dir, "zz-harness-monitor.conf"), "w") as f:
                f.write(_monitor_policy(_current_user()))
        self.config_path = os.path.join(self.workdir, "bus.conf")
        with open(self.config_path, "w") as f:
            f.write(system_like_config(self.socket_path, self.policy_dir))
        self.log_path = os.path.join(self.workdir, "dbus-daemon.log")
        self.proc = None
        self.address = None
        self._monitors = []

    @property
    def env(self):
        return {"DBUS_SYSTEM_BUS_ADDRESS": self.address}

    def start(self, timeout=10.0):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["dbus-daemon", "--config-file=" + self.config_path, "--nofork", "--print-address"],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        _HARNESS_PROCS.append(self.proc)
        log.close()
        line = b""
        deadline = time.monotonic() + scaled(timeout)
        fd = self.proc.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise WaitTimeout("timed out waiting for dbus-daemon to print its address\n"
                                  + self.log())
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    rc = self.proc.wait()
                    raise RuntimeError("dbus-daemon exited (status %s) before printing its address:\n%s"
                                       % (rc, self.log()))
                line += chunk
        # "unix:path=...,guid=..." - keep the unix:path= form that .address documents.
        printed = line.decode().strip()
        if "path=%s" % self.socket_path not in printed:
            raise RuntimeError("dbus-daemon listens on %r, not on %s" % (printed, self.socket_path))
        self.address = "unix:path=%s" % self.socket_path
        self.printed_address = printed
        # dbus-daemon skips an included file it cannot parse, with a line on
        # stderr (written before it listens): the policy would silently be
        # missing, and every name request would be denied.  Say so instead.
        rejected = [ln for ln in self.log().splitlines()
                    if "while parsing" in ln and self.policy_dir in ln]
        if rejected:
            self.stop()
            raise RuntimeError("dbus-daemon rejected the policy file %s (it would be ignored):\n%s"
                               % (self.policy_source, "\n".join(rejected)))
        return self

    def log(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def pydbus(self):
        """A pydbus connection to this bus (not the cached system bus)."""
        import pydbus
        return pydbus.connect(self.address)

    def monitor(self, *matches, ready_timeout=10.0):
        """Start dbus-monitor for MATCHES (default: every signal under
        /org/buildunits); returns a Monitor already receiving."""
        m = Monitor(self, matches or (DEFAULT_MATCH,))
        self._monitors.append(m)
        m.start(ready_timeout)
        return m

    def stop(self):
        for m in self._monitors:
            m.stop()
        self._monitors = []
        if self.proc is not None:
            _terminate(self.proc)
            if self.proc.stdout:
                self.proc.stdout.close()


_HARNESS_PROCS = []  # the bus and monitor processes: not orphans to sweep


def _other_harness_pids():
    _HARNESS_PROCS[:] = [p for p in _HARNESS_PROCS if p.poll() is None]
    return {p.pid for p in _HARNESS_PROCS}


DEFAULT_MATCH = "type='signal',path_namespace='/org/buildunits'"
_PROBE_IFACE = "org.buildunits.TestHarness"
_PROBE_PATH = "/org/buildunits/TestHarness"

Signal = collections.namedtuple("Signal", "interface member args sender path")


class Monitor:
    """dbus-monitor --binary on a private bus, collecting signals in order.

    .signals           [Signal(interface, member, args, sender, path)]
    .members()         the member names in order
    .mark()            the current count, to wait for signals after it
    .wait_for_signal(member, args=None, timeout=10, start=0)

    Readiness is proven, not assumed: start() emits probe signals until
    the monitor has seen one, so nothing emitted afterwards can be missed.
    """

    def __init__(self, bus, matches):
        self.bus = bus
        self.matches = list(matches)
        self.signals = []
        self._lock = threading.Lock()
        self._probes = set()
        self.proc = None
        self._thread = None
        self.errors = []

    def start(self, ready_timeout=10.0):
        from gi.repository import Gio, GLib
        probe_match = "type='signal',interface='%s'" % _PROBE_IFACE
        self._stderr_path = os.path.join(self.bus.workdir, "dbus-monitor-%d.log" % id(self))
        err = open(self._stderr_path, "ab")
        self.proc = subprocess.Popen(
            ["dbus-monitor", "--address", self.bus.address, "--binary"] + self.matches + [probe_match],
            stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        _HARNESS_PROCS.append(self.proc)
        err.close()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        conn = Gio.DBusConnection.new_for_address_sync(
            self.bus.address,
            Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION,
            None, None)
        try:
            token = [0]

            def probed():
                if self.proc.poll() is not None:
                    raise RuntimeError("dbus-monitor exited (status %s): %s"
                                       % (self.proc.returncode, self._stderr()))
                with self._lock:
                    if self._probes:
                        return True
                token[0] += 1
                conn.emit_signal(None, _PROBE_PATH, _PROBE_IFACE, "Probe",
                                 GLib.Variant("(s)", ("probe-%d" % token[0],)))
                conn.flush_sync(None)
                return False

            wait_for(probed, timeout=ready_timeout, interval=0.05, what="dbus-monitor to receive",
                     describe=self._stderr)
        finally:
            conn.close_sync(None)
        return self

    def _stderr(self):
        try:
            with open(self._stderr_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def _read(self):
        from gi.repository import Gio
        buf = b""
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 16:
                try:
                    need = Gio.DBusMessage.bytes_needed(buf[:16])
                except Exception as e:
                    self.errors.append("cannot frame dbus-monitor output: %s" % e)
                    return
                if len(buf) < need:
                    break
                blob, buf = buf[:need], buf[need:]
                try:
                    msg = Gio.DBusMessage.new_from_blob(blob, Gio.DBusCapabilityFlags.UNIX_FD_PASSING)
                except Exception as e:
                    self.errors.append("cannot parse a message: %s" % e)
                    continue
                if msg.get_message_type() != Gio.DBusMessageType.SIGNAL:
                    continue
                body = msg.get_body()
                args = tuple(body.unpack()) if body is not None else ()
                sig = Signal(msg.get_interface(), msg.get_member(), args, msg.get_sender(), msg.get_path())
                with self._lock:
                    if sig.interface == _PROBE_IFACE:
                        self._probes.add(args)
                    elif sig.interface == "org.freedesktop.DBus" and sig.member in ("NameAcquired", "NameLost"):
                        pass  # addressed to dbus-monitor itself, not traffic
                    else:
                        self.signals.append(sig)

    def snapshot(self):
        with self._lock:
            return list(self.signals)

    def members(self):
        return [s.member for s in self.snapshot()]

    def mark(self):
        with self._lock:
            return len(self.signals)

    def find(self, member, args=None, start=0, interface=None):
        """Signals from index START named MEMBER whose args match ARGS: a
        callable(args) -> bool, or a tuple compared with the leading args."""
        out = []
        for s in self.snapshot()[start:]:
            if s.member != member or (interface and s.interface != interface):
                continue
            if args is not None:
                if callable(args):
                    if not args(s.args):
                        continue
                elif tuple(s.args[:len(args)]) != tuple(args):
                    continue
            out.append(s)
        return out

    def wait_for_signal(self, member, args=None, timeout=10.0, start=0, interface=None):
        """The first matching signal (see find()), waiting up to TIMEOUT."""
        def found():
            f = self.find(member, args, start, interface)
            return f[0] if f else None
        return wait_for(found, timeout=timeout, what="D-Bus signal %s%s" % (
            member, "" if args is None else " with args %s" % (
                getattr(args, "__name__", None) if callable(args) else repr(tuple(args)))),
            describe=lambda: "signals seen: %s" % self.describe())

    def describe(self):
        return "\n".join("  %s.%s%r" % (s.interface, s.member, s.args) for s in self.snapshot()) or "  (none)"

    def stop(self):
        if self.proc is not None:
            _terminate(self.proc, timeout=2)
            if self._thread:
                self._thread.join(5)
            self.proc.stdout.close()
            self.proc = None


# ============================================================ NOTIFY_SOCKET

class NotifyReader:
    """A NOTIFY_SOCKET: binds a datagram socket at PATH and collects what
    is sent to it, each datagram as one message string.

    A thread drains the socket continuously: a unix datagram socket whose
    queue is full blocks the sender, and a daemon blocked in sd_notify
    would look like a hang.
    """

    def __init__(self, path, name=""):
        self.path = path
        self.name = name
        self.messages = []
        self.arrivals = []
        self._lock = threading.Lock()
        self._closed = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode("latin-1"))
                self.arrivals.append(time.time())   # when each message came (benchmarks)

    def snapshot(self):
        with self._lock:
            return list(self.messages)

    def lines(self, start=0):
        """Every KEY=VALUE line of every message from index START, in order."""
        return [ln for m in self.snapshot()[start:] for ln in m.split("\n") if ln]

    def has(self, line, start=0):
        return line in self.lines(start)

    def statuses(self, start=0):
        return [ln[len("STATUS="):] for ln in self.lines(start) if ln.startswith("STATUS=")]

    def status(self):
        """The latest STATUS= text, or None."""
        s = self.statuses()
        return s[-1] if s else None

    def mark(self):
        with self._lock:
            return len(self.messages)

    def wait_for(self, predicate, timeout=10.0, what=None, start=0):
        """Wait until PREDICATE(messages from START) is true; return its value."""
        return wait_for(lambda: predicate(self.snapshot()[start:]), timeout=timeout,
                        what=what or "notify messages%s" % (" from " + self.name if self.name else ""),
                        describe=self.describe)

    def wait_line(self, line, timeout=10.0, start=0):
        """Wait for a message containing the line LINE (e.g. "READY=1")."""
        return self.wait_for(lambda msgs: any(line in m.split("\n") for m in msgs), timeout=timeout,
                             what="%s on NOTIFY_SOCKET%s" % (line, " of " + self.name if self.name else ""),
                             start=start)

    def describe(self):
        return "notify messages%s:\n%s" % (" of " + self.name if self.name else "",
                                           "\n".join("  %r" % m for m in self.snapshot()) or "  (none)")

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._thread.join(2)
        # What the process sent before it exited is still queued: keep it.
        self.sock.setblocking(False)
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                break
            with self._lock:
                self.messages.append(data.decode("latin-1"))
                self.arrivals.append(time.time())
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


# ====================================================================== git

def git_env(extra=None):
    """The environment for git: no system or global configuration."""
    env = dict(os.environ)
    env.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
                "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
    for k in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"):
        env.pop(k, None)
    env.update(extra or {})
    return env


def git(*args, cwd=None, check=True, env=None):
    """Run git; return its stdout, stripped.  Raises with stderr on failure."""
    p = subprocess.run(["git"] + list(args), cwd=cwd, env=git_env(env), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and p.returncode != 0:
        raise RuntimeError("git %s (in %s) failed with status %d:\n%s%s"
                           % (" ".join(args), cwd, p.returncode, p.stdout, p.stderr))
    return p.stdout.strip()


class GitRepo:
    """A bare repository (what a builder's Repository= names) and a work
    clone to commit from.

    .bare   path of the bare repository
    .work   path of the work tree
    .url    same as .bare
    """

    def __init__(self, bare, work, branch):
        self.bare = str(bare)
        self.work = str(work)
        self.url = self.bare
        self.default_branch = branch
        self._tick = 0

    def git(self, *args, check=True):
        return git(*args, cwd=self.work, check=check)

    def commit(self, files, message="change", branch=None, push=True, author=None):
        """Write FILES ({path: str | bytes | None to delete}) on BRANCH
        (default: the default branch; created from the current one if new),
        commit, push unless push=False; return the new commit's sha."""
        branch = branch or self.default_branch
        current = self.git("symbolic-ref", "--short", "HEAD")
        if current != branch:
            if self.git("rev-parse", "--verify", "--quiet", "refs/heads/" + branch, check=False):
                self.git("checkout", "-q", branch)
            else:
                self.git("checkout", "-q", "-b", branch)
        for path, content in files.items():
            full = os.path.join(self.work, path)
            if content is None:
                self.git("rm", "-q", "-f", "--", path)
                continue
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            self.git("add", "--", path)
        args = ["commit", "-q", "--allow-empty", "-m", message]
        if author:
            args += ["--author", author]
        self.git(*args)
        sha = self.git("rev-parse", "HEAD")
        if push:
            self.push(branch)
        return sha

    def push(self, branch=None, force=False):
        """Push BRANCH (default: every local branch) to the bare repository."""
        refspec = ("refs/heads/%s:refs/heads/%s" % (branch, branch)) if branch else "refs/heads/*:refs/heads/*"
        self.git("push", "-q", "origin", ("+" if force else "") + refspec)

    def delete_branch(self, branch):
        """Delete BRANCH in the bare repository (the work clone keeps it)."""
        self.git("push", "-q", "origin", ":refs/heads/" + branch)

    def head(self, branch=None):
        """The sha BRANCH points to in the bare repository, or None."""
        out = git("rev-parse", "--verify", "--quiet", "refs/heads/" + (branch or self.default_branch),
                  cwd=self.bare, check=False)
        return out or None

    def ls_remote(self):
        """{ref: sha} as `git ls-remote` of the bare repository shows it."""
        out = git("ls-remote", self.bare)
        refs = {}
        for line in out.splitlines():
            sha, ref = line.split("\t", 1)
            refs[ref] = sha
        return refs


def make_repo(path, branch="main", work=None, user="Test Harness", email="harness@example.invalid"):
    """Create a bare repository at PATH and a work clone beside it
    (PATH minus ".git" plus ".work"), with no commits; return a GitRepo."""
    path = str(path)
    work = str(work) if work else re.sub(r"\.git$", "", path.rstrip("/")) + ".work"
    git("-c", "init.defaultBranch=" + branch, "init", "-q", "--bare", path)
    git("-c", "init.defaultBranch=" + branch, "init", "-q", work)
    for cwd in (path, work):
        git("config", "user.name", user, cwd=cwd)
        git("config", "user.email", email, cwd=cwd)
    git("symbolic-ref", "HEAD", "refs/heads/" + branch, cwd=path)
    git("symbolic-ref", "HEAD", "refs/heads/" + branch, cwd=work)
    git("remote", "add", "origin", path, cwd=work)
    return GitRepo(path, work, branch)


# ================================================================== daemons

PROGRAMS = {
    "poller": "buildunits-poller",
    "scheduler": "buildunits-scheduler",
    "runner": "buildunits-runner",
    "htmlgen": "buildunits-htmlgen",
}


def build_is_finished(rec):
    """A build record is final when its "result" is a result word (not
    running/queued) and its "state", if it has one, is not running/queued.
    (The harness's reading of the build format; see docs for the format.)"""
    return bool(rec) and results.is_result(rec.get("result")) and rec.get("state") not in (
        results.RUNNING, results.QUEUED)


class DaemonProcess:
    """One run of one program: .key, .proc, .pid, .notify, .log_path, .argv."""

    def __init__(self, key, argv, proc, notify, log_path, instance):
        self.key = key
        self.argv = argv
        self.proc = proc
        self.pid = proc.pid
        self.notify = notify
        self.log_path = log_path
        self.instance = instance

    @property
    def returncode(self):
        return self.proc.poll()

    def running(self):
        return self.proc.poll() is None


class Daemons:
    """The project's programs, run from this checkout against one test's
    directories.

    Keys: a daemon is known by its program name ("poller", "scheduler",
    "htmlgen") or, with arguments, NAME@ARG ("runner@w1"), like systemd's
    template instances; start("runner@w1") is start("runner", "w1").
    """

    def __init__(self, tmp_path, bus=None, sockdir=None):
        self.tmp_path = str(tmp_path)
        self.root = os.path.join(self.tmp_path, "bu")
        self.config_dir = os.path.join(self.root, "config")
        self.spool_dir = os.path.join(self.root, "spool")
        self.state_dir = os.path.join(self.root, "state")
        self.site_dir = os.path.join(self.root, "site")
        self.logs_dir = os.path.join(self.tmp_path, "logs")
        self.home = os.path.join(self.tmp_path, "home")
        for d in (os.path.join(self.config_dir, "builders"), self.logs_dir, self.home):
            os.makedirs(d, exist_ok=True)
        self.bus = bus
        if sockdir is None:
            sockdir, self._remove_sockdir = short_dir(self.tmp_path)
        else:
            self._remove_sockdir = False
        self.sockdir = sockdir
        self.spool = Spool(self.spool_dir)
        self.state = State(self.state_dir)
        self.procs = {}       # key -> current DaemonProcess
        self.history = []     # every DaemonProcess ever started, in order
        become_subreaper()
        self._children_before = set(children_of(os.getpid()))
        self._instances = collections.Counter()
        self._nsock = 0

    # ------------------------------------------------------------ plumbing
    def dir_args(self):
        return ["--config-dir", self.config_dir, "--spool-dir", self.spool_dir,
                "--state-dir", self.state_dir, "--site-dir", self.site_dir]

    def env(self, bus=True, extra=None):
        """The environment of a program: this test's directories, HOME and
        git isolated, the private bus (bus=False: a bus that does not exist)."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("BUILDUNITS_", "NOTIFY_SOCKET", "WATCHDOG_", "DBUS_", "LISTEN_",
                                    "INVOCATION_ID", "JOURNAL_STREAM", "GIT_"))}
        env.update({
            "PYTHONPATH": LIB_DIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": self.home,
            "LANG": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1",
            "BUILDUNITS_CONFIG_DIR": self.config_dir,
            "BUILDUNITS_SPOOL_DIR": self.spool_dir,
            "BUILDUNITS_STATE_DIR": self.state_dir,
            "BUILDUNITS_SITE_DIR": self.site_dir,
        })
        use_bus = self.bus is not None and bus
        env["DBUS_SYSTEM_BUS_ADDRESS"] = self.bus.address if use_bus else NO_BUS
        env.update(extra or {})
        return env

    @staticmethod
    def _split_key(name, args):
        if "@" in name:
            name, arg = name.split("@", 1)
            args = (arg,) + tuple(args)
        args = tuple(str(a) for a in args)
        return name, args, (name + "@" + args[0]) if args else name

    def _key(self, name):
        if name in self.procs:
            return name
        raise KeyError("no daemon %r was started (known: %s)" % (name, ", ".join(self.procs) or "none"))

    # ----------------------------------------------------------- lifecycle
    def start(self, name, *args, wait_ready=True, bus=True, env=None, timeout=30.0, options=(),
              program=None):
        """Start program NAME with ARGS (after the directory options and
        OPTIONS); wait for READY=1 unless wait_ready=False.  If it exits
        first, raise with its log.  Returns the DaemonProcess.  PROGRAM
        (a path) runs instead of bin/buildunits-NAME (the harness's own
        tests use it)."""
        name, args, key = self._split_key(name, args)
        if program is None and name not in PROGRAMS:
            raise ValueError("unknown program %r (one of %s)" % (name, ", ".join(PROGRAMS)))
        if key in self.procs and self.procs[key].running():
            raise RuntimeError("%s is already running (pid %d)" % (key, self.procs[key].pid))
        path = program or os.path.join(BIN_DIR, PROGRAMS[name])
        if not os.path.exists(path):
            raise FileNotFoundError("%s does not exist in this checkout" % path)
        self._instances[key] += 1
        n = self._instances[key]
        self._nsock += 1
        notify = NotifyReader(os.path.join(self.sockdir, "n%d.sock" % self._nsock), name="%s#%d" % (key, n))
        log_path = os.path.join(self.logs_dir, "%s.%d.log" % (key, n))
        argv = [PYTHON, path] + self.dir_args() + list(options) + list(args)
        e = self.env(bus=bus, extra=env)
        e["NOTIFY_SOCKET"] = notify.path
        with open(log_path, "ab") as log:
            log.write(("$ %s\n" % " ".join(argv)).encode())
            log.flush()
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=e, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        d = DaemonProcess(key, argv, proc, notify, log_path, n)
        d.program, d.args = name, args
        d.start_options = dict(bus=bus, env=env, options=options, program=program)
        self.procs[key] = d
        self.history.append(d)
        if wait_ready:
            self.wait_ready(key, timeout=timeout)
        return d

    def wait_ready(self, name, timeout=30.0, start=0):
        """Wait for READY=1 (in messages from index START) from NAME's
        current process; raise with its log if it exits first."""
        d = self.procs[self._key(name)]

        def ready():
            if d.notify.has("READY=1", start):
                return True
            if d.proc.poll() is not None:
                # It may have said READY=1 just before exiting; look once more.
                if d.notify.has("READY=1", start):
                    return True
                raise RuntimeError("%s exited with status %s before READY=1\n%s\n--- log ---\n%s"
                                   % (d.key, d.proc.returncode, d.notify.describe(), self.log(d.key, -1)))
            return False

        return wait_for(ready, timeout=timeout, what="READY=1 from %s" % d.key,
                        describe=lambda: "%s\n--- log ---\n%s" % (d.notify.describe(), self.log(d.key, -1)))

    def notify(self, name):
        """The NotifyReader of NAME's current process."""
        return self.procs[self._key(name)].notify

    def pid(self, name):
        return self.procs[self._key(name)].pid

    def running(self, name):
        return name in self.procs and self.procs[name].running()

    def signal(self, name, sig):
        os.kill(self.procs[self._key(name)].pid, sig)

    def reload(self, name, wait_ready=True, timeout=30.0):
        """SIGHUP; wait for the READY=1 that ends the reload."""
        d = self.procs[self._key(name)]
        start = d.notify.mark()
        os.kill(d.pid, signal.SIGHUP)
        if wait_ready:
            self.wait_ready(name, timeout=timeout, start=start)

    def stop(self, name, timeout=30.0):
        """SIGTERM and wait for the exit; return the exit status."""
        d = self.procs[self._key(name)]
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGTERM)
        try:
            rc = d.proc.wait(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            self._cleanup(d)
            raise WaitTimeout("%s did not exit within %.0fs of SIGTERM\n--- log ---\n%s"
                              % (d.key, scaled(timeout), self.log(d.key, -1)))
        self._cleanup(d)
        return rc

    def kill(self, name, group=True):
        """SIGKILL (a crash).  group=True also kills every process below it,
        in its process group or not, as systemd kills a unit's cgroup when
        its main process dies; group=False leaves them running (until
        teardown).  Returns the exit status."""
        d = self.procs[self._key(name)]
        if group:
            kill_tree(d.pid)
            _kill_group(d.proc, True)
        else:
            try:
                d.proc.kill()
            except ProcessLookupError:
                pass
        rc = d.proc.wait()
        if not group:
            d.notify.close()
        else:
            self._cleanup(d)
        return rc

    def wait_exit(self, name, timeout=30.0):
        """Wait for NAME to exit by itself; return its exit status."""
        d = self.procs[self._key(name)]
        try:
            rc = d.proc.wait(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            raise WaitTimeout("timed out after %.0fs waiting for %s to exit\n--- log ---\n%s"
                              % (scaled(timeout), d.key, self.log(d.key, -1)))
        self._cleanup(d)
        return rc

    def restart(self, name, wait_ready=True, kill=False, timeout=30.0):
        """Stop (or kill=True: SIGKILL) and start again with the same arguments."""
        d = self.procs[self._key(name)]
        if kill:
            self.kill(name)
        else:
            self.stop(name, timeout=timeout)
        return self.start(d.program, *d.args, wait_ready=wait_ready, timeout=timeout, **d.start_options)

    def _cleanup(self, d):
        _kill_group(d.proc, True)  # children left behind by the daemon
        d.notify.close()

    def close(self):
        """Kill everything still running: each daemon with every process
        below it, then the orphans they left (reparented to this process,
        the subreaper), which are also reaped."""
        for d in self.history:
            if d.proc.poll() is None:
                kill_tree(d.pid)
                d.proc.wait()
            _kill_group(d.proc, True)
            d.notify.close()
        me = os.getpid()
        ours = self._children_before | _other_harness_pids()
        for pid in children_of(me):
            if pid not in ours:
                kill_tree(pid)
        for pid in children_of(me):
            if pid not in ours:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        if self._remove_sockdir:
            shutil.rmtree(self.sockdir, ignore_errors=True)

    # ----------------------------------------------------------------- logs
    def log(self, name, instance=None):
        """The output of NAME: every run concatenated (instance=None), or
        one run (1 is the first, -1 the latest)."""
        runs = [d for d in self.history if d.key == name]
        if not runs:
            raise KeyError("no daemon %r was started" % name)
        if instance is not None:
            runs = [runs[instance - 1 if instance > 0 else instance]]
        out = []
        for d in runs:
            try:
                with open(d.log_path, encoding="utf-8", errors="replace") as f:
                    out.append(f.read())
            except FileNotFoundError:
                pass
        return "".join(out)

    def all_logs(self):
        """Every run's log with a header, for failure reports."""
        out = []
        for d in self.history:
            rc = d.proc.poll()
            out.append("===== %s (run %d, pid %d, %s) =====\n%s%s" % (
                d.key, d.instance, d.pid, "running" if rc is None else "exit status %s" % rc,
                self.log(d.key, d.instance), d.notify.describe() + "\n"))
        return "\n".join(out)

    # ------------------------------------------------------------------ cli
    def cli(self, *args, check=False, bus=True, env=None, input=None, timeout=60.0):
        """Run `bin/buildunits DIR-OPTIONS ARGS`; the CompletedProcess (text)."""
        argv = [PYTHON, os.path.join(BIN_DIR, "buildunits")] + self.dir_args() + [str(a) for a in args]
        p = subprocess.run(argv, cwd=REPO_ROOT, env=self.env(bus=bus, extra=env), input=input,
                           stdin=None if input is not None else subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=scaled(timeout))
        if check and p.returncode != 0:
            raise AssertionError("buildunits %s exited with status %d\nstdout:\n%s\nstderr:\n%s"
                                 % (" ".join(map(str, args)), p.returncode, p.stdout, p.stderr))
        return p

    # --------------------------------------------------------------- config
    def write_config_file(self, relpath, text):
        path = os.path.join(self.config_dir, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        text = textwrap.dedent(text).lstrip("\n")
        tmp = path + ".harness-tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.rename(tmp, path)  # daemons never see half a file
        return path

    def write_builder(self, name, text):
        """Write CONFIG/builders/NAME.builder (TEXT is dedented)."""
        return self.write_config_file(os.path.join("builders", name + ".builder"), text)

    def write_dropin(self, name, conf, text):
        """Write CONFIG/builders/NAME.builder.d/CONF.conf."""
        return self.write_config_file(os.path.join("builders", name + ".builder.d", conf + ".conf"), text)

    def write_global(self, text):
        """Write CONFIG/buildunits.conf."""
        return self.write_config_file("buildunits.conf", text)

    def remove_builder(self, name):
        os.unlink(os.path.join(self.config_dir, "builders", name + ".builder"))

    # --------------------------------------------------------------- state
    def read_build(self, builder, number):
        """The build record (build.json, with a running build's progress
        lines applied: State.read_build), or None."""
        return self.state.read_build(builder, number)

    def builds(self, builder):
        """The build numbers of BUILDER, ascending (empty ones included)."""
        return self.state.build_numbers(builder)

    def wait_build(self, builder, number, timeout=30.0):
        """Wait until build BUILDER #NUMBER has a record; return it."""
        return wait_for(lambda: self.read_build(builder, number), timeout=timeout,
                        what="build %s #%s to be recorded" % (builder, number),
                        describe=self._describe_builds)

    def wait_build_finished(self, builder, number, timeout=60.0):
        """Wait until the record of BUILDER #NUMBER is final; return it."""
        def done():
            rec = self.read_build(builder, number)
            return rec if build_is_finished(rec) else None
        return wait_for(done, timeout=timeout, what="build %s #%s to finish" % (builder, number),
                        describe=self._describe_builds)

    def wait_site_finished(self, builder, number, timeout=30.0):
        """Wait until the site shows BUILDER #NUMBER (or a later build) as
        its last finished build, the way docs/site.md tells scripts to:
        api/builders.json is the last file of every update."""
        path = os.path.join(self.site_dir, "api", "builders.json")

        def shown():
            try:
                with open(path, encoding="utf-8") as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                return None
            for b in doc.get("builders", []):
                last = b.get("last") or {}
                if b.get("name") == builder and last.get("number", 0) >= number:
                    return doc
            return None
        return wait_for(shown, timeout=timeout, what="the site to show %s #%d finished" % (builder, number))

    def step_log(self, builder, number, step):
        """The text of STEP's log in build BUILDER #NUMBER, or None."""
        d = self.state.build_dir(builder, number)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return None
        for n in sorted(names):
            if re.match(r"^\d+-%s\.log$" % re.escape(step), n):
                with open(os.path.join(d, n), encoding="utf-8", errors="replace") as f:
                    return f.read()
        return None

    def _describe_builds(self):
        out = []
        for b in self.state.builders():
            for n in self.builds(b):
                try:
                    rec = self.read_build(b, n)
                except Exception as e:
                    rec = "unreadable: %s" % e
                if isinstance(rec, dict):
                    rec = "result=%r state=%r" % (rec.get("result"), rec.get("state"))
                out.append("  %s #%d: %s" % (b, n, rec))
        return "builds in state:\n" + ("\n".join(out) or "  (none)") + "\nprocesses:\n" + "\n".join(
            "  %s: %s" % (k, "running" if d.running() else "exited %s" % d.returncode)
            for k, d in self.procs.items())
