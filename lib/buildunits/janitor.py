"""buildunits-janitor: the retention keys applied to the build history.

NAME
    buildunits-janitor - removes the builds, logs and artifacts the
    retention keys no longer keep, daily

SYNOPSIS
    buildunits-janitor.timer
    buildunits-janitor.service
    buildunits janitor [--dry-run] [--measure]
    buildunits keep BUILDER NUMBER [--reason TEXT] | keep --unkeep BUILDER NUMBER

DESCRIPTION
    `buildunits janitor`, run daily by buildunits-janitor.timer (which
    buildunits.target wants: `systemctl list-timers` shows it), removes,
    per builder, what KeepBuilds=, KeepDays=, KeepLogDays= and
    KeepArtifactDays= (buildunits.builder(5), RETENTION) no longer keep,
    prunes the spool's requests/cancelled/, measures what the history
    takes on disk (for `buildunits status`), and tells buildunits-htmlgen
    what went (a hint each, in the spool's hints/), which removes those
    pages.  One pass at a time (an flock on locks/buildunits-janitor.lock).

WHAT IT NEVER REMOVES
    A builder's newest build directory: the next build number is taken
    from next.json, or, when that hint is lost, past the highest build
    directory there is; were the newest removed with the hint, its number
    would be taken again.  So the newest stays whatever the keys say
    (KeepBuilds= is at least 1 for the same reason).  Older ones can go:
    a number below the newest is never tried again.

    A running build (its record says "running"), and a number without a
    record younger than GAP_AGE_SEC (36 hours): a runner between the
    mkdir that took the number and its first record.

    A pinned build (keep.json, `buildunits keep`), its logs and artifacts
    neither.  `keep` and the janitor's renames are serialised by an flock
    (locks/retention.lock) around "is it pinned? rename": a pin is either
    seen, or refused as made on a build already gone.

    A build whose record cannot be read: history is kept as it is.

    A finished build the notifier has still to read (above its cursor,
    STATE/notifier/cursor.json, and not handled), of a builder with
    destinations: its messages are made from its record, so once removed
    it would be told of to no one.  Kept until the notifier has read it,
    or GiveUpSec= after it finished (a notifier down that long has given
    it up anyway); `buildunits janitor` says so, a line each.  Its logs
    too (KeepLogDays=): a failure's mail carries the failing step's last
    lines, read from its log.

CRASH SAFETY
    A build is removed whole or not at all (state.py, begin_removal and
    finish_removal): builds/B/N is renamed to builds/B/.removing-N (THE
    COMMIT POINT: from here no reader sees B #N, since only canonical
    numbers are builds), up to BATCH builds at a time, builds/B fsync'd
    once, the site told (its hints fsync'd), and only then each hidden
    directory deleted.  A crash before the fsync leaves each build whole,
    under its name or the hidden one; after it, hidden directories no
    page shows, which the next pass deletes (and tells the site of)
    first.

    Of builds that stay, the logs and artifacts: finished build records
    never change, so what went is said by a marker beside the record,
    pruned.json ("pruned"), written (atomically, fsync'd) before the
    files are unlinked: the marker is the commit point.  A crash after it
    leaves some files of what the marker says is removed; the next pass,
    which looks again at that build (the retention record was not
    written), unlinks them.

WHAT IT READS
    The list of numbers (one listing per builder) for KeepBuilds=; for
    KeepDays= the records from the oldest upward, stopping at the first
    build young enough (builds are numbered in the order they start;
    pinned and running ones are stepped over); each build it removes,
    once, to know it finished; for the logs, the artifacts and the disk
    usage, only the builds past how far the last pass got, kept per
    builder in janitor/retention.json ("retention"), written at the end
    of a pass.  A pass that removes nothing reads a record or two per
    builder.  The disk usage is kept up to date by adding the builds
    measured since and subtracting what is removed; --measure measures
    everything afresh.

FILES
    STATE/builds/BUILDER/.removing-NUMBER/   a build being removed
    STATE/builds/BUILDER/NUMBER/keep.json    a pinned build ("keep")
    STATE/builds/BUILDER/NUMBER/pruned.json  its logs or artifacts removed ("pruned")
    STATE/janitor/retention.json             what the last pass measured, how far it looked
    STATE/locks/buildunits-janitor.lock      held by the pass
    STATE/locks/retention.lock               held around a pin and around a batch of renames
    SPOOL/hints/BUILDER@NUMBER               a build removed or changed, for htmlgen

EXIT STATUS
    0 the pass is done; 1 another pass is running, or the configuration
    has a problem (nothing is removed then).
"""

import fcntl
import math
import os
import time
from dataclasses import dataclass, field

from . import fsutil, notifyrules, records

DAY = 86400.0
# A number without a record younger than this may be a runner's between
# its mkdir and its first record (which follows at once): never removed.
# As fsutil.TMP_SWEEP_AGE_SEC, far past any writer's delay.
GAP_AGE_SEC = fsutil.TMP_SWEEP_AGE_SEC
KINDS = ("state", "logs", "artifacts")
# Builds renamed out per fsync of their builder's directory (and per hold
# of the lock `keep` takes): a removal's commit costs 1/BATCH of an fsync.
BATCH = 64


class Busy(Exception):
    """Another janitor pass holds the lock."""


@dataclass
class Policy:
    keep_builds: float = math.inf
    keep_days: float = math.inf
    keep_log_days: float = math.inf
    keep_artifact_days: float = math.inf

    def keeps_everything(self):
        return all(math.isinf(v) for v in (self.keep_builds, self.keep_days, self.keep_log_days,
                                           self.keep_artifact_days))


def policy(cfg, builder):
    """BUILDER's Policy: its keys, or [Defaults]' for a builder with
    history and no file any more (or no configuration at all: keep all)."""
    src = cfg.builders.get(builder, cfg) if cfg is not None else None
    if src is None:
        return Policy()
    return Policy(src.keep_builds, src.keep_days, src.keep_log_days, src.keep_artifact_days)


def by_count(numbers, keep_builds):
    """The numbers KeepBuilds= removes: all but the newest KEEP_BUILDS (and
    never the newest).

    >>> by_count([1, 2, 3, 5, 8], 2), by_count([1, 2], math.inf), by_count([4], 1)
    ([1, 2, 3], [], [])
    """
    if math.isinf(keep_builds):
        return []
    return list(numbers[:max(0, len(numbers) - max(1, int(keep_builds)))])


@dataclass
class Report:
    dry_run: bool = False
    removed: dict = field(default_factory=dict)        # builder -> [numbers] removed (or that would be)
    logs: dict = field(default_factory=dict)           # builder -> [numbers] whose logs went
    artifacts: dict = field(default_factory=dict)      # builder -> [numbers] whose artifacts went
    finished: dict = field(default_factory=dict)       # builder -> [numbers] half-removed, finished now
    kept: dict = field(default_factory=dict)           # builder -> [numbers] pinned, spared
    unnotified: dict = field(default_factory=dict)     # builder -> [numbers] the notifier has still to read
    pruned: list = field(default_factory=list)         # spool entries pruned (requests/cancelled)
    freed: int = 0                                     # bytes
    records_read: int = 0
    usage: dict = field(default_factory=dict)          # builder -> {kind_bytes, builds}


class _Builder:
    """One builder's part of a pass: its numbers, the records read (each
    at most once), its entry of the retention record."""

    def __init__(self, janitor, name, entry):
        self.j, self.name, self.st = janitor, name, janitor.state
        self.numbers = self.st.build_numbers(name)
        self.records = {}
        self.entry = dict(entry) if isinstance(entry, dict) else {}
        for k in ("measured_below", "logs_below", "artifacts_below"):
            if not isinstance(self.entry.get(k), int) or isinstance(self.entry.get(k), bool):
                self.entry.pop(k, None)
        for k in KINDS:
            if not isinstance(self.entry.get(k + "_bytes"), int):
                self.entry.pop("measured_below", None)     # measured afresh
        if "measured_below" not in self.entry:
            self.entry.update(measured_below=0, state_bytes=0, logs_bytes=0, artifacts_bytes=0)

    def record(self, n):
        """("finished"|"running"|"gap"|"unreadable", record or None) of #N."""
        if n not in self.records:
            self.j.report.records_read += 1
            try:
                rec = self.st.read_build(self.name, n)
            except (records.RecordError, OSError, ValueError):
                self.records[n] = ("unreadable", None)
            else:
                if rec is None:
                    self.records[n] = ("gap", None)
                elif rec.get("state") == "finished":
                    self.records[n] = ("finished", rec)
                else:
                    self.records[n] = ("running", rec)
        return self.records[n]

    def started(self, n):
        """When #N started (a gap: when its number was taken), or None."""
        what, rec = self.record(n)
        if what == "gap":
            return self.st.build_mtime(self.name, n)
        t = rec.get("started") if rec else None
        return t if isinstance(t, (int, float)) and not isinstance(t, bool) else None

    def young_gap(self, n):
        """True if #N has no record and may be a runner's number still (a
        directory younger than GAP_AGE_SEC)."""
        if self.record(n)[0] != "gap":
            return False
        t = self.st.build_mtime(self.name, n)
        return t is None or t >= self.j.now - GAP_AGE_SEC

    def removable(self, n):
        """True if #N may go: not the newest, not pinned, finished (or a gap
        old enough), its record readable."""
        if not self.numbers or n >= self.numbers[-1] or self.st.is_kept(self.name, n):
            return False
        what, rec = self.record(n)
        if what == "gap":
            return not self.young_gap(n)
        return what == "finished" and not self.j.awaits_notifier(self.name, n, rec)

    def subtract(self, n, usage):
        if n < self.entry["measured_below"]:
            for k in KINDS:
                self.entry[k + "_bytes"] = max(0, self.entry[k + "_bytes"] - usage.get(k, 0))


class Janitor:
    """One pass over STATE and SPOOL with the configuration CFG at NOW.
    SITE (a SiteHints, or None) is told each build that went or lost logs
    or artifacts, after its commit point and before its files are
    deleted; SAY(text) gets a line per thing done."""

    def __init__(self, state, spool, cfg, now=None, dry_run=False, measure=False, site=None, say=None):
        self.state, self.spool, self.cfg = state, spool, cfg
        self.now = time.time() if now is None else now
        self.dry_run, self.measure = dry_run, measure
        self.site = site if site is not None and not dry_run else _NoSite()
        self.say = say or (lambda text: None)
        self.report = Report(dry_run=dry_run)
        self._cursor = False      # the notifier's cursor, read once a pass (None: none)

    def awaits_notifier(self, builder, n, rec):
        """Whether the finished B #N (record REC) has still to be read by
        the notifier: its messages are made from the record, so removed
        first, it would be told of to no one (the notifier takes a number
        with no directory for a gap)."""
        b = self.cfg.builders.get(builder) if self.cfg is not None else None
        if not rec or b is None or not notifyrules.has_destinations(self.cfg, b):
            return False
        if self._cursor is False:
            try:
                self._cursor = records.read(self.state.notifier_path(), "notifier")
            except (OSError, records.RecordError):
                self._cursor = None     # none, or unreadable: the notifier starts afresh, reading no history
        return notifyrules.awaits_notifier(self._cursor, builder, n, rec.get("finished"), self.now,
                                           self.cfg.notify_give_up)

    def run(self):
        lock = self._lock(self.state.lock_path("buildunits-janitor"), blocking=False)
        try:
            old = None if self.measure else self.state.read_retention()
            entries = old.get("builders") if isinstance(old, dict) else None
            entries = entries if isinstance(entries, dict) else {}
            out = {}
            for name in self.state.builders():
                b = _Builder(self, name, entries.get(name))
                self._builder(b)
                b.entry["builds"] = len(b.numbers)
                out[name] = b.entry
                self.report.usage[name] = b.entry
            self.report.pruned = self.spool.prune(dry_run=self.dry_run, now=self.now)
            for p in self.report.pruned:
                self.say("%s: pruned (cancelled more than %s ago)" % (p, "7 days"))
            if not self.dry_run:
                self.state.write_retention({"measured": self.now, "builders": out})
        finally:
            os.close(lock)
        return self.report

    # -------------------------------------------------------------- a builder
    def _builder(self, b):
        pol = policy(self.cfg, b.name)
        for n in self.state.removals_left(b.name):
            # A pass stopped between a rename and its deletion: finish it
            # (told again: the stopped pass may not have told the site).
            if not self.dry_run:
                self.site.hint(b.name, n)
                b.subtract(n, self.state.finish_removal(b.name, n))
            self.report.finished.setdefault(b.name, []).append(n)
            self.say("%s #%d: half removed by an earlier pass; removed" % (b.name, n))
        gone = self._remove(b, pol)
        if gone:
            b.numbers = [n for n in b.numbers if n not in gone]
        changed = set()
        changed |= self._prune(b, "logs", pol.keep_log_days)
        changed |= self._prune(b, "artifacts", pol.keep_artifact_days)
        self._measure(b)
        self.site.sync()

    def _remove(self, b, pol):
        """Remove what KeepBuilds= and KeepDays= no longer keep; the set of
        numbers removed."""
        doomed = by_count(b.numbers, pol.keep_builds)
        counted = len(doomed)
        if not math.isinf(pol.keep_days):
            cutoff = self.now - pol.keep_days * DAY
            chosen = set(doomed)
            for n in b.numbers[len(doomed):-1]:
                if n in chosen:
                    continue
                if self.state.is_kept(b.name, n):
                    continue                        # pinned: stepped over, not a stop
                what, _rec = b.record(n)
                if what in ("running", "unreadable"):
                    continue
                t = b.started(n)
                if t is None or t >= cutoff:
                    break                           # the first young enough: the rest started later
                doomed.append(n)
        todo = []
        for n in doomed:
            if not b.removable(n):
                if self.state.is_kept(b.name, n):
                    self.report.kept.setdefault(b.name, []).append(n)
                elif self.awaits_notifier(b.name, n, b.record(n)[1]):
                    self.report.unnotified.setdefault(b.name, []).append(n)
                    self.say("%s #%d: kept until the notifier has read it" % (b.name, n))
                continue
            why = "KeepBuilds=%d" % pol.keep_builds if counted and n <= b.numbers[counted - 1] \
                else "KeepDays=%d" % pol.keep_days
            if self.dry_run:
                self.report.removed.setdefault(b.name, []).append(n)
                self.say("%s #%d: would be removed (%s)" % (b.name, n, why))
            else:
                todo.append((n, why))
        gone = set()
        for i in range(0, len(todo), BATCH):
            batch = self._commit_removals(b, todo[i:i + BATCH])
            for n, why in batch:
                usage = self.state.finish_removal(b.name, n)
                b.subtract(n, usage)
                self.report.freed += sum(usage.values())
                self.report.removed.setdefault(b.name, []).append(n)
                gone.add(n)
                self.say("%s #%d: removed (%s)" % (b.name, n, why))
        return gone

    def _commit_removals(self, b, batch):
        """Rename each build of BATCH [(n, why)] out of the builds, unless it
        was pinned meanwhile (looked at under the lock `keep` takes), then
        fsync the builder's directory once: only then is any deleted.  A
        crash before the fsync leaves each build whole, under its name or
        the hidden one.  The ones renamed."""
        done = []
        lock = self._lock(self.state.lock_path("retention"))
        try:
            for n, why in batch:
                if self.state.is_kept(b.name, n):
                    self.report.kept.setdefault(b.name, []).append(n)
                elif self.state.begin_removal(b.name, n, durable=False):
                    done.append((n, why))
        finally:
            os.close(lock)
        if done:
            self.state.sync_builder(b.name)
            # The site is told now: before the files go, and durably, so
            # that a crash after this leaves a hint or a hidden directory
            # (whose removal the next pass tells again), never neither.
            for n, _why in done:
                self.site.hint(b.name, n)
            self.site.sync()
        return done

    def _prune(self, b, kind, days):
        """Remove the logs (or artifacts) of the builds older than DAYS,
        from how far the last pass got; the numbers changed."""
        key = kind + "_below"
        if math.isinf(days) or not b.numbers:
            b.entry.pop(key, None)      # a horizon set later starts from the oldest
            b.entry.pop(kind + "_pinned", None)
            return set()
        cutoff = self.now - days * DAY
        below = b.entry.get(key, 0)
        changed = set()
        # Pinned builds the horizon passed: looked at again once unpinned.
        alive = set(b.numbers)
        pinned = [n for n in b.entry.get(kind + "_pinned") or [] if isinstance(n, int) and n in alive]
        for n in list(pinned):
            if self.state.is_kept(b.name, n):
                continue
            what, rec = b.record(n)
            t = b.started(n) if what == "finished" else None
            if t is not None and t < cutoff and self._prune_one(b, n, rec, kind):
                changed.add(n)
            if what != "running":
                pinned.remove(n)
        for n in b.numbers:
            if n < below:
                continue
            if self.state.is_kept(b.name, n):
                pinned.append(n)            # kept whole while pinned; looked at again after
                below = n + 1
                continue
            what, rec = b.record(n)
            if what == "running" or b.young_gap(n):
                break                       # looked at again next pass
            if what in ("gap", "unreadable"):
                below = n + 1
                continue
            t = b.started(n)
            if t is None or t >= cutoff:
                break
            if kind == "logs" and self.awaits_notifier(b.name, n, rec):
                # Its mail carries the failing step's last lines, read from
                # the log when the notifier reads the build: looked at
                # again next pass, as a running build is.
                self.say("%s #%d: logs kept until the notifier has read it" % (b.name, n))
                break
            if self._prune_one(b, n, rec, kind):
                changed.add(n)
            below = n + 1
        if not self.dry_run:
            b.entry[key] = below
            b.entry[kind + "_pinned"] = sorted(set(pinned))
        return changed

    def _prune_one(self, b, n, rec, kind):
        """Remove the logs or artifacts of the finished B #N (the marker
        first: the commit point); True if there was something to remove."""
        names = [s.get("log") for s in rec.get("steps") or [] if isinstance(s, dict)]
        names = [x for x in names if isinstance(x, str) and x]
        if kind == "logs":
            present = [x for x in names if os.path.lexists(self.state.build_file(b.name, n, x))]
        else:
            present = self.state.has_artifacts(b.name, n)
        if not present:
            return False
        (self.report.logs if kind == "logs" else self.report.artifacts).setdefault(b.name, []).append(n)
        if self.dry_run:
            self.say("%s #%d: its %s would be removed" % (b.name, n, kind))
            return True
        try:
            marker = self.state.read_pruned(b.name, n) or {}
        except records.RecordError:
            marker = {}
        if not isinstance(marker.get(kind + "_removed"), (int, float)):
            marker = dict(marker, builder=b.name, number=n)
            marker[kind + "_removed"] = self.now
            self.state.write_pruned(b.name, n, marker)      # the commit point
        self.site.hint(b.name, n)     # synced at the builder's end; lost, the page is stale, no more
        if kind == "logs":
            freed = self.state.remove_logs(b.name, n, present)
        else:
            freed = self.state.remove_artifacts(b.name, n)
        b.subtract(n, {kind: freed})
        self.report.freed += freed
        self.say("%s #%d: %s removed (KeepLogDays=)" % (b.name, n, kind) if kind == "logs"
                 else "%s #%d: artifacts removed (KeepArtifactDays=)" % (b.name, n))
        return True

    def _measure(self, b):
        """Add the builds finished since the last measure to the totals."""
        e = b.entry
        for n in b.numbers:
            if n < e["measured_below"]:
                continue
            what, _rec = b.record(n)
            if what == "running" or b.young_gap(n):
                break
            u = self.state.usage(b.name, n)
            for k in KINDS:
                e[k + "_bytes"] += u[k]
            e["measured_below"] = n + 1
        e["measured"] = self.now

    @staticmethod
    def _lock(path, blocking=True):
        fsutil.makedirs(os.path.dirname(path))
        # Read-only: an flock needs no more, and a lock file made by root
        # (`sudo buildunits keep`) is still one the buildunits user can lock.
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise Busy("another janitor pass is running (%s)" % path)
        return fd


class SiteHints:
    """What the janitor tells htmlgen, through the spool's hints/: a hint
    per build removed or changed, made durable by sync() (one fsync of
    hints/ per batch): the site sees a removal by its hint, or by a full
    rendering only (docs/site.md)."""

    def __init__(self, spool):
        self.spool = spool
        self._new = False

    def hint(self, builder, number):
        self.spool.hint(builder, number)
        self._new = True

    def sync(self):
        if self._new:
            self.spool.sync_hints()
            self._new = False


class _NoSite:
    def hint(self, builder, number):
        pass

    def sync(self):
        pass


def run(state, spool, cfg, **kw):
    """One pass (see Janitor); its Report."""
    return Janitor(state, spool, cfg, **kw).run()


def keep(state, builder, number, user, reason="", unkeep=False, now=None):
    """Pin (or with UNKEEP unpin) B #N; the text to print.  Raises
    LookupError if B #N is not a build (or was removed meanwhile)."""
    lock = Janitor._lock(state.lock_path("retention"))
    try:
        if not state.has_build_record(builder, number):
            raise LookupError("%s #%d: no such build (removed, or never built)" % (builder, number))
        if unkeep:
            if not state.remove_keep(builder, number):
                return "%s #%d was not kept" % (builder, number)
            return "%s #%d is no longer kept: the janitor may remove it" % (builder, number)
        state.write_keep(builder, number, {"builder": builder, "number": number, "user": user,
                                           "when": time.time() if now is None else now, "reason": reason})
        return "%s #%d is kept: the janitor leaves it, its logs and artifacts as they are" % (builder, number)
    finally:
        os.close(lock)
