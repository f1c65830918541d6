"""The transient-unit executor: each step a systemd unit of its own.

The second implementation of the executor seam (executor.py), used when
the runner runs under systemd.  start() is systemd's StartTransientUnit
(the call systemd-run makes) of a service named after the step,

    buildunits-build-BUILDER-NUMBER-STEP.service

(BUILDER and STEP escaped as systemd escapes unit names, unit_name()),
with the log file's descriptor handed over as its standard output and
error: output still goes straight to disk.  The step runs as USER
(buildunits-build) with a sandbox that costs a build nothing
(SANDBOX: PrivateTmp=, ProtectHome=, NoNewPrivileges=, ProtectSystem=strict
with the work directory in ReadWritePaths=).  The whole tree is the unit:
KillMode=control-group, so what a step leaves running (setsid, a double
fork) is stopped by systemd when its main process ends, and StopUnit is
SIGTERM to the cgroup, TimeoutStopSec= (the runner's grace), SIGKILL.

The end comes from the unit's PropertiesChanged signals (and a poll, in
case one is missed): once the unit is inactive or failed, ExecMainCode and
ExecMainStatus are the exit status (CLD_EXITED: the code; killed or
dumped: -SIGNAL).  The unit is pinned (AddRef=) until the runner has read
them, then garbage-collected (CollectMode=inactive-or-failed).

The units outlive a runner killed with SIGKILL; each carries the build's
token in its environment (BUILDUNITS_BUILD_TOKEN, as local steps do), and
leftovers() lists the buildunits-build-* units holding it.

The runner's rights to do this are a polkit rule
(units/polkit-1/rules.d/buildunits.rules): user buildunits may start, stop
and kill units named buildunits-build-*, and nothing else.
"""

import os
import signal
import time

from gi.repository import Gio, GLib

from . import proctree

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = SYSTEMD + ".Manager"
UNIT = SYSTEMD + ".Unit"
SERVICE = SYSTEMD + ".Service"
PROPERTIES = "org.freedesktop.DBus.Properties"
PREFIX = "buildunits-build-"
USER = "buildunits-build"
CALL_TIMEOUT_MS = 10000
POLL_SEC = 1.0
CLD_EXITED = 1
ENDED = ("inactive", "failed")
# The sandbox every step gets (the work directory is added to ReadWritePaths=).
SANDBOX = (
    ("PrivateTmp", GLib.Variant("b", True)),
    ("ProtectHome", GLib.Variant("s", "yes")),
    ("NoNewPrivileges", GLib.Variant("b", True)),
    ("ProtectSystem", GLib.Variant("s", "strict")),
)
# Files a step creates are its group's (buildunits-build, of which the
# runner's user is a member) so the runner can clean the work directory.
UMASK = 0o007


def unit_escape(text):
    """TEXT escaped as systemd-escape does: [A-Za-z0-9:_.] kept (a leading
    dot escaped), "/" becomes "-", every other byte \\xNN.

    >>> unit_escape("hello")
    'hello'
    >>> unit_escape("my-lib")
    'my\\\\x2dlib'
    >>> unit_escape(".x y")
    '\\\\x2ex\\\\x20y'
    """
    out = []
    for i, b in enumerate(text.encode()):
        c = chr(b)
        if c == "/":
            out.append("-")
        elif (c.isascii() and c.isalnum()) or c in ":_" or (c == "." and i > 0):
            out.append(c)
        else:
            out.append("\\x%02x" % b)
    return "".join(out)


def unit_name(spec):
    """The unit of step SPEC: buildunits-build-BUILDER-NUMBER-STEP.service.

    >>> from buildunits.executor import StepSpec
    >>> unit_name(StepSpec("hello", 42, "test", "t"))
    'buildunits-build-hello-42-test.service'
    """
    return "%s%s-%d-%s.service" % (PREFIX, unit_escape(spec.builder), spec.number, unit_escape(spec.step))


def object_path(unit):
    """systemd's object path of UNIT (sd_bus's label escaping)."""
    return MANAGER_PATH + "/unit/" + "".join(
        chr(b) if chr(b).isascii() and chr(b).isalnum() else "_%02x" % b for b in unit.encode())


def exit_code(code, status):
    """The step's exit status from ExecMainCode and ExecMainStatus:
    the code, or -SIGNAL when it was killed (or dumped core).

    >>> exit_code(1, 3), exit_code(2, 15), exit_code(3, 11)
    (3, -15, -11)
    """
    return status if code == CLD_EXITED else -status


def share_with_step_user(path, user):
    """PATH (the step's directory, made by the runner) writable by the step
    user's group, of which the runner's user is a member.  What the step
    creates is that group's (the step's primary group) and, with UMASK,
    group-writable: the runner can still clean the work directory.  (No
    setgid bit: the runner runs with RestrictSUIDSGID=, and needs none.)"""
    import grp
    gid = grp.getgrnam(user).gr_gid
    st = os.stat(path)
    if st.st_gid != gid:
        os.chown(path, -1, gid)
    if st.st_mode & 0o7777 != 0o770:
        os.chmod(path, 0o770)


class TransientUnitExecutor:
    """Steps as transient systemd units, started over the system bus."""

    name = "transient"

    def __init__(self, grace=5, user=USER, connection=None):
        self.grace = grace
        self.user = user
        self._conn = connection

    @property
    def conn(self):
        if self._conn is None:
            self._conn = Gio.bus_get_sync(Gio.BusType.SYSTEM, None)
        return self._conn

    def call(self, method, args, reply, path=MANAGER_PATH, interface=MANAGER, fds=None):
        if fds is None:
            return self.conn.call_sync(SYSTEMD, path, interface, method, args, GLib.VariantType(reply),
                                       Gio.DBusCallFlags.NONE, CALL_TIMEOUT_MS, None).unpack()
        res, _ = self.conn.call_with_unix_fd_list_sync(SYSTEMD, path, interface, method, args,
                                                      GLib.VariantType(reply), Gio.DBusCallFlags.NONE,
                                                      CALL_TIMEOUT_MS, fds, None)
        return res.unpack()

    def get(self, unit, interface, prop):
        try:
            return self.call("Get", GLib.Variant("(ss)", (interface, prop)), "(v)", path=object_path(unit),
                             interface=PROPERTIES)[0]
        except GLib.Error:
            return None     # no longer loaded

    def refusal(self, name):
        """Why this executor cannot run steps here, or None: a transient
        unit NAME (buildunits-build-*) running /bin/true as the step user
        is started, the proof that systemd answers and grants the right."""
        props = [("Description", GLib.Variant("s", "buildunits: may this runner start build units?")),
                 ("ExecStart", GLib.Variant("a(sasb)", [("/bin/true", ["/bin/true"], False)])),
                 ("CollectMode", GLib.Variant("s", "inactive-or-failed"))]
        if self.user:
            props.append(("User", GLib.Variant("s", self.user)))
        try:
            self.call("StartTransientUnit", GLib.Variant("(ssa(sv)a(sa(sv)))", (name, "replace", props, [])), "(o)")
        except GLib.Error as e:
            return e.message
        return None

    def prepare(self):
        try:
            self.call("Subscribe", None, "()")
        except GLib.Error as e:
            return "cannot subscribe to systemd's signals (%s); step ends are polled" % e.message
        return None

    def properties(self, spec, argv, env, cwd):
        env = dict(env)
        env[proctree.TOKEN_VARIABLE] = spec.token
        props = [
            ("Description", GLib.Variant("s", "buildunits %s #%d step %s" % (spec.builder, spec.number, spec.step))),
            ("Type", GLib.Variant("s", "exec")),
            ("ExecStart", GLib.Variant("a(sasb)", [(argv[0], list(argv), False)])),
            ("WorkingDirectory", GLib.Variant("s", cwd)),
            ("Environment", GLib.Variant("as", ["%s=%s" % kv for kv in sorted(env.items())])),
            ("StandardInput", GLib.Variant("s", "null")),
            ("StandardOutputFileDescriptor", GLib.Variant("h", 0)),
            ("StandardErrorFileDescriptor", GLib.Variant("h", 0)),
            ("KillMode", GLib.Variant("s", "control-group")),
            ("TimeoutStopUSec", GLib.Variant("t", int(self.grace * 1e6))),
            ("RemainAfterExit", GLib.Variant("b", False)),
            ("CollectMode", GLib.Variant("s", "inactive-or-failed")),
            ("AddRef", GLib.Variant("b", True)),
            ("UMask", GLib.Variant("u", UMASK)),
        ]
        if self.user:
            props += [("User", GLib.Variant("s", self.user)),
                      ("Group", GLib.Variant("s", self.user))]
        props += list(SANDBOX)
        # The whole work directory, of which CWD may be a subdirectory.
        props.append(("ReadWritePaths", GLib.Variant("as", [env.get("BUILDUNITS_WORKDIR") or cwd])))
        return props

    def start(self, spec, argv, env, cwd, log_fd, on_exit):
        unit = unit_name(spec)
        if self.user:
            share_with_step_user(env.get("BUILDUNITS_WORKDIR") or cwd, self.user)
        step = UnitStep(self, unit, log_fd, on_exit)
        fds = Gio.UnixFDList.new()
        fds.append(log_fd)
        args = GLib.Variant("(ssa(sv)a(sa(sv)))", (unit, "fail", self.properties(spec, argv, env, cwd), []))
        try:
            self.call("StartTransientUnit", args, "(o)", fds=fds)
        except GLib.Error as e:
            step.detach()
            raise OSError(0, "cannot start unit %s: %s" % (unit, e.message))
        step.started()
        return step

    # ----------------------------------------------------------- leftovers
    def units(self):
        """[(unit, active state)] of every loaded buildunits-build-* unit."""
        found = self.call("ListUnitsByPatterns", GLib.Variant("(asas)", ([], [PREFIX + "*"])),
                          "(a(ssssssouso))")[0]
        return [(u[0], u[3]) for u in found]

    def leftovers(self, token):
        tag = "%s=%s" % (proctree.TOKEN_VARIABLE, token)
        return [u for u, state in self.units()
                if state not in ENDED and tag in (self.get(u, SERVICE, "Environment") or [])]

    def end_leftovers(self, token, grace):
        units = self.leftovers(token)
        for u in units:
            try:
                self.call("StopUnit", GLib.Variant("(ss)", (u, "replace")), "(o)")
            except GLib.Error:
                pass
        deadline = time.monotonic() + 2 * grace + 1
        while units and time.monotonic() < deadline:
            time.sleep(0.1)
            units = [u for u in units if (self.get(u, UNIT, "ActiveState") or "inactive") not in ENDED]
        return units


class UnitStep:
    """One step started by TransientUnitExecutor: the unit UNIT."""

    def __init__(self, executor, unit, log_fd, on_exit):
        self.ex = executor
        self.unit = self.identity = unit
        self.pid = None
        self._log_fd = log_fd
        self._on_exit = on_exit
        self.returncode = None
        self._sub = executor.conn.signal_subscribe(
            SYSTEMD, PROPERTIES, "PropertiesChanged", object_path(unit), None,
            Gio.DBusSignalFlags.NONE, lambda *a: self._check(), None)
        self._poll = None

    def started(self):
        pid = self.ex.get(self.unit, SERVICE, "MainPID")
        self.pid = pid or None
        self._poll = GLib.timeout_add(int(POLL_SEC * 1000), self._check_timer)
        self._check()

    def _check_timer(self):
        self._check()
        return self._poll is not None

    def _status(self):
        """The exit status once the unit has ended, else None."""
        state = self.ex.get(self.unit, UNIT, "ActiveState")
        if state is not None and state not in ENDED:
            return None
        code = self.ex.get(self.unit, SERVICE, "ExecMainCode")
        status = self.ex.get(self.unit, SERVICE, "ExecMainStatus")
        if state is None or not code:
            return -1           # gone, or never ran: the status is unknown
        return exit_code(code, status)

    def _check(self):
        if self._sub is None or self.returncode is not None:
            return
        code = self._status()
        if code is None:
            return
        self.returncode = code
        self.detach()
        self._unref()
        self._on_exit(code)

    def _unref(self):
        try:
            self.ex.call("Unref", None, "()", path=object_path(self.unit), interface=UNIT)
        except GLib.Error:
            pass

    def detach(self):
        if self._sub is not None:
            self.ex.conn.signal_unsubscribe(self._sub)
            self._sub = None
        if self._poll is not None:
            GLib.source_remove(self._poll)
            self._poll = None

    def stop(self, grace):
        if self.returncode is not None:
            return
        self._note("buildunits: stopping %s (SIGTERM to its processes, SIGKILL %ds later)\n" % (self.unit, grace))
        try:
            self.ex.call("StopUnit", GLib.Variant("(ss)", (self.unit, "replace")), "(o)")
        except GLib.Error:
            pass

    def kill(self):
        self.detach()
        try:
            self.ex.call("KillUnit", GLib.Variant("(ssi)", (self.unit, "all", signal.SIGKILL)), "()")
        except GLib.Error:
            pass
        self._unref()

    def halt(self, grace):
        self.detach()
        try:
            self.ex.call("StopUnit", GLib.Variant("(ss)", (self.unit, "replace")), "(o)")
        except GLib.Error:
            pass
        deadline = time.monotonic() + 2 * grace
        while time.monotonic() < deadline:
            if (self.ex.get(self.unit, UNIT, "ActiveState") or "inactive") in ENDED:
                break
            time.sleep(0.1)
        self._unref()

    def _note(self, text):
        try:
            os.write(self._log_fd, text.encode())
        except OSError:
            pass
