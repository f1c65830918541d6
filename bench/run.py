#!/usr/bin/python3
"""`make bench`: buildunits and Buildbot side by side, on this machine, now.

    make bench            # the whole run, under 10 minutes
    make bench QUICK=1    # fewer repeats and smaller workloads, under 2 minutes

Sets up both systems in a temporary directory under the bench cache
(BENCH_CACHE, default /var/tmp/buildunits-bench: a disk, not a tmpfs, so
fsyncs cost what they cost), runs the same workloads on both, and prints
one table: each figure's median with min and max over the runs, for
buildunits and for Buildbot, how many times better buildunits is, and
buildunits' target.  Nothing passes or fails on time: the exit status is 0
whatever the figures (1 only if the bench itself broke).

Writes the table and every detail as JSON to build/bench/results.json, and
as Markdown to docs/BENCHMARKS.md, below the page's hand-written analysis
(a QUICK run writes both to build/bench/quick/ instead, so a short run
never replaces the published figures).  Figures only: what they mean is
written by hand.  KEEP=1 keeps the temporary directory (daemon logs,
profiles).

The figures, the workloads behind them and how each is measured:
bench/README.md.
"""

import os
import shutil
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True   # no __pycache__ in the checkout

import common  # noqa: E402
from common import figure, summary, single  # noqa: E402

QUICK = common.QUICK
CACHE = common.CACHE
OUT_DIR = os.path.join(REPO_ROOT, "build", "bench", "quick" if QUICK else "")

# Repeats and sizes: (full, quick).
P = {
    "noise reps": (15, 7),
    "cold runs": (5, 3),
    "cold runs buildbot": (4, 2),
    "latency runs": (20, 5),
    "latency runs buildbot": (8, 2),
    "throughput builds": (500, 100),
    "throughput builds buildbot": (500, 40),
    "throughput cap buildbot s": (150, 20),
    "throughput checkout builds": (200, 0),
    "idle window s": (30, 6),
    "strace window s": (6, 4),
    "push runs": (7, 3),
    "big bytes": (10 ** 9, 2 * 10 ** 8),
    "big runs": (5, 2),
    "big bytes buildbot": (3 * 10 ** 7, 10 ** 7),
    "big cap buildbot s": (60, 20),
    "diagnostic latency runs": (15, 0),
    "profile latency runs": (10, 0),
    "profile builds": (150, 0),
}
BUDGET_S = 110 if QUICK else 580


def p(name):
    return P[name][1 if QUICK else 0]


T0 = time.monotonic()


def say(msg):
    sys.stderr.write("[bench %5.1fs] %s\n" % (time.monotonic() - T0, msg))
    sys.stderr.flush()


def left():
    return BUDGET_S - (time.monotonic() - T0)


def ms(values):
    return summary(values, 1000.0)


# ================================================================= phases

def run_cold(bu, bb, res):
    say("5. cold start: buildunits (%d runs, with bytecode and without)" % p("cold runs"))
    res["cold"] = {"buildunits": bu.cold_start(p("cold runs")),
                   "buildunits_nopyc": bu.cold_start(max(2, p("cold runs") // 2), bytecode=False)}
    if bb:
        say("5. cold start: Buildbot (%d runs)" % p("cold runs buildbot"))
        res["cold"]["buildbot"] = bb.cold_start(p("cold runs buildbot"), warm_up=not QUICK)


def run_latency(bu, bb, res):
    say("1. latency: buildunits (%d runs per builder)" % p("latency runs"))
    res["latency"] = {"buildunits": bu.latency(p("latency runs"))}
    if bb:
        say("1. latency: Buildbot (%d runs per builder)" % p("latency runs buildbot"))
        res["latency"]["buildbot"] = bb.latency(p("latency runs buildbot"))


def run_latency_diagnostics(bu, res):
    """The noop latency again without htmlgen, with one runner and no
    htmlgen, and with htmlgen at nice 10: what the other daemons' work on
    the same CPUs costs a build."""
    n = p("diagnostic latency runs")
    if not n:
        return
    say("1. latency diagnostics: without htmlgen, one runner alone, htmlgen niced (%d runs each)" % n)
    d = res.setdefault("latency_diagnostics", {})
    d["without htmlgen"] = bu.latency(n, keys=("poller", "scheduler", "runner@w1", "runner@w2"),
                                      builders=("noop",), label="-nohtmlgen")["noop"]
    d["one runner, without htmlgen"] = bu.latency(n, keys=("poller", "scheduler", "runner@w1"),
                                                  builders=("noop",), label="-onerunner")["noop"]
    d["htmlgen at nice 10"] = bu.latency(n, builders=("noop",), label="-nicehtmlgen", nice={"htmlgen": 10})["noop"]


def run_memory_floor(bu, res):
    import buildunits_bench as bub
    res["memory_floor"] = bub.memory_floor(os.path.join(os.path.dirname(bu.bindir), "lib"))


def run_idle(bu, bb, res, tmp):
    """3 and 4: the four idle setups at once (idle CPU is CPU time, which
    setups on other cores hardly disturb), then each poller traced, then
    the push latencies one setup at a time."""
    window = p("idle window s")
    setups = {("buildunits", True): bu.idle_setup(True), ("buildunits", False): bu.idle_setup(False)}
    if bb:
        setups[("buildbot", True)] = bb.idle_setup(True)
        setups[("buildbot", False)] = bb.idle_setup(False)
    out = {}
    try:
        say("3/4. idle: starting %d setups (polling at 1 s, and nothing to poll)" % len(setups))
        for k, s in setups.items():
            s.start()
        time.sleep(1.0)
        say("4. idle: CPU over %d s" % window)
        cpu0 = {k: s.cpu() for k, s in setups.items()}
        polls0 = {k: s.polls() for k, s in setups.items()}
        t0 = time.time()
        time.sleep(window)
        t1 = time.time()
        cpu1 = {k: s.cpu() for k, s in setups.items()}
        polls1 = {k: s.polls() for k, s in setups.items()}
        for k, s in setups.items():
            name = "%s %s" % (k[0], "poll" if k[1] else "nopoll")
            per = {d: cpu1[k].get(d, 0) - cpu0[k].get(d, 0) for d in cpu1[k]}
            out[name] = {"window_s": t1 - t0, "cpu_s": sum(per.values()), "cpu_per_daemon_s": per,
                         "polls": (polls1[k] - polls0[k]) if polls1[k] is not None else None,
                         "memory": s.memory()}
            if k[0] == "buildunits":
                out[name]["cpu_kind"] = s.s.cpu_kind()
                out[name]["dbus_daemon"] = common.memory_of({"dbus-daemon": s.s.bus.proc.pid})
        say("3. one poll of an unchanged repository: tracing execve for %d s" % p("strace window s"))
        import threading
        traces = {}

        def trace(k, s):
            traces[k] = common.trace_execs(s.poller_pid(), p("strace window s"),
                                           os.path.join(tmp, "strace-%s.txt" % k[0]))

        ts = [threading.Thread(target=trace, args=(k, s)) for k, s in setups.items() if k[1]]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for k, execs in traces.items():
            name = "%s poll" % k[0]
            if execs is None:
                out[name]["execs"] = None
                continue
            groups = common.cluster(execs)
            # A burst cut by the window's edges is not a whole poll.
            whole = groups[1:-1] if len(groups) > 2 else groups
            out[name]["execs_per_poll"] = [len(g) for g in whole]
            out[name]["exec_programs"] = [[os.path.basename(e[1]) + " " + e[2][:100] for e in g] for g in whole[:1]]
            if len(groups) >= 2:
                out[name]["poll_period_s"] = (groups[-1][0][0] - groups[0][0][0]) / (len(groups) - 1)
        for k, s in setups.items():
            if k[1]:
                say("3. push to build finished, polling at 1 s: %s (%d pushes)" % (k[0], p("push runs")))
                out["%s poll" % k[0]]["push"] = s.push_latency(p("push runs"))
    finally:
        for s in setups.values():
            try:
                s.stop()
            except Exception as e:
                say("stopping an idle setup: %s" % e)
    res["idle"] = out


def run_throughput(bu, bb, res):
    n = p("throughput builds")
    say("2. throughput: buildunits, %d builds" % n)
    res["throughput"] = {"buildunits": bu.throughput(n, timeout=max(60, min(300, left() - 120)))}
    if p("throughput checkout builds"):
        n2 = p("throughput checkout builds")
        say("2. throughput: buildunits, %d builds with a checkout each" % n2)
        res["throughput"]["buildunits_checkout"] = bu.throughput(n2, timeout=120, checkout=True)
    if bb:
        nb = p("throughput builds buildbot")
        # Leave room for what comes after (big output, profiles, site figures).
        cap = max(20, min(p("throughput cap buildbot s"), left() - (200 if not QUICK else 40)))
        say("2. throughput: Buildbot, %d builds (stopping after %.0f s)" % (nb, cap))
        res["throughput"]["buildbot"] = bb.throughput(nb, timeout=cap)


def run_big(bu, bb, res):
    nb = p("big bytes")
    say("6. a step printing %d MB: buildunits (%d runs)" % (nb // 10 ** 6, p("big runs")))
    res["big"] = {"buildunits": bu.big_output(nb, p("big runs"))}
    if bb:
        nbb = p("big bytes buildbot")
        say("6. a step printing %d MB: Buildbot" % (nbb // 10 ** 6))
        res["big"]["buildbot"] = bb.big_output(nbb, 1, timeout=p("big cap buildbot s"))


def run_profile(bu, res):
    if not p("profile builds"):
        return
    say("profiling the buildunits daemons (cProfile): %d latency runs, %d throughput builds"
        % (p("profile latency runs"), p("profile builds")))
    res["profiles"] = bu.profile(p("profile latency runs"), p("profile builds"), timeout=120)


def run_site(res):
    """Item 7: bench/site_bench.py's figures, when it is there.  Its full
    run (100k builds of history) takes longer than all of make bench may,
    so make bench runs its quick mode (1k and 10k builds), and none in a
    QUICK run; BENCH_SITE_FULL=1 asks for its full run."""
    path = os.path.join(HERE, "site_bench.py")
    if not os.path.exists(path):
        return
    full = os.environ.get("BENCH_SITE_FULL", "") not in ("", "0")
    if QUICK and not full:
        res["site_skipped"] = "not run in a QUICK run (bench/site_bench.py --quick takes about half a minute)"
        return
    import importlib.util
    spec = importlib.util.spec_from_file_location("site_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "run"):
        return
    say("7. site figures (bench/site_bench.py%s)" % ("" if full else ", its quick mode"))
    res["site_mode"] = "full" if full else "quick (1k and 10k builds; BENCH_SITE_FULL=1 for 100k)"
    res["site"] = mod.run(not full)


# ================================================================ figures

def figures(res):
    F = []
    lat = res.get("latency", {})
    lu, lb = lat.get("buildunits", {}), lat.get("buildbot", {})
    for b, what in (("noop", "2 no-op steps"), ("checkout", "checkout + 2 no-op steps")):
        u, o = lu.get(b, {}), lb.get(b, {})
        F.append(figure("1.", "latency, change accepted -> build finished (%s)" % what, "ms",
                        ms(u.get("accepted", [])), ms(o.get("accepted", [])), target=10,
                        note="from the change committed to the spool (buildunits) or added to the database "
                             "(Buildbot) to the system announcing the build finished"))
        F.append(figure("1.", "latency, sendchange command started -> build finished (%s)" % what, "ms",
                        ms(u.get("command", [])), ms(o.get("command", [])),
                        note="`buildunits sendchange` / `buildbot sendchange`, as a git hook runs them; "
                             "includes the command's interpreter start"))
    tp = res.get("throughput", {})
    tu, tb = tp.get("buildunits"), tp.get("buildbot")

    def rate_summary(t):
        if not t or not t.get("done"):
            return None
        w = t.get("windows") or [t["rate"]]
        return {"value": t["rate"], "min": min(w + [t["rate"]]), "max": max(w + [t["rate"]]), "runs": 1}

    F.append(figure("2.", "throughput, %s no-op builds, 2 workers" % (tu or {}).get("n", ""), "builds/s",
                    rate_summary(tu), rate_summary(tb), target=200, better="higher",
                    note="all changes handed in at once, no collapsing; one run: the value is done/elapsed, "
                         "min and max are those of %d-build windows%s" % (
                             max(10, (tu or {}).get("n", 100) // 5),
                             "; Buildbot: %d of %d builds done when stopped after %.0f s" % (
                                 tb["done"], tb["n"], tb["seconds"]) if tb and tb.get("timed_out") else
                             ("; Buildbot: %d builds" % tb["n"] if tb else ""))))
    tc = tp.get("buildunits_checkout")
    if tc:
        F.append(figure("2.", "throughput, %d builds with a checkout each, 2 workers" % tc["n"], "builds/s",
                        rate_summary(tc), None, better="higher", note="buildunits only: the implicit checkout step"))
    F.append(figure("2.", "CPU per build during the throughput run (all processes)", "ms",
                    single(tu["cpu_s"] / tu["done"] * 1000) if tu and tu.get("done") else None,
                    single(tb["cpu_s"] / tb["done"] * 1000) if tb and tb.get("done") else None,
                    note="CPU time of every daemon and step process, per build"))
    idle = res.get("idle", {})
    up, bp = idle.get("buildunits poll", {}), idle.get("buildbot poll", {})
    un, bn = idle.get("buildunits nopoll", {}), idle.get("buildbot nopoll", {})
    F.append(figure("3.", "push -> build finished, polling at 1 s", "ms", ms(up.get("push", [])),
                    ms(bp.get("push", [])),
                    note="git push returned -> build finished; half the interval on average, plus the build "
                         "(checkout + 2 no-op steps)"))

    def execs(d):
        v = d.get("execs_per_poll")
        return summary(v) if v else None

    F.append(figure("3.", "processes spawned by one poll of an unchanged repository", "processes",
                    execs(up), execs(bp), target=1, note="successful execve calls per poll (strace -f)"))

    def poll_cpu(pd, nd, side):
        if not pd or not nd:
            return None
        polls = pd.get("polls")
        if not polls:
            period = pd.get("poll_period_s")
            polls = pd["window_s"] / period if period else None
        if not polls:
            return None
        extra = pd["cpu_s"] - nd["cpu_s"] * pd["window_s"] / nd["window_s"]
        return single(max(0.0, extra) / polls * 1000, runs=int(round(polls)))

    F.append(figure("3.", "CPU per poll of an unchanged repository", "ms", poll_cpu(up, un, "bu"),
                    poll_cpu(bp, bn, "bb"), target=5,
                    note="(CPU over the idle window with polling - without) / polls in the window; "
                         "git included"))

    def pct(d):
        return single(d["cpu_s"] / d["window_s"] * 100) if d else None

    F.append(figure("4.", "idle CPU, polling one repository at 1 s", "% of a CPU", pct(up), pct(bp),
                    note="all daemons and their children, over %s s" % fmt_s(up.get("window_s"))))
    F.append(figure("4.", "idle CPU, nothing to poll", "% of a CPU", pct(un), pct(bn), target=0,
                    note="all daemons and their children, over %s s" % fmt_s(un.get("window_s"))))

    def mem(d, key):
        return single(d["memory"][key]) if d and d.get("memory") else None

    F.append(figure("4.", "memory of all daemons, PSS", "MiB", mem(up, "pss_mib"), mem(bp, "pss_mib"), target=40,
                    note="buildunits: poller, scheduler, htmlgen, 2 runners; Buildbot: master, 2 workers; "
                         "idle after a build (smaps_rollup)"))
    F.append(figure("4.", "memory of all daemons, RSS", "MiB", mem(up, "rss_mib"), mem(bp, "rss_mib")))
    cold = res.get("cold", {})
    F.append(figure("5.", "cold start of all daemons to READY=1", "s",
                    summary(cold.get("buildunits", {}).get("total", [])),
                    summary(cold.get("buildbot", {}).get("total", [])), target=0.5,
                    note="buildunits: 5 daemons started at once, to the last READY=1 on their notify sockets; "
                         "Buildbot: the master to 'BuildMaster is running', then the 2 workers to connected"))
    if cold.get("buildunits_nopyc"):
        F.append(figure("5.", "cold start, no bytecode cache (installed read-only, as `make install` leaves it)",
                        "s", summary(cold["buildunits_nopyc"]["total"]), None, target=0.5))
    big = res.get("big", {})
    gu, gb = big.get("buildunits"), big.get("buildbot")
    F.append(figure("6.", "a step printing %s: peak RSS of the runner (Buildbot: worker + master)"
                    % size_text(gu["bytes"] if gu else p("big bytes")), "MiB",
                    single(gu["runner_hwm_mib"]) if gu else None,
                    single(gb["master_hwm_mib"] + gb["worker_hwm_mib"]) if gb else None, target=50,
                    note="VmHWM; Buildbot printed %s (it moves the output through the master's database: "
                         "1 GB would take minutes)" % size_text(gb["bytes"]) if gb else ""))

    def overhead(g, key):
        if not g or not g.get(key):
            return None
        n = min(len(g[key]), len(g["direct"]))
        v = [(g[key][i] / g["direct"][i] - 1) * 100 for i in range(n)]
        return summary(v)

    F.append(figure("6.", "a step printing output: its time over writing the file directly", "% slower",
                    overhead(gu, "step"), overhead(gb, "build"), target=10,
                    note="buildunits: the step's time in its record; Buildbot: build started -> finished; "
                         "each against `sh -c CMD > file` run just before"))
    for r in res.get("site") or []:
        t = r.get("target")
        try:
            tv = float(str(t).split()[1].rstrip("x")) if str(t).startswith("<=") else t
        except (IndexError, ValueError):
            tv = t
        F.append(figure("7.", r["name"], r["unit"], {"value": r["value"], "min": r["min"], "max": r["max"],
                                                     "runs": r["runs"]}, None, target=tv,
                        note="bench/site_bench.py; target: %s" % t))
    return F


def fmt_s(v):
    return "%.0f" % v if v else "?"


def size_text(n):
    if n >= 10 ** 9:
        return "%g GB" % (n / 10 ** 9)
    return "%g MB" % (n / 10 ** 6)


# ================================================================ reports

def where_time_goes(res):
    """Text: the phases of one build, each side."""
    out = []
    lat = res.get("latency", {})
    for side, title in (("buildunits", "buildunits"), ("buildbot", "Buildbot")):
        d = lat.get(side)
        if not d:
            continue
        for b in ("noop", "checkout"):
            ph = d.get(b, {}).get("phases")
            if not ph:
                continue
            import buildunits_bench
            med = buildunits_bench.median_phases(ph)
            total = common.median(d[b]["accepted"]) * 1000
            out.append("%s, builder %s (median of %d runs; accepted -> finished %.1f ms):" % (
                title, b, len(ph), total))
            for k, v in med.items():
                out.append("    %-72s %8.1f ms" % (k, v))
            out.append("")
    return "\n".join(out)


def details_text(res):
    out = []
    idle = res.get("idle", {})
    for name in ("buildunits poll", "buildunits nopoll", "buildbot poll", "buildbot nopoll"):
        d = idle.get(name)
        if not d:
            continue
        out.append("%s: CPU %.1f ms over %.1f s (%s); %s" % (
            name, d["cpu_s"] * 1000, d["window_s"], ", ".join("%s %.1f ms" % (k, v * 1000)
                                                              for k, v in sorted(d["cpu_per_daemon_s"].items())),
            "%d polls" % d["polls"] if d.get("polls") is not None else "polls not counted"))
        mem = d.get("memory", {}).get("per_process", {})
        out.append("    memory: " + ", ".join("%s %.1f MiB PSS / %.1f RSS" % (k, v["pss_mib"], v["rss_mib"])
                                              for k, v in sorted(mem.items())))
        if d.get("dbus_daemon"):
            out.append("    (not counted: the private dbus-daemon, %.1f MiB PSS; a host has a system bus anyway)"
                       % d["dbus_daemon"]["pss_mib"])
        if d.get("exec_programs"):
            out.append("    one poll spawned: " + "; ".join(d["exec_programs"][0]))
    cold = res.get("cold", {})
    if cold.get("buildunits"):
        out.append("cold start, buildunits, each daemon's own median: " + ", ".join(
            "%s %.0f ms" % (k, v * 1000) for k, v in cold["buildunits"]["per_daemon"].items()))
    if cold.get("buildbot"):
        out.append("cold start, Buildbot: master %.0f ms, then workers %.0f ms (medians)" % (
            common.median(cold["buildbot"]["master"]) * 1000, common.median(cold["buildbot"]["workers"]) * 1000))
    for side in ("buildunits", "buildunits_checkout", "buildbot"):
        t = res.get("throughput", {}).get(side)
        if t:
            out.append("throughput %s: %d/%d builds in %.1f s (%.1f builds/s; handing in took %s), %d failed; "
                       "windows: %s builds/s; CPU %.1f s" % (
                           side, t["done"], t["n"], t["seconds"], t["rate"],
                           "%.2f s" % t["handing_in_s"] if t.get("handing_in_s") else "longer than the run",
                           t["failed"],
                           ", ".join("%.1f" % w for w in t["windows"]), t["cpu_s"]))
    big = res.get("big", {})
    for side, g in big.items():
        if g:
            parts = ["%s: %s" % (k, ", ".join("%.2f s" % x for x in g[k])) for k in ("direct", "step", "build",
                                                                                     "end_to_end") if g.get(k)]
            out.append("big output %s (%s): %s; %s" % (side, size_text(g["bytes"]), "; ".join(parts), ", ".join(
                "%s %.1f MiB" % (k, v) for k, v in g.items() if k.endswith("_mib"))))
    return "\n".join(out)


# The published page is a hand-written part (what the figures mean, what
# stands in the way of the targets), then this line, then what a run writes.
MARKER = "<!-- Everything below is written by make bench (bench/run.py); edit above this line. -->"
HEAD = "# Benchmarks: buildunits and Buildbot side by side\n"


def write_page(path, generated):
    """Replace what follows MARKER in PATH by GENERATED, keeping what is
    above it (HEAD if PATH is new or has no marker)."""
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read().partition(MARKER)[0] or HEAD
    except FileNotFoundError:
        head = HEAD
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(head.rstrip("\n") + "\n\n" + MARKER + "\n\n" + generated)
    os.rename(path + ".tmp", path)


def costs_text(costs):
    """What one unit of a daemon's work (a build, a request, a pass) cost,
    from buildunits_bench.profile_costs(): calls and own time of each kind."""
    u = costs.get("units") or 0
    if not u:
        return ""
    parts = ["%s %.1f x, %.2f ms" % (k, calls / u, ms / u)
             for k, (calls, ms) in sorted(costs["costs"].items(), key=lambda kv: -kv[1][1])]
    return "Per %s (%d of them): %s." % (costs["per"], u, "; ".join(parts))


def markdown(res, F, elapsed, md_dir):
    m = res["machine"]
    lines = ["## Results", "",
             "Written by `make bench%s` (bench/run.py) on %s in %.0f s." % (
                 " QUICK=1" if QUICK else "", m["date"], elapsed),
             "How each figure is measured: [bench/README.md](%s). Targets are buildunits'; "
             "they are printed, never checked." % os.path.relpath(os.path.join(HERE, "README.md"), md_dir), "",
             "Each cell: median (min-max, runs). The ratio is how many times better buildunits is "
             "(Buildbot's median over buildunits', or the reverse for builds/s).", "",
             common.markdown_table(F), ""]
    notes = [(f["id"] + " " + f["name"], f["note"]) for f in F if f.get("note")]
    if notes:
        lines += ["Notes:", ""] + ["- %s: %s" % n for n in notes] + [""]
    lines += ["## The machine", "", "| | |", "|---|---|"]
    lines += ["| %s | %s |" % (k, v) for k, v in m.items()]
    bbv = res.get("buildbot_version")
    if bbv:
        lines.append("| Buildbot | buildbot %s, buildbot-worker %s, Twisted %s, Python %s (virtualenv in %s) |"
                     % tuple(bbv + [res.get("buildbot_venv", "")]))
    lines += ["", "How noisy it was (a fixed CPU loop and an fsync'd write, timed repeatedly at the start and "
              "at the end of the run; spread = (max-min)/median):", ""]
    for when in ("start", "end"):
        n = res.get("noise", {}).get(when)
        if n:
            lines.append("- %s: cpu loop %.1f ms (spread %.0f%%), fsync'd write %.2f ms (spread %.0f%%), "
                         "load average %s" % (when, n["cpu loop"]["median_ms"], n["cpu loop"]["spread_pct"],
                                              n["fsync'd 512-byte write"]["median_ms"],
                                              n["fsync'd 512-byte write"]["spread_pct"], n["load average"]))
    ld = res.get("noise", {}).get("machine load")
    if ld:
        lines.append("- during the run the machine's CPUs were %.0f%% busy: %.0f%% this bench, %.0f%% other "
                     "processes (from /proc/stat and the bench's own getrusage)" % (
                         ld["busy_pct"], ld["bench_pct"], ld["others_pct"]))
    lines += ["", "## Where the time goes", "",
              "Phases of one build from the records' own timestamps (buildunits) or the master's events "
              "(Buildbot):", "", "```", where_time_goes(res).rstrip(), "```", "",
              "Other details:", "", "```", details_text(res), "```", ""]
    floor = res.get("memory_floor")
    if floor:
        lines += ["## What the imports weigh", "",
                  "An idle interpreter holding the daemons' imports, one process alone (so PSS counts shared "
                  "libraries whole; 'private' is what each more process adds):", "",
                  "| imports | RSS MiB | PSS MiB | private MiB |", "|---|---|---|---|"]
        lines += ["| %s | %.1f | %.1f | %.1f |" % (r["what"], r["rss_mib"], r["pss_mib"], r["private_mib"])
                  for r in floor] + [""]
    prof = res.get("profiles")
    if prof:
        lines += ["## Profiles", "",
                  "Each buildunits daemon run under `python3 -m cProfile` through the latency workload "
                  "(%d builds of each builder, one at a time) and the throughput workload (%d builds at once). "
                  "Times are inflated by the profiler; the proportions are what matter." % (
                      p("profile latency runs") + 1, p("profile builds")), ""]
        for what, daemons in prof.items():
            for k, v in daemons.items():
                lines += ["### %s: %s" % (what, k), "", "```", v["text"].rstrip(), "```", ""]
                if v.get("costs"):
                    lines += [costs_text(v["costs"]), ""]
    else:
        lines += ["## Profiles", "", "Not made in a QUICK run.", ""]
    if res.get("errors"):
        lines += ["## Errors", "", "```"] + res["errors"] + ["```", ""]
    return "\n".join(lines)


# =================================================================== main

def main():
    os.makedirs(CACHE, exist_ok=True)
    os.environ["BENCH_DIR"] = CACHE
    tmp = tempfile.mkdtemp(prefix="run-", dir=CACHE)
    res = {"quick": QUICK, "errors": []}
    say("%s run in %s (budget %d s)" % ("QUICK" if QUICK else "full", tmp, BUDGET_S))
    res["machine"] = common.machine(tmp)
    res["noise"] = {"start": common.noise(p("noise reps"))}
    load0 = common.cpu_snapshot()
    import buildunits_bench
    import buildbot_bench
    bu = buildunits_bench.BuildunitsBench(tmp, QUICK, log=say)
    bb = None
    try:
        bb = buildbot_bench.BuildbotBench(tmp, QUICK, log=say)
        res["buildbot_version"] = bb.version
        res["buildbot_venv"] = bb.venv
    except Exception as e:
        res["errors"].append("Buildbot could not be set up: %s" % e)
        say("Buildbot could not be set up; buildunits alone: %s" % e)
    phases = [("cold", lambda: run_cold(bu, bb, res)),
              ("latency", lambda: run_latency(bu, bb, res)),
              ("latency diagnostics", lambda: run_latency_diagnostics(bu, res)),
              ("memory floor", lambda: run_memory_floor(bu, res)),
              ("idle", lambda: run_idle(bu, bb, res, tmp)),
              ("throughput", lambda: run_throughput(bu, bb, res)),
              ("big", lambda: run_big(bu, bb, res)),
              ("profile", lambda: run_profile(bu, res)),
              ("site", lambda: run_site(res))]
    for name, fn in phases:
        try:
            fn()
        except Exception:
            msg = "%s: %s" % (name, traceback.format_exc())
            res["errors"].append(msg)
            say("phase %s failed:\n%s" % (name, msg))
    res["noise"]["end"] = common.noise(p("noise reps"))
    res["noise"]["machine load"] = common.other_load(load0, common.cpu_snapshot())
    elapsed = time.monotonic() - T0
    res["elapsed_s"] = elapsed
    F = figures(res)
    res["figures"] = F
    table = common.text_table(F)
    print()
    print("buildunits vs Buildbot %s on %s (%s CPUs, %s), %s%s" % (
        res.get("buildbot_version", ["?"])[0], res["machine"]["cpu"], res["machine"]["cpus"],
        res["machine"]["memory"], res["machine"]["date"], " QUICK" if QUICK else ""))
    n0, n1 = res["noise"]["start"], res["noise"]["end"]
    ld = res["noise"]["machine load"]
    print("noise: cpu loop spread %.0f%% at the start, %.0f%% at the end; fsync'd write %.2f ms median; "
          "the machine was %.0f%% busy, %.0f%% of it not this bench"
          % (n0["cpu loop"]["spread_pct"], n1["cpu loop"]["spread_pct"], n0["fsync'd 512-byte write"]["median_ms"],
             ld["busy_pct"], ld["others_pct"]))
    print()
    print(table)
    print()
    json_path = os.path.join(OUT_DIR, "results.json")
    common.write_json(json_path, res)
    md_path = os.path.join(OUT_DIR, "BENCHMARKS.md") if QUICK else os.path.join(REPO_ROOT, "docs", "BENCHMARKS.md")
    write_page(md_path, markdown(res, F, elapsed, os.path.dirname(md_path)))
    print("results: %s and %s (%.0f s)" % (os.path.relpath(json_path, REPO_ROOT), os.path.relpath(md_path, REPO_ROOT),
                                           elapsed))
    if res["errors"]:
        print("%d phase(s) failed; see the errors in %s" % (len(res["errors"]), os.path.relpath(md_path, REPO_ROOT)))
    if os.environ.get("KEEP"):
        print("kept %s" % tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
