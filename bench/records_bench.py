"""What a build's record costs: bytes written per build, memory per push.

    /usr/bin/python3 bench/records_bench.py [STEPS] [COMMITS] [MESSAGE_BYTES]

Two figures, with the real daemons of this checkout (tests/support:
private directories and a private dbus-daemon, nothing of the system's):

- steps: a builder of STEPS steps (default 10000) each running `:`.  What
  the runner wrote (wchar of /proc/PID/io: every byte it passed to
  write(2), its log lines included; the steps write nothing)
  and the size of the final build.json.  Rewriting the whole record at
  each step makes this quadratic in STEPS.
- push: COMMITS (default 150) changes with MESSAGE_BYTES-byte messages
  (default 1 MB) and 50 files each, queued at once for a builder with a
  tree-stable window, so they become one request and one build.  The
  peak resident memory (VmHWM) of the scheduler, the runner and htmlgen
  once the build is on the site, and the size of build.json.

Prints one line per figure; never passes or fails.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts tests/, for support, and lib/ on sys.path)
from support.bus import PrivateBus  # noqa: E402
from support.daemons import Daemons  # noqa: E402


def vmhwm(pid):
    return common.status_field(pid, "VmHWM") or 0


def wchar(pid):
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def mb(n):
    return "%.1f MB" % (n / 1e6)


def bench_steps(tmp, steps):
    bus = PrivateBus(os.path.join(tmp, "dbus-steps"))
    bus.start()
    d = Daemons(os.path.join(tmp, "steps"), bus=bus)
    try:
        d.write_builder("many", "[Builder]\nPollIntervalSec=0\n" + "".join(
            "[Step s%d]\nCommand=:\n" % i for i in range(steps)))
        d.start("scheduler")
        r = d.start("runner", "w1")
        before = wchar(r.pid)
        t0 = time.monotonic()
        d.cli("force", "many", check=True)
        rec = d.wait_build_finished("many", 1, timeout=3600)
        took = time.monotonic() - t0
        written = wchar(r.pid) - before
        size = os.path.getsize(d.state.build_path("many", 1))
        print("steps=%d: runner wrote %s for the build (%.0f bytes/step), final build.json %s, %.1fs, result %s"
              % (steps, mb(written), written / steps, mb(size), took, rec["result"]))
    finally:
        d.close()
        bus.stop()


def bench_push(tmp, commits, message_bytes):
    bus = PrivateBus(os.path.join(tmp, "dbus-push"))
    bus.start()
    d = Daemons(os.path.join(tmp, "push"), bus=bus)
    try:
        repo = "/srv/git/big.git"
        d.write_builder("big", "[Builder]\nRepository=%s\nCheckout=no\nPollIntervalSec=0\nTreeStableSec=1s\n"
                        "[Step s]\nCommand=:\n" % repo)
        d.spool.ensure()
        sched = d.start("scheduler")
        runner = d.start("runner", "w1")
        html = d.start("htmlgen")
        body = ("x" * 79 + "\n") * (message_bytes // 80)
        for i in range(commits):
            rev = "%040x" % (i + 1)
            d.spool.deliver("changes", "change", {
                "source": "sendchange", "repository": repo, "branch": "main", "revision": rev,
                "author": "A U Thor <a@example.org>", "when": time.time(),
                "message": "commit %d\n\n%s" % (i, body),
                "files": ["dir/file%d-%d.c" % (i, j) for j in range(50)]})
        rec = d.wait_build_finished("big", 1, timeout=600)
        d.wait_site_finished("big", 1, timeout=600)
        size = os.path.getsize(d.state.build_path("big", 1))
        assert rec["result"] == "success", rec
        print("push of %d x %s messages: peak RSS scheduler %s, runner %s, htmlgen %s; build.json %s"
              % (commits, mb(message_bytes), mb(vmhwm(sched.pid)), mb(vmhwm(runner.pid)),
                 mb(vmhwm(html.pid)), mb(size)))
    finally:
        d.close()
        bus.stop()


def main(argv):
    steps = int(argv[1]) if len(argv) > 1 else 10000
    commits = int(argv[2]) if len(argv) > 2 else 150
    message = int(argv[3]) if len(argv) > 3 else 1 << 20
    with tempfile.TemporaryDirectory(prefix="bu-records-bench-") as tmp:
        if steps:
            bench_steps(tmp, steps)
        if commits:
            bench_push(tmp, commits, message)


if __name__ == "__main__":
    main(sys.argv)
