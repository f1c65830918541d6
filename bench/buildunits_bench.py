"""The buildunits side of `make bench`: the real daemons as processes.

Each setup is an installation of its own under the benchmark's directory:
a snapshot of bin/ and lib/ from this checkout (byte-compiled, as a
packager would; a second, never compiled, copy measures the start of an
installation whose bytecode cannot be written), its configuration, spool
and state directories, a private dbus-daemon (the tests' PrivateBus,
tests/support/bus.py), and one NOTIFY_SOCKET per daemon, read with the
time each message arrives.

The end of a build is the moment the bench receives its BuildFinished
signal (sent by the runner after the final build record is committed);
the phases in between come from the timestamps in the records themselves
(change queued, request queued, build and step start and finish).
"""

import os
import pstats
import re
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import common  # noqa: E402  (puts tests/, for support, and lib/ on sys.path)
from support.bus import PrivateBus  # noqa: E402
from support.daemons import PROGRAMS, Daemons  # noqa: E402
from support.git import git_env  # noqa: E402
from support.notify import NotifyReader  # noqa: E402
from support.procs import kill_tree, short_dir  # noqa: E402
from buildunits.spool import Spool  # noqa: E402
from buildunits.config import normalize_repository  # noqa: E402

PYTHON = "/usr/bin/python3"
RUNNERS = ("w1", "w2")
ALL_DAEMONS = ("poller", "scheduler", "htmlgen") + tuple("runner@" + w for w in RUNNERS)

NOOP_STEPS = """
[Step one]
Command=true

[Step two]
Command=true
"""


def noop_builder(repo, poll="0"):
    """Two no-op steps, triggered by REPO's changes, no checkout step
    (Checkout=no): what the Buildbot side's builder does."""
    return ("[Builder]\nDescription=two no-op steps\nRepository=%s\nBranches=main\nCheckout=no\n"
            "PollIntervalSec=%s\nTreeStableSec=0\nWorkers=*\n" % (repo, poll)) + NOOP_STEPS


def checkout_builder(repo, poll="0"):
    """REPO's changes, the implicit checkout step, two no-op steps."""
    return ("[Builder]\nDescription=checkout and two no-op steps\nRepository=%s\nBranches=main\n"
            "PollIntervalSec=%s\nTreeStableSec=0\nWorkers=*\n" % (repo, poll)) + NOOP_STEPS


def big_builder(nbytes):
    return ("[Builder]\nDescription=a step printing %d bytes\nWorkers=*\n\n[Step print]\nCommand=%s\n"
            "TimeoutSec=0\n" % (nbytes, common.big_output_command(nbytes)))


# ============================================================ installation

def install_snapshot(dest, compile_bytecode=True):
    """Copy bin/ and lib/buildunits/ of the checkout to DEST (as `make
    install` lays them out: DEST/bin finds DEST/lib).  Returns DEST/bin."""
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.makedirs(os.path.join(dest, "lib"))
    shutil.copytree(os.path.join(REPO_ROOT, "bin"), os.path.join(dest, "bin"))
    shutil.copytree(os.path.join(REPO_ROOT, "lib", "buildunits"), os.path.join(dest, "lib", "buildunits"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    tmpl = os.path.join(REPO_ROOT, "share")
    if os.path.isdir(tmpl):
        shutil.copytree(tmpl, os.path.join(dest, "share"), ignore=shutil.ignore_patterns("__pycache__"))
    if compile_bytecode:
        subprocess.run([PYTHON, "-m", "compileall", "-q", os.path.join(dest, "lib")], check=True)
    return os.path.join(dest, "bin")


# ================================================================ clocks

class SignalClock(common.EventLog):
    """The project's D-Bus signals, timestamped as the bench receives them
    (a Gio connection of our own, in a thread with its own main context)."""

    def __init__(self, address):
        common.EventLog.__init__(self)   # events: (time, member, args)
        self.address = address
        self._ready = threading.Event()
        self._error = None
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        self._ready.wait(10)
        if self._error:
            raise self._error

    def _run(self):
        from gi.repository import Gio, GLib
        try:
            self.ctx = GLib.MainContext.new()
            self.ctx.push_thread_default()
            self.loop = GLib.MainLoop.new(self.ctx, False)
            self.conn = Gio.DBusConnection.new_for_address_sync(
                self.address, Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
                | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION, None, None)
            for iface in ("org.buildunits.Runner", "org.buildunits.Scheduler", "org.buildunits.HTMLGen",
                          "org.buildunits.Poller"):
                self.conn.signal_subscribe(None, iface, None, None, None, Gio.DBusSignalFlags.NONE, self._on)
        except Exception as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run()

    def _on(self, conn, sender, path, iface, member, params, *user):
        self._add((time.time(), member, tuple(params.unpack())))

    def wait_count(self, pred, n, timeout, start=0, what="signals"):
        """Wait until N events from START satisfy PRED; return them (may be
        fewer on timeout, with timed_out=True)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [e for e in self.events[start:] if pred(e)]
                if len(got) >= n:
                    return got, False
                left = deadline - time.monotonic()
                if left <= 0:
                    return got, True
                self.cond.wait(min(left, 0.5))

    def close(self):
        from gi.repository import GLib
        if getattr(self, "loop", None) is None:
            return
        src = GLib.idle_source_new()
        src.set_callback(lambda *a: self.loop.quit() or False)
        src.attach(self.ctx)
        self._t.join(2)
        try:
            self.conn.close_sync(None)
        except Exception:
            pass


def is_finished(builder):
    return lambda e: e[1] == "BuildFinished" and e[2][0] == builder


# ================================================================= a setup

class Setup(common.Processes):
    """One buildunits installation with its own bus and daemons."""

    def __init__(self, root, label, bindir, builders=None, bytecode=True):
        self.root = root
        self.label = label
        self.bindir = bindir
        self.libdir = os.path.join(os.path.dirname(bindir), "lib")
        self.bytecode = bytecode
        os.makedirs(root, exist_ok=True)
        self.sockdir, self._rm_sockdir = short_dir(root, prefix="bub-")
        self.bus = PrivateBus(os.path.join(root, "dbus"), sockdir=self.sockdir)
        self.bus.start()
        self.d = Daemons(root, self.bus, sockdir=self.sockdir)
        self.spool = Spool(self.d.spool_dir)
        self.spool.ensure()
        self.d.state.ensure()
        self.clock = SignalClock(self.bus.address)
        self.procs = {}       # key -> dict(proc, notify, spawned, cpu)
        self._n = 0
        for name, text in (builders or {}).items():
            self.d.write_builder(name, text)

    def env(self):
        e = self.d.env()
        e["PYTHONPATH"] = self.libdir
        if self.bytecode:
            e.pop("PYTHONDONTWRITEBYTECODE", None)
        else:
            e["PYTHONDONTWRITEBYTECODE"] = "1"
        return e

    def spawn(self, key, profile=None, nice=0):
        name, _, worker = key.partition("@")
        self._n += 1
        notify = NotifyReader(os.path.join(self.sockdir, "n%d.sock" % self._n), name=key)
        path = os.path.join(self.bindir, PROGRAMS[name])
        argv = (["nice", "-n", str(nice)] if nice else []) + [PYTHON] + (
            ["-m", "cProfile", "-o", profile] if profile else []) + [path] + self.d.dir_args()
        if worker:
            argv.append(worker)
        env = self.env()
        env["NOTIFY_SOCKET"] = notify.path
        log_path = os.path.join(self.d.logs_dir, "%s.%d.log" % (key, self._n))
        with open(log_path, "ab") as log:
            t = time.time()
            p = subprocess.Popen(argv, cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        cpu = common.CpuGroup("%s-%s-%d" % (self.label, key.replace("@", "-"), self._n))
        cpu.add(p.pid)
        self.procs[key] = {"proc": p, "notify": notify, "spawned": t, "cpu": cpu, "log": log_path}
        return p

    def start(self, keys=ALL_DAEMONS, profile_dir=None, timeout=60, nice=None):
        """Start KEYS at once; wait for every READY=1.  Returns the seconds
        from the first spawn to the last READY=1, and each daemon's."""
        t0 = time.time()
        for k in keys:
            self.spawn(k, profile=os.path.join(profile_dir, k + ".prof") if profile_dir else None,
                       nice=(nice or {}).get(k, 0))

        def all_ready():
            for k in keys:
                pr = self.procs[k]
                if pr["notify"].arrival("READY=1") is None:
                    if pr["proc"].poll() is not None:
                        raise RuntimeError("%s exited with status %s before READY=1:\n%s"
                                           % (k, pr["proc"].returncode, self.log(k)))
                    return False
            return True

        common.wait_for(all_ready, timeout=timeout, what="READY=1 from every daemon", interval=0.002)
        each = {k: self.procs[k]["notify"].arrival("READY=1") - self.procs[k]["spawned"] for k in keys}
        return max(self.procs[k]["notify"].arrival("READY=1") for k in keys) - t0, each

    def log(self, key):
        try:
            with open(self.procs[key]["log"], errors="replace") as f:
                return f.read()[-3000:]
        except (OSError, KeyError):
            return ""

    def cpu_kind(self):
        for pr in self.procs.values():
            return pr["cpu"].kind
        return ""

    def stop_daemons(self, timeout=30):
        procs = [pr["proc"] for pr in self.procs.values()]
        common.kill_pids(procs, timeout=timeout)
        for pr in self.procs.values():
            if pr["proc"].poll() is None:
                kill_tree(pr["proc"].pid)
            pr["notify"].close()
            pr["cpu"].close()
        self.procs = {}

    def close(self):
        self.stop_daemons()
        self.clock.close()
        self.d.close()
        self.bus.stop()
        if self._rm_sockdir:
            shutil.rmtree(self.sockdir, ignore_errors=True)

    # ------------------------------------------------------------ doing
    def cli(self, *args):
        argv = [PYTHON, os.path.join(self.bindir, "buildunits")] + self.d.dir_args() + list(args)
        return subprocess.run(argv, cwd=self.root, env=self.env(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)

    def force(self, builder, reason="bench"):
        """Hand in a forced build as `buildunits force` does without a bus:
        a force record committed to the scheduler's inbox."""
        return self.spool.deliver("changes", "force", {"builder": builder, "branch": "", "revision": "",
                                                        "reason": reason, "properties": {}, "user": "bench"})

    def read_build(self, builder, number):
        return self.d.read_build(builder, number)

    def wait_finished(self, builder, start, timeout=60):
        """The BuildFinished signal of BUILDER from index START: (time, number)."""
        t, _m, args = self.clock.wait(is_finished(builder), timeout, start=start,
                                      what="BuildFinished of %s" % builder)
        return t, args[1], args[2]


def phases(rec, t_end):
    """Where the time of one build went, from its record's timestamps (ms)."""
    req = rec.get("request") or {}
    ch = (req.get("changes") or [{}])[0] if req.get("changes") else {}
    t_in = ch.get("queued") or None
    out = {}
    if t_in:
        out["change queued -> request queued (scheduler: request, memory, change removed)"] = (
            req.get("queued", t_in) - t_in) * 1000
    if req.get("queued"):
        out["request queued -> build started (runner woken; claim, number, pointer)"] = (
            rec["started"] - req["queued"]) * 1000
    prev = rec["started"]
    for s in rec.get("steps", []):
        if s.get("started"):
            out["gap before step %s" % s["name"]] = (s["started"] - prev) * 1000
            out["step %s" % s["name"]] = ((s.get("finished") or s["started"]) - s["started"]) * 1000
            prev = s.get("finished") or s["started"]
    if rec.get("finished"):
        out["last step -> build finished"] = (rec["finished"] - prev) * 1000
        out["build finished -> final record committed, claim and pointer removed, signal received"] = (
            t_end - rec["finished"]) * 1000
    return out


def median_phases(list_of_phases):
    keys = []
    for p in list_of_phases:
        for k in p:
            if k not in keys:
                keys.append(k)
    return {k: common.median([p[k] for p in list_of_phases if k in p]) for k in keys}


# ============================================================== the bench

class BuildunitsBench(common.Side):
    def __init__(self, workdir, quick=False, log=print):
        common.Side.__init__(self, workdir, "buildunits", quick, log)
        self.bindir = install_snapshot(os.path.join(self.workdir, "install"))
        self.bindir_nopyc = install_snapshot(os.path.join(self.workdir, "install-nopyc"), compile_bytecode=False)

    def repos(self, root):
        """(noop's repository, checkout's repository) and their builders."""
        rn, rc = self.repo(root, "noop"), self.repo(root, "hello")
        return rn, rc, {"noop": noop_builder(rn.bare), "checkout": checkout_builder(rc.bare)}

    # ------------------------------------------------------ 5. cold start
    def cold_start(self, runs, bytecode=True):
        """Start every daemon at once, RUNS times, each time with a fresh
        setup; seconds to the last READY=1."""
        root = self._root("coldstart" + ("" if bytecode else "-nopyc"))
        bindir = self.bindir if bytecode else self.bindir_nopyc
        _rn, _rc, builders = self.repos(root)
        s = Setup(root, "cold", bindir, builders, bytecode=bytecode)
        totals, each = [], []
        try:
            s.start()            # warm-up: page cache, bytecode of the installation
            s.stop_daemons()
            for _ in range(runs):
                total, per = s.start()
                totals.append(total)
                each.append(per)
                s.stop_daemons()
        finally:
            s.close()
        return {"total": totals, "per_daemon": {k: common.median([e[k] for e in each]) for k in each[0]}}

    # --------------------------------------------------------- 1. latency
    def latency(self, runs, profile_dir=None, keys=ALL_DAEMONS, builders=("noop", "checkout"), label="",
                nice=None):
        """Latency of a change handed in to its build finished, one build
        at a time: `buildunits sendchange` of a new commit (the
        post-receive hook's command) for the builder "noop" (two no-op
        steps, Checkout=no) and "checkout" (the implicit checkout first).
        Returns per builder the times from the command's start and from
        the change's commit to the spool (its "queued" time), and phases."""
        root = self._root("latency" + label + ("-profiled" if profile_dir else ""))
        rn, rc, config = self.repos(root)
        s = Setup(root, "lat", self.bindir, config)
        out = {}
        try:
            s.start(keys=keys, profile_dir=profile_dir, nice=nice)
            for builder, repo in (("noop", rn), ("checkout", rc)):
                if builder not in builders:
                    continue
                r = out[builder] = {"cli": [], "command": [], "accepted": [], "phases": []}
                for i in range(runs + 1):     # the first is a warm-up (the first checkout clones)
                    sha = repo.commit({"f": "%d\n" % i}, "change %d" % i)
                    m = s.clock.mark()
                    t0 = time.time()
                    p = s.cli("sendchange", "--repository", repo.bare, "--branch", "main", "--revision", sha)
                    t_cli = time.time()
                    if p.returncode != 0:
                        raise RuntimeError("sendchange failed: %s" % p.stderr)
                    t_end, number, result = s.wait_finished(builder, m)
                    rec = s.read_build(builder, number)
                    if result != "success":
                        raise RuntimeError("%s build %d: %s\n%s" % (builder, number, result, rec))
                    tq = rec["request"]["changes"][0]["queued"]
                    if i:
                        r["cli"].append(t_cli - t0)
                        r["command"].append(t_end - t0)
                        r["accepted"].append(t_end - tq)
                        r["phases"].append(phases(rec, t_end))
                    time.sleep(0.15)   # builds here come one at a time: let htmlgen finish its pages
            out["memory_after"] = s.memory()
        finally:
            s.close()
        return out

    # ------------------------------------------------------ 2. throughput
    def throughput(self, n, timeout, profile_dir=None, checkout=False):
        """N builds handed in at once, two runners; builds per second from
        the first hand-in to the last BuildFinished."""
        root = self._root("throughput" + ("-checkout" if checkout else "") + ("-profiled" if profile_dir else ""))
        rn, rc, builders = self.repos(root)
        s = Setup(root, "tput", self.bindir, builders)
        try:
            s.start(profile_dir=profile_dir)
            builder, repo = ("checkout", rc) if checkout else ("noop", rn)
            shas = make_commits(repo, n + 1)
            # A warm-up build (the first checkout clones).
            m = s.clock.mark()
            deliver_change(s.spool, repo, shas.pop(0))
            s.wait_finished(builder, m)
            time.sleep(0.3)
            cpu0 = s.cpu_seconds()
            m = s.clock.mark()
            t0 = time.time()
            for sha in shas:
                deliver_change(s.spool, repo, sha)
            t_handed = time.time()
            got, timed_out = s.clock.wait_count(is_finished(builder), n, timeout, start=m)
            t_end = got[-1][0] if got else time.time()
            cpu1 = s.cpu_seconds()
            cpu = sum(cpu1.values()) - sum(cpu0.values())
            cpu_per_daemon = {k: cpu1[k] - cpu0.get(k, 0) for k in cpu1}
            bad = [e for e in got if e[2][2] != "success"]
            times = [e[0] for e in got]
            windows = []
            step = max(10, n // 5)
            for j in range(step, len(times) + 1, step):
                t_prev = t0 if j == step else times[j - step - 1]
                windows.append(step / (times[j - 1] - t_prev))
            return {"n": n, "done": len(got), "timed_out": timed_out, "seconds": t_end - t0,
                    "rate": len(got) / (t_end - t0) if got else 0.0, "handing_in_s": t_handed - t0,
                    "failed": len(bad), "windows": windows, "cpu_s": cpu, "cpu_kind": s.cpu_kind(),
                    "cpu_per_daemon_s": cpu_per_daemon}
        finally:
            s.close()

    # ----------------------------------------- 3 & 4. polling and idling
    def idle_setup(self, polling):
        """A setup left idle: with polling at 1 s of one repository, or
        with nothing to poll.  Returns an IdleSetup (start() it)."""
        return IdleSetup(self, polling)

    # --------------------------------------------------- 6. big output
    def big_output(self, nbytes, runs):
        root = self._root("bigoutput")
        s = Setup(root, "big", self.bindir, {"big": big_builder(nbytes)})
        cmd = common.big_output_command(nbytes)
        direct, step, build, e2e, hwm = [], [], [], [], []
        try:
            s.start(keys=("scheduler", "runner@w1"))
            pid = s.procs["runner@w1"]["proc"].pid
            hwm_before = common.status_field(pid, "VmHWM")
            rss_before = common.status_field(pid, "VmRSS")
            out_path = os.path.join(root, "direct.out")
            for i in range(runs):
                # Alternate which goes first; start each from a clean page cache state.
                for which in ((0, 1) if i % 2 == 0 else (1, 0)):
                    subprocess.run(["sync"])
                    if which == 0:
                        t = time.time()
                        with open(out_path, "wb") as f:
                            subprocess.run(["/bin/sh", "-c", cmd], stdout=f, check=True)
                        direct.append(time.time() - t)
                        os.unlink(out_path)
                        continue
                    m = s.clock.mark()
                    t0 = time.time()
                    s.force("big", "big output %d" % i)
                    t_end, number, result = s.wait_finished("big", m, timeout=600)
                    rec = s.read_build("big", number)
                    st = rec["steps"][0]
                    size = os.path.getsize(os.path.join(s.d.state.build_dir("big", number), st["log"]))
                    if result != "success" or size != nbytes:
                        raise RuntimeError("big output build: %s, log of %d bytes" % (result, size))
                    step.append(st["finished"] - st["started"])
                    build.append(rec["finished"] - rec["started"])
                    e2e.append(t_end - t0)
                    hwm.append(common.status_field(pid, "VmHWM"))
                    shutil.rmtree(s.d.state.build_dir("big", number))   # 1 GB each
            return {"direct": direct, "step": step, "build": build, "end_to_end": e2e,
                    "runner_hwm_mib": max(hwm) / common.MiB, "runner_hwm_before_mib": hwm_before / common.MiB,
                    "runner_rss_before_mib": rss_before / common.MiB, "bytes": nbytes}
        finally:
            s.close()

    # ------------------------------------------------------ profiling
    def profile(self, latency_runs, builds, timeout):
        """Run the latency and throughput workloads with every daemon under
        cProfile; returns {workload: {daemon: pstats text}}."""
        out = {}
        for what in ("latency", "throughput"):
            pdir = os.path.join(self.workdir, "profiles", what)
            os.makedirs(pdir, exist_ok=True)
            if what == "latency":
                self.latency(latency_runs, profile_dir=pdir)
            else:
                self.throughput(builds, timeout, profile_dir=pdir)
            out[what] = {}
            for k in ("scheduler", "runner@w1", "htmlgen"):
                path = os.path.join(pdir, k + ".prof")
                if os.path.exists(path):
                    out[what][k] = {"text": profile_text(path, self.workdir),
                                    "costs": profile_costs(path, self.workdir)}
        return out


def _short(fn, strip):
    fn = fn.replace(os.path.join(strip, "install") + "/", "")
    fn = re.sub(r"^/usr/lib/python3[.0-9]*/", "", fn)
    fn = re.sub(r"^/usr/lib/python3/dist-packages/", "", fn)
    return fn


def profile_text(path, strip, n=12):
    """What a daemon spent its time on, from its cProfile file, leaving out
    the main loop's waiting (GLib's run() holds it as own time) and the
    imports at start: the top N functions by own time, and the project's
    functions by cumulative time."""
    st = pstats.Stats(path)
    rows = []
    for (fn, line, func), (cc, nc, tt, ct, callers) in st.stats.items():
        name = "%s:%d(%s)" % (_short(fn, strip), line, func) if fn != "~" else func
        rows.append((name, nc, tt, ct))
    waiting = sum(tt for name, nc, tt, ct in rows if name.endswith("GLib.py:494(run)")
                  or "overrides/GLib.py" in name and name.endswith("(run)"))
    imports = max([ct for name, nc, tt, ct in rows if "_find_and_load" in name] or [0])
    total = st.total_tt
    work = total - waiting - imports
    out = ["%.0f ms in all: %.0f ms waiting in the main loop, %.0f ms importing at start, %.0f ms working"
           % (total * 1000, waiting * 1000, imports * 1000, work * 1000), "",
           "by own time (loop wait and imports left out):",
           "%9s %10s %10s %9s  %s" % ("calls", "own ms", "cum ms", "us/call", "function")]
    skip = ("GLib.py:494(run)", "importlib", "marshal.loads", "_imp.create_dynamic", "{built-in method builtins.exec}",
            "__build_class__", "<frozen")
    own = [r for r in rows if not any(k in r[0] for k in skip)]
    for name, nc, tt, ct in sorted(own, key=lambda r: -r[2])[:n]:
        out.append("%9d %10.1f %10.1f %9.0f  %s" % (nc, tt * 1000, ct * 1000, tt / nc * 1e6 if nc else 0, name))
    out += ["", "the project's functions by cumulative time:",
            "%9s %10s %10s %9s  %s" % ("calls", "own ms", "cum ms", "us/call", "function")]
    mine = [r for r in rows if r[0].startswith("lib/buildunits/") and not r[0].endswith("(<module>)")
            and not r[0].endswith("(main)") and "daemon.py" not in r[0].split(":")[0] + ":run"
            and not r[0].endswith("daemon.py:174(run)")]
    for name, nc, tt, ct in sorted(mine, key=lambda r: -r[3])[:n]:
        out.append("%9d %10.1f %10.1f %9.0f  %s" % (nc, tt * 1000, ct * 1000, ct / nc * 1e6 if nc else 0, name))
    return "\n".join(out)


COSTS = (
    ("fsync", lambda n: n == "<built-in method posix.fsync>"),
    ("rename", lambda n: n == "<built-in method posix.rename>"),
    ("unlink", lambda n: n == "<built-in method posix.unlink>"),
    ("mkdir", lambda n: n == "<built-in method posix.mkdir>"),
    ("spawn (fork_exec)", lambda n: "fork_exec" in n),
    ("D-Bus signal emission (pydbus)", lambda n: n.endswith("registration.py:124(func)")),
    ("JSON encoding (own time in json/encoder.py)", lambda n: n.startswith("json/encoder.py")),
    ("sd_notify and log sockets (sendall)", lambda n: "sendall" in n),
    ("open/close/read/write/stat/listdir", lambda n: any(k in n for k in (
        "posix.open>", "posix.close>", "posix.write>", "posix.read>", "posix.stat>", "posix.lstat>",
        "posix.listdir>", "io.open>", "BufferedReader' objects>"))),
    ("template rendering (jinja2, markupsafe, templates)", lambda n: any(k in n for k in (
        "jinja2/", "markupsafe", "share/templates/"))),
)
UNITS = {"runner": ("runner.py", "_finish", "build"), "scheduler": ("scheduler.py", "_request", "request"),
         "htmlgen": ("htmlgen.py", "work", "pass"), "poller": ("poller.py", "poll", "poll")}


def profile_costs(path, strip):
    """{"per": unit word, "units": count, "costs": {what: (calls, own ms)}}
    of one daemon's profile: the system calls and libraries its work is
    made of, for the "where the time goes" text."""
    st = pstats.Stats(path)
    key = os.path.basename(path)[:-5].split("@")[0]
    mod, func, word = UNITS.get(key, ("", "", "unit"))
    units = 0
    costs = {k: [0, 0.0] for k, _ in COSTS}
    for (fn, line, f), (cc, nc, tt, ct, callers) in st.stats.items():
        name = "%s:%d(%s)" % (_short(fn, strip), line, f) if fn != "~" else f
        if fn.endswith("/" + mod) and f == func:
            units += nc
        for k, test in COSTS:
            if test(name):
                # Leave out what the imports at start did (reading modules).
                for (cfn, _cl, _cf), (_ccc, cnc, ctt, _cct) in callers.items():
                    if "importlib" in cfn or cfn.startswith("<frozen"):
                        continue
                    costs[k][0] += cnc
                    costs[k][1] += ctt * 1000
                break
    return {"per": word, "units": units, "costs": {k: tuple(v) for k, v in costs.items() if v[0]}}


class IdleSetup(common.Idle):
    """All daemons, left alone after one warm-up build."""

    def __init__(self, bench, polling):
        common.Idle.__init__(self, bench, polling)
        builders = {"noop": noop_builder(self.repo.bare)}
        if polling:
            builders = {"checkout": checkout_builder(self.repo.bare, poll="1s")}
        self.s = Setup(self.root, self.label, bench.bindir, builders)
        self.say = bench.say

    def start(self):
        self.s.start()
        m = self.s.clock.mark()
        if self.polling:
            # the first poll only records the heads
            common.wait_for(lambda: self.polls() >= 1, timeout=30, what="the first poll")
            self.repo.commit({"warm": "1"}, "warm-up")
            self.s.wait_finished("checkout", m, timeout=60)
        else:
            deliver_change(self.s.spool, self.repo, self.repo.commit({"warm": "1"}, "warm-up"))
            self.s.wait_finished("noop", m, timeout=60)

    def polls(self):
        st = self.s.procs["poller"]["notify"].status() or ""
        m = re.search(r"(\d+) polls", st)
        return int(m.group(1)) if m else 0

    def poller_pid(self):
        return self.s.procs["poller"]["proc"].pid

    def push_latency(self, runs):
        """A commit pushed to the polled repository -> its build finished."""
        out = []
        for i in range(runs):
            m = self.s.clock.mark()
            sha = self.repo.commit({"p": "%d\n" % i}, "push %d" % i, push=False)
            self.repo.push("main")
            t_pushed = time.time()
            t_end, number, result = self.s.wait_finished("checkout", m, timeout=60)
            rec = self.s.read_build("checkout", number)
            if rec.get("revision") != sha:
                raise RuntimeError("push %d: build %d is of %s, not %s" % (i, number, rec.get("revision"), sha))
            out.append(t_end - t_pushed)
            time.sleep(0.1)
        return out


# ============================================================ memory floor

FLOOR_IMPORTS = (
    ("python3 alone", ""),
    ("+ gi (GLib, Gio)", "from gi.repository import GLib, Gio"),
    ("+ pydbus", "from gi.repository import GLib, Gio; import pydbus"),
    ("+ watchdog", "from gi.repository import GLib, Gio; import pydbus; import watchdog.observers"),
    ("+ jinja2", "from gi.repository import GLib, Gio; import pydbus; import watchdog.observers; import jinja2"),
    ("a runner's imports", "import buildunits.runner, buildunits.daemon"),
    ("htmlgen's imports, with the site module", "import buildunits.htmlgen, buildunits.site, buildunits.daemon"),
)


def memory_floor(libdir):
    """RSS, PSS and private memory of an idle interpreter holding the
    daemons' imports, one set at a time: what the memory figure is made of."""
    out = []
    code = ("import os, sys\n%s\nsys.stdout.write('ok\\n'); sys.stdout.flush(); sys.stdin.readline()\n")
    for name, imports in FLOOR_IMPORTS:
        p = subprocess.Popen([PYTHON, "-c", code % imports], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env=dict(os.environ, PYTHONPATH=libdir), text=True)
        p.stdout.readline()
        m = common.smaps_rollup(p.pid) or {}
        priv = 0
        try:
            with open("/proc/%d/smaps_rollup" % p.pid) as f:
                for line in f:
                    if line.startswith(("Private_Clean:", "Private_Dirty:")):
                        priv += int(line.split()[1]) * 1024
        except OSError:
            pass
        p.stdin.close()
        p.wait()
        out.append({"what": name, "rss_mib": m.get("rss", 0) / common.MiB, "pss_mib": m.get("pss", 0) / common.MiB,
                    "private_mib": priv / common.MiB})
    return out


# ================================================================= helpers

def make_commits(repo, n):
    """N commits on main, made with one git fast-import and pushed; their
    ids, oldest first."""
    base = repo.head() or ""
    lines = []
    for i in range(n):
        data = "commit %d\n" % i
        msg = "bench commit %d\n" % i
        lines.append("commit refs/heads/main\nmark :%d\ncommitter Bench <bench@example.invalid> %d +0000\n"
                     "data %d\n%s" % (i + 1, 1700000000 + i, len(msg), msg))
        if i == 0 and base:
            lines.append("from %s\n" % base)
        lines.append("M 100644 inline bench.txt\ndata %d\n%s\n" % (len(data), data))
    marks = os.path.join(os.path.dirname(repo.bare), "marks")
    git_input(["--git-dir=" + repo.bare, "fast-import", "--quiet", "--export-marks=" + marks],
                      "".join(lines))
    shas = {}
    with open(marks) as f:
        for line in f:
            k, v = line.split()
            shas[int(k[1:])] = v
    return [shas[i + 1] for i in range(n)]


def git_input(args, text):
    p = subprocess.run(["git"] + args, input=text.encode(), env=git_env(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise RuntimeError("git %s: %s" % (args[1], p.stderr.decode(errors="replace")))


def deliver_change(spool, repo, sha):
    """A change record as `buildunits sendchange` commits it."""
    return spool.deliver("changes", "change", {
        "source": "sendchange", "repository": normalize_repository(repo.bare), "branch": "main", "revision": sha,
        "author": "Bench <bench@example.invalid>", "message": "bench", "files": ["bench.txt"],
        "when": time.time()})


if __name__ == "__main__":  # a quick look at one figure: buildunits_bench.py WORKDIR FIGURE [N]
    common.one_figure(BuildunitsBench, {
        "cold": lambda b, n: b.cold_start(3), "latency": lambda b, n: b.latency(5),
        "throughput": lambda b, n: b.throughput(n or 100, 120), "big": lambda b, n: b.big_output(n or 10**8, 1)})
