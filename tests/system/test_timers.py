"""Builders' OnCalendar= timers under a real systemd.

The operator writes builder files with OnCalendar=, runs `systemctl
daemon-reload` (the generator writes the timers) and starts
buildunits.target: `systemctl list-timers` lists each builder's timer, a
timer that elapses every few seconds queues a build (and with
OnlyIfChanged=yes, only when the branch moved), and a persistent timer
whose stamp says it last elapsed two days ago catches up at once when it
is started again, as after a machine that was off over night.
"""

import container as ct
from test_systemd import CI, DAEMONS, RUNNERS, REPO, WC

TICK = """\
[Builder]
Repository=/srv/git/hello.git
Branches=main
PollIntervalSec=0
OnCalendar=*:*:0/5
OnlyIfChanged=yes

[Step compile]
Command=make
"""

NIGHTLY = """\
[Builder]
Repository=/srv/git/hello.git
Branches=main
PollIntervalSec=0
OnCalendar=*-*-* 02:00:00
Persistent=yes

[Step compile]
Command=make
"""

NIGHTLY_TIMER = "buildunits-timer-nightly\\x2dmain.timer"     # nightly-main, escaped
STAMP = "/var/lib/systemd/timers/stamp-" + NIGHTLY_TIMER


def q(text):
    return "'%s'" % text.replace("'", "'\\''")


def start(ci):
    """The hello repository, the two builders, daemon-reload, the target."""
    ci.sh("mkdir -p /srv/git %s && chown buildunits:buildunits /srv/git %s" % (WC, WC))
    ci.sh("git init -q --bare -b main %s" % REPO, user="buildunits")
    ci.sh("cd %s && git init -q -b main . && git config user.name 'Dev Eloper' && "
          "git config user.email dev@example.org" % WC, user="buildunits")
    ci.commit("initial")
    ci.c.write_file("/etc/buildunits/builders/tick.builder", TICK)
    ci.c.write_file("/etc/buildunits/builders/nightly-main.builder", NIGHTLY)
    ci.sh("systemctl daemon-reload")
    ci.sh("systemctl enable -q %s && systemctl start buildunits.target" % " ".join(RUNNERS))
    ci.wait_active(DAEMONS + ("buildunits-timer-tick.timer", q(NIGHTLY_TIMER)))


def test_timers_are_listed_build_when_they_elapse_and_catch_up(make_container):
    ci = CI(make_container())
    start(ci)
    timers = ci.sh("systemctl list-timers --all --no-pager").stdout
    assert "buildunits-timer-tick.timer" in timers and "buildunits-timer@tick.service" in timers, timers
    assert NIGHTLY_TIMER in timers, timers
    shown = ci.sh("systemctl show -P TimersCalendar buildunits-timer-tick.timer").stdout
    assert "OnCalendar=*-*-* *:*:00/5" in shown, shown

    # The 5-second timer builds the head once; later elapses find it built.
    b = ci.wait_finished("tick", 1, timeout=60)
    assert b["result"] == "success" and b["request"]["reason"] == "timer OnCalendar=*:*:0/5"
    first = b["revision"]
    ct._wait(lambda: "built or queued already" in ci.journal("-u", "buildunits-timer@tick.service"), 30,
             "an elapse that finds main built (OnlyIfChanged=yes)")
    assert ci.numbers("tick") == [1]
    # The service ran as the buildunits user.
    user = ci.sh("systemctl show -P User buildunits-timer@tick.service").stdout.strip()
    assert user == "buildunits"

    # A push: the next elapse builds the new head.
    sha = ci.commit("a change for the timer")
    b = ci.wait_finished("tick", 2, timeout=60)
    assert b["revision"] == sha != first

    # The nightly timer, persistent, last elapsed (its stamp says) two days
    # ago, and the machine was off since: started again, it elapses at once.
    assert ci.numbers("nightly-main") == []
    ci.sh("systemctl stop %s" % q(NIGHTLY_TIMER))
    ci.sh("touch -d '2 days ago' %s" % q(STAMP))
    ci.sh("systemctl start %s" % q(NIGHTLY_TIMER))
    b = ci.wait_finished("nightly-main", 1, timeout=60)
    assert b["result"] == "success" and b["request"]["reason"] == "timer OnCalendar=*-*-* 02:00:00"
    last = ci.sh("systemctl show -P LastTriggerUSec %s" % q(NIGHTLY_TIMER)).stdout.strip()
    assert last and last != "n/a", last
    # ... and the scheduler, under systemd, ran no timer of its own.
    assert "timer elapsed" not in ci.journal("-u", "buildunits-scheduler.service")
