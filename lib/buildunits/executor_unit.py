"""The transient-unit executor: steps inside systemd units, as another user.

The second implementation of the executor seam (executor.py), used when
the runner runs under systemd.  A step with nothing of its own to set up
(StepSpec.shared: its directives and credentials are its builder's) runs
in its builder's sandbox (Sandbox, below): one transient unit per builder
and worker, buildunits-build-BUILDER-sandbox-WORKER.service, which the
launcher starts with the same boundary as a step's unit and whose main
process, buildunits-sandbox (sandbox.py), runs the steps one at a time
as the runner asks over a socket pair.  The runner keeps it for the next
step and build of the builder (SandboxIdleSec=), and closes it for
another builder's, after changed settings, and when idle; a sandbox with
credentials serves one build.  What is said below of a unit of its own
holds for the rest: for a step with directives or credentials of its
own, or every step of a builder with UnitPerStep=yes, start() asks
buildunits-launcher (the one root part, launcher.py) to start a
transient service named after the step,

    buildunits-build-BUILDER-NUMBER-STEP.service

(BUILDER and STEP escaped as systemd escapes unit names, unit_name()),
with the log file's descriptor handed over (SCM_RIGHTS to the launcher,
a UnixFDList to systemd) as its standard output and error: output still
goes straight to disk.  The launcher decides the unit's user
(buildunits-build) and its sandbox; the runner only says what to run.

The unit has RemainAfterExit=yes and KillMode=control-group: when its
main process ends the unit stays loaded (active and "exited", or failed)
with ExecMainCode and ExecMainStatus set and what systemd accounted, and
whatever the step left running (setsid, a double fork) is still in its
cgroup.  The runner sees that from the unit's PropertiesChanged signals
(and a poll, in case one is missed: reading units is open to every user),
reads the exit status (CLD_EXITED: the code; killed or dumped: -SIGNAL)
and the accounting, and asks the launcher to release the unit: StopUnit
(SIGTERM to the cgroup, TimeoutStopSec= the grace, SIGKILL), after which
systemd unloads it.  A stop or cancel is the launcher's KillUnit, SIGTERM
to every process of the unit and SIGKILL the grace later, so the unit
stays loaded and the end is read the same way.

The units outlive a runner killed with SIGKILL; each carries the build's
token in its environment (BUILDUNITS_BUILD_TOKEN, as local steps do), and
leftovers() lists the buildunits-build-* units holding it, running or
ended: the next runner releases them all before it records the build.
"""

import json
import os
import signal
import socket
import time

from gi.repository import Gio, GLib

from . import proctree, unitprops

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = SYSTEMD + ".Manager"
UNIT = SYSTEMD + ".Unit"
SERVICE = SYSTEMD + ".Service"
PROPERTIES = "org.freedesktop.DBus.Properties"
PREFIX = "buildunits-build-"
NOTIFY_PREFIX = "buildunits-notify-"
USER = "buildunits-build"
CALL_TIMEOUT_MS = 10000
POLL_SEC = 1.0
CLD_EXITED = 1
ENDED = ("inactive", "failed")
LAUNCHER_SOCKET = "/run/buildunits/launcher.sock"
LAUNCHER_TIMEOUT_SEC = 15
SANDBOX_START_SEC = 30          # a sandbox's first answer: systemd sets it up first
SANDBOX_REPLY_SEC = 10
SANDBOX_IDLE_SEC = 60           # a sandbox no step has used for this long is closed
UNKNOWN = 2 ** 64 - 1           # systemd's "not measured"
# What systemd measured of a unit: (property, key of the step's usage, scale).
ACCOUNTING = (("CPUUsageNSec", "cpu_sec", 1e-9), ("MemoryPeak", "memory_peak_bytes", 1),
              ("IOReadBytes", "io_read_bytes", 1), ("IOWriteBytes", "io_write_bytes", 1),
              ("TasksPeak", "tasks_max", 1))
CGROUP_LIMITS = ("memory", "cpu", "pids", "io")
STATE = ("ActiveState", "SubState", "Job")      # what says whether a unit has ended


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


def sandbox_unit_name(builder, worker):
    """The sandbox of BUILDER on WORKER (sandbox.py): escaped names never
    hold "-", and a step's unit has a number where this has "sandbox".

    >>> sandbox_unit_name("hello", "w1")
    'buildunits-build-hello-sandbox-w1.service'
    """
    return "%s%s-sandbox-%s.service" % (PREFIX, unit_escape(builder), unit_escape(worker))


def notify_unit_name(builder, number, k):
    """The unit of the ExecNotify= command K (its place among the builder's
    commands, notifyrules.exec_commands) for build NUMBER of BUILDER.

    >>> notify_unit_name("my-lib", 7, 0)
    'buildunits-notify-my\\\\x2dlib-7-0.service'
    """
    return "%s%s-%d-%d.service" % (NOTIFY_PREFIX, unit_escape(builder), number, k)


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


def ended(state, substate, job=0):
    """Whether a unit in STATE/SUBSTATE, with JOB (the id of its pending
    job, 0 for none), has no main process any more: with RemainAfterExit=yes
    a step that exited is "active"/"exited".  A unit just started is
    "inactive" with its start job pending: not ended, not begun.

    >>> ended("active", "exited"), ended("active", "running"), ended("failed", "failed")
    (True, False, True)
    >>> ended("inactive", "dead", job=7), ended("inactive", "dead")
    (False, True)
    """
    if job:
        return False
    return state in ENDED or (state == "active" and substate == "exited")


def cgroup_controllers(mounts="/proc/self/mounts"):
    """The cgroup controllers systemd can set limits with here: those
    enabled on a writable unified (v2) hierarchy, and the legacy (v1)
    hierarchies mounted writable (a container may see them read-only).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w") as f:
    ...     _ = f.write("cgroup /sys/fs/cgroup/memory cgroup ro,nosuid,memory 0 0\\n"
    ...                 "cgroup /sys/fs/cgroup/pids cgroup rw,nosuid,pids 0 0\\n"
    ...                 "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\\n")
    ...     f.flush()
    ...     sorted(cgroup_controllers(f.name))
    ['cpu', 'cpuacct', 'pids']
    """
    found = set()
    try:
        with open(mounts) as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        where, kind, opts = fields[1], fields[2], fields[3].split(",")
        if "rw" not in opts:
            continue
        if kind == "cgroup2":
            try:
                with open(os.path.join(where, "cgroup.controllers")) as f:
                    found.update(f.read().split())
            except OSError:
                pass
        elif kind == "cgroup":
            found.update(o for o in opts if o in ("memory", "cpu", "cpuacct", "pids", "blkio", "io"))
    if "blkio" in found:
        found.add("io")
    return found


def limits_warning(mounts="/proc/self/mounts"):
    """A line for the journal if cgroup limits cannot be enforced here, else None."""
    missing = [c for c in CGROUP_LIMITS if c not in cgroup_controllers(mounts)]
    if not missing:
        return None
    return ("cgroup limits are not enforced on this host (no writable %s controller): MemoryMax=, CPUQuota=, "
            "TasksMax= and IOWeight= have no effect, and what systemd cannot measure is recorded as absent; "
            "the Limit*= rlimits still apply" % ", ".join(missing))


def usage(values):
    """The step's usage (executor.py) from VALUES, {property: value} as
    systemd reports them; what it did not measure is absent, not zero.

    >>> usage({"CPUUsageNSec": 1500000000, "MemoryPeak": 2 ** 64 - 1, "IOReadBytes": None})
    {'cpu_sec': 1.5}
    """
    out = {}
    for prop, key, scale in ACCOUNTING:
        v = values.get(prop)
        if isinstance(v, int) and v != UNKNOWN:
            out[key] = v * scale if scale != 1 else v
    return out


def adopt_work_dir(path, user):
    """Ready the work directory PATH (made by the runner) for a step unit:
    the launcher gives it to USER, the step user (launcher.give_work_dir),
    and USER's group, of which the runner is a member, keeps it readable
    and cleanable by the runner (the unit's UMask=0007 makes what the
    step creates group-writable).  A directory a local step filled (the
    runner's own files, which the step user could not change) is emptied
    first: the checkout starts again from nothing, once."""
    import pwd
    import shutil
    if os.stat(path).st_uid == pwd.getpwnam(user).pw_uid:
        return
    for name in os.listdir(path):
        p = os.path.join(path, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


class Systemd:
    """systemd's manager on the system bus (or CONNECTION): the calls the
    runner (reading) and the launcher (starting, signalling, stopping) make."""

    def __init__(self, connection=None):
        self._conn = connection
        self._missing = set()       # (interface, property) this systemd does not have

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
        """A property of UNIT, or None (not loaded, or no such property)."""
        try:
            return self.call("Get", GLib.Variant("(ss)", (interface, prop)), "(v)", path=object_path(unit),
                             interface=PROPERTIES)[0]
        except GLib.Error:
            return None

    def get_some(self, unit, interface, names):
        """{name: value} of the properties NAMES of UNIT, those systemd has
        (a newer property, such as MemoryPeak, may not be there), or None
        if the unit is not loaded: a few small calls rather than GetAll's
        hundreds of values (the environment and command lines among them)."""
        out = {}
        for name in names:
            if (interface, name) in self._missing:
                continue
            try:
                out[name] = self.call("Get", GLib.Variant("(ss)", (interface, name)), "(v)",
                                      path=object_path(unit), interface=PROPERTIES)[0]
            except GLib.Error as e:
                if "UnknownProperty" in (Gio.DBusError.get_remote_error(e) or ""):
                    self._missing.add((interface, name))
                    continue
                return None
        return out

    def gone(self, unit):
        """Whether UNIT has stopped and been released.  (Asking about a
        unit by its path loads a stub of it, inactive: it is never None.)"""
        return self.get(unit, UNIT, "ActiveState") in (None, "inactive")

    def manager_property(self, prop):
        return self.call("Get", GLib.Variant("(ss)", (MANAGER, prop)), "(v)", interface=PROPERTIES)[0]

    def units(self, pattern=PREFIX + "*"):
        """[(unit, active state)] of every loaded unit matching PATTERN
        (by default buildunits-build-*)."""
        found = self.call("ListUnitsByPatterns", GLib.Variant("(asas)", ([], [pattern])),
                          "(a(ssssssouso))")[0]
        return [(u[0], u[3]) for u in found]

    def loaded(self, unit):
        """{ActiveState, SubState, Job} of UNIT if systemd has it loaded,
        else None (a name asked about by its path is a stub, not listed)."""
        if not any(u == unit for u, _state in self.units(unit.replace("\\", "\\\\"))):
            return None
        return self.get_some(unit, UNIT, STATE)

    # The launcher's calls; OSError with systemd's message when refused.
    def _do(self, method, args, reply, fds=None):
        try:
            return self.call(method, args, reply, fds=fds)
        except GLib.Error as e:
            raise OSError(0, "systemd: %s: %s" % (method, e.message))

    def start(self, unit, props, fd=None):
        """Start the transient UNIT with PROPS, and FD (if any) handed over."""
        fds = None
        if fd is not None:
            fds = Gio.UnixFDList.new()
            fds.append(fd)
        self._do("StartTransientUnit", GLib.Variant("(ssa(sv)a(sa(sv)))", (unit, "fail", props, [])), "(o)", fds)

    def kill(self, unit, sig):
        self._do("KillUnit", GLib.Variant("(ssi)", (unit, "all", int(sig))), "()")

    def release(self, unit):
        """Stop UNIT (what is left of it) and let systemd unload it."""
        if self.get(unit, UNIT, "ActiveState") == "failed":
            self._do("ResetFailedUnit", GLib.Variant("(s)", (unit,)), "()")
        else:
            try:
                self._do("StopUnit", GLib.Variant("(ss)", (unit, "replace")), "(o)")
            except OSError:
                if self.get(unit, UNIT, "ActiveState") is not None:
                    raise       # not just gone already


class LauncherClient:
    """The runner's side of buildunits-launcher's socket (launcher.py)."""

    def __init__(self, path=LAUNCHER_SOCKET):
        self.path = path

    def request(self, op, fields=None, fd=None):
        """The launcher's reply to OP with FIELDS (and descriptor FD);
        OSError with the launcher's reason if it refuses."""
        msg = json.dumps(dict(fields or {}, v=1, op=op)).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(LAUNCHER_TIMEOUT_SEC)
            try:
                s.connect(self.path)
                if fd is None:
                    s.sendall(msg)
                else:
                    socket.send_fds(s, [msg], [fd])
                reply = s.recv(65536)
            except OSError as e:
                raise OSError(e.errno or 0, "buildunits-launcher (%s): %s" % (self.path, e.strerror or e))
        try:
            reply = json.loads(reply.decode())
        except (UnicodeDecodeError, ValueError):
            raise OSError(0, "buildunits-launcher (%s): no reply" % self.path)
        if not reply.get("ok"):
            raise OSError(0, "buildunits-launcher refused: %s" % reply.get("error"))
        return reply


class TransientUnitExecutor:
    """Steps as transient systemd units, started by buildunits-launcher."""

    name = "transient"

    def __init__(self, grace=5, user=USER, launcher=None, systemd=None, worker=None, sandbox_idle=SANDBOX_IDLE_SEC):
        self.grace = grace
        self.sandbox_idle = sandbox_idle
        self.user = user
        self.launcher = launcher or LauncherClient()
        self.systemd = systemd or Systemd()
        self.worker = worker
        self._sandbox = None        # the Sandbox steps run in now, if any

    def refusal(self):
        """Why this executor cannot run steps here, or None: the launcher
        answers and reaches systemd."""
        try:
            self.launcher.request("probe")
        except OSError as e:
            return e.strerror or str(e)
        return None

    def prepare(self):
        notes = [limits_warning()]
        try:
            self.systemd.call("Subscribe", None, "()")
        except GLib.Error as e:
            if "AlreadySubscribed" not in (Gio.DBusError.get_remote_error(e) or ""):
                notes.append("cannot subscribe to systemd's signals (%s); step ends are polled" % e.message)
        return "; ".join(n for n in notes if n) or None

    def start(self, spec, argv, env, cwd, log_fd, on_exit):
        workdir = env.get("BUILDUNITS_WORKDIR") or cwd
        if self.user:
            adopt_work_dir(workdir, self.user)
        if spec.shared is not None and spec.shared == (spec.unit, spec.credentials):
            return self._start_in_sandbox(spec, argv, env, cwd, log_fd, on_exit)
        unit = unit_name(spec)
        step = UnitStep(self, unit, log_fd, on_exit)
        fields = {"builder": spec.builder, "number": spec.number, "step": spec.step, "token": spec.token,
                  "worker": env.get("BUILDUNITS_WORKER") or self.worker, "argv": list(argv), "env": dict(env),
                  "cwd": cwd, "grace": self.grace, "directives": [list(p) for p in spec.unit],
                  "credentials": list(spec.credentials)}
        try:
            self.launcher.request("start", fields, fd=log_fd)
        except OSError as e:
            step.detach()
            raise OSError(e.errno, "cannot start unit %s: %s" % (unit, e.strerror))
        step.started()
        return step

    def _start_in_sandbox(self, spec, argv, env, cwd, log_fd, on_exit):
        """Step SPEC in its builder's sandbox on this worker, started first
        if there is none (or one with other settings: the builder's
        changed, or another builder's turn)."""
        worker = env.get("BUILDUNITS_WORKER") or self.worker
        # systemd loads credentials when the unit starts: a sandbox that has
        # them serves one build, so each build sees the files as they are.
        key = (spec.builder, worker, spec.unit, spec.credentials, self.grace,
               spec.token if spec.credentials else None)
        for attempt in (1, 2):
            first = False
            sb = self._sandbox
            if sb is not None and (sb.key != key or not sb.alive):
                sb.close()
                sb = None
            if sb is None:
                fields = {"builder": spec.builder, "worker": worker, "grace": self.grace,
                          "directives": [list(p) for p in spec.unit], "credentials": list(spec.credentials)}
                try:
                    sb = self._sandbox = Sandbox.open(self, key, fields)
                except OSError as e:
                    raise OSError(e.errno, "cannot start the sandbox %s: %s"
                                  % (sandbox_unit_name(spec.builder, worker), e.strerror))
                first = True
            step = SandboxStep(sb, log_fd, on_exit, "%s #%d step %s" % (spec.builder, spec.number, spec.step))
            try:
                step.started(sb.run(step, argv, env, cwd, spec.token, unitprops.rlimits(spec.unit), log_fd,
                                    first=first))
                return step
            except SandboxGone:
                if attempt == 2 or first:
                    raise
                # It ended since the last step (idle, or killed): a new one.

    # ----------------------------------------------------------- leftovers
    def leftovers(self, token):
        """The loaded units of the build TOKEN, running or ended, and the
        sandboxes of this worker that are not this runner's own (left by
        a runner that died)."""
        tag = "%s=%s" % (proctree.TOKEN_VARIABLE, token)
        ours = self._sandbox.unit if self._sandbox is not None else None
        suffix = "-sandbox-%s.service" % unit_escape(self.worker) if self.worker else None
        return [u for u, _state in self.systemd.units()
                if (suffix and u.endswith(suffix) and u != ours)
                or tag in (self.systemd.get(u, SERVICE, "Environment") or [])]

    def end_leftovers(self, token, grace):
        units = self.leftovers(token)
        for u in units:
            try:
                self.launcher.request("release", {"unit": u})
            except OSError:
                pass
        deadline = time.monotonic() + 2 * grace + 1
        while units and time.monotonic() < deadline:
            time.sleep(0.1)
            units = [u for u in units if not self.systemd.gone(u)]
        return units


class UnitStep:
    """One step started by TransientUnitExecutor: the unit UNIT."""

    def __init__(self, executor, unit, log_fd, on_exit):
        self.ex = executor
        self.sd = executor.systemd
        self.unit = self.identity = unit
        self.pid = None
        self._log_fd = log_fd
        self._on_exit = on_exit
        self.returncode = None
        self.usage = {}
        self._sub = self.sd.conn.signal_subscribe(
            SYSTEMD, PROPERTIES, "PropertiesChanged", object_path(unit), None,
            Gio.DBusSignalFlags.NONE, lambda *a: self._signalled(a[5]), None)
        self._poll = None
        self._state = None        # what the unit's signals said: {ActiveState, SubState, Job}
        self._grace_source = None

    def started(self):
        self.pid = self.sd.get(self.unit, SERVICE, "MainPID") or None
        self._poll = GLib.timeout_add(int(POLL_SEC * 1000), self._check_timer)
        self._check()

    def _check_timer(self):
        self._check()
        return self._poll is not None

    def _signalled(self, params):
        """A PropertiesChanged of the unit: its state from the signal itself
        (systemd sends the new values), asking only once it has ended."""
        interface, changed, _invalidated = params.unpack()
        if interface != UNIT or not {"ActiveState", "SubState", "Job"} & set(changed):
            return
        if self._state is None:
            self._check()           # the first: the state as a whole
            return
        self._state.update((k, changed[k]) for k in ("ActiveState", "SubState", "Job") if k in changed)
        if ended(self._state.get("ActiveState"), self._state.get("SubState"), self._state.get("Job", (0, ""))[0]):
            self._check()

    def _status(self):
        """The exit status once the main process has ended, else None
        (the accounting is read on the way)."""
        unit = self.sd.get_some(self.unit, UNIT, STATE)
        if unit is not None:
            self._state = unit
        if unit is not None and not ended(unit.get("ActiveState"), unit.get("SubState"), unit.get("Job", (0, ""))[0]):
            return None
        svc = self.sd.get_some(self.unit, SERVICE, ("ExecMainCode", "ExecMainStatus") + tuple(
            p for p, _key, _scale in ACCOUNTING)) or {}
        self.usage = usage(svc)
        if unit is None or not svc.get("ExecMainCode"):
            return -1           # gone, or never ran: the status is unknown
        return exit_code(svc["ExecMainCode"], svc.get("ExecMainStatus", 0))

    def _check(self):
        if self._sub is None or self.returncode is not None:
            return
        code = self._status()
        if code is None:
            return
        self.returncode = code
        self.detach()
        self._release()
        self._on_exit(code)

    def _release(self):
        try:
            self.ex.launcher.request("release", {"unit": self.unit})
        except OSError as e:
            self._note("buildunits: cannot release %s: %s\n" % (self.unit, e.strerror))

    def _signal(self, name):
        try:
            self.ex.launcher.request("kill", {"unit": self.unit, "signal": name})
        except OSError:
            pass        # ended meanwhile, or the launcher is gone: the poll sees which

    def detach(self):
        if self._sub is not None:
            self.sd.conn.signal_unsubscribe(self._sub)
            self._sub = None
        for attr in ("_poll", "_grace_source"):
            if getattr(self, attr) is not None:
                GLib.source_remove(getattr(self, attr))
                setattr(self, attr, None)

    def stop(self, grace):
        if self.returncode is not None or self._grace_source is not None:
            return
        self._note("buildunits: stopping %s (SIGTERM to its processes, SIGKILL %ds later)\n" % (self.unit, grace))
        self._signal("SIGTERM")

        def expired():
            self._grace_source = None
            if self.returncode is None:
                self._note("buildunits: still running %ds after SIGTERM; sending SIGKILL\n" % grace)
                self._signal("SIGKILL")
            return False
        self._grace_source = GLib.timeout_add(int(grace * 1000), expired)

    def kill(self):
        self.detach()
        self._signal("SIGKILL")
        self._release()

    def halt(self, grace):
        self.detach()
        self._signal("SIGTERM")
        for sig in ("SIGKILL", None):
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                unit = self.sd.get_some(self.unit, UNIT, STATE)
                if unit is None or ended(unit.get("ActiveState"), unit.get("SubState"), unit.get("Job", (0, ""))[0]):
                    sig = None
                    break
                time.sleep(0.1)
            if sig is None:
                break
            self._signal(sig)
        self._release()

    def _note(self, text):
        try:
            os.write(self._log_fd, text.encode())
        except OSError:
            pass


# ------------------------------------------------------------- sandboxes

class SandboxGone(OSError):
    """The sandbox's socket ended: its process is gone."""


def _checked_end(msg):
    """(code, usage) of the sandbox's "ended" message MSG, whatever it
    holds: the sandbox runs as the steps' user, so what it says is no
    more than a step could say of itself, and is checked as such."""
    code = msg.get("code")
    if not isinstance(code, int) or isinstance(code, bool) or not -64 <= code <= 255:
        code = -1
    used = msg.get("usage")
    out = {}
    if isinstance(used, dict):
        for key, kind in (("cpu_sec", (int, float)), ("memory_peak_bytes", int), ("io_read_bytes", int),
                          ("io_write_bytes", int), ("tasks_max", int)):
            v = used.get(key)
            if isinstance(v, kind) and not isinstance(v, bool) and 0 <= v < 2 ** 63:
                out[key] = v
    return code, out


class Sandbox:
    """A builder's sandbox on this worker (sandbox.py): the unit UNIT, which
    buildunits-launcher started with the builder's settings (KEY), and the
    runner's end of its socket.  Steps run in it one at a time."""

    def __init__(self, executor, key, unit, sock):
        self.ex = executor
        self.key = key
        self.unit = unit
        self.sock = sock
        self.step = None            # the SandboxStep running, if any
        self._idle = None
        self._watch = GLib.unix_fd_add_full(GLib.PRIORITY_DEFAULT, sock.fileno(),
                                            GLib.IOCondition.IN | GLib.IOCondition.HUP | GLib.IOCondition.ERR,
                                            self._readable)

    @classmethod
    def open(cls, executor, key, fields):
        """Have the launcher start the sandbox FIELDS describe."""
        from .sandbox import VERSION  # noqa: F401 (the protocol's module)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            reply = executor.launcher.request("sandbox", fields, fd=theirs.fileno())
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(executor, key, reply.get("unit") or sandbox_unit_name(fields["builder"], fields["worker"]), ours)

    @property
    def alive(self):
        return self.sock is not None

    def request(self, msg, fd=None, timeout=SANDBOX_REPLY_SEC):
        """Send MSG (with FD) and return the reply; SandboxGone if the
        sandbox has ended, OSError if it does not answer in TIMEOUT."""
        from . import sandbox as proto
        if self.sock is None:
            raise SandboxGone(0, "the sandbox %s has ended" % self.unit)
        try:
            if fd is None:
                self.sock.sendall(proto.encode(msg))
            else:
                socket.send_fds(self.sock, [proto.encode(msg)], [fd])
            self.sock.settimeout(timeout)
            data, fds = proto.receive(self.sock)
        except socket.timeout:
            self.close(stop=True)
            raise OSError(0, "the sandbox %s did not answer in %ds; it is stopped" % (self.unit, timeout))
        except (OSError, ValueError) as e:
            self.close(stop=True)
            raise SandboxGone(0, "the sandbox %s has ended (%s)" % (self.unit, e))
        finally:
            if self.sock is not None:
                self.sock.settimeout(None)
        for f in fds:
            os.close(f)
        if not data:
            self.close(stop=True)
            raise SandboxGone(0, "the sandbox %s has ended; see journalctl -u %s" % (self.unit, self.unit))
        try:
            return proto.decode(data)
        except ValueError as e:
            self.close(stop=True)
            raise OSError(0, "the sandbox %s: %s" % (self.unit, e))

    def run(self, step, argv, env, cwd, token, rlimits, log_fd, first=False):
        """Start ARGV in the sandbox for STEP (a SandboxStep), with RLIMITS
        ([(LimitNAME, soft, hard)]): its pid."""
        self._cancel_idle()
        reply = self.request({"op": "run", "argv": list(argv), "env": dict(env), "cwd": cwd, "token": token,
                              "rlimits": [list(r) for r in rlimits], "title": step.title},
                             fd=log_fd, timeout=SANDBOX_START_SEC if first else SANDBOX_REPLY_SEC)
        if reply.get("op") == "error":
            raise OSError(0, "%s (in %s)" % (reply.get("error"), self.unit))
        pid = reply.get("pid")
        if reply.get("op") != "started" or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            self.close(stop=True)
            raise OSError(0, "the sandbox %s answered %r; it is stopped" % (self.unit, reply.get("op")))
        self.step = step
        return pid

    def signal(self, name):
        from . import sandbox as proto
        if self.sock is not None:
            try:
                self.sock.sendall(proto.encode({"op": "signal", "signal": name}))
            except OSError:
                pass            # ended: its watch says so

    def _readable(self, fd, condition):
        from . import sandbox as proto
        try:
            data, fds = proto.receive(self.sock)
            for f in fds:
                os.close(f)
            msg = proto.decode(data) if data else None
        except (OSError, ValueError):
            msg = None
        if msg is None:
            self._watch = None
            step = self.step
            self.close(stop=True)
            if step is not None:
                step.gone()
            return False
        if msg.get("op") == "ended" and self.step is not None:
            step, self.step = self.step, None
            self._start_idle()
            step.ended(*_checked_end(msg))
        return True

    def _start_idle(self):
        self._cancel_idle()
        self._idle = GLib.timeout_add(int(self.ex.sandbox_idle * 1000), self._idle_expired)

    def _cancel_idle(self):
        if self._idle is not None:
            GLib.source_remove(self._idle)
            self._idle = None

    def _idle_expired(self):
        self._idle = None
        if self.step is None:
            self.close()
        return False

    def close(self, stop=False):
        """Close the socket: the sandbox kills what runs in it and exits,
        and systemd stops and unloads its unit.  STOP: also have the
        launcher stop the unit, for a sandbox that may not be listening."""
        self._cancel_idle()
        if self._watch is not None:
            GLib.source_remove(self._watch)
            self._watch = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.ex._sandbox is self:
            self.ex._sandbox = None
        if stop:
            try:
                self.ex.launcher.request("release", {"unit": self.unit})
            except OSError:
                pass            # gone already


class SandboxStep:
    """One step run in a Sandbox: the executor's handle (executor.py)."""

    def __init__(self, sandbox, log_fd, on_exit, title=""):
        self.sb = sandbox
        self.title = title
        self.pid = None
        self.identity = sandbox.unit
        self.usage = {}
        self.returncode = None
        self._log_fd = log_fd
        self._on_exit = on_exit
        self._timers = []

    def started(self, pid):
        self.pid = pid
        self.identity = "process %d in %s" % (pid, self.sb.unit)

    def ended(self, code, used):
        if self.returncode is not None:
            return
        self._cancel()
        self.returncode = code
        self.usage = used
        if self._on_exit is not None:
            self._on_exit(code)

    def gone(self):
        """The sandbox ended under the step (killed by it, or stopped)."""
        self._note("buildunits: the sandbox %s ended while the step ran\n" % self.sb.unit)
        self.ended(-1, {})

    def _cancel(self):
        for t in self._timers:
            GLib.source_remove(t)
        self._timers = []

    def stop(self, grace):
        if self.returncode is not None or self._timers:
            return
        self._note("buildunits: stopping the step (SIGTERM to its processes, SIGKILL %ds later)\n" % grace)
        self.sb.signal("SIGTERM")

        def kill():
            self._timers.pop(0)
            if self.returncode is None:
                self._note("buildunits: still running %ds after SIGTERM; sending SIGKILL\n" % grace)
                self.sb.signal("SIGKILL")
            return False

        def unit():
            # The sandbox does not answer (stopped by the step?): the unit goes.
            self._timers.pop(0)
            if self.returncode is None:
                self._note("buildunits: the sandbox does not say the step ended; stopping %s\n" % self.sb.unit)
                self.sb.close(stop=True)
                self.gone()
            return False
        self._timers = [GLib.timeout_add(int(grace * 1000), kill), GLib.timeout_add(int(grace * 2000) + 1000, unit)]

    def kill(self):
        self._cancel()
        self._on_exit = None
        self.returncode = -9
        self.sb.step = None
        self.sb.close(stop=True)

    def halt(self, grace):
        """Stop the step without the main loop (the runner is stopping)."""
        from . import sandbox as proto
        self._cancel()
        self._on_exit = None
        sb = self.sb
        for sig in ("SIGTERM", "SIGKILL"):
            sb.signal(sig)
            deadline = time.monotonic() + grace
            while sb.sock is not None and time.monotonic() < deadline:
                sb.sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data, fds = proto.receive(sb.sock)
                except socket.timeout:
                    continue
                except (OSError, ValueError):
                    data = b""
                for f in fds:
                    os.close(f)
                if not data:
                    break
                try:
                    if proto.decode(data).get("op") == "ended":
                        sb.step = None
                        sb.sock.settimeout(None)
                        return
                except ValueError:
                    break
        sb.close(stop=True)

    def _note(self, text):
        try:
            os.write(self._log_fd, text.encode())
        except OSError:
            pass
