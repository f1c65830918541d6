#!/usr/bin/python3
"""janitor_bench: what a janitor pass costs over a long history.

    /usr/bin/python3 bench/janitor_bench.py        (QUICK=1: 10k builds only)

The history of bench/scale_fsck.py (100k finished builds of four
builders, three step logs each; cached under $BENCH_CACHE, default
/var/tmp/buildunits-bench), measured once by a first pass (which reads
every record: the disk usage starts from nothing) and cached with its
janitor/retention.json.  Then, in-process, janitor.run() with the
[Defaults] retention keys of each case:

- nothing: KeepBuilds= or KeepDays= that keep every build;
- 1% and 50%: KeepBuilds= or KeepDays= that remove the oldest 1% or
  half of each builder's builds (each on a copy of the cached history,
  made with cp -a --reflink=auto, not counted).

Wall and CPU seconds of the pass and the build records it read (of the
records, not of the directories it deletes).  Prints one table (size |
figure | value) and writes build/bench/janitor.json.  Never fails on the
figures.
"""

import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from common import write_json  # noqa: E402
import scale_fsck  # noqa: E402
from buildunits import config, janitor, paths  # noqa: E402
from buildunits.spool import Spool  # noqa: E402
from buildunits.state import State  # noqa: E402

FORMAT = 1
SIZES, QUICK_SIZES = (10_000, 100_000), (10_000,)
DAY = 86400


def measured(size, cache):
    """The Dirs of the cached SIZE-build history with a first pass done
    (its retention record written), and that pass's figures (None when
    cached)."""
    src = scale_fsck.history(size, cache)
    top = os.path.join(cache, "janitor-v%d-%d" % (FORMAT, size))
    dirs = paths.Dirs(config=os.path.join(top, "config"), spool=os.path.join(top, "spool"),
                      state=os.path.join(top, "state"), site=os.path.join(top, "site"))
    first = None
    if not os.path.exists(os.path.join(top, "complete")):
        shutil.rmtree(top, ignore_errors=True)
        os.makedirs(top)
        for d in ("spool", "state"):
            subprocess.run(["cp", "-a", "--reflink=auto", os.path.join(os.path.dirname(src.state), d), top],
                           check=True)
        first = timed(dirs, config.Config(directory=dirs.config), time.time())
        with open(os.path.join(top, "complete"), "w") as f:
            f.write("measured\n")
    return dirs, first


def copy(dirs, where):
    shutil.rmtree(where, ignore_errors=True)
    os.makedirs(where)
    for d in ("spool", "state"):
        subprocess.run(["cp", "-a", "--reflink=auto", getattr(dirs, d), where], check=True)
    return paths.Dirs(config=os.path.join(where, "config"), spool=os.path.join(where, "spool"),
                      state=os.path.join(where, "state"), site=os.path.join(where, "site"))


def timed(dirs, cfg, now):
    w, c = time.perf_counter(), time.process_time()
    rep = janitor.run(State(dirs.state), Spool(dirs.spool), cfg, now=now)
    w, c = time.perf_counter() - w, time.process_time() - c
    return {"wall_s": w, "cpu_s": c, "records_read": rep.records_read,
            "removed": sum(len(v) for v in rep.removed.values())}


def cases(size):
    """(name, {Defaults key: value}, now) of each case: scale_fsck's build
    SERIAL started at T0 + 60 * SERIAL."""
    per = size // len(scale_fsck.BUILDERS)
    last = scale_fsck.T0 + 60 * size
    out = [("nothing, KeepBuilds=", {"keep_builds": per}, last),
           ("nothing, KeepDays=", {"keep_days": 1000}, last)]
    for pct in (1, 50):
        out.append(("%d%%, KeepBuilds=" % pct, {"keep_builds": per - per * pct // 100}, last))
        # KeepDays=1 with the clock one day past the start of the first build kept.
        out.append(("%d%%, KeepDays=" % pct, {"keep_days": 1}, scale_fsck.T0 + 60 * (size * pct // 100) - 30 + DAY))
    return out


def main():
    quick = os.environ.get("QUICK") == "1"
    cache = os.environ.get("BENCH_CACHE") or "/var/tmp/buildunits-bench"
    os.makedirs(cache, exist_ok=True)
    out = {}
    print("%-8s | %-34s | %s" % ("builds", "figure", "value"))
    for size in (QUICK_SIZES if quick else SIZES):
        base, first = measured(size, cache)
        out[size] = {}
        if first:
            out[size]["first pass (measures all)"] = first
        for name, keys, now in cases(size):
            cfg = config.Config(directory=base.config)
            for k, v in keys.items():
                setattr(cfg, k, v)
            dirs = base if name.startswith("nothing") else copy(base, os.path.join(cache, "janitor-run"))
            out[size][name] = timed(dirs, cfg, now)
        shutil.rmtree(os.path.join(cache, "janitor-run"), ignore_errors=True)
        for name, r in out[size].items():
            print("%-8d | %-34s | %.3f" % (size, name + " wall s", r["wall_s"]))
            print("%-8d | %-34s | %.3f" % (size, name + " CPU s", r["cpu_s"]))
            print("%-8d | %-34s | %d" % (size, name + " records read", r["records_read"]))
            print("%-8d | %-34s | %d" % (size, name + " removed", r["removed"]))
    write_json(os.path.join(ROOT, "build", "bench", "janitor.json"),
               {"quick": quick, "sizes": {str(k): v for k, v in out.items()}})


if __name__ == "__main__":
    main()
