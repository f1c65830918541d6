"""A private dbus-daemon of type system, and a monitor of its signals.

Never the machine's system bus: the daemon runs as the current user on a
socket of its own, with the policies of the machine's system.conf and the
project's own units/dbus/org.buildunits.conf (or a stand-in).
"""

import collections
import os
import pwd
import select
import shutil
import subprocess
import textwrap
import threading
import time
import xml.etree.ElementTree as ET

from . import REPO_ROOT
from .procs import OWN_PROCS, terminate
from .wait import WaitTimeout, scaled, wait_for

SYSTEM_CONF = "/usr/share/dbus-1/system.conf"
PROJECT_POLICY = os.path.join(REPO_ROOT, "units", "dbus", "org.buildunits.conf")
NO_BUS = "unix:path=/nonexistent"


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
        OWN_PROCS.append(self.proc)
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
            terminate(self.proc)
            if self.proc.stdout:
                self.proc.stdout.close()


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
        OWN_PROCS.append(self.proc)
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
            terminate(self.proc, timeout=2)
            if self._thread:
                self._thread.join(5)
            self.proc.stdout.close()
            self.proc = None
