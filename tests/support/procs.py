"""Processes the tests start, and the ones those leave behind.

A daemon's children may leave its process group (the runner puts each
build step in a session of its own, to kill it as a whole).  systemd
would kill them with the unit's cgroup; here they are found through
/proc: the tree below a daemon, frozen with SIGSTOP so it cannot fork
away while it is collected, then killed.  And since a daemon that exits
orphans its children, the test process is made a child subreaper:
orphans are reparented to it, and Daemons.close() kills and reaps those
it did not start itself.
"""

import os
import signal
import subprocess
import tempfile

from buildunits import proctree


def short_dir(base, prefix="bu-"):
    """A directory for unix sockets under BASE, or in /tmp when BASE is too
    long for sun_path (108 bytes).  Returns (path, remove_at_teardown)."""
    cand = os.path.join(str(base), "run")
    if len(cand) + 24 < 100:
        os.makedirs(cand, exist_ok=True)
        return cand, False
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp"), True


become_subreaper = proctree.become_subreaper


def children_of(pid):
    return [p for p, (pp, _st) in proctree.table().items() if pp == pid]


def kill_tree(root):
    """SIGKILL ROOT and every process below it, freezing the tree first.
    Returns the pids killed."""
    seen = set()
    todo = {root}
    while todo:
        for p in todo:
            try:
                os.kill(p, signal.SIGSTOP)
            except (ProcessLookupError, PermissionError):
                pass
        seen |= todo
        table = proctree.table()
        todo = {p for p, (pp, st) in table.items() if pp in seen and p not in seen and st != "Z"}
    for p in seen:
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return seen


def terminate(proc, timeout=5.0, group=True):
    """Stop PROC (and its process group): SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        kill_group(proc, group)
        return proc.returncode
    try:
        proc.terminate()
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    kill_group(proc, group)
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    return proc.wait()


def kill_group(proc, group):
    if not group:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


OWN_PROCS = []  # the bus and monitor processes: not orphans to sweep


def own_pids():
    OWN_PROCS[:] = [p for p in OWN_PROCS if p.poll() is None]
    return {p.pid for p in OWN_PROCS}


def alive(pid):
    """PID exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:].split()[0] != b"Z"
