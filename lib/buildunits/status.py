"""What is queued, running and last built: read from the spool and state.

Shared by `buildunits status` and the scheduler's D-Bus Status method.
Reads only; never moves or repairs anything (fsck does that).
"""

import os

from . import records
from .spool import Spool
from .state import State


def gather_status(dirs, cfg):
    sp, st = Spool(dirs.spool), State(dirs.state)
    out = {"changes": [], "queued": [], "running": [], "builders": {}}
    for cid in sp.pending("changes"):
        r = peek(sp.path("changes", "new", cid), ("change", "force"))
        if r:
            out["changes"].append({"id": cid, "kind": r["format"], "builder": _s(r.get("builder")),
                                   "branch": _s(r.get("branch")), "revision": _s(r.get("revision")),
                                   "queued": _t(r.get("queued"))})
    for rid in sp.pending("requests"):
        r = peek(sp.path("requests", "new", rid), ("request",))
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
                try:   # with its progress applied: the step running now
                    b = st.read_build(ptr["builder"], ptr["number"])
                except (OSError, records.RecordError):
                    b = None
                entry.update(builder=ptr["builder"], number=ptr["number"])
                if b:
                    entry["started"] = b.get("started")
                    entry["step"] = next((s["name"] for s in b.get("steps", []) if s.get("state") == "running"), None)
            out["running"].append(entry)
    names = sorted(set(cfg.builders if cfg else []) | set(st.builders()))
    for name in names:
        last = None
        for n in reversed(st.recent_numbers(name, 20)):
            b = peek(st.build_path(name, n), ("build",))
            if b and b.get("state") == "finished":
                last = {"number": n, "result": b.get("result"), "revision": b.get("revision"),
                        "finished": b.get("finished")}
                break
        out["builders"][name] = {"configured": bool(cfg and name in cfg.builders), "last": last}
    return out


def _s(v):
    return v if isinstance(v, str) else ""


def _t(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def peek(path, fmts):
    try:
        return records.read(path, fmts)
    except (OSError, records.RecordError):
        return None


def runner_alive(dirs, worker):
    """True if the runner of WORKER holds its lock (daemon.py) now."""
    path = os.path.join(dirs.state, "locks", "buildunits-runner@%s.lock" % worker)
    return _locked(path)


def _locked(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    token = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    try:
        with open("/proc/locks") as f:
            for line in f:
                if token in line.split():
                    return True
    except OSError:
        pass
    return False
