"""Crash anywhere: a stream of work while random daemons are SIGKILLed.

A stream of commits (a real repository, two branches) and forced builds
(`buildunits force`, over D-Bus or through the spool when the scheduler
is down) is handed to the poller, the scheduler and two runners, while a
seeded RNG picks a daemon, waits a random moment and kills it with
SIGKILL (with everything below it, as systemd kills a unit's cgroup), then
starts it again (at once, or after the next round).  Afterwards, with
every daemon running and the queue drained, the invariants:

- every commit led to exactly the builds the rules say: one final build
  per commit for the builder with TreeStableSec=0, and each commit in
  exactly one final build's request for the builder with a window;
- every accepted forced build (exit 0) was built exactly once, and a
  refused one at most once;
- no request lost: every request a build names has a final build, and
  nothing is left queued or claimed; no build number used twice;
- no build left running: interrupted builds are recorded as "retry",
  with the reason, and their request was built again;
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
import sys
import time

import pytest

from buildunits import results
from harness import wait_for
from test_handover_crash import all_builds, check_fsck, check_records, queue_empty

SHORT_KILLS = 100
ENV_KILLS = "BUILDUNITS_TORTURE_KILLS"
DAEMONS = ("poller", "scheduler", "runner@w1", "runner@w2")
KILL_DELAY_MAX = 0.3     # seconds after a hand-in: where in the work the kill lands

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
Description=collapsed within a window
Repository={repo}
Branches=main
PollIntervalSec=100ms
TreeStableSec=300ms

[Step one]
Command=sleep 0.02
"""

BUILDER_F = """\
[Builder]
Description=forced only

[Step one]
Command=sleep 0.05
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


def torture(daemons, git_repo, capsys, kills):
    seed = int(os.environ.get("BUILDUNITS_TORTURE_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    say(capsys, "\ntorture: seed %d (BUILDUNITS_TORTURE_SEED=%d replays it), %d kills" % (seed, seed, kills))
    print("seed", seed)

    git_repo.commit({"f": "base"}, "base")
    git_repo.commit({"t": "base"}, "topic base", branch="topic")
    git_repo.git("checkout", "-q", "main")
    daemons.write_global("[Daemons]\nRescanIntervalSec=1s\n")
    daemons.write_builder("t", BUILDER_T.format(repo=git_repo.bare))
    daemons.write_builder("w", BUILDER_W.format(repo=git_repo.bare))
    daemons.write_builder("f", BUILDER_F)
    for key in DAEMONS:
        daemons.start(key)
    wait_for(lambda: os.listdir(daemons.state.path("poller")), what="the poller's first poll")

    commits = {"main": [], "topic": []}
    forces = {}          # reason -> exit status of `buildunits force`
    dead = set()
    started = time.monotonic()
    every = max(10, kills // 20)

    for k in range(1, kills + 1):
        for key in sorted(dead):
            daemons.start(key)
        dead.clear()
        # Hand in some work.
        if rng.random() < 0.6:
            branch = "main" if rng.random() < 0.75 else "topic"
            n = len(commits[branch])
            sha = git_repo.commit({"f" if branch == "main" else "t": "%s %d" % (branch, n)},
                                  "%s commit %d" % (branch, n), branch=branch)
            commits[branch].append(sha)
        if rng.random() < 0.35:
            reason = "torture %d" % k
            p = daemons.cli("force", "f", "--reason", reason)
            assert p.returncode in (0, 1), p.stderr
            assert p.returncode == 0 or "refused" in p.stderr or "buildunits:" in p.stderr, p.stderr
            forces[reason] = p.returncode
        # The kill, at a random moment of the work just handed in.
        victim = rng.choice(DAEMONS)
        time.sleep(rng.uniform(0, KILL_DELAY_MAX))     # the fault's timing, not a wait for anything
        if daemons.running(victim):
            daemons.kill(victim)
        else:
            # It died by itself: that is a bug, not part of the run.
            pytest.fail("%s exited with status %s on its own\n%s"
                        % (victim, daemons.procs[victim].returncode, daemons.log(victim, -1)))
        if rng.random() < 0.7:
            daemons.start(victim)
        else:
            dead.add(victim)            # down for a round, while work arrives
        if k % every == 0 or k == kills:
            nbuilds = sum(len(daemons.builds(b)) for b in "twf")
            say(capsys, "torture: %d/%d kills, %d commits, %d forced, %d build numbers, %.0fs"
                % (k, kills, sum(map(len, commits.values())), len(forces), nbuilds, time.monotonic() - started))

    for key in sorted(dead):
        daemons.start(key)
    for key in DAEMONS:
        assert daemons.running(key), "%s died:\n%s" % (key, daemons.log(key, -1))
    drain(daemons, git_repo, commits, timeout=60 + kills * 0.5)
    check_invariants(daemons, commits, forces)
    say(capsys, "torture: invariants hold after %d kills (%.0fs)" % (kills, time.monotonic() - started))


def drain(daemons, git_repo, commits, timeout):
    sp = daemons.spool
    poller_state = daemons.state.poller_path(os.path.realpath(git_repo.bare))

    def idle():
        from buildunits import records
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
                   for b in "twf" for r in all_builds(daemons, b).values() if r is not None)

    wait_for(idle, timeout=timeout, what="every commit polled and the queue drained",
             describe=lambda: "changes %s\nrequests %s\nclaimed %s\n%s" % (
                 sp.pending("changes"), sp.pending("requests"), sp.all_claimed(), daemons._describe_builds()))


def check_invariants(daemons, commits, forces):
    check_records(daemons)
    assert not daemons.spool.corrupted()
    builds = {b: [r for r in all_builds(daemons, b).values() if r is not None] for b in "twf"}
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
    # f: accepted forces built once, refused ones at most once.
    per_reason = {}
    for r in final("f"):
        m = re.search(r": (torture \d+)$", r["request"]["reason"])
        per_reason.setdefault(m.group(1) if m else r["request"]["reason"], []).append(r["number"])
    for reason, rc in forces.items():
        n = len(per_reason.get(reason, []))
        if (rc == 0 and n != 1) or n > 1:
            problems.append("f: force %r (exit %d) built %d times" % (reason, rc, n))
    for reason in per_reason:
        if reason not in forces:
            problems.append("f: a build nobody forced: %r" % reason)

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
