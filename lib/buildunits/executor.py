"""The executor seam: run this step, tell me how it ended.

The runner decides what runs, in which order, for how long, and what its
end means for the build; an executor only starts one step's command,
stops it when told, and reports its exit status.  Its whole interface:

    executor.prepare()                  -> a warning, or None
    executor.start(spec, argv, env, cwd, log_fd, on_exit) -> handle
        Start ARGV with ENV in CWD, stdin empty, stdout and stderr the
        descriptor LOG_FD (output goes straight to the log file, never
        through the runner).  OSError if it cannot start.  ON_EXIT(code)
        is called once, from the main loop, when the step has ended and
        nothing of it is left running: CODE is the exit status, or
        -SIGNAL when it was killed.
    handle.pid, handle.identity         what the step is, for the journal
    handle.usage                        what the step used, once ON_EXIT
        has been called (USAGE below); {} before
    handle.stop(grace)                  stop it as systemd stops a unit:
        SIGTERM to the whole tree now, SIGKILL to what is left GRACE
        seconds later (said in the log); ON_EXIT reports the end
    handle.kill()                       SIGKILL to the whole tree now; the
        runner has given up on the step: ON_EXIT is not called
    handle.halt(grace)                  stop() without the main loop (the
        runner is shutting down): returns when it has ended, or after
        twice GRACE; ON_EXIT is not called
    executor.leftovers(token)           processes of a build whose runner
    executor.end_leftovers(token, grace)   died, found and stopped before
        the build is recovered; end_leftovers returns what survives
    executor.unhonoured(unit)           (optional) the directives of UNIT
        it cannot apply; without it, all are applied (unhonoured() below)

SPEC is a StepSpec: which build and step this is, and the build's
TOKEN, a random string the runner records (in its worker pointer)
before any step of the build starts.  It is what lets the next runner
find what a dead one left running.  SPEC.unit holds the step's systemd
directives, checked (unitprops.py), the builder's then the step's.

USAGE, the step's accounting, is a dict of any of these keys; a key is
absent when it was not measured (absent is never zero):

    cpu_sec            float: CPU time, user and system, of all its processes
    memory_peak_bytes  int: its peak memory (see below for what each
                       executor measures)
    io_read_bytes      int: bytes read from storage (not the page cache)
    io_write_bytes     int: bytes written to storage
    tasks_max          int: the most processes and threads it had at once

The runner records it as the step's `usage` (buildunits-state(5)).

LocalExecutor, the first implementation and the one without systemd
(plain-process mode, the tests): the command is a child process in its
own session, tagged with BUILDUNITS_BUILD_TOKEN=TOKEN in its
environment.  The runner is a child subreaper (proctree), so what leaves
the step's session is still its descendant and is killed with it; one
step runs at a time, so every descendant of the runner is the step's.
A step with credentials (SPEC.credentials) gets $CREDENTIALS_DIRECTORY
as under systemd: a directory of copies of only those, read from
[Daemons] CredentialsDirectory= before it starts and removed when it
has ended (credentials.Private); a credential that cannot be read is an
OSError of start(), naming it and its file.  Isolated it is not: the
step runs as the runner's user, who can read every credential.

It applies the Limit*= directives (setrlimit(2) in the child, before the
command runs); a hard limit above the runner's own cannot be set without
privilege, and makes the step an exception that says so.  The cgroup and
sandbox directives need a unit of its own: unhonoured() names them, and
the runner's journal says so once per builder.

Its accounting: the end is seen on a pidfd and the step reaped with
wait4(2), whose rusage is the step's process and all it waited for; the
CPU time and storage I/O are the change in this process's
getrusage(RUSAGE_CHILDREN) over the step, which also counts what the step
left for the runner to reap (orphans, its leftovers).  memory_peak_bytes
is a maximum resident set size (ru_maxrss): that of the largest single
process, not the sum of the tree at its peak (which only a cgroup
measures).  RUSAGE_CHILDREN's own maxrss is the largest of every child
this process ever had, so it counts only when it grew during the step;
without pidfds (Linux before 5.3) it is all there is, and the peak is
absent when it did not grow.  tasks_max is not measured.

The transient-unit executor (executor_unit.py) slots in behind the same
calls.  A step whose settings are its builder's alone (SPEC.shared) runs
in the builder's sandbox on this worker, a unit the launcher starts once
(buildunits-build-BUILDER-sandbox-WORKER) and the runner keeps for the
builder's next steps and builds; its process (sandbox.py) runs each step
as the local executor does, LOG_FD sent to it over their socket.  Any
other step gets a unit of its own: start() has buildunits-launcher start
a unit named after SPEC (buildunits-build-BUILDER-NUMBER-STEP), with
LOG_FD handed over as its standard output and error, and the step's user, sandbox and limits as
unit properties (SPEC.unit as unitprops.variants() makes them, with the
launcher's own boundary, which no builder may loosen, after them); its
USAGE comes from the unit's accounting properties, ON_EXIT from the
unit's PropertiesChanged; stop() and kill() signal the unit's whole
cgroup; the token is in the unit's environment, and leftovers() lists
the units of the build (they outlive a runner killed with SIGKILL).  A
remote executor (ssh) would run the command under a remote session,
with the log written through the connection.  Nothing in runner.py
changes for either: it only holds a handle.
"""

import collections
import errno
import os
import resource
import signal
import subprocess

from gi.repository import GLib

from . import credentials as credentialsmod, proctree, unitprops

# UNIT: the step's own unit settings, ((Directive, value), ...) in the order
# given (the builder's, then the step's); CREDENTIALS: the names of the
# credentials it is handed.  Both are for executors that can honour them.
# SHARED: (UNIT, CREDENTIALS) of the builder alone, or None; a step whose
# own add nothing to them may run in a sandbox the builder's steps share
# (executor_unit.py), None: a unit of its own.
StepSpec = collections.namedtuple("StepSpec", "builder number step token unit credentials shared",
                                  defaults=((), (), None))


def under_systemd(environ=os.environ):
    """Whether this process is a systemd service on a systemd-run machine."""
    return bool(environ.get("INVOCATION_ID")) and os.path.isdir("/run/systemd/system")


def choose(setting, grace, worker, credentials_directory=credentialsmod.DEFAULT_DIRECTORY, sandbox_idle=60.0):
    """The executor for SETTING ([Daemons] Executor=: auto, local, transient)
    and a note for the journal, or None.  auto: the transient-unit executor
    when the runner runs under systemd and buildunits-launcher answers (it
    is socket-activated, and reaches systemd).  Local steps get their
    credentials from CREDENTIALS_DIRECTORY; units get them from systemd.
    A builder's sandbox no step has used for SANDBOX_IDLE seconds is closed."""
    local = LocalExecutor(credentials_directory, worker)
    if setting == "local":
        return local, "Executor=local: build steps run as the runner's user, not isolated"
    from . import executor_unit
    if setting == "transient":
        return executor_unit.TransientUnitExecutor(grace, worker=worker, sandbox_idle=sandbox_idle), None
    if not under_systemd():
        return local, "not under systemd: build steps run as child processes of the runner, not isolated"
    ex = executor_unit.TransientUnitExecutor(grace, worker=worker, sandbox_idle=sandbox_idle)
    why = ex.refusal()
    if why is None:
        return ex, None
    return local, ("cannot start build steps as units (%s): build steps run as child processes "
                             "of the runner, not isolated" % why)


class LocalExecutor:
    """Steps as child processes of this one, each in its own session."""

    name = "local"

    def __init__(self, credentials_directory=credentialsmod.DEFAULT_DIRECTORY, worker=""):
        self.credentials = credentialsmod.Private(credentials_directory, worker)

    def prepare(self):
        try:
            self.credentials.remove()     # left by a runner that died during a step
        except OSError as e:
            return "cannot remove %s: %s" % (self.credentials.path, e.strerror)
        if not proctree.become_subreaper():
            return "cannot become a child subreaper; escaped step processes may survive a timeout"
        return None

    def start(self, spec, argv, env, cwd, log_fd, on_exit):
        env = dict(env)
        env[proctree.TOKEN_VARIABLE] = spec.token
        env.pop(credentialsmod.VARIABLE, None)
        cleanup = None
        if spec.credentials:
            env[credentialsmod.VARIABLE] = self.credentials.make(spec.credentials)
            cleanup = self.credentials.remove
        limits = rlimits(spec.unit)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log_fd,
                                    stderr=log_fd, start_new_session=True, close_fds=True,
                                    preexec_fn=(lambda: _set_rlimits(limits)) if limits else None)
        except subprocess.SubprocessError as e:     # setrlimit failed in the child
            if cleanup:
                cleanup()
            raise OSError(0, "cannot apply the step's Limit*= settings: %s" % e)
        except BaseException:
            if cleanup:
                cleanup()
            raise
        return LocalStep(proc, log_fd, on_exit, before, cleanup)

    def unhonoured(self, unit):
        return unitprops.not_rlimits(unit)

    def leftovers(self, token):
        return proctree.tagged(token)

    def end_leftovers(self, token, grace):
        return proctree.end_tagged(token, grace)


def unhonoured(executor, unit):
    """The directives of UNIT (StepSpec.unit) that EXECUTOR cannot apply."""
    ask = getattr(executor, "unhonoured", None)
    return ask(unit) if ask is not None else []


def rlimits(unit):
    """[(resource, (soft, hard))] of UNIT's Limit*= directives, for
    setrlimit(2).  OSError (EPERM) naming the directive if a hard limit is
    above this process's own and it may not raise it."""
    out = []
    for name, soft, hard in unitprops.rlimits(unit):
        res = getattr(resource, "RLIMIT_" + name[len("Limit"):])
        soft, hard = (resource.RLIM_INFINITY if n == unitprops.INFINITY else n for n in (soft, hard))
        own = resource.getrlimit(res)[1]
        if own != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > own) and os.geteuid():
            raise OSError(errno.EPERM, "%s=: a hard limit above the runner's own (%d) needs a unit of its own "
                          "(Executor=transient)" % (name, own))
        out.append((res, (soft, hard)))
    return out


def _set_rlimits(limits):
    # In the child, between fork and exec: nothing here may allocate much.
    for res, pair in limits:
        resource.setrlimit(res, pair)


def _pidfd(pid):
    """A pidfd of child PID, or None where the kernel has none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class LocalStep:
    """One step started by LocalExecutor: a process group led by PID."""

    def __init__(self, proc, log_fd, on_exit, before, cleanup=None):
        self._proc = proc
        self._cleanup = cleanup      # what goes when the step has ended (its credentials)
        self.pid = proc.pid
        self.identity = "process %d" % proc.pid
        self._log_fd = log_fd
        self._on_exit = on_exit
        self._grace_source = None
        self._before = before
        self.usage = {}
        self._pidfd = _pidfd(proc.pid)
        if self._pidfd is not None:
            self._watch = GLib.unix_fd_add_full(GLib.PRIORITY_DEFAULT, self._pidfd, GLib.IOCondition.IN,
                                                self._readable)
        else:
            self._watch = GLib.child_watch_add(GLib.PRIORITY_DEFAULT, proc.pid, self._exited)
        self.returncode = None

    def stop(self, grace):
        proctree.kill_tree(self.pid, signal.SIGTERM)
        if self._grace_source is not None or self.returncode is not None:
            return

        def expired():
            self._grace_source = None
            if self.returncode is None:
                self._note("buildunits: still running %ds after SIGTERM; sending SIGKILL\n" % grace)
                proctree.kill_tree(self.pid, signal.SIGKILL)
            return False
        self._grace_source = GLib.timeout_add(int(grace * 1000), expired)

    def kill(self):
        self._detach()
        proctree.kill_tree(self.pid, signal.SIGKILL)
        self._clean()

    def halt(self, grace):
        self._detach()
        proctree.kill_tree(self.pid, signal.SIGTERM)
        for sig in (signal.SIGKILL, None):
            try:
                self._proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            if sig is not None:
                proctree.kill_tree(self.pid, sig)
        proctree.reap()
        self._clean()

    def _clean(self):
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            try:
                cleanup()
            except OSError:
                pass             # the runner's next start removes it

    def _detach(self):
        for src in (self._watch, self._grace_source):
            if src is not None:
                GLib.source_remove(src)
        self._watch = self._grace_source = None
        self._close_pidfd()

    def _close_pidfd(self):
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def _readable(self, fd, condition):
        """The pidfd says the step's process has ended: reap it with its rusage."""
        try:
            pid, status, own = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status, own = self.pid, -1, None    # reaped by someone else: the status is lost
        if pid == 0:
            return True
        self._close_pidfd()
        self._exited(self.pid, status, own)
        return False

    def _exited(self, pid, status, own=None):
        self._watch = None        # a child watch ends with its child, and _readable's source too
        if self._grace_source is not None:
            GLib.source_remove(self._grace_source)
            self._grace_source = None
        code = os.waitstatus_to_exitcode(status) if status >= 0 else -1
        self.returncode = self._proc.returncode = code
        # Processes the step left behind (daemonized or backgrounded) do not
        # outlive it: a step owns nothing after it ends.
        proctree.kill_leftovers(pid)
        self._clean()
        self.usage = proctree.usage(self._before, resource.getrusage(resource.RUSAGE_CHILDREN), own)
        self._on_exit(code)

    def _note(self, text):
        try:
            os.write(self._log_fd, text.encode())
        except OSError:
            pass

