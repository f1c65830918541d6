#!/usr/bin/python3
"""scale_site: what the static site costs as builders, history and a site
on another filesystem grow.

    /usr/bin/python3 bench/scale_site.py        (QUICK=1: the smaller sizes)

Figures (CPU of this process, time.process_time, unless said; printed,
never judged):

  builders 10 / 100 / 1000 (QUICK: 10 / 100), one repository, three
  finished builds each:
    - one finished build: Site.update() after one more build of one builder
      (after gc.freeze(), as htmlgen does after a full pass), and the KB
      of the files it wrote (pages, JSON, INDEX; a log's link is none):
      past 50 builders the pages of the builder's section (sitegroups),
      not of every builder;
    - a pass with nothing new: Site.update([]), and the files it wrote;
    - all head pages: Site.rebuild() on a site it knows (every head page).
  history 10k / 100k (QUICK: 10k) builds of four builders (site_bench's
  cached histories):
    - full render: Site.rebuild(force=True), wall time, with its worker
      processes (one per CPU, sitefill.Pool), and the CPU time of all of
      them (and its user and system parts: the kernel's share is the
      files made); at 10k also in one process (workers=1), as before them;
    - time to READY=1: an HTMLGen on a site without INDEX, startup() and
      its first work(), what runs before the daemon says READY=1 (the
      head pages); then until its background fill is done and the pass
      after it took up from its INDEX.
  site on another filesystem (a tmpfs mounted here: needs root, else
  skipped): a running step's log grows to 100 MB by 1 MB appends (lines
  of 1 MB, so that its log page, cut at 64 KB a line, stays small), a pass
  (update and follow_logs) after each; the bytes this process wrote
  (/proc/self/io wchar, less the log itself) over the log's size.

PARTS=builders,history,copy picks the parts; BUILDERS=10,100,1000 the
numbers of builders; HISTORIES=10000,100000 the history sizes; FULL=0 skips the full renders and FILL=0 the wait for the
fill (a 100k history takes minutes each).  Workloads live in BENCH_CACHE (default /var/tmp/buildunits-bench); JSON
goes to build/bench/scale_site.json.
"""

import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import site_bench  # noqa: E402
from gi.repository import GLib  # noqa: E402

from buildunits import config, htmlgen, paths, site, sitefill  # noqa: E402
from buildunits.bus import NoBus  # noqa: E402
from buildunits.spool import Spool  # noqa: E402
from buildunits.state import State  # noqa: E402
from support.inprocess import RecordingNotifier  # noqa: E402

QUICK = os.environ.get("QUICK", "") not in ("", "0")
BUILDERS = (10, 100) if QUICK else (10, 100, 1000)
if os.environ.get("BUILDERS"):
    BUILDERS = tuple(int(x) for x in os.environ["BUILDERS"].split(","))
HISTORIES = (10_000,) if QUICK else (10_000, 100_000)
if os.environ.get("HISTORIES"):
    HISTORIES = tuple(int(x) for x in os.environ["HISTORIES"].split(","))
ONE_PROCESS_MAX = 10_000             # the one-process full render is measured up to this size
FULL = os.environ.get("FULL", "1") != "0"   # FULL=0: no full renders, the time to READY=1 only
FILL = os.environ.get("FILL", "1") != "0"   # FILL=0: not waiting for the background fill
PER_BUILDER = 3
RUNS = 7
LOG_MB = 100
PARTS = (os.environ.get("PARTS") or "builders,history,copy").split(",")
CACHE = os.environ.get("BENCH_CACHE") or site_bench.default_cache()
T0 = site_bench.T0


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def write_config(d, names):
    os.makedirs(os.path.join(d, "builders"), exist_ok=True)
    with open(os.path.join(d, "buildunits.conf"), "w") as f:
        f.write("[Site]\nTitle=scale benchmark\n")
    for b in names:
        with open(os.path.join(d, "builders", b + ".builder"), "w") as f:
            f.write("[Builder]\nRepository=/srv/git/one.git\n\n[Step compile]\nCommand=make\n")
    return config.load(d)


def builders_state(count):
    """A cached state of COUNT builders with PER_BUILDER builds each."""
    d = os.path.join(CACHE, "scale-site-builders-v1-%d" % count)
    if not os.path.exists(os.path.join(d, "complete")):
        shutil.rmtree(d, ignore_errors=True)
        st = State(os.path.join(d, "state"))
        st.ensure()
        say("writing %d builders x %d builds into %s" % (count, PER_BUILDER, d))
        serial = 0
        for k in range(PER_BUILDER):
            for i in range(count):
                site_bench.write_build(st, "b%04d" % i, T0 + 60 * serial, serial)
                serial += 1
        open(os.path.join(d, "complete"), "w").close()
    return os.path.join(d, "state")


def cpu(fn):
    t = time.process_time()
    out = fn()
    return (time.process_time() - t) * 1000, out


def measure_builders(count, work):
    src = builders_state(count)
    state_dir = os.path.join(work, "state-%d" % count)
    subprocess.run(["cp", "-al", src, state_dir], check=True)
    names = ["b%04d" % i for i in range(count)]
    st, sp = State(state_dir), Spool(os.path.join(work, "spool-%d" % count))
    sp.ensure()
    cfg = write_config(os.path.join(work, "config-%d" % count), names)
    s = site.Site(os.path.join(work, "site-%d" % count), st, sp, cfg)
    s.rebuild(force=True)
    s.update([])
    gc.collect()
    gc.freeze()   # as htmlgen does after a full pass
    one, one_kb, idle, idle_files, heads = [], [], [], [], []
    serial = count * PER_BUILDER
    wrote = []
    real_write = site.fsutil.write_atomic

    def counting(path, data, *a, **k):
        wrote.append(len(data))
        return real_write(path, data, *a, **k)
    for r in range(RUNS):
        name = names[(r * 7) % count]
        n = site_bench.write_build(st, name, T0 + 60 * serial, serial)
        serial += 1
        wrote.clear()
        site.fsutil.write_atomic = counting
        try:
            one.append(cpu(lambda: s.update([(name, n)]))[0])
        finally:
            site.fsutil.write_atomic = real_write
        one_kb.append(sum(wrote) / 1000)
        ms, files = cpu(lambda: s.update([]))
        idle.append(ms)
        idle_files.append(files)
        heads.append(cpu(lambda: s.rebuild())[0])
    return {"one finished build (ms CPU)": one, "one finished build: KB written": one_kb,
            "pass with nothing new (ms CPU)": idle,
            "files written by a pass with nothing new": idle_files, "all head pages (ms CPU)": heads}


def measure_history(size, work):
    src = site_bench.history(size, CACHE, say)
    d = paths.Dirs(config=os.path.join(work, "hconfig-%d" % size), spool=os.path.join(work, "hspool-%d" % size),
                   state=os.path.join(work, "hstate-%d" % size), site=os.path.join(work, "hsite-%d" % size))
    subprocess.run(["cp", "-al", src, d.state], check=True)
    cfg = site_bench.load_config(d.config)
    st, sp = State(d.state), Spool(d.spool)
    sp.ensure()
    out = {}
    if not FULL:
        pass
    elif size <= ONE_PROCESS_MAX:
        t = time.perf_counter()
        site.Site(d.site, st, sp, cfg, workers=1).rebuild(force=True)
        out["full render, one process (s wall)"] = [time.perf_counter() - t]
        say("  %d builds: full render in one process %.1fs" % (size, out["full render, one process (s wall)"][0]))
        shutil.rmtree(d.site)
    if FULL:
        t, c, t0 = time.perf_counter(), _cpu_all(), os.times()
        site.Site(d.site, st, sp, cfg).rebuild(force=True)
        full, t1 = time.perf_counter() - t, os.times()
        out["full render (s wall)"] = [full]
        out["full render, CPU of every process (s)"] = [_cpu_all() - c]
        out["full render, user CPU of every process (s)"] = [t1.user - t0.user + t1.children_user - t0.children_user]
        out["full render, system CPU of every process (s)"] = [
            t1.system - t0.system + t1.children_system - t0.children_system]
        out["full render: workers"] = [min(site.MAX_WORKERS, sitefill.cpus())]
        say("  %d builds: full render %.1fs" % (size, full))
        shutil.rmtree(d.site)
    h = htmlgen.HTMLGen(d, cfg, NoBus(), RecordingNotifier(), None)
    t = time.perf_counter()
    h.startup()
    h.work()
    ready = time.perf_counter() - t
    out["time to READY=1 (s wall)"] = [ready]
    say("  %d builds: READY=1 after %.2fs" % (size, ready))
    if FILL:
        ctx = GLib.MainContext.default()
        while h.filling():
            ctx.iteration(True)
        h.work()     # the pass that takes up from the fill's INDEX
        fill = time.perf_counter() - t
        say("  %d builds: filled after %.1fs" % (size, fill))
        out["READY=1 then background fill done (s wall)"] = [fill]
    else:
        h.shutdown()
    shutil.rmtree(d.site)
    shutil.rmtree(d.state)
    return out


def _cpu_all():
    """CPU seconds of this process and of its children waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure_copy(work):
    if os.geteuid() != 0:
        say("site on another filesystem: skipped (mounting a tmpfs needs root)")
        return {}
    from buildunits import buildrecord, step as stepmod
    d = os.path.join(work, "copy")
    mnt = os.path.join(d, "site")
    os.makedirs(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm" % (4 * LOG_MB), "tmpfs", mnt], check=True)
    try:
        cfg = write_config(os.path.join(d, "config"), ["hello"])
        st, sp = State(os.path.join(d, "state")), Spool(os.path.join(d, "spool"))
        st.ensure()
        sp.ensure()
        req = {"id": "R1", "builder": "hello", "branch": "main", "revision": "c" * 40, "repository": "",
               "reason": "bench"}
        n = st.allocate_number("hello")
        rec = buildrecord.new_record(req, "hello", n, "w1", stepmod.plan(cfg.builders["hello"], req), time.time())
        s0 = rec["steps"][0]
        s0["log"] = st.log_name(1, s0["name"])
        fd = st.create_log("hello", n, s0["log"])
        s0.update(state="running", started=time.time())
        st.write_build(rec)
        s = site.Site(mnt, st, sp, cfg)
        s.rebuild()
        chunk = b"x" * (1024 * 1024 - 1) + b"\n"   # a line a MB: the log page stays small
        before = _wchar()
        t = time.perf_counter()
        for i in range(LOG_MB):
            os.write(fd, chunk)
            s.update([])
            s.follow_logs()
        os.close(fd)
        wrote = _wchar() - before - LOG_MB * 1024 * 1024   # less the log itself, written here
        secs = time.perf_counter() - t
        return {"bytes written / log size while running": [wrote / (LOG_MB * 1024 * 1024)],
                "MB written while the log grew to 100 MB": [wrote / 1e6], "wall (s)": [secs]}
    finally:
        subprocess.run(["umount", mnt], check=False)


def _wchar():
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def main():
    os.makedirs(CACHE, exist_ok=True)
    work = tempfile.mkdtemp(prefix="scale-site-", dir=CACHE)
    rows = []
    try:
        for count in BUILDERS if "builders" in PARTS else ():
            for fig, v in measure_builders(count, work).items():
                rows.append(("builders %d" % count, fig, v))
        for size in HISTORIES if "history" in PARTS else ():
            for fig, v in measure_history(size, work).items():
                rows.append(("history %dk" % (size // 1000), fig, v))
        for fig, v in (measure_copy(work) if "copy" in PARTS else {}).items():
            rows.append(("log %d MB" % LOG_MB, fig, v))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = []
    print("%-14s | %-45s | %s" % ("size", "figure", "value (median)"))
    for size, fig, v in rows:
        val = statistics.median(v) if v else None
        out.append({"size": size, "figure": fig, "value": val, "runs": v})
        print("%-14s | %-45s | %s" % (size, fig, "n/a" if val is None else "%.2f" % val))
    import json
    os.makedirs(os.path.join(ROOT, "build", "bench"), exist_ok=True)
    with open(os.path.join(ROOT, "build", "bench", "scale_site.json"), "w") as f:
        json.dump({"quick": QUICK, "rows": out}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
