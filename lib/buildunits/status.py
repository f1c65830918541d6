"""What is queued, running and last built: read from the spool and state.

Shared by `buildunits status` and the scheduler's D-Bus Status method.
Reads only; never moves or repairs anything (fsck does that).
"""


from . import config, fsutil, queueindex, records, redact, spool as spoolmod
from .spool import Spool
from .state import State


SHOWN = 20         # queued requests shown one by one; the rest are counted


def gather_status(dirs, cfg):
    sp, st = Spool(dirs.spool), State(dirs.state)
    out = {"changes": [], "queued": [], "running": [], "builders": {}}
    for cid in sp.pending("changes"):
        r = sp.peek("changes", cid)
        if r:
            out["changes"].append({"id": cid, "kind": r["format"], "builder": _s(r.get("builder")),
                                   "branch": _s(r.get("branch")), "revision": _s(r.get("revision")),
                                   "queued": _t(r.get("queued"))})
    # The queue by builder from its file names (queueindex.py); only the
    # oldest SHOWN requests are opened, whatever the queue's length.
    names = sp.pending("requests")
    q = queueindex.QueueIndex()
    q.rebuild(names)
    out["queued_count"] = len(names)
    by_builder = {b: q.count(b) for b in q.builders()}
    if q.unresolved():
        by_builder[""] = len(q.unresolved())     # queued by an earlier release: the record says
    out["queued_by_builder"] = by_builder
    for rid in names[:SHOWN]:
        r = sp.peek("requests", rid)
        if r:
            out["queued"].append({"id": rid, "builder": _s(r.get("builder")), "branch": _s(r.get("branch")),
                                  "revision": _s(r.get("revision")), "reason": _s(r.get("reason")),
                                  "queued": _t(r.get("queued"))})
    for worker, ids in sp.all_claimed().items():
        try:
            ptr = st.read_worker(worker)
        except records.RecordError:
            ptr = None
        for rid in ids:
            entry = {"worker": worker, "request": rid, "alive": runner_alive(dirs, worker)}
            if ptr and ptr.get("request") == rid:
                b = _peek_build(st, ptr["builder"], ptr["number"])
                entry.update(builder=ptr["builder"], number=ptr["number"])
                if b:
                    entry["started"] = b.get("started")
                    entry["step"] = next((s["name"] for s in b.get("steps", []) if s.get("state") == "running"), None)
            out["running"].append(entry)
    names = sorted(set(cfg.builders if cfg else []) | set(st.builders()))
    for name in names:
        last = None
        for n in reversed(st.recent_numbers(name, 20)):
            b = _peek_build(st, name, n)
            if b and b.get("state") == "finished":
                last = {"number": n, "result": b.get("result"), "revision": b.get("revision"),
                        "finished": b.get("finished")}
                break
        out["builders"][name] = {"configured": bool(cfg and name in cfg.builders), "last": last}
    out["outbox"] = _outbox(sp)
    out["repositories"] = _repositories(st, cfg)
    out["locks"] = _locks(dirs, cfg)
    out["disk"] = _disk(st)
    return out


def _outbox(sp):
    """{waiting, oldest: {queued, channel, destination, attempts,
    last_error, next_attempt}} of the notifier's outbox; only the oldest
    message is read."""
    names = [n for n in sp.entries("outbox") if spoolmod.valid_id(n)]
    oldest = sp.peek("outbox", names[0]) if names else None
    return {"waiting": len(names), "oldest": {
        "queued": _t(oldest.get("queued")), "channel": _s(oldest.get("channel")),
        "destination": _s(oldest.get("destination")), "attempts": _t(oldest.get("attempts")) or 0,
        "last_error": _s(oldest.get("last_error")), "next_attempt": _t(oldest.get("next_attempt"))}
        if oldest else None}


def _disk(st):
    """What the janitor last measured (janitor/retention.json): {measured,
    builders: {B: {builds, state_bytes, logs_bytes, artifacts_bytes}}}, or
    None.  Read, never measured here: a history of 100k builds would take
    a walk of all of them."""
    rec = st.peek_retention()
    if not rec or _t(rec.get("measured")) is None or not isinstance(rec.get("builders"), dict):
        return None
    out = {}
    for name, e in sorted(rec["builders"].items()):
        if not isinstance(e, dict):
            continue
        out[name] = {k: e.get(k) if isinstance(e.get(k), int) and not isinstance(e.get(k), bool) else 0
                     for k in ("builds", "state_bytes", "logs_bytes", "artifacts_bytes")}
    return {"measured": rec["measured"], "builders": out}


def _locks(dirs, cfg):
    """[{lock, slots, held: [{worker, builder, number}]}] of each lock the
    builders name (Locks=), from the slots' flocks (locks.py)."""
    from . import locks
    slots = {}
    for b in (cfg.builders.values() if cfg else ()):
        for name, n in b.locks:
            slots.setdefault(name, n)
    held = locks.holders(dirs.state)
    out = []
    for name in sorted(slots):
        who = [{k: _s(h.get(k)) if k != "number" else h.get("number") for k in ("worker", "builder", "number")}
               for h in held.get(("named", name), [])]
        out.append({"lock": name, "slots": slots[name], "held": who})
    return out


def _repositories(st, cfg):
    """[{repository, polled, problem, skipped}] of the polled repositories,
    from the poller's state records: "problem" ({text, since} or None) is
    why the repository cannot be polled now; "skipped" the commits it could
    not parse (most recent last)."""
    if cfg is not None:
        repos = sorted({config.normalize_repository(b.repository) for b in cfg.builders.values()
                        if b.repository and b.poll_interval > 0})
        recs = [(r, peek(st.poller_path(r), ("poller",))) for r in repos]
    else:
        recs = [(None, rec) for _path, rec in st.poller_records() if isinstance(rec, dict)]
    out = []
    for repo, rec in recs:
        rec = rec or {}
        repo = repo or _s(rec.get("repository"))
        if not repo:
            continue
        problem = rec.get("problem") if isinstance(rec.get("problem"), dict) else None
        skipped = rec.get("skipped") if isinstance(rec.get("skipped"), list) else []
        out.append({"repository": redact.url(repo), "polled": _t(rec.get("polled")),
                    "problem": {"text": redact.text(_s(problem.get("text"))), "since": _t(problem.get("since"))}
                    if problem else None,
                    "skipped": [{"revision": _s(k.get("revision")), "branch": _s(k.get("branch")),
                                 "reason": _s(k.get("reason")), "when": _t(k.get("when"))}
                                for k in skipped if isinstance(k, dict)]})
    return out


def _s(v):
    return v if isinstance(v, str) else ""


def _t(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _peek_build(st, builder, number):
    """The build record, or None; never read through a symbolic link."""
    try:
        return st.read_build(builder, number)
    except (OSError, ValueError, TypeError):
        return None


def peek(path, fmts):
    try:
        return records.read(path, fmts)
    except (OSError, records.RecordError):
        return None


def runner_alive(dirs, worker):
    """True if the runner of WORKER holds its lock (daemon.py) now."""
    return fsutil.flock_held(State(dirs.state).lock_path("buildunits-runner", worker))
