"""Upgrades, downgrades and reboots lose nothing, and need no migration.

The previous release is installed from its commit (tests/data/releases.txt,
`git archive` of the checkout bound in the container), run for real, then
the current code is installed over it with `make install`, and back.
A reboot is a container halted with builds queued and running, and a new
one booted on the same /etc/buildunits, spool, state and repositories.
"""

import json
import os

import pytest

import container as ct
from test_systemd import CI, HELLO, RUNNERS, DAEMONS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLOW = """\
[Builder]
Description=slow unless /var/lib/buildunits-dev/flag exists

[Step wait]
Command=echo waiting; test -e /var/lib/buildunits-dev/flag || sleep 300
"""


def releases():
    out = []
    with open(os.path.join(ROOT, "tests", "data", "releases.txt")) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                version, commit = line.split()
                out.append((version, commit))
    return out


PREVIOUS, PREVIOUS_COMMIT = releases()[-1]


def install_release(ci, commit):
    ci.sh("rm -rf /var/tmp/release && mkdir -p /var/tmp/release && "
          "git -c safe.directory='*' -C /src archive %s | tar -x -C /var/tmp/release" % commit)
    ct.install_project(ci.c, src="/var/tmp/release", workdir="/var/tmp/release-build")


def install_current(ci):
    ct.install_project(ci.c)


def version(ci):
    return ci.sh("buildunits --version").stdout.split()[-1]


def restart_all(ci):
    ci.sh("systemctl restart buildunits.target %s" % " ".join(RUNNERS))
    ci.wait_active(DAEMONS)


def pages_of(ci, builder, numbers):
    for n in numbers:
        ct._wait(lambda: ci.sh("test -e /var/lib/buildunits/site/builders/%s/%d/index.html" % (builder, n),
                               check=False).returncode == 0, 30, "the page of %s #%d" % (builder, n))


def start_slow_with_queue(ci):
    """Build slow #1 running on runner 1, and a forced hello queued (runner 2 stopped)."""
    ci.sh("systemctl stop buildunits-runner@2")
    ci.sh("buildunits force slow --reason 'running across the change'")
    ct._wait(lambda: (lambda b: b and b["steps"][0].get("state") == "running")(ci.build("slow", 1)), 30,
             "slow #1 to run")
    ci.sh("buildunits force hello --reason 'queued across the change'")
    ct._wait(lambda: ci.sh("ls /var/spool/buildunits/requests/new", check=False).stdout.strip(), 30,
             "a queued request")


def check_queue_ran_and_retry(ci, hello_before):
    slow1 = ci.wait_finished("slow", 1)
    assert slow1["result"] == "retry" and "interrupted" in slow1["reason"], slow1
    assert ci.wait_finished("slow", 2)["result"] == "success"     # retried
    queued = ci.wait_finished("hello", hello_before + 1)
    assert "queued across the change" in queued["request"]["reason"]
    assert queued["result"] == "success"


def test_upgrade_from_the_previous_release_and_back(make_container):
    ci = CI(make_container(install=False))
    install_release(ci, PREVIOUS_COMMIT)
    assert version(ci) == PREVIOUS
    ci.setup({"hello": HELLO, "slow": SLOW})
    ci.commit("built by the previous release")
    assert ci.wait_finished("hello", 1)["result"] == "success"
    start_slow_with_queue(ci)

    # Upgrade: `make install` of the current code over it, restart. Nothing else.
    ci.sh("touch /var/lib/buildunits-dev/flag")
    install_current(ci)
    assert version(ci) != PREVIOUS
    restart_all(ci)
    check_queue_ran_and_retry(ci, 1)
    pages_of(ci, "hello", [1, 2])
    assert "success" in ci.sh("cat /var/lib/buildunits/site/builders/hello/1/index.html").stdout
    ci.commit("built by the current release")
    assert ci.wait_finished("hello", 3)["result"] == "success"
    # Its steps ran in the builder's sandbox unit, with none of the daemons'
    # drop-in (the previous release's prefix drop-in is gone with the upgrade).
    assert "hello #3 step test: started as process" in ci.journal("-u", "buildunits-build-hello-*")
    assert ci.sh("test -e /usr/lib/systemd/system/buildunits-.service.d", check=False).returncode == 1
    assert ci.sh("buildunits fsck", check=False).returncode == 0

    # Downgrade: the previous release over the current state still starts,
    # shows the history and builds.  Its runner runs steps as its own user,
    # and git refuses the checkouts the step user made since: the work
    # directories, a cache, are removed first, as the README says.
    ci.sh("rm -rf /var/lib/buildunits/work/*")
    install_release(ci, PREVIOUS_COMMIT)
    assert version(ci) == PREVIOUS
    restart_all(ci)
    status = json.loads(ci.sh("buildunits status --json").stdout)
    assert status["builders"]["hello"]["last"]["number"] == 3
    ci.commit("built by the previous release again")
    assert ci.wait_finished("hello", 4)["result"] == "success"
    pages_of(ci, "hello", [1, 2, 3, 4])


def test_reboot_with_builds_queued_and_running(make_container, tmp_path):
    keep = {}
    for d in ("etc", "spool", "state", "srv", "dev"):
        keep[d] = tmp_path / d
        keep[d].mkdir()
    binds = [(str(keep["etc"]), "/etc/buildunits"), (str(keep["spool"]), "/var/spool/buildunits"),
             (str(keep["state"]), "/var/lib/buildunits"), (str(keep["srv"]), "/srv"),
             (str(keep["dev"]), "/var/lib/buildunits-dev")]
    ci = CI(make_container(rw_binds=binds))
    ci.setup({"hello": HELLO, "slow": SLOW})
    ci.commit("before the reboot")
    assert ci.wait_finished("hello", 1)["result"] == "success"
    start_slow_with_queue(ci)
    ci.c.stop()                      # a clean halt: systemd stops every unit

    ci2 = CI(make_container(rw_binds=binds))
    ci2.sh("touch /var/lib/buildunits-dev/flag")
    ci2.sh("systemctl enable -q %s && systemctl start buildunits.target" % " ".join(RUNNERS))
    ci2.wait_active(DAEMONS)
    check_queue_ran_and_retry(ci2, 1)
    pages_of(ci2, "hello", [1, 2])
    assert ci2.sh("buildunits fsck", check=False).returncode == 0
