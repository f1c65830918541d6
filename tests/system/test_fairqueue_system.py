"""The fair queue under a real systemd: two runner services share a lock
(Locks=) and a builder's MaxBuilds=, and a downstream builder (After=)
starts after its upstream, its steps in their sandboxes.  What a user
checks: the builds' own logs say when each step ran, and no two holders
of a lock ever overlap."""

import re

import container as ct
from test_systemd import CI, HELLO

STEP = "echo start $(date +%s.%N); sleep 1; echo end $(date +%s.%N)"

BUILDERS = {
    "deploy-a": "[Builder]\nLocks=prod\n[Step s]\nCommand=%s\n" % STEP,
    "deploy-b": "[Builder]\nLocks=prod\n[Step s]\nCommand=%s\n" % STEP,
    "once": "[Builder]\nMaxBuilds=1\n[Step s]\nCommand=%s\n" % STEP,
    "after": "[Builder]\nAfter=deploy-a\n[Step s]\nCommand=echo after $BUILDUNITS_BUILD\n",
}


def span(ci, builder, number):
    b = ci.wait_finished(builder, number, timeout=120)
    assert b["result"] == "success", b
    log = ci.sh("cat /var/lib/buildunits/builds/%s/%d/%s" % (builder, number, b["steps"][0]["log"])).stdout
    start = float(re.search(r"^start (\S+)$", log, re.M).group(1))
    end = float(re.search(r"^end (\S+)$", log, re.M).group(1))
    return b, (start, end)


def test_a_lock_and_max_builds_hold_across_two_runner_services(make_container):
    ci = CI(make_container())
    ci.setup(dict(BUILDERS, hello=HELLO))      # hello: the repository the setup waits to see polled
    for _ in range(2):
        ci.sh("buildunits force deploy-a && buildunits force deploy-b && buildunits force once")
    spans = {}
    for builder in ("deploy-a", "deploy-b", "once"):
        for n in (1, 2):
            b, spans[(builder, n)] = span(ci, builder, n)
    # Both runners worked, and never two holders of prod, nor two builds of once, at a time.
    workers = {ci.build(b, n)["worker"] for b, n in spans}
    assert workers == {"1", "2"}, workers
    prod = sorted(v for (b, n), v in spans.items() if b.startswith("deploy"))
    assert all(a[1] <= b[0] for a, b in zip(prod, prod[1:])), prod
    once = sorted(v for (b, n), v in spans.items() if b == "once")
    assert once[0][1] <= once[1][0], once
    # After=: one build of "after" for each of deploy-a's, naming it.
    for n in (1, 2):
        a = ci.wait_finished("after", n, timeout=60)
        assert a["upstream"]["builder"] == "deploy-a", a
    assert sorted(ci.build("after", n)["upstream"]["number"] for n in (1, 2)) == [1, 2]
    ct._wait(lambda: "prod" in ci.sh("buildunits status").stdout, 10, "status to list the lock")
