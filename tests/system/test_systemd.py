"""buildunits under a real systemd: an operator's day, end to end.

Each test boots a container, installs the project with `make install`,
starts buildunits.target with two runners, and works only through what an
operator has: systemctl, journalctl, busctl/dbus-monitor, files in
/etc/buildunits, git, and the buildunits CLI.
"""

import json
import re
import shlex
import time

import pytest

import container as ct

REPO = "/srv/git/hello.git"
WC = "/var/lib/buildunits-dev/hello"
RUNNERS = ("buildunits-runner@1.service", "buildunits-runner@2.service")
# What a script on the machine runs to read a build (make install puts the
# library under PREFIX/lib/buildunits/python; the container installs PREFIX=/usr).
READ_BUILD = """\
import json, sys
sys.path.insert(0, "/usr/lib/buildunits/python")
from buildunits.state import State
rec = State("/var/lib/buildunits").read_build(sys.argv[1], int(sys.argv[2]))
if rec is not None:
    print(json.dumps(rec))
"""
DAEMONS = ("buildunits-poller.service", "buildunits-scheduler.service", "buildunits-htmlgen.service") + RUNNERS

HELLO = """\
[Builder]
Description=Build and test hello
Repository=/srv/git/hello.git
Branches=main release-*
PollIntervalSec=1
TreeStableSec=0

[Step compile]
Command=make

[Step test]
Command=make test
"""

MAKEFILE = "all:\n\t@echo compiled {v}\ntest:\n\t@echo tested {v}\n"


class CI:
    """A booted container running buildunits.target on the hello repository."""

    def __init__(self, c):
        self.c = c
        self.commits = 0

    def sh(self, script, check=True, user=None, timeout=ct.RUN_TIMEOUT):
        return self.c.run(["sh", "-c", script], check=check, user=user, timeout=timeout)

    def setup(self, builders=None, conf=None):
        # The repository belongs to the buildunits user, as a served repository
        # would belong to its service user (git refuses repositories of others).
        self.sh("mkdir -p /srv/git %s && chown buildunits:buildunits /srv/git %s" % (WC, WC))
        self.sh("git init -q --bare -b main %s" % REPO, user="buildunits")
        self.sh("cd %s && git init -q -b main . && git config user.name 'Dev Eloper' && "
                "git config user.email dev@example.org" % WC, user="buildunits")
        self.commit("initial")
        for name, text in (builders or {"hello": HELLO}).items():
            self.c.write_file("/etc/buildunits/builders/%s.builder" % name, text)
        if conf is not None:
            self.c.write_file("/etc/buildunits/buildunits.conf", conf)
        self.sh("systemctl enable -q %s && systemctl start buildunits.target" % " ".join(RUNNERS))
        self.wait_active(DAEMONS)
        # The poller's first poll records the heads; commits after it are built.
        ct._wait(lambda: self.sh("ls /var/lib/buildunits/poller/*.json", check=False).returncode == 0,
                 30, "the poller's first poll")

    def commit(self, message, version=None):
        self.commits += 1
        v = version or "v%d" % self.commits
        self.c.write_file(WC + "/Makefile", MAKEFILE.format(v=v), owner="buildunits:buildunits")
        self.sh("cd %s && git add Makefile && git commit -q -m '%s' && git push -q %s main"
                % (WC, message, REPO), user="buildunits")
        return self.sh("git -C %s rev-parse HEAD" % WC, user="buildunits").stdout.strip()

    def build(self, builder, number):
        """The build record as the installed code reads it: build.json with
        a running build's progress.jsonl applied (buildunits-state(5))."""
        p = self.sh("/usr/bin/python3 -c %s %s %d" % (shlex.quote(READ_BUILD), shlex.quote(builder), number),
                    check=False)
        return json.loads(p.stdout) if p.returncode == 0 and p.stdout.strip() else None

    def wait_finished(self, builder, number, timeout=60):
        def done():
            b = self.build(builder, number)
            return b if b and b.get("state") == "finished" else None
        return ct._wait(done, timeout, "%s #%d to finish" % (builder, number))

    def numbers(self, builder):
        out = self.sh("ls /var/lib/buildunits/builds/%s 2>/dev/null" % builder, check=False).stdout.split()
        return sorted(int(n) for n in out if n.isdigit())

    def wait_active(self, units, timeout=60):
        def active():
            out = self.sh("systemctl is-active %s" % " ".join(units), check=False).stdout.split()
            return out == ["active"] * len(units)
        ct._wait(active, timeout, "%s to be active" % " ".join(units))

    def journal(self, *args):
        return self.c.journal("-o", "cat", *args)

    def status_text(self, unit):
        return self.sh("systemctl show -P StatusText %s" % unit).stdout.strip()

    def wait_reloaded(self, unit, status_ok, timeout=20):
        """Wait until UNIT is active again with a STATUS= that STATUS_OK accepts:
        the daemon sends READY=1 and its post-reload STATUS= in one message."""
        def reloaded():
            out = self.sh("systemctl show -p ActiveState -p StatusText %s" % unit).stdout
            props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
            return props.get("ActiveState") == "active" and status_ok(props.get("StatusText", ""))
        ct._wait(reloaded, timeout, "%s to finish reloading" % unit)


@pytest.fixture
def ci(make_container):
    return CI(make_container())


def test_commit_to_build_with_journal_signals_and_site(ci):
    ci.sh("systemd-run -q --unit=signals -p StandardOutput=file:/run/signals.txt "
          "dbus-monitor --system \"type='signal',path_namespace='/org/buildunits'\"")
    ci.setup()
    sha = ci.commit("a change to build")
    b = ci.wait_finished("hello", 1)
    assert b["result"] == "success" and b["revision"] == sha
    assert [s["name"] for s in b["steps"]] == ["checkout", "compile", "test"]

    # journalctl with the builder's field shows its lifecycle, in order.  The
    # runner logs the build's last line after its record (and journald reads
    # each daemon's messages in its own time): wait for the lines, then look.
    requested = "hello: build requested for main %s" % sha[:12]
    finished = "hello #1: build finished: success"

    def lifecycle_logged():
        lines = ci.journal("-u", "buildunits-*", "BUILDUNITS_BUILDER=hello").splitlines()
        have = lambda w: any(l.startswith(w) for l in lines)  # noqa: E731
        return lines if have(requested) and have(finished) else None
    lines = ct._wait(lifecycle_logged, 20, "the journal to show build 1 requested and finished")
    assert any(l.startswith(requested) for l in lines), lines
    # (The scheduler and the runner are separate processes: the runner, woken
    # by the request's commit, may log before the scheduler's own line.)
    wanted = ["hello #1: build started", "hello #1: step checkout started",
              "hello #1: step test finished: success", "hello #1: build finished: success"]
    found = [next((i for i, l in enumerate(lines) if l.startswith(w)), None) for w in wanted]
    assert None not in found and found == sorted(found), lines
    by_build = ci.journal("BUILDUNITS_BUILD=1", "BUILDUNITS_BUILDER=hello", "BUILDUNITS_RESULT=success")
    assert finished in by_build, by_build

    # The signals on the system bus: each daemon's in the order of its commits
    # (signals of different daemons may interleave; see bus.py).
    def by_interface():
        text = ci.sh("cat /run/signals.txt").stdout
        out = {}
        for iface, member in re.findall(r"interface=org\.buildunits\.(\w+); member=(\w+)", text):
            out.setdefault(iface, []).append(member)
        return out
    runner = ["BuildStarted", "StepStarted", "StepFinished", "StepStarted", "StepFinished",
              "StepStarted", "StepFinished", "BuildFinished"]
    seen = ct._wait(lambda: (lambda s: s if s.get("Runner") == runner and "HTMLGen" in s else None)(by_interface()),
                    20, "the signals of build 1")
    assert seen["Poller"] == ["ChangeQueued"] and seen["Scheduler"] == ["BuildRequested"], seen
    assert set(seen["HTMLGen"]) == {"SiteUpdated"}, seen

    # The waterfall under the site directory shows it.
    # api/builders.json is written last in every update (docs/site.md).
    def site_shows_build_1():
        try:
            doc = json.loads(ci.sh("cat /var/lib/buildunits/site/api/builders.json", check=False).stdout)
        except ValueError:
            return False
        return any(b["name"] == "hello" and (b["last"] or {}).get("number") == 1 for b in doc["builders"])
    ct._wait(site_shows_build_1, 20, "the site to show build 1")
    index = ci.sh("cat /var/lib/buildunits/site/index.html").stdout
    assert "builders/hello/1/index.html" in index and "success" in index
    # STATUS= of every daemon shows in systemctl.
    for unit in DAEMONS:
        assert ci.sh("systemctl show -P StatusText %s" % unit).stdout.strip()


def test_reload_with_a_broken_config_keeps_the_old_one(ci):
    ci.setup()
    ci.c.write_file("/etc/buildunits/builders/hello.builder.d/50-broken.conf", "[Step test]\nTimeoutSec=soon\n")
    problem = "/etc/buildunits/builders/hello.builder.d/50-broken.conf:2: [Step test] TimeoutSec="
    ci.sh("systemctl reload buildunits-scheduler")
    # ExecReload= is a kill: systemctl returns before the daemon has read the
    # configuration.  It logs the refusal, then sends READY=1 with the reason
    # as STATUS=; journald reads the log in its own time.
    ci.wait_reloaded("buildunits-scheduler.service", lambda s: s.startswith("reload refused: "))
    log = ct._wait(lambda: (lambda j: j if "reload refused" in j and problem in j else None)(
        ci.journal("-u", "buildunits-scheduler")), 20, "the scheduler to log the refused reload")
    assert "reload refused" in log and problem in log
    status = ci.status_text("buildunits-scheduler.service")
    assert status.startswith("reload refused: " + problem), status
    # The old configuration keeps working.
    ci.commit("built with the old configuration")
    assert ci.wait_finished("hello", 1)["result"] == "success"
    # Fixed, and a new builder added: the reload takes effect.
    ci.sh("rm /etc/buildunits/builders/hello.builder.d/50-broken.conf")
    ci.c.write_file("/etc/buildunits/builders/solo.builder", "[Step hi]\nCommand=echo hi from solo\n")
    ci.sh("systemctl reload buildunits-scheduler %s" % " ".join(RUNNERS))
    # Each daemon logs "configuration reloaded" once the new configuration is
    # in use (the scheduler's first reload was refused, so this line is new),
    # then sends READY=1 with its usual status.  Only then may solo be forced.
    for unit in ("buildunits-scheduler.service",) + RUNNERS:
        ct._wait(lambda: "configuration reloaded: 2 builders" in ci.journal("-u", unit), 20,
                 "%s to log the reload" % unit)
    ci.wait_reloaded("buildunits-scheduler.service", lambda s: re.match(r"\d+ requests made; ", s))
    for unit in RUNNERS:
        ci.wait_reloaded(unit, lambda s: re.match(r"idle; \d+ builds? run$", s))
    ci.wait_active(DAEMONS)
    ci.sh("buildunits force solo --reason 'after the reload'")
    assert ci.wait_finished("solo", 1)["result"] == "success"


SLOW = """\
[Builder]
Description=slow unless /run/flag exists

[Step wait]
Command=echo waiting; test -e /run/flag || sleep 300
"""


def test_restart_runner_while_it_builds(ci):
    ci.setup({"hello": HELLO, "slow": SLOW})
    ci.sh("buildunits force slow")
    b = ct._wait(lambda: (lambda r: r if r and r["steps"][0].get("state") == "running" else None)(ci.build("slow", 1)),
                 30, "the slow step to run")
    unit = "buildunits-runner@%s.service" % b["worker"]
    ci.sh("touch /run/flag && systemctl restart %s" % unit)
    b1 = ci.wait_finished("slow", 1)
    assert b1["result"] == "retry" and "interrupted" in b1["reason"], b1
    # The request was handed back and built again, to completion.
    b2 = ci.wait_finished("slow", 2)
    assert b2["result"] == "success"
    # No process of the interrupted build is left behind.
    assert ci.sh("pgrep -x sleep", check=False).returncode == 1, ci.sh("ps ax").stdout
    ct._wait(lambda: (lambda j: "handed back" in j or "interrupted" in j)(ci.journal("-u", unit)), 20,
             "%s to log the interrupted build" % unit)


def test_kill_each_daemon_while_changes_arrive(ci):
    ci.setup()
    shas = []
    for unit in DAEMONS:
        shas.append(ci.commit("before killing %s" % unit))
        ci.sh("systemctl kill -s KILL %s" % unit)
        shas.append(ci.commit("while %s restarts" % unit))
        ci.wait_active([unit], timeout=30)     # systemd restarted it (Restart=on-failure)
    shas.append(ci.commit("after all the kills"))

    def all_built():
        builds = [ci.build("hello", n) for n in ci.numbers("hello")]
        if any(b is None or b.get("state") != "finished" for b in builds):
            return None
        ok = [b["revision"] for b in builds if b["result"] == "success"]
        return builds if set(shas) <= set(ok) else None
    builds = ct._wait(all_built, 120, "every commit to be built")
    ok = [b["revision"] for b in builds if b["result"] == "success"]
    assert sorted(ok) == sorted(set(ok)), "a revision was built twice: %s" % ok
    assert set(ok) == set(shas)
    # Anything else is a retried interrupted build, and says so.
    for b in builds:
        assert b["result"] in ("success", "retry"), b
    restarts = ci.sh("systemctl show -P NRestarts %s" % " ".join(DAEMONS)).stdout.split()
    assert all(int(n) >= 1 for n in restarts), restarts
    fsck = ci.sh("buildunits fsck", check=False)
    assert fsck.returncode == 0, fsck.stdout


def test_only_admins_may_force_cancel_or_own_names(ci):
    ci.setup()
    ci.sh("useradd -M mallory && useradd -M -G buildunits-admin alice")
    no = ci.sh("buildunits force hello", user="mallory", check=False)
    assert no.returncode == 1 and "refused" in no.stderr and "AccessDenied" in no.stderr, no
    no = ci.sh("buildunits cancel hello 1", user="mallory", check=False)
    assert no.returncode == 1 and "AccessDenied" in no.stderr, no
    own = ci.sh("busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus "
                "RequestName su org.buildunits.Scheduler2 4", user="mallory", check=False)
    assert own.returncode != 0 and "ccess denied" in own.stderr, own
    # Anyone may read the status.
    ok = ci.sh("busctl call --json=short org.buildunits.Scheduler /org/buildunits/Scheduler "
               "org.buildunits.Scheduler Status", user="mallory")
    assert "hello" in json.loads(json.loads(ok.stdout)["data"][0])["builders"]
    # A member of buildunits-admin may force.
    yes = ci.sh("buildunits force hello --reason 'by alice'", user="alice")
    assert "forced build of hello queued" in yes.stdout
    b = ci.wait_finished("hello", 1)
    assert b["request"]["reason"] == "forced by alice: by alice"
