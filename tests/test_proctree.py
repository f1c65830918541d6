"""proctree.py: descendants, killing a tree, processes tagged with a token.

Real processes, children of the test process; each test leaves none.
"""

import os
import secrets
import signal
import subprocess
import time

import pytest

from buildunits import proctree
from support.procs import alive


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        p.wait()
    proctree.reap()


def spawn(procs, script, env=None):
    p = subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    return p


def test_become_subreaper():
    assert proctree.become_subreaper() is True


def test_descendants_include_those_that_left_the_session(procs, tmp_path):
    p = spawn(procs, "setsid sleep 1000 & sleep 1000 & wait")
    assert wait_for(lambda: len(proctree.descendants(p.pid)) == 2)
    mine = proctree.descendants(os.getpid())
    assert p.pid in mine and set(proctree.descendants(p.pid)) <= set(mine)
    assert proctree.has_children()


def test_kill_tree_kills_the_group_and_the_escaped(procs):
    p = spawn(procs, "setsid sh -c 'trap \"\" TERM; sleep 1000' & sleep 1000 & wait")
    assert wait_for(lambda: len(proctree.descendants(p.pid)) >= 3)
    tree = [p.pid] + proctree.descendants(p.pid)
    proctree.kill_tree(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    assert wait_for(lambda: (proctree.reap(), not any(alive(pid) for pid in tree))[1])


def test_kill_leftovers_after_the_leader_exited(procs, tmp_path):
    """An orphan of an exited step is reparented to the subreaper (this
    process), and killed and reaped with what is left of the step."""
    assert proctree.become_subreaper()
    pidfile = tmp_path / "pid"
    p = spawn(procs, "setsid sh -c 'echo $$ > %s; exec sleep 1000' & exit 0" % pidfile)
    p.wait(timeout=10)
    assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip())
    orphan = int(pidfile.read_text())
    assert wait_for(lambda: orphan in proctree.descendants(os.getpid()))
    proctree.kill_leftovers(p.pid)
    assert wait_for(lambda: (proctree.reap(), not alive(orphan))[1])


def test_tagged_finds_the_build_and_nothing_else(procs):
    token, other = secrets.token_hex(8), secrets.token_hex(8)
    mine = spawn(procs, "exec sleep 1000", env=dict(os.environ, **{proctree.TOKEN_VARIABLE: token}))
    spawn(procs, "exec sleep 1000", env=dict(os.environ, **{proctree.TOKEN_VARIABLE: other}))
    spawn(procs, "exec sleep 1000", env=dict(os.environ, **{proctree.TOKEN_VARIABLE: token + "0"}))
    assert wait_for(lambda: proctree.tagged(token) == [mine.pid])
    assert proctree.tagged(secrets.token_hex(8)) == []


def test_end_tagged_terms_then_kills(procs, tmp_path):
    token = secrets.token_hex(8)
    env = dict(os.environ, **{proctree.TOKEN_VARIABLE: token})
    ready = tmp_path / "ready"
    polite = spawn(procs, "exec sleep 1000", env=env)
    # It says it is ready only once SIGTERM is ignored: a SIGTERM that came
    # before the trap would end it, and the test would see -SIGTERM.
    stubborn = spawn(procs, "trap '' TERM; : > %s; while :; do sleep 0.05; done" % ready,
                     env=env)
    assert wait_for(lambda: ready.exists())
    assert wait_for(lambda: {polite.pid, stubborn.pid} <= set(proctree.tagged(token)))

    # Reap what dies meanwhile, as a subreaper's main loop would.
    reaper = [polite, stubborn]
    left = proctree.end_tagged(token, grace=0.5)
    for p in reaper:
        p.wait(timeout=10)
    assert left == [] or not any(alive(pid) for pid in left)
    assert polite.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL


def test_end_tagged_with_nothing_to_end():
    assert proctree.end_tagged(secrets.token_hex(8), grace=5) == []
