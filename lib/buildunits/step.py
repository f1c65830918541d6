"""A build's steps: their plan, their environment, and the watch over the
one running.

The plan of a build is "checkout" first when the builder has a
Repository= (and Checkout= is on), then each [Step] as `/bin/sh -c
COMMAND`, numbered from 1 (the number is in the log's name).  A step
with credentials (the builder's Credential= and its own; the checkout
step has the builder's) runs through buildunits-mask, which masks their
values in its output (mask.py).  A step's environment is the runner's,
less what systemd gave the runner alone (the notify socket, the
watchdog, socket activation, the journal stream, its own credentials),
plus the builder's and the step's Environment= and the BUILDUNITS_*
variables, the build's properties among them (properties.py).  Its systemd directives (unit()) are the builder's, then its
own.

The watch (Watch) holds a running step to TimeoutSec= and
TimeoutIdleSec=: the idle time is measured by the size of the log file,
looked at on a timer (the runner never reads the output), and a step
that exceeds either is reported once to the runner, which stops it.
The checkout step has no TimeoutSec= and 20 minutes of TimeoutIdleSec=.

Also what the runner measures of a step for the "it filled the disk"
verdict (buildrecord.filled_by_step): the room there was when it
started, and what it wrote since.
"""

import math
import os
import time

from . import checkout, daemon, paths, properties

CHECKOUT_IDLE_SEC = 20 * 60.0
_SYSTEMD_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                 "INVOCATION_ID", "JOURNAL_STREAM", "CREDENTIALS_DIRECTORY")
MASK_PROGRAM = "buildunits-mask"


class Planned:
    """One step of a build's plan (SPEC: its config.Step; None for checkout),
    handed the credentials named CREDENTIALS."""

    def __init__(self, index, name, command, spec=None, credentials=()):
        self.index = index
        self.name = name
        self.command = command
        self.spec = spec
        self.credentials = tuple(credentials)
        self.description = spec.description if spec else checkout.DESCRIPTION

    @property
    def argv(self):
        argv = ["/bin/sh", "-c", self.command]
        if self.credentials:
            return [paths.program(MASK_PROGRAM), "--"] + argv
        return argv


def plan(builder, req):
    """The steps of a build of REQ by BUILDER (a config.Builder)."""
    steps = []
    if builder.repository and builder.checkout:
        steps.append(Planned(1, "checkout", checkout.checkout_script(
            builder.repository, req.get("branch") or "", req.get("revision") or "", builder.kind),
            credentials=builder.credentials))
    for s in builder.steps:
        steps.append(Planned(len(steps) + 1, s.name, s.command, s,
                             dict.fromkeys(builder.credentials + s.credentials)))
    return steps


def environment(base, builder, st, rec, workdir, worker):
    """The environment of step ST of build REC, from BASE (the runner's)."""
    env = {k: v for k, v in base.items() if k not in _SYSTEMD_ONLY}
    env.update(builder.environment)
    if st.spec:
        env.update(st.spec.environment)
    env.update({"BUILDUNITS_BUILDER": rec["builder"], "BUILDUNITS_BUILD": str(rec["number"]),
                "BUILDUNITS_REVISION": rec.get("revision") or "", "BUILDUNITS_BRANCH": rec.get("branch") or "",
                # The real URL, from the configuration: the record holds it masked.
                "BUILDUNITS_REPOSITORY": builder.repository or rec.get("repository") or "",
                "BUILDUNITS_WORKDIR": workdir, "BUILDUNITS_WORKER": worker, "BUILDUNITS_STEP": st.name})
    req = rec.get("request")
    env.update(properties.environment(req.get("properties") if isinstance(req, dict) else None))
    return env


def unit(builder, st):
    """The systemd directives of step ST (unitprops.py): BUILDER's, then
    the step's own (none for checkout), in order."""
    return tuple(builder.unit) + tuple(st.spec.unit if st.spec else ())


def shared(builder):
    """What BUILDER's steps share (StepSpec.shared): its own directives and
    credentials, which a sandbox of the builder's is set up with; None
    when each step is to be a unit of its own (UnitPerStep=yes).  A step
    whose unit() or credentials hold more runs in a unit of its own."""
    if builder.unit_per_step:
        return None
    return tuple(builder.unit), tuple(dict.fromkeys(builder.credentials))


def working_directory(st, workdir):
    if st.spec and st.spec.working_directory:
        return os.path.join(workdir, st.spec.working_directory)
    return workdir


class Watch:
    """TimeoutSec= and TimeoutIdleSec= of step ST, whose output goes to
    LOG_FD: ON_TIMEOUT(why) is called once if either is exceeded."""

    def __init__(self, st, log_fd, on_timeout):
        self._fd = log_fd
        self._on_timeout = on_timeout
        self._fired = False
        self._sources = []
        timeout = st.spec.timeout if st.spec else math.inf
        idle = st.spec.timeout_idle if st.spec else CHECKOUT_IDLE_SEC
        if timeout != math.inf:
            self._sources.append(daemon.Timer(timeout, self._fire, "timed out after %s" % _span(timeout)))
        if idle != math.inf:
            self._idle = idle
            self._last_size, self._last_output = 0, time.monotonic()
            self._sources.append(daemon.Timer(max(0.1, min(idle / 4, 10.0)), self._idle_check))

    def cancel(self):
        for src in self._sources:
            daemon.remove_source(src)
        self._sources = []

    def _idle_check(self):
        try:
            size = os.fstat(self._fd).st_size
        except OSError:
            return True
        now = time.monotonic()
        if size != self._last_size:
            self._last_size, self._last_output = size, now
        elif now - self._last_output >= self._idle:
            self._fire("timed out: no output for %s" % _span(self._idle))
            return False
        return True

    def _fire(self, why):
        if not self._fired:
            self._fired = True
            self._on_timeout(why)
        return False


def _span(sec):
    from .config import format_timespan
    return format_timespan(sec)


def free_bytes(path):
    """Bytes free for this process on PATH's filesystem (-1: unknown)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def written_since(top, since):
    """Bytes taken by the files under TOP changed at or after SINCE."""
    total = 0
    for d, dirs, files in os.walk(top):
        for n in files:
            try:
                st = os.lstat(os.path.join(d, n))
            except OSError:
                continue
            if st.st_mtime >= since:
                total += st.st_blocks * 512
    return total


def log_tail(fd, lines=5):
    """The last LINES lines of the log open at FD (which is closed)."""
    try:
        with open(fd, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            return f.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError:
        return []
