#!/usr/bin/python3
"""scale_buildbot: Buildbot 4.3 on the scale axes it shares with buildunits.

    /usr/bin/python3 bench/scale_buildbot.py      (QUICK=1: the small sizes)

Real Buildbot masters and workers, installed, made and run as
bench/buildbot_bench.py does (its virtualenv under $BENCH_CACHE, default
/var/tmp/buildunits-bench; its templates, Setup, change sender and the
event service of its master.cfg, which sends a datagram per message of the
master's queue).  Each case is a master of its own, configured for it
(its master.cfg is buildbot_bench's, with the builders, schedulers and
change sources below); the master's CPU is that of its process and every
child (git), from bench/common.py's CpuGroup (a cgroup where the machine
lets the bench make one, else /proc/PID/stat).

- builders, 10 / 100 / 1000 (QUICK: 10 / 100): B builders of one no-op
  step, B SingleBranchSchedulers on the same project (no tree-stable
  timer), the builders' worker never started, so requests stay queued.
  One change handed in over PB (`buildbot sendchange`'s protocol, from a
  long-running sender) becomes B build requests; the wall time from the
  hand-in to the B-th request's message, from the change's message to it,
  and the master's CPU until then and until it is idle again (no CPU for
  a second).  The first change is a warm-up; then RUNS changes (median).
  Compare with bench/scale_scheduler.py, "the scheduler, one change".
- queue depth, 100 / 1k / 10k (QUICK: 100 / 1k): one builder of one no-op
  step (ShellCommand `true`), collapseRequests off, one worker.  While
  the worker is down, one change to a scheduler that adds 50 buildsets
  queues 50 requests (the rate is shown: about 4 a second here, so 10k
  would take 40 minutes); the master is stopped, and its database given
  N-50 more copies of the last buildset and its request, as the
  scheduler wrote them (sqlite3); the master is started again, then the
  worker, and from the worker's connection the builds finished are
  counted: builds/s, the master's and the worker's CPU per build.  Each
  drain is stopped after DRAIN_CAP seconds (300; QUICK: 60), and its rate
  is then over the builds done by then (the table says how many): 10k
  queued would take about an hour at Buildbot's rate here.  Compare with
  bench/scale_queue.py's drain.
- repositories, 1 / 50 / 500 (QUICK: 1 / 50), and 0 (the master alone):
  R GitPollers (pollAtLaunch, pollInterval INTERVAL, default 10 s) on
  local bare repositories that never change (bench/scale_poller.py's, made
  once under $BENCH_CACHE/scale-poller-v1).  After every repository's
  first poll and half an interval, the master's CPU over INTERVALS
  intervals (3; QUICK: 2), per interval and as a share of one CPU, and
  the polls done per interval (its log's "processing changes" lines, one
  per poll that reached the fetch), and how many repositories were polled
  at all.  A master of many pollers starts them one after another while
  those started poll (at 500 here: 179 started after 8 minutes): past
  POLL_START_CAP seconds (600; QUICK: 120) the window is measured as the
  master is, and the table says it had not finished starting.  Compare
  with bench/scale_poller.py.

BUILDERS=, DEPTHS= and REPOSITORIES= (comma-separated sizes, "none" for
no case of that axis) pick other sizes.  The full run takes 30 minutes or more (starting a master of 1000 builders
and queueing 10k requests take minutes each); QUICK a few minutes.  The
table has a "buildunits" column from build/bench/scale_scheduler.json,
scale_queue.json and scale_poller.json when those exist (`make
bench-scale` runs this bench after them).  Prints one table (size |
figure | Buildbot | buildunits) and writes build/bench/scale_buildbot.json
with every run's values, the load and the machine; never passes or fails
on a figure.
"""

import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import common  # noqa: E402
import buildbot_bench as bbb  # noqa: E402
import scale_poller  # noqa: E402  (its repositories, made once)

QUICK = common.QUICK
CACHE = common.CACHE


def _sizes(name, quick, full):
    """Sizes from $NAME (e.g. BUILDERS=10,100; "none"), else the defaults."""
    text = os.environ.get(name, "")
    if text.strip() == "none":
        return ()
    return tuple(int(x) for x in text.split(",") if x.strip()) if text else (quick if QUICK else full)


BUILDERS = _sizes("BUILDERS", (10, 100), (10, 100, 1000))
DEPTHS = _sizes("DEPTHS", (100, 1000), (100, 1000, 10000))
REPOSITORIES = _sizes("REPOSITORIES", (0, 1, 50), (0, 1, 50, 500))
RUNS = 2 if QUICK else 3
QUEUED_BY_BUILDBOT = 50
DRAIN_CAP = float(os.environ.get("DRAIN_CAP", "60" if QUICK else "300"))
POLL_START_CAP = float(os.environ.get("POLL_START_CAP", "120" if QUICK else "600"))
INTERVAL = float(os.environ.get("INTERVAL", "10"))
INTERVALS = int(os.environ.get("INTERVALS", "2" if QUICK else "3"))
START_TIMEOUT = 900

# buildbot_bench's master.cfg up to its own configuration: the imports and
# the event service.  What follows it here is this bench's configuration,
# from P (filled by Case).
PREAMBLE = bbb.MASTER_CFG[:bbb.MASTER_CFG.index("c = BuildmasterConfig")]
CONFIG = '''
c = BuildmasterConfig = {}
c["title"] = "scale"
c["buildbotURL"] = "http://127.0.0.1/"
c["buildbotNetUsageData"] = None
c["db"] = {"db_url": "sqlite:///state.sqlite"}
c["protocols"] = {"pb": {"port": "tcp:%d:interface=127.0.0.1" % P["port"]}}
c["workers"] = [worker.Worker("w1", "pass")]
c["change_source"] = [changes.PBChangeSource(user="change", passwd="changepw")]
c["change_source"] += [changes.GitPoller(r, branches=["main"], pollInterval=P["interval"],
                                         workdir="gitpoller-%d" % i, project="r%d" % i, pollAtLaunch=True)
                       for i, r in enumerate(P["repositories"])]


class Queue(schedulers.SingleBranchScheduler):
    """A change becomes P["queue"] buildsets (one request each)."""

    @defer.inlineCallbacks
    def addBuildsetForChanges(self, **kw):
        for _ in range(P["queue"]):
            yield super().addBuildsetForChanges(**kw)


f_noop = util.BuildFactory([steps.ShellCommand(name="noop", command=["true"])])
names = ["b%04d" % i for i in range(P["builders"])]
c["builders"] = [util.BuilderConfig(name=n, workernames=["w1"], factory=f_noop, collapseRequests=False)
                 for n in names]
if P["queue"]:
    c["schedulers"] = [Queue(name="queue", change_filter=util.ChangeFilter(project="queue"),
                             treeStableTimer=None, builderNames=names[:1])]
else:
    c["schedulers"] = [schedulers.SingleBranchScheduler(name=n, change_filter=util.ChangeFilter(project="fan"),
                                                        treeStableTimer=None, builderNames=[n])
                       for n in names]
c["services"] = [BenchEvents()]
'''


class Case(bbb.Setup):
    """A master configured for one case, its worker "w1" started only
    when asked (start_worker)."""

    def __init__(self, root, label, venv, templates, builders=1, queue=0, repositories=(), interval=10):
        bbb.Setup.__init__(self, root, label, venv, templates, workers=("w1",))
        params = {"port": self.port, "builders": builders, "queue": queue,
                  "repositories": list(repositories), "interval": interval}
        with open(os.path.join(self.master_dir, "master.cfg"), "w") as f:
            f.write(PREAMBLE % {"events": self.events.path} + "P = %r\n" % params + CONFIG)

    def start_master(self, timeout=START_TIMEOUT):
        """The master to "BuildMaster is running"; seconds it took."""
        t0 = self._twistd("master", self.master_dir)

        def up():
            if self.procs["master"]["proc"].poll() is not None:
                raise RuntimeError("the Buildbot master exited:\n%s" % self.master_log()[-3000:])
            return self._log_has(self.master_dir, "BuildMaster is running")
        common.wait_for(up, timeout=timeout, what="the Buildbot master to run", interval=0.1)
        return time.time() - t0

    def start_worker(self, timeout=120):
        """Start w1; the time of its "connected" message."""
        m = self.events.mark()
        self._twistd("w1", os.path.join(self.root, "w1"))
        t, _ = self.wait_event("workers.connected", m, timeout=timeout)
        return t

    def cpu(self, key="master"):
        return self.procs[key]["cpu"].seconds()

    def times(self, kind, what, start):
        """Arrival times of the messages "KIND.*.WHAT" from START."""
        out = []
        with self.events.cond:
            for t, text in self.events.events[start:]:
                parts = json.loads(text)["event"].split(".")
                if parts[0] == kind and parts[-1] == what:
                    out.append(t)
        return out

    def wait_count(self, kind, what, n, start, deadline):
        """The first N times of "KIND.*.WHAT" from START, or fewer if the
        monotonic DEADLINE came first."""
        while True:
            got = self.times(kind, what, start)
            if len(got) >= n or time.monotonic() >= deadline:
                return got[:n]
            if self.procs["master"]["proc"].poll() is not None:
                raise RuntimeError("the Buildbot master exited:\n%s" % self.master_log()[-3000:])
            with self.events.cond:
                self.events.cond.wait(min(0.5, max(0.01, deadline - time.monotonic())))

    def idle_cpu(self, quiet=1.0, timeout=120):
        """The master's CPU once it used none for QUIET seconds."""
        deadline = time.monotonic() + timeout
        last = self.cpu()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.cpu()
            if now - last < 0.005:
                return now
            last = now
        return last

    def polled_repositories(self, text):
        """How many repositories a line with TEXT names (GitPoller's
        "processing changes from "URL"")."""
        seen = set()
        for name in os.listdir(self.master_dir):
            if name.startswith("twistd.log"):
                with open(os.path.join(self.master_dir, name), errors="replace") as f:
                    seen.update(line.rsplit(" ", 1)[-1] for line in f if text in line)
        return len(seen)

    def log_count(self, text):
        """Occurrences of TEXT in the master's log and its rotated files."""
        n = 0
        for name in os.listdir(self.master_dir):
            if name.startswith("twistd.log"):
                with open(os.path.join(self.master_dir, name), errors="replace") as f:
                    n += f.read().count(text)
        return n


# ================================================================ the cases

def builders_case(venv, templates, root, b):
    s = Case(root, "fan%d" % b, venv, templates, builders=b)
    try:
        start = s.start_master()
        runs = []
        for i in range(RUNS + 1):          # the first is a warm-up
            s.idle_cpu()
            m, c0 = s.events.mark(), s.cpu()
            t0 = s.send("fan", "%040x" % (i + 1))
            got = s.wait_count("buildrequests", "new", b, m, time.monotonic() + 1800)
            c1 = s.cpu()
            c2 = s.idle_cpu()
            tc = s.times("changes", "new", m)
            if len(got) < b:
                raise RuntimeError("%d of %d build requests after 30 minutes" % (len(got), b))
            if i:
                runs.append({"wall_ms": (got[-1] - t0) * 1000,
                             "from_change_ms": (got[-1] - tc[0]) * 1000 if tc else None,
                             "cpu_ms": (c1 - c0) * 1000, "cpu_to_idle_ms": (c2 - c0) * 1000})
        out = {k: common.median([r[k] for r in runs if r[k] is not None]) for k in runs[0]}
        return out | {"runs": runs, "master_start_s": start, "cpu_kind": s.procs["master"]["cpu"].kind}
    finally:
        s.close()


def copy_requests(db, k):
    """K more copies, in SQLite, of the last buildset and its one build
    request (its source stamp shared, as a change's is), unclaimed."""
    import sqlite3
    c = sqlite3.connect(db)
    with c:
        cols = {t: [r[1] for r in c.execute("PRAGMA table_info(%s)" % t)]
                for t in ("buildsets", "buildrequests", "buildset_sourcestamps", "buildset_properties")}

        def row(table, where, arg):
            names = [n for n in cols[table] if n != "id"]
            return names, c.execute("SELECT %s FROM %s WHERE %s = ?" % (", ".join(names), table, where),
                                    (arg,)).fetchall()
        bsid = c.execute("SELECT max(id) FROM buildsets").fetchone()[0]
        bs_cols, (bs,) = row("buildsets", "id", bsid)
        br_cols, (br,) = row("buildrequests", "buildsetid", bsid)
        ss_cols, sss = row("buildset_sourcestamps", "buildsetid", bsid)
        pr_cols, props = row("buildset_properties", "buildsetid", bsid)

        def insert(table, names, values):
            return c.execute("INSERT INTO %s (%s) VALUES (%s)" % (table, ", ".join(names), ", ".join("?" * len(names))),
                             values).lastrowid
        for _ in range(k):
            new = insert("buildsets", bs_cols, bs)
            for table, names, rows in (("buildset_sourcestamps", ss_cols, sss), ("buildset_properties", pr_cols, props),
                                       ("buildrequests", br_cols, [br])):
                i = names.index("buildsetid")
                for r in rows:
                    insert(table, names, r[:i] + (new,) + r[i + 1:])
    n = c.execute("SELECT count(*) FROM buildrequests WHERE complete = 0 AND id NOT IN "
                  "(SELECT brid FROM buildrequest_claims)").fetchone()[0]
    c.close()
    return n


def queue_case(venv, templates, root, n):
    q0 = min(n, QUEUED_BY_BUILDBOT)
    s = Case(root, "queue%d" % n, venv, templates, builders=1, queue=q0)
    try:
        s.start_master()
        m = s.events.mark()
        t0 = s.send("queue", "%040x" % 1)
        got = s.wait_count("buildrequests", "new", q0, m, time.monotonic() + 1800)
        if len(got) < q0:
            raise RuntimeError("%d of %d build requests queued after 30 minutes" % (len(got), q0))
        queued_s = got[-1] - t0
        s.idle_cpu()
        s.stop()
        queued = copy_requests(os.path.join(s.master_dir, "state.sqlite"), n - q0)
        if queued != n:
            raise RuntimeError("%d requests unclaimed in the database, not %d" % (queued, n))
        s.start_master()
        c0 = s.idle_cpu()
        m = s.events.mark()
        t_conn = s.start_worker()
        w0 = s.cpu("w1")
        done = s.wait_count("builds", "finished", n, m, time.monotonic() + DRAIN_CAP)
        t_end = done[-1] if done else time.time()
        cpu_m, cpu_w = s.cpu() - c0, s.cpu("w1") - w0
        failed = sum(1 for _, e in s.events_since(m) if e["event"].endswith("finished")
                     and e["event"].startswith("builds.") and e.get("results") not in (0, None))
        k = len(done)
        return {"queued": n, "queued_by_buildbot": q0, "queueing_per_s": q0 / queued_s, "done": k,
                "capped": k < n, "cap_s": DRAIN_CAP, "seconds": t_end - t_conn,
                "builds_per_s": k / (t_end - t_conn) if k else 0.0,
                "master_cpu_ms_per_build": cpu_m / k * 1000 if k else None,
                "worker_cpu_ms_per_build": cpu_w / k * 1000 if k else None, "failed": failed,
                "cpu_kind": s.procs["master"]["cpu"].kind}
    finally:
        s.close()


def poller_case(venv, templates, root, r):
    repos = scale_poller.repositories(r)
    s = Case(root, "poll%d" % r, venv, templates, repositories=repos, interval=INTERVAL)
    polled = 'gitpoller: processing changes from'
    try:
        # A master of many pollers starts them one at a time while the
        # started ones poll: past POLL_START_CAP the window is measured
        # as it is, and the table says how far the start had come.
        deadline = time.monotonic() + POLL_START_CAP
        t0 = time.monotonic()
        try:
            s.start_master(timeout=POLL_START_CAP)
            running = True
        except common.Timeout:
            running = False
        if r:
            try:
                common.wait_for(lambda: s.log_count(polled) >= r and s.polled_repositories(polled) >= r,
                                timeout=max(1, deadline - time.monotonic()), what="every repository's first poll",
                                interval=0.5)
            except common.Timeout:
                pass
        started = time.monotonic() - t0
        time.sleep(INTERVAL * 1.5)      # past the first burst: the window starts half an interval after one
        p0, c0, t0 = s.log_count(polled), s.cpu(), time.monotonic()
        time.sleep(INTERVAL * INTERVALS)
        cpu, wall, polls = s.cpu() - c0, time.monotonic() - t0, s.log_count(polled) - p0
        return {"cpu_per_interval_s": cpu / (wall / INTERVAL), "cpu_pct": cpu / wall * 100,
                "polls_per_interval": polls / (wall / INTERVAL), "wall_s": wall,
                "master_running": running or s._log_has(s.master_dir, "BuildMaster is running"),
                "repositories_polled": s.polled_repositories(polled), "start_s": started,
                "start_cap_s": POLL_START_CAP, "cpu_kind": s.procs["master"]["cpu"].kind}
    finally:
        s.close()


# ============================================================ buildunits' side

def _json(name):
    path = os.path.join(ROOT, "build", "bench", name)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def buildunits_figures():
    """{(axis, size, figure): value} from the other scale benches' JSON."""
    out = {}
    sch = _json("scale_scheduler.json")
    for size, v in ((sch or {}).get("sizes") or {}).items():
        out[("builders", int(size), "wall")] = v.get("wall_ms")
        out[("builders", int(size), "cpu")] = v.get("cpu_ms")
    q = _json("scale_queue.json")
    for row in (q or {}).get("rows") or []:
        key = {"builds/s": "rate", "runner CPU per build (ms)": "cpu"}.get(row.get("figure"))
        if key:
            out[("queue", row["size"], key)] = row.get("value")
    p = _json("scale_poller.json")
    for k, v in (p or {}).items():
        if k.startswith("cpu R=") and isinstance(v, dict) and v.get("after"):
            size = int(k[len("cpu R="):])
            out[("repositories", size, "cpu")] = v["after"]["cpu_per_interval_s"] * 1000
            out[("repositories", size, "pct")] = v["after"]["cpu_pct"]
            out[("repositories", size, "polls")] = v["after"]["polls_per_interval"]
    return out


# ================================================================== the table

def main():
    venv = bbb.ensure_venv()
    base = os.path.join(CACHE, "scale-buildbot")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    templates = bbb.make_templates(venv, os.path.join(base, "templates"))
    if any(REPOSITORIES):
        scale_poller.repositories(max(REPOSITORIES))      # made once, before any clock runs
    data = {"quick": QUICK, "machine": common.machine(CACHE), "interval_s": INTERVAL, "intervals": INTERVALS,
            "drain_cap_s": DRAIN_CAP, "builders": {}, "queue": {}, "repositories": {}}
    snap = common.cpu_snapshot()
    t_start = time.monotonic()
    own = 0.0

    def case(axis, size, fn):
        nonlocal own
        root = os.path.join(base, "%s-%d" % (axis, size))
        c = common.cpu_snapshot()
        try:
            data[axis][str(size)] = fn(venv, templates, root, size)
        except (RuntimeError, common.Timeout) as e:
            data[axis][str(size)] = {"error": str(e)[-2000:]}
            print("scale_buildbot: %s %d: %s" % (axis, size, str(e).splitlines()[0]), file=sys.stderr)
        own += common.cpu_snapshot()["own_s"] - c["own_s"]
        shutil.rmtree(root, ignore_errors=True)
    for b in BUILDERS:
        case("builders", b, builders_case)
    for n in DEPTHS:
        case("queue", n, queue_case)
    for r in REPOSITORIES:
        case("repositories", r, poller_case)
    data["load"] = common.other_load(snap, common.cpu_snapshot())
    data["load"]["load average at end"] = open("/proc/loadavg").read().strip()
    data["seconds"] = time.monotonic() - t_start
    shutil.rmtree(base, ignore_errors=True)

    bu = buildunits_figures()
    rows = []
    for b in BUILDERS:
        v = data["builders"][str(b)]
        rows += [(b, "builders", "one change -> B build requests, wall (ms)", v.get("wall_ms"),
                  bu.get(("builders", b, "wall"))),
                 (b, "builders", "  change added -> B-th request (ms)", v.get("from_change_ms"), None),
                 (b, "builders", "  master CPU to the B-th request (ms)", v.get("cpu_ms"),
                  bu.get(("builders", b, "cpu"))),
                 (b, "builders", "  master CPU until idle (ms)", v.get("cpu_to_idle_ms"), None),
                 (b, "builders", "  master start (s)", v.get("master_start_s"), None)]
    for n in DEPTHS:
        v = data["queue"][str(n)]
        done = "" if not v.get("capped") else " [%d done in the %gs cap]" % (v["done"], v["cap_s"])
        rows += [(n, "queue", "drain, one worker (builds/s)%s" % done, v.get("builds_per_s"),
                  bu.get(("queue", n, "rate"))),
                 (n, "queue", "  master CPU per build (ms)", v.get("master_cpu_ms_per_build"),
                  bu.get(("queue", n, "cpu"))),
                 (n, "queue", "  worker CPU per build (ms)", v.get("worker_cpu_ms_per_build"), None),
                 (n, "queue", "  queueing through the scheduler (requests/s, the first %d)"
                  % v.get("queued_by_buildbot", 0), v.get("queueing_per_s"), None)]
    for r in REPOSITORIES:
        v = data["repositories"][str(r)]
        rows += [(r, "repositories", "master CPU per %gs interval (ms)" % INTERVAL,
                  None if v.get("cpu_per_interval_s") is None else v["cpu_per_interval_s"] * 1000,
                  bu.get(("repositories", r, "cpu"))),
                 (r, "repositories", "  share of one CPU (%)", v.get("cpu_pct"), bu.get(("repositories", r, "pct"))),
                 (r, "repositories", "  polls per interval", v.get("polls_per_interval"),
                  bu.get(("repositories", r, "polls"))),
                 (r, "repositories", "  repositories polled at least once", v.get("repositories_polled"), None)]
        if v.get("master_running") is False:
            rows.append((r, "repositories", "  [master not running after the %gs start cap]" % v["start_cap_s"],
                         None, None))
    data["rows"] = [{"size": s, "axis": a, "figure": f.strip(), "buildbot": v, "buildunits": u}
                    for s, a, f, v, u in rows]
    errors = [(a, s, v["error"]) for a in ("builders", "queue", "repositories")
              for s, v in data[a].items() if "error" in v]

    print("scale_buildbot: Buildbot %s; %s; machine busy %.0f%% (this bench %.0f%%, others %.0f%%); load %s -> %s"
          % (bbb.VERSION, "QUICK" if QUICK else "full", data["load"]["busy_pct"], data["load"]["bench_pct"],
             data["load"]["others_pct"], data["machine"]["load average at start"],
             data["load"]["load average at end"]))
    head = ["size", "axis", "figure", "Buildbot 4.3", "buildunits"]
    lines = [head] + [[str(s), a, f, common.fmt(v), common.fmt(u)] for s, a, f, v, u in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for j, line in enumerate(lines):
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(line)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))
    print("buildunits: from build/bench/scale_scheduler.json, scale_queue.json, scale_poller.json where present "
          "(their runs, not this one); repositories 0: the master alone")
    for a, s, e in errors:
        print("error: %s %s: %s" % (a, s, e.splitlines()[0]))
    common.write_json(os.path.join(ROOT, "build", "bench", "scale_buildbot.json"), data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
