"""Process-tree control: this process's descendants, and how to end them.

A build step may leave its session and process group (setsid, a double
fork, a daemon): signalling the group alone misses those.  This process
becomes a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so whatever a
step leaves behind is reparented to it rather than to init, and stays
one of its descendants, found in /proc.  A process that outlives the
subreaper itself (the runner killed with SIGKILL, outside systemd) is
found by the token in its environment instead (tagged()), which its
descendants inherit.

Only Linux's /proc is read; nothing here knows what a build is.  Each
function that signals ignores processes that are already gone.
"""

import ctypes
import os
import signal
import time

_PR_SET_CHILD_SUBREAPER = 36
TOKEN_VARIABLE = "BUILDUNITS_BUILD_TOKEN"


def become_subreaper():
    """Make orphans of this process's descendants its children; False if
    the kernel (or the C library) would not."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def has_children():
    """True if this process has a child (alive or not yet reaped)."""
    try:
        for tid in os.listdir("/proc/self/task"):
            with open("/proc/self/task/%s/children" % tid) as f:
                if f.read().strip():
                    return True
        return False
    except OSError:
        return True   # cannot tell: look the slow way


def _each(what):
    """(pid, contents of /proc/PID/WHAT) of every process that can be read."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/%s" % (name, what), "rb") as f:
                yield int(name), f.read()
        except OSError:
            continue


def table():
    """{pid: (ppid, state)} of every process, from /proc/PID/stat."""
    out = {}
    for pid, stat in _each("stat"):
        # The command name (in parentheses) may hold spaces and ")".
        fields = stat[stat.rindex(b")") + 2:].split()
        out[pid] = (int(fields[1]), fields[0].decode())
    return out


def descendants(root):
    """PIDs of every descendant of ROOT (from /proc), deepest last."""
    children = {}
    for pid, (ppid, _state) in table().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(pgid, sig):
    """SIG to the process group PGID (None: none) and to every descendant
    of this process: what a step started, in its group or out of it."""
    if pgid is not None:
        _kill(os.killpg, pgid, sig)
    for pid in descendants(os.getpid()):
        _kill(os.kill, pid, sig)


def kill_leftovers(pgid):
    """SIGKILL to what a step that has exited left behind (its group, and
    descendants that left it), then reap them.  Usually there is nothing,
    which one small read of /proc/self tells."""
    _kill(os.killpg, pgid, signal.SIGKILL)
    if has_children():
        for pid in descendants(os.getpid()):
            _kill(os.kill, pid, signal.SIGKILL)
    reap()


def reap():
    """Collect the children that have exited (orphans reparented to a
    subreaper among them), without waiting."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def tagged(token):
    """PIDs of the live processes (not this one) whose environment holds
    BUILDUNITS_BUILD_TOKEN=TOKEN.  A zombie has no environment left; a
    process of another user cannot be read (and is not one we started)."""
    needle = ("%s=%s" % (TOKEN_VARIABLE, token)).encode()
    me = os.getpid()
    return [pid for pid, env in _each("environ") if pid != me and needle in env.split(b"\0")]


def end_tagged(token, grace, poll=0.05):
    """Stop every process tagged with TOKEN: SIGTERM, up to GRACE seconds,
    then SIGKILL and up to GRACE more.  Returns the PIDs still there (an
    empty list when all are gone).  PermissionError (its message naming
    the pid) if one cannot be signalled."""
    pids = tagged(token)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError as e:
                raise PermissionError(e.errno, "cannot stop process %d: %s" % (pid, e.strerror))
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(poll)
            pids = tagged(token)
    return pids


def _kill(fn, pid, sig):
    try:
        fn(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def usage(before, after, own=None):
    """The USAGE of a step (executor.py) from this process's RUSAGE_CHILDREN
    BEFORE and AFTER it, and OWN, its own rusage from wait4 (or None).

    >>> import collections
    >>> R = collections.namedtuple("R", "ru_utime ru_stime ru_maxrss ru_inblock ru_oublock")
    >>> usage(R(1.0, 0.5, 900, 8, 0), R(3.0, 1.0, 900, 16, 2), R(1.5, 0.5, 100, 8, 2))
    {'cpu_sec': 2.5, 'io_read_bytes': 4096, 'io_write_bytes': 1024, 'memory_peak_bytes': 102400}
    >>> usage(R(1.0, 0.5, 900, 8, 0), R(1.0, 0.5, 900, 8, 0))
    {'cpu_sec': 0.0, 'io_read_bytes': 0, 'io_write_bytes': 0}
    """
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    out = {"cpu_sec": round(max(0.0, cpu), 3),
           # Blocks of 512 bytes, whatever the file system's.
           "io_read_bytes": max(0, after.ru_inblock - before.ru_inblock) * 512,
           "io_write_bytes": max(0, after.ru_oublock - before.ru_oublock) * 512}
    peak = own.ru_maxrss if own is not None else 0
    if after.ru_maxrss > before.ru_maxrss:
        peak = max(peak, after.ru_maxrss)
    if peak > 0:
        out["memory_peak_bytes"] = peak * 1024      # ru_maxrss is in KiB
    return out
