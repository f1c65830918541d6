"""buildunits-scheduler: turn changes and forced builds into build requests.

NAME
    buildunits-scheduler - the scheduler

DESCRIPTION
    Reads the scheduler's inbox, SPOOL/changes/new: change records (from
    the poller or `buildunits sendchange`) and force records (from
    `buildunits force` and `rebuild`).  A change goes to every builder
    whose Repository= is the change's repository and whose Branches=
    matches its branch.

    TreeStableSec=0: each change becomes one build request at once.
    Otherwise changes on one branch wait until none has arrived for
    TreeStableSec (measured from the time each was queued, so the window
    survives a restart), then all of them become one request for the newest
    revision.  A forced build becomes a request at once; a rebuild is a
    forced build of what an earlier build built, with its changes and
    properties, and the request says which build it rebuilds
    (rebuild_of).

    A revision already requested for a builder and branch is not requested
    again: the poller re-sends after a crash, and a hook and the poller may
    both report one commit.

    A builder with OnCalendar= is also built when its timer elapses.
    Under systemd the timers are systemd's (buildunits-timer(8)); started
    by hand or by anything else, the scheduler computes each elapse itself
    and runs `buildunits timer BUILDER` as its child when it comes, which
    queues a force record it then takes as any other.  With Persistent=yes
    it keeps the last elapse in STATE/timers/BUILDER.json and, at its
    start, makes once an elapse missed while it was not running.

    Pending changes are not copied anywhere: they stay in the spool until
    every builder they match has a request for them, so the spool stays
    the only durable copy.  The scheduler's own state is a bounded memory
    of which change ids and revisions each builder has consumed
    (STATE/scheduler/BUILDER.json), kept up to date by one line per pass
    appended to its journal (STATE/scheduler/consumed.jsonl) and folded
    into the files now and then (consumed.py).

    Crash safety, per pass:
        1. deliver the pass's requests to SPOOL/requests/new, as one batch
           (Spool.deliver_many): each written to requests/tmp and fsync'd,
           then each renamed into requests/new    <- ITS commit point,
           then one fsync of requests/new for them all
        2. append their change ids and revisions, as consumed, to the
           journal (one line for one change to many builders)
        3. remove each change from the spool once every builder consumed it
    A crash before a request's rename leaves its changes queued: they are
    requested after the restart.  A crash after some renames, or between
    1 and 2, would request them twice; so, at startup, before READY=1,
    the scheduler replays its journal, reads the requests queued or
    claimed since its mark and the last RECOVERY_BUILDS builds of each
    builder, and counts the changes they carry as consumed: a request
    delivered before the crash is never delivered again.  (A request that
    was also built more than RECOVERY_BUILDS times over while the
    scheduler was down would be built twice: better twice than never.)
    A crash between 2 and 3 leaves a consumed change in the spool,
    removed on the next pass.

    The mark (STATE/scheduler/consumed.mark, consumed.py) bounds that
    reading: every consumed.FOLD_LINES journal lines, and at each start,
    the memories are written to the builders' files durably and the mark
    set to the time the fold began.  A request's id begins with the time
    it was made (spool.new_id), so a queued request whose id is not after
    the mark was delivered before that fold and is in the files: its
    record is not opened.  The start costs a listing of the queue's names
    and the requests of the last FOLD_LINES passes at most, not one open
    per queued request.  No mark (a first start, or an earlier release's
    state): every queued request is read, once.  A wall clock set back
    below the mark would make new ids look old, so before delivering the
    scheduler lowers the mark below now (durably, before the commit
    point) whenever now is not after it.

FILES
    SPOOL/changes/new/ID      its inbox
    SPOOL/requests/new/ID     the requests it queues
    STATE/scheduler/B.json    consumed ids and revisions per builder
    STATE/scheduler/consumed.jsonl   what was consumed since they were written
    STATE/scheduler/consumed.mark    requests up to when are in those files
    STATE/timers/B.json       a persistent timer's last elapse (without systemd)

SIGNALS
    SIGHUP re-reads the configuration; SIGTERM stops (nothing is held in
    memory that the spool does not have).
"""

import json
import os
import time

from gi.repository import GLib

from . import bus as busmod, changes as changes_mod, config, control, daemon, log, records
from . import consumed, periodic, redact, routing, spool as spoolmod, vcs

KEEP = consumed.KEEP    # consumed ids / revisions remembered per builder
RECOVERY_BUILDS = 20    # recent builds per builder read at startup
_Memory = consumed.Memory


class Scheduler(daemon.Daemon):
    role = "Scheduler"
    program = "buildunits-scheduler"
    watch_queues = ("changes",)
    subscriptions = (("Poller", "ChangeQueued"), ("Runner", "BuildFinished"))

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._memory = {}
        self._cache = {}           # change id -> record (the spool file is the truth)
        self._timer = None
        self._waiting = {}         # (builder, branch) -> number of changes waiting
        self._requested = 0
        self._added = {}           # builder -> (ids, revisions) consumed in this pass
        self._unfolded = set()     # builders whose memory is newer than their file
        self._journal_lines = 0
        self._finished = set()     # (builder, number) said finished, to look at for After=
        self._after_scan = True    # read the upstreams' recent builds (start, rescan)
        self._calendar = None      # periodic.PlainTimers, when the OnCalendar= timers are ours
        self._mark = None          # the durable mark (ns): requests up to it are in the files

    def memory(self, builder):
        m = self._memory.get(builder)
        if m is None:
            try:
                rec = self.state.read_scheduler(builder)
            except records.RecordError as e:
                self.state.quarantine(e.path, e.reason)
                log.error("%s; starting %s's memory afresh (recovery scan still applies)" % (e, builder))
                rec = None
            m = self._memory[builder] = _Memory(rec)
        return m

    def _consume(self, builder, ids, revisions=()):
        """BUILDER has consumed IDS and REVISIONS: in its memory now, in
        the journal at the end of this pass."""
        self.memory(builder).add(ids, revisions)
        got = self._added.setdefault(builder, ([], []))
        got[0].extend(ids)
        got[1].extend(revisions)

    def _flush_memory(self):
        # Once per pass, one journal line per distinct set of consumed
        # changes (one change to B builders: one line, not B files), and
        # the builders' files only every consumed.FOLD_LINES lines.  The
        # journal is not fsync'd: if a crash loses the latest lines,
        # startup() recovers them from the requests queued or claimed
        # since the mark and the recent builds, exactly as for a crash
        # between steps 1 and 2 (see the docstring).
        if self._added:
            data = consumed.group(self._added)
            self.state.append_journal(data)
            self._journal_lines += data.count(b"\n")
            self._unfolded.update(self._added)
            self._added.clear()
        if self._journal_lines >= consumed.FOLD_LINES:
            self._fold()

    def _fold(self):
        """Write the memories the journal holds into their files, durably,
        set the mark to when this began, then drop the journal.

        Every request delivered before THROUGH is in the memories (each is
        consumed as soon as its rename returned), so once the files are on
        disk the mark may say so.  A crash before the mark is written
        leaves the earlier one (the recovery reads more requests); between
        the mark and the removal, the journal is replayed again, no harm."""
        through = spoolmod.now_ns()
        self.state.write_schedulers({b: self.memory(b).fields() for b in sorted(self._unfolded)})
        self.state.write_mark(through)
        self._mark = through
        self.state.remove_journal()
        self._unfolded.clear()
        self._journal_lines = 0

    def _before_delivery(self):
        """Called before each commit point: the requests about to be made
        must have ids after the mark, or a crash before their journal line
        would hide them from the recovery.  Only a wall clock set back
        below the mark breaks that; the mark is then lowered below now,
        durably, first."""
        now = spoolmod.now_ns()
        if self._mark is not None and now <= self._mark:
            log.warning("the wall clock is before the scheduler's mark; lowering the mark")
            self.state.write_mark(now - 1)
            self._mark = now - 1

    # ---------------------------------------------------------- recovery
    def startup(self):
        """Replay the journal, count what requests and recent builds carry
        as consumed, and fold it all into the builders' files."""
        self.sweep()
        for builders, ids, revisions in self.state.read_journal():
            for b in builders:
                self.memory(b).add(ids, revisions)
                self._unfolded.add(b)
        try:
            mark = self.state.read_mark()
        except records.RecordError as e:
            self.state.quarantine(e.path, e.reason)
            log.error("%s; reading every queued request once" % e)
            mark = None
        carried = []
        # Names only, then the records of the requests made after the mark
        # (the others are in the builders' files: see the docstring).
        for rid in self.spool.pending("requests"):
            if _after(rid, mark):
                carried.append(self.spool.read("requests", rid))
        for worker, ids in self.spool.all_claimed().items():
            for rid in ids:
                if _after(rid, mark):
                    carried.append(self.spool.read_claimed(worker, rid))
        for b in self.cfg.builders:
            for n in self.state.recent_numbers(b, RECOVERY_BUILDS):
                try:
                    build = self.state.read_build(b, n)
                except (records.RecordError, OSError):
                    continue
                if build and isinstance(build.get("request"), dict):
                    carried.append(build["request"])
        touched = set()
        for req in carried:
            # Read defensively: a request is only a hint here, and a bad one
            # must not keep the scheduler from starting.
            if not isinstance(req, dict) or not isinstance(req.get("builder"), str) \
                    or req["builder"] not in self.cfg.builders:
                continue
            m = self.memory(req["builder"])
            changes = req.get("changes")
            changes = [c for c in changes if isinstance(c, dict)] if isinstance(changes, list) else []
            ids = [c["id"] for c in changes if isinstance(c.get("id"), str)]
            if isinstance(req.get("force"), str):
                ids.append(req["force"])
            up = req.get("upstream")
            if isinstance(up, dict) and isinstance(up.get("key"), str):
                ids.append(up["key"])
            branch = req.get("branch") if isinstance(req.get("branch"), str) else ""
            revs = [(branch, c["revision"]) for c in changes if isinstance(c.get("revision"), str)]
            new = [i for i in ids if not m.has_id(i)]
            if new:
                m.add(new, revs)
                touched.add(req["builder"])
        for b in sorted(touched):
            log.info("%s: recovered consumed changes from queued requests and recent builds" % b)
        self._unfolded |= touched
        self._after_first_look()
        self._fold()
        self._start_timers()

    # ------------------------------------------- OnCalendar= (periodic.py)
    def _start_timers(self):
        """The builders' OnCalendar= timers: systemd's under systemd (the
        generator's units; only a missing one is said), ours otherwise."""
        if periodic.under_systemd():
            for b in self.cfg.builders.values():
                unit = periodic.timer_unit(b.name)
                if b.on_calendar and not os.path.exists(os.path.join(periodic.GENERATOR_DIR, unit)):
                    log.warning("%s: OnCalendar= has no timer unit %s yet; run `systemctl daemon-reload`"
                                % (b.name, unit), builder=b.name)
            return
        if self._calendar is None:
            self._calendar = periodic.PlainTimers(
                self.state, clock=time.time, arm=daemon.Timer, spawn=self._spawn_timer,
                log=lambda level, text: getattr(log, level)(text))
        self._calendar.update(self.cfg)

    def _spawn_timer(self, builder, done):
        def watch(pid, ended):
            GLib.child_watch_add(GLib.PRIORITY_DEFAULT, pid,
                                 lambda _pid, status: (ended(os.waitstatus_to_exitcode(status)), self.wake()))
        periodic.spawn_elapse(self.dirs, builder, done, watch)

    def on_config(self, old, new):
        self._start_timers()

    # ------------------------------------------------------------- sweep
    def sweep(self):
        """Remove temporary files abandoned by crashed writers, once they are
        older than fsutil.TMP_SWEEP_AGE_SEC (a writer gives up after
        TMP_WRITER_MAX_SEC, far sooner, so no live writer loses its file),
        and prune requests cancelled more than spool.CANCELLED_KEEP_SEC ago.
        The scheduler does it for the spool and the small state directories
        (spool.LAYOUT and state.LAYOUT say which)."""
        for p in self.spool.sweep() + self.state.sweep():
            log.notice("removed %s, abandoned by a writer that crashed" % p)
        for p in self.spool.prune():
            log.info("pruned %s, a request cancelled more than %d days ago"
                     % (p, spoolmod.CANCELLED_KEEP_SEC // 86400))

    def _rescan(self):
        self.sweep()
        self._after_scan = True
        if self._calendar is not None:
            self._calendar.check()     # the wall clock may have been set since it was armed
        return super()._rescan()

    # -------------------------------------------------------------- work
    def work(self):
        try:
            self._work()
        finally:
            self._flush_memory()

    def _work(self):
        self._after()
        now = time.time()
        pending = {}          # (builder, branch) -> [change records], arrival order
        ids = self.spool.pending("changes")
        live = set(ids)
        for cid in list(self._cache):
            if cid not in live:
                del self._cache[cid]
        for cid in ids:
            rec = self._cache.get(cid)
            if rec is None:
                rec = self.spool.read("changes", cid)
                if rec is None:
                    continue
                # Capped as soon as read (changes.py): the cache holds
                # every change waiting, and a message may be megabytes.
                rec = self._cache[cid] = changes_mod.bound_change(rec)
            if rec["format"] == "force":
                self._force(cid, rec)
                continue
            if not self._check_change(cid, rec):
                continue
            if self._route(cid, rec, pending):
                self._done(cid)
        self._flush(pending, now)

    def _check_change(self, cid, rec):
        why = None
        for key in ("id", "repository", "branch", "revision"):
            if not isinstance(rec.get(key), str) or not rec.get(key):
                why = "change record without a valid %s" % key
                break
        if why is None and rec["id"] != cid:
            why = "change record whose id %r is not its file name" % rec["id"]
        if why is None:
            # It would become a request, and the checkout step's command
            # line: checked by the kind of the repository's builders (all
            # of one kind: config.load), any kind's if none is named.
            kinds = {b.kind for b in self.cfg.builders_for(config.normalize_repository(rec["repository"]))}
            kind = kinds.pop() if len(kinds) == 1 else None
            if not vcs.valid_revision(rec["revision"], kind):
                why = "change record whose revision %r is not %s" % (rec["revision"], vcs.revision_rule(kind))
        q = rec.get("queued")
        if why is None and (not isinstance(q, (int, float)) or isinstance(q, bool)):
            why = "change record without a valid queued time"
        if why:
            self.spool.reject("changes", cid, why)
            self._cache.pop(cid, None)
            return False
        return True

    def _route(self, cid, rec, pending):
        """Add REC to PENDING for each builder still wanting it; True if none does."""
        repo = config.normalize_repository(rec["repository"])
        done, dropped = routing.route(rec, self.cfg.builders_for(repo), self.memory, pending)
        for bname, why in dropped:
            if why == routing.REQUESTED:
                log.info("%s: %s %s already requested; change %s dropped"
                         % (bname, rec["branch"], rec["revision"][:12], cid))
            # (WAITING: the same commit reported twice, both waiting.)
            self._consume(bname, [cid])
        return done

    def _done(self, cid):
        self.spool.remove("changes", cid)
        self._cache.pop(cid, None)

    def _flush(self, pending, now):
        requests, self._waiting, next_deadline = routing.due(
            pending, lambda name: self.cfg.builders[name].tree_stable, now)
        finished = self._request_all([(self.cfg.builders[b], br, cs) for b, br, cs in requests])
        for cid in finished:
            rec = self._cache.get(cid)
            if rec is not None and self._route(cid, rec, {}):
                self._done(cid)
        self._arm(next_deadline, now)

    def _arm(self, deadline, now):
        if self._timer is not None:
            self._timer.remove()
            self._timer = None
        if deadline is not None:
            self._timer = daemon.Timer(deadline - now, self._fire)

    def _fire(self):
        self._timer = None
        self.wake()
        return False

    def _request_all(self, requests):
        """Deliver REQUESTS, [(builder, branch, changes)], as one batch
        (spool.deliver_many: each request's rename is its commit point, one
        fsync of requests/new/ for all); return the ids of the changes they
        carry.  What was delivered is consumed even if a later one failed
        (Undelivered): otherwise the next pass would request it again."""
        fields = [routing.request_fields(b, branch, changes) for b, branch, changes in requests]
        if fields:
            self._before_delivery()
        try:
            rids = self.spool.deliver_many("requests", "request", fields) if fields else []
        except spoolmod.Undelivered as e:
            self._requested_each(requests, fields, e.delivered)
            raise
        return self._requested_each(requests, fields, rids)

    def _requested_each(self, requests, fields, rids):
        finished = set()
        for (b, branch, changes), f, rid in zip(requests, fields, rids):
            self._consume(b.name, [c["id"] for c in changes], [(branch, c["revision"]) for c in changes])
            self.bus.emit("BuildRequested", rid, b.name, branch, f["revision"])
            log.info("%s: build requested for %s %s (%s)" % (b.name, branch, f["revision"][:12], f["reason"]),
                     builder=b.name, request=rid)
            self._requested += 1
            finished.update(c["id"] for c in changes)
        return finished

    def _force(self, fid, rec):
        name = rec.get("builder")
        b = self.cfg.builders.get(name) if isinstance(name, str) else None
        rev = rec.get("revision")
        why = None
        if b is None:
            why = "forced build of unknown builder %r" % (name,)
        elif rev not in (None, "") and not vcs.valid_revision(rev, b.kind if b.repository else None):
            why = "forced build whose revision %r is not empty or %s" % (
                rev, vcs.revision_rule(b.kind if b.repository else None))
        if why:
            self.spool.reject("changes", fid, why)
            self._cache.pop(fid, None)
            return
        m = self.memory(b.name)
        if not m.has_id(fid):
            branch = rec.get("branch") or default_branch(b)
            fields = {"builder": b.name, "repository": redact.url(b.repository), "branch": branch,
                      "revision": rec.get("revision") or "", "changes": [], "force": fid,
                      "reason": _force_reason(rec),
                      "properties": rec.get("properties") if isinstance(rec.get("properties"), dict) else {}}
            p = rec.get("priority")
            if isinstance(p, int) and not isinstance(p, bool) and abs(p) <= spoolmod.MAX_PRIORITY:
                fields["priority"] = p        # the forced build's own, in the request's id too
            fields.update(rebuild_fields(rec))
            self._before_delivery()
            rid = self.spool.deliver("requests", "request", fields)   # commit point
            self._consume(b.name, [fid])
            self.bus.emit("BuildRequested", rid, b.name, branch, fields["revision"])
            log.info("%s: forced build requested (%s)" % (b.name, fields["reason"]), builder=b.name, request=rid)
            self._requested += 1
        self._done(fid)

    # ------------------------------------------------------------ After=
    # A build of D is requested when a build of U, which D names in After=,
    # has finished with a result of D's AfterResult=: on the same branch
    # and revision, with U's properties, and "upstream" saying which build.
    # The truth is U's build records; BuildFinished signals say which to
    # read now, and each rescan reads U's recent builds (the signal may be
    # lost).  Each U #N is consumed by D under the key "after:U#N", in D's
    # memory as changes are, and the key is in the request: a crash after
    # the request's delivery and before the journal line is recovered
    # from the request (startup), so no build of U starts D twice.  The
    # first time D names U, U's builds already finished are consumed
    # without requests, as the poller's first poll records the heads.

    def signal_BuildFinished(self, builder, number, result):
        if self.cfg.downstream(builder):
            self._finished.add((builder, number))
            self.wake()

    def _after_first_look(self):
        for d in self.cfg.builders.values():
            m = self.memory(d.name)
            for u in d.after:
                if m.has_id("after-start:" + u) or u not in self.cfg.builders:
                    continue
                keys = ["after:%s#%d" % (u, n) for n in self.state.recent_numbers(u, RECOVERY_BUILDS)]
                self._consume(d.name, keys + ["after-start:" + u])
                log.info("%s: After=%s: its builds from now on start builds of %s" % (d.name, u, d.name),
                         builder=d.name)

    def _after(self):
        if self._after_scan or not self.events:
            self._after_scan = False
            for u in {u for d in self.cfg.builders.values() for u in d.after}:
                for n in self.state.recent_numbers(u, RECOVERY_BUILDS):
                    self._finished.add((u, n))
        self._after_first_look()
        todo, self._finished = sorted(self._finished), set()
        for u, n in todo:
            downstream = [d for d in self.cfg.downstream(u) if not self.memory(d.name).has_id("after:%s#%d" % (u, n))]
            if not downstream:
                continue
            try:
                rec = self.state.read_build(u, n)
            except (records.RecordError, OSError):
                continue
            if not rec or rec.get("state") != "finished":
                continue
            for d in downstream:
                self._after_one(d, u, n, rec)

    def _after_one(self, d, u, n, rec):
        key = "after:%s#%d" % (u, n)
        result = rec.get("result")
        if result not in d.after_results:
            log.info("%s: not built after %s #%d, which ended %s (AfterResult=%s)"
                     % (d.name, u, n, result, " ".join(d.after_results)), builder=d.name)
            self._consume(d.name, [key])
            return
        req = rec.get("request") if isinstance(rec.get("request"), dict) else {}
        props = req.get("properties") if isinstance(req.get("properties"), dict) else {}
        kind = d.kind if d.repository else None
        rev = rec.get("revision") if vcs.valid_revision(rec.get("revision") or "", kind) else ""
        fields = {"builder": d.name, "repository": redact.url(d.repository), "branch": rec.get("branch") or "",
                  "revision": rev, "changes": req.get("changes") if isinstance(req.get("changes"), list) else [],
                  "reason": "after %s #%d (%s)" % (u, n, result), "properties": dict(props),
                  "upstream": {"builder": u, "number": n, "result": result, "key": key}}
        self._before_delivery()
        rid = self.spool.deliver("requests", "request", fields)   # commit point
        self._consume(d.name, [key])
        self.bus.emit("BuildRequested", rid, d.name, fields["branch"], fields["revision"])
        log.info("%s: build requested after %s #%d (%s)" % (d.name, u, n, result), builder=d.name, request=rid)
        self._requested += 1

    def status_text(self):
        waiting = sum(self._waiting.values())
        return "%d requests made; %d change%s waiting for a stable tree" % (
            self._requested, waiting, "" if waiting == 1 else "s")

    # ------------------------------------------------------------ D-Bus
    def methods(self):
        return {"Force": self._m_force, "ForcePriority": self._m_force_priority, "Rebuild": self._m_rebuild,
                "Cancel": self._m_cancel, "Status": self._m_status}

    def _m_force_priority(self, builder, branch, revision, reason, properties, priority, caller):
        """Force with the build's own PRIORITY (Priority= of its builder otherwise)."""
        return self._m_force(builder, branch, revision, reason, properties, caller, priority=priority)

    def _m_force(self, builder, branch, revision, reason, properties, caller, priority=None):
        """Queue a forced build: the same force record `buildunits force`
        writes, so one code path turns it into a request (control.py)."""
        try:
            fid, notes = control.force(self.spool, self.cfg, builder, branch, revision, reason, properties, caller,
                                       priority=priority)
        except control.Refused as e:
            raise busmod.MethodError(str(e))
        for n in notes:
            log.info("%s: %s" % (builder, n), builder=builder)
        log.info("%s: forced build queued by %s over D-Bus" % (builder, caller), builder=builder)
        self.wake()
        return fid

    def _m_rebuild(self, builder, number, reason, caller):
        """Queue build NUMBER of BUILDER again: a force record, as
        `buildunits rebuild` writes it (control.py)."""
        try:
            fid, notes = control.rebuild(self.spool, self.state, self.cfg, builder, number, reason, caller)
        except control.Refused as e:
            raise busmod.MethodError(str(e))
        for n in notes:
            log.info("%s: %s" % (builder, n), builder=builder)
        log.info("%s: rebuild of #%d queued by %s over D-Bus" % (builder, number, caller), builder=builder)
        self.wake()
        return fid

    def _m_cancel(self, builder, number, request, caller):
        """Cancel queued request REQUEST, or the running build BUILDER #NUMBER (control.py)."""
        try:
            if request:
                text = control.cancel_request(self.spool, request)
            else:
                text = control.cancel_build(self.spool, self.state, builder, number, caller)
        except control.Refused as e:
            raise busmod.MethodError(str(e))
        if request:
            log.info("request %s cancelled by %s" % (request, caller), builder=builder or None, request=request)
        else:
            log.info("%s #%d: cancellation requested by %s" % (builder, number, caller), builder=builder, build=number)
            self.bus.emit("CancelRequested", builder, number)
        return text

    def _m_status(self, caller):
        from .status import gather_status
        s = gather_status(self.dirs, self.cfg)
        s["scheduler"] = {"requested": self._requested,
                          "waiting": {"%s %s" % k: v for k, v in self._waiting.items()}}
        return json.dumps(s, sort_keys=True)


def _after(rid, mark):
    """Whether the request RID (a valid id) was made after MARK (ns; None:
    no mark, every request is)."""
    return mark is None or spoolmod.id_time(rid) > mark


def rebuild_fields(rec):
    """What a request made of force record REC adds when REC is a rebuild
    (control.rebuild): the build it rebuilds, that build's changes
    (bounded again: the record may have been written by hand), and a
    reason saying so.  {} for a plain force."""
    number = rec.get("rebuild_of")
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number < 2 ** 32:
        return {}
    found = rec.get("changes") if isinstance(rec.get("changes"), list) else []
    carried, omitted = changes_mod.bound_changes([c for c in found if isinstance(c, dict)])
    why = rec.get("reason") if isinstance(rec.get("reason"), str) else ""
    return {"rebuild_of": number, "changes": carried, "changes_omitted": omitted,
            "reason": "rebuild of #%d by %s%s" % (number, rec.get("user") or "someone", ": " + why if why else "")}


def _force_reason(rec):
    """A force record's reason for its request: a timer's as it is
    ("timer OnCalendar=...", periodic.py), an operator's with who forced."""
    if rec.get("source") == periodic.SOURCE and isinstance(rec.get("reason"), str) and rec["reason"]:
        return rec["reason"]
    return "forced by %s: %s" % (rec.get("user") or "someone", rec.get("reason") or "no reason given")


def default_branch(builder):
    """The branch a forced build uses when none is given."""
    for g in builder.branches:
        if not any(ch in g for ch in "*?["):
            return g
    return vcs.DEFAULT_BRANCH[builder.kind]


def main(argv):
    return daemon.main(Scheduler, argv, "Turn changes and forced builds into build requests.")
