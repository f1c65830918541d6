"""Under a real systemd, `systemctl start buildunits.target` brings every
daemon up: each unit becomes active (Type=notify: READY=1 was sent) and
says what it is doing (STATUS=); every daemon, runner instances included,
runs with the shared hardening drop-in, and only the runner without the
strict settings."""

import os
import re
import time

import pytest

import container as ct

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNNERS = ("buildunits-runner@1.service", "buildunits-runner@2.service")
UNITS = ("buildunits-poller.service", "buildunits-scheduler.service", "buildunits-htmlgen.service") + RUNNERS
BUILDER = """\
# A builder with no repository: built only when forced.
[Builder]
Description=says hello
Workers=*

[Step hello]
Command=echo hello
"""


def test_target_starts_every_daemon(make_container):
    if not os.path.exists(os.path.join(ROOT, "units", "buildunits.target.in")):
        pytest.fail("units/buildunits.target is not in this checkout: the units under test are missing",
                    pytrace=False)
    c = make_container()
    c.write_file("/etc/buildunits/builders/hello.builder", BUILDER)
    c.run(["systemctl", "enable"] + list(RUNNERS))
    start = time.monotonic()
    c.run(["systemctl", "start", "buildunits.target"], timeout=120)

    def states():
        out = c.run(["systemctl", "is-active"] + list(UNITS), check=False).stdout.split()
        return dict(zip(UNITS, out))

    def settled():
        s = states()
        return s if all(v in ("active", "failed", "inactive") for v in s.values()) else None

    final = ct._wait(settled, 60, "the units to finish starting")
    status = c.run(["systemctl", "status", "--no-pager", "--lines=20"] + list(UNITS), check=False).stdout
    assert all(v == "active" for v in final.values()), "%s\n%s" % (final, status)
    print("buildunits.target active in %.2f s" % (time.monotonic() - start))

    def status_texts():
        texts = {u: c.run(["systemctl", "show", "-P", "StatusText", u]).stdout.strip() for u in UNITS}
        return texts if all(texts.values()) else None

    try:
        texts = ct._wait(status_texts, 20, "every unit's StatusText")
    except ct.HarnessError as e:
        texts = {u: c.run(["systemctl", "show", "-P", "StatusText", u]).stdout.strip() for u in UNITS}
        pytest.fail("%s: %s\n%s" % (e, texts, status), pytrace=False)
    for unit, text in sorted(texts.items()):
        print("%-32s %s" % (unit, text))


def test_every_daemon_runs_with_the_shared_drop_in(container):
    c = container
    for unit in UNITS:
        cat = c.run(["systemctl", "cat", unit]).stdout
        assert "# /usr/lib/systemd/system/%s.d/10-hardening.conf\n" % re.sub(r"@.*\.", "@.", unit) in cat, cat
        props = dict(line.split("=", 1) for line in c.run(
            ["systemctl", "show", "-p", "ProtectSystem,NoNewPrivileges,PrivateUsers,SystemCallFilter", unit]
        ).stdout.splitlines())
        assert props["ProtectSystem"] == "strict" and props["NoNewPrivileges"] == "yes", (unit, props)
        strict = props["PrivateUsers"] == "yes" and props["SystemCallFilter"] != ""
        assert strict == (not unit.startswith("buildunits-runner@")), (unit, props)
