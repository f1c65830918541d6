"""Fixtures for buildunits tests; the machinery is in harness.py.

    private_bus    a private system-like dbus-daemon (harness.PrivateBus)
    monitor        dbus-monitor of every signal under /org/buildunits (harness.Monitor)
    notify_socket  a NOTIFY_SOCKET reader (harness.NotifyReader); more via make_notify_socket
    daemons        the project's programs against this test's directories (harness.Daemons)
    git_repo       make_repo(tmp_path/"repos"/"hello.git") (harness.GitRepo)

When a test fails, the logs of every daemon it started are added to the
failure report as a section "daemon logs".
"""

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402  (also puts lib/ on sys.path)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.failed:
        d = getattr(item, "funcargs", {}).get("daemons")
        if isinstance(d, harness.Daemons) and d.history:
            rep.sections.append(("daemon logs (%s)" % rep.when, d.all_logs()))
        b = getattr(item, "funcargs", {}).get("private_bus")
        if isinstance(b, harness.PrivateBus) and b.log().strip():
            rep.sections.append(("dbus-daemon log (%s)" % rep.when, b.log()))


@pytest.fixture
def private_bus(tmp_path):
    sockdir, remove = harness.short_dir(tmp_path)
    bus = harness.PrivateBus(tmp_path / "dbus", sockdir=sockdir)
    try:
        bus.start()
        yield bus
    finally:
        bus.stop()
        if remove:
            shutil.rmtree(sockdir, ignore_errors=True)


@pytest.fixture
def monitor(private_bus):
    return private_bus.monitor()


@pytest.fixture
def make_notify_socket(tmp_path):
    """make_notify_socket(name="") -> a new NotifyReader (one per process)."""
    sockdir, remove = harness.short_dir(tmp_path)
    readers = []

    def make(name=""):
        r = harness.NotifyReader(os.path.join(sockdir, "notify%d.sock" % len(readers)), name=name)
        readers.append(r)
        return r

    yield make
    for r in readers:
        r.close()
    if remove:
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.fixture
def notify_socket(make_notify_socket):
    return make_notify_socket()


@pytest.fixture
def daemons(tmp_path, private_bus):
    d = harness.Daemons(tmp_path, bus=private_bus)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def git_repo(tmp_path):
    return harness.make_repo(tmp_path / "repos" / "hello.git")
