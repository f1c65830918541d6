"""Fixtures for buildunits tests; the machinery is in the support package
(tests/support/, also named by harness.py).

    private_bus    a private system-like dbus-daemon (support.bus.PrivateBus)
    monitor        dbus-monitor of every signal under /org/buildunits (support.bus.Monitor)
    notify_socket  a NOTIFY_SOCKET reader (support.notify.NotifyReader); more via make_notify_socket
    daemons        the project's programs against this test's directories (support.daemons.Daemons)
    git_repo       make_repo(tmp_path/"repos"/"hello.git") (support.git.GitRepo)

When a test fails, the logs of every daemon it started are added to the
failure report as a section "daemon logs".
"""

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from support.bus import PrivateBus  # noqa: E402  (support also puts lib/ on sys.path)
from support.daemons import Daemons  # noqa: E402
from support.git import make_repo  # noqa: E402
from support.notify import NotifyReader  # noqa: E402
from support.procs import short_dir  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.failed:
        d = getattr(item, "funcargs", {}).get("daemons")
        if isinstance(d, Daemons) and d.history:
            rep.sections.append(("daemon logs (%s)" % rep.when, d.all_logs()))
        b = getattr(item, "funcargs", {}).get("private_bus")
        if isinstance(b, PrivateBus) and b.log().strip():
            rep.sections.append(("dbus-daemon log (%s)" % rep.when, b.log()))


@pytest.fixture
def private_bus(tmp_path):
    sockdir, remove = short_dir(tmp_path)
    bus = PrivateBus(tmp_path / "dbus", sockdir=sockdir)
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
    sockdir, remove = short_dir(tmp_path)
    readers = []

    def make(name=""):
        r = NotifyReader(os.path.join(sockdir, "notify%d.sock" % len(readers)), name=name)
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
    d = Daemons(tmp_path, bus=private_bus)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def git_repo(tmp_path):
    return make_repo(tmp_path / "repos" / "hello.git")
