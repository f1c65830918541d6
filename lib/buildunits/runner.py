"""buildunits-runner WORKER: claim build requests and run their steps.

NAME
    buildunits-runner - a worker runner (the design card's "slave runner")

DESCRIPTION
    One runner runs one build at a time; run several (the systemd template
    buildunits-runner@WORKER) for parallel builds.  It takes the oldest
    request in SPOOL/requests/new whose builder accepts this worker
    (Workers=), claims it by renaming it into requests/active/WORKER/
    (if the rename fails, another runner won), takes the next build
    number, and runs the steps.  Which requests are queued for which
    builder it knows from their file names, which name the builder
    (spool.py), kept in memory from inotify and the BuildRequested signal
    and listed again at start and every RescanIntervalSec=
    (queueindex.py): a claim does not list the queue, and a request for
    a builder this worker does not run is never opened.  The steps:

    - "checkout" first when the builder has a Repository=: the exact
      revision is fetched into the work directory STATE/work/WORKER/BUILDER
      and checked out (detached, forced, untracked files removed);
    - then each [Step] as `/bin/sh -c COMMAND`, stdout and stderr going
      straight to the step's log file as they are produced (the runner
      never holds output in memory).

    How a step runs ([Daemons] Executor=, buildunits.builder(5)): under
    systemd, each step is a transient unit of its own,
    buildunits-build-BUILDER-NUMBER-STEP.service, started by
    buildunits-launcher(8) and run as the user buildunits-build in a
    sandbox: it can write its work directory and nothing of the state, the
    spool or the site, cannot read the configuration or other builders'
    work, and whatever it starts is in the unit and ends with it.  The
    runner hands the unit the log file's descriptor, follows the unit on
    the system bus, and records its exit status and what systemd measured
    (the step's usage).  Without systemd, or with Executor=local, a step is
    a child process of the runner in its own session, as the runner's
    user: not isolated, which the journal says once.

    A step that runs longer than TimeoutSec= or prints nothing for
    TimeoutIdleSec= has its whole process tree stopped: SIGTERM to every
    process of its unit (or its process group and every descendant that
    left it: the runner is a child subreaper), and SIGKILL to what is left
    KILL_GRACE_SEC later; a cancel and SIGTERM to the runner stop a step
    the same way.  After each step, processes the step left behind are
    ended too.  Steps get BUILDUNITS_BUILDER, _BUILD, _REVISION, _BRANCH,
    _REPOSITORY, _WORKDIR, _WORKER and _STEP, and their credentials
    (Credential=) in $CREDENTIALS_DIRECTORY, their values masked in the log.

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
    room there was when it started; see buildrecord.filled_by_step) is
    not requeued: once the record can be written, it ends as "exception"
    with the reason, and the next request is taken.

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

import errno
import json
import os
import re
import secrets
import time
import traceback

from . import buildrecord, daemon, executor as executormod, fsutil, locks as locksmod, log, queueindex
from . import records, results, vcs
from . import spool as spoolmod
from . import step as stepmod
from .build import Build
from .checkout import checkout_script  # noqa: F401 (buildunits.runner.checkout_script, for the tools)

KILL_GRACE_SEC = 5      # from SIGTERM to SIGKILL when a step is stopped
WORKER_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")   # not "w1\n"


def bad_request(req, kind=None):
    """Why the request REQ must not be built, or None.  Its revision must be
    empty (build the branch's tip) or a full revision of KIND (git, hg,
    svn; None: of any)."""
    rev = req.get("revision")
    if rev not in (None, "") and not vcs.valid_revision(rev, kind):
        return "request whose revision %r is not empty or %s" % (rev, vcs.revision_rule(kind))
    return None


class Runner(daemon.Daemon):
    role = "Runner"
    program = "buildunits-runner"
    watch_queues = ("requests", "cancel")
    subscriptions = (("Scheduler", "BuildRequested"), ("Scheduler", "CancelRequested"), ("Runner", "BuildFinished"))
    executor_class = None      # how steps are run (executor.py); None: [Daemons] Executor=

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.worker = self.args.worker
        if self.executor_class is not None:
            self.executor, self._executor_note = self.executor_class(), None
        else:
            self.executor, self._executor_note = executormod.choose(self.cfg.executor, KILL_GRACE_SEC, self.worker,
                                                                      self.cfg.credentials_directory,
                                                                      self.cfg.sandbox_idle)
        self.build = None          # the build record being run
        self._run = None           # and its steps being run (build.Build)
        self._builds_run = 0
        self._queue = queueindex.QueueIndex()   # requests/new by builder (see work())
        self._mine = (None, [])    # (configuration, the builders it lets this worker run)
        self._unconfigured = set()   # builders of queued requests not configured (logged once)
        self._own_failures = {}    # (builder, number) -> why the build failed by its own doing
        self._unhonoured = set()   # (builder, directives) the executor does not apply, logged once
        self._held = None          # the locks the build holds (locks.Held)
        self._extra = []           # the requests collapsed into the build, claimed with it
        self._waiting = {}         # builder -> the lock it waits for (said once in the journal)

    def instance(self):
        return self.worker

    # ---------------------------------------------------------- recovery
    def startup(self):
        log.info("build steps run by the %s executor" % self.executor.name)
        if self._executor_note:
            log.warning(self._executor_note)
        warning = self.executor.prepare()
        if warning:
            log.warning(warning)
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
        # The requests collapsed into the build (CollapseRequests=) share its
        # fate: removed if its record is final, else handed back with it.
        extra = ptr.get("collapsed") if ptr and isinstance(ptr.get("collapsed"), list) else []
        main = ptr.get("request") if ptr else None
        claims = self.spool.claimed(self.worker)
        claims = sorted(claims, key=lambda r: r != main)      # the build's own request first
        settled = None
        for rid in claims:
            req = self.spool.read_claimed(self.worker, rid)
            if req is None:
                continue       # unreadable: moved to corrupt/
            if rid == main:
                settled = self._recover(rid, req, ptr)
                if settled:
                    continue
            elif rid in extra and (settled or (settled is None and self._final(ptr))):
                self.spool.finish(self.worker, rid)
                continue
            if self.spool.unclaim(self.worker, rid):
                log.notice("%s: request %s handed back to the queue" % (req.get("builder"), rid),
                           builder=req.get("builder"))
        self.state.clear_worker(self.worker)
        self.rescan_due = True      # what was handed back is listed, whatever the events say

    def _final(self, ptr):
        """Whether the build PTR names has its final record."""
        try:
            rec = self.state.read_build(ptr.get("builder"), ptr.get("number"))
        except (records.RecordError, OSError):
            return False
        return bool(rec) and rec.get("state") == "finished"

    def _recover(self, rid, req, ptr):
        """Record the build PTR names, of claimed request RID, as its
        predecessor left it.  True if that settles the request (its claim
        is removed); False if it is to be handed back."""
        b, n = ptr.get("builder"), ptr.get("number")
        fsutil.sweep_stale_tmp(self.state.build_dir(b, n))
        try:
            rec = self.state.read_build(b, n)
        except records.RecordError as e:
            log.error("%s; recording the build afresh" % e)
            rec = None
        if rec and rec.get("state") == "finished":
            self.spool.finish(self.worker, rid)
            return True
        own = self._own_failures.get((b, n))
        if own is not None:
            # It failed by what it did itself (_stuck): running it again
            # would fail the same way.  Written once the disk has room; the
            # claim goes only after the record.
            self._record_interrupted(rec, req, b, n, own, results.EXCEPTION, summary=own)
            self.spool.finish(self.worker, rid)
            del self._own_failures[(b, n)]
            return True
        cancel = self.spool.read_cancel(b, n)
        if cancel is not None:
            self._record_interrupted(rec, req, b, n, "cancelled by %s" % cancel.get("user"), results.CANCELLED)
            self.spool.finish(self.worker, rid)
            self.spool.clear_cancel(b, n)
            return True
        self._record_interrupted(rec, req, b, n, "interrupted: runner %s stopped before the build "
                                 "finished; the request is queued again" % self.worker)
        return False

    def _end_survivors(self, ptr):
        """Stop what is left of the build PTR (the worker record) names.

        Under systemd, the unit's cgroup dies with the runner (KillMode=),
        and the runner is the subreaper of its steps while it lives; a
        runner killed outside systemd (SIGKILL, the OOM killer) takes
        neither with it, and its steps go on, writing into a build that
        recovery is about to record as finished, in the work directory the
        retry will use.  The build's token, recorded in the worker record
        before any step starts, is how the executor finds them (the local
        one: in their environment, inherited in or out of the step's
        session; random, so a reused pid is never mistaken for one).  They
        are stopped (SIGTERM, SIGKILL after KILL_GRACE_SEC); if any is
        still there (or cannot be signalled), RuntimeError: the build is
        not recovered, nor its request handed back, until they are gone."""
        token = ptr.get("token")
        if not isinstance(token, str) or not token:
            return      # written by an older runner
        pids = self.executor.leftovers(token)
        if not pids:
            return
        what = "%s #%s" % (ptr.get("builder"), ptr.get("number"))
        log.warning("%s: %d process%s of the build outlived runner %s (pid %s); stopping them: %s"
                    % (what, len(pids), "" if len(pids) == 1 else "es", self.worker, ptr.get("pid"),
                       " ".join(map(str, pids))), builder=ptr.get("builder"))
        try:
            pids = self.executor.end_leftovers(token, KILL_GRACE_SEC)
        except PermissionError as e:
            raise RuntimeError("%s: %s (a process of the build)" % (what, e.strerror))
        if pids:
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
        self._index_queue()
        mine = list(self._my_builders())
        held = None
        try:
            while True:
                rid = self._queue.pick(mine, self._priority)
                if rid is None:
                    return
                builder = self._queue.builder(rid)
                b = self.cfg.builders[builder]
                if held is None or held[0] != builder:
                    if held is not None:
                        held[1].release()
                    held = self._take_locks(b)
                    if held is None:
                        mine.remove(builder)     # its locks are taken: the others' turn
                        continue
                self._queue.discard(rid)
                claimed = self.spool.claim(rid, self.worker)
                if claimed is None:
                    continue       # another runner won, it was cancelled, or it was corrupt
                why = self._unbuildable(rid, claimed, builder)
                if why:
                    # Not built: its fields would reach a command line, or it
                    # is not what its name says.  Moved to corrupt/ from our
                    # claim, so no other runner races it; a crash before the
                    # move leaves the claim, which startup() hands back and the
                    # next pass moves.
                    self.spool.reject("requests", rid, why, worker=self.worker)
                    continue
                extra, claimed = self._collapse(b, rid, claimed) if b.collapse else ([], claimed)
                self._held, held = held[1], None
                try:
                    self._start(rid, claimed, b, extra)
                except Exception as e:
                    self._stuck("cannot start a build of %s: %s" % (b.name, e))
                return
        finally:
            if held is not None:
                held[1].release()

    def _unbuildable(self, rid, claimed, builder):
        b = self.cfg.builders.get(builder)
        why = bad_request(claimed, b.kind if b is not None and b.repository else None) \
            or spoolmod.misnamed(rid, claimed)
        if why is None and claimed.get("builder") != builder:
            why = "the record is for builder %r, not %r as when it was first read" % (
                claimed.get("builder"), builder)
        return why

    def _priority(self, builder):
        b = self.cfg.builders.get(builder)
        return b.priority if b is not None else 0

    # ------------------------------------------------------------- locks
    def _take_locks(self, b):
        """(builder name, locks.Held) of B's locks (Locks=, MaxBuilds=), or
        None if one is held elsewhere: the journal says which, once, and
        a BuildFinished signal (or the retry timer) brings the next try."""
        wants = locksmod.wanted(b)
        held, busy = locksmod.acquire(self.state.root, wants, {"worker": self.worker, "builder": b.name})
        if held is None:
            what = "MaxBuilds=%d" % b.max_builds if busy[0] == "builds" else "lock %s" % busy[1]
            if self._waiting.get(b.name) != what:
                self._waiting[b.name] = what
                log.info("%s: waiting for %s, held by other builds" % (b.name, what), builder=b.name)
            self.retry_later()
            return None
        self._waiting.pop(b.name, None)
        return b.name, held

    def _release_locks(self):
        if self._held is not None:
            self._held.release()
            self._held = None

    def signal_BuildFinished(self, builder, number, result):
        """A build ended somewhere: its locks are free, and the build here
        may be waiting for it (Trigger= with Wait=yes)."""
        if self._run is not None:
            self._run.build_finished(builder, number)
        if self._waiting:
            self.wake()

    # ---------------------------------------------------------- collapse
    def _collapse(self, b, rid, req):
        """CollapseRequests=yes: the other requests of B for REQ's branch
        still queued are claimed with it, and the build is of the newest
        revision, with all their changes.  ([their ids], the request to
        build).  Each is a claim of this worker like RID's, listed in the
        worker record before the build starts: a crash hands them all back
        or, once the build's record is final, removes them all (startup)."""
        branch, repo = req.get("branch"), req.get("repository")
        extra, got, newest = [], [req], req
        for other in list(self._queue.ids(b.name)):
            rec = self.spool.read("requests", other)
            if not isinstance(rec, dict) or rec.get("branch") != branch or rec.get("repository") != repo \
                    or self._unbuildable(other, rec, b.name):
                continue
            self._queue.discard(other)
            claimed = self.spool.claim(other, self.worker)
            if claimed is None:
                continue
            extra.append(other)
            got.append(claimed)
            if other > newest.get("id", ""):
                newest = claimed
        if not extra:
            return [], req
        merged = dict(newest)
        seen, changes = set(), []
        for r in got:           # the records as claimed: not read again
            for c in r.get("changes") or []:
                if isinstance(c, dict) and c.get("id") not in seen:
                    seen.add(c.get("id"))
                    changes.append(c)
        merged["changes"] = changes
        merged["id"] = rid
        merged["collapsed"] = [rid] + extra
        merged["reason"] = "%s (%d requests collapsed)" % (newest.get("reason") or "", 1 + len(extra))
        log.info("%s: %d waiting requests for %s collapsed into one build of %s"
                 % (b.name, 1 + len(extra), branch or "its branch", (merged.get("revision") or "the tip")[:12]),
                 builder=b.name)
        return extra, merged

    # ------------------------------------------------------------- queue
    def _my_builders(self):
        """The names of the builders whose Workers= accept this worker."""
        if self._mine[0] is not self.cfg:
            self._mine = (self.cfg, [n for n, b in self.cfg.builders.items() if b.runs_on(self.worker)])
        return self._mine[1]

    def _index_queue(self):
        """Bring the queue index up to date: from a listing (names only) when
        a rescan is due or no watcher feeds it; the records of untagged
        requests (an earlier release's) read once each."""
        if self.rescan_due or not self.events or not self._queue.built:
            self.rescan_due = False
            self._queue.rebuild(self.spool.pending("requests"))
        self._queue.resolve_untagged(lambda rid: self.spool.read("requests", rid))
        for name in self._queue.builders():
            if name not in self.cfg.builders and name not in self._unconfigured:
                self._unconfigured.add(name)
                log.warning("%d request%s for builder %r, which is not configured; leaving %s queued"
                            % (self._queue.count(name), " is" if self._queue.count(name) == 1 else "s are",
                               name, "it" if self._queue.count(name) == 1 else "them"))

    def spool_event(self, path, present):
        name = self.spool.entry_name("requests", path)
        if name is None:
            super().spool_event(path, present)      # a cancel
        elif present:
            self._queue.add(name)
            self.wake()
        else:
            self._queue.discard(name)

    def signal_BuildRequested(self, rid, builder, branch, revision):
        """The scheduler queued RID: index it now, not when inotify says so."""
        self._queue.add(rid)
        self.wake()

    def on_config(self, old, new):
        self._unconfigured = set()

    def _stuck(self, why, error=None):
        """A build could not go on (full disk, I/O error): drop it from
        memory; its claim stays, and work() recovers it (records it as
        interrupted and requeues it) as soon as the disk lets it.

        Unless the build filled the disk itself (buildrecord.filled_by_step):
        then it is recorded as an exception, with the reason, and not
        requeued: a retry would fill the disk again, forever.  That verdict
        is kept in memory until the record can be written (the disk is
        full: nothing can be stored now); a runner restarted before there
        is room again records the build as interrupted, as before."""
        if self.build is not None and isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            own = buildrecord.filled_by_step(self._run.measured())
            if own is not None:
                self._own_failures[(self.build["builder"], self.build["number"])] = own
                why += "; %s: the build ends as an exception and is not retried" % own
        log.error("%s; the build is recovered when the disk allows (next wake or rescan)" % why)
        for line in traceback.format_exc().rstrip().splitlines():
            log.error("  " + line)
        if self._run is not None:
            self._run.drop()
        self.build = self._run = None
        self._release_locks()
        self.notifier.status("error: %s" % why)
        self.retry_later()

    def _check_cancels(self):
        """Act on cancellations of our build; clear those of finished builds."""
        for (b, n), rec in self.spool.cancel_requests().items():
            if self.build is not None and (b, n) == (self.build["builder"], self.build["number"]):
                if not self._run.cancelled:
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
        reason = "cancelled by %s" % (rec.get("user") or "someone")
        log.notice("%s #%d: %s" % (b["builder"], b["number"], reason), builder=b["builder"], build=b["number"])
        self._run.cancel(reason)     # the step's end records the rest

    def _new_record(self, req, builder, number, steps):
        return buildrecord.new_record(req, builder, number, self.worker, steps, time.time())

    def _note_unhonoured(self, b, steps):
        """Say once per builder (and set of directives) which of the systemd
        directives its steps have the executor does not apply."""
        names = []
        for st in steps:
            names += [n for n in executormod.unhonoured(self.executor, stepmod.unit(b, st)) if n not in names]
        if not names or (b.name, tuple(names)) in self._unhonoured:
            return
        self._unhonoured.add((b.name, tuple(names)))
        log.warning("builder %s: %s not applied: build steps run as child processes of the runner (the %s "
                    "executor), which applies only Limit*= settings" % (b.name, ", ".join(n + "=" for n in names),
                                                                       self.executor.name), builder=b.name)

    def _start(self, rid, req, b, extra=()):
        steps = stepmod.plan(b, req)
        self._note_unhonoured(b, steps)
        number = self.state.allocate_number(b.name)
        # The token marks every step of the build: what lets the next
        # runner find the processes of this build if this one dies
        # (_end_survivors).  Written (fsync'd) before any step can start,
        # with the requests collapsed into the build (claimed already: a
        # crash before this record hands them back, as startup() does
        # with every claim it cannot place).
        token = secrets.token_hex(16)
        ptr = {"request": rid, "builder": b.name, "number": number, "pid": os.getpid(), "token": token}
        if extra:
            ptr["collapsed"] = list(extra)
        self.state.write_worker(self.worker, ptr)
        self._extra = list(extra)
        if self._held is not None:
            self._held.note(number)
        rec = self._new_record(req, b.name, number, steps)
        if self._held is not None and self._held.slots:
            rec["locks"] = sorted({name for kind, name, _p, _fd in self._held.slots if kind == "named"})
        # Written whole once, with every step pending; the steps' progress
        # goes to progress.jsonl, a line per transition (state.py).
        self.state.write_build(rec, durable=False)
        self.state.start_progress(b.name, number)
        workdir = self.state.work_dir(self.worker, b.name)
        self.build, self._rid = rec, rid
        self._run = Build(self, rec, steps, b, workdir, token, KILL_GRACE_SEC)
        fsutil.makedirs(workdir)
        self.spool.hint(b.name, number)
        log.info("%s #%d: build started on worker %s (%s)" % (b.name, number, self.worker, req.get("reason", "")),
                 builder=b.name, build=number, worker=self.worker)
        self.bus.emit("BuildStarted", b.name, number, self.worker)
        self.notifier.status(self.status_text())
        self._run.run()

    def _finish(self):
        rec = self.build
        self._run.finish_artifacts()
        buildrecord.finished(rec, self._run.contrib, self._run.cancelled, time.time())
        self.state.write_build(rec)            # commit point of the result
        # The clean-up below cannot change the result (a crash before it
        # ends leaves a claim that startup() just removes).
        self.spool.hint(rec["builder"], rec["number"])
        # The collapsed requests before the build's own: a crash between
        # leaves the build's claim, whose final record settles them all.
        for x in self._extra:
            self.spool.finish(self.worker, x)
        self.spool.finish(self.worker, self._rid)
        # Its locks free before BuildFinished, which wakes runners waiting for them.
        self._release_locks()
        self.bus.emit("BuildFinished", rec["builder"], rec["number"], rec["result"])
        self.spool.clear_cancel(rec["builder"], rec["number"])
        self.state.clear_worker(self.worker)
        self._extra = []
        self._builds_run += 1
        log.info("%s #%d: build finished: %s (%s)" % (
            rec["builder"], rec["number"], rec["result"], _duration(rec)),
            builder=rec["builder"], build=rec["number"], result=rec["result"])
        self.build = self._run = None
        self.notifier.status(self.status_text())
        self.wake()

    # ----------------------------------------------------------- stopping
    def shutdown(self):
        if self.build is None:
            return True
        rec = self.build
        # SIGTERM, up to KILL_GRACE_SEC for the step to exit, then SIGKILL
        # to whatever is left (the step, or what it left behind).
        self._run.halt()
        # A cancel committed before we got here (while this runner was
        # stopped, or in the same main-loop pass as SIGTERM) is the last
        # word on the build: the spool's record is what counts, not whether
        # _check_cancels() happened to run first.  Recorded as cancelled, the
        # claim is dropped rather than handed back, so it never runs again.
        # A crash before the record is written leaves the claim and the
        # cancel record, and startup() does the same.
        reason = self._run.cancelled
        if not reason:
            cancel = self.spool.read_cancel(rec["builder"], rec["number"])
            if cancel is not None:
                reason = "cancelled by %s" % (cancel.get("user") or "someone")
        if reason:
            self._record_interrupted(rec, rec["request"], rec["builder"], rec["number"], reason,
                                     results.CANCELLED)
            for x in self._extra:
                self.spool.finish(self.worker, x)
            self.spool.finish(self.worker, self._rid)
            self.spool.clear_cancel(rec["builder"], rec["number"])
        else:
            self._record_interrupted(rec, rec["request"], rec["builder"], rec["number"],
                                     "interrupted: runner %s was stopped; the request is queued again"
                                     % self.worker)
            for x in self._extra:
                self.spool.unclaim(self.worker, x)
            self.spool.unclaim(self.worker, self._rid)
        self._release_locks()
        self._extra = []
        self.state.clear_worker(self.worker)
        self.build = self._run = None
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
