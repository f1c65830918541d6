#!/usr/bin/python3
"""scale_queue: what the depth of the runners' queue costs.

    /usr/bin/python3 bench/scale_queue.py        (QUICK=1: depths 100 and 1k)

At queue depths 100, 1k and 10k, with the code of this checkout:

- claim: the time of one claim (Runner.work() taking the oldest request
  of a queue of N for a builder it runs), in process, the build's start
  replaced by dropping the claim: the mean of the first 200 claims, as a
  runner that has been running takes them (its first pass, which lists
  the queue, timed apart), in wall time (with the claim's and the
  finish's fsyncs) and in CPU time;
- drain: N requests of a no-op builder (one step, `true`) queued, then
  one real buildunits-runner started with a private bus (bench/
  buildunits_bench.py's Setup): the seconds from its READY=1 to the
  BuildFinished of the last, and builds per second;
- excluded: a real runner whose Workers= excludes a backlog of N
  requests: its CPU per new request queued for a builder it does not run
  (20 requests, one a second, woken by inotify; its idle CPU over the
  same time subtracted);
- htmlgen: the time of one Site.update() with N requests queued (a pass
  with nothing new, as after a signal), median of 7, in process; "as the
  daemon" has the queue index fed by events as buildunits-htmlgen's is
  (Source.fed, where the code has it), "listing" lists the queue at each
  pass (--rebuild, or a code without the index).

The workload is built in $BENCH_CACHE (default /var/tmp/buildunits-bench)
under scale-queue/, removed afterwards.  Prints one table (size | figure |
value) and writes build/bench/scale_queue.json; never passes or fails.
"""

import io
import os
import shutil
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import common  # noqa: E402  (puts tests/, for support, and lib/ on sys.path)
import buildunits_bench as bub  # noqa: E402
from buildunits import config, log, paths, runner  # noqa: E402
from buildunits.bus import NoBus  # noqa: E402
from buildunits.spool import Spool  # noqa: E402
from support.inprocess import RecordingNotifier  # noqa: E402

QUICK = common.QUICK
CACHE = common.CACHE
SIZES = (100, 1000) if QUICK else (100, 1000, 10000)
CLAIMS = 200
NEW_REQUESTS = 20
NOOP = "[Builder]\nDescription=one no-op step\nWorkers=*\n\n[Step s]\nCommand=true\n"
OTHER = "[Builder]\nDescription=for another worker\nWorkers=w9\n\n[Step s]\nCommand=true\n"


def queue(spool, builder, n):
    """N requests for BUILDER, committed as the scheduler commits them."""
    for i in range(n):
        spool.deliver("requests", "request", {"builder": builder, "branch": "main", "revision": "",
                                              "repository": "", "reason": "bench %d" % i, "changes": [],
                                              "properties": {}})


def dirs_under(root):
    d = paths.Dirs(config=os.path.join(root, "config"), spool=os.path.join(root, "spool"),
                   state=os.path.join(root, "state"), site=os.path.join(root, "site"))
    os.makedirs(os.path.join(d.config, "builders"), exist_ok=True)
    for name, text in (("noop", NOOP), ("other", OTHER)):
        with open(os.path.join(d.config, "builders", name + ".builder"), "w") as f:
            f.write(text)
    Spool(d.spool).ensure()
    return d


# ------------------------------------------------------------ in process
class Claims(runner.Runner):
    def _start(self, rid, req, b, extra=()):
        self.claimed += 1
        for one in [rid] + list(extra):
            self.spool.finish(self.worker, one)
        self._release_locks()


def claim_times(root, n):
    d = dirs_under(root)
    r = Claims(d, config.load(d.config), NoBus(), RecordingNotifier(), types.SimpleNamespace(worker="w1"))
    r.state.ensure()
    queue(r.spool, "noop", n)
    r.claimed = 0
    r.events = True              # as under the daemon: a watcher keeps what it knows
    r.startup()
    t = time.perf_counter()
    r.work()
    first = time.perf_counter() - t
    k = min(CLAIMS, n - 1)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(k):
        r.work()
    each, cpu = (time.perf_counter() - t) / k, (time.process_time() - c) / k
    assert r.claimed == k + 1, r.claimed
    return first, each, cpu


def htmlgen_pass(root, n):
    from buildunits.site import Site
    from buildunits.state import State
    d = dirs_under(root)
    sp, st = Spool(d.spool), State(d.state)
    st.ensure()
    queue(sp, "noop", n)
    out = {}
    for label, fed in (("as the daemon", True), ("listing", False)):
        s = Site(d.site, st, sp, config.load(d.config))
        s.source.fed = fed
        s.rebuild()
        s.update([])
        times = []
        for _ in range(7):
            t = time.perf_counter()
            s.update([])
            times.append(time.perf_counter() - t)
        out[label] = common.median(times)
    return out


# ------------------------------------------------------------ real daemons
def drain(root, bindir, n):
    s = bub.Setup(root, "drain", bindir, {"noop": NOOP, "other": OTHER})
    try:
        queue(s.spool, "noop", n)
        mark = s.clock.mark()
        s.start(("runner@w1",))
        t0 = s.procs["runner@w1"]["notify"].arrival("READY=1")
        got, timed_out = s.clock.wait_count(bub.is_finished("noop"), n, timeout=max(120, n * 0.2), start=mark)
        took = got[-1][0] - t0 if got else None
        return {"seconds": took, "builds": len(got), "timed_out": timed_out,
                "cpu_s": s.procs["runner@w1"]["cpu"].seconds()}
    finally:
        s.close()


def excluded(root, bindir, n):
    s = bub.Setup(root, "excluded", bindir, {"noop": NOOP, "other": OTHER})
    try:
        queue(s.spool, "other", n)
        s.start(("runner@w1",))
        cpu = s.procs["runner@w1"]["cpu"]
        time.sleep(1)                 # past the start's first pass
        c0 = cpu.seconds()
        time.sleep(NEW_REQUESTS)
        idle = cpu.seconds() - c0
        c0 = cpu.seconds()
        for _ in range(NEW_REQUESTS):
            queue(s.spool, "other", 1)
            time.sleep(1)
        busy = cpu.seconds() - c0
        return {"cpu_ms_per_request": max(0.0, busy - idle) / NEW_REQUESTS * 1000, "idle_cpu_s": idle,
                "cpu_kind": s.cpu_kind()}
    finally:
        s.close()


def main():
    log._journal, log._stream = None, io.StringIO()       # the in-process runners' journal lines
    base = os.path.join(CACHE, "scale-queue")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    bindir = bub.install_snapshot(os.path.join(base, "install"))
    rows, detail = [], {}
    try:
        for n in SIZES:
            first, each, cpu = claim_times(os.path.join(base, "claim-%d" % n), n)
            rows += [(n, "claim (ms, mean of %d; its fsyncs included)" % min(CLAIMS, n - 1), each * 1000),
                     (n, "claim, CPU (ms)", cpu * 1000),
                     (n, "first pass of a runner (lists the queue, ms)", first * 1000)]
            h = htmlgen_pass(os.path.join(base, "site-%d" % n), n)
            rows += [(n, "htmlgen pass, as the daemon (ms)", h["as the daemon"] * 1000),
                     (n, "htmlgen pass, listing the queue (ms)", h["listing"] * 1000)]
            dr = drain(os.path.join(base, "drain-%d" % n), bindir, n)
            rows += [(n, "drain, one runner (s)", dr["seconds"]),
                     (n, "builds/s", dr["builds"] / dr["seconds"] if dr["seconds"] else None),
                     (n, "runner CPU per build (ms)", dr["cpu_s"] / max(1, dr["builds"]) * 1000)]
            ex = excluded(os.path.join(base, "excluded-%d" % n), bindir, n)
            rows.append((n, "excluded runner: CPU per new request (ms)", ex["cpu_ms_per_request"]))
            detail[n] = {"drain": dr, "excluded": ex, "htmlgen": h, "claim": {"first": first, "each": each, "cpu": cpu}}
            shutil.rmtree(os.path.join(base, "drain-%d" % n), ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    width = max(len(r[1]) for r in rows)
    print("%6s | %-*s | %s" % ("size", width, "figure", "value"))
    for n, name, v in rows:
        print("%6d | %-*s | %s" % (n, width, name, common.fmt(v)))
    common.write_json(os.path.join(REPO_ROOT, "build", "bench", "scale_queue.json"),
                      {"quick": QUICK, "rows": [{"size": n, "figure": f, "value": v} for n, f, v in rows],
                       "detail": detail, "machine": common.machine(CACHE)})


if __name__ == "__main__":
    main()
