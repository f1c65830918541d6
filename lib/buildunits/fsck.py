"""`buildunits fsck`: the spool and the state checked against their tables.

One check per row of the state tables in spool.py's docstring (the
qmail-style states of a change, a request and a cancellation, and the
LAYOUT rows) and of state.py's layout.  Each check is a function of a
Context and a `found(text, fix=None, needed=True)` callback: a finding
with a FIX is something `fsck --repair` does (and `fsck` says it would,
and fails, unless it is not NEEDED); one without is a note, for a human.  Nothing found unreadable is ever deleted: it is
moved to a corrupt/ directory with the reason (Spool.reject,
State.quarantine), or kept where it is (build history).

run() returns the findings as (kind, text), kind being "repaired",
"would repair" or "note"; cli.py prints them.
"""

import os
import re
import stat
import time

from . import buildrecord, fsutil, records, results, spool as spoolmod
from .numbers import MAX_BUILD_NUMBER
from .spool import Spool
from .state import State
from .status import runner_alive


# Without --deep, the newest this many builds of each builder are read in
# full; the older ones are checked from the listing of their directory.
RECENT = 100


class Context:
    """What every check reads: the spool, the state, which runners live,
    and the listing of builds/ (walked once, shared by the checks); DEEP:
    `fsck --deep` (see builds() and walk())."""

    def __init__(self, dirs, deep=False):
        self.dirs = dirs
        self.deep = deep
        self.sp, self.st = Spool(dirs.spool), State(dirs.state)
        self._alive = {}
        self._walk = None

    def walk(self):
        """State.walk_builds(), listed once: with --deep every build's
        directory is entered, else only the newest RECENT of each builder's."""
        if self._walk is None:
            self._walk = list(self.st.walk_builds(None if self.deep else RECENT))
        return self._walk

    def alive(self, worker):
        if worker not in self._alive:
            self._alive[worker] = runner_alive(self.dirs, worker)
        return self._alive[worker]


# ------------------------------------------------------------------ spool
def spool_dirs(ctx, found):
    """Every row of spool.LAYOUT is a directory.  A missing one is made by
    the daemons when they start (a spool from an older release lacks the
    newer rows): a note, which --repair also makes."""
    for path in ctx.sp.missing():
        found("missing spool directory %s (made when a daemon starts)" % path,
              lambda p=path: fsutil.makedirs(p), needed=False)


def spool_tmp(ctx, found):
    """C1, R1, K1 and corrupt/'s reasons: temp files of crashed writers."""
    _stale(ctx.sp.sweep(dry_run=True), found)


def queued(ctx, found):
    """C2 and R2: each entry of changes/new and requests/new is a record."""
    for q in spoolmod.QUEUES:
        for name in ctx.sp.entries(q):
            _check_entry(ctx.sp, q, name, None, found)


def claims(ctx, found):
    """R3: each claim is a record, held by a runner that is running."""
    for worker in ctx.sp.claimants():
        for name in ctx.sp.entries("requests", worker=worker):
            if _check_entry(ctx.sp, "requests", name, worker, found) and not ctx.alive(worker):
                found("request %s claimed by worker %s, whose runner is not running; it is handed back "
                      "when that runner starts" % (name, worker),
                      lambda w=worker, n=name: ctx.sp.unclaim(w, n))


def cancelled(ctx, found):
    """R2 -> cancelled: kept spool.CANCELLED_KEEP_SEC, then pruned."""
    for p in ctx.sp.prune(dry_run=True):
        found("cancelled request %s is older than %ds (the scheduler prunes it)"
              % (p, spoolmod.CANCELLED_KEEP_SEC), lambda p=p: fsutil._unlink_quietly(p))


def cancels(ctx, found):
    """K2: each cancel/B@N is a record, for a build not finished yet (K3)."""
    for name in ctx.sp.entries("cancel"):
        if not _check_entry(ctx.sp, "cancel", name, None, found):
            continue
        b, n = spoolmod.cancel_target(name)
        try:
            rec = ctx.st.read_build(b, n)
        except (records.RecordError, OSError):
            continue
        if rec is None or rec.get("state") == "finished":
            found("cancel/%s: %s #%d is %s; the cancellation is no longer needed"
                  % (name, b, n, "finished" if rec else "not a build"),
                  lambda b=b, n=n: ctx.sp.clear_cancel(b, n))


def spool_corrupt(ctx, found):
    """corrupt/: listed, kept."""
    for name, reason in ctx.sp.corrupted():
        found("corrupt/%s: %s (kept for inspection)" % (name, reason))


def _check_entry(sp, queue, name, worker, found):
    """True if NAME of QUEUE is a good record; else a finding (to corrupt/)."""
    reason = sp.problem(queue, name, worker)
    if reason is None:
        return True
    found("%s: %s" % (sp.where(queue, name, worker), reason),
          lambda: sp.reject(queue, name, reason, worker=worker))
    return False


def _stale(paths, found):
    for p in paths:
        found("stale temporary file %s (older than %ds)" % (p, fsutil.TMP_SWEEP_AGE_SEC),
              lambda p=p: fsutil._unlink_quietly(p))


# ------------------------------------------------------------------ state
def state_dirs(ctx, found):
    """Every row of state.LAYOUT is a directory (see spool_dirs)."""
    for path in ctx.st.missing():
        found("missing state directory %s (made when a daemon starts)" % path,
              lambda p=path: fsutil.makedirs(p), needed=False)


def state_tmp(ctx, found):
    """Temp files of crashed writers in the state and in the builds'
    directories that walk() enters (every build's with --deep)."""
    _stale(ctx.st.sweep(dry_run=True) + fsutil.stale_tmp([p for p, _m, depth in ctx.walk() if depth == 2]), found)


def workers(ctx, found):
    """workers/W.json: readable, and naming a request W still holds."""
    for worker in ctx.st.workers():
        try:
            ptr = ctx.st.read_worker(worker)
        except records.RecordError as e:
            found("%s (quarantined: the runner ignores it)" % e, lambda e=e: ctx.st.quarantine(e.path, e.reason))
            continue
        if ptr and ptr.get("request") not in ctx.sp.claimed(worker) and not ctx.alive(worker):
            found("worker %s's pointer names request %s, which it no longer holds" % (worker, ptr.get("request")),
                  lambda w=worker: ctx.st.clear_worker(w))


def odd_entries(ctx, found):
    """Symbolic links and files that are not regular in builds/, builds/B
    and builds/B/N: never records, so noted, kept, not followed (a build
    step may have planted them; the readers do not follow them and the
    site does not show them)."""
    for path, mode, depth in ctx.walk():
        if stat.S_ISLNK(mode):
            found("%s: a symbolic link%s (kept; not followed, not shown)" % (_printable(path), _target(path)))
        elif stat.S_ISDIR(mode):
            if depth == 2:
                found("%s: a directory where a build has only files (kept; not shown)" % _printable(path))
        elif not stat.S_ISREG(mode):
            found("%s: not a regular file (kept; not read, not shown)" % _printable(path))
        elif depth == 0:
            found("%s: a file where a builder's directory should be (kept; not shown)" % _printable(path))


def builds(ctx, found):
    """builds/B/N: a build record (not a gap); running only on a live runner.
    With --deep every record is read; otherwise the newest RECENT of each
    builder are (a build runs only among them: numbers are taken in
    order), and of the others only the presence of build.json is checked."""
    holders = _holders(ctx.st)
    for b in ctx.st.builders():
        numbers = ctx.st.build_numbers(b)
        for i, n in enumerate(numbers):
            if not (ctx.deep or i >= len(numbers) - RECENT):
                if not ctx.st.has_build_record(b, n):
                    found("%s #%d: number taken but no build record (a crash before the build started)" % (b, n))
                continue
            try:
                rec = ctx.st.read_build(b, n)
            except records.RecordError as e:
                found("%s (history kept as is; the pages skip it)" % e)
                continue
            except OSError as e:
                found("%s: %s" % (ctx.st.build_path(b, n), e.strerror))
                continue
            if rec is None:
                found("%s #%d: number taken but no build record (a crash before the build started)" % (b, n))
            elif rec.get("state") == "running":
                _running(ctx, b, n, rec, holders.get((b, n)), found)


def _running(ctx, b, n, rec, worker, found):
    if worker is not None and ctx.alive(worker):
        return
    if worker is not None:
        found("%s #%d: running on %s, whose runner is not running; it records the build as "
              "interrupted when it starts" % (b, n, worker))
    else:
        found("%s #%d: recorded as running, but no runner holds it" % (b, n),
              lambda: mark_lost(ctx.st, rec))


def removals(ctx, found):
    """builds/B/.removing-N: a build the janitor renamed out of the builds
    (its commit point) and had not deleted yet; the next pass deletes it.
    The repair does what that pass would: tells the site first (a hint,
    made durable), since the pass that renamed it may have been stopped
    before it did, and the hint is the site's only word of a removal."""
    def repair(b, n):
        ctx.sp.hint(b, n)
        ctx.sp.sync_hints()
        ctx.st.finish_removal(b, n)
    for b in ctx.st.builders():
        for n in ctx.st.removals_left(b):
            found("%s #%d: half removed by the janitor (renamed out of the builds, not yet deleted); deleted by "
                  "its next pass" % (b, n), lambda b=b, n=n: repair(b, n))


def counters(ctx, found):
    """builds/B/next.json: a hint past the highest build."""
    for b in ctx.st.builders():
        nums = ctx.st.build_numbers(b)
        hint = ctx.st.read_counter(b)
        if nums and nums[-1] == MAX_BUILD_NUMBER:
            found("%s: has used every build number up to #%d; a new build cannot start until its history "
                  "is moved away" % (b, nums[-1]))
        elif nums and (hint is None or hint <= nums[-1]):
            found("%s: next-number hint is %s (the highest build is #%d)"
                  % (b, "behind" if hint is not None else "missing or not a build number", nums[-1]),
                  lambda b=b, n=nums[-1]: ctx.st.write_counter(b, n + 1, durable=True))


def pollers(ctx, found):
    """poller/KEY.json: readable (else quarantined; the repository is new)."""
    for _path, rec in ctx.st.poller_records():
        if isinstance(rec, records.RecordError):
            found("%s (quarantined: the poller treats the repository as new)" % rec,
                  lambda e=rec: ctx.st.quarantine(e.path, e.reason))


def schedulers(ctx, found):
    """scheduler/B.json: readable (else quarantined; the memory starts afresh);
    scheduler/consumed.mark: readable (else quarantined; no mark)."""
    for b in ctx.st.schedulers():
        try:
            ctx.st.read_scheduler(b)
        except records.RecordError as e:
            found("%s (quarantined: the scheduler starts %s's memory afresh)" % (e, b),
                  lambda e=e: ctx.st.quarantine(e.path, e.reason))
    try:
        ctx.st.read_mark()
    except records.RecordError as e:
        found("%s (quarantined: the scheduler reads every queued request at its next start)" % e,
              lambda e=e: ctx.st.quarantine(e.path, e.reason))


def state_corrupt(ctx, found):
    """STATE/corrupt/: listed, kept."""
    for name, reason in ctx.st.quarantined():
        found("%s: state corrupt/%s: %s (kept for inspection)" % (ctx.dirs.state, name, reason))


CHECKS = (spool_dirs, spool_tmp, queued, claims, cancelled, cancels, spool_corrupt,
          state_dirs, state_tmp, workers, odd_entries, builds, removals, counters, pollers, schedulers,
          state_corrupt)


def run(dirs, repair=False, checks=CHECKS, deep=False):
    """Run CHECKS; with REPAIR make the repairs; with DEEP read every build
    record (see builds()).  [(kind, text)]."""
    ctx = Context(dirs, deep)
    findings = []

    def found(text, fix=None, needed=True):
        """A finding; FIX repairs it.  One that is not NEEDED is a note
        (fsck still succeeds) unless --repair makes it."""
        if repair and fix is not None:
            fix()
            findings.append(("repaired", text))
        else:
            findings.append(("would repair" if fix is not None and needed else "note", text))
    for check in checks:
        check(ctx, found)
    return findings


def mark_lost(st, rec):
    """Finish REC, found running with no runner holding it, as interrupted."""
    st.write_build(buildrecord.interrupted(rec, "found running with no runner holding it (buildunits fsck --repair)",
                                           results.EXCEPTION, time.time()))


def _holders(st):
    """{(builder, number): worker} of the builds the runners' pointers name."""
    out = {}
    for worker in st.workers():
        try:
            ptr = st.read_worker(worker)
        except records.RecordError:
            continue
        if ptr:
            out[(ptr.get("builder"), ptr.get("number"))] = worker
    return out


def _target(path):
    try:
        return " -> %s" % _printable(os.readlink(path))
    except OSError:
        return ""


def _printable(text):
    """TEXT (a name a build step may have chosen) without control characters."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", "?", text).encode("utf-8", "backslashreplace").decode("utf-8")
