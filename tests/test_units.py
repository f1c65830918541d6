"""The systemd units, checked offline as `make units` renders them (units/*.in
and the drop-in directories, laid out as installed): `systemd-analyze verify`
prints nothing (it exits 0 on warnings, so the output is what counts), the
shared hardening (units/hardening.conf) reaches every daemon, the strict
settings the daemons, the runner's two exceptions, and
sysusers.d/tmpfiles.d apply cleanly."""

import os
import pathlib
import re
import subprocess

import pytest

import harness

ROOT = harness.REPO_ROOT
DAEMON_UNITS = ["buildunits-poller.service", "buildunits-scheduler.service", "buildunits-htmlgen.service",
                "buildunits-notifier.service", "buildunits-runner@.service"]
UNITS = DAEMON_UNITS + ["buildunits-launcher.service", "buildunits-launcher.socket", "buildunits-webhook.service",
                        "buildunits-webhook.socket", "buildunits.target", "buildunits-timer@.service",
                        "buildunits-janitor.service", "buildunits-janitor.timer"]
# Exposure targets from `systemd-analyze security` (0 = safe, 10 = exposed).
TARGETS = {"buildunits-poller.service": 2.0, "buildunits-scheduler.service": 2.0,
           "buildunits-htmlgen.service": 2.0,
           # Mail, webhooks and forges: the network, as the poller's.
           "buildunits-notifier.service": 2.0,
           # Root, with CAP_SYS_ADMIN for systemd's unit calls and CAP_CHOWN,
           # CAP_FOWNER for the work directories.
           "buildunits-launcher.service": 2.0,
           # Socket-activated; a network of its own (the socket comes from systemd).
           "buildunits-webhook.service": 2.0,
           # A builder's OnCalendar= timer's oneshot: the poller's network, for OnlyIfChanged=.
           "buildunits-timer@.service": 2.0,
           # The retention pass: no network, no bus, files only.
           "buildunits-janitor.service": 2.0,
           # Build steps run in units of their own; docs/design.md says what
           # is relaxed and why (3.1 while it ran them itself).
           "buildunits-runner@.service": 2.5}


# What `systemd-analyze security` must find for every daemon: the settings of
# units/hardening.conf (UMask=0022 aside, which it marks:
# the site and logs are meant to be readable).
SHARED = ["NoNewPrivileges=", "CapabilityBoundingSet=~CAP_SYS_ADMIN", "AmbientCapabilities=", "ProtectSystem=",
          "ProtectHome=", "PrivateTmp=", "PrivateDevices=", "ProtectKernelTunables=", "ProtectKernelModules=",
          "ProtectKernelLogs=", "ProtectControlGroups=", "ProtectClock=", "ProtectHostname=", "ProtectProc=",
          "RestrictNamespaces=~user", "RestrictRealtime=", "RestrictSUIDSGID=", "LockPersonality=", "RemoveIPC=",
          "KeyringMode=", "SystemCallArchitectures="]
# ... and for the daemons that run no build steps, which the runner relaxes.
STRICT = ["PrivateUsers=", "ProcSubset=", "SystemCallFilter=~@privileged", "SystemCallFilter=~@resources",
          "SystemCallFilter=~@mount", "MemoryDenyWriteExecute="]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """BUILDDIR of `make units man`, with BINDIR the checkout's bin/."""
    d = tmp_path_factory.mktemp("build")
    p = subprocess.run(["make", "-s", "units", "man", "BUILDDIR=%s" % d, "PREFIX=%s" % ROOT,
                        "PYTHON=" + harness.PYTHON], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    assert p.returncode == 0, p.stdout
    return d


def assessment(unit_path):
    """{check: passed} of `systemd-analyze security --offline` for the unit at
    UNIT_PATH, with the drop-ins beside it, as systemd itself combines them."""
    env = dict(os.environ, LC_ALL="C.UTF-8", SYSTEMD_UTF8="1")   # the check marks, not +/-
    p = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit_path)], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checks = {m.group(2): m.group(1) == "\u2713" for m in re.finditer(r"^([\u2713\u2717]) (\S+)", p.stdout, re.M)}
    assert len(checks) > 50, p.stdout
    return checks


@pytest.mark.parametrize("unit", UNITS)
def test_verify_prints_nothing(rendered, unit):
    env = dict(os.environ, MANPATH=str(rendered / "man"))   # Documentation=man:... must resolve
    path = rendered / "units" / unit
    p = subprocess.run(["systemd-analyze", "verify", str(path)], env=env, cwd=str(rendered / "units"),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "", p.stdout


@pytest.mark.parametrize("unit", sorted(TARGETS))
def test_security_exposure(rendered, unit):
    p = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                        str(rendered / "units" / unit)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", p.stdout)
    assert m, p.stdout
    level = float(m.group(1))
    print("%s: exposure %.1f (target %.1f)" % (unit, level, TARGETS[unit]))
    assert level <= TARGETS[unit], p.stdout


@pytest.mark.parametrize("unit", sorted(TARGETS))
def test_the_shared_hardening_reaches_every_daemon(rendered, unit):
    checks = assessment(rendered / "units" / unit)
    if unit == "buildunits-launcher.service":
        # Root: RemoveIPC= is not assessed for root; its capabilities are
        # CAP_SYS_ADMIN (for systemd) and CAP_CHOWN, CAP_FOWNER (work directories).
        caps = ["CapabilityBoundingSet=~CAP_SYS_ADMIN", "CapabilityBoundingSet=~CAP_(CHOWN|FSETID|SETFCAP)",
                "CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)"]
        assert [c for c in SHARED if not checks.get(c, c == "RemoveIPC=")] == caps[:1]
        assert sorted(c for c in checks if c.startswith("CapabilityBoundingSet=") and not checks[c]) == sorted(caps)
    else:
        assert [c for c in SHARED if not checks[c]] == []


@pytest.mark.parametrize("unit", sorted(TARGETS))
def test_only_the_runner_is_relaxed(rendered, unit):
    checks = assessment(rendered / "units" / unit)
    if unit == "buildunits-runner@.service":
        # Its unit file says why: it gives the work directories to the step
        # user's group (chown, of @privileged), and plain-process steps may
        # set rlimits.
        assert [c for c in STRICT if not checks[c]] == ["PrivateUsers=", "SystemCallFilter=~@privileged",
                                                        "SystemCallFilter=~@resources"]
    elif unit == "buildunits-launcher.service":
        # Its unit file says why: systemd must see its root as root, and it
        # chowns the work directories.
        assert [c for c in STRICT if not checks[c]] == ["PrivateUsers=", "SystemCallFilter=~@privileged"]
    else:
        assert [c for c in STRICT if not checks[c]] == []


def test_the_shared_drop_in_only_restricts(rendered):
    """units/hardening.conf is installed as each daemon's own
    NAME.service.d/10-hardening.conf, never as the prefix drop-in
    buildunits-.service.d/, which systemd would also apply to the build
    steps' transient units (buildunits-build-*) and to an administrator's
    own buildunits-* units.  It only restricts: a StateDirectory= would
    chown the state, a User= run a unit as ours.  Those stay in each unit."""
    units = rendered / "units"
    assert not (units / "buildunits-.service.d").exists()
    source = (pathlib.Path(ROOT) / "units" / "hardening.conf").read_text()
    for unit in sorted(TARGETS):
        assert (units / (unit + ".d") / "10-hardening.conf").read_text() == source, unit
    keys = re.findall(r"^(\w+)=", source, re.M)
    assert "ProtectSystem" in keys
    assert set(keys) & {"User", "Group", "DynamicUser", "StateDirectory", "ConfigurationDirectory",
                        "ReadWritePaths", "ExecStart", "Environment"} == set()


def test_every_daemon_unit_has_the_required_settings(rendered):
    for unit in DAEMON_UNITS:
        text = (rendered / "units" / unit).read_text()
        for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "Restart=on-failure",
                     "ExecReload=/bin/kill -HUP $MAINPID", "User=buildunits", "StateDirectory=buildunits",
                     "ConfigurationDirectory=buildunits", "ReadWritePaths=/var/spool/buildunits",
                     "PartOf=buildunits.target", "WantedBy=buildunits.target"):
            assert line in text, "%s lacks %s" % (unit, line)
        assert "@" not in re.sub(r"buildunits-runner@|%i|@system-service|@privileged|@resources|@chown", "", text), \
            "unsubstituted placeholder in %s" % unit


def test_the_janitor_runs_daily_from_a_timer_the_target_wants(rendered):
    """buildunits.target wants buildunits-janitor.timer (so list-timers
    shows it once the target runs), a daily, persistent timer with a
    little randomised delay, starting the oneshot as the buildunits user."""
    units = rendered / "units"
    target = (units / "buildunits.target").read_text()
    assert re.search(r"^Wants=.*\bbuildunits-janitor\.timer\b", target, re.M), target
    timer = (units / "buildunits-janitor.timer").read_text()
    for line in ("OnCalendar=daily", "Persistent=yes", "PartOf=buildunits.target"):
        assert re.search(r"^%s$" % re.escape(line), timer, re.M), timer
    delay = re.search(r"^RandomizedDelaySec=(\S+)$", timer, re.M)
    from buildunits import config
    assert delay and 0 < config.parse_timespan(delay.group(1)) <= 3600, timer
    service = (units / "buildunits-janitor.service").read_text()
    for line in ("Type=oneshot", "User=buildunits", "StateDirectory=buildunits",
                 "ExecStart=%s/bin/buildunits janitor" % ROOT):
        assert re.search(r"^%s$" % re.escape(line), service, re.M), service


def test_sysusers_and_tmpfiles_apply_to_a_scratch_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for f in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / f).write_text("root:x:0:0:root:/root:/bin/sh\n" if f == "passwd" else
                                      "root:x:0:\n" if f == "group" else "root:*::\n" if f == "gshadow"
                                      else "root:*:19000:0:99999:7:::\n")
    p = subprocess.run(["systemd-sysusers", "--root", str(root), os.path.join(ROOT, "units", "sysusers.d",
                                                                            "buildunits.conf")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.returncode == 0, p.stdout
    assert re.search(r"^buildunits:x:\d+:\d+:.*:/var/lib/buildunits:", (root / "etc" / "passwd").read_text(), re.M)
    assert re.search(r"^buildunits-admin:x:\d+:", (root / "etc" / "group").read_text(), re.M)
    p = subprocess.run(["systemd-tmpfiles", "--root", str(root), "--create",
                        os.path.join(ROOT, "units", "tmpfiles.d", "buildunits.conf")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "", p.stdout
    spool = root / "var" / "spool" / "buildunits"
    # The layout the tmpfiles.d file makes is the layout spool.py uses.
    from buildunits.spool import Spool
    made = sorted(os.path.relpath(d, spool) for d, _, _ in os.walk(spool))
    other = tmp_path / "spool"
    Spool(str(other)).ensure()
    expected = sorted(os.path.relpath(d, other) for d, _, _ in os.walk(other))
    assert made == expected
    assert oct((spool / "changes" / "new").stat().st_mode & 0o7777) == "0o2770"
