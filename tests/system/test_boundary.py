"""The boundary between a build and everything else, under a real systemd.

A pushed script tries, in one build, what a hostile or careless build
would: write into the state, the spool and the site; rewrite a finished
build's record and page; force and cancel builds and own a name on the
bus; read the configuration and another builder's checkout; leave
daemons behind; exceed its process and memory limits; print its
credential.  Every attempt must fail or be contained, the build records
what happened, the history and the site are as they were, nothing of the
build runs afterwards, and the credential's value is nowhere but in
systemd's hands.  Then what stops a step: its time-out, and the runner
killed with SIGKILL under it, with the steps in the builder's sandbox
(its unit's process, buildunits-sandbox, runs them) and in units of their
own (UnitPerStep=yes).
"""

import re
import secrets

import pytest

import container as ct
from test_systemd import CI, REPO, WC

# Made now, so that it is in no file of the project either.
SECRET = "s3cr3t-" + secrets.token_hex(12)

ATTACK = r"""#!/bin/sh
# Each attempt prints "blocked NAME" or "ESCAPED NAME".
try() { name=$1; shift; if ( "$@" ) >/dev/null 2>&1; then echo "ESCAPED $name"; else echo "blocked $name"; fi; }
S=/var/lib/buildunits
try write-state sh -c "echo x > $S/pwned"
try write-spool sh -c 'echo x > /var/spool/buildunits/changes/new/pwned'
try write-site sh -c "echo x > $S/site/pwned.html"
try rewrite-record sh -c "echo '{}' > $S/builds/other/1/build.json"
try rewrite-page sh -c "echo '<script>alert(1)</script>' >> $S/site/builders/other/1/index.html"
try read-record cat $S/builds/other/1/build.json
try read-config cat /etc/buildunits/builders/other.builder
try list-config ls /etc/buildunits
try read-other-work sh -c "cat $S/work/*/other/secret.txt"
try wipe-history rm -r $S/builds
try force buildunits force other
try cancel buildunits cancel other 1
try call-status busctl call org.buildunits.Scheduler /org/buildunits/Scheduler org.buildunits.Scheduler Status
try own-name busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus RequestName su org.buildunits.Evil 4
try start-unit systemd-run --unit=evil true
# The sandbox's own process runs as the same user: its socket, memory and
# environment must still be out of reach (it is not dumpable).
P=$(pgrep -o -u buildunits-build -f buildunits-sandbox)
echo "sandbox pid ${P:-none}"
try sandbox-fds ls /proc/$P/fd/
try sandbox-socket sh -c "exec 3<>/proc/$P/fd/0"
try sandbox-environ cat /proc/$P/environ
try sandbox-memory dd if=/proc/$P/mem bs=1 count=1 skip=4194304
# LimitNPROC=64: not all of 100 processes can start (those that did are ended).
NPROC='
import subprocess
ps = []
try:
    for _ in range(100):
        ps.append(subprocess.Popen(["sleep", "30"]))
finally:
    for p in ps:
        p.kill()
        p.wait()
'
try nproc python3 -c "$NPROC"
# LimitAS=512M: a 1 GiB allocation fails.
try address-space python3 -c 'b = bytearray(1 << 30)'
echo "nofile $(ulimit -n)"
echo "home $HOME"
echo "token: $(cat "$CREDENTIALS_DIRECTORY/token")"
printf 'split: %s' "$(cut -c1-9 "$CREDENTIALS_DIRECTORY/token")"; printf '%s\n' "$(cut -c10- "$CREDENTIALS_DIRECTORY/token")"
# Daemons left behind: a new session, and a double fork.
setsid sleep 1000 >/dev/null 2>&1 < /dev/null &
( sh -c 'sleep 1001 >/dev/null 2>&1 < /dev/null &' & )
echo "left daemons behind"
"""

OTHER = """\
[Builder]
Description=a builder whose checkout and history the attack goes after

[Step secret]
Command=echo private > secret.txt; echo built
"""

EVIL = """\
[Builder]
Description=runs what is pushed
Repository=%s
PollIntervalSec=1
Credential=token
LimitNPROC=64
LimitAS=512M
LimitNOFILE=256

[Step attack]
Command=sh ./attack.sh
""" % REPO


def checksums(ci, paths):
    out = ci.sh("find %s -type f -print0 | sort -z | xargs -0 sha256sum" % " ".join(paths)).stdout
    assert out.strip(), paths
    return out


def push_attack(ci):
    ci.c.write_file(WC + "/attack.sh", ATTACK, owner="buildunits:buildunits")
    ci.sh("cd %s && git add attack.sh && git commit -q -m 'tests' && git push -q %s main" % (WC, REPO),
          user="buildunits")


# Sandboxes close soon after their last step, so that "nothing is left"
# can be seen within the tests' deadlines.
CONF = "[Daemons]\nSandboxIdleSec=2s\n"


def nothing_left(ci, what):
    ct._wait(lambda: ci.sh("pgrep -u buildunits-build", check=False).returncode == 1, 30, what)
    ct._wait(lambda: ci.sh("systemctl list-units --all --plain --no-legend 'buildunits-build-*'").stdout.strip() == "",
             30, "the units of buildunits-build to be gone")


def test_a_hostile_build_stays_inside_its_unit(make_container):
    ci = CI(make_container())
    ci.sh("install -d -m 0700 /etc/buildunits/credentials && "
          "printf %%s '%s' > /etc/buildunits/credentials/token && chmod 0600 /etc/buildunits/credentials/token"
          % SECRET)
    ci.setup({"other": OTHER, "evil": EVIL}, conf=CONF)
    ci.sh("buildunits force other")
    assert ci.wait_finished("other", 1)["result"] == "success"
    # .final is written last, when the build's pages are all there.
    ct._wait(lambda: ci.sh("test -f /var/lib/buildunits/site/builders/other/1/.final", check=False)
             .returncode == 0, 30, "the pages of other #1")
    history = ["/var/lib/buildunits/builds/other", "/var/lib/buildunits/site/builders/other/1"]
    before = checksums(ci, history)

    push_attack(ci)
    b = ci.wait_finished("evil", 1, timeout=120)
    logname = b["steps"][-1]["log"]
    log = ci.sh("cat /var/lib/buildunits/builds/evil/1/%s" % logname).stdout
    attempts = dict(reversed(line.split(" ", 1)) for line in log.splitlines()
                    if line.startswith(("blocked ", "ESCAPED ")))
    names = re.findall(r"^try ([\w-]+)", ATTACK, re.M)
    assert sorted(attempts) == sorted(names), log
    assert [n for n, what in attempts.items() if what != "blocked"] == [], log
    # The build ran as far as its end, and says what it saw.
    assert b["result"] == "success", b
    assert "nofile 256" in log and "home /tmp" in log and "left daemons behind" in log, log
    assert "token: ***" in log and "split: ***" in log, log
    assert re.search(r"^sandbox pid \d+$", log, re.M), log

    # Nothing of the build runs afterwards: what the step left is gone with
    # it, and the sandbox with its idle time.
    ct._wait(lambda: ci.sh("pgrep -u buildunits-build -x sleep", check=False).returncode == 1, 10,
             "the daemons the step left to be gone")
    nothing_left(ci, "the build's processes to be gone")
    # The history and the site are as they were; the spool has nothing of it.
    assert checksums(ci, history) == before
    assert ci.sh("find /var/spool/buildunits /var/lib/buildunits -name 'pwned*'").stdout == ""
    assert ci.numbers("other") == [1]
    fsck = ci.sh("buildunits fsck", check=False)
    assert fsck.returncode == 0, fsck.stdout
    # The credential is only where systemd keeps it.
    found = ci.sh("grep -rl --binary-files=text -F '%s' /var/lib/buildunits /var/spool/buildunits /run/buildunits "
                  "/tmp /var/tmp" % SECRET, check=False)
    assert found.stdout == "" and found.returncode == 1, found.stdout
    assert SECRET not in ci.c.journal("-o", "cat")
    # The journal says the cgroup limits are not enforced here (cgroup v1
    # controllers read-only in the container), and what was not measured
    # is absent from the record, not zero.
    assert "cgroup limits are not enforced" in ci.journal("-u", "buildunits-runner@1")
    for s in b["steps"]:
        usage = s.get("usage") or {}
        assert usage.get("cpu_sec", 1) > 0 and usage.get("memory_peak_bytes", 1) > 0, s


SLOW = """\
[Builder]
Description=a step that would run for ever
Repository=""" + REPO + """
Checkout=no
{builder}
[Step forever]
Command=setsid sleep 1000 >/dev/null 2>&1 < /dev/null & ( sh -c 'sleep 1001 &' & ); echo started; exec sleep 1002
{step}"""


@pytest.mark.parametrize("own_unit", [False, True], ids=["sandbox", "unit-per-step"])
def test_a_timeout_stops_the_whole_tree(make_container, own_unit):
    ci = CI(make_container())
    ci.setup({"slow": SLOW.format(builder="UnitPerStep=yes" if own_unit else "", step="TimeoutSec=2")}, conf=CONF)
    ci.sh("buildunits force slow")
    b = ci.wait_finished("slow", 1)
    assert b["result"] == "failure" and b["steps"][0]["timed_out"] is True, b
    assert b["steps"][0]["summary"].startswith("timed out after"), b
    ct._wait(lambda: ci.sh("pgrep -u buildunits-build -x sleep", check=False).returncode == 1, 10,
             "the step's processes to be gone")
    where = ci.journal("-u", "buildunits-build-slow-*")
    if own_unit:
        assert "Started buildunits-build-slow-1-forever.service" in where, where
    else:
        assert "slow #1 step forever: killed by SIGTERM" in where, where
    nothing_left(ci, "the sandbox to be gone")


def test_a_killed_runner_takes_its_sandboxs_steps_with_it(make_container):
    ci = CI(make_container())
    ci.setup({"slow": SLOW.format(builder="", step="")}, conf=CONF)
    ci.sh("systemctl stop buildunits-runner@2")
    ci.sh("buildunits force slow")
    unit = "buildunits-build-slow-sandbox-1.service"
    ct._wait(lambda: ci.sh("pgrep -u buildunits-build -x sleep", check=False).stdout.count("\n") == 3, 30,
             "the step and its daemons to run")
    sec = ci.sh("systemd-analyze security --no-pager %s" % unit).stdout
    level = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", sec).group(1))
    ct.log("exposure of a builder's sandbox unit: %.1f" % level)
    assert level <= 5.5, sec
    status = ci.sh("systemctl status --no-pager %s" % unit, check=False).stdout
    assert "sleep 1002" in status and "buildunits-sandbox" in status, status
    ci.sh("systemctl kill -s KILL buildunits-runner@1")
    # The runner's end of the socket is gone: the sandbox ends the step and
    # itself at once, before a new runner starts.
    ct._wait(lambda: ci.sh("pgrep -u buildunits-build", check=False).returncode == 1, 30,
             "the sandbox and the step to end with the runner")
    b = ci.wait_finished("slow", 1)
    assert b["result"] == "retry", b
    ci.sh("buildunits cancel slow 2", check=False)
    nothing_left(ci, "the retry's processes to be gone")


def test_units_outlive_a_killed_runner_until_the_next_one_stops_them(make_container):
    ci = CI(make_container())
    ci.setup({"slow": SLOW.format(builder="UnitPerStep=yes", step="")}, conf=CONF)
    ci.sh("systemctl stop buildunits-runner@2")
    ci.sh("buildunits force slow")
    unit = "buildunits-build-slow-1-forever.service"
    ct._wait(lambda: ci.sh("systemctl is-active %s" % unit, check=False).stdout.strip() == "active", 30,
             "the step's unit to run")
    # What systemd-analyze says of a step's unit, for the record.
    sec = ci.sh("systemd-analyze security --no-pager %s" % unit).stdout
    level = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", sec).group(1))
    ct.log("exposure of a build step's unit: %.1f" % level)
    assert level <= 5.5, sec
    ci.sh("systemctl kill -s KILL buildunits-runner@1")
    # The next runner (Restart=on-failure) stops the unit, then records
    # the build as interrupted and queues it again.
    b = ci.wait_finished("slow", 1)
    assert b["result"] == "retry", b
    journal = ci.journal("-u", "buildunits-runner@1")
    assert "outlived runner 1" in journal and unit in journal, journal
    assert ci.sh("systemctl is-active %s" % unit, check=False).stdout.strip() in ("inactive", "unknown")
    ci.sh("buildunits cancel slow 2", check=False)
    ct._wait(lambda: ci.sh("pgrep -u buildunits-build", check=False).returncode == 1, 60,
             "the steps' processes to be gone")
