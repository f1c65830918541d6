#!/usr/bin/python3
"""scale_poller: what polling many repositories costs, and what a hung remote holds up.

    /usr/bin/python3 bench/scale_poller.py [--before CHECKOUT] [--quick]

The real Poller class runs in-process (no bus, a silent notifier) over
a temporary configuration, spool and state, its GLib main loop running
as in buildunits-poller, one builder per repository (R builders for R
repositories: the O(R x B) of recomputing the repository set per poll
shows).  Each measurement is a process of its own (this script with
--measure), so its CPU is its alone: getrusage of itself and of its
waited-for children (every git).

  - cpu: R local bare repositories (1 / 50 / 500; QUICK=1: 1 / 50),
    PollIntervalSec= of INTERVAL seconds (default 10), nothing pushed.
    After the first polls and an interval and a half, the CPU seconds over
    INTERVALS intervals (default 3; QUICK: 2), per interval, and as a
    share of one CPU; target under 10% at 500.  "after, git every poll"
    is the same code with git.refs_fingerprint() made to trust nothing:
    the cost of a git for-each-ref per poll.
  - hung: 50 local repositories and one remote that never answers (an
    http URL of a socket that listens and never accepts), 1 s interval,
    the remote's time-out HUNG_TIMEOUT (10 s; PollTimeoutSec=, or
    git.GIT_TIMEOUT_SEC where there is no such key).  A commit is pushed
    to one of the others PUSHES times (5; QUICK: 3); how long each waits
    to be queued (median and max), and the longest the main loop went
    without running (a 100 ms timer's largest gap: what the watchdog and
    SIGHUP wait).

--before CHECKOUT (or BEFORE=) measures CHECKOUT's lib/ too, as a
"before" column (e.g. a `git worktree add` of the base commit).  The
repositories are made once under $BENCH_CACHE (default
/var/tmp/buildunits-bench)/scale-poller-v1/ and reused; each measurement
works on fresh directories under a temporary directory.  Prints one
table (size | figure | before | after), writes build/bench/scale_poller.json,
and never fails on a number.
"""

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import common  # noqa: E402  (tests/support, for make_repo and wait_for)

CACHE = os.path.join(common.CACHE, "scale-poller-v1")
QUICK = common.QUICK


# ============================================================ the workload

def repositories(n):
    """Paths of N local bare repositories with one commit each, made once."""
    out = []
    for i in range(n):
        bare = os.path.join(CACHE, "repos", "r%03d.git" % i)
        if not os.path.exists(os.path.join(bare, "refs", "heads", "main")):
            tmp = bare + ".new"
            subprocess.run(["rm", "-rf", tmp, tmp[:-len(".git.new")] + ".work"], check=True)
            r = common.make_repo(tmp, work=tmp[:-len(".git.new")] + ".work")
            r.commit({"README": "r%d\n" % i})
            os.rename(tmp, bare)
        out.append(bare)
    return out


def make_poller(lib, root, repos, interval, extra_daemons=""):
    """A Poller of LIB over fresh directories under ROOT, a builder per
    repository of REPOS."""
    sys.path.insert(0, lib)
    from buildunits import config, log, notify, paths, poller
    from buildunits.bus import NoBus
    log._journal, log._stream = None, io.StringIO()       # its lines are not the bench's
    d = paths.Dirs(config=os.path.join(root, "config"), spool=os.path.join(root, "spool"),
                   state=os.path.join(root, "state"), site=os.path.join(root, "site"))
    os.makedirs(os.path.join(d.config, "builders"))
    with open(os.path.join(d.config, "buildunits.conf"), "w") as f:
        f.write("[Daemons]\n" + extra_daemons)
    for i, repo in enumerate(repos):
        with open(os.path.join(d.config, "builders", "b%03d.builder" % i), "w") as f:
            f.write("[Builder]\nRepository=%s\nPollIntervalSec=%s\nCheckout=no\n[Step s]\nCommand=true\n"
                    % (repo, interval))
    cfg = config.load(d.config)
    p = poller.Poller(d, cfg, NoBus(), notify.Notifier(environ={}))
    p.spool.ensure()
    p.state.ensure()
    return p


def run_loop(seconds, until=None, tick_ms=20):
    """Run the default main loop SECONDS at most, or until UNTIL() is true."""
    from gi.repository import GLib
    loop = GLib.MainLoop()
    deadline = time.monotonic() + seconds

    def check():
        if time.monotonic() >= deadline or (until is not None and until()):
            loop.quit()
            return False
        return True
    if until is None:               # one wake at the end: the bench's own timer costs nothing
        GLib.timeout_add(int(seconds * 1000), lambda: loop.quit() or False)
    else:
        GLib.timeout_add(tick_ms, check)
    loop.run()


def cpu_seconds():
    import resource
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def started(p, repos, timeout):
    """Start P as the daemon does; wait for every repository's first poll."""
    p.startup()
    p.work()
    run_loop(timeout, until=lambda: all(os.path.exists(p.state.poller_path(r)) for r in repos))


# ============================================================ measurements

def measure_cpu(lib, size, interval, intervals, git_every_poll=False):
    repos = repositories(size)
    with tempfile.TemporaryDirectory(prefix="scale-poller-") as root:
        p = make_poller(lib, root, repos, "%gs" % interval)
        from buildunits import git
        if git_every_poll and hasattr(git, "refs_fingerprint"):
            git.refs_fingerprint = lambda repository: None
        started(p, repos, 600)
        # Every timer was armed at once, so polls come in bursts, one an
        # interval: the window starts half an interval after one, and holds
        # INTERVALS whole bursts.
        run_loop(interval * 1.5)
        polls, c0, t0 = p._polls, cpu_seconds(), time.monotonic()
        run_loop(interval * intervals)
        cpu, wall, polls = cpu_seconds() - c0, time.monotonic() - t0, p._polls - polls
        p.stopping = True
        p.shutdown()
    per = cpu / (wall / interval)
    return {"cpu_per_interval_s": per, "cpu_pct": cpu / wall * 100, "polls_per_interval": polls / (wall / interval),
            "wall_s": wall}


def measure_hung(lib, others, timeout, pushes):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    hung = "http://127.0.0.1:%d/hung.git" % listener.getsockname()[1]
    os.environ["no_proxy"] = os.environ["NO_PROXY"] = "*"
    with tempfile.TemporaryDirectory(prefix="scale-poller-") as root:
        made = [common.make_repo(os.path.join(root, "repos", "o%02d.git" % i)) for i in range(others)]
        for r in made:
            r.commit({"README": "first\n"})
        repos = [r.bare for r in made]
        p = make_poller(lib, root, repos + [hung], "1s", "PollTimeoutSec=%gs\n" % timeout)
        from buildunits import git
        git.GIT_TIMEOUT_SEC = timeout             # where polls block the loop, this is their time-out
        result = _hung_run(p, repos, made[:pushes], timeout)
        p.stopping = True
        p.shutdown()
    listener.close()
    return result


def _hung_run(p, repos, pushed, timeout):
    from gi.repository import GLib
    gaps, last = [0.0], [time.monotonic()]

    def tick():
        now = time.monotonic()
        gaps[0] = max(gaps[0], now - last[0])
        last[0] = now
        return True
    started(p, repos, 600 + timeout)
    source = GLib.timeout_add(100, tick)
    waits = []
    for r in pushed:
        sha = r.commit({"n": str(time.time())})
        t0 = last[0] = time.monotonic()       # the stall counts while the loop runs, not while we push
        run_loop(10 * timeout, until=lambda: any(p.spool.read("changes", cid).get("revision") == sha
                                                  for cid in p.spool.pending("changes")))
        waits.append(time.monotonic() - t0)
    GLib.source_remove(source)
    return {"wait_median_s": common.median(waits), "wait_max_s": max(waits), "loop_stall_max_s": gaps[0]}


# ================================================================ the table

def sub(lib, *args):
    """One measurement in a process of its own: its JSON."""
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--lib", lib] + list(args),
                       stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def commit_of(lib):
    p = subprocess.run(["git", "-C", lib, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True)
    dirty = subprocess.run(["git", "-C", lib, "status", "--porcelain", "--", "."], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True).stdout.strip()
    return p.stdout.strip() + ("+changes" if dirty else "") if p.returncode == 0 else lib


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--before", default=os.environ.get("BEFORE"), help="another checkout to measure as 'before'")
    ap.add_argument("--quick", action="store_true", default=QUICK)
    ap.add_argument("--lib", help=argparse.SUPPRESS)
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--git-every-poll", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    interval = float(os.environ.get("INTERVAL", "10"))
    intervals = int(os.environ.get("INTERVALS", "2" if args.quick else "3"))
    timeout = float(os.environ.get("HUNG_TIMEOUT", "10"))
    pushes = int(os.environ.get("PUSHES", "3" if args.quick else "5"))
    if args.measure == "cpu":
        print(json.dumps(measure_cpu(args.lib, args.size, interval, intervals, args.git_every_poll)))
        return 0
    if args.measure == "hung":
        print(json.dumps(measure_hung(args.lib, args.size, timeout, pushes)))
        return 0
    return report(args, interval, intervals, timeout, pushes)


def report(args, interval, intervals, timeout, pushes):
    sizes = (1, 50) if args.quick else (1, 50, 500)
    repositories(max(sizes))        # made once, before any clock runs
    sides = [("before", os.path.join(os.path.abspath(args.before), "lib"))] if args.before else []
    sides.append(("after", os.path.join(ROOT, "lib")))
    rows, data = [], {"interval_s": interval, "intervals": intervals, "hung_timeout_s": timeout,
                      "machine": common.machine(CACHE), "code": {s: commit_of(lib) for s, lib in sides}}
    for n in sizes:
        got = {s: sub(lib, "--measure", "cpu", "--size", str(n)) for s, lib in sides}
        got["after, git every poll"] = sub(sides[-1][1], "--measure", "cpu", "--size", str(n), "--git-every-poll")
        data["cpu R=%d" % n] = got
        for key, label, scale, unit in (("cpu_per_interval_s", "CPU per %gs interval" % interval, 1000, "ms"),
                                        ("cpu_pct", "share of one CPU", 1, "%"),
                                        ("polls_per_interval", "polls per interval", 1, "")):
            rows.append((str(n), label, [(got[s] or {}).get(key) for s in ("before", "after", "after, git every poll")
                                         if s in got], scale, unit))
    got = {s: sub(lib, "--measure", "hung", "--size", "50") for s, lib in sides}
    data["hung"] = got
    for key, label in (("wait_median_s", "others' change waits, median"), ("wait_max_s", "others' change waits, max"),
                       ("loop_stall_max_s", "longest main-loop stall")):
        rows.append(("50+1 hung", label, [(got[s] or {}).get(key) for s, _l in sides], 1, "s"))
    print_table(rows, [s for s, _l in sides] + ["after, git every poll"], data)
    common.write_json(os.path.join(ROOT, "build", "bench", "scale_poller.json"), data)
    return 0


def print_table(rows, columns, data):
    print("scale_poller: %s; interval %gs, hung remote's time-out %gs"
          % (", ".join("%s = %s" % kv for kv in data["code"].items()), data["interval_s"], data["hung_timeout_s"]))
    head = ["size", "figure"] + columns
    lines = [head] + [[size, label] + ["-" if v is None else common.fmt(v * scale) + (" " + unit if unit else "")
                                       for v in values] for size, label, values, scale, unit in rows]
    widths = [max(len(line[i]) if i < len(line) else 0 for line in lines) for i in range(len(head))]
    for j, line in enumerate(lines):
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(line)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))
    print("target: under 10%% of one CPU at 500 repositories; %s" % "figures are reported, never judged")


if __name__ == "__main__":
    sys.exit(main())
