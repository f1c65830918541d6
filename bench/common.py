"""What both sides of `make bench` share: statistics, the results table
(text, Markdown, JSON), the machine's description and noise, and the
measuring tools (CPU of a group of processes, memory from smaps_rollup,
the execve calls of a process tree).

Nothing here passes or fails on time: figures are reported next to their
targets, never judged.
"""

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

# The tests' support package: the one wait_for, the git helpers (and, for the
# buildunits side, the private bus, the notify reader and the daemons).
from support.git import make_repo  # noqa: E402  (support also puts lib/ on sys.path)
from support.wait import WaitTimeout as Timeout, wait_for  # noqa: E402

# Every bench's two settings: QUICK=1 (or yes) for the smaller sizes, and
# BENCH_CACHE for where workloads are built (a disk: fsyncs cost what they cost).
QUICK = os.environ.get("QUICK", "") not in ("", "0", "no")
CACHE = os.environ.get("BENCH_CACHE") or "/var/tmp/buildunits-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1024 * 1024


# ================================================================= statistics

def median(values):
    v = sorted(values)
    n = len(v)
    if not n:
        return None
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def summary(values, scale=1.0):
    """{value (the median), min, max, runs} of VALUES times SCALE."""
    values = [x * scale for x in values if x is not None]
    if not values:
        return None
    return {"value": median(values), "min": min(values), "max": max(values), "runs": len(values)}


def single(value, runs=1):
    """A figure measured once (or already aggregated): min = max = value."""
    if value is None:
        return None
    return {"value": value, "min": value, "max": value, "runs": runs}


def figure(fid, name, unit, bu=None, bb=None, target=None, better="lower", note="", detail=None):
    """One row of the table.  BU and BB are summary() dicts (or None when a
    side does not have the figure); TARGET is buildunits' target, in UNIT,
    printed beside the result, never checked."""
    return {"id": fid, "name": name, "unit": unit, "buildunits": bu, "buildbot": bb,
            "ratio": ratio(bu, bb, better), "target": target, "better": better, "note": note,
            "detail": detail or {}}


def ratio(bu, bb, better="lower"):
    """How many times better buildunits is (>1: buildunits wins), from the
    medians; None when either side is missing or zero."""
    if not bu or not bb:
        return None
    a, b = bu["value"], bb["value"]
    if a is None or b is None or a <= 0 or b <= 0:
        return None      # a ratio of a zero or a negative figure says nothing
    return b / a if better == "lower" else a / b


# =================================================================== output

def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if v == float("inf"):
        return "inf"
    a = abs(v)
    if a == 0:
        s = "0"
    elif a >= 1000:
        s = "%.0f" % v
    elif a >= 100:
        s = "%.0f" % v
    elif a >= 10:
        s = "%.1f" % v
    elif a >= 1:
        s = "%.2f" % v
    elif a >= 0.01:
        s = "%.3f" % v
    else:
        s = "%.2g" % v
    return s


def fmt_cell(s):
    """'median (min-max, n)' for a summary dict."""
    if not s:
        return "n/a"
    if s["runs"] <= 1 or s["min"] == s["max"]:
        return "%s (n=%d)" % (fmt(s["value"]), s["runs"])
    return "%s (%s-%s, n=%d)" % (fmt(s["value"]), fmt(s["min"]), fmt(s["max"]), s["runs"])


def fmt_ratio(r):
    if r is None:
        return "-"
    if r == float("inf"):
        return "inf"
    return "%sx" % fmt(r)


def fmt_target(f):
    t = f.get("target")
    if t is None:
        return ""
    if isinstance(t, str):
        return t
    return ("%s %s" % ({"lower": "<=", "higher": ">="}[f["better"]], fmt(t))).strip()


COLUMNS = ("figure", "unit", "buildunits: median (min-max, runs)", "Buildbot: median (min-max, runs)",
           "Buildbot/buildunits", "target (buildunits)")


def table_rows(figures):
    rows = []
    for f in figures:
        rows.append((f["id"] + " " + f["name"], f["unit"], fmt_cell(f["buildunits"]), fmt_cell(f["buildbot"]),
                     fmt_ratio(f["ratio"]), fmt_target(f)))
    return rows


def text_table(figures):
    rows = [COLUMNS] + table_rows(figures)
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    widths[0] = min(widths[0], 64)
    out = []
    for j, r in enumerate(rows):
        cells = []
        for i, c in enumerate(r):
            if i == 0 and len(c) > widths[0]:
                c = c[:widths[0] - 1] + "~"
            cells.append(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) if i < 5 else c)
        out.append("  ".join(cells).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(figures):
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in table_rows(figures):
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    return "\n".join(out)


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=_json_default)
        f.write("\n")
    os.rename(tmp, path)


def _json_default(o):
    if isinstance(o, float) and o == float("inf"):
        return "inf"
    return str(o)


# ================================================================ the machine

def _first_line(path, default=""):
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return default


def _run_text(argv):
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine(workdir):
    """A description of the machine the figures come from."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = "%.1f GiB" % (int(line.split()[1]) / 1024 / 1024)
    except OSError:
        pass
    fs = _run_text(["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "-T", workdir])
    os_name = ""
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    virt = _run_text(["systemd-detect-virt"]) or "unknown"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": platform.node(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "os": os_name,
        "virtualization": virt,
        "bench directory": "%s (%s)" % (workdir, fs or "?"),
        "python (buildunits)": sys.version.split()[0] + " (" + sys.executable + ")",
        "git": _run_text(["git", "--version"]),
        "dbus-daemon": _run_text(["dbus-daemon", "--version"]).splitlines()[0] if shutil.which("dbus-daemon") else "",
        "load average at start": _first_line("/proc/loadavg"),
    }


def cpu_loop_ms(n=300000):
    """Wall time of a fixed CPU-bound loop, in ms."""
    t = time.perf_counter()
    x = 0
    for i in range(n):
        x += i * i % 7
    return (time.perf_counter() - t) * 1000


def noise(reps=15):
    """How steady the machine is: a fixed CPU loop timed REPS times, and
    an fsync'd write timed as often.  The spread is (max-min)/median."""
    cpu_loop_ms(50000)  # warm up
    loops = [cpu_loop_ms() for _ in range(reps)]
    fsyncs = []
    d = tempfile.mkdtemp(prefix="noise-", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    try:
        for i in range(reps):
            p = os.path.join(d, "f%d" % i)
            t = time.perf_counter()
            fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"x" * 512)
            os.fsync(fd)
            os.close(fd)
            fsyncs.append((time.perf_counter() - t) * 1000)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    out = {}
    for name, v in (("cpu loop", loops), ("fsync'd 512-byte write", fsyncs)):
        m = median(v)
        out[name] = {"median_ms": m, "min_ms": min(v), "max_ms": max(v),
                     "spread_pct": (max(v) - min(v)) / m * 100 if m else None, "runs": len(v)}
    out["load average"] = _first_line("/proc/loadavg")
    return out


def cpu_snapshot():
    """(busy, total) jiffies of the whole machine, and this process's own
    CPU seconds with its waited-for children's."""
    import resource
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    own = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"busy": sum(parts) - idle, "total": sum(parts),
            "own_s": own.ru_utime + own.ru_stime + ch.ru_utime + ch.ru_stime, "t": time.time()}


def other_load(start, end, extra_own_s=0.0):
    """How busy the machine was, and how much of it was not this bench:
    {busy_pct, bench_pct, others_pct} as % of all CPUs.  EXTRA_OWN_S: CPU
    of our processes not counted by getrusage (not waited for)."""
    busy = (end["busy"] - start["busy"]) / CLK_TCK
    wall = end["t"] - start["t"]
    n = os.cpu_count() or 1
    own = end["own_s"] - start["own_s"] + extra_own_s
    return {"busy_pct": busy / wall / n * 100, "bench_pct": own / wall / n * 100,
            "others_pct": max(0.0, busy - own) / wall / n * 100, "wall_s": wall}


# ======================================================== processes: memory

def smaps_rollup(pid):
    """{"rss": bytes, "pss": bytes} of PID, or None if it is gone."""
    out = {}
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                k, _, rest = line.partition(":")
                if k in ("Rss", "Pss"):
                    out[k.lower()] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        return None
    return out


def status_field(pid, field):
    """A kB field of /proc/PID/status (VmHWM, VmRSS...), in bytes."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_of(pids):
    """{pid: {rss, pss}} and the totals, in MiB."""
    per = {}
    for name, pid in pids.items():
        m = smaps_rollup(pid)
        if m:
            per[name] = {"pid": pid, "rss_mib": m.get("rss", 0) / MiB, "pss_mib": m.get("pss", 0) / MiB}
    return {"per_process": per, "rss_mib": sum(p["rss_mib"] for p in per.values()),
            "pss_mib": sum(p["pss_mib"] for p in per.values())}


# ========================================================== processes: CPU

def proc_cpu_sec(pid):
    """utime+stime+cutime+cstime of PID, seconds (clock-tick resolution)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(b")") + 2:].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


class CpuGroup:
    """The CPU time of a set of processes and all their descendants, also
    those that already exited.

    With a writable cgroup v1 cpuacct (or v2) hierarchy the processes are
    moved into a cgroup of their own: nanosecond resolution, every
    descendant counted.  Otherwise /proc/PID/stat of the given processes
    (their own time and their waited-for children's, in clock ticks).
    """

    _ROOTS = (("/sys/fs/cgroup/cpuacct", "cpuacct.usage", 1e-9),
              ("/sys/fs/cgroup/unified", "cpu.stat", 1e-6),
              ("/sys/fs/cgroup", "cpu.stat", 1e-6))

    def __init__(self, label):
        self.label = re.sub(r"[^A-Za-z0-9_-]", "_", label)
        self.path = None
        self.kind = "/proc/PID/stat (clock ticks)"
        self.pids = []
        for root, f, scale in self._ROOTS:
            if not os.path.exists(os.path.join(root, f)) and not os.path.exists(os.path.join(root, "cgroup.procs")):
                continue
            path = os.path.join(root, "buildunits-bench-%d-%s" % (os.getpid(), self.label))
            try:
                os.mkdir(path)
            except FileExistsError:
                pass
            except OSError:
                continue
            if not os.path.exists(os.path.join(path, f)):
                os.rmdir(path)
                continue
            self.path, self._file, self._scale = path, f, scale
            self.kind = "cgroup %s" % path.rsplit("/", 2)[-2]
            break

    def add(self, pid):
        self.pids.append(pid)
        if self.path:
            try:
                with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                    f.write("%d\n" % pid)
            except OSError:
                pass  # it exited already

    def seconds(self):
        if self.path:
            with open(os.path.join(self.path, self._file)) as f:
                text = f.read()
            if self._file == "cpuacct.usage":
                return int(text) * self._scale
            for line in text.splitlines():
                if line.startswith("usage_usec"):
                    return int(line.split()[1]) * self._scale
        return sum(proc_cpu_sec(p) for p in self.pids)

    def close(self):
        if not self.path:
            return
        # A cgroup can be removed only when empty: leftovers go back to the root.
        parent = os.path.dirname(self.path)
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                left = [line.strip() for line in f if line.strip()]
            for p in left:
                try:
                    with open(os.path.join(parent, "cgroup.procs"), "w") as f:
                        f.write(p + "\n")
                except OSError:
                    pass
            os.rmdir(self.path)
        except OSError:
            pass
        self.path = None


# ========================================================= processes: execve

def trace_execs(pid, seconds, out_path):
    """Attach strace to PID (following forks) for SECONDS; return the
    successful execve calls as [(time, program, argv text)].  None if
    strace is missing or cannot attach."""
    if not shutil.which("strace"):
        return None
    p = subprocess.Popen(["strace", "-f", "-q", "-ttt", "-s", "120", "-e", "trace=execve", "-e", "signal=none",
                          "-o", out_path, "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(seconds)
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    execs = []
    try:
        with open(out_path, errors="replace") as f:
            for line in f:
                m = re.match(r"^(?:\d+\s+)?(\d+\.\d+) execve\(\"([^\"]+)\", \[(.*)\]", line)
                if m and re.search(r"\) = 0\s*$", line):
                    execs.append((float(m.group(1)), m.group(2), m.group(3)))
    except OSError:
        return None
    return execs


def cluster(execs, gap=0.25):
    """Group exec events into bursts (one poll each) separated by GAP s."""
    groups = []
    for e in execs:
        if groups and e[0] - groups[-1][-1][0] <= gap:
            groups[-1].append(e)
        else:
            groups.append([e])
    return groups


# ================================================================== waiting

class EventLog:
    """Events appended by a reader thread, each a tuple starting with the
    time it was seen; wait() blocks on the next one with a deadline."""

    def __init__(self):
        self.events = []
        self.cond = threading.Condition()

    def _add(self, event):
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def _subject(self, event):
        """What wait()'s predicate is given of an event."""
        return event

    def mark(self):
        with self.cond:
            return len(self.events)

    def wait(self, pred, timeout, start=0, what="an event"):
        """The first event from index START whose subject satisfies PRED."""
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.events):
                    if pred(self._subject(self.events[i])):
                        return self.events[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout("timed out after %.0fs waiting for %s" % (timeout, what))
                self.cond.wait(left)


class DatagramClock(EventLog):
    """A unix datagram socket whose messages are timestamped on receipt
    (time.time()), drained by a thread."""

    def __init__(self, path):
        self.path = path
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        EventLog.__init__(self)
        self._closed = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self._add((time.time(), data.decode("utf-8", "replace")))

    def _subject(self, event):
        return event[1]      # wait()'s predicate sees the text

    def count(self, pred, start=0):
        with self.cond:
            return sum(1 for _, e in self.events[start:] if pred(e))

    def close(self):
        self._closed = True
        self._t.join(1)
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


# ======================================================= the sides' skeleton

class Side:
    """What both sides' benches share: numbered directories for setups
    under WORKDIR/NAME, and git repositories to build."""

    def __init__(self, workdir, name, quick, log):
        self.workdir = os.path.join(workdir, name)
        os.makedirs(self.workdir, exist_ok=True)
        self.quick = quick
        self.say = log
        self._n = 0

    def _root(self, label):
        self._n += 1
        return os.path.join(self.workdir, "%02d-%s" % (self._n, label))

    def repo(self, root, name="hello"):
        r = make_repo(os.path.join(root, "repos", name + ".git"))
        r.commit({"README": "hello\n"}, "initial")
        return r


class Processes:
    """A setup's processes, self.procs = {key: {"proc": Popen, "cpu": CpuGroup, ...}}."""

    def pids(self):
        return {k: pr["proc"].pid for k, pr in self.procs.items() if pr["proc"].poll() is None}

    def cpu_seconds(self):
        return {k: pr["cpu"].seconds() for k, pr in self.procs.items()}

    def memory(self):
        return memory_of(self.pids())


class Idle:
    """A setup left alone after one warm-up build (polling or not); each
    side makes self.s, its Setup, and says how to warm it up."""

    def __init__(self, bench, polling):
        self.polling = polling
        self.label = "idle-poll" if polling else "idle-nopoll"
        self.root = bench._root(self.label)
        self.repo = bench.repo(self.root)
        self.bench = bench

    def cpu(self):
        return self.s.cpu_seconds()

    def memory(self):
        return self.s.memory()

    def stop(self):
        self.s.close()


def one_figure(bench_class, calls):
    """`SIDE_bench.py WORKDIR FIGURE [N]`: one figure of one side, printed as
    JSON.  CALLS: {FIGURE: callable(bench, N or None)}."""
    bench = bench_class(sys.argv[1], quick=True)
    n = int(sys.argv[3]) if len(sys.argv) > 3 else None
    print(json.dumps(calls[sys.argv[2]](bench, n), indent=1, default=str))


def big_output_command(nbytes):
    """A shell command printing NBYTES of build-log-like text lines."""
    line = "compiling src/module_%04d.c ... ok  [-O2 -Wall -Wextra -g]"
    # 64-byte lines; head cuts at exactly NBYTES.
    return "yes '%s' | head -c %d" % ((line % 42).ljust(63), nbytes)


def kill_pids(procs, timeout=10):
    """SIGTERM each Popen, wait, then SIGKILL its process group."""
    for p in procs:
        if p.poll() is None:
            try:
                p.terminate()
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if p.poll() is None:
            p.kill()
            p.wait()
