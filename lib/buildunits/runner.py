"""buildunits-runner WORKER: claim build requests and run their steps.

NAME
    buildunits-runner - a worker runner (the design card's "slave runner")

DESCRIPTION
    One runner runs one build at a time; run several (the systemd template
    buildunits-runner@WORKER) for parallel builds.  It takes the oldest
    request in SPOOL/requests/new whose builder accepts this worker
    (Workers=), claims it by renaming it into requests/active/WORKER/
    (if the rename fails, another runner won), takes the next build
    number, and runs the steps:

    - "checkout" first when the builder has a Repository=: the exact
      revision is fetched into the work directory STATE/work/WORKER/BUILDER
      and checked out (detached, forced, untracked files removed);
    - then each [Step] as `/bin/sh -c COMMAND` in its own session, stdout
      and stderr going straight to the step's log file as they are
      produced (the runner never holds output in memory).

    A step that runs longer than TimeoutSec= or prints nothing for
    TimeoutIdleSec= has its whole process tree stopped: its process group,
    and any descendant that left it (the runner is a child subreaper, so
    orphans stay its descendants), get SIGTERM, and SIGKILL if the step has
    not exited KILL_GRACE_SEC later; a cancel and SIGTERM to the runner
    stop a step the same way.  After each step, processes the step left
    behind are killed too.  Steps get BUILDUNITS_BUILDER, _BUILD,
    _REVISION, _BRANCH, _REPOSITORY, _WORKDIR, _WORKER and _STEP.

    Crash safety.  The runner's pointer STATE/workers/WORKER.json names the
    request and build number it holds; it is written before the build
    record.  The order of a build:
        claim (rename)  ->  mkdir number  ->  pointer  ->  build.json running
        (every step pending)  ->  steps (a line appended to progress.jsonl
        at each transition, not fsync'd: O(1) whatever the build's size)
        ->  build.json finished, fsync'd (COMMIT POINT of the result)
        ->  progress.jsonl removed  ->  remove the claim  ->  remove the pointer
    At startup, before READY=1, whatever is in requests/active/WORKER/ was
    held by this worker's previous, dead, process: if its build record is
    final the claim is just removed; otherwise the build is recorded as
    result "retry" with the reason, and the request is handed back to
    requests/new to be built again under a new number.  Better to run a
    build twice than to lose it.

    Which writes are fsync'd, and why: the claim, the number's mkdir and
    the pointer are, in that order, so that a build record can never exist
    without the pointer that lets recovery find it.  The first build.json
    and the progress lines are not: whatever a crash leaves of them (none,
    or build.json and a prefix of the lines; state.read_build applies
    them), recovery rewrites the record as interrupted.  The final record
    is, and the claim is removed only after it: it is the commit point of
    the result.

    A build that fills the disk itself (a step wrote at least half the
    room there was when it started; see _filled_by_step) is not requeued:
    once the record can be written, it ends as "exception" with the
    reason, and the next request is taken.

    On SIGTERM a running build is stopped the same way: its processes are
    killed, it is recorded as "retry" (interrupted), and its request is
    handed back; then the runner exits.  A build whose cancel record is in
    the spool by then (committed while the runner was stopped, say) is
    recorded as "cancelled" instead, and its request is not handed back.

FILES
    SPOOL/requests/active/WORKER/ID   the claimed request
    STATE/builds/BUILDER/NUMBER/      the build record and step logs
    STATE/workers/WORKER.json         the build this runner holds
    STATE/work/WORKER/BUILDER/        the work directory

SIGNALS
    SIGHUP re-reads the configuration (a running build keeps the one it
    started with); SIGTERM stops as above.
"""

import ctypes
import errno
import json
import math
import os
import re
import secrets
import shlex
import signal
import subprocess
import time
import traceback

from gi.repository import GLib

from . import buildrecord, changes, daemon, fsutil, git, log, records, redact, results
from .state import NotLinked

KILL_GRACE_SEC = 5      # from SIGTERM to SIGKILL when a step is stopped
_PR_SET_CHILD_SUBREAPER = 36
WORKER_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")   # not "w1\n"


def checkout_script(repository, branch, revision):
    """The shell commands of the implicit checkout step.

    The repository's URL is not in them: it may hold credentials, and the
    command is recorded and shown (with the URL masked, as a comment).  The
    step has it in BUILDUNITS_REPOSITORY, and gives it to git as the URL of
    a remote through GIT_CONFIG_* variables, so it is on no command line and
    in no file; git's messages, which may quote it, are shown masked.

    REVISION is empty or a full id (git.valid_revision: the runner refuses
    any other request); the branch and the revision are data, so each
    git command has `--end-of-options` before them (git
    checkout has no such option: it is given the id rev-parse printed,
    and `--` after it)."""
    q = shlex.quote
    target = revision if revision else "FETCH_HEAD"
    fetch_ref = revision if revision else "refs/heads/" + branch
    shown = re.sub(r"[\x00-\x1f\x7f]", "?", redact.url(repository))
    lines = [
        "# fetch from %s" % shown,
        "set -e",
        "[ -d .git ] || git init --quiet .",
        # A git killed with its runner leaves lock files; only this worker's
        # runner (one per worker, locks/ in the state directory) works here.
        "find .git -name '*.lock' -type f -delete",
        'export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=remote.buildunits.url GIT_CONFIG_VALUE_0="$BUILDUNITS_REPOSITORY"',
        "masked() { \"$@\" 2>.git/buildunits-stderr && s=0 || s=$?; sed -e %s .git/buildunits-stderr >&2; "
        "rm -f .git/buildunits-stderr; return $s; }" % q(_SED_MASK),
        # A revision not on the branch's tip is fetched by name when the
        # server allows it; otherwise all branches are fetched.
        "git fetch --quiet --no-tags --end-of-options buildunits %s 2>/dev/null || "
        "masked git fetch --quiet --no-tags --end-of-options buildunits '+refs/heads/*:refs/remotes/origin/*'"
        % q(fetch_ref),
        "rev=$(git rev-parse --verify --quiet --end-of-options %s) || { echo %s >&2; exit 1; }"
        % (q(target + "^{commit}"), q("buildunits: no commit %s fetched" % target)),
        'git checkout --quiet --force --detach "$rev" --',
        "git clean --quiet -ffdx",
        "git log -1 --format='checked out %H%n%an: %s'",
    ]
    return "\n".join(lines)


# redact.text() in sed (POSIX BRE): user:secret@ -> user:***@, token@ -> ***@.
_SED_MASK = ("s|\\(://[^/?#[:space:]:@]*\\):[^/?#[:space:]]*@|\\1:***@|g; "
             "s|://[^/?#[:space:]:@]\\{1,\\}@|://***@|g")


def bad_request(req):
    """Why the request REQ must not be built, or None.  Its revision must be
    empty (build the branch's tip) or a full commit id."""
    rev = req.get("revision")
    if rev not in (None, "") and not git.valid_revision(rev):
        return "request whose revision %r is not empty or %s" % (rev, git.REVISION_RULE)
    return None


class _Step:
    def __init__(self, index, name, command, spec=None):
        self.index = index
        self.name = name
        self.command = command
        self.spec = spec          # config.Step, or None for checkout


class Runner(daemon.Daemon):
    role = "Runner"
    program = "buildunits-runner"
    watch_queues = ("requests", "cancel")
    subscriptions = (("Scheduler", "BuildRequested"), ("Scheduler", "CancelRequested"))

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.worker = self.args.worker
        self.build = None          # the build record being run
        self._steps = []
        self._proc = None
        self._halted = False
        self._sources = []
        self._builds_run = 0
        self._skipped = set()      # request ids this worker cannot run (logged once)
        self._cancelled = None     # why the running build is being cancelled
        self._grace_source = None  # the SIGKILL that follows a SIGTERM (_terminate_step)
        self._space = []           # (step index, start time, free bytes then) of the build's steps
        self._own_failures = {}    # (builder, number) -> why the build failed by its own doing

    def instance(self):
        return self.worker

    # ---------------------------------------------------------- recovery
    def startup(self):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            log.warning("cannot become a child subreaper; escaped step processes may survive a timeout")
        try:
            ptr = self.state.read_worker(self.worker)
        except records.RecordError as e:
            self.state.quarantine(e.path, e.reason)     # logged, kept in STATE/corrupt/
            log.error("ignoring the pointer of %s" % self.worker)
            ptr = None
        if ptr:
            # Before the build is recorded and its request handed back (so
            # before a retry can start in the same work directory): no
            # process of it may survive.  Raises if one does; the claim then
            # stays, and work() tries again on the next wake or rescan.
            self._end_survivors(ptr)
        for rid in self.spool.claimed(self.worker):
            req = self.spool.read_claimed(self.worker, rid)
            if req is None:
                continue       # unreadable: moved to corrupt/
            if ptr and ptr.get("request") == rid:
                b, n = ptr.get("builder"), ptr.get("number")
                fsutil.sweep_stale_tmp(self.state.build_dir(b, n))
                try:
                    rec = self.state.read_build(b, n)
                except records.RecordError as e:
                    log.error("%s; recording the build afresh" % e)
                    rec = None
                if rec and rec.get("state") == "finished":
                    self.spool.finish(self.worker, rid)
                    continue
                own = self._own_failures.get((b, n))
                if own is not None:
                    # It failed by what it did itself (_stuck): running it
                    # again would fail the same way.  Written once the disk
                    # has room; the claim goes only after the record.
                    self._record_interrupted(rec, req, b, n, own, results.EXCEPTION, summary=own)
                    self.spool.finish(self.worker, rid)
                    del self._own_failures[(b, n)]
                    continue
                cancel = self.spool.read_cancel(b, n)
                if cancel is not None:
                    self._record_interrupted(rec, req, b, n, "cancelled by %s" % cancel.get("user"),
                                             results.CANCELLED)
                    self.spool.finish(self.worker, rid)
                    self.spool.clear_cancel(b, n)
                    continue
                self._record_interrupted(rec, req, b, n, "interrupted: runner %s stopped before the build "
                                         "finished; the request is queued again" % self.worker)
            if self.spool.unclaim(self.worker, rid):
                log.notice("%s: request %s handed back to the queue" % (req.get("builder"), rid),
                           builder=req.get("builder"))
        self.state.clear_worker(self.worker)

    def _end_survivors(self, ptr):
        """Kill what is left of the build PTR (the worker record) names.

        Under systemd, the unit's cgroup dies with the runner (KillMode=),
        and the runner is the subreaper of its steps while it lives; a
        runner killed outside systemd (SIGKILL, the OOM killer) takes
        neither with it, and its steps go on, writing into a build that
        recovery is about to record as finished, in the work directory the
        retry will use.  Every step of a build carries the build's token
        (BUILDUNITS_BUILD_TOKEN, recorded in the worker record before any
        step starts) in its environment, which its descendants inherit, in
        or out of its session; a token is random, so a match in
        /proc/PID/environ is a process of that build and nothing else, and
        a reused pid cannot be mistaken for one.  They get SIGTERM, then
        SIGKILL after KILL_GRACE_SEC; if any is still there (or cannot be
        signalled), RuntimeError: the build is not recovered, nor its
        request handed back, until they are gone.  Not found: a process
        that cleared its environment (env -i) or runs as another user
        (setuid); the cgroup is the answer to those."""
        token = ptr.get("token")
        if not isinstance(token, str) or not token:
            return      # written by an older runner
        pids = _processes_with_token(token)
        if not pids:
            return
        what = "%s #%s" % (ptr.get("builder"), ptr.get("number"))
        log.warning("%s: %d process%s of the build outlived runner %s (pid %s); stopping them: %s"
                    % (what, len(pids), "" if len(pids) == 1 else "es", self.worker, ptr.get("pid"),
                       " ".join(map(str, pids))), builder=ptr.get("builder"))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
                except PermissionError as e:
                    raise RuntimeError("%s: cannot stop process %d of the build: %s" % (what, pid, e.strerror))
            deadline = time.monotonic() + KILL_GRACE_SEC
            while pids and time.monotonic() < deadline:
                time.sleep(0.05)
                pids = _processes_with_token(token)
            if not pids:
                return
        raise RuntimeError("%s: processes of the build survive SIGKILL: %s; the build is recovered once "
                           "they are gone" % (what, " ".join(map(str, pids))))

    def _record_interrupted(self, rec, req, builder, number, reason, result=results.RETRY,
                            summary="interrupted"):
        if rec is None:
            rec = self._new_record(req, builder, number, [])
        self.state.write_build(buildrecord.interrupted(rec, reason, result, time.time(), summary))
        self.spool.hint(builder, number)
        log.warning("%s #%d: %s" % (builder, number, reason), builder=builder, build=number, result=result)
        self.bus.emit("BuildFinished", builder, number, result)

    # -------------------------------------------------------------- work
    def work(self):
        if self.stopping:
            return
        self._check_cancels()
        if self.build is not None:
            return
        if self.spool.claimed(self.worker):
            # Claims this runner holds but is not running: a build that
            # failed to start or to finish (full disk, I/O error).  Recover
            # them as at startup before taking anything new.
            self.startup()
            if self.spool.claimed(self.worker):
                return    # still cannot: the next wake or rescan tries again
        for rid in self.spool.pending("requests"):
            req = self.spool.read("requests", rid)
            if req is None:
                continue
            name = req.get("builder")
            b = self.cfg.builders.get(name) if isinstance(name, str) else None
            if b is None or not b.runs_on(self.worker):
                if rid not in self._skipped and b is None:
                    log.warning("request %s is for builder %r, which is not configured; leaving it queued"
                                % (rid, req.get("builder")))
                self._skipped.add(rid)
                continue
            claimed = self.spool.claim(rid, self.worker)
            if claimed is None:
                continue       # another runner won, or it was corrupt
            why = bad_request(claimed)
            if why:
                # Not built: its fields would reach a command line.  Moved
                # to corrupt/ from our claim, so no other runner races it;
                # a crash before the move leaves the claim, which startup()
                # hands back and the next pass moves.
                self.spool.reject("requests", rid, why, worker=self.worker)
                continue
            try:
                self._start(rid, claimed, b)
            except Exception as e:
                self._stuck("cannot start a build of %s: %s" % (b.name, e))
            return

    def _stuck(self, why, error=None):
        """A build could not go on (full disk, I/O error): drop it from
        memory; its claim stays, and work() recovers it (records it as
        interrupted and requeues it) as soon as the disk lets it.

        Unless the build filled the disk itself (_filled_by_step): then it
        is recorded as an exception, with the reason, and not requeued: a
        retry would fill the disk again, forever.  That verdict is kept in
        memory until the record can be written (the disk is full: nothing
        can be stored now); a runner restarted before there is room again
        records the build as interrupted, as before."""
        if self.build is not None and isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            own = self._filled_by_step()
            if own is not None:
                self._own_failures[(self.build["builder"], self.build["number"])] = own
                why += "; %s: the build ends as an exception and is not retried" % own
        log.error("%s; the build is recovered when the disk allows (next wake or rescan)" % why)
        for line in traceback.format_exc().rstrip().splitlines():
            log.error("  " + line)
        if self._proc is not None:
            self._kill_tree(signal.SIGKILL)
        for src in self._sources:
            daemon.remove_source(src)
        self._sources = []
        self._cancel_grace()
        self._proc = None
        self.build = None
        self.notifier.status("error: %s" % why)
        self.retry_later()

    def _check_cancels(self):
        """Act on cancellations of our build; clear those of finished builds."""
        for (b, n), rec in self.spool.cancel_requests().items():
            if self.build is not None and (b, n) == (self.build["builder"], self.build["number"]):
                if not self._cancelled:
                    self._cancel(rec)
                continue
            try:
                other = self.state.read_build(b, n)
            except (records.RecordError, OSError):
                continue
            if other is None or other.get("state") == "finished":
                self.spool.clear_cancel(b, n)

    def _cancel(self, rec):
        b = self.build
        self._cancelled = "cancelled by %s" % (rec.get("user") or "someone")
        log.notice("%s #%d: %s" % (b["builder"], b["number"], self._cancelled),
                   builder=b["builder"], build=b["number"])
        if self._proc is not None:
            try:
                os.write(self._logfd, ("\nbuildunits: build %s; stopping the step's processes\n"
                                       % self._cancelled).encode())
            except OSError:
                pass
            self._terminate_step()   # _exited() records the rest

    def _new_record(self, req, builder, number, steps):
        req = redact.record(req)   # a request from an older release may hold the real URL
        # A request from an older scheduler may carry its changes whole.
        req = changes.bound_request(req)
        return {"builder": builder, "number": number, "request_id": req.get("id"), "request": req,
                "worker": self.worker, "state": "running", "result": None, "reason": "",
                "started": time.time(), "finished": None, "repository": req.get("repository", ""),
                "branch": req.get("branch", ""), "revision": req.get("revision", ""),
                "steps": [{"name": s.name, "description": (s.spec.description if s.spec else
                                                           "fetch and check out the revision"),
                           "command": s.command, "state": "pending", "result": None, "started": None,
                           "finished": None, "log": None, "exit_status": None, "summary": "",
                           "timed_out": False} for s in steps]}

    def _start(self, rid, req, b):
        steps = []
        if b.repository and b.checkout:
            steps.append(_Step(1, "checkout", checkout_script(b.repository, req.get("branch") or "main",
                                                              req.get("revision") or "")))
        for s in b.steps:
            steps.append(_Step(len(steps) + 1, s.name, s.command, s))
        number = self.state.allocate_number(b.name)
        # The token is in every step's environment: what lets the next
        # runner find the processes of this build if this one dies
        # (_end_survivors).  Written (fsync'd) before any step can start.
        self._token = secrets.token_hex(16)
        self.state.write_worker(self.worker, {"request": rid, "builder": b.name, "number": number,
                                              "pid": os.getpid(), "token": self._token})
        rec = self._new_record(req, b.name, number, steps)
        # Written whole once, with every step pending; the steps' progress
        # goes to progress.jsonl, a line per transition (state.py).
        self.state.write_build(rec, durable=False)
        self.state.start_progress(b.name, number)
        self.build, self._steps, self._builder, self._rid = rec, steps, b, rid
        self._halted = False
        self._cancelled = None
        self._space = []
        self._workdir = self.state.work_dir(self.worker, b.name)
        fsutil.makedirs(self._workdir)
        self.spool.hint(b.name, number)
        log.info("%s #%d: build started on worker %s (%s)" % (b.name, number, self.worker, req.get("reason", "")),
                 builder=b.name, build=number, worker=self.worker)
        self.bus.emit("BuildStarted", b.name, number, self.worker)
        self.notifier.status(self.status_text())
        self._next(0)

    # -------------------------------------------------------------- steps
    def _next(self, i):
        rec = self.build
        while i < len(self._steps):
            st = self._steps[i]
            if self._cancelled or (self._halted and not (st.spec and st.spec.always_run)):
                rec["steps"][i].update(state="finished", result=results.SKIPPED)
                self._progress(i)
                i += 1
                continue
            self._space.append((i, time.time(), _free_bytes(self.state.build_dir(rec["builder"], rec["number"]))))
            if self._launch(i):
                return
            i += 1
        self._finish()

    def _env(self, st):
        rec = self.build
        env = dict(os.environ)
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                  "INVOCATION_ID", "JOURNAL_STREAM"):
            env.pop(k, None)
        env.update(self._builder.environment)
        if st.spec:
            env.update(st.spec.environment)
        env.update({"BUILDUNITS_BUILDER": rec["builder"], "BUILDUNITS_BUILD": str(rec["number"]),
                    "BUILDUNITS_REVISION": rec.get("revision") or "", "BUILDUNITS_BRANCH": rec.get("branch") or "",
                    # The real URL, from the configuration: the record holds it masked.
                    "BUILDUNITS_REPOSITORY": self._builder.repository or rec.get("repository") or "",
                    "BUILDUNITS_WORKDIR": self._workdir,
                    "BUILDUNITS_WORKER": self.worker, "BUILDUNITS_STEP": st.name,
                    "BUILDUNITS_BUILD_TOKEN": self._token})
        return env

    def _launch(self, i):
        """Start step I; False if it could not start (recorded as exception)."""
        rec, st = self.build, self._steps[i]
        srec = rec["steps"][i]
        logname = self.state.log_name(st.index, st.name)
        logpath = self.state.log_path(rec["builder"], rec["number"], st.index, st.name)
        srec.update(state="running", started=time.time(), log=logname)
        cwd = self._workdir
        if st.spec and st.spec.working_directory:
            cwd = os.path.join(self._workdir, st.spec.working_directory)
        try:
            # A new file, never what is there: an earlier step (same user)
            # may have planted a file or a link at this name.
            fd = self.state.create_log(rec["builder"], rec["number"], logname)
        except FileExistsError:
            srec["log"] = None
            return self._step_exception(i, "cannot create the log %s: a file or link is already there "
                                        "(made by an earlier step?); it is left as it is" % logpath)
        except NotLinked as e:
            srec["log"] = None
            return self._step_exception(i, "cannot create the log %s: %s" % (logpath, e))
        except OSError as e:
            return self._step_exception(i, "cannot create the log %s: %s" % (logpath, e.strerror))
        try:
            self._proc = subprocess.Popen(["/bin/sh", "-c", st.command], cwd=cwd, env=self._env(st),
                                          stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                          start_new_session=True, close_fds=True)
        except OSError as e:
            os.write(fd, ("buildunits: cannot start the step in %s: %s\n" % (cwd, e.strerror)).encode())
            os.close(fd)
            return self._step_exception(i, "cannot start: %s" % e.strerror)
        self._logfd = fd
        self._step_i = i
        self._timed_out = None
        self._last_size, self._last_output = 0, time.monotonic()
        self._progress(i)
        self.spool.hint(rec["builder"], rec["number"])
        self.bus.emit("StepStarted", rec["builder"], rec["number"], st.name)
        log.info("%s #%d: step %s started" % (rec["builder"], rec["number"], st.name),
                 builder=rec["builder"], build=rec["number"], step=st.name)
        self.notifier.status(self.status_text())
        self._sources = [GLib.child_watch_add(GLib.PRIORITY_DEFAULT, self._proc.pid, self._exited, i)]
        spec = st.spec
        timeout = spec.timeout if spec else math.inf
        idle = spec.timeout_idle if spec else 20 * 60.0
        if timeout != math.inf:
            self._sources.append(daemon.Timer(timeout, self._timeout, "timeout", timeout))
        if idle != math.inf:
            tick = max(0.1, min(idle / 4, 10.0))
            self._idle_limit = idle
            self._sources.append(daemon.Timer(tick, self._idle_check))
        return True

    def _step_exception(self, i, why):
        rec = self.build
        rec["steps"][i].update(state="finished", result=results.EXCEPTION, finished=time.time(), summary=why)
        self._halted = True
        rec["_contrib"] = rec.get("_contrib", []) + [results.EXCEPTION]
        rec["reason"] = "step %s: %s" % (self._steps[i].name, why)
        log.error("%s #%d: step %s: %s" % (rec["builder"], rec["number"], self._steps[i].name, why),
                  builder=rec["builder"], build=rec["number"], step=self._steps[i].name, result=results.EXCEPTION)
        self._progress(i, "reason")
        return False

    def _progress(self, i, *build_keys):
        """Record step I's state (and the build's BUILD_KEYS) in the
        build's progress file: one line, whatever the size of the build.
        Not fsync'd: a crash leaves what recovery records as interrupted."""
        rec = self.build
        self.state.append_progress(rec["builder"], rec["number"], i, rec["steps"][i],
                                   {k: rec.get(k) for k in build_keys})

    def _idle_check(self):
        try:
            size = os.fstat(self._logfd).st_size
        except OSError:
            return True
        now = time.monotonic()
        if size != self._last_size:
            self._last_size, self._last_output = size, now
        elif now - self._last_output >= self._idle_limit:
            self._timeout("idle", self._idle_limit)
            return False
        return True

    def _timeout(self, kind, limit):
        if self._proc is None or self._timed_out:
            return False
        from .config import format_timespan
        self._timed_out = ("timed out after %s" % format_timespan(limit) if kind == "timeout"
                           else "timed out: no output for %s" % format_timespan(limit))
        os.write(self._logfd, ("\nbuildunits: %s; stopping the step's processes\n" % self._timed_out).encode())
        self._terminate_step()
        return False

    def _terminate_step(self):
        """Stop the running step as systemd stops a unit: SIGTERM to its
        whole tree now, SIGKILL to what is left if the step has not exited
        within KILL_GRACE_SEC.  Its exit (_exited) cancels the SIGKILL, and
        kills whatever it left behind."""
        self._kill_tree(signal.SIGTERM)
        if self._grace_source is not None:
            return
        proc = self._proc

        def expired():
            self._grace_source = None
            if self._proc is proc:
                os.write(self._logfd, ("buildunits: still running %ds after SIGTERM; sending SIGKILL\n"
                                       % KILL_GRACE_SEC).encode())
                self._kill_tree(signal.SIGKILL)
            return False
        self._grace_source = GLib.timeout_add(int(KILL_GRACE_SEC * 1000), expired)

    def _cancel_grace(self):
        if self._grace_source is not None:
            GLib.source_remove(self._grace_source)
            self._grace_source = None

    def _kill_tree(self, sig):
        """Signal the step's process group and every other descendant."""
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in _descendants(os.getpid()):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _exited(self, pid, status, i):
        # A GLib callback: an exception here would be printed and lost, and
        # the build would hang as "running".  Say it, and let work() recover.
        try:
            self._step_exited(pid, status, i)
        except Exception as e:
            self._stuck("%s #%d: cannot record the end of a step: %s"
                        % (self.build["builder"], self.build["number"], e) if self.build else str(e), e)

    def _filled_by_step(self):
        """Why the build itself filled the disk, or None if it did not.

        Called when a write of the build's record failed with ENOSPC after
        a step ran.  "The step filled it" rather than "it was full already":
        the step started with FREE bytes free on the state filesystem (its
        log and the work directory are on it) and the runner could still
        write the record then (the step's start is recorded); since then
        it wrote at least half of FREE itself, counted as its log's size
        plus the files of the work directory changed since it started.
        A disk full before the step started (FREE about 0), or filled by
        someone else while it wrote little, is not the build's doing: the
        build is interrupted and retried, as before."""
        rec = self.build
        for i, started, free in reversed(self._space[-2:]):
            if free <= 0:
                continue       # started on a full disk: not its doing
            name = self._steps[i].name
            written = 0
            try:
                written += os.stat(self.state.log_path(rec["builder"], rec["number"],
                                                       self._steps[i].index, name)).st_size
            except OSError:
                pass
            written += _written_since(self._workdir, started)
            if written * 2 >= free:
                return ("the disk filled up during step %s (ENOSPC): it wrote %s where %s were free when "
                        "it started" % (name, _size(written), _size(free)))
        return None

    def _step_exited(self, pid, status, i):
        for src in self._sources[1:]:
            daemon.remove_source(src)
        self._sources = []
        self._cancel_grace()
        proc, self._proc = self._proc, None
        code = os.waitstatus_to_exitcode(status) if status >= 0 else -1
        proc.returncode = code
        # Processes the step left behind (daemonized or backgrounded) do not
        # outlive it: a step owns nothing after it ends.
        self._kill_tree_after(proc.pid)
        try:
            os.close(self._logfd)
        except OSError:
            pass
        rec, st = self.build, self._steps[i]
        srec = rec["steps"][i]
        srec.update(state="finished", finished=time.time(), exit_status=code)
        if st.name == "checkout" and code == 0 and not rec.get("revision"):
            rec["revision"] = _head(self._workdir)   # a forced build of a branch tip
        if self.stopping:
            return   # shutdown() records the build
        if self._cancelled:
            srec.update(result=results.CANCELLED, summary=self._cancelled)
        elif self._timed_out:
            srec.update(result=results.FAILURE, timed_out=True, summary=self._timed_out)
        elif code == 0:
            srec.update(result=results.SUCCESS, summary="")
        else:
            srec.update(result=results.FAILURE,
                        summary=("killed by signal %d" % -code) if code < 0 else "exit status %d" % code)
        contrib = self._contribution(st, srec["result"])
        rec["_contrib"] = rec.get("_contrib", []) + [contrib]
        if srec["result"] != results.SUCCESS and (st.spec is None or st.spec.halt_on_failure):
            self._halted = True
        self._progress(i, *(("revision",) if st.name == "checkout" else ()))
        log.info("%s #%d: step %s finished: %s%s" % (rec["builder"], rec["number"], st.name, srec["result"],
                                                     " (%s)" % srec["summary"] if srec["summary"] else ""),
                 builder=rec["builder"], build=rec["number"], step=st.name, result=srec["result"])
        if srec["result"] != results.SUCCESS:
            self._log_tail(rec, srec)
        self.bus.emit("StepFinished", rec["builder"], rec["number"], st.name, srec["result"])
        self._next(i + 1)

    def _kill_tree_after(self, pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        # Anything that left the group is still our descendant (we are a
        # subreaper): usually there is none, which one small read tells.
        if _has_children():
            for pid in _descendants(os.getpid()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        _reap()

    def _log_tail(self, rec, srec, lines=5):
        fd = self.state.open_log(rec["builder"], rec["number"], srec["log"]) if srec.get("log") else None
        if fd is None:
            return
        try:
            with open(fd, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
                tail = f.read().decode("utf-8", "replace").splitlines()[-lines:]
        except OSError:
            return
        for line in tail:
            log.info("%s #%d: %s| %s" % (rec["builder"], rec["number"], srec["name"], line[:200]),
                     builder=rec["builder"], build=rec["number"], step=srec["name"])

    @staticmethod
    def _contribution(st, result):
        """What a step's result does to the build's result."""
        if result in (results.SUCCESS, results.CANCELLED):
            return result
        if st.spec is None or st.spec.flunk_on_failure:
            return results.FAILURE
        if st.spec.warn_on_failure:
            return results.WARNINGS
        return results.SUCCESS

    def _finish(self):
        rec = self.build
        contrib = rec.pop("_contrib", [])
        rec.update(state="finished", result=results.worst(contrib), finished=time.time())
        if self._cancelled:
            rec.update(result=results.CANCELLED, reason=self._cancelled)
        self.state.write_build(rec)            # commit point of the result
        # Announced at once: the clean-up below cannot change the result
        # (a crash before it ends leaves a claim that startup() just removes).
        self.spool.hint(rec["builder"], rec["number"])
        self.bus.emit("BuildFinished", rec["builder"], rec["number"], rec["result"])
        self.spool.finish(self.worker, self._rid)
        self.spool.clear_cancel(rec["builder"], rec["number"])
        self.state.clear_worker(self.worker)
        self._builds_run += 1
        log.info("%s #%d: build finished: %s (%s)" % (
            rec["builder"], rec["number"], rec["result"], _duration(rec)),
            builder=rec["builder"], build=rec["number"], result=rec["result"])
        self.build = None
        self.notifier.status(self.status_text())
        self.wake()

    # ----------------------------------------------------------- stopping
    def shutdown(self):
        if self.build is None:
            return True
        rec = self.build
        # SIGTERM, up to KILL_GRACE_SEC for the step to exit, then SIGKILL to
        # whatever is left (the step, or what it left behind).
        self._kill_tree(signal.SIGTERM)
        for src in self._sources:
            daemon.remove_source(src)
        self._sources = []
        self._cancel_grace()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=KILL_GRACE_SEC)
            except subprocess.TimeoutExpired:
                pass
            self._kill_tree(signal.SIGKILL)
            try:
                self._proc.wait(timeout=KILL_GRACE_SEC)
            except subprocess.TimeoutExpired:
                pass
            self._proc = None
            try:
                os.close(self._logfd)
            except OSError:
                pass
        _reap()
        rec.pop("_contrib", None)
        # A cancel committed before we got here (while this runner was
        # stopped, or in the same main-loop pass as SIGTERM) is the last
        # word on the build: the spool's record is what counts, not whether
        # _check_cancels() happened to run first.  Recorded as cancelled, the
        # claim is dropped rather than handed back, so it never runs again.
        # A crash before the record is written leaves the claim and the
        # cancel record, and startup() does the same.
        reason = self._cancelled
        if not reason:
            cancel = self.spool.read_cancel(rec["builder"], rec["number"])
            if cancel is not None:
                reason = "cancelled by %s" % (cancel.get("user") or "someone")
        if reason:
            self._record_interrupted(rec, rec["request"], rec["builder"], rec["number"], reason,
                                     results.CANCELLED)
            self.spool.finish(self.worker, self._rid)
            self.spool.clear_cancel(rec["builder"], rec["number"])
        else:
            self._record_interrupted(rec, rec["request"], rec["builder"], rec["number"],
                                     "interrupted: runner %s was stopped; the request is queued again"
                                     % self.worker)
            self.spool.unclaim(self.worker, self._rid)
        self.state.clear_worker(self.worker)
        self.build = None
        return True

    def status_text(self):
        if self.build is not None:
            rec = self.build
            running = [s["name"] for s in rec["steps"] if s.get("state") == "running"]
            return "building %s #%d%s" % (rec["builder"], rec["number"],
                                          ": " + running[0] if running else "")
        return "idle; %d build%s run" % (self._builds_run, "" if self._builds_run == 1 else "s")

    def methods(self):
        return {"Status": lambda caller: json.dumps({"worker": self.worker, "status": self.status_text()})}


def _processes_with_token(token):
    """PIDs of the live processes (not this one) whose environment holds
    BUILDUNITS_BUILD_TOKEN=TOKEN.  A zombie has no environment left."""
    needle = ("BUILDUNITS_BUILD_TOKEN=%s" % token).encode()
    me, out = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open("/proc/%s/environ" % name, "rb") as f:
                env = f.read()
        except OSError:
            continue     # gone, or another user's (then not one we could have started)
        if needle in env.split(b"\0"):
            out.append(int(name))
    return out


def _free_bytes(path):
    """Bytes free for this process on PATH's filesystem (-1: unknown)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def _written_since(top, since):
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


def _size(n):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return "%d %s" % (n, unit) if unit == "bytes" else "%.1f %s" % (n, unit)
        n /= 1024.0


def _has_children():
    """True if this process has a child (alive or not yet reaped)."""
    try:
        for tid in os.listdir("/proc/self/task"):
            with open("/proc/self/task/%s/children" % tid) as f:
                if f.read().strip():
                    return True
        return False
    except OSError:
        return True   # cannot tell: look the slow way


def _descendants(root):
    """PIDs of every descendant of ROOT (from /proc), deepest last."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _head(workdir):
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=workdir, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, timeout=60).stdout.decode().strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _reap():
    """Collect orphans reparented to us (we are a child subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _duration(rec):
    from .config import format_timespan
    if rec.get("finished") and rec.get("started"):
        return format_timespan(rec["finished"] - rec["started"])
    return ""


def _worker_arg(parser):
    def worker(text):
        if not WORKER_RE.fullmatch(text):
            raise ValueError
        return text
    worker.__name__ = "worker name"
    parser.add_argument("worker", metavar="WORKER", type=worker,
                        help="this runner's worker name (letters, digits, '.', '_', '-')")


def main(argv):
    return daemon.main(Runner, argv, "Claim build requests and run their steps.", extra_args=_worker_arg)
