"""Crash anywhere: a stream of work while random daemons are SIGKILLed.

The mix.  A stream of commits (a real repository, two branches) and
forced builds (`buildunits force`, over D-Bus or through the spool when
the scheduler is down) is handed to the poller, the scheduler and two
runners; the notifier mails every finished build to a real SMTP server
(aiosmtpd, in this process); htmlgen renders the site; `buildunits
janitor` passes run now and then, with retention keys that remove builds
(KeepBuilds=2 on one builder) and logs (KeepLogDays=0 on another).  Each
round a seeded RNG picks a daemon, waits a random moment and kills it with
SIGKILL (with everything below it, as systemd kills a unit's cgroup), then
starts it again (at once, or after the next round; the notifier after up
to six: an outage of its own); a janitor pass started
in the round is SIGKILLed half the time (at a random moment of the span
passes take, or as soon as it has renamed a build out, half-removed); and
now and then the SMTP server is stopped, or started again (an outage of
one or more rounds, during which the notifier defers).

The calm phase.  Then every daemon is started and the SMTP server with
them, and the test waits (events with deadlines) for every commit to be
polled and the queue to drain; `buildunits fsck --repair` and a last
janitor pass run; then it waits for the notifier's cursor to pass every
build and its outbox to empty, and for htmlgen to take every hint.

The invariants:

- every commit led to exactly the builds the rules say: one final build
  per commit for the builder with TreeStableSec=0, and each commit in
  exactly one final build's request for the builder with a window;
- every accepted forced build (exit 0) was built exactly once, and a
  refused one at most once (for the builder the janitor thins, counted
  from the records left and the mails of the removed ones);
- no request lost: every request a build names has a final build, and
  nothing is left queued or claimed; no build number used twice (a
  number, once seen finished, never holds another request, even across
  removals), and a builder's newest build never removed;
- no build left running: interrupted builds are recorded as "retry",
  with the reason, and their request was built again;
- every finished build the rules say to notify (Notify=all: all but
  retries) was received by the SMTP server at least once, or its message
  is still in the outbox, or a given-up mark (STATE/notifier/B@N.json)
  says why: never silently lost, not even a build the janitor removed;
- no build half deleted (no builds/B/.removing-N) after `fsck --repair`
  and the last janitor pass; the removed builds have no pages, and every
  link of every page of the site resolves;
- no torn record anywhere, nothing in corrupt/; `buildunits fsck` finds
  nothing to repair.

`make check` runs the short variant (SHORT_KILLS kills, well within two
minutes).  `make torture N=1000` runs the long one (marked torture),
with BUILDUNITS_TORTURE_KILLS=N.  The seed is printed; set
BUILDUNITS_TORTURE_SEED to replay a run.
"""

import os
import random
import re
import subprocess
import sys
import threading
import time

import pytest

from buildunits import records, results
from harness import wait_for
from support import BIN_DIR, PYTHON, REPO_ROOT
from support.procs import kill_group
from support.smtp import SMTPServer
from test_handover_crash import all_builds, check_fsck, check_records, queue_empty
from test_site import check_links

SHORT_KILLS = 70          # six daemons, janitor passes and mail: as long as 100 kills of four were
ENV_KILLS = "BUILDUNITS_TORTURE_KILLS"
DAEMONS = ("poller", "scheduler", "runner@w1", "runner@w2", "notifier", "htmlgen")
BUILDERS = "twfk"
KILL_DELAY_MAX = 0.3     # seconds after a hand-in: where in the work the kill lands
JANITOR_P = 0.3          # a round starts a janitor pass...
JANITOR_KILL_P = 0.5     # ...SIGKILLed at the round's kill this often (else left to finish)
SMTP_TOGGLE_P = 0.12     # a round stops the SMTP server, or starts it again
NOTIFIER_DOWN_MAX = 6    # rounds
FORCE_K_P = 0.4          # a forced build is of k (thinned by the janitor), else of f

GLOBAL = """\
[Daemons]
RescanIntervalSec=1s

[Site]
SiteURL=https://ci.example.org/

[Notify]
Notify=all
Mail=ci@example.org
MailFrom=buildunits@example.org
SMTPServer=127.0.0.1
SMTPPort={port}
RetrySec=100ms
RetryMaxSec=1s
"""

BUILDER_T = """\
[Builder]
Description=every commit
Repository={repo}
Branches=main topic
PollIntervalSec=100ms
TreeStableSec=0

[Step one]
Command=echo $BUILDUNITS_REVISION

[Step two]
Command=sleep 0.05
"""

BUILDER_W = """\
[Builder]
Description=collapsed within a window; its logs removed by the janitor
Repository={repo}
Branches=main
PollIntervalSec=100ms
TreeStableSec=300ms
KeepLogDays=0

[Step one]
Command=sleep 0.02
"""

BUILDER_F = """\
[Builder]
Description=forced only

[Step one]
Command=sleep 0.05
"""

# Its artifacts make a removal long enough for a kill to land in it.
BUILDER_K = """\
[Builder]
Description=forced only, thinned by the janitor
KeepBuilds=2
Artifacts=out/*

[Step one]
Command=mkdir -p out && for i in $(seq 100); do echo $i >out/f$i; done
"""


@pytest.mark.skipif(bool(os.environ.get(ENV_KILLS)), reason="%s is set: the long variant runs" % ENV_KILLS)
def test_torture_short(daemons, git_repo, capsys):
    torture(daemons, git_repo, capsys, SHORT_KILLS)


@pytest.mark.torture
@pytest.mark.skipif(not os.environ.get(ENV_KILLS), reason="the long run: make torture N=KILLS")
def test_torture_long(daemons, git_repo, capsys):
    torture(daemons, git_repo, capsys, int(os.environ[ENV_KILLS]))


def say(capsys, text):
    with capsys.disabled():
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


class Janitor:
    """`buildunits janitor` passes, one at a time, each run in the
    background while the rounds go on: SIGKILLed at its round's kill, or
    left to finish (and its exit status checked before the next starts).

    Most of a pass is the interpreter starting: a kill at the round's
    moment would land there.  So a pass to be killed is killed at a random
    moment of the span passes have taken (their median so far), where
    its work is (the renames, the deletions, the hints, the markers), or
    as soon as it has renamed a build out."""

    def __init__(self, daemons):
        self.daemons = daemons
        self.proc = None
        self.passes = self.killed = 0
        self.took = [0.5]
        self.log_path = os.path.join(daemons.logs_dir, "janitor.log")

    def start(self):
        self.wait()
        argv = [PYTHON, os.path.join(BIN_DIR, "buildunits")] + self.daemons.dir_args() + ["janitor"]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=self.daemons.env(bus=False),
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.started = time.monotonic()
        self.ended = None
        proc = self.proc

        def watch():            # when it ended, not when the test looked
            proc.wait()
            self.ended = time.monotonic()
        threading.Thread(target=watch, daemon=True).start()
        self.passes += 1

    def kill(self, rng):
        if self.proc is None:
            return
        span = sorted(self.took)[len(self.took) // 2]
        at = self.started + rng.uniform(0.5, 1.1) * span
        if rng.random() < 0.5:
            # Or the moment a build is half removed (renamed out, not yet
            # deleted), a window of milliseconds a random kill seldom hits.
            at = self.started + 1.5 * span
            while self.proc.poll() is None and time.monotonic() < at \
                    and not self.daemons.state.removals_left("k"):
                time.sleep(0.001)       # a fault's aim, not a wait for a result
            at = time.monotonic()
        try:
            self.proc.wait(timeout=max(0.0, at - time.monotonic()))    # the fault's timing
        except subprocess.TimeoutExpired:
            kill_group(self.proc, True)
            self.proc.wait()
            self.killed += 1
            self.proc = None
        else:
            self.wait()

    def wait(self):
        if self.proc is not None:
            rc = self.proc.wait(timeout=60)
            assert rc == 0, "buildunits janitor exited with status %d:\n%s" % (rc, self.log())
            wait_for(lambda: self.ended is not None, what="the janitor's end seen")
            self.took.append(self.ended - self.started)
            self.proc = None

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()[-5000:]


class Ledger:
    """What the test saw of the builders' numbers during the run: each
    number's request once it was finished (never another one after), and
    the highest number of each builder (never lower after: the newest is
    never removed)."""

    def __init__(self):
        self.final = {}     # (builder, number) -> request id
        self.result = {}    # (builder, number) -> its result
        self.top = {}       # builder -> the highest number seen
        self.half = 0       # looks that found a build half removed (a janitor pass killed mid-removal)

    def look(self, daemons, builders):
        problems = []
        for b in builders:
            self.half += len(daemons.state.removals_left(b))
            nums = daemons.builds(b)
            if nums:
                if nums[-1] < self.top.get(b, 0):
                    problems.append("%s: the newest build #%d is gone (the newest now #%d)"
                                    % (b, self.top[b], nums[-1]))
                self.top[b] = max(self.top.get(b, 0), nums[-1])
            elif self.top.get(b):
                problems.append("%s: every build is gone, the newest #%d too" % (b, self.top[b]))
            for n in nums if b == "k" else ():
                try:
                    rec = daemons.read_build(b, n)
                except Exception:
                    continue          # removed between the listing and the read
                if rec and rec.get("state") == "finished":
                    self.result[(b, n)] = rec.get("result")
                    if self.final.setdefault((b, n), rec["request_id"]) != rec["request_id"]:
                        problems.append("%s #%d held request %s, now %s: a number used twice"
                                        % (b, n, self.final[(b, n)], rec["request_id"]))
        assert not problems, "\n".join(problems)


def torture(daemons, git_repo, capsys, kills):
    seed = int(os.environ.get("BUILDUNITS_TORTURE_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    say(capsys, "\ntorture: seed %d (BUILDUNITS_TORTURE_SEED=%d replays it), %d kills" % (seed, seed, kills))
    print("seed", seed)

    smtp = SMTPServer().start()
    try:
        _torture(daemons, git_repo, capsys, kills, rng, smtp)
    finally:
        smtp.stop()


def _torture(daemons, git_repo, capsys, kills, rng, smtp):
    git_repo.commit({"f": "base"}, "base")
    git_repo.commit({"t": "base"}, "topic base", branch="topic")
    git_repo.git("checkout", "-q", "main")
    daemons.write_global(GLOBAL.format(port=smtp.port))
    daemons.write_builder("t", BUILDER_T.format(repo=git_repo.bare))
    daemons.write_builder("w", BUILDER_W.format(repo=git_repo.bare))
    daemons.write_builder("f", BUILDER_F)
    daemons.write_builder("k", BUILDER_K)
    # The notifier first, and its cursor made: the builds of the run are
    # all after its first start (which notifies no history).
    daemons.start("notifier")
    wait_for(lambda: os.path.exists(daemons.state.notifier_path()), what="the notifier's cursor")
    for key in DAEMONS:
        if key != "notifier":
            daemons.start(key)
    wait_for(lambda: os.listdir(daemons.state.path("poller")), what="the poller's first poll")

    commits = {"main": [], "topic": []}
    forces = {}          # reason -> (builder, exit status of `buildunits force`)
    dead = {}            # key -> rounds it stays down
    jan = Janitor(daemons)
    ledger = Ledger()
    outages = 0
    started = time.monotonic()
    every = max(10, kills // 20)

    for k in range(1, kills + 1):
        for key in sorted(dead):
            dead[key] -= 1
            if dead[key] <= 0:
                del dead[key]
                daemons.start(key)
        # Hand in some work.
        if rng.random() < 0.6:
            branch = "main" if rng.random() < 0.75 else "topic"
            n = len(commits[branch])
            sha = git_repo.commit({"f" if branch == "main" else "t": "%s %d" % (branch, n)},
                                  "%s commit %d" % (branch, n), branch=branch)
            commits[branch].append(sha)
        if rng.random() < 0.35:
            reason = "torture %d" % k
            builder = "k" if rng.random() < FORCE_K_P else "f"
            p = daemons.cli("force", builder, "--reason", reason)
            assert p.returncode in (0, 1), p.stderr
            assert p.returncode == 0 or "refused" in p.stderr or "buildunits:" in p.stderr, p.stderr
            forces[reason] = (builder, p.returncode)
        if rng.random() < SMTP_TOGGLE_P:
            if smtp.listening:
                smtp.stop()
                outages += 1
            else:
                smtp.start()
        janitor_now = rng.random() < JANITOR_P
        if janitor_now:
            jan.start()
        # The kill, at a random moment of the work just handed in.
        victim = rng.choice([d for d in DAEMONS if d not in dead])
        time.sleep(rng.uniform(0, KILL_DELAY_MAX))     # the fault's timing, not a wait for anything
        if daemons.running(victim):
            daemons.kill(victim)
        else:
            # It died by itself: that is a bug, not part of the run.
            pytest.fail("%s exited with status %s on its own\n%s"
                        % (victim, daemons.procs[victim].returncode, daemons.log(victim, -1)))
        if janitor_now and rng.random() < JANITOR_KILL_P:
            jan.kill(rng)
        if rng.random() < 0.7:
            daemons.start(victim)
        else:
            # Down for a round, while work arrives; the notifier for up to
            # NOTIFIER_DOWN_MAX rounds, long enough for the janitor to
            # find builds it has not read.
            dead[victim] = rng.randint(1, NOTIFIER_DOWN_MAX) if victim == "notifier" else 1
        ledger.look(daemons, BUILDERS)
        if k % every == 0 or k == kills:
            nbuilds = sum(len(daemons.builds(b)) for b in BUILDERS)
            say(capsys, "torture: %d/%d kills, %d commits, %d forced, %d build numbers kept, "
                "%d janitor passes (%d killed), %d mails, %d SMTP outages, %.0fs"
                % (k, kills, sum(map(len, commits.values())), len(forces), nbuilds, jan.passes, jan.killed,
                   len(smtp.messages), outages, time.monotonic() - started))

    # The calm phase: everything up, nothing killed.
    jan.wait()
    for key in sorted(dead):
        daemons.start(key)
    if not smtp.listening:
        smtp.start()
    for key in DAEMONS:
        assert daemons.running(key), "%s died:\n%s" % (key, daemons.log(key, -1))
    drain(daemons, git_repo, commits, timeout=60 + kills * 0.5)
    left = {b: daemons.state.removals_left(b) for b in BUILDERS}
    p = daemons.cli("fsck", "--repair", bus=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not any(daemons.state.removals_left(b) for b in BUILDERS), p.stdout
    jan.start()
    jan.wait()
    assert not any(daemons.state.removals_left(b) for b in BUILDERS), jan.log()
    ledger.look(daemons, BUILDERS)
    settle_notifier(daemons, smtp, timeout=30 + kills * 0.1)
    settle_site(daemons, timeout=30 + kills * 0.1)
    check_invariants(daemons, commits, forces, smtp, ledger)
    say(capsys, "torture: invariants hold after %d kills, %d janitor passes (%d killed; half-removed builds "
        "seen %d times, %d left for fsck --repair), %d mails (%d SMTP outages) (%.0fs)"
        % (kills, jan.passes, jan.killed, ledger.half, sum(map(len, left.values())), len(smtp.messages), outages,
           time.monotonic() - started))


def drain(daemons, git_repo, commits, timeout):
    sp = daemons.spool
    poller_state = daemons.state.poller_path(os.path.realpath(git_repo.bare))

    def idle():
        try:
            refs = records.read(poller_state, "poller")["refs"]
        except Exception:
            return False
        if any(shas and refs.get(b) != shas[-1] for b, shas in commits.items()):
            return False
        if not queue_empty(sp):        # active/ before new/, twice: a request moves between them
            return False
        if any(daemons.state.read_worker(w) for w in daemons.state.workers()):
            return False
        return all(r is not None and r["state"] == "finished"
                   for b in BUILDERS for r in all_builds(daemons, b).values() if r is not None)

    wait_for(idle, timeout=timeout, what="every commit polled and the queue drained",
             describe=lambda: "changes %s\nrequests %s\nclaimed %s\n%s" % (
                 sp.pending("changes"), sp.pending("requests"), sp.all_claimed(), daemons._describe_builds()))


def settle_notifier(daemons, smtp, timeout):
    """Wait until the notifier's cursor is past every finished build and
    its outbox is empty (every message sent, or given up)."""
    def settled():
        try:
            cur = records.read(daemons.state.notifier_path(), "notifier")["builders"]
        except (OSError, records.RecordError, KeyError):
            return False
        for b in BUILDERS:
            e = cur.get(b) or {}
            for n, rec in all_builds(daemons, b).items():
                # A gap (a number whose runner died before its record)
                # holds the cursor back for notifier.GAP_SEC: stepped over.
                if rec is not None and n > e.get("done", 0) and n not in e.get("handled", ()):
                    return False
        return not daemons.spool.pending("outbox")

    wait_for(settled, timeout=timeout, what="the notifier's cursor past every build and its outbox empty",
             describe=lambda: "cursor %s\noutbox %s\n%d mails\n%s" % (
                 _read_or(daemons.state.notifier_path()), daemons.spool.pending("outbox"), len(smtp.messages),
                 daemons.log("notifier", -1)[-3000:]))


def _read_or(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        return str(e)


def settle_site(daemons, timeout):
    """Wait until htmlgen took every hint and the site shows each
    builder's newest build, its links all resolving."""
    root = daemons.site_dir
    last = [None]

    def settled():
        if os.listdir(daemons.spool.path("hints")):
            return False
        for b in BUILDERS:
            nums = daemons.builds(b)
            if nums and not os.path.exists(os.path.join(root, "builders", b, str(nums[-1]), "index.html")):
                return False
        try:
            check_links(root)
        except AssertionError as e:       # a page not yet rewritten; looked at again
            last[0] = e
            return False
        return True

    wait_for(settled, timeout=timeout, what="the site up to date, every link resolving",
             describe=lambda: "hints %s\nlast problem: %r\n%s" % (
                 os.listdir(daemons.spool.path("hints")), last[0], daemons.log("htmlgen", -1)[-3000:]))


def mails(smtp):
    """{(builder, number): [the mails received about it]}."""
    out = {}
    for m in list(smtp.messages):
        out.setdefault((str(m["X-Buildunits-Builder"]), int(str(m["X-Buildunits-Build"]))), []).append(m)
    return out


def check_invariants(daemons, commits, forces, smtp, ledger):
    check_records(daemons)
    assert not daemons.spool.corrupted()
    builds = {b: [r for r in all_builds(daemons, b).values() if r is not None] for b in BUILDERS}
    got = mails(smtp)
    problems = []

    # No request lost, none built twice; interrupted ones retried.
    for b, recs in builds.items():
        by_request = {}
        for r in recs:
            assert r["state"] == "finished", r
            by_request.setdefault(r["request_id"], []).append(r)
        for rid, rs in by_request.items():
            final = [r for r in rs if r["result"] != results.RETRY]
            if len(final) != 1:
                if b != "k" or len(final) > 1:     # k's final build may be removed, its retry kept
                    problems.append("%s: request %s has %d final builds (%s)"
                                    % (b, rid, len(final), [(r["number"], r["result"]) for r in rs]))
                continue
            for r in rs:
                if r["result"] == results.RETRY:
                    if "interrupted" not in r.get("reason", "") or r["number"] > final[0]["number"]:
                        problems.append("%s #%d: a retry without its reason or after the final build: %r"
                                        % (b, r["number"], r.get("reason")))
        for r in recs:
            if r["result"] not in (results.SUCCESS, results.RETRY):
                problems.append("%s #%d: %s (%s)" % (b, r["number"], r["result"], r.get("reason")))
            if ledger.final.get((b, r["number"]), r["request_id"]) != r["request_id"]:
                problems.append("%s #%d: a number used twice" % (b, r["number"]))
        nums = daemons.builds(b)
        if ledger.top.get(b) and (not nums or nums[-1] < ledger.top[b]):
            problems.append("%s: the newest build #%d was removed" % (b, ledger.top[b]))

    def final(b):
        return [r for r in builds[b] if r["result"] != results.RETRY]

    # t: one final build per commit, on either branch.
    per_rev = {}
    for r in final("t"):
        per_rev.setdefault(r["revision"], []).append(r["number"])
    for branch, shas in commits.items():
        for sha in shas:
            if len(per_rev.get(sha, [])) != 1:
                problems.append("t: %s commit %s built as %s" % (branch, sha[:12], per_rev.get(sha)))
    # w: every main commit in exactly one final build's request.
    per_change = {}
    for r in final("w"):
        revs = [c["revision"] for c in r["request"]["changes"]]
        if r["revision"] != revs[-1]:
            problems.append("w #%d builds %s, not the newest of its changes" % (r["number"], r["revision"][:12]))
        for rev in revs:
            per_change.setdefault(rev, []).append(r["number"])
    for sha in commits["main"]:
        if len(per_change.get(sha, [])) != 1:
            problems.append("w: commit %s in builds %s" % (sha[:12], per_change.get(sha)))
    # f, k: accepted forces built once, refused ones at most once.  k's
    # builds the janitor removed are known by their mails.
    per_reason = {}
    for b in "fk":
        for r in final(b):
            m = re.search(r": (torture \d+)$", r["request"]["reason"])
            per_reason.setdefault(m.group(1) if m else r["request"]["reason"], set()).add((b, r["number"]))
    kept = {r["number"] for r in builds["k"]}
    for (b, n), ms in got.items():
        if b == "k" and n not in kept:
            m = re.search(r"^reason:.*?\b(torture \d+)\r?$", ms[0].get_content(), re.M)
            per_reason.setdefault(m.group(1) if m else "?", set()).add((b, n))
    for reason, (b, rc) in forces.items():
        built = per_reason.get(reason, set())
        if (rc == 0 and len(built) != 1) or len(built) > 1 or any(x != b for x, _n in built):
            problems.append("%s: force %r (exit %d) built as %s" % (b, reason, rc, sorted(built)))
    for reason in per_reason:
        if reason not in forces:
            problems.append("a build nobody forced: %r %s" % (reason, sorted(per_reason[reason])))

    # Every finished build but the retries notified: mailed at least once,
    # or still queued, or given up with a reason; never silently lost.
    queued = set()
    for rid in daemons.spool.pending("outbox"):
        msg = daemons.spool.read("outbox", rid)
        if msg:
            queued.add((msg.get("builder"), msg.get("number")))
    for b in BUILDERS:
        for r in final(b):
            key = (b, r["number"])
            if key in got or key in queued:
                continue
            mark = daemons.state.read_undelivered(b, r["number"])
            if mark and all(m.get("reason") for m in mark.get("messages") or [{}]):
                continue
            problems.append("%s #%d (%s) finished and was never notified: no mail, nothing queued, no mark"
                            % (b, r["number"], r["result"]))
    for (b, n), rid in ledger.final.items():
        # Seen finished during the run, removed since: a retry needs no
        # mail, a final build does (a mark would do too).
        if b == "k" and n not in kept and ledger.result[(b, n)] != results.RETRY and (b, n) not in got \
                and daemons.state.read_undelivered(b, n) is None:
            problems.append("%s #%d (request %s) finished, was removed, and never mailed" % (b, n, rid))
    # Removed builds have no pages.
    for b in BUILDERS:
        d = os.path.join(daemons.site_dir, "builders", b)
        alive = set(daemons.builds(b))
        for name in os.listdir(d) if os.path.isdir(d) else ():
            if name.isdigit() and int(name) not in alive:
                problems.append("the site still has pages of %s #%s, removed" % (b, name))

    assert not problems, "\n".join(problems)
    check_fsck(daemons)


def test_checkout_after_a_git_killed_mid_checkout(daemons, git_repo):
    """What a torture run found (builds of one builder failing at checkout
    after a kill), made deterministic: the lock file git leaves when it is
    killed while it updates the index."""
    git_repo.commit({"f": "1"}, "one")
    daemons.write_builder("w", "[Builder]\nRepository=%s\nPollIntervalSec=0\n[Step one]\nCommand=true\n"
                          % git_repo.bare)
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.cli("force", "w", check=True)
    assert daemons.wait_build_finished("w", 1)["result"] == results.SUCCESS
    git_dir = os.path.join(daemons.state.work_dir("w1", "w"), ".git")
    open(os.path.join(git_dir, "index.lock"), "w").close()
    daemons.cli("force", "w", check=True)
    b2 = daemons.wait_build_finished("w", 2)
    assert b2["result"] == results.SUCCESS, daemons.step_log("w", 2, "checkout")


BUILDER_L = """\
[Builder]
Description=forced only, its logs removed at once
KeepLogDays=0

[Step fails]
Command=echo the-last-words-of-the-log; exit 3
"""


def notifier_down(daemons, smtp, name, text):
    """Builder NAME (TEXT) mailed through SMTP; the notifier started once
    (its cursor made: it reads no history) and stopped; the scheduler
    and a runner up."""
    daemons.write_global(GLOBAL.format(port=smtp.port))
    daemons.write_builder(name, text)
    daemons.start("notifier")
    wait_for(lambda: os.path.exists(daemons.state.notifier_path()), what="the notifier's cursor")
    daemons.stop("notifier")
    daemons.start("scheduler")
    daemons.start("runner", "w1")


def test_logs_the_notifier_has_not_read_yet_are_kept(daemons):
    """A failure's mail carries the failing step's last lines, which the
    notifier reads from the log: KeepLogDays= does not remove a log before
    the notifier has read its build, and does once it has."""
    with SMTPServer() as smtp:
        notifier_down(daemons, smtp, "l", BUILDER_L)
        daemons.cli("force", "l", check=True)
        assert daemons.wait_build_finished("l", 1)["result"] == results.FAILURE
        log = daemons.state.build_file("l", 1, daemons.state.read_build("l", 1)["steps"][0]["log"])
        p = daemons.cli("janitor", bus=False, check=True)
        assert "logs kept until the notifier" in p.stdout and os.path.exists(log), p.stdout
        daemons.start("notifier")
        got = wait_for(lambda: mails(smtp).get(("l", 1)), what="the mail of l #1")
        assert "the-last-words-of-the-log" in got[0].get_content(), got[0].get_content()
        wait_for(lambda: records.read(daemons.state.notifier_path(), "notifier")["builders"]["l"]["done"] == 1,
                 what="the cursor past l #1")
        p = daemons.cli("janitor", bus=False, check=True)
        assert "l #1: logs removed" in p.stdout and not os.path.exists(log), p.stdout


def test_a_build_the_notifier_has_not_read_yet_is_not_removed(daemons):
    """The torture's notification invariant, made deterministic (builds of
    the builder KeepBuilds= thins were never mailed when the janitor ran
    while the notifier was down): the janitor keeps a finished build the
    notifier has still to read, and removes it once the notifier has."""
    with SMTPServer() as smtp:
        notifier_down(daemons, smtp, "k", BUILDER_K)
        for i in range(3):
            daemons.cli("force", "k", "--reason", "r%d" % i, check=True)
            daemons.wait_build_finished("k", i + 1)
        p = daemons.cli("janitor", bus=False, check=True)
        assert daemons.builds("k") == [1, 2, 3], p.stdout
        assert "until the notifier" in p.stdout, p.stdout
        daemons.start("notifier")
        got = wait_for(lambda: sorted(mails(smtp)) if len(mails(smtp)) == 3 else None,
                       what="a mail for each build")
        assert got == [("k", 1), ("k", 2), ("k", 3)]
        wait_for(lambda: daemons.state.read_undelivered("k", 1) is None and (records.read(
            daemons.state.notifier_path(), "notifier")["builders"]["k"]["done"] == 3), what="the cursor at #3")
        daemons.cli("janitor", bus=False, check=True)
        assert daemons.builds("k") == [2, 3]
