"""Locks between builds on any worker: Locks=NAME[:N] and MaxBuilds=.

A lock of N slots is N files, STATE/locks/KIND/NAME.K for K from 0 to
N-1 (KIND "named" for Locks=, "builds" for a builder's MaxBuilds=).  A
runner holds a slot by an exclusive flock(2) on its file, taken without
waiting (LOCK_NB), from before it claims a request until the build's
record is final; it writes who holds it into the file, one JSON object
(format "lock-holder", version 1: worker, builder, number, since), for
`buildunits status` and the pages.  The flock is the truth, the text
only says who: a file whose flock nobody holds is a free slot, whatever
it says.

Crash safety: the kernel drops a flock when the last descriptor of its
open file goes, so a holder that dies, however it dies (SIGKILL, the OOM
killer, a power cut: the lock does not survive a reboot), holds nothing
from that instant; there is no lock to recover and none can be held for
ever.  A runner takes all of a build's locks or none (what it got is
given back when one is taken), and never waits for one, so two runners
cannot deadlock.  A runner that could not have a lock waits for a
BuildFinished signal or its retry timer, then tries again.

Only the runners of one machine share locks (their state directory).
"""

import fcntl
import json
import os
import time

from . import fsutil, records

FORMAT = "lock-holder"
VERSION = records.FORMATS[FORMAT]
KINDS = ("named", "builds")


def wanted(builder):
    """[(kind, name, slots)] BUILDER (a config.Builder) needs for a build:
    its Locks= (config.lock_spec: NAME:N) and MaxBuilds=, sorted."""
    out = [("named", name, n) for name, n in builder.locks]
    if builder.max_builds:
        out.append(("builds", builder.name, builder.max_builds))
    return sorted(set(out))


class Held:
    """The slots a build holds: [(kind, name, path, fd)]."""

    def __init__(self):
        self.slots = []

    def names(self):
        return ["%s:%s" % (k, n) for k, n, _p, _fd in self.slots]

    def note(self, number):
        """The build's number, now that it has one, in each slot's text."""
        for _k, _n, _path, fd in self.slots:
            try:
                who = json.loads(os.pread(fd, 4096, 0) or b"{}")
                data = (json.dumps(dict(who, number=number)) + "\n").encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
            except (OSError, ValueError):
                pass

    def release(self):
        """Give every slot back: the text emptied, then the descriptor closed
        (which drops the flock)."""
        for _k, _n, _path, fd in self.slots:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)
        self.slots = []


def _dir(state_dir, kind):
    return os.path.join(state_dir, "locks", kind)


def acquire(state_dir, wants, holder):
    """Take a slot of each lock of WANTS ([(kind, name, slots)]) for HOLDER
    ({worker, builder, number}).  (Held, None) when all are taken; (None,
    (kind, name)) naming the first that has no free slot, every slot taken
    so far given back.  OSError if a lock's directory cannot be made."""
    held = Held()
    for kind, name, slots in wants:
        d = _dir(state_dir, kind)
        fsutil.makedirs(d)
        for k in range(slots):
            path = os.path.join(d, "%s.%d" % (name, k))
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except OSError:
                os.close(fd)
                raise
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(dict(holder, format=FORMAT, v=VERSION, since=time.time()))
                               + "\n").encode(), 0)
            except OSError:
                pass        # who holds it is for people; the flock is held either way
            held.slots.append((kind, name, path, fd))
            break
        else:
            held.release()
            return None, (kind, name)
    return held, None


def holders(state_dir):
    """{(kind, name): [holder]} of every lock slot held now (its flock
    taken, as /proc/locks shows; the file's text says by whom)."""
    out = {}
    for kind in KINDS:
        d = _dir(state_dir, kind)
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for n in names:
            name, dot, k = n.rpartition(".")
            if not dot or not k.isdigit():
                continue
            path = os.path.join(d, n)
            if not fsutil.flock_held(path):
                continue
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    who = json.loads(f.read(4096) or "{}")
            except (OSError, ValueError):
                who = {}
            out.setdefault((kind, name), []).append(who if isinstance(who, dict) else {})
    return out
