#!/usr/bin/python3
"""What running build steps behind the boundary costs, under a real systemd.

    /usr/bin/python3 bench/boundary_bench.py        # make bench-boundary (make bench runs it too)
    QUICK=1 /usr/bin/python3 bench/boundary_bench.py

Boots the system tests' container (tests/support/container.py: a Debian
tree under systemd-nspawn, cached in /var/cache/buildunits-test), installs
the project with `make install`, configures one builder with two no-op
steps (`Command=true`, no repository, so no checkout step) and starts
buildunits.target with one runner.  Then, three ways, the same workload:
`sandbox`, `[Daemons] Executor=transient` (the builder's steps one after
another in its sandbox unit, started once by buildunits-launcher); `unit
per step`, the same with `UnitPerStep=yes` in the builder (each step a
transient unit of its own); and `local`, `Executor=local` (each step a
child process of the runner, not isolated):

  latency     N forced builds one after the other, each waited for: the
              build record's own started -> finished, each step's started
              -> finished, and the Force call -> the record's finished;
  throughput  M forced builds queued at once (one process calling the
              scheduler's Force M times over the bus): from the first call
              to the last record's finished -> builds/s, and the CPU time
              per build of the runner, the launcher, systemd (PID 1) and of
              everything in the container;
  memory      RSS and PSS (/proc/PID/smaps_rollup) of the runner, the
              launcher and systemd after the runs, and the runner's peak
              RSS (VmHWM).

The runner is restarted between them (`systemctl restart
buildunits-runner@1`), and the journal is checked to say which executor
it uses; the launcher is stopped for the local runs (it is not used).
A few builds first, not counted, warm each up (the launcher is
socket-activated and starts on the first step; the sandbox is set up by
the first build and kept).

Prints one table, figure | sandbox | unit per step | local, and what each
of the first two costs a step more than local, and writes every value to
build/bench/boundary.json.
Exit status 0 whatever the figures, also when containers cannot run here
(it says why); 1 only when the bench itself broke.
"""

import json
import os
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
sys.dont_write_bytecode = True   # no __pycache__ in the checkout

QUICK = os.environ.get("QUICK", "") not in ("", "0", "no")
OUT = os.path.join(REPO_ROOT, "build", "bench", "boundary.json")
BUILDER = "noop"
STEPS = 2
WARMUP = 3
LATENCY_RUNS = 8 if QUICK else 40
THROUGHPUT_BUILDS = 30 if QUICK else 200
RUNNER = "buildunits-runner@1"
DAEMONS = ("buildunits-poller", "buildunits-scheduler", "buildunits-htmlgen", RUNNER)

NOOP = """\
[Builder]
Description=two no-op steps
%s
[Step one]
Command=true

[Step two]
Command=true
"""

# Runs inside the container, as root: forces builds over the bus and reads
# their records with the installed library.  Prints one JSON object.
DRIVER = r'''
import json, os, sys, time
sys.path.insert(0, "/usr/lib/buildunits/python")
from buildunits import bus
from buildunits.state import State

what, builder, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
state = State("/var/lib/buildunits")
TICK = os.sysconf("SC_CLK_TCK")
ME = os.getpid()


def last_number():
    d = "/var/lib/buildunits/builds/" + builder
    try:
        return max([int(n) for n in os.listdir(d) if n.isdigit()] or [0])
    except FileNotFoundError:
        return 0


def finished(n, deadline):
    while time.time() < deadline:
        try:
            rec = state.read_build(builder, n)
        except Exception:
            rec = None
        if rec and rec.get("state") == "finished":
            return rec
        time.sleep(0.005)
    raise SystemExit("%s #%d did not finish in time" % (builder, n))


def force():
    bus.call("Scheduler", "Force", builder, "", "", "bench", {})


def cpu(pid):
    """(own, own + waited-for children) CPU seconds of PID, or (0, 0)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            f = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    u, s, cu, cs = (int(x) / TICK for x in f[11:15])
    return u + s, u + s + cu + cs


def pid_of(unit):
    import subprocess
    out = subprocess.run(["systemctl", "show", "-P", "MainPID", unit], stdout=subprocess.PIPE, text=True).stdout
    return int(out.strip() or 0)


def cpu_sample():
    """Own CPU of the runner, the launcher and PID 1, and the CPU of every
    process in the container but this one (own + reaped children: a
    process that ended is counted in its parent's)."""
    total = 0.0
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != ME:
            total += cpu(int(name))[1]
    return {"runner": cpu(pid_of("buildunits-runner@1"))[0], "launcher": cpu(pid_of("buildunits-launcher"))[0],
            "systemd": cpu(1)[0], "all": total}


def summary(rec, t_call=None):
    steps = rec["steps"]
    out = {"number": rec["number"], "result": rec["result"], "started": rec["started"],
           "finished": rec["finished"], "build_s": rec["finished"] - rec["started"],
           "steps": [s["name"] for s in steps],
           "step_s": [s["finished"] - s["started"] for s in steps if s.get("started") and s.get("finished")]}
    if steps and steps[0].get("started") and steps[-1].get("finished"):
        out["before_first_step_s"] = steps[0]["started"] - rec["started"]
        out["after_last_step_s"] = rec["finished"] - steps[-1]["finished"]
        out["between_steps_s"] = [b["started"] - a["finished"] for a, b in zip(steps, steps[1:])]
    if t_call is not None:
        out["force_to_finished_s"] = rec["finished"] - t_call
    return out


if what == "latency":
    builds = []
    for _ in range(count):
        n = last_number() + 1
        t = time.time()
        force()
        builds.append(summary(finished(n, time.time() + 60), t))
    print(json.dumps({"builds": builds}))
elif what == "throughput":
    first = last_number() + 1
    c0 = cpu_sample()
    t0 = time.time()
    for _ in range(count):
        force()
    t_forced = time.time()
    deadline = t0 + 60 + count
    recs = [finished(n, deadline) for n in range(first, first + count)]
    c1 = cpu_sample()
    end = max(r["finished"] for r in recs)
    print(json.dumps({"n": count, "t0": t0, "forcing_s": t_forced - t0, "seconds": end - t0,
                      "rate": count / (end - t0),
                      "rate_records": (count - 1) / (end - min(r["finished"] for r in recs))
                      if count > 1 else None,
                      "results": sorted(set(r["result"] for r in recs)),
                      "build_s": [r["finished"] - r["started"] for r in recs],
                      "gap_s": [b["started"] - a["finished"] for a, b in zip(recs, recs[1:])],
                      "cpu_s": {k: c1[k] - c0[k] for k in c0}}))
'''

MEMORY = r'''
import json, subprocess, sys
out = {}
SANDBOX = "buildunits-build-noop-sandbox-1.service"
for name, unit in (("runner", "buildunits-runner@1"), ("launcher", "buildunits-launcher"), ("systemd", None),
                   ("sandbox", SANDBOX)):
    pid = 1 if unit is None else int(subprocess.run(["systemctl", "show", "-P", "MainPID", unit],
                                                    stdout=subprocess.PIPE, text=True).stdout.strip() or 0)
    if not pid:
        out[name] = None
        continue
    m = {"pid": pid}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                m[k.lower() + "_kib"] = int(v.split()[0])
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                m[line.split(":")[0].lower() + "_kib"] = int(line.split()[1])
    out[name] = m
print(json.dumps(out))
'''


def say(msg):
    sys.stderr.write("[boundary %5.1fs] %s\n" % (time.monotonic() - T0, msg))
    sys.stderr.flush()


T0 = time.monotonic()


def sh(c, script, check=True, timeout=120):
    return c.run(["sh", "-c", script], check=check, timeout=timeout)


def py(c, code, *args, timeout=600):
    return json.loads(c.run(["/usr/bin/python3", "-c", code] + [str(a) for a in args], timeout=timeout).stdout)


def wait_for(what, pred, timeout=60):
    from support import container as ct
    return ct._wait(pred, timeout, what)


def wait_active(c, units):
    def active():
        out = sh(c, "systemctl is-active %s" % " ".join(units), check=False).stdout.split()
        return out == ["active"] * len(units)
    wait_for("%s to be active" % " ".join(units), active)


# side: (Executor=, the builder's own line)
SIDES = {"sandbox": ("transient", ""), "unit": ("transient", "UnitPerStep=yes\n"), "local": ("local", "")}
LABELS = {"sandbox": "sandbox", "unit": "unit per step", "local": "local"}


def use_executor(c, side):
    """The executor and builder of SIDE, the runner (re)started, and the
    journal's word that it uses it."""
    name, line = SIDES[side]
    c.write_file("/etc/buildunits/buildunits.conf", "[Daemons]\nExecutor=%s\n" % name)
    c.write_file("/etc/buildunits/builders/%s.builder" % BUILDER, NOOP % line)
    sh(c, "systemctl restart %s" % RUNNER)
    if name == "local":
        # Idle, it would stay IDLE_SEC; stopped, its memory is not counted for local.
        sh(c, "systemctl stop buildunits-launcher.service")
    wait_active(c, [RUNNER])
    pid = sh(c, "systemctl show -P MainPID %s" % RUNNER).stdout.strip()
    said = "build steps run by the %s executor" % name
    wait_for("the runner's journal to say: %s" % said,
             lambda: said in c.journal("-o", "cat", "_PID=" + pid), timeout=30)
    return said


def measure(c, name):
    res = {"journal": use_executor(c, name)}
    res["units"] = sh(c, "systemctl list-units --all --plain --no-legend 'buildunits-build-*'").stdout.strip()
    say("%s: %d warm-up builds" % (name, WARMUP))
    res["warmup"] = py(c, DRIVER, "latency", BUILDER, WARMUP)["builds"]
    say("%s: latency, %d builds one after the other" % (name, LATENCY_RUNS))
    res["latency"] = py(c, DRIVER, "latency", BUILDER, LATENCY_RUNS)["builds"]
    say("%s: throughput, %d builds queued at once" % (name, THROUGHPUT_BUILDS))
    res["throughput"] = py(c, DRIVER, "throughput", BUILDER, THROUGHPUT_BUILDS)
    res["memory"] = py(c, MEMORY)
    res["units_after"] = sh(c, "systemctl list-units --all --plain --no-legend 'buildunits-build-*'").stdout.strip()
    bad = sorted({b["result"] for b in res["warmup"] + res["latency"]} | set(res["throughput"]["results"]))
    if bad != ["success"]:
        raise RuntimeError("%s: builds ended %s, not all success" % (name, bad))
    return res


def stats(values, scale=1000.0):
    if not values:
        return None
    v = [x * scale for x in values]
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def figures(res):
    """[(figure, unit, {side: stats}, per_step)]: medians (min-max)."""
    rows = []

    def lat(key):
        out = {}
        for side in SIDES:
            bs = res[side]["latency"]
            if key == "step_s":
                vals = [s for b in bs for s in b["step_s"]]
            elif key == "between_steps_s":
                vals = [s for b in bs for s in b.get("between_steps_s", [])]
            else:
                vals = [b[key] for b in bs if key in b]
            out[side] = stats(vals)
        return out

    for key, label, per in (("build_s", "build, record's started -> finished", STEPS),
                            ("force_to_finished_s", "Force call -> record's finished", STEPS),
                            ("step_s", "one step, started -> finished", 1),
                            ("before_first_step_s", "build started -> first step started", None),
                            ("between_steps_s", "step finished -> next step started", None),
                            ("after_last_step_s", "last step finished -> build finished", None)):
        rows.append((label, "ms", lat(key), per))
    # The first warm-up build: the launcher started, and the sandbox set up.
    rows.append(("first build after the runner starts (the launcher started, the sandbox set up), whole", "ms",
                 {side: {"median": res[side]["warmup"][0]["build_s"] * 1000} for side in SIDES}, None))
    tp = {side: res[side]["throughput"] for side in SIDES}
    rows.append(("throughput, %d builds queued at once, 1 runner" % tp["local"]["n"], "builds/s",
                 {side: {"median": t["rate"]} for side, t in tp.items()}, "rate"))
    for k, label in (("all", "CPU per build, everything in the container"), ("runner", "CPU per build, runner"),
                     ("launcher", "CPU per build, launcher"), ("systemd", "CPU per build, systemd (PID 1)")):
        rows.append((label, "ms", {side: {"median": t["cpu_s"][k] / t["n"] * 1000} for side, t in tp.items()},
                     STEPS))
    for proc in ("runner", "launcher", "systemd", "sandbox"):
        for k, label in (("pss_kib", "PSS"), ("rss_kib", "RSS")):
            cells = {}
            for side in SIDES:
                m = res[side]["memory"].get(proc)
                cells[side] = {"median": m[k] / 1024} if m else None
            rows.append(("memory of %s after the runs, %s" % (proc, label), "MiB", cells, None))
    rows.append(("runner's peak RSS (VmHWM)", "MiB",
                 {side: {"median": res[side]["memory"]["runner"]["vmhwm_kib"] / 1024} for side in SIDES}, None))
    return rows


def fmt(v):
    if v is None:
        return "n/a"
    return "%.3g" % v if abs(v) < 100 else "%.0f" % v


def cell(s):
    if s is None:
        return "n/a"
    if "min" in s and s["n"] > 1:
        return "%s (%s-%s)" % (fmt(s["median"]), fmt(s["min"]), fmt(s["max"]))
    return fmt(s["median"])


def table(rows):
    lines = ["| figure | unit | sandbox | unit per step | local | a step, sandbox - local "
             "| a step, unit per step - local |", "|---|---|---|---|---|---|---|"]
    out = []
    for label, unit, cells, per in rows:
        l = cells.get("local")
        extra = []
        for side in ("sandbox", "unit"):
            t = cells.get(side)
            if per == "rate" and t and l and t["median"] and l["median"]:
                extra.append("%s ms" % fmt((1 / t["median"] - 1 / l["median"]) * 1000 / STEPS))
            elif isinstance(per, int) and t and l:
                extra.append("%s ms" % fmt((t["median"] - l["median"]) / per))
            else:
                extra.append("")
        lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (label, unit, cell(cells.get("sandbox")),
                                                           cell(cells.get("unit")), cell(l), extra[0], extra[1]))
        out.append({"figure": label, "unit": unit, "cells": cells, "per_step": extra})
    return "\n".join(lines), out


def machine():
    import platform
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "cpus": os.cpu_count(), "kernel": platform.release(),
            "load_average": open("/proc/loadavg").read().strip()}


def main():
    from support import container as ct
    if os.geteuid() == 0:
        try:
            ct.ensure_tools()
        except Exception as e:
            print("boundary bench not run: cannot install the container tools: %s" % e)
            return 0
    why = ct.why_unavailable()
    if why:
        print("boundary bench not run: containers cannot run here: %s" % why)
        return 0
    res = {"quick": QUICK, "machine": machine(), "builder": NOOP, "warmup_builds": WARMUP,
           "latency_runs": LATENCY_RUNS, "throughput_builds": THROUGHPUT_BUILDS}
    ct.cleanup_leftovers()
    img = ct.Image().ensure()
    c = ct.Container(img, ct.unique_name(), binds=[(REPO_ROOT, "/src")])
    try:
        say("booting the container")
        c.boot()
        res["boot_s"] = c.boot_seconds
        say("installing the project")
        ct.install_project(c)
        c.write_file("/etc/buildunits/builders/%s.builder" % BUILDER, NOOP % "")
        c.write_file("/etc/buildunits/buildunits.conf", "[Daemons]\nExecutor=transient\n")
        sh(c, "systemctl enable -q %s && systemctl start buildunits.target" % RUNNER)
        wait_active(c, DAEMONS)
        res["systemd"] = sh(c, "systemctl --version | head -1").stdout.strip()
        for side in SIDES:
            res[side] = measure(c, side)
    except Exception:
        traceback.print_exc()
        try:
            sys.stderr.write(ct._tail(c.journal("-o", "short-monotonic", "-u", "buildunits-*"), 80))
        except Exception:
            pass
        return 1
    finally:
        c.stop()
    text, rows = table(figures(res))
    res["table"] = rows
    res["load_average_end"] = open("/proc/loadavg").read().strip()
    res["seconds"] = time.monotonic() - T0
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    m = res["machine"]
    print("\nThe boundary: build steps in the builder's sandbox unit (Executor=transient), each in a unit of "
          "its own (UnitPerStep=yes), or as the runner's children (Executor=local), under systemd in a "
          "container; one runner, builder of 2 no-op steps; "
          "%d builds for latency, %d queued for throughput%s.  %d CPUs, %s, %s.\n"
          % (LATENCY_RUNS, THROUGHPUT_BUILDS, " (QUICK)" if QUICK else "", m["cpus"], m["date"], res["systemd"]))
    print("Load average at the start: %s; at the end: %s (other work on the machine slows the units "
          "most: systemd and the launcher are more processes to schedule).\n"
          % (m["load_average"], res["load_average_end"]))
    print("Cells: median (min-max).  The last two columns: what a step costs more than a local one "
          "(for a build's figures, the difference over its %d steps)." % STEPS)
    print()
    print(text)
    print("\nWritten: %s" % os.path.relpath(OUT, REPO_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
