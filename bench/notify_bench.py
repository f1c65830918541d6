#!/usr/bin/python3
"""notify_bench: one notification's cost, from BuildFinished to the SMTP server.

    /usr/bin/python3 bench/notify_bench.py        (QUICK=1: fewer builds)

bin/buildunits-notifier of this checkout runs as a plain process on a
private dbus-daemon, configured to mail every build's result (Notify=all)
to a real SMTP server, Debian's aiosmtpd, in this process.  This process
plays the runner: it owns a runner's bus name, writes each finished build's
record (a failed step with a 200-line log) as a runner does, and emits
BuildFinished.  The latency is from just before the signal to the SMTP
server's receiving the end of the mail's data (the notifier has read the
record and its log, queued the message in the outbox, fsync'd, moved its
cursor, fsync'd, connected, sent); the message is removed from the outbox
after that, which is checked before the next build.

- latency: N builds one after another (the median, min and max);
- CPU: the notifier's CPU time per notification over those N;
- a burst: B builds finished at once (B signals), the time until the last
  mail arrived, per mail.

The workload is in $BENCH_CACHE (default /var/tmp/buildunits-bench: a
disk, so the fsyncs cost what they cost) under notify/, removed after.
Prints one table and writes build/bench/notify.json; never passes or
fails.
"""

import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True

import common  # noqa: E402  (puts tests/, for support, and lib/ on sys.path)

QUICK = common.QUICK
CACHE = common.CACHE
N = 20 if QUICK else 100
BURST = 10 if QUICK else 50


def write_build(state, builder, log):
    n = state.allocate_number(builder)
    fd = state.create_log(builder, n, "01-test.log")
    os.write(fd, log)
    os.close(fd)
    state.write_build({"builder": builder, "number": n, "state": "finished", "result": "failure",
                       "started": time.time() - 1, "finished": time.time(), "branch": "main",
                       "revision": "a" * 40, "worker": "bench", "request": {"reason": "bench"},
                       "steps": [{"name": "test", "state": "finished", "result": "failure",
                                  "log": "01-test.log", "summary": "exit status 1"}]})
    return n


def main():
    try:
        import aiosmtpd  # noqa: F401
    except ImportError:
        print("notify_bench: python3-aiosmtpd is not installed (make deps); skipped")
        return 0
    from support.bus import PrivateBus
    from support.daemons import Daemons
    from support.smtp import SMTPServer
    from support.wait import wait_for

    root = os.path.join(CACHE, "notify")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    bus = PrivateBus(os.path.join(root, "dbus"))
    bus.start()
    smtp = SMTPServer().start()
    arrived = {}
    orig = smtp.answer

    def stamp(msg):
        arrived[int(msg["X-Buildunits-Build"])] = time.time()
        return orig(msg) if orig else None
    smtp.answer = stamp
    d = Daemons(root, bus=bus)
    rows = []
    try:
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
        from buildunits import bus as busmod
        runner_bus, why = busmod.connect()
        assert runner_bus.available, why
        runner_bus.publish("Runner", "bench")
        d.write_global("[Notify]\nSMTPServer=127.0.0.1\nSMTPPort=%d\nMailFrom=ci@example.org\n" % smtp.port)
        d.write_builder("b", "[Builder]\n[Step test]\nCommand=false\n[Notify]\nNotify=all\nMail=dev@example.org\n")
        proc = d.start("notifier")
        log = b"".join(b"line %d of the test's output\n" % i for i in range(200))
        cpu0 = common.proc_cpu_sec(proc.pid)
        lat = []
        for _ in range(N):
            n = write_build(d.state, "b", log)
            t0 = time.time()
            runner_bus.emit("BuildFinished", "b", n, "failure")
            wait_for(lambda: n in arrived, timeout=30, what="mail of #%d" % n)
            lat.append(arrived[n] - t0)
            wait_for(lambda: not d.spool.pending("outbox"), timeout=30, what="the outbox to empty")
        cpu = (common.proc_cpu_sec(proc.pid) - cpu0) / N
        ns = [write_build(d.state, "b", log) for _ in range(BURST)]
        t0 = time.time()
        for n in ns:
            runner_bus.emit("BuildFinished", "b", n, "failure")
        wait_for(lambda: all(n in arrived for n in ns), timeout=60, what="the burst's mails")
        burst = max(arrived[n] for n in ns) - t0
        rows.append(("BuildFinished -> mail at the SMTP server (ms)", common.summary(lat, 1000)))
        rows.append(("notifier CPU per notification (ms)", common.single(cpu * 1000, N)))
        rows.append(("a burst of %d builds: until the last mail (ms)" % BURST, common.single(burst * 1000)))
        rows.append(("a burst: per mail (ms)", common.single(burst * 1000 / BURST, BURST)))
    finally:
        d.close()
        smtp.stop()
        bus.stop()
        shutil.rmtree(root, ignore_errors=True)
    width = max(len(n) for n, _s in rows)
    print("one notification: BuildFinished -> the mail received (median [min..max], runs)")
    print("%-*s | %s" % (width, "figure", "value"))
    for name, s in rows:
        print("%-*s | %s [%s..%s] (%d)" % (width, name, common.fmt(s["value"]), common.fmt(s["min"]),
                                           common.fmt(s["max"]), s["runs"]))
    common.write_json(os.path.join(REPO_ROOT, "build", "bench", "notify.json"),
                      {"quick": QUICK, "rows": [{"figure": n, **s} for n, s in rows], "machine": common.machine(CACHE)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
