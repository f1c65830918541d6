"""Fixtures for the system tier: a real systemd in a container (see container.py).

    image           the cached Debian tree (session; built on first use, ~1 min)
    make_container  make_container(install=True, binds=(), rw_binds=()) -> a booted
                    Container with the checkout bound read-only at /src and,
                    unless install=False, the project installed; all stopped
                    at teardown
    container       make_container(): one booted container with the project installed

This tier needs root, systemd-nspawn and debootstrap (installed on demand).
Where containers cannot run, every test here FAILS, saying why; set
BUILDUNITS_SKIP_SYSTEM=1 to skip the tier instead.

When a test fails, each of its live containers' `journalctl -b` is added
to the report (and the console, when a container did not boot).
"""

import contextlib
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import container as ct  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SKIP_VAR = "BUILDUNITS_SKIP_SYSTEM"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    for c in getattr(item, "_buildunits_containers", ()):
        if c.running():
            try:
                rep.sections.append(("journalctl -b of %s (%s)" % (c.name, rep.when), c.journal("-b")))
            except Exception as e:  # the report must not hide the failure
                rep.sections.append(("journal of %s" % c.name, "cannot read it: %s" % e))
        elif c.read_console():
            rep.sections.append(("console of %s (%s)" % (c.name, rep.when), ct._tail(c.read_console(), 200)))


def _unavailable_reason():
    if os.geteuid() == 0:
        try:
            ct.ensure_tools()
        except Exception as e:
            return "cannot install the container tools: %s" % e
    return ct.why_unavailable()


@pytest.fixture(scope="session")
def image(request):
    if os.environ.get(SKIP_VAR) == "1":
        pytest.skip("%s=1: system tier skipped" % SKIP_VAR)
    # Progress of a cold build (about a minute) is shown even under capture.
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        reason = _unavailable_reason()
        if reason:
            pytest.fail("system tests cannot run on this machine: %s (set %s=1 to skip them)"
                        % (reason, SKIP_VAR), pytrace=False)
        ct.cleanup_leftovers()
        start = time.monotonic()
        img = ct.Image().ensure()
        if img.build_seconds is None:
            ct.log("image %s is cached (%.1f s)" % (img.path, time.monotonic() - start))
    return img


@pytest.fixture
def make_container(image, request):
    made = []
    request.node._buildunits_containers = made

    def make(install=True, binds=(), rw_binds=()):
        c = ct.Container(image, ct.unique_name(), binds=[(REPO_ROOT, "/src")] + list(binds), rw_binds=rw_binds)
        made.append(c)
        c.boot()
        if install:
            ct.install_project(c)
        return c

    yield make
    errors = []
    for c in made:
        try:
            c.stop()
        except Exception as e:
            errors.append("%s: %s" % (c.name, e))
    if errors:
        pytest.fail("stopping containers failed:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture
def container(make_container):
    return make_container()
