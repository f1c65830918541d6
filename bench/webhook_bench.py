#!/usr/bin/python3
"""webhook_bench: from a forge's push request to its change committed in the spool.

    /usr/bin/python3 bench/webhook_bench.py        (QUICK=1: fewer requests)

bin/buildunits-webhook of this checkout runs as systemd runs it: handed a
listening socket on 127.0.0.1 as fd 3 (LISTEN_FDS), with its secrets in a
CREDENTIALS_DIRECTORY.  A client (http.client, a new connection each, as
forges connect) sends GitHub push events, each signed (HMAC-SHA256) with a
new delivery id and new commit ids; the latency is from just before the
request is sent to its 202 answer, which the receiver sends only after the
changes are committed (renamed into changes/new/, the directory fsync'd,
the delivery id appended and fsync'd).  That the records are in
changes/new/ is checked after each answer.

- warm: N requests of a 1-commit push to a running receiver (the median,
  min and max), and N/4 of a 20-commit push (GitLab's most);
- cold: a receiver started for the request, as socket activation does
  for the first connection after it exited when idle (the process's start,
  imports and the reading of its configuration and deliveries record
  included), R runs;
- CPU: the receiver's CPU time per warm 1-commit request.

The workload is in $BENCH_CACHE (default /var/tmp/buildunits-bench: a
disk, so the fsyncs cost what they cost) under webhook/, removed after.
Prints one table and writes build/bench/webhook.json; never passes or
fails.
"""

import hashlib
import hmac
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True

import common  # noqa: E402  (puts tests/, for support, and lib/ on sys.path)
from buildunits.spool import Spool  # noqa: E402

QUICK = common.QUICK
CACHE = common.CACHE
PYTHON = "/usr/bin/python3"
WARM = 50 if QUICK else 300
COLD = 3 if QUICK else 10
SECRET = b"bench-secret-0123456789abcdef"
REPOSITORY = "https://github.com/example/hello.git"


def push(n, seq):
    """A GitHub push event of N new commits, the SEQ-th."""
    commits = [{"id": hashlib.sha1(b"%d.%d" % (seq, i)).hexdigest(), "message": "change %d.%d" % (seq, i),
                "timestamp": "2024-01-02T03:04:05+00:00",
                "author": {"name": "A U Thor", "email": "author@example.org", "username": "author"},
                "added": ["f%d.txt" % i], "modified": ["README"], "removed": []} for i in range(n)]
    return json.dumps({"ref": "refs/heads/main", "before": "0" * 39 + "1", "after": commits[-1]["id"],
                       "commits": commits, "head_commit": commits[-1],
                       "repository": {"name": "hello", "full_name": "example/hello", "clone_url": REPOSITORY,
                                      "html_url": REPOSITORY[:-4]}}).encode()


def request(port, body, delivery):
    """Seconds from sending to the 202 answer; the answer's change ids."""
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
               "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()}
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("POST", "/github", body=body, headers=headers)
    r = conn.getresponse()
    text = r.read().decode()
    elapsed = time.perf_counter() - t0
    conn.close()
    if r.status != 202:
        raise RuntimeError("answered %d: %s" % (r.status, text))
    return elapsed, text.split()


class Receiver:
    """bin/buildunits-webhook on a listening socket it gets as fd 3."""

    def __init__(self, root):
        self.root = root
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.proc = None

    def start(self):
        fd = self.listener.fileno()
        script = ("import os, sys; fd = %d\nif fd != 3: os.dup2(fd, 3); os.close(fd)\n"
              "os.environ['LISTEN_PID'] = str(os.getpid()); "
                  "os.execv(sys.argv[1], sys.argv[1:])" % fd)
        env = dict(os.environ, LISTEN_FDS="1", CREDENTIALS_DIRECTORY=os.path.join(self.root, "credentials"),
                   BUILDUNITS_CONFIG_DIR=os.path.join(self.root, "config"),
                   BUILDUNITS_SPOOL_DIR=os.path.join(self.root, "spool"),
                   BUILDUNITS_STATE_DIR=os.path.join(self.root, "state"))
        env.pop("JOURNAL_STREAM", None)
        self.log = open(os.path.join(self.root, "webhook.log"), "ab")
        self.proc = subprocess.Popen([PYTHON, "-c", script, PYTHON, os.path.join(REPO_ROOT, "bin", "buildunits-webhook"),
                                      "--idle-sec", "600"], env=env, pass_fds=(fd,), stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None
            self.log.close()

    def cpu(self):
        return common.proc_cpu_sec(self.proc.pid)


def setup(root):
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(root, "config", "builders"))
    os.makedirs(os.path.join(root, "credentials"))
    with open(os.path.join(root, "config", "builders", "hello.builder"), "w") as f:
        f.write("[Builder]\nRepository=git@github.com:example/hello.git\n\n[Step s]\nCommand=true\n")
    with open(os.path.join(root, "credentials", "webhook-github"), "wb") as f:
        f.write(SECRET + b"\n")
    Spool(os.path.join(root, "spool")).ensure()


def drain(spool):
    """Remove what was queued (as the scheduler would), so every request meets the same spool."""
    for i in spool.pending("changes"):
        spool.remove("changes", i)


def main():
    root = os.path.join(CACHE, "webhook")
    setup(root)
    spool = Spool(os.path.join(root, "spool"))
    rows, detail = [], {}
    seq = 0
    try:
        r = Receiver(root)
        cold = []
        for _ in range(COLD):
            r.start()
            seq += 1
            t, ids = request(r.port, push(1, seq), "cold-%d" % seq)
            assert all(os.path.exists(spool.where("changes", i)) for i in ids)
            cold.append(t)
            r.stop()
            drain(spool)
        r.start()
        request(r.port, push(1, 0), "warm-up")
        drain(spool)
        cpu0 = r.cpu()
        warm = []
        for _ in range(WARM):
            seq += 1
            t, ids = request(r.port, push(1, seq), "warm-%d" % seq)
            assert len(ids) == 1 and os.path.exists(spool.where("changes", ids[0]))
            warm.append(t)
        cpu = (r.cpu() - cpu0) / WARM
        drain(spool)
        big = []
        for _ in range(max(5, WARM // 4)):
            seq += 1
            t, ids = request(r.port, push(20, seq), "big-%d" % seq)
            assert len(ids) == 20 and all(os.path.exists(spool.where("changes", i)) for i in ids)
            big.append(t)
            drain(spool)
        r.stop()
    except Exception:
        with open(os.path.join(root, "webhook.log"), errors="replace") as f:
            sys.stderr.write("the receiver's log:\n" + f.read())
        raise
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for name, values in (("warm, a 1-commit push (ms)", warm), ("warm, a 20-commit push (ms)", big),
                         ("cold, the receiver started for it (ms)", cold)):
        s = common.summary(values, 1000)
        rows.append((name, s))
        detail[name] = s
    rows.append(("receiver CPU per 1-commit request (ms)", common.single(cpu * 1000)))
    width = max(len(n) for n, _s in rows)
    print("webhook request -> change committed in the spool (median [min..max], runs)")
    print("%-*s | %s" % (width, "figure", "value"))
    for name, s in rows:
        print("%-*s | %s [%s..%s] (%d)" % (width, name, common.fmt(s["value"]), common.fmt(s["min"]),
                                           common.fmt(s["max"]), s["runs"]))
    common.write_json(os.path.join(REPO_ROOT, "build", "bench", "webhook.json"),
                      {"quick": QUICK, "rows": [{"figure": n, **s} for n, s in rows], "machine": common.machine(CACHE)})


if __name__ == "__main__":
    main()
