#!/usr/bin/python3
"""site_bench: how long the static site takes to follow one more build.

    /usr/bin/python3 bench/site_bench.py [--quick] [--cache DIR]

The site's figures, printed next to their targets and never judged (the
exit status is 0 whatever the times):

  - the time Site.update() takes to render one more finished build (its
    build and log pages, and the waterfall) with 1k, 10k and 100k builds
    of history, median, min and max over repeats; target: within 30 ms
    at any history length;
  - the 100k figure over the 1k one; target: no more than 1.2x;
  - a full rebuild (Site.rebuild(force=True), what `buildunits-htmlgen
    --rebuild` does) of 100k builds, and of the smaller histories.

--quick (or QUICK=1 in the environment) measures 1k and 10k only, in
about a minute; the ratio is then 10k over 1k.

The history is written with the project's own writers, as a runner writes
it: State.allocate_number() and State.write_build() (durable: fsync'd),
logs at State.log_path().  Four builders take turns, a build every minute,
three steps each with a log, one change per build, a failure now and then.
Writing 100k durable records takes minutes, so each history is kept in the
bench cache, $BUILDUNITS_BENCH_CACHE or /var/tmp/buildunits-bench, under
site-history-vHISTORY_FORMAT-SIZE/ (bump HISTORY_FORMAT when the shape of
the history changes; delete the directories to get the space back: about
2 GB for 100k).  A cached history is never written to: each run works on a
hard-linked copy of it (cp -al; nothing rewrites a file in place: records
are replaced by rename), which it removes afterwards.

A run's site is rebuilt from nothing, timed, then kept for the update
measurements, so updates run on a site in its steady state with the same
Site object, as in buildunits-htmlgen.  Each update follows one new
finished build written by State (not timed).

For bench/run.py: run(quick=False) returns the figures as dicts with
name, unit, value (the median), min, max, runs and target (text).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))

from buildunits import config, site  # noqa: E402
from buildunits.spool import Spool  # noqa: E402
from buildunits.state import State  # noqa: E402

HISTORY_FORMAT = 1          # bump when make_history() writes something else
BUILDERS = ("hello", "libfoo", "docs", "release")
T0 = 1600000000.0           # the first build of every history; builds one minute apart
SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)
UPDATE_RUNS, QUICK_UPDATE_RUNS = 31, 11
WARMUP = 2                  # updates not counted: the first ones after the rebuild
TARGET_UPDATE_MS = 30.0
TARGET_RATIO = 1.2


def default_cache():
    return os.environ.get("BUILDUNITS_BENCH_CACHE") or "/var/tmp/buildunits-bench"


# ---------------------------------------------------------------- history

def _log(lines, what):
    return "".join("%s line %d of %d: some output of a build tool\n" % (what, i, lines)
                   for i in range(1, lines + 1)).encode()


LOGS = (("checkout", _log(5, "checkout")), ("compile", _log(40, "cc")), ("test", _log(60, "test")))


def write_build(st, builder, started, serial):
    """One finished build of BUILDER, as a runner leaves it; its number."""
    n = st.allocate_number(builder)
    result = "failure" if serial % 13 == 0 else ("warnings" if serial % 29 == 0 else "success")
    steps, t = [], started
    for i, (name, text) in enumerate(LOGS, 1):
        with open(st.log_path(builder, n, i, name), "wb") as f:
            f.write(text)
        r = result if name == "test" else "success"
        steps.append({"name": name, "description": "", "command": "make %s" % name, "state": "finished",
                      "result": r, "started": t, "finished": t + 10, "log": st.log_name(i, name),
                      "exit_status": 0 if r == "success" else 2,
                      "summary": "" if r == "success" else "exit status 2", "timed_out": False})
        t += 10
    rev = "%040x" % (serial * 2654435761 % (1 << 160))
    change = {"format": "change", "version": 1, "id": "%019d.1.%d.bench0" % (int(started * 1e9), serial),
              "queued": started - 5, "source": "poller", "repository": "/srv/git/%s.git" % builder,
              "branch": "main", "revision": rev, "author": "Dev %d <dev%d@example.org>" % (serial % 7, serial % 7),
              "when": started - 30, "message": "change number %d\n\nwith a body of some length" % serial,
              "files": ["src/a%d.c" % (serial % 10), "Makefile"]}
    request = {"id": "%019d.1.%d.bench1" % (int(started * 1e9), serial), "queued": started - 2,
               "builder": builder, "repository": change["repository"], "branch": "main", "revision": rev,
               "reason": "1 change on main", "changes": [change], "force": None, "properties": {}}
    st.write_build({"builder": builder, "number": n, "request_id": request["id"], "request": request,
                    "worker": "worker%d" % (serial % 2 + 1), "state": "finished", "result": result,
                    "reason": "", "started": started, "finished": t, "repository": change["repository"],
                    "branch": "main", "revision": rev, "steps": steps})
    return n


def sweep(cache):
    """Remove what runs that were killed left: unfinished histories and
    work directories, named after their process, if it is gone."""
    try:
        names = os.listdir(cache)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(("site-history-", "site-run-")) and "-pid" in name:
            pid = name.rsplit("-pid", 1)[1].split("-")[0]
            if pid.isdigit() and not os.path.exists("/proc/%s" % pid):
                shutil.rmtree(os.path.join(cache, name), ignore_errors=True)


def history(size, cache, say):
    """The state directory of a SIZE-build history, made once and cached."""
    d = os.path.join(cache, "site-history-v%d-%d" % (HISTORY_FORMAT, size))
    if os.path.exists(os.path.join(d, "complete")):
        return os.path.join(d, "state")
    os.makedirs(cache, exist_ok=True)
    tmp = "%s.tmp-pid%d" % (d, os.getpid())   # renamed to D once complete
    st = State(os.path.join(tmp, "state"))
    st.ensure()
    say("writing a history of %d builds into %s (once; later runs reuse it)" % (size, d))
    start = time.monotonic()
    for i in range(size):
        write_build(st, BUILDERS[i % len(BUILDERS)], T0 + 60 * i, i)
        if (i + 1) % 10000 == 0:
            say("  %d/%d builds, %.0fs" % (i + 1, size, time.monotonic() - start))
    with open(os.path.join(tmp, "complete"), "w") as f:
        f.write("%d builds, format %d, written in %.1fs\n" % (size, HISTORY_FORMAT, time.monotonic() - start))
    os.rename(tmp, d)
    say("  written in %.1fs" % (time.monotonic() - start))
    return os.path.join(d, "state")


def load_config(d):
    """A configuration of BUILDERS, written as files and loaded as htmlgen does."""
    os.makedirs(os.path.join(d, "builders"))
    with open(os.path.join(d, "buildunits.conf"), "w") as f:
        f.write("[Site]\nTitle=site benchmark\n")
    for b in BUILDERS:
        with open(os.path.join(d, "builders", b + ".builder"), "w") as f:
            f.write("[Builder]\nRepository=/srv/git/%s.git\n\n[Step compile]\nCommand=make\n\n"
                    "[Step test]\nCommand=make test\n" % b)
    return config.load(d)


# ------------------------------------------------------------ measurement

def measure(size, cache, runs, rebuilds, say):
    """{"rebuild": [seconds], "update": [seconds]} for a SIZE-build history."""
    src = history(size, cache, say)
    work = tempfile.mkdtemp(prefix="site-run-pid%d-" % os.getpid(), dir=cache)
    try:
        state_dir = os.path.join(work, "state")
        subprocess.run(["cp", "-al", src, state_dir], check=True)
        st, sp = State(state_dir), Spool(os.path.join(work, "spool"))
        sp.ensure()
        cfg = load_config(os.path.join(work, "config"))
        rebuild_times = []
        for r in range(rebuilds):
            site_dir = os.path.join(work, "site")
            shutil.rmtree(site_dir, ignore_errors=True)
            s = site.Site(site_dir, st, sp, cfg)
            t = time.perf_counter()
            s.rebuild(force=True)
            rebuild_times.append(time.perf_counter() - t)
            say("  %d builds: full rebuild %.1fs" % (size, rebuild_times[-1]))
        # Steady state: the Site object of the last rebuild follows new builds.
        update_times = []
        started = T0 + 60 * size
        for i in range(WARMUP + runs):
            builder = BUILDERS[i % len(BUILDERS)]
            n = write_build(st, builder, started + 60 * i, size + i)
            t = time.perf_counter()
            s.update([(builder, n)])
            dt = time.perf_counter() - t
            if i >= WARMUP:
                update_times.append(dt)
        say("  %d builds: update median %.1f ms" % (size, statistics.median(update_times) * 1000))
        return {"rebuild": rebuild_times, "update": update_times}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _row(name, unit, values, target, scale=1.0):
    v = [x * scale for x in values]
    return {"name": name, "unit": unit, "value": statistics.median(v), "min": min(v), "max": max(v),
            "runs": len(v), "target": target}


def _size(n):
    return "%dk" % (n // 1000) if n % 1000 == 0 else str(n)


def run(quick=False, cache=None, say=None):
    """The figures (see the module docstring), as a list of dicts."""
    cache = cache or default_cache()
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    sweep(cache)
    sizes = QUICK_SIZES if quick else SIZES
    runs = QUICK_UPDATE_RUNS if quick else UPDATE_RUNS
    results = {}
    for n in sizes:
        results[n] = measure(n, cache, runs, rebuilds=3 if n <= 1_000 and not quick else 1, say=say)
    rows = []
    for n in sizes:
        rows.append(_row("site update after one more build, %s builds of history" % _size(n), "ms",
                         results[n]["update"], "<= %g ms" % TARGET_UPDATE_MS, scale=1000))
    small, big = sizes[0], sizes[-1]
    ratio = statistics.median(results[big]["update"]) / statistics.median(results[small]["update"])
    rows.append({"name": "update with %s of history / with %s" % (_size(big), _size(small)), "unit": "x",
                 "value": ratio, "min": ratio, "max": ratio, "runs": 1,
                 "target": "<= %gx%s" % (TARGET_RATIO, "" if big == 100_000 else " (the goal is for 100k / 1k)")})
    for n in sizes:
        rows.append(_row("full rebuild of the site, %s builds" % _size(n), "s", results[n]["rebuild"],
                         "none set (reported)"))
    return rows


def _meets(row):
    t = row["target"]
    if not t.startswith("<= "):
        return ""
    limit = float(t[3:].split()[0].rstrip("x").replace("ms", ""))
    return "yes" if row["value"] <= limit else "NO"


def print_table(rows, out=sys.stdout):
    head = ("figure", "median", "min", "max", "runs", "unit", "target", "met")
    table = [head] + [(r["name"], "%.2f" % r["value"], "%.2f" % r["min"], "%.2f" % r["max"], str(r["runs"]),
                       r["unit"], r["target"], _meets(r)) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for k, row in enumerate(table):
        out.write("  ".join(c.ljust(w) if i in (0, 5, 6, 7) else c.rjust(w)
                            for i, (c, w) in enumerate(zip(row, widths))).rstrip() + "\n")
        if k == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description="Measure how long the static site takes to follow a build.")
    p.add_argument("--quick", action="store_true", default=os.environ.get("QUICK", "") not in ("", "0"),
                   help="1k and 10k builds of history only (about a minute)")
    p.add_argument("--cache", default=None, help="where histories are kept (default %s)" % default_cache())
    args = p.parse_args(argv)
    start = time.monotonic()
    rows = run(quick=args.quick, cache=args.cache)
    print()
    print_table(rows)
    print("\n(%.0fs; times are measured, never judged: this exits 0 whatever they are)"
          % (time.monotonic() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
