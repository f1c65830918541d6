"""Crash at each step of each hand-over, by strace fault injection.

A real process is killed (SIGKILL, injected by strace at the entry of the
Nth call of one system call) at every step of writing each kind of record:

    buildunits sendchange, buildunits force    CLI -> changes/new
    the scheduler                              changes -> requests (and its state)
    the runner                                 claim, number mkdir, pointer,
                                               build.json writes, finish
    the poller                                 change records, then its state

For each system call in SYSCALLS and N = 1, 2, ... the writer is killed at
its Nth call, until an N at which it finishes its hand-over alive: that
enumerates every crash point between write, fsync, rename, mkdir and unlink
(the directory fsync is an fsync).  After each kill the daemon is started
again normally, and the invariants are checked:

- no torn record anywhere: every record file parses, or is absent;
  leftovers of crashed writers are only spool tmp/ files and hidden
  ".NAME.tmp-*" files, which nobody reads;
- nothing lost: the change is still queued or became exactly one request,
  then exactly one build; a request became exactly one finished build
  (interrupted attempts are recorded as "retry" with the reason);
- no build number reused; no build left "running";
- `buildunits fsck` exits 0 afterwards, and its --repair removes only the
  documented leftovers (stale tmp/ files, after fsutil.TMP_SWEEP_AGE_SEC).

    the notifier                               messages into the outbox, then its
                                               cursor; a delivery, then the message's
                                               removal; a deferral's rewrite; a mark

The CLI runs under `strace -f` from its start.  A daemon is started
normally and strace attaches to its main thread (`strace -p PID`, no -f)
once it is READY=1, just before the work is handed to it: every write of
the hand-over happens on the main loop's thread, and without -f the count
is not disturbed by helper threads or by git children (which -f would
also kill).  The daemons run without a bus: spool and inotify only.
"""

import os
import signal
import subprocess
import tempfile
import time

import pytest

import harness
from buildunits import fsutil, records, results
from harness import wait_for

SYSCALLS = ("mkdir", "write", "fsync", "rename", "unlink")
KILLED = -signal.SIGKILL
MAX_POINTS = 400      # per syscall: more means the writer never finishes


# ====================================================================
# strace

def strace_opts(syscall, n, action="signal=SIGKILL"):
    return ["-qq", "-o", "/dev/null", "-e", "trace=" + syscall,
            "-e", "inject=%s:%s:when=%d" % (syscall, action, n)]


def cli_under_strace(daemons, args, syscall, n, action="signal=SIGKILL", timeout=60):
    """`buildunits ARGS` (no bus) under strace -f, faulting the Nth SYSCALL."""
    argv = (["strace", "-f"] + strace_opts(syscall, n, action)
            + [harness.PYTHON, os.path.join(harness.BIN_DIR, "buildunits")] + daemons.dir_args() + list(args))
    return subprocess.run(argv, cwd=harness.REPO_ROOT, env=daemons.env(bus=False), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=harness.scaled(timeout))


def _tracer(pid):
    try:
        with open("/proc/%d/task/%d/status" % (pid, pid)) as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    return 0


class Attached:
    """strace attached to the main thread of the running process PID,
    faulting its Nth SYSCALL from now on.

    strace writes its trace to a file, read on detach() into .output:
    whether the fault was injected is told by that trace (injected()),
    not by whether the process is still running at some moment, as
    strace may inject it while it is being told to detach."""

    def __init__(self, pid, syscall, n, action="signal=SIGKILL"):
        self.pid, self.syscall, self.n, self.action = pid, syscall, n, action
        self.output = None
        fd, self.log = tempfile.mkstemp(prefix="strace-%d-%s-%d." % (pid, syscall, n), suffix=".log")
        os.close(fd)
        try:
            self._attach()
        except BaseException:
            os.unlink(self.log)
            raise

    def _attach(self):
        pid = self.pid
        for attempt in range(10):
            # The kernel refuses (EPERM) to attach while the previous tracer
            # is still letting go of PID; seen under heavy load.  Wait until
            # nobody traces it, and back off a little more on each refusal.
            wait_for(lambda: _tracer(pid) in (0, None), timeout=10, what="%d to be untraced" % pid)
            time.sleep(0.02 * attempt)
            opts = strace_opts(self.syscall, self.n, self.action)
            opts[opts.index("-o") + 1] = self.log
            self.proc = subprocess.Popen(["strace"] + opts + ["-p", str(pid)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, start_new_session=True)
            harness._HARNESS_PROCS.append(self.proc)   # not an orphan for Daemons.close()
            wait_for(lambda: _tracer(pid) in (self.proc.pid, None) or self.proc.poll() is not None,
                     timeout=10, what="strace to attach to %d" % pid)
            if self.proc.poll() is None:
                return
            with open(self.log, errors="replace") as f:
                if "+++ killed by" in f.read():
                    return      # attached, and the fault came at once (injected() will say so)
            err = self.proc.stderr.read().decode()
            self.proc.stderr.close()
            if "Operation not permitted" not in err:
                break
        raise RuntimeError("strace -p %d exited: %s" % (pid, err))

    def detach(self):
        if self.output is not None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)   # strace detaches and exits
        self.proc.wait(timeout=harness.scaled(10))  # and has written (flushed) its trace
        self.proc.stderr.close()
        try:
            with open(self.log, errors="replace") as f:
                self.output = f.read()
        finally:
            os.unlink(self.log)

    def injected(self):
        """After detach(): True if strace injected the fault, i.e. the
        traced process reached its Nth SYSCALL while attached."""
        assert self.output is not None, "injected() before detach()"
        if "+++ killed by" in self.output or "(INJECTED)" in self.output:
            return True
        calls = sum(1 for line in self.output.splitlines() if line.startswith(self.syscall + "("))
        return calls >= self.n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach()


def killed_by_injection(daemons, key, att):
    """After ATT (detached) faulted daemon KEY with SIGKILL: True if the
    fault was injected, once the daemon has exited (killed) and been
    reaped; False if it was not, and the daemon still runs."""
    d = daemons.procs[key]
    what = "%s (%s #%d)" % (key, att.syscall, att.n)
    if att.injected():
        try:
            rc = d.proc.wait(timeout=harness.scaled(10))
        except subprocess.TimeoutExpired:
            raise AssertionError("%s: SIGKILL injected, but it still runs\n%s" % (what, att.output[-2000:]))
        assert rc == KILLED, "%s exited with %s, not killed\n%s" % (what, rc, daemons.log(key, -1))
        daemons.kill(key)                  # reap the rest, as systemd would clean up its cgroup
        return True
    assert d.running(), "%s exited with %s, though no fault was injected\n%s\n--- strace ---\n%s" % (
        what, d.returncode, daemons.log(key, -1), att.output[-2000:])
    return False


def enumerate_points(scenario, syscalls=SYSCALLS):
    """Run SCENARIO(syscall, n) for n = 1, 2, ... per syscall until it
    reports the writer was not killed; return {syscall: kills}."""
    points = {}
    for sc in syscalls:
        n = 1
        while scenario(sc, n):
            n += 1
            assert n < MAX_POINTS, "%s: still killed at call %d" % (sc, n)
        points[sc] = n - 1
    print("crash points:", points)
    return points


def run_daemon_step(daemons, key, syscall, n, hand_in, done, timeout=20.0):
    """Attach to daemon KEY, HAND_IN() its work, wait until DONE() or it
    dies; if it was killed, start it again and wait for DONE().  Returns
    True if the injection killed it."""
    d = daemons.procs[key]
    with Attached(d.pid, syscall, n) as att:
        ctx = hand_in()
        wait_for(lambda: not d.running() or done(ctx), timeout=timeout,
                 what="%s to finish its hand-over or be killed (%s #%d)" % (key, syscall, n),
                 describe=lambda: daemons.log(key, -1))
    # DONE() may hold before the last counted call of the hand-over (a
    # state write after the commit point, a directory fsync): the kill
    # may land while strace detaches.  Its trace says whether it did.
    if not killed_by_injection(daemons, key, att):
        return False
    daemons.start(d.program, *d.args, bus=False)
    wait_for(lambda: done(ctx), timeout=timeout, what="%s to recover after a kill at %s #%d" % (key, syscall, n),
             describe=lambda: daemons.log(key, -1))
    return True


# ====================================================================
# invariants

def check_records(daemons):
    """Every record in the spool and state parses; corrupt/ is empty.
    Returns the leftovers of crashed writers (spool tmp/ files and hidden
    temporary files), which must be the only other files."""
    leftovers = []
    bad = []
    sp, st = daemons.spool_dir, daemons.state_dir
    for top in (sp, st):
        for d, dirs, names in os.walk(top):
            rel = os.path.relpath(d, top).split(os.sep)
            if top == st and rel[0] in ("locks", "work") or rel[-1].endswith(".git"):
                dirs[:] = []
                continue
            for name in names:
                path = os.path.join(d, name)
                if name.startswith(".") and fsutil.TMP_MARK in name:
                    leftovers.append(path)
                    continue
                fmts = _formats(top == sp, rel, name)
                if fmts is None:
                    bad.append("unexpected file %s" % path)
                    continue
                if fmts == ():
                    continue
                if fmts == "tmp":
                    leftovers.append(path)
                    continue
                try:
                    records.read(path, fmts)
                except (records.RecordError, OSError) as e:
                    bad.append(str(e))
    assert not bad, "torn or stray records:\n" + "\n".join(bad)
    return leftovers


def _formats(in_spool, rel, name):
    """The formats a file may hold, () for a non-record, "tmp", or None."""
    if in_spool:
        if rel in (["changes", "tmp"], ["requests", "tmp"], ["outbox", "tmp"]):
            return "tmp"
        if rel == ["outbox", "new"]:
            return ("message",)
        if rel == ["changes", "new"]:
            return ("change", "force")
        if rel in (["requests", "new"], ["requests", "cancelled"]) or rel[:2] == ["requests", "active"]:
            return ("request",)
        if rel == ["cancel"]:
            return ("cancel",)
        if rel == ["hints"]:
            return ()
        return None     # corrupt/ included: nothing may be torn
    if rel[0] == "builds" and len(rel) == 2 and name == "next.json":
        return ("counter",)
    if rel[0] == "builds" and len(rel) > 3 and rel[3] == "artifacts":
        return ()       # a build's artifacts: the files of its work directory, as they were
    if rel[0] == "builds" and len(rel) == 3:
        # progress.jsonl is appended to, not replaced: a crash may tear its
        # last line, which readers ignore (state.py).
        if name in ("keep.json", "pruned.json"):
            return (name[:-len(".json")],)     # the janitor's markers: a pin, what it removed
        return ("build",) if name == "build.json" else (() if name.endswith(".log") or name == "progress.jsonl"
                                                        else None)
    if rel == ["workers"] and name.endswith(".json"):
        return ("worker",)
    if rel == ["scheduler"] and name.endswith(".json"):
        return ("scheduler",)
    if rel == ["scheduler"] and name == "consumed.jsonl":
        return ()       # appended to, like progress.jsonl: a torn last line is ignored (consumed.py)
    if rel == ["scheduler"] and name == "consumed.mark":
        return ("consumed-mark",)
    if rel == ["poller"] and name.endswith(".json"):
        return ("poller",)
    if rel == ["notifier"] and name.endswith(".json"):
        return ("notifier",) if name == "cursor.json" else ("undelivered",)
    if rel == ["janitor"] and name == "retention.json":
        return ("retention",)
    return None


def check_fsck(daemons):
    p = daemons.cli("fsck", bus=False)
    assert p.returncode == 0 and "would repair" not in p.stdout, p.stdout + p.stderr
    return p.stdout


def all_builds(daemons, builder):
    """{number: record or None (a gap)}."""
    return {n: daemons.read_build(builder, n) for n in daemons.builds(builder)}


class BuildLedger:
    """What each build number holds, checked never to change once final."""

    def __init__(self):
        self.final = {}      # (builder, number) -> request id
        self.gaps = set()

    def check(self, daemons, builders):
        for b in builders:
            for n, rec in all_builds(daemons, b).items():
                key = (b, n)
                if rec is None:
                    assert key not in self.final, "%s #%d lost its record" % key
                    continue
                assert key not in self.gaps, "%s #%d was a gap and now holds a build: a number reused" % key
                assert rec["number"] == n and rec["builder"] == b
                assert rec["state"] != results.RUNNING or _runner_holds(daemons, b, n), \
                    "%s #%d left running with no runner holding it" % key
                if rec["state"] == "finished":
                    if key in self.final:
                        assert self.final[key] == rec["request_id"], "%s #%d was rewritten for another request" % key
                    self.final[key] = rec["request_id"]

    def settle(self, daemons, builders):
        """Every runner is idle now: empty numbers are gaps for good."""
        for b in builders:
            for n, rec in all_builds(daemons, b).items():
                if rec is None:
                    self.gaps.add((b, n))
                else:
                    assert rec["state"] == "finished", "%s #%d is still %s" % (b, n, rec["state"])


def _runner_holds(daemons, builder, number):
    for w in daemons.state.workers():
        ptr = daemons.state.read_worker(w)
        if ptr and (ptr.get("builder"), ptr.get("number")) == (builder, number):
            return True
    return False


def builds_by(daemons, builder, key):
    """{key(record): [finished records]} of BUILDER's builds."""
    out = {}
    for rec in all_builds(daemons, builder).values():
        if rec and rec.get("state") == "finished":
            out.setdefault(key(rec), []).append(rec)
    return out


def check_one_build_each(daemons, builder, wanted, key, not_wanted=()):
    """Each of WANTED has exactly one finished non-retry build of BUILDER
    (by KEY); each of NOT_WANTED has none; retries say they were interrupted."""
    got = builds_by(daemons, builder, key)
    for w in wanted:
        recs = got.get(w, [])
        final = [r for r in recs if r["result"] != results.RETRY]
        assert len(final) == 1, "%r: %d final builds (%s)" % (
            w, len(final), [(r["number"], r["result"]) for r in recs])
        for r in recs:
            if r["result"] == results.RETRY:
                assert "interrupted" in r["reason"] and r["number"] < final[0]["number"], r
    for w in not_wanted:
        assert w not in got, "%r was built, though its hand-in was killed before the commit point" % (w,)


def queue_empty(sp):
    """Nothing queued or claimed in spool SP.  A request moves between
    requests/new and requests/active (a claim; a hand-back when a runner
    recovers), so one listing of each may miss it: active/ is listed
    before new/ (a hand-back in between shows in new/), and the whole
    look is taken twice (a claim between the first two listings shows in
    the second look's active/, until the build is final and recorded)."""
    return all(not (sp.pending("changes") or sp.all_claimed() or sp.pending("requests")) for _ in range(2))


def build_timeout(builds):
    """A wait for BUILDS builds (each a git checkout, maybe on a loaded
    machine); wait_for() scales it by BUILDUNITS_TEST_TIMEOUT_SCALE."""
    return 30 + 3.0 * builds


def drain(daemons, builders, timeout=60):
    """Wait until nothing is queued, claimed or running."""
    sp = daemons.spool

    def idle():
        if not queue_empty(sp):
            return False
        return all(r is not None and r["state"] == "finished"
                   for b in builders for r in all_builds(daemons, b).values() if r is not None)
    wait_for(idle, timeout=timeout, what="the queue to drain", describe=daemons._describe_builds)


def age(paths, seconds):
    t = time.time() - seconds
    for p in paths:
        os.utime(p, (t, t), follow_symlinks=False)


# ====================================================================
# the CLI

def _commit(git_repo, tag):
    return git_repo.commit({"f": tag}, "change " + tag)


@pytest.mark.parametrize("kind", ["sendchange", "force"])
def test_cli_hand_in_crash_at_each_step(daemons, git_repo, kind):
    _commit(git_repo, "base")
    daemons.write_builder("hello", "[Builder]\nRepository=%s\nPollIntervalSec=0\n[Step s]\nCommand=true\n"
                          % git_repo.bare)
    daemons.write_builder("plain", "[Builder]\n[Step s]\nCommand=true\n")
    committed, killed_before = [], []

    def one(sc, n):
        tag = "%s-%s-%d" % (kind, sc, n)
        if kind == "sendchange":
            sha = _commit(git_repo, tag)
            args = ["sendchange", "--repository", git_repo.bare, "--branch", "main", "--revision", sha,
                    "--author", "A <a@example.invalid>", "--message", tag, "--file", "f", "--when", "1700000000"]
            key = sha
        else:
            args = ["force", "plain", "--reason", tag]
            key = tag
        p = cli_under_strace(daemons, args, sc, n)
        found = [r for r in _queued_changes(daemons) if r.get("revision") == key or r.get("reason") == key]
        check_records(daemons)
        assert len(found) <= 1, found
        if p.returncode == KILLED:
            (committed if found else killed_before).append(key)
            return True
        assert p.returncode == 0, "buildunits %s under strace: %s\n%s" % (kind, p.returncode, p.stderr)
        assert len(found) == 1 and found[0]["id"] in p.stdout, (p.stdout, found)
        committed.append(key)
        return False

    enumerate_points(one)
    assert committed and killed_before
    leftovers = check_records(daemons)
    check_fsck(daemons)      # young leftovers are not stale: nothing to repair

    # The leftovers are ignored by the daemons, which build exactly what was committed.
    daemons.start("scheduler", bus=False)
    daemons.start("runner", "w1", bus=False)
    builder = "hello" if kind == "sendchange" else "plain"
    wait_for(lambda: len(builds_by(daemons, builder, lambda r: r["number"])) >= len(committed),
             timeout=build_timeout(len(committed)),
             what="a build of each committed change", describe=daemons._describe_builds)
    drain(daemons, [builder])
    if kind == "sendchange":
        check_one_build_each(daemons, builder, committed, lambda r: r["revision"], killed_before)
    else:
        check_one_build_each(daemons, builder, committed, lambda r: r["request"]["reason"].split(": ", 1)[-1],
                             killed_before)
    assert set(check_records(daemons)) == set(leftovers)
    check_fsck(daemons)
    check_sweep(daemons, leftovers)


def _queued_changes(daemons):
    out = []
    for cid in daemons.spool.pending("changes"):
        try:
            out.append(records.read(daemons.spool.path("changes", "new", cid), ("change", "force")))
        except FileNotFoundError:
            pass
    return out


def check_sweep(daemons, leftovers):
    """fsck --repair removes spool tmp/ leftovers only once they are older
    than TMP_SWEEP_AGE_SEC, and nothing else."""
    spool_tmp = [p for p in leftovers if os.path.basename(os.path.dirname(p)) == "tmp"]
    assert spool_tmp, "expected leftovers in a spool tmp/ directory: %s" % leftovers
    age(spool_tmp, fsutil.TMP_SWEEP_AGE_SEC - 600)
    p = daemons.cli("fsck", "--repair", bus=False)
    assert p.returncode == 0 and "stale" not in p.stdout, p.stdout
    assert all(os.path.exists(x) for x in spool_tmp), "a file younger than the sweep age was removed"
    age(spool_tmp, fsutil.TMP_SWEEP_AGE_SEC + 600)
    p = daemons.cli("fsck", bus=False)
    assert p.returncode == 1, p.stdout
    for x in spool_tmp:
        assert "would repair: stale temporary file %s" % x in p.stdout, p.stdout
    before = check_records(daemons)
    p = daemons.cli("fsck", "--repair", bus=False)
    assert p.returncode == 0 and p.stdout.count("repaired: stale temporary file") == len(spool_tmp), p.stdout
    assert not any(os.path.exists(x) for x in spool_tmp)
    assert set(check_records(daemons)) == set(before) - set(spool_tmp)
    check_fsck(daemons)


# ====================================================================
# the scheduler

@pytest.mark.parametrize("kind", ["change", "force"])
def test_scheduler_crash_at_each_step(daemons, git_repo, kind):
    """A change for two builders (a batch of two requests: two tmp/ writes
    and fsyncs, two renames, one fsync of requests/new, one journal line),
    or a forced build.  A kill between the two renames leaves one request
    queued; the restarted scheduler must make the other, and only it."""
    for b in ("one", "two"):
        daemons.write_builder(b, "[Builder]\nRepository=%s\nPollIntervalSec=0\n[Step s]\nCommand=true\n"
                              % git_repo.bare)
    daemons.start("scheduler", bus=False)
    sp = daemons.spool
    handed = []

    def hand_in():
        i = len(handed)
        if kind == "change":
            cid = sp.deliver("changes", "change", {"source": "test", "repository": git_repo.bare,
                                                   "branch": "main", "revision": "%040x" % (i + 1),
                                                   "author": "", "message": "m", "files": [], "when": 0})
        else:
            cid = sp.deliver("changes", "force", {"builder": "one", "branch": "", "revision": "",
                                                  "reason": "r%d" % i, "properties": {}, "user": "test"})
        handed.append(cid)
        return cid

    def requests_for(cid):
        out = []
        for rid in sp.pending("requests"):
            req = records.read(sp.path("requests", "new", rid), "request")
            if req.get("force") == cid or any(c.get("id") == cid for c in req.get("changes", [])):
                out.append(req["builder"])
        return sorted(out)

    wanted = ["one", "two"] if kind == "change" else ["one"]

    def done(cid):
        return cid not in sp.pending("changes") and requests_for(cid) == wanted

    def one(sc, n):
        killed = run_daemon_step(daemons, "scheduler", sc, n, hand_in, done)
        check_records(daemons)
        for cid in handed:
            assert requests_for(cid) == wanted, "change %s: requests for %s" % (cid, requests_for(cid))
        assert not sp.pending("changes")
        check_fsck(daemons)
        return killed

    enumerate_points(one)
    daemons.restart("scheduler")
    for cid in handed:
        assert requests_for(cid) == wanted


def test_scheduler_dbus_force_crash_at_each_step(daemons):
    """`buildunits force` over D-Bus: the scheduler itself writes the force
    record (its Force method), then turns it into a request.  Killed
    anywhere: a forced build the CLI says was queued becomes exactly one
    request; one it says failed becomes at most one."""
    daemons.write_builder("one", "[Builder]\n[Step s]\nCommand=true\n")
    daemons.start("scheduler")
    sp = daemons.spool
    said = {}

    def requests_with(reason):
        return [rid for rid in sp.pending("requests")
                if records.read(sp.path("requests", "new", rid), "request")["reason"].endswith(": " + reason)]

    def one(sc, n):
        reason = "dbus-%s-%d" % (sc, n)
        d = daemons.procs["scheduler"]
        with Attached(d.pid, sc, n) as att:
            p = daemons.cli("force", "one", "--reason", reason)
            said[reason] = p.returncode
            wait_for(lambda: not d.running() or (p.returncode == 0 and not sp.pending("changes")
                                                 and requests_with(reason)) or p.returncode != 0,
                     timeout=20, what="the forced build requested, or the scheduler killed")
        killed = killed_by_injection(daemons, "scheduler", att)
        if killed:
            daemons.start("scheduler")
        else:
            assert p.returncode == 0, p.stderr
        wait_for(lambda: not sp.pending("changes"), what="the scheduler to take every force record")
        check_records(daemons)
        for r, rc in said.items():
            got = len(requests_with(r))
            assert got == 1 if rc == 0 else got <= 1, "force %r (exit %d): %d requests" % (r, rc, got)
        check_fsck(daemons)
        return killed

    enumerate_points(one)
    assert any(rc != 0 for rc in said.values()), "no kill fell inside a D-Bus call"


# ====================================================================
# the runner

def test_runner_crash_at_each_step(daemons):
    daemons.write_builder("r", "[Builder]\n[Step one]\nCommand=echo one\n[Step two]\nCommand=echo two\n")
    daemons.start("runner", "w1", bus=False)
    sp = daemons.spool
    handed = []
    ledger = BuildLedger()

    def hand_in():
        rid = sp.deliver("requests", "request", {
            "builder": "r", "repository": "", "branch": "main", "revision": "", "changes": [],
            "force": "test-%d" % len(handed), "reason": "forced by test", "properties": {}})
        handed.append(rid)
        return rid

    def done(rid):
        if rid in sp.pending("requests") or sp.claimed("w1") or daemons.state.read_worker("w1"):
            return False
        return any(r["request_id"] == rid and r["state"] == "finished" and r["result"] != results.RETRY
                   for r in all_builds(daemons, "r").values() if r)

    def one(sc, n):
        killed = run_daemon_step(daemons, "runner@w1", sc, n, hand_in, done)
        check_records(daemons)
        ledger.check(daemons, ["r"])
        ledger.settle(daemons, ["r"])
        check_one_build_each(daemons, "r", handed, lambda r: r["request_id"])
        check_fsck(daemons)
        return killed

    points = enumerate_points(one)
    assert points["mkdir"] >= 1 and points["rename"] >= 5
    retries = [r for r in all_builds(daemons, "r").values() if r and r["result"] == results.RETRY]
    assert retries, "no kill fell inside a build?"
    nums = daemons.builds("r")
    assert nums == sorted(set(nums))


# ====================================================================
# the poller

def test_poller_crash_at_each_step(daemons, git_repo):
    _commit(git_repo, "base")
    daemons.write_builder("p", "[Builder]\nRepository=%s\nBranches=main\nPollIntervalSec=100ms\n"
                          "[Step s]\nCommand=true\n" % git_repo.bare)
    daemons.start("poller", bus=False)
    poller_state = daemons.state.poller_path(os.path.realpath(git_repo.bare))
    wait_for(lambda: os.path.exists(poller_state), what="the poller's first poll")
    pushed = []

    def hand_in():
        i = len(pushed)
        shas = [git_repo.commit({"f": "%d-%d" % (i, k)}, "c%d-%d" % (i, k), push=False) for k in (1, 2)]
        git_repo.push("main")
        pushed.extend(shas)
        return shas[-1]

    def done(head):
        try:
            rec = records.read(poller_state, "poller")
        except (FileNotFoundError, records.RecordError):
            return False
        return rec["refs"].get("main") == head

    def one(sc, n):
        killed = run_daemon_step(daemons, "poller", sc, n, hand_in, done)
        check_records(daemons)
        queued = {r["revision"] for r in _queued_changes(daemons)}
        missing = [s for s in pushed if s not in queued]
        assert not missing, "commits never queued: %s" % missing
        check_fsck(daemons)
        return killed

    enumerate_points(one)
    daemons.stop("poller")
    dups = len(_queued_changes(daemons)) - len(pushed)
    print("re-sent changes:", dups)
    daemons.start("scheduler", bus=False)
    daemons.start("runner", "w1", bus=False)
    wait_for(lambda: len(builds_by(daemons, "p", lambda r: r["number"])) >= len(pushed),
             timeout=build_timeout(len(pushed) + max(dups, 0)),
             what="a build of each pushed commit", describe=daemons._describe_builds)
    drain(daemons, ["p"])
    check_one_build_each(daemons, "p", pushed, lambda r: r["revision"])
    check_records(daemons)
    check_fsck(daemons)


# ====================================================================
# the notifier

@pytest.mark.parametrize("answer", ["accept", "defer-once", "refuse"])
def test_notifier_crash_at_each_step(daemons, answer):
    """A finished build's mail, from its record to the SMTP server: queued
    in the outbox, the cursor moved, sent, removed.  With "defer-once"
    the server answers 451 to each message's first try (the deferral's
    rewrite and mtime are crash points too); with "refuse", 550 (the
    build's mark, then the removal).  Killed anywhere: every build's mail
    arrives at least once (or, refused, its mark is recorded), and none
    is left queued."""
    from support.smtp import SMTPServer
    server = SMTPServer().start()
    tried = set()

    def policy(msg):
        n = msg["X-Buildunits-Build"]
        if answer == "refuse":
            return "550 no such user"
        if answer == "defer-once" and n not in tried:
            tried.add(n)
            return "451 try again later"
        return None
    server.answer = policy
    try:
        daemons.write_global("[Notify]\nSMTPServer=127.0.0.1\nSMTPPort=%d\nMailFrom=ci@example.org\n"
                             "RetrySec=50ms\nRetryMaxSec=100ms\n" % server.port)
        daemons.write_builder("b", "[Builder]\n[Step s]\nCommand=false\n[Notify]\nMail=dev@example.org\n")
        daemons.start("notifier", bus=False)
        handed = []

        def hand_in():
            st = daemons.state
            n = st.allocate_number("b")
            st.write_build({"builder": "b", "number": n, "state": "finished", "result": "failure",
                            "started": 1.0, "finished": time.time(), "branch": "main", "revision": "",
                            "steps": [{"name": "s", "state": "finished", "result": "failure"}], "request": {}})
            handed.append(n)
            daemons.signal("notifier", signal.SIGHUP)
            return n

        def arrived(n):
            if answer == "refuse":
                return daemons.state.read_undelivered("b", n) is not None
            return any(m["X-Buildunits-Build"] == str(n) for m in list(server.messages))

        def done(n):
            try:
                cursor = records.read(daemons.state.notifier_path(), "notifier")
            except (OSError, records.RecordError):
                return False
            return arrived(n) and cursor["builders"]["b"]["done"] >= n and not daemons.spool.pending("outbox")

        def one(sc, n):
            killed = run_daemon_step(daemons, "notifier", sc, n, hand_in, done)
            check_records(daemons)
            missing = [b for b in handed if not arrived(b)]
            assert not missing, "builds never notified: %s" % missing
            assert not daemons.spool.pending("outbox")
            if answer == "refuse":   # the site is told of each mark (nothing takes the hints here)
                unhinted = [b for b in handed if not os.path.exists(daemons.spool.path("hints", "b@%d" % b))]
                assert not unhinted, "marks the site was never told of: %s" % unhinted
            check_fsck(daemons)
            return killed

        points = enumerate_points(one)
        assert points["rename"] >= 2 and points["fsync"] >= 2
        got = [m["X-Buildunits-Build"] for m in server.messages]
        print("mails: %d for %d builds (%d twice)" % (len(got), len(handed), len(got) - len(set(got))))
        if answer == "refuse":
            for b in handed:
                assert len(daemons.state.read_undelivered("b", b)["messages"]) == 1
    finally:
        server.stop()


# ====================================================================
# leftovers of crashed writers

def _leftovers(daemons, places):
    """One old and one young abandoned temporary file in each of PLACES."""
    old, young = [], []
    for d, name in places:
        os.makedirs(d, exist_ok=True)
        for lst, suffix in ((old, "0"), (young, "1")):
            p = os.path.join(d, name + suffix)
            with open(p, "wb") as f:
                f.write(b'{"format": "change", "vers')
            lst.append(p)
    age(old, fsutil.TMP_SWEEP_AGE_SEC + 60)
    age(young, fsutil.TMP_SWEEP_AGE_SEC - 600)
    return old, young


def _start_and_wait_sweep(daemons, old, young):
    daemons.write_global("[Daemons]\nRescanIntervalSec=1s\n")
    daemons.write_builder("r", "[Builder]\n[Step one]\nCommand=true\n")
    daemons.start("scheduler", bus=False)
    daemons.start("runner", "w1", bus=False)
    wait_for(lambda: not any(os.path.exists(p) for p in old), timeout=5,
             what="the daemons to sweep temporary files older than %ds" % fsutil.TMP_SWEEP_AGE_SEC,
             describe=lambda: "still there: %s" % [p for p in old if os.path.exists(p)])
    assert all(os.path.exists(p) for p in young), "a file younger than the sweep age was removed"
    check_fsck(daemons)


def test_daemons_sweep_stale_temporary_files_of_the_spool_and_small_state(daemons):
    sp, st = daemons.spool, daemons.state
    old, young = _leftovers(daemons, [
        (sp.path("changes", "tmp"), "1.2.3.abc"), (sp.path("requests", "tmp"), "1.2.3.abd"),
        (sp.path("corrupt"), ".changes.x.reason.tmp-1-ab"),
        (st.path("scheduler"), ".r.json.tmp-1-ab"), (st.path("workers"), ".w1.json.tmp-1-ab"),
        (st.path("poller"), ".p.json.tmp-1-ab")])
    _start_and_wait_sweep(daemons, old, young)


def test_daemons_sweep_stale_temporary_files_of_the_number_hint(daemons):
    old, young = _leftovers(daemons, [(daemons.state.builder_dir("r"), ".next.json.tmp-1-ab")])
    _start_and_wait_sweep(daemons, old, young)
