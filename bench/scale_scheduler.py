#!/usr/bin/python3
"""scale_scheduler: what one change costs the scheduler with many builders.

    /usr/bin/python3 bench/scale_scheduler.py      (QUICK=1: fewer runs)

One repository, B builders on it (10 / 100 / 1000), TreeStableSec=0: one
change becomes B build requests.  The real Scheduler runs in-process over
a temporary spool and state (under $BENCH_CACHE, default
/var/tmp/buildunits-bench: a disk, so an fsync costs what it costs), with
a bus that counts the signals it is asked to send.  Each run queues one
change (not timed) and times one pass, Scheduler.work(): wall and CPU
(time.process_time) in ms, the fsyncs it made (os.fsync wrapped
in-process), the files it renamed into place, and the signals.

Then the start: Q requests queued (100 / 1000 / 10000, for 10 builders,
delivered as the scheduler delivers them, then its memory folded as a
running scheduler does every consumed.FOLD_LINES lines), and a new
Scheduler's startup() timed (wall, CPU) with the request files it opened
(records.read wrapped in-process).  Last, one change to those 10
builders with Q requests waiting: the pass's wall and CPU and the
request files it opened (the queue is not read: the figures stay flat).
STARTUP=only: the start alone.

Prints one table (size | figure | value, the median over the runs) and
writes build/bench/scale_scheduler.json.  Never fails on the figures.
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

import common  # noqa: E402
from common import write_json  # noqa: E402
from buildunits import config, paths, records, scheduler  # noqa: E402

SIZES = (10, 100, 1000)
QUEUED = (100, 1000, 10000)
START_BUILDERS = 10
RUNS, QUICK_RUNS = 7, 3
REPO = "/srv/git/hello.git"


class CountingBus:
    """The bus's interface, counting what is emitted."""

    available = False
    unique_name = None

    def __init__(self):
        self.signals = 0

    def publish(self, *a, **kw):
        return None

    def emit(self, signal, *args):
        self.signals += 1

    def subscribe(self, *a):
        pass

    def close(self):
        pass


class NullNotifier:
    def status(self, *a, **kw):
        pass

    def __getattr__(self, name):
        return lambda *a, **kw: None


class Counters:
    """os.fsync and os.rename wrapped in-process, counting calls."""

    def __init__(self):
        self.fsyncs = self.renames = 0
        self._fsync, self._rename = os.fsync, os.rename

    def __enter__(self):
        def fsync(fd):
            self.fsyncs += 1
            return self._fsync(fd)

        def rename(a, b, **kw):
            self.renames += 1
            return self._rename(a, b, **kw)

        os.fsync, os.rename = fsync, rename
        return self

    def __exit__(self, *exc):
        os.fsync, os.rename = self._fsync, self._rename


def make_scheduler(root, n):
    d = paths.Dirs(config=os.path.join(root, "config"), spool=os.path.join(root, "spool"),
                   state=os.path.join(root, "state"), site=os.path.join(root, "site"))
    os.makedirs(os.path.join(d.config, "builders"))
    for i in range(n):
        with open(os.path.join(d.config, "builders", "b%04d.builder" % i), "w") as f:
            f.write("[Builder]\nRepository=%s\nBranches=*\nTreeStableSec=0\n[Step s]\nCommand=true\n" % REPO)
    s = scheduler.Scheduler(d, config.load(d.config), CountingBus(), NullNotifier())
    s.spool.ensure()
    s.state.ensure()
    s.startup()
    return s


def one_change(s, i):
    fields = {"source": "poller", "repository": REPO, "branch": "main", "revision": "%040x" % (i + 1),
              "author": "Ann <ann@example.org>", "when": 1.0, "message": "change %d" % i, "files": ["a.c"]}
    s.spool.deliver("changes", "change", fields)


def measure(n, runs, cache):
    root = tempfile.mkdtemp(prefix="scale-scheduler-%d-" % n, dir=cache)
    try:
        s = make_scheduler(root, n)
        rows = {"wall_ms": [], "cpu_ms": [], "fsyncs": [], "renames": [], "signals": []}
        for i in range(runs + 1):           # the first pass warms the memories up: not counted
            one_change(s, i)
            before = s.bus.signals
            with Counters() as c:
                w, p = time.perf_counter(), time.process_time()
                s.work()
                w, p = time.perf_counter() - w, time.process_time() - p
            assert len(s.spool.pending("requests")) == n * (i + 1), "the pass did not request every builder"
            if i == 0:
                continue
            rows["wall_ms"].append(w * 1000)
            rows["cpu_ms"].append(p * 1000)
            rows["fsyncs"].append(c.fsyncs)
            rows["renames"].append(c.renames)
            rows["signals"].append(s.bus.signals - before)
        return {k: statistics.median(v) for k, v in rows.items()} | {"runs": runs}
    finally:
        shutil.rmtree(root, ignore_errors=True)


class CountingReads:
    """records.read wrapped in-process: the request records it opens."""

    def __init__(self, spool_root):
        self.requests = 0
        self._read = records.read
        self._where = os.path.join(spool_root, "requests") + os.sep

    def __enter__(self):
        def read(path, *a, **kw):
            if str(path).startswith(self._where):
                self.requests += 1
            return self._read(path, *a, **kw)
        records.read = read
        return self

    def __exit__(self, *exc):
        records.read = self._read


def queue_requests(s, q):
    """Q requests for the builders of S, delivered as the scheduler
    delivers them, their changes in its memory, the memory folded as a
    running scheduler does every FOLD_LINES lines."""
    names = sorted(s.cfg.builders)
    batch = []
    for i in range(q):
        b = names[i % len(names)]
        cid = "%019d.1.%d.abcdef" % (time.time_ns(), i)
        batch.append({"builder": b, "repository": REPO, "branch": "main", "revision": "%040x" % (i + 1),
                      "changes": [{"id": cid, "revision": "%040x" % (i + 1), "branch": "main",
                                   "repository": REPO, "when": 1.0, "queued": 1.0, "source": "poller"}],
                      "reason": "bench", "properties": {}})
        s.memory(b).add([cid], [("main", "%040x" % (i + 1))])
        s._unfolded.add(b)
    for i in range(0, q, 500):
        s.spool.deliver_many("requests", "request", batch[i:i + 500])
    s._fold()


def measure_start(q, runs, cache):
    root = tempfile.mkdtemp(prefix="scale-scheduler-start-%d-" % q, dir=cache)
    try:
        s = make_scheduler(root, START_BUILDERS)
        queue_requests(s, q)
        rows = {"wall_ms": [], "cpu_ms": [], "requests_read": []}
        for _ in range(runs):
            again = scheduler.Scheduler(s.dirs, s.cfg, CountingBus(), NullNotifier())
            with CountingReads(s.dirs.spool) as c:
                w, p = time.perf_counter(), time.process_time()
                again.startup()
                w, p = time.perf_counter() - w, time.process_time() - p
            rows["wall_ms"].append(w * 1000)
            rows["cpu_ms"].append(p * 1000)
            rows["requests_read"].append(c.requests)
        assert len(s.spool.pending("requests")) == q
        return {k: statistics.median(v) for k, v in rows.items()} | {"runs": runs}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_queued(q, runs, cache):
    """One change to START_BUILDERS builders with Q requests waiting: the
    pass that turns it into requests (wall, CPU, request files read)."""
    root = tempfile.mkdtemp(prefix="scale-scheduler-queued-%d-" % q, dir=cache)
    try:
        s = make_scheduler(root, START_BUILDERS)
        queue_requests(s, q)
        rows = {"wall_ms": [], "cpu_ms": [], "requests_read": []}
        for i in range(runs + 1):           # the first pass warms the memories up: not counted
            one_change(s, 10 ** 7 + i)
            with CountingReads(s.dirs.spool) as c:
                w, p = time.perf_counter(), time.process_time()
                s.work()
                w, p = time.perf_counter() - w, time.process_time() - p
            assert len(s.spool.pending("requests")) == q + START_BUILDERS * (i + 1), "a builder not requested"
            if i:
                rows["wall_ms"].append(w * 1000)
                rows["cpu_ms"].append(p * 1000)
                rows["requests_read"].append(c.requests)
        return {k: statistics.median(v) for k, v in rows.items()} | {"runs": runs}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main():
    quick, cache = common.QUICK, common.CACHE
    os.makedirs(cache, exist_ok=True)
    out, start = {}, {}
    only = os.environ.get("STARTUP") == "only"
    print("%-9s | %-26s | %s" % ("builders", "figure (one change)", "value"))
    for n in () if only else SIZES:
        r = out[n] = measure(n, QUICK_RUNS if quick else RUNS, cache)
        for k, label in (("wall_ms", "wall ms"), ("cpu_ms", "CPU ms"), ("fsyncs", "fsyncs"),
                         ("renames", "renames"), ("signals", "signals")):
            print("%-9d | %-26s | %.1f" % (n, label, r[k]))
    print("%-9s | %-26s | %s" % ("queued", "figure (startup)", "value"))
    for q in QUEUED:
        r = start[q] = measure_start(q, QUICK_RUNS if quick else RUNS, cache)
        for k, label in (("wall_ms", "wall ms"), ("cpu_ms", "CPU ms"), ("requests_read", "request files read")):
            print("%-9d | %-26s | %.1f" % (q, label, r[k]))
    queued = {}
    print("%-9s | %-26s | %s" % ("queued", "figure (one change, %d b.)" % START_BUILDERS, "value"))
    for q in () if only else QUEUED:
        r = queued[q] = measure_queued(q, QUICK_RUNS if quick else RUNS, cache)
        for k, label in (("wall_ms", "wall ms"), ("cpu_ms", "CPU ms"), ("requests_read", "request files read")):
            print("%-9d | %-26s | %.1f" % (q, label, r[k]))
    write_json(os.path.join(ROOT, "build", "bench", "scale_scheduler.json"),
               {"quick": quick, "sizes": {str(k): v for k, v in out.items()},
                "startup": {str(k): v for k, v in start.items()},
                "one change with requests queued": {str(k): v for k, v in queued.items()}})


if __name__ == "__main__":
    main()
