"""buildunits-launcher [--socket PATH] [--client-user USER]: start and stop build steps' units.

NAME
    buildunits-launcher - the runners' one privilege: build steps (and ExecNotify= commands) as transient units

DESCRIPTION
    The one part of buildunits that runs as root, and it does one thing:
    it starts each build step as a transient systemd unit, run as the
    user buildunits-build inside a fixed sandbox, and stops such units
    when a runner asks.  The runners (user buildunits) cannot start units
    themselves: systemd's StartTransientUnit is granted by polkit's
    org.freedesktop.systemd1.manage-units as a whole, with no unit name
    for a rule to look at (systemd 252), so a rule could only give the
    runner every unit on the machine, root's included.  The launcher
    grants exactly the part a runner needs, and decides the part that
    makes the boundary itself:

    - the unit's name is computed here, from the builder, build number
      and step: buildunits-build-BUILDER-NUMBER-STEP.service;
    - User= and Group= are buildunits-build, whatever the request says;
    - the sandbox below is applied last, so no setting of a builder can
      undo it: the configuration directory, the spool and the site are
      inaccessible, the state directory is an empty private tmpfs with
      only the step's own work directory bound into it, the rest of the
      file system is read-only (ProtectSystem=strict), and there is no
      way to regain privileges (NoNewPrivileges=);
    - KillMode=control-group and RemainAfterExit=yes: the unit is the
      step's whole process tree, and it stays loaded after its main
      process ends until the runner has read how it ended and releases
      it (which stops whatever the step left running);
    - a builder's own directives (buildunits.builder(5), SANDBOX AND
      LIMITS) are checked again here against the same table
      (unitprops.py) and applied before the fixed part;
    - a credential is handed to the step only if the builder (or the
      step) names it with Credential=, in the builder's file as the
      launcher itself reads it; systemd loads it (LoadCredential=), so
      neither the runner nor the launcher reads a secret.

    The notifier's ExecNotify= commands run the same way, each in the
    unit buildunits-notify-BUILDER-NUMBER-K.service (K: the command's
    place among the builder's ExecNotify= commands, its own then the
    site's), with the same fixed boundary and none of a builder's step
    settings: the notifier names the build and the command (by the
    SHA-256 of its text) and gives the build's facts; the launcher finds
    the command in the configuration as it reads it itself, so a notifier
    can have run only what an ExecNotify= of the configuration says, and
    checks each fact is one line.

    A runner (or the notifier: the same user) asks over a Unix socket (SOCK_SEQPACKET, by default
    /run/buildunits/launcher.sock, mode 0660, group buildunits); the
    launcher also checks the peer's user (SO_PEERCRED) is buildunits or
    root.  One request per message, a JSON object {"v": 1, "op": ...};
    one reply per message, {"ok": true, ...} or {"ok": false, "error":
    WHY}.  The log file's descriptor comes with a start request as
    SCM_RIGHTS, and systemd is handed it as the unit's standard output
    and error, so output still goes from the step straight to disk.

    Operations:
        probe             systemd's version: the runner's check at start
        start             start one step's unit (fields: builder, number,
                          step, token, worker, argv, env, cwd, grace,
                          directives, credentials; one descriptor)
        sandbox           start a builder's sandbox on a worker: the unit
                          buildunits-build-BUILDER-sandbox-WORKER.service,
                          the same boundary, buildunits-sandbox(8) its
                          main process, which runs the builder's steps one
                          at a time (fields: builder, worker, grace,
                          directives, credentials, the builder's alone;
                          one descriptor: the runner's end of a socket
                          pair, the sandbox's standard input)
        notify            start an ExecNotify= command's unit (fields:
                          builder, number, digest, environment; no
                          descriptor): /bin/sh -c COMMAND, its output to
                          the journal, at most [Notify] TimeoutSec= long,
                          kept loaded when it ends until released.  If
                          the unit is loaded already (an earlier attempt
                          whose end no notifier saw), a running one is
                          left to run (the reply's "started" is false)
                          and an ended one is released and run again
        kill UNIT SIGNAL  SIGTERM or SIGKILL to every process of UNIT
        release UNIT      stop UNIT (SIGTERM, TimeoutStopSec= the grace,
                          SIGKILL) and let systemd unload it

    It is socket-activated (buildunits-launcher.socket) and exits after
    IDLE_SEC without a request; systemd starts it again on the next one.
    It keeps no state: a crash loses nothing but the request it was
    answering, which the runner reports as a step that could not start.

    Every refusal is a journal line naming the peer and the field.

FILES
    /run/buildunits/launcher.sock     the runners' (and the notifier's) socket
    /etc/buildunits/builders/         read for the credentials a builder names,
                                      and the ExecNotify= commands
    /etc/buildunits/buildunits.conf   read for the site's ExecNotify= commands
    /etc/buildunits/credentials/      never read: systemd loads from it
"""

import argparse
import hashlib
import json
import os
import pwd
import re
import signal
import socket
import struct
import sys

from . import config, credentials, log, paths
from .state import State

VERSION = 1
SOCKET = "/run/buildunits/launcher.sock"
CLIENT_USER = "buildunits"
STEP_USER = "buildunits-build"
MAX_MESSAGE = 256 * 1024
IDLE_SEC = 300
PEER_TIMEOUT_SEC = 10
MAX_GRACE_SEC = 3600
UMASK = 0o007
TOKEN_RE = re.compile(r"\A[0-9a-f]{16,64}\Z")
ENV_NAME_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,255}\Z")
UNIT_RE = re.compile(r"\Abuildunits-(build|notify)-[A-Za-z0-9:_.\\-]{1,240}\.service\Z")
DIGEST_RE = re.compile(r"\A[0-9a-f]{64}\Z")
NOTIFY_GRACE_SEC = 5         # an ExecNotify= unit's TimeoutStopSec=
NOTIFY_PATH = "/usr/local/bin:/usr/bin:/bin"
NOTIFIER_UNIT = "buildunits-notifier.service"
GONE_SEC = 10                # an ended ExecNotify= unit left over, to be unloaded before its next run
SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
MS_REC = 16384
# The sandbox settings a builder may turn off again, on for every step:
# those that cost a step nothing measurable (system call filters, a UTS
# namespace).  ProtectKernelTunables=, ProtectKernelModules=,
# ProtectKernelLogs= and ProtectControlGroups= are a builder's to turn on:
# each adds mounts to the step's namespace, 10 to 50 ms a step.
ON_BY_DEFAULT = ("ProtectClock", "ProtectHostname", "RestrictSUIDSGID", "RestrictRealtime", "LockPersonality")


class Refused(Exception):
    """A request the launcher will not carry out; str() says which field and why."""


# ------------------------------------------------------------ checking

def _field(req, name, kind):
    v = req.get(name)
    if not isinstance(v, kind) or isinstance(v, bool):
        raise Refused("%s: missing or not a %s" % (name, kind.__name__))
    return v


def _number(req):
    """The request's build number, 1 to 2^32-1, or Refused."""
    number = _field(req, "number", int)
    if not 1 <= number < 2 ** 32:
        raise Refused("number: %d is out of range" % number)
    return number


def _text(v, what):
    if not isinstance(v, str) or "\0" in v:
        raise Refused("%s: not a string without NUL bytes" % what)
    return v


def _absolute(v, what):
    v = _text(v, what)
    if not v.startswith("/") or os.path.normpath(v) != v:
        raise Refused("%s: %r is not a normalized absolute path" % (what, v))
    return v


def _check_common(req, dirs):
    """What a step's unit and a sandbox are both made from: (builder,
    worker, work directory, grace, directives, credentials), checked."""
    builder = _field(req, "builder", str)
    if not config.NAME_RE.fullmatch(builder):
        raise Refused("builder: %r is not a builder name" % builder)
    worker = _field(req, "worker", str)
    if not config.NAME_RE.fullmatch(worker):
        raise Refused("worker: %r is not a worker name" % worker)
    workdir = State(dirs.state).work_dir(worker, builder)
    if os.path.realpath(workdir) != workdir:
        raise Refused("cwd: the work directory %s is (or is under) a symbolic link" % workdir)
    grace = req.get("grace")
    if not isinstance(grace, (int, float)) or isinstance(grace, bool) or not 0 < grace <= MAX_GRACE_SEC:
        raise Refused("grace: not a number of seconds in (0, %d]" % MAX_GRACE_SEC)
    settings = _field(req, "directives", list)
    pairs = []
    if settings:
        from . import unitprops
        for pair in settings:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise Refused("directives: not a list of [directive, value] pairs")
            k, v = _text(pair[0], "directives"), _text(pair[1], "directives")
            if k not in unitprops.KEYS:
                raise Refused("directives: %s= is not a directive a builder may set" % k)
            try:
                pairs.append((k, unitprops.check(k, v)))
            except ValueError as e:
                raise Refused("directives: %s=%s: %s" % (k, v, e))
    creds = _field(req, "credentials", list)
    for c in creds:
        if not isinstance(c, str) or not credentials.valid_name(c):
            raise Refused("credentials: %r is not a credential name" % (c,))
    return builder, worker, workdir, float(grace), tuple(pairs), tuple(creds)


def check_start(req, dirs):
    """The start request REQ, checked field by field against DIRS (the
    launcher's paths.Dirs): a dict of what the unit is made from, or
    Refused naming the field."""
    from .executor import StepSpec
    from .executor_unit import unit_name
    builder, worker, workdir, grace, pairs, creds = _check_common(req, dirs)
    step = _field(req, "step", str)
    if step not in config.RESERVED_STEPS and not config.NAME_RE.fullmatch(step):
        raise Refused("step: %r is not a step name" % step)
    number = _number(req)
    token = _field(req, "token", str)
    if not TOKEN_RE.fullmatch(token):
        raise Refused("token: not 16 to 64 hex digits")
    cwd = _absolute(req.get("cwd"), "cwd")
    if cwd != workdir and not cwd.startswith(workdir + "/"):
        raise Refused("cwd: %s is not inside the work directory %s" % (cwd, workdir))
    argv = _field(req, "argv", list)
    if not argv or len(argv) > 4096:
        raise Refused("argv: empty or too long")
    argv = [_text(a, "argv") for a in argv]
    env = _field(req, "env", dict)
    for k, v in env.items():
        if not ENV_NAME_RE.fullmatch(k):
            raise Refused("env: %r is not a variable name" % k)
        _text(v, "env %s" % k)
    spec = StepSpec(builder, number, step, token, pairs, creds)
    return {"spec": spec, "unit": unit_name(spec), "worker": worker, "workdir": workdir, "cwd": cwd,
            "argv": argv, "env": env, "grace": grace}


def check_sandbox(req, dirs):
    """The sandbox request REQ, checked as check_start() checks a step's:
    a builder's sandbox on a worker, with the builder's own directives
    and credentials (a step's own need a unit of their own)."""
    from .executor import StepSpec
    from .executor_unit import sandbox_unit_name
    from .unitprops import KIND
    builder, worker, workdir, grace, pairs, creds = _check_common(req, dirs)
    # The rlimits are the sandbox's to set for each step (sandbox.py): on
    # the unit they would bind its own long-lived process too (LimitCPU=).
    pairs = tuple(p for p in pairs if KIND[p[0]] != "rlimit")
    return {"spec": StepSpec(builder, 0, "", "", pairs, creds), "unit": sandbox_unit_name(builder, worker),
            "worker": worker, "workdir": workdir, "grace": grace}


def check_credentials(spec, cfg):
    """Refused unless every credential of SPEC is named (Credential=) by
    its builder, or by that step, in CFG (the configuration as the
    launcher reads it): a runner can hand a step only what its builder's
    file gives it."""
    if not spec.credentials:
        return
    b = cfg.builders.get(spec.builder)
    if b is None:
        raise Refused("credentials: builder %s is not configured" % spec.builder)
    named = set(b.credentials)
    for s in b.steps:
        if s.name == spec.step:
            named.update(s.credentials)
    missing = [c for c in spec.credentials if c not in named]
    if missing:
        raise Refused("credentials: %s not named by builder %s (Credential=)" % (" ".join(missing), spec.builder))


def check_notify(req, cfg):
    """The notify request REQ checked against CFG, the configuration as
    the launcher reads it: the builder, the build's number, the command
    (named by the SHA-256 of its text, looked up among the builder's
    ExecNotify= commands, notifyrules.exec_commands: the command run is
    the one of the file, never one the request carries), and the build's
    facts (BUILDUNITS_*, notifyrules.EXEC_FACTS, one line each, the
    builder and number those of the request).  A dict of what the unit
    is made from, or Refused naming the field."""
    from . import notifyrules
    from .executor import StepSpec
    from .executor_unit import notify_unit_name
    builder = _field(req, "builder", str)
    if not config.NAME_RE.fullmatch(builder):
        raise Refused("builder: %r is not a builder name" % builder)
    number = _number(req)
    digest = _field(req, "digest", str)
    if not DIGEST_RE.fullmatch(digest):
        raise Refused("digest: not the 64 hex digits of a SHA-256")
    env = _field(req, "environment", dict)
    for k, v in env.items():
        if k not in notifyrules.EXEC_FACTS:
            raise Refused("environment: %r is not one of the facts of a build" % (k,))
        if not isinstance(v, str) or len(v) > notifyrules.EXEC_FACT_MAX \
                or any(ord(c) < 32 or ord(c) == 0x7f for c in v):
            raise Refused("environment: %s is not one line of at most %d characters"
                          % (k, notifyrules.EXEC_FACT_MAX))
    if env.get("BUILDUNITS_BUILDER", builder) != builder or env.get("BUILDUNITS_NUMBER", str(number)) != str(number):
        raise Refused("environment: BUILDUNITS_BUILDER and BUILDUNITS_NUMBER are not the request's build")
    b = cfg.builders.get(builder)
    if b is None:
        raise Refused("builder: %s is not configured" % builder)
    commands = notifyrules.exec_commands(cfg, b)
    found = [k for k, c in enumerate(commands) if hashlib.sha256(c.encode("utf-8")).hexdigest() == digest]
    if not found:
        raise Refused("digest: no ExecNotify= command of builder %s (or of the site) has it: "
                      "the configuration changed since the message was queued?" % builder)
    k = found[0]
    env = dict(env, BUILDUNITS_BUILDER=builder, BUILDUNITS_NUMBER=str(number))
    return {"spec": StepSpec(builder, number, "", "", (), ()), "unit": notify_unit_name(builder, number, k),
            "argv": ["/bin/sh", "-c", commands[k]], "env": env, "grace": NOTIFY_GRACE_SEC,
            "timeout": cfg.notify_timeout, "before": NOTIFIER_UNIT}


def check_unit(req):
    unit = _field(req, "unit", str)
    if not UNIT_RE.fullmatch(unit):
        raise Refused("unit: %r is not a build step's unit, nor an ExecNotify= command's" % unit)
    return unit


def give_work_dir(state, worker, builder, user=STEP_USER):
    """Make STATE/work/WORKER/BUILDER the step user's (user and group,
    mode 0770), so the step owns the checkout it works in, and git finds
    no "dubious ownership" in it; the runner, a member of the group, can
    still read and clean it.  The runner owns everything under STATE, so
    each component is opened without following a link, from STATE, whose
    parent must be root's: no path the runner can change leads a chown
    elsewhere.  Refused if a component is missing or is not a directory."""
    import grp
    parent = os.path.dirname(state)
    st = os.stat(parent)
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise Refused("the state directory's parent %s is not root's alone" % parent)
    import stat
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(user).gr_gid
    where = os.path.join(state, "work", worker, builder)
    fd = os.open(state, flags)
    try:
        for name in ("work", worker):
            try:
                nfd = os.open(name, flags, dir_fd=fd)
            except OSError as e:
                raise Refused("cwd: the work directory's %r cannot be opened as a directory (%s)"
                              % (name, e.strerror))
            os.close(fd)
            fd = nfd
        # Given already: the launcher (no CAP_DAC_*) may not open it again.
        try:
            st = os.stat(builder, dir_fd=fd, follow_symlinks=False)
        except OSError as e:
            raise Refused("cwd: the work directory %s: %s" % (where, e.strerror))
        if stat.S_ISDIR(st.st_mode) and (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, gid, 0o770):
            return
        try:
            nfd = os.open(builder, flags, dir_fd=fd)
        except OSError as e:
            raise Refused("cwd: the work directory's %r cannot be opened as a directory (%s)" % (builder, e.strerror))
        os.close(fd)
        fd = nfd
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o770)
        except OSError as e:
            raise OSError(e.errno, "cannot give the work directory %s to %s: %s" % (where, user, e.strerror))
    finally:
        os.close(fd)


# ---------------------------------------------------------- properties

def properties(job, dirs, cfg, user=STEP_USER):
    """The unit properties (name, GLib.Variant) for the checked start
    request JOB: the overridable defaults, the builder's own settings,
    then the fixed part, which therefore wins.  CFG (the configuration)
    is needed only for a step with credentials."""
    from gi.repository import GLib
    spec = job["spec"]
    env = dict(job["env"])
    env["BUILDUNITS_BUILD_TOKEN"] = spec.token
    # The runner's home is the state directory, hidden here: the step's
    # home is its private /tmp, empty at its start and gone at its end.
    env["HOME"] = "/tmp"
    return _unit(job, dirs, cfg, user, "buildunits %s #%d step %s" % (spec.builder, spec.number, spec.step), [
        ("Type", GLib.Variant("s", "exec")),
        ("ExecStart", GLib.Variant("a(sasb)", [(job["argv"][0], job["argv"], False)])),
        ("WorkingDirectory", GLib.Variant("s", job["cwd"])),
        ("Environment", GLib.Variant("as", ["%s=%s" % kv for kv in sorted(env.items())])),
        ("StandardInput", GLib.Variant("s", "null")),
        ("StandardOutputFileDescriptor", GLib.Variant("h", 0)),
        ("StandardErrorFileDescriptor", GLib.Variant("h", 0)),
        ("RemainAfterExit", GLib.Variant("b", True)),
    ])


def sandbox_properties(job, dirs, cfg, program, user=STEP_USER):
    """The unit properties of the checked sandbox request JOB: the same
    boundary as a step's unit, with PROGRAM (buildunits-sandbox) as its
    main process, the runner's socket (the one descriptor) its standard
    input, and its own messages in the journal.  The unit goes when its
    main process does, failed or not (CollectMode=), so a sandbox that
    could not start closes the runner's socket at once."""
    from gi.repository import GLib
    argv = [program, "--clean", "/tmp", "--clean", "/var/tmp"]
    return _unit(job, dirs, cfg, user, "buildunits %s sandbox on %s" % (job["spec"].builder, job["worker"]), [
        ("Type", GLib.Variant("s", "exec")),
        ("ExecStart", GLib.Variant("a(sasb)", [(program, argv, False)])),
        ("WorkingDirectory", GLib.Variant("s", job["workdir"])),
        ("Environment", GLib.Variant("as", ["HOME=/tmp"])),
        ("StandardInputFileDescriptor", GLib.Variant("h", 0)),
        ("StandardOutput", GLib.Variant("s", "journal")),
        ("StandardError", GLib.Variant("s", "journal")),
        ("CollectMode", GLib.Variant("s", "inactive-or-failed")),
    ])


def notify_properties(job, dirs, user=STEP_USER):
    """The unit properties of the checked notify request JOB: an
    ExecNotify= command in the boundary of a build step (the same fixed
    part: buildunits-build, the state an empty tmpfs, the configuration
    and the spool inaccessible, the system read-only, no privileges), with
    no work directory and none of a builder's step settings.  It may take
    [Notify] TimeoutSec= (RuntimeMaxSec=); its output goes to the journal;
    and it stays loaded when it has ended (RemainAfterExit=) until the
    notifier has read how, and releases it."""
    from gi.repository import GLib
    env = dict(job["env"], PATH=NOTIFY_PATH, LANG="C.UTF-8", HOME="/tmp")
    spec = job["spec"]
    return _unit(job, dirs, None, user, "buildunits %s #%d ExecNotify= command" % (spec.builder, spec.number), [
        ("Type", GLib.Variant("s", "exec")),
        ("ExecStart", GLib.Variant("a(sasb)", [(job["argv"][0], job["argv"], False)])),
        ("WorkingDirectory", GLib.Variant("s", "/")),
        ("Environment", GLib.Variant("as", ["%s=%s" % kv for kv in sorted(env.items())])),
        ("StandardInput", GLib.Variant("s", "null")),
        ("StandardOutput", GLib.Variant("s", "journal")),
        ("StandardError", GLib.Variant("s", "journal")),
        ("RemainAfterExit", GLib.Variant("b", True)),
        ("RuntimeMaxUSec", GLib.Variant("t", max(1, int(job["timeout"] * 1e6)))),
    ])


def _unit(job, dirs, cfg, user, description, execution):
    """The properties of a unit of the checked request JOB, described as
    DESCRIPTION, running what EXECUTION says, inside the boundary."""
    from gi.repository import GLib
    from .executor_unit import unit_escape
    spec = job["spec"]
    props = [
        ("Description", GLib.Variant("s", description)),
        # Defaults a builder may change (unitprops.KEYS): what costs a
        # build nothing.
        ("ProtectHome", GLib.Variant("s", "yes")),
    ] + [(name, GLib.Variant("b", True)) for name in ON_BY_DEFAULT]
    if spec.unit:
        from . import unitprops
        props += unitprops.variants(spec.unit)
    hidden = [d for d in (dirs.config, dirs.spool, dirs.site)
              if os.path.commonpath([d, dirs.state]) != dirs.state]
    # The fixed part: what the boundary is.
    props += execution + [
        ("User", GLib.Variant("s", user)),
        ("Group", GLib.Variant("s", user)),
        ("UMask", GLib.Variant("u", UMASK)),
        ("NoNewPrivileges", GLib.Variant("b", True)),
        ("CapabilityBoundingSet", GLib.Variant("t", 0)),
        ("AmbientCapabilities", GLib.Variant("t", 0)),
        ("RemoveIPC", GLib.Variant("b", True)),
        ("KeyringMode", GLib.Variant("s", "private")),
        ("PrivateTmp", GLib.Variant("b", True)),
        ("ProtectSystem", GLib.Variant("s", "strict")),
        ("KillMode", GLib.Variant("s", "control-group")),
        ("TimeoutStopUSec", GLib.Variant("t", int(job["grace"] * 1e6))),
        # Stopped after its runner (at shutdown, say): the runner stops the
        # step and records the build as interrupted, rather than seeing its
        # step killed under it and recording a failure.
        # (An ExecNotify= command's: after its notifier, which reads its end.)
        ("Before", GLib.Variant("as", [job.get("before") or
                                       "buildunits-runner@%s.service" % unit_escape(job["worker"])])),
        ("InaccessiblePaths", GLib.Variant("as", ["-" + d for d in hidden])),
        # The state (the history, the site under it, other builders' work)
        # is an empty private tmpfs with this step's work directory in it.
        ("TemporaryFileSystem", GLib.Variant("a(ss)", [(dirs.state, "mode=0755")])),
    ]
    if job.get("workdir"):
        props += [
            ("BindPaths", GLib.Variant("a(ssbt)", [(job["workdir"], job["workdir"], False, MS_REC)])),
            ("ReadWritePaths", GLib.Variant("as", [job["workdir"]])),
        ]
    loads = {}
    for name in spec.credentials:
        # The directory from the launcher's own reading of the configuration.
        prop, path = credentials.credential_source(cfg.credentials_directory, name)
        loads.setdefault(prop, []).append((name, path))
    for prop, items in sorted(loads.items()):
        props.append((prop, GLib.Variant("a(ss)", items)))
    return props


# ------------------------------------------------------------- serving

def peer_uid(conn):
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return uid


def receive(conn):
    """(request dict, [descriptors]) of one message, or (None, []) at EOF."""
    fds = []
    msg, anc, flags, _ = conn.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4 * struct.calcsize("i")))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += list(struct.unpack("%di" % (len(data) // 4), data[:len(data) - len(data) % 4]))
    if not msg:
        return None, fds
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        raise Refused("message too long, or too many descriptors")
    try:
        req = json.loads(msg.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Refused("not a JSON message")
    if not isinstance(req, dict) or req.get("v") != VERSION:
        raise Refused("not a version %d request" % VERSION)
    return req, fds


class Launcher:
    """The requests of one launcher process, carried out on SYSTEMD
    (executor_unit.Systemd, the system bus)."""

    def __init__(self, dirs, systemd, clients=(0,), user=STEP_USER, sandbox_program=None):
        self.dirs = dirs
        self.systemd = systemd
        self.clients = set(clients)
        self.user = user
        self.sandbox_program = sandbox_program or sandbox_program_beside(sys.argv[0])

    def configuration(self):
        """The configuration as far as it reads: a runner may be running an
        older one (a reload with errors is refused), and the builders
        without problems are what it can be checked against."""
        try:
            return config.load(self.dirs.config)
        except config.ConfigError as e:
            if e.partial is None:
                raise
            return e.partial

    def _unit_job(self, op, req, fds, check, what):
        """(the checked job, the configuration or None) of a request for a
        unit, its credentials checked and its work directory given."""
        if len(fds) != 1:
            raise Refused("%s: exactly one descriptor (%s) must come with it" % (op, what))
        job = check(req, self.dirs)
        cfg = None
        if job["spec"].credentials:
            cfg = self.configuration()
            check_credentials(job["spec"], cfg)
        give_work_dir(self.dirs.state, job["worker"], job["spec"].builder, self.user)
        return job, cfg

    def handle(self, req, fds):
        op = req.get("op")
        if op == "probe":
            return {"version": VERSION, "systemd": str(self.systemd.manager_property("Version"))}
        if op == "start":
            job, cfg = self._unit_job(op, req, fds, check_start, "the log file")
            self.systemd.start(job["unit"], properties(job, self.dirs, cfg, self.user), fds[0])
            return {"unit": job["unit"]}
        if op == "sandbox":
            job, cfg = self._unit_job(op, req, fds, check_sandbox, "the runner's socket")
            self.systemd.start(job["unit"], sandbox_properties(job, self.dirs, cfg, self.sandbox_program,
                                                               self.user), fds[0])
            return {"unit": job["unit"]}
        if op == "notify":
            if fds:
                raise Refused("notify: no descriptor comes with it")
            return self.notify(check_notify(req, self.configuration()))
        if op == "kill":
            unit = check_unit(req)
            sig = SIGNALS.get(req.get("signal"))
            if sig is None:
                raise Refused("signal: one of %s" % " ".join(SIGNALS))
            self.systemd.kill(unit, sig)
            return {}
        if op == "release":
            self.systemd.release(check_unit(req))
            return {}
        raise Refused("op: %r is not an operation" % (op,))

    def notify(self, job):
        """Start the ExecNotify= unit of the checked JOB; {"unit", "started"}.

        The unit may be loaded already: an earlier attempt at the same
        message whose end its notifier did not see (killed while it ran,
        or this launcher killed before it answered).  Still running the
        same command, it is left to run and the reply says so (started:
        false): the notifier watches it to its end as its own, and the
        command runs once.  Ended, how is unknown to anyone who kept the
        message, so it is released and the command run again: twice,
        never not at all, as every channel delivers after a crash."""
        unit = job["unit"]
        state = self.systemd.loaded(unit)
        if state is not None and not ended_state(state):
            running = self.systemd.get(unit, "org.freedesktop.systemd1.Service", "ExecStart") or []
            if [list(e[1]) for e in running[:1]] == [job["argv"]]:
                return {"unit": unit, "started": False}
            raise Refused("unit: %s still runs another command (the configuration changed): try later" % unit)
        if state is not None:
            self.systemd.release(unit)
            import time
            deadline = time.monotonic() + GONE_SEC
            while self.systemd.loaded(unit) is not None:
                if time.monotonic() > deadline:
                    raise Refused("unit: %s, an earlier run, is still being unloaded: try later" % unit)
                time.sleep(0.05)
        self.systemd.start(unit, notify_properties(job, self.dirs, self.user))
        return {"unit": unit, "started": True}

    def connection(self, conn):
        uid = peer_uid(conn)
        conn.settimeout(PEER_TIMEOUT_SEC)
        while True:
            fds = []
            try:
                req, fds = receive(conn)
                if req is None:
                    return
                if uid not in self.clients:
                    # Read first, then refused: closing on an unread
                    # message would reset the connection, reply unread.
                    raise Refused("uid %d may not use the launcher" % uid)
                reply = dict(self.handle(req, fds), ok=True)
            except Refused as e:
                log.warning("launcher: refused a request of uid %d: %s" % (uid, e))
                reply = {"ok": False, "error": str(e)}
            except config.ConfigError as e:
                reply = {"ok": False, "error": "the configuration has errors: %s" % e}
            except OSError as e:
                reply = {"ok": False, "error": str(e)}
            finally:
                for fd in fds:
                    os.close(fd)
            try:
                conn.sendall(json.dumps(reply).encode())
            except OSError:
                return

    def serve(self, listener, idle=IDLE_SEC):
        """Answer connections on LISTENER until IDLE seconds pass without one."""
        listener.settimeout(idle)
        while True:
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                log.info("launcher: idle for %ds, exiting" % idle)
                return 0
            except OSError as e:
                log.error("launcher: cannot accept on its socket: %s" % e)
                return 1
            with conn:
                try:
                    self.connection(conn)
                except OSError as e:
                    log.warning("launcher: connection dropped: %s" % e)


def ended_state(state):
    """Whether a unit in STATE ({ActiveState, SubState, Job}) has no main process."""
    from .executor_unit import ended
    job = state.get("Job") or (0, "")
    return ended(state.get("ActiveState"), state.get("SubState"), job[0] if isinstance(job, (tuple, list)) else 0)


def sandbox_program_beside(launcher):
    """buildunits-sandbox where it is installed: beside the launcher."""
    return os.path.join(os.path.dirname(os.path.abspath(launcher)), "buildunits-sandbox")


def listening_socket(path):
    """The socket systemd passed (LISTEN_FDS), else a new one bound at PATH."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS") == "1":
        return socket.socket(fileno=3)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(path)
    s.listen(16)
    return s


def main(argv=None):
    ap = argparse.ArgumentParser(prog="buildunits-launcher",
                                 description="start and stop build steps' transient units for the runners")
    ap.add_argument("--socket", default=SOCKET, help="where to listen without socket activation (%(default)s)")
    ap.add_argument("--client-user", default=CLIENT_USER, help="the runners' user (%(default)s)")
    ap.add_argument("--idle-sec", type=float, default=IDLE_SEC, help="exit after this long idle (%(default)s)")
    ap.add_argument("--sandbox-program", help="the program of builders' sandboxes (buildunits-sandbox "
                    "beside this program)")
    paths.add_arguments(ap)
    args = ap.parse_args(argv)
    log.setup("buildunits-launcher")
    from .executor_unit import Systemd
    try:
        clients = {0, pwd.getpwnam(args.client_user).pw_uid}
    except KeyError:
        print("buildunits-launcher: no user %s" % args.client_user, file=sys.stderr)
        return 1
    launcher = Launcher(paths.from_args(args), Systemd(), clients, sandbox_program=args.sandbox_program)
    return launcher.serve(listening_socket(args.socket), args.idle_sec)
