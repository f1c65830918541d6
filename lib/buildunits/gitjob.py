"""A git reading (git.py) driven from the GLib main loop, with a deadline.

A reading is a generator of git commands (git.Command; hg.py and svn.py
make readings of the same kind, whose commands run hg or svn).  Job runs each
one as a child process and resumes the reading with its output when it
ends, so the loop goes on serving timers, signals and other jobs while
git works: a remote that never answers holds up only its own job.

Each child is started with posix_spawn in a process group of its own
(git over http or ssh runs a helper beside it), its standard input a
memory file holding the command's input (or /dev/null), its standard
output and error non-blocking pipes read by the loop.  Its end is seen
through a pidfd, which becomes readable when the process exits and
before it is reaped: until then its process id, and so its group's, is
still its own, and signalling the group cannot reach a process that
took the number since.

The job's deadline bounds all its commands together.  When it passes,
the running command's group gets SIGTERM (git removes its lock files on
the way out), and SIGKILL KILL_GRACE_SEC later if it is still there; the
reading is then thrown a GitError "git COMMAND: no answer in SPAN", as
if git had failed.  Whatever a child's group still holds when the child
itself exits is killed then, before the child is reaped.  cancel() ends
a job at once (the daemon stopping): its child is stopped the same way,
waited for, and the reading is not resumed.
"""

import os
import select
import signal
import time

from gi.repository import GLib

from . import git
from .timer import Timer
from .unitfile import format_timespan

KILL_GRACE_SEC = 2.0      # between SIGTERM and SIGKILL to a child that is out of time
STDERR_KEPT = 64 * 1024   # of a child's standard error: its last bytes (the message is its last line)
_READ = 64 * 1024


class Job:
    """Drive the reading STEPS: each command it yields a child, all within
    TIMEOUT seconds.  ON_DONE(value, error) is called once, when it
    returns VALUE or raises ERROR (any exception; a GitError it did not
    catch, too).  A reading that needs no git at all ends inside the
    constructor: ON_DONE is then called before Job() returns."""

    def __init__(self, steps, timeout, on_done):
        self._steps = steps
        self._on_done = on_done
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self.child = None          # the Child running now, if any
        self.done = False
        self._advance(None, None)

    def _advance(self, value, error):
        self.child = None
        while True:
            try:
                cmd = self._steps.send(value) if error is None else self._steps.throw(error)
            except StopIteration as stop:
                return self._finish(stop.value, None)
            except Exception as e:      # the reading's own failure: the caller's to report
                return self._finish(None, e)
            value, error = None, self._late(cmd)
            if error is not None:
                continue
            try:
                self.child = Child(cmd, self._deadline - time.monotonic(), self._child_done)
                return
            except OSError as e:
                error = git.GitError("cannot run %s: %s" % (cmd.program, e.strerror or e))

    def _late(self, cmd):
        if time.monotonic() < self._deadline:
            return None
        return git.GitError("%s %s: no answer in %s" % (cmd.program, command_name(cmd.args),
                                                        format_timespan(self._timeout)))

    def _child_done(self, child):
        if self.done:
            return
        if child.expired:
            self._advance(None, git.GitError("%s %s: no answer in %s" % (
                child.program, command_name(child.args), format_timespan(self._timeout))))
        elif child.status != 0:
            self._advance(None, git.failure(child.args, child.status, child.stderr, child.program))
        else:
            self._advance(child.stdout, None)

    def _finish(self, value, error):
        self.done = True
        self._steps.close()
        self._on_done(value, error)

    def cancel(self):
        """End the job now: stop its child (SIGTERM, then SIGKILL after up
        to KILL_GRACE_SEC), and never resume the reading or call ON_DONE."""
        if self.done:
            return
        self.done = True
        if self.child is not None:
            self.child.stop()
        self._steps.close()


def command_name(args):
    """The git subcommand of ARGS (its first word that is not an option)."""
    return next((a for a in args if not a.startswith("-")), args[0] if args else "")


class Child:
    """One git command CMD running as a child process, watched by the main
    loop; ON_EXIT(self) when it has ended and been reaped, with .status
    (its exit status, or -SIGNAL), .stdout, .stderr (its last bytes) and
    .expired (killed after TIMEOUT seconds)."""

    def __init__(self, cmd, timeout, on_exit):
        self.args = cmd.args
        self.program = cmd.program
        self._on_exit = on_exit
        self._out, self._err = [], bytearray()
        self.status = self.stdout = self.stderr = None
        self.expired = False
        self._timers = []
        self._spawn(cmd)
        self._pidfd = os.pidfd_open(self.pid)
        self._sources = [GLib.unix_fd_add_full(GLib.PRIORITY_DEFAULT, self._out_fd, GLib.IOCondition.IN
                                               | GLib.IOCondition.HUP | GLib.IOCondition.ERR, self._readable),
                         GLib.unix_fd_add_full(GLib.PRIORITY_DEFAULT, self._err_fd, GLib.IOCondition.IN
                                               | GLib.IOCondition.HUP | GLib.IOCondition.ERR, self._readable),
                         GLib.unix_fd_add_full(GLib.PRIORITY_DEFAULT, self._pidfd, GLib.IOCondition.IN, self._exited)]
        self._timers.append(Timer(max(0.0, timeout), self._expire))

    def _spawn(self, cmd):
        if cmd.input is None:
            stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        else:
            stdin = os.memfd_create("%s-input" % cmd.program, os.MFD_CLOEXEC)
            os.write(stdin, cmd.input)      # a memory file: never blocks, never short
            os.lseek(stdin, 0, os.SEEK_SET)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self.pid = os.posix_spawnp(cmd.program, [cmd.program] + cmd.args,
                                       git.environment() if cmd.env is None else cmd.env, setpgroup=0, file_actions=[
                (os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)])
        except OSError:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            for fd in (stdin, out_w, err_w):
                os.close(fd)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        self._out_fd, self._err_fd = out_r, err_r

    def _readable(self, fd, _condition):
        return self._drain(fd)

    def _drain(self, fd):
        """Read what FD holds now; False (and FD closed) at its end."""
        if fd is None or fd < 0:
            return False
        while True:
            try:
                data = os.read(fd, _READ)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not data:
                self._close(fd)
                return False
            if fd == self._out_fd:
                self._out.append(data)
            else:
                self._err += data
                del self._err[:-STDERR_KEPT]

    def _close(self, fd):
        i = 0 if fd == self._out_fd else 1
        GLib.source_remove(self._sources[i])
        self._sources[i] = None
        os.close(fd)
        if i == 0:
            self._out_fd = -1
        else:
            self._err_fd = -1

    def _exited(self, _fd, _condition):
        # Still unreaped: its group is its own.  What the group holds goes
        # with it; what the child wrote is all in the pipes by now.
        self._killpg(signal.SIGKILL)
        for fd in (self._out_fd, self._err_fd):
            if self._drain(fd):
                self._close(fd)
        self._reap(0)
        self._on_exit(self)
        return False

    def _reap(self, flags):
        _pid, wstatus = os.waitpid(self.pid, flags)
        self.status = os.waitstatus_to_exitcode(wstatus)
        self.stdout, self.stderr = b"".join(self._out), bytes(self._err)
        if self._sources[2] is not None:
            GLib.source_remove(self._sources[2])
            self._sources[2] = None
        os.close(self._pidfd)
        for t in self._timers:
            t.remove()

    def _expire(self):
        self.expired = True
        self._killpg(signal.SIGTERM)
        self._timers.append(Timer(KILL_GRACE_SEC, self._killpg, signal.SIGKILL))
        return False

    def _killpg(self, sig):
        if self.status is None:
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        return False

    def stop(self):
        """End the child now, from outside the loop: SIGTERM, up to
        KILL_GRACE_SEC for it to exit, then SIGKILL; reaped on return."""
        if self.status is not None:
            return
        self._killpg(signal.SIGTERM)
        if not select.select([self._pidfd], [], [], KILL_GRACE_SEC)[0]:
            self._killpg(signal.SIGKILL)
        self._killpg(signal.SIGKILL)      # what is left of its group
        for fd in (self._out_fd, self._err_fd):
            if fd >= 0:
                self._close(fd)
        self._reap(0)
