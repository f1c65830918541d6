"""The Buildbot side of `make bench`: Buildbot 4.3 from PyPI, run for real.

Buildbot and buildbot-worker are installed once into a virtualenv under
the benchmark's cache directory (BENCH_CACHE, default
/var/tmp/buildunits-bench/venv-buildbot-VERSION) with the `python3` found
on PATH (Buildbot needs no Debian package).  Each setup is a master
(`buildbot create-master`, SQLite, usage reporting off, no web server,
its PB port on 127.0.0.1 only) and local workers (`buildbot-worker
create-worker`), run in the foreground with twistd.

The master's configuration mirrors buildunits' workloads: a PBChangeSource (what
`buildbot sendchange` talks to), a GitPoller when polling is measured,
one SingleBranchScheduler per builder without a tree-stable timer, and
builders of two no-op ShellCommand steps (`true`), collapseRequests off.
The builder "checkout" adds a Git step first (mode incremental), the
closest to buildunits' implicit checkout.

Times come from a small service in master.cfg that listens to the
master's own message queue and sends one datagram per event (change
added, build request, build started, build finished) to the bench, which
timestamps it on receipt: the same place in the pipeline as buildunits'
BuildFinished signal.
"""

import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

VERSION = "4.3.0"
CACHE = common.CACHE


def venv_dir():
    return os.path.join(CACHE, "venv-buildbot-" + VERSION)


def ensure_venv(log=print):
    """The virtualenv with buildbot and buildbot-worker VERSION; made once."""
    venv = venv_dir()
    marker = os.path.join(venv, ".complete")
    if os.path.exists(marker):
        return venv
    os.makedirs(CACHE, exist_ok=True)
    python = shutil.which("python3") or "/usr/bin/python3"
    log("installing Buildbot %s into %s (once; later runs reuse it)" % (VERSION, venv))
    # A venv's scripts name their interpreter by path, so it is made in
    # place; the marker says it is complete.
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", venv], check=True)
    p = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "--quiet", "--disable-pip-version-check",
                        "buildbot==" + VERSION, "buildbot-worker==" + VERSION],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        raise RuntimeError("pip install of Buildbot %s failed:\n%s" % (VERSION, p.stdout[-3000:]))
    with open(marker, "w") as f:
        f.write(VERSION + "\n")
    return venv


# The master's configuration.  %(...)s are filled by Setup.
MASTER_CFG = '''\
# Written by bench/buildbot_bench.py for `make bench`.
import json
import os
import socket
import time

from twisted.internet import defer
from buildbot.plugins import changes, schedulers, steps, util, worker
from buildbot.util import service

EVENTS = %(events)r


class BenchEvents(service.BuildbotService):
    """Sends a datagram to the bench for each event of interest."""
    name = "bench-events"

    def checkConfig(self, *a, **kw):
        pass

    @defer.inlineCallbacks
    def startService(self):
        yield super().startService()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._consumers = []
        for key in (("changes", None, "new"), ("buildrequests", None, "new"),
                    ("builds", None, "new"), ("builds", None, "finished"),
                    ("workers", None, "connected")):
            c = yield self.master.mq.startConsuming(self._event, key)
            self._consumers.append(c)
        self._send({"event": "ready", "t": time.time()})

    def _event(self, key, msg):
        ev = {"event": ".".join(str(k) for k in key), "t": time.time()}
        for k in ("changeid", "revision", "branch", "project", "buildid", "buildrequestid", "builderid",
                  "number", "results", "name", "buildsetid", "workerid"):
            if k in msg:
                v = msg[k]
                ev[k] = v if isinstance(v, (int, float, str, type(None))) else str(v)
        self._send(ev)

    def _send(self, ev):
        try:
            self._sock.sendto(json.dumps(ev).encode(), EVENTS)
        except OSError:
            pass


c = BuildmasterConfig = {}
c["title"] = "bench"
c["buildbotURL"] = "http://127.0.0.1/"
c["buildbotNetUsageData"] = None
c["db"] = {"db_url": "sqlite:///state.sqlite"}
c["protocols"] = {"pb": {"port": "tcp:%(port)d:interface=127.0.0.1"}}
c["workers"] = [worker.Worker(n, "pass") for n in %(workers)r]
c["change_source"] = [changes.PBChangeSource(user="change", passwd="changepw")]
if %(poll)r:
    c["change_source"].append(changes.GitPoller(%(repo)r, branches=["main"], pollInterval=%(poll)r,
                                                workdir="gitpoller-work", project="checkout",
                                                pollAtLaunch=True))


def noop_steps():
    return [steps.ShellCommand(name="one", command=["true"]),
            steps.ShellCommand(name="two", command=["true"])]


f_noop = util.BuildFactory(noop_steps())
f_checkout = util.BuildFactory([steps.Git(repourl=%(repo)r, mode="incremental", name="checkout")]
                               + noop_steps())
f_big = util.BuildFactory([steps.ShellCommand(name="print", command=%(big)r, timeout=None,
                                              maxTime=None)])
c["builders"] = [
    util.BuilderConfig(name="noop", workernames=%(workers)r, factory=f_noop, collapseRequests=False),
    util.BuilderConfig(name="checkout", workernames=%(workers)r, factory=f_checkout, collapseRequests=False),
    util.BuilderConfig(name="big", workernames=%(workers)r, factory=f_big, collapseRequests=False),
]
c["schedulers"] = [
    schedulers.SingleBranchScheduler(name=b, change_filter=util.ChangeFilter(project=b),
                                     treeStableTimer=None, builderNames=[b])
    for b in ("noop", "checkout", "big")
]
c["services"] = [BenchEvents()]
'''

# A helper run with the venv's python: hands in changes over PB, one per
# line of standard input (JSON), answering "ok" per change.
SENDER = '''\
import json, sys, time
from twisted.internet import reactor, defer, threads
from buildbot.clients.sendchange import Sender

s = Sender(sys.argv[1])

@defer.inlineCallbacks
def main():
    while True:
        line = yield threads.deferToThread(sys.stdin.readline)
        if not line:
            break
        ch = json.loads(line)
        t = time.time()
        yield s.send(ch["branch"], ch["revision"], ch.get("comments", "bench"), ch.get("files", []),
                     who="bench", project=ch["project"], repository=ch.get("repository", ""))
        sys.stdout.write("ok %%f\\n" %% t)
        sys.stdout.flush()
    reactor.stop()

reactor.callWhenRunning(main)
reactor.run()
'''.replace("%%", "%")


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_templates(venv, d):
    """A fresh master (with its SQLite database) and a worker, relocatable."""
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    tm, tw = os.path.join(d, "master"), os.path.join(d, "worker")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["HOME"] = d
    for argv in ([os.path.join(venv, "bin", "buildbot"), "create-master", "-q", "-r", "--db",
                  "sqlite:///state.sqlite", tm],
                 [os.path.join(venv, "bin", "buildbot-worker"), "create-worker", "-q", "-r", tw,
                  "127.0.0.1:9", "w1", "pass"]):
        p = subprocess.run(argv, cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            raise RuntimeError("%s: %s" % (" ".join(argv[:2]), p.stdout))
    for f in ("master.cfg.sample",):
        try:
            os.unlink(os.path.join(tm, f))
        except FileNotFoundError:
            pass
    return tm, tw


class Setup(common.Processes):
    """One Buildbot master and its workers."""

    def __init__(self, root, label, venv, templates, repo="", poll=0, workers=("w1", "w2"), big_cmd="true"):
        self.root = root
        self.label = label
        self.venv = venv
        self.workers = list(workers)
        os.makedirs(root, exist_ok=True)
        self.master_dir = os.path.join(root, "master")
        self.port = free_port()
        sockdir = os.path.join(root, "s")
        if len(sockdir) > 90:
            import tempfile
            sockdir = tempfile.mkdtemp(prefix="bbb-", dir="/tmp")
        os.makedirs(sockdir, exist_ok=True)
        self.events = common.DatagramClock(os.path.join(sockdir, "events.sock"))
        self.procs = {}
        self._bin = os.path.join(venv, "bin")
        # Copies of a master and a worker made once by `buildbot
        # create-master -r` and `buildbot-worker create-worker -r`
        # (relocatable: their buildbot.tac finds its own directory).
        tm, tw = templates
        shutil.copytree(tm, self.master_dir)
        with open(os.path.join(self.master_dir, "master.cfg"), "w") as f:
            f.write(MASTER_CFG % {"events": self.events.path, "port": self.port, "workers": self.workers,
                                  "poll": poll, "repo": repo or "/nonexistent.git",
                                  "big": ["/bin/sh", "-c", big_cmd]})
        for w in self.workers:
            wdir = os.path.join(root, w)
            shutil.copytree(tw, wdir)
            tac = os.path.join(wdir, "buildbot.tac")
            with open(tac) as f:
                text = f.read()
            text = re.sub(r"(?m)^port = .*$", "port = %d" % self.port, text)
            text = re.sub(r"(?m)^workername = .*$", "workername = %r" % w, text)
            with open(tac, "w") as f:
                f.write(text)
        self.sender = None

    def env(self):
        e = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "NOTIFY_SOCKET"))}
        e["PATH"] = self._bin + os.pathsep + e.get("PATH", "/usr/bin:/bin")
        e["HOME"] = self.root
        e["LC_ALL"] = "C.UTF-8"
        e["GIT_CONFIG_NOSYSTEM"] = "1"
        e["GIT_CONFIG_GLOBAL"] = "/dev/null"
        return e

    def _twistd(self, key, basedir):
        log = open(os.path.join(self.root, key + ".out"), "ab")
        t = time.time()
        p = subprocess.Popen([os.path.join(self._bin, "twistd"), "--nodaemon", "--no_save", "--pidfile=",
                              "-y", "buildbot.tac"], cwd=basedir, env=self.env(), stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        cpu = common.CpuGroup("bb-%s-%s" % (self.label, key))
        cpu.add(p.pid)
        self.procs[key] = {"proc": p, "spawned": t, "cpu": cpu, "basedir": basedir}
        return t

    def _log_has(self, basedir, text):
        try:
            with open(os.path.join(basedir, "twistd.log"), errors="replace") as f:
                return text in f.read()
        except FileNotFoundError:
            return False

    def start(self, timeout=120):
        """Start the master, wait until it runs, then the workers (as a
        unit ordered After= the master would), wait until each is
        connected.  Returns (total seconds, {master:, workers:})."""
        for d in [self.master_dir] + [os.path.join(self.root, w) for w in self.workers]:
            try:
                os.unlink(os.path.join(d, "twistd.log"))
            except FileNotFoundError:
                pass
        m = self.events.mark()
        t0 = self._twistd("master", self.master_dir)

        def master_up():
            if self.procs["master"]["proc"].poll() is not None:
                raise RuntimeError("the Buildbot master exited:\n%s" % self.master_log()[-3000:])
            return self._log_has(self.master_dir, "BuildMaster is running")

        common.wait_for(master_up, timeout=timeout, what="the Buildbot master to run", interval=0.005)
        t_master = time.time()
        for w in self.workers:
            self._twistd(w, os.path.join(self.root, w))

        def connected():
            with self.events.cond:
                return [t for t, e in self.events.events[m:] if '"workers.' in e and '.connected"' in e]

        got = common.wait_for(lambda: len(connected()) >= len(self.workers) and connected(), timeout=timeout,
                              what="the workers to connect", interval=0.002)
        t_end = max(got[:len(self.workers)])
        return t_end - t0, {"master": t_master - t0, "workers": t_end - t_master}

    def master_log(self):
        try:
            with open(os.path.join(self.master_dir, "twistd.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.sender is not None:
            # It may still be handing in changes (stopped at a deadline).
            self.sender.kill()
            self.sender.wait()
            for f in (self.sender.stdin, self.sender.stdout):
                try:
                    f.close()
                except (OSError, ValueError):
                    pass
            self.sender = None
        # workers first, then the master
        keys = [k for k in self.procs if k != "master"] + (["master"] if "master" in self.procs else [])
        for k in keys:
            common.kill_pids([self.procs[k]["proc"]], timeout=30)
            self.procs[k]["cpu"].close()
        self.procs = {}

    def close(self):
        self.stop()
        self.events.close()

    # ------------------------------------------------------------- doing
    def sendchange_cli(self, project, revision, repository="", branch="main"):
        """`buildbot sendchange`, the command a hook runs."""
        return subprocess.run([os.path.join(self._bin, "buildbot"), "sendchange", "--master",
                               "127.0.0.1:%d" % self.port, "--auth", "change:changepw", "--who", "bench",
                               "--project", project, "--branch", branch, "--revision", revision,
                               "--repository", repository, "--comments", "bench", "bench.txt"],
                              cwd=self.root, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=120)

    def send(self, project, revision, repository="", branch="main"):
        """Hand in a change over PB from a long-running helper (no
        interpreter start per change).  Returns the time it was sent."""
        import json
        if self.sender is None:
            helper = os.path.join(self.root, "sender.py")
            with open(helper, "w") as f:
                f.write(SENDER)
            self.sender = subprocess.Popen([os.path.join(self._bin, "python"), helper, "127.0.0.1:%d" % self.port],
                                           cwd=self.root, env=self.env(), stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, text=True, bufsize=1)
        self.sender.stdin.write(json.dumps({"project": project, "revision": revision, "branch": branch,
                                            "repository": repository}) + "\n")
        self.sender.stdin.flush()
        line = self.sender.stdout.readline()
        if not line.startswith("ok"):
            raise RuntimeError("the change sender stopped")
        return float(line.split()[1])

    def send_many(self, project, revisions, repository="", deadline=None):
        """Hand in many changes as fast as the master takes them; returns
        (time the first was sent, time the last was accepted, or None if
        DEADLINE (monotonic) came first)."""
        import json
        import select
        import threading
        t0 = self.send(project, revisions[0], repository)
        lines = "".join(json.dumps({"project": project, "revision": r, "branch": "main",
                                    "repository": repository}) + "\n" for r in revisions[1:])

        def feed():
            try:
                self.sender.stdin.write(lines)
                self.sender.stdin.flush()
            except (OSError, ValueError):
                pass    # stopped at the deadline
        threading.Thread(target=feed, daemon=True).start()
        fd = self.sender.stdout
        for _ in revisions[1:]:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return t0, None
            if not select.select([fd], [], [], left)[0]:
                return t0, None
            if not fd.readline().startswith("ok"):
                raise RuntimeError("the change sender stopped")
        return t0, time.time()

    def wait_event(self, name, start, timeout=120, **match):
        """The first event from START named NAME ("builds.finished": the
        first and last parts of the routing key)."""
        import json
        kind, _, what = name.partition(".")

        def pred(text):
            e = json.loads(text)
            parts = e["event"].split(".")
            return (parts[0] == kind and parts[-1] == what
                    and all(e.get(k) == v for k, v in match.items()))
        t, text = self.events.wait(pred, timeout, start=start, what="Buildbot event %s %s" % (name, match))
        return t, json.loads(text)

    def events_since(self, start):
        import json
        with self.events.cond:
            return [(t, json.loads(e)) for t, e in self.events.events[start:]]


# ============================================================== the bench

class BuildbotBench(common.Side):
    def __init__(self, workdir, quick=False, log=print):
        common.Side.__init__(self, workdir, "buildbot", quick, log)
        self.venv = ensure_venv(log)
        self.version = subprocess.run([os.path.join(self.venv, "bin", "python"), "-c",
                                       "import buildbot, buildbot_worker, twisted, sys; print(buildbot.version, "
                                       "buildbot_worker.version, twisted.__version__, sys.version.split()[0])"],
                                      stdout=subprocess.PIPE, text=True).stdout.split()
        self.templates = make_templates(self.venv, os.path.join(self.workdir, "templates"))

    # ------------------------------------------------------ 5. cold start
    def cold_start(self, runs, warm_up=True):
        root = self._root("coldstart")
        s = Setup(root, "cold", self.venv, self.templates)
        totals, parts = [], []
        try:
            if warm_up:        # the page cache
                s.start()
                s.stop()
            for _ in range(runs):
                total, part = s.start()
                totals.append(total)
                parts.append(part)
                s.stop()
        finally:
            s.close()
        return {"total": totals, "master": [p["master"] for p in parts], "workers": [p["workers"] for p in parts]}

    # --------------------------------------------------------- 1. latency
    def latency(self, runs):
        """As buildunits' latency(): `buildbot sendchange` (the command a
        hook runs) of a new commit, for the builder "noop" (two no-op
        ShellCommands) and "checkout" (a Git step first)."""
        root = self._root("latency")
        rn, rc = self.repo(root, "noop"), self.repo(root, "hello")
        s = Setup(root, "lat", self.venv, self.templates, repo=rc.bare)
        out = {}
        try:
            s.start()
            for builder, repo in (("noop", rn), ("checkout", rc)):
                r = out[builder] = {"cli": [], "command": [], "accepted": [], "phases": []}
                for i in range(runs + 1):     # the first is a warm-up (the first checkout clones)
                    sha = repo.commit({"f": "%d\n" % i}, "change %d" % i)
                    m = s.events.mark()
                    t0 = time.time()
                    p = s.sendchange_cli(builder, sha, repository=repo.bare)
                    t_cli = time.time()
                    if p.returncode != 0:
                        raise RuntimeError("buildbot sendchange: %s" % p.stdout)
                    t_end, ev = self._finished(s, m)
                    tc, _ = s.wait_event("changes.new", m)
                    if i:
                        r["cli"].append(t_cli - t0)
                        r["command"].append(t_end - t0)
                        r["accepted"].append(t_end - tc)
                        r["phases"].append(self._phases(s, m, t_end))
                    time.sleep(0.15)
            out["memory_after"] = s.memory()
        finally:
            s.close()
        return out

    def _finished(self, s, m, timeout=120):
        t, ev = s.wait_event("builds.finished", m, timeout=timeout)
        if ev.get("results") not in (0, None):
            raise RuntimeError("Buildbot build finished with results %r:\n%s" % (ev.get("results"),
                                                                               s.master_log()[-2000:]))
        return t, ev

    def _phases(self, s, m, t_end, t_in=None):
        evs = s.events_since(m)
        first = {}
        for t, e in evs:
            first.setdefault(e["event"].split(".")[0] + "." + e["event"].split(".")[-1], t)
        out = {}
        tc = first.get("changes.new", t_in)
        if t_in and "changes.new" in first:
            out["handed in -> change added (PB, database)"] = (first["changes.new"] - t_in) * 1000
        if tc and "buildrequests.new" in first:
            out["change added -> build request (scheduler)"] = (first["buildrequests.new"] - tc) * 1000
        if "buildrequests.new" in first and "builds.new" in first:
            out["build request -> build started (worker chosen)"] = (first["builds.new"] - first["buildrequests.new"]) * 1000
        if "builds.new" in first:
            out["build started -> build finished (steps, over PB)"] = (t_end - first["builds.new"]) * 1000
        return out

    # ------------------------------------------------------ 2. throughput
    def throughput(self, n, timeout):
        root = self._root("throughput")
        s = Setup(root, "tput", self.venv, self.templates)
        try:
            s.start()
            m = s.events.mark()
            s.send("noop", "%040x" % 1)
            self._finished(s, m)
            time.sleep(0.5)
            cpu0 = sum(s.cpu_seconds().values())
            m = s.events.mark()
            revs = ["%040x" % (i + 1000) for i in range(n)]
            deadline = time.monotonic() + timeout     # handing in counts: the master takes a while
            t0, t_handed = s.send_many("noop", revs, deadline=deadline)
            import json
            while True:
                with s.events.cond:
                    done = [t for t, e in s.events.events[m:] if '.finished"' in e and '"builds.' in e]
                    if len(done) >= n or time.monotonic() > deadline:
                        break
                    s.events.cond.wait(0.5)
            t_end = done[-1] if done else time.time()
            cpu = sum(s.cpu_seconds().values()) - cpu0
            failed = sum(1 for _, e in s.events_since(m) if e["event"].endswith("finished")
                         and e.get("results") not in (0, None))
            windows = []
            step = max(10, n // 5)
            for j in range(step, len(done) + 1, step):
                t_prev = t0 if j == step else done[j - step - 1]
                windows.append(step / (done[j - 1] - t_prev))
            return {"n": n, "done": len(done), "timed_out": len(done) < n, "seconds": t_end - t0,
                    "rate": len(done) / (t_end - t0) if done else 0.0,
                    "handing_in_s": (t_handed - t0) if t_handed else None,
                    "failed": failed, "windows": windows, "cpu_s": cpu}
        finally:
            s.close()

    # ----------------------------------------- 3 & 4. polling and idling
    def idle_setup(self, polling):
        return IdleSetup(self, polling)

    # --------------------------------------------------- 6. big output
    def big_output(self, nbytes, runs, timeout):
        root = self._root("bigoutput")
        cmd = common.big_output_command(nbytes)
        s = Setup(root, "big", self.venv, self.templates, workers=("w1",), big_cmd=cmd)
        direct, build, hwm_m, hwm_w = [], [], [], []
        try:
            s.start()
            out_path = os.path.join(root, "direct.out")
            for i in range(runs):
                subprocess.run(["sync"])
                t = time.time()
                with open(out_path, "wb") as f:
                    subprocess.run(["/bin/sh", "-c", cmd], stdout=f, check=True)
                direct.append(time.time() - t)
                os.unlink(out_path)
                subprocess.run(["sync"])
                m = s.events.mark()
                s.send("big", "%040x" % (i + 1))
                try:
                    tb, _ = s.wait_event("builds.new", m, timeout=60)
                    t_end, _ = self._finished(s, m, timeout=timeout)
                except common.Timeout:
                    return {"direct": direct, "build": build, "timed_out": timeout, "bytes": nbytes,
                            "master_hwm_mib": (common.status_field(s.procs["master"]["proc"].pid, "VmHWM") or 0)
                            / common.MiB,
                            "worker_hwm_mib": (common.status_field(s.procs["w1"]["proc"].pid, "VmHWM") or 0)
                            / common.MiB}
                build.append(t_end - tb)
                hwm_m.append(common.status_field(s.procs["master"]["proc"].pid, "VmHWM"))
                hwm_w.append(common.status_field(s.procs["w1"]["proc"].pid, "VmHWM"))
            return {"direct": direct, "build": build, "bytes": nbytes, "master_hwm_mib": max(hwm_m) / common.MiB,
                    "worker_hwm_mib": max(hwm_w) / common.MiB}
        finally:
            s.close()


class IdleSetup(common.Idle):
    def __init__(self, bench, polling):
        common.Idle.__init__(self, bench, polling)
        self.s = Setup(self.root, self.label, bench.venv, bench.templates, repo=self.repo.bare,
                       poll=1 if polling else 0)

    def start(self):
        self.s.start()
        m = self.s.events.mark()
        if self.polling:
            time.sleep(1.5)  # the first poll records the heads
            self.repo.commit({"warm": "1"}, "warm-up")
        else:
            self.s.send("noop", "%040x" % 1)
        self.bench._finished(self.s, m, timeout=60)

    def poller_pid(self):
        return self.s.procs["master"]["proc"].pid

    def polls(self):
        return None

    def push_latency(self, runs):
        out = []
        for i in range(runs):
            m = self.s.events.mark()
            sha = self.repo.commit({"p": "%d\n" % i}, "push %d" % i, push=False)
            self.repo.push("main")
            t_pushed = time.time()
            t_end, ev = self.bench._finished(self.s, m, timeout=60)
            out.append(t_end - t_pushed)
            time.sleep(0.1)
        return out


if __name__ == "__main__":  # a quick look at one figure: buildbot_bench.py WORKDIR FIGURE [N]
    common.one_figure(BuildbotBench, {
        "cold": lambda b, n: b.cold_start(2), "latency": lambda b, n: b.latency(3),
        "throughput": lambda b, n: b.throughput(n or 50, 120), "big": lambda b, n: b.big_output(n or 10**7, 1, 300)})
