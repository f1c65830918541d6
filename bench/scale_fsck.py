#!/usr/bin/python3
"""scale_fsck: how long `buildunits fsck` takes over a long history.

    /usr/bin/python3 bench/scale_fsck.py        (QUICK=1: 10k builds only)

A history of 10k and 100k finished builds (four builders, three step
logs each, a record as a runner leaves it: site_bench.write_build's
shape), made once and cached under $BENCH_CACHE (default
/var/tmp/buildunits-bench) as scale-fsck-vFORMAT-SIZE/; it is written
without fsyncs, so 100k builds take a minute, not many.  fsck.run() runs in-process over it, read-only
(no --repair): the default check, and --deep where this code has it,
each a few times; the first run of each is a warm-up (the page cache),
not counted.  Wall and CPU seconds, median.

Prints one table (size | figure | value) and writes
build/bench/scale_fsck.json.  Never fails on the figures.
"""

import inspect
import os
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from common import write_json  # noqa: E402
from buildunits import fsck, paths, records  # noqa: E402
from buildunits.spool import Spool  # noqa: E402
from buildunits.state import State  # noqa: E402

FORMAT = 1
SIZES, QUICK_SIZES = (10_000, 100_000), (10_000,)
RUNS = 3
BUILDERS = ("hello", "libfoo", "docs", "release")
T0 = 1600000000.0
LOGS = (("checkout", 5), ("compile", 40), ("test", 60))


def _record(builder, n, serial):
    t = T0 + 60 * serial
    rev = "%040x" % (serial * 2654435761 % (1 << 160))
    steps = [{"name": name, "description": "", "command": "make " + name, "state": "finished",
              "result": "success", "started": t + 10 * i, "finished": t + 10 * i + 10,
              "log": "%02d-%s.log" % (i, name), "exit_status": 0, "summary": "", "timed_out": False}
             for i, (name, _lines) in enumerate(LOGS, 1)]
    change = {"id": "%019d.1.%d.bench0" % (int(t * 1e9), serial), "queued": t - 5, "source": "poller",
              "repository": "/srv/git/%s.git" % builder, "branch": "main", "revision": rev,
              "author": "Dev <dev@example.org>", "when": t - 30, "message": "change %d" % serial, "files": ["a.c"]}
    request = {"id": "%019d.1.%d.bench1" % (int(t * 1e9), serial), "queued": t - 2, "builder": builder,
               "repository": change["repository"], "branch": "main", "revision": rev, "reason": "1 change on main",
               "changes": [change], "force": None, "properties": {}}
    return {"builder": builder, "number": n, "request_id": request["id"], "request": request, "worker": "w1",
            "state": "finished", "result": "success", "reason": "", "started": t, "finished": t + 40,
            "repository": change["repository"], "branch": "main", "revision": rev, "steps": steps}


def history(size, cache):
    """The directories (paths.Dirs) of a cached SIZE-build history."""
    top = os.path.join(cache, "scale-fsck-v%d-%d" % (FORMAT, size))
    dirs = paths.Dirs(config=os.path.join(top, "config"), spool=os.path.join(top, "spool"),
                      state=os.path.join(top, "state"), site=os.path.join(top, "site"))
    if os.path.exists(os.path.join(top, "complete")):
        return dirs
    shutil.rmtree(top, ignore_errors=True)
    st, sp = State(dirs.state), Spool(dirs.spool)
    st.ensure()
    sp.ensure()
    text = {name: "".join("%s line %d: some output of a build tool\n" % (name, i) for i in range(lines)).encode()
            for name, lines in LOGS}
    t = time.monotonic()
    for serial in range(size):
        b = BUILDERS[serial % len(BUILDERS)]
        n = serial // len(BUILDERS) + 1
        d = st.build_dir(b, n)
        os.makedirs(d)
        for i, (name, _lines) in enumerate(LOGS, 1):
            with open(st.log_path(b, n, i, name), "wb") as f:
                f.write(text[name])
        with open(st.build_path(b, n), "wb") as f:
            f.write(records.encode("build", _record(b, n, serial)))
    for b in BUILDERS:
        st.write_counter(b, size // len(BUILDERS) + 1)
    with open(os.path.join(top, "complete"), "w") as f:
        f.write("%d builds in %.1fs\n" % (size, time.monotonic() - t))
    return dirs


def timed(dirs, **kw):
    out = {"wall_s": [], "cpu_s": []}
    for i in range(RUNS + 1):
        w, c = time.perf_counter(), time.process_time()
        findings = fsck.run(dirs, **kw)
        w, c = time.perf_counter() - w, time.process_time() - c
        if i:
            out["wall_s"].append(w)
            out["cpu_s"].append(c)
    return {"wall_s": statistics.median(out["wall_s"]), "cpu_s": statistics.median(out["cpu_s"]),
            "findings": len(findings)}


def main():
    quick = os.environ.get("QUICK") == "1"
    cache = os.environ.get("BENCH_CACHE") or "/var/tmp/buildunits-bench"
    os.makedirs(cache, exist_ok=True)
    has_deep = "deep" in inspect.signature(fsck.run).parameters
    out = {}
    print("%-8s | %-24s | %s" % ("builds", "figure", "value"))
    for size in (QUICK_SIZES if quick else SIZES):
        dirs = history(size, cache)
        modes = {"default": {}}
        if has_deep:
            modes["--deep"] = {"deep": True}
        out[size] = {}
        for mode, kw in modes.items():
            r = out[size][mode] = timed(dirs, **kw)
            print("%-8d | %-24s | %.2f" % (size, "fsck %s wall s" % mode, r["wall_s"]))
            print("%-8d | %-24s | %.2f" % (size, "fsck %s CPU s" % mode, r["cpu_s"]))
            print("%-8d | %-24s | %d" % (size, "fsck %s findings" % mode, r["findings"]))
    write_json(os.path.join(ROOT, "build", "bench", "scale_fsck.json"),
               {"quick": quick, "deep_mode": has_deep, "sizes": {str(k): v for k, v in out.items()}})


if __name__ == "__main__":
    main()
