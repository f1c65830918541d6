#!/usr/bin/python3
"""scale_waterfall: the waterfall's first page at 10, 100 and 1000 builders.

    /usr/bin/python3 bench/scale_waterfall.py     (QUICK=1: 10 and 100 only)
    KEEP_SITE=DIR ...                             keep each site as DIR/N

N builders on one repository, each of which built the same REVISIONS
revisions (a failure now and then), from records written straight into
a state directory (site_bench.write_build's shape, no fsyncs), cached
under $BENCH_CACHE (default /var/tmp/buildunits-bench) as
scale-waterfall-vFORMAT-N/.  The builders are named pNN-bNNNN, and their
files say WaterfallGroup=pNN (GROUP_SIZE builders a group) in a second
configuration, "grouped"; "plain" has no such key.  A release without
the key ignores it (an unknown key is a warning), so the same run
measures a checkout before and after it.

For each configuration: Site.rebuild(force=True) once into a new site,
then RUNS updates with nothing new (a pass that writes every head page),
timing each pass and, within it, the rendering and writing of index.html
(Site's files.write_page for it).  Reports index.html's size, the
largest page under groups/ (if any), and the medians.

Prints one table (builders | figure | value) and writes
build/bench/scale_waterfall.json.  Never fails on the figures.
"""

import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from common import write_json  # noqa: E402
from buildunits import config, records, site  # noqa: E402
from buildunits.spool import Spool  # noqa: E402
from buildunits.state import State  # noqa: E402

FORMAT = 1
SIZES, QUICK_SIZES = (10, 100, 1000), (10, 100)
REVISIONS = 3
GROUP_SIZE = 50
RUNS = 5
T0 = 1600000000.0
STEPS = ("compile", "test")


def names(n):
    return ["p%02d-b%04d" % (i // GROUP_SIZE, i) for i in range(n)]


def _record(builder, n, serial, rev_index):
    t = T0 + 600 * rev_index + serial % 97
    rev = "%040x" % ((rev_index + 1) * 2654435761 % (1 << 160))
    result = "failure" if serial % 37 == 0 else ("warnings" if serial % 53 == 0 else "success")
    steps = [{"name": s, "description": "", "command": "make " + s, "state": "finished",
              "result": result if s == "test" else "success", "started": t + 10 * i, "finished": t + 10 * i + 10,
              "log": "", "exit_status": 0, "summary": "", "timed_out": False} for i, s in enumerate(STEPS)]
    change = {"id": "%019d.1.%d.bench0" % (int(t * 1e9), rev_index), "queued": t - 5, "source": "poller",
              "repository": "/srv/git/big.git", "branch": "main", "revision": rev,
              "author": "Dev <dev@example.org>", "when": t - 30, "message": "change %d" % rev_index,
              "files": ["a.c"]}
    request = {"id": "%019d.1.%d.bench1" % (int(t * 1e9), serial), "queued": t - 2, "builder": builder,
               "repository": "/srv/git/big.git", "branch": "main", "revision": rev, "reason": "1 change on main",
               "changes": [change], "force": None, "properties": {}}
    return {"builder": builder, "number": n, "request_id": request["id"], "request": request, "worker": "w1",
            "state": "finished", "result": result, "reason": "", "started": t, "finished": t + 20,
            "repository": "/srv/git/big.git", "branch": "main", "revision": rev, "steps": steps}


def history(n, cache):
    """The top directory of a cached history of N builders."""
    top = os.path.join(cache, "scale-waterfall-v%d-%d" % (FORMAT, n))
    if os.path.exists(os.path.join(top, "complete")):
        return top
    shutil.rmtree(top, ignore_errors=True)
    st = State(os.path.join(top, "state"))
    st.ensure()
    serial = 0
    for r in range(REVISIONS):
        for b in names(n):
            num = r + 1
            os.makedirs(st.build_dir(b, num))
            with open(st.build_path(b, num), "wb") as f:
                f.write(records.encode("build", _record(b, num, serial, r)))
            serial += 1
    for b in names(n):
        st.write_counter(b, REVISIONS + 1)
    for kind in ("plain", "grouped"):
        d = os.path.join(top, "config-" + kind, "builders")
        os.makedirs(d)
        for b in names(n):
            with open(os.path.join(d, b + ".builder"), "w") as f:
                f.write("[Builder]\n%sRepository=/srv/git/big.git\n\n[Step compile]\nCommand=make\n\n"
                        "[Step test]\nCommand=make test\n" % ("WaterfallGroup=%s\n" % b[:3] if kind == "grouped" else ""))
    with open(os.path.join(top, "complete"), "w") as f:
        f.write("%d builders\n" % n)
    return top


def measure(top, kind, keep):
    cfg = config.load(os.path.join(top, "config-" + kind))
    work = tempfile.mkdtemp(prefix="scale-waterfall-")
    try:
        sp = Spool(os.path.join(work, "spool"))
        sp.ensure()
        site_dir = os.path.join(work, "site")
        s = site.Site(site_dir, State(os.path.join(top, "state")), sp, cfg)
        s.rebuild(force=True)
        index_times, pass_times = [], []
        write_page = s.files.write_page

        def timed_write(rel, *a, **kw):
            t = time.perf_counter()
            out = write_page(rel, *a, **kw)
            if rel == "index.html":
                index_times.append(time.perf_counter() - t)
            return out
        s.files.write_page = timed_write
        for _ in range(RUNS):
            t = time.perf_counter()
            s.update([], force=False)
            pass_times.append(time.perf_counter() - t)
        groups = os.path.join(site_dir, "groups")
        group_sizes = [os.path.getsize(os.path.join(groups, g)) for g in os.listdir(groups)] \
            if os.path.isdir(groups) else []
        out = {"index_bytes": os.path.getsize(os.path.join(site_dir, "index.html")),
               "index_ms": 1000 * statistics.median(index_times) if index_times else None,
               "pass_ms": 1000 * statistics.median(pass_times),
               "group_pages": len(group_sizes), "largest_group_page_bytes": max(group_sizes, default=0)}
        if keep:
            dest = os.path.join(keep, "%s-%d" % (kind, len(cfg.builders)))
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(site_dir, dest, symlinks=True)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    quick = os.environ.get("QUICK") == "1"
    cache = os.environ.get("BENCH_CACHE") or "/var/tmp/buildunits-bench"
    keep = os.environ.get("KEEP_SITE") or ""
    os.makedirs(cache, exist_ok=True)
    out = {}
    print("%-8s | %-40s | %s" % ("builders", "figure", "value"))
    for n in (QUICK_SIZES if quick else SIZES):
        top = history(n, cache)
        out[n] = {}
        for kind in ("plain", "grouped"):
            r = out[n][kind] = measure(top, kind, keep)
            print("%-8d | %-40s | %.1f" % (n, "%s: index.html KB" % kind, r["index_bytes"] / 1024))
            if r["index_ms"] is not None:
                print("%-8d | %-40s | %.1f" % (n, "%s: index.html render+write ms" % kind, r["index_ms"]))
            print("%-8d | %-40s | %.1f" % (n, "%s: pass with nothing new ms" % kind, r["pass_ms"]))
            print("%-8d | %-40s | %d" % (n, "%s: group pages" % kind, r["group_pages"]))
            if r["group_pages"]:
                print("%-8d | %-40s | %.1f" % (n, "%s: largest group page KB" % kind,
                                               r["largest_group_page_bytes"] / 1024))
    write_json(os.path.join(ROOT, "build", "bench", "scale_waterfall.json"),
               {"quick": quick, "revisions": REVISIONS, "group_size": GROUP_SIZE,
                "sizes": {str(k): v for k, v in out.items()}})


if __name__ == "__main__":
    main()
