"""Sitefill: the site's work done in child processes, and their reports.

A full rendering (Site._generate) of a long history is mostly the pages
of its builds, each independent of the others: a Pool of worker
processes (os.fork, one per CPU) renders disjoint shares of them while
the parent process reads every record once for the cards, the pages of
many builds and INDEX.  htmlgen also runs the whole first rendering of a
site it does not know in a child (Child), after serving the head pages,
so that it is READY=1 in the time of a few pages (htmlgen.py).

A child reports to its parent on a pipe of its own, a line per report:

    +N            N more builds done
    [B, n]        B #n was not left final (running, or no record yet)
    = done total  (Child) how far it is

A child never touches its parent's main loop: it resets the signals the
loop handled to their defaults, renders, and leaves with os._exit (0
when all of its share is done, 1 on any error, whose traceback goes to
stderr, the journal).  It stops by itself when its parent is gone.
"""

import json
import os
import select
import signal
import sys
import traceback

TICK = 16                            # builds per "+N" report
# Descriptors a child must not keep (the daemon's instance lock: a child
# outliving its parent must not keep the next start out); htmlgen sets it.
close_in_child = []


def cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def fork(fn):
    """Run FN(report) in a child process; (pid, the read end of its pipe).
    REPORT(line) sends a line to the parent."""
    r, w = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:   # the child: never returns
        status = 1
        try:
            os.close(r)
            for fd in close_in_child:
                try:
                    os.close(fd)
                except OSError:
                    pass
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            out = os.fdopen(w, "w", encoding="ascii", buffering=1)

            def report(line):
                if os.getppid() != parent:
                    raise SystemExit("the parent process is gone")
                out.write(line + "\n")
            fn(report)
            out.flush()
            status = 0
        except BaseException:
            try:
                traceback.print_exc(file=sys.stderr)
                sys.stderr.flush()
            except BaseException:
                pass
        finally:
            os._exit(status)
    os.close(w)
    return pid, r


class Lines:
    """What the children at the read ends of pipes reported: the builds
    done, those not left final, the last "=" report."""

    def __init__(self):
        self.done = 0
        self.unfinal = []        # (builder, number)
        self.at = None           # (done, total) of the last "=" line
        self._buf = {}

    def feed(self, fd):
        """Take what FD holds now (non-blocking); False at its end."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not data:
            self._buf.pop(fd, None)
            return False
        buf = self._buf.get(fd, b"") + data
        *lines, self._buf[fd] = buf.split(b"\n")
        for line in lines:
            self._line(line.decode("ascii", "replace"))
        return True

    def _line(self, line):
        if line.startswith("+") and line[1:].isdigit():
            self.done += int(line[1:])
        elif line.startswith("["):
            try:
                name, n = json.loads(line)
                if isinstance(name, str) and isinstance(n, int):
                    self.unfinal.append((name, n))
            except ValueError:
                pass
        elif line.startswith("= "):
            parts = line[2:].split()
            if len(parts) == 2 and all(p.isdigit() for p in parts):
                self.at = (int(parts[0]), int(parts[1]))


class Pool:
    """COUNT workers, worker K running SHARE(k, count, tick, unfinal):
    TICK() after each build, UNFINAL(builder, n) for a build it did not
    leave final.  The parent goes on with its own work, calls poll() now
    and then, and wait() at the end."""

    def __init__(self, count, share):
        self.lines = Lines()
        self._fds, self._pids = [], []
        try:
            for k in range(count):
                pid, fd = fork(lambda report, k=k: _run_share(share, k, count, report))
                os.set_blocking(fd, False)
                self._pids.append(pid)
                self._fds.append(fd)
        except BaseException:
            self.kill()
            raise

    @property
    def done(self):
        return self.lines.done

    def poll(self):
        self._fds = [fd for fd in self._fds if self.lines.feed(fd) or os.close(fd)]

    def wait(self, progress=None, total=0):
        """Until every worker is done, PROGRESS(done, total) at least once a
        second (the caller's watchdog); raises if one of them failed."""
        try:
            while self._fds:
                ready, _, _ = select.select(self._fds, [], [], 1.0)
                for fd in ready:
                    if not self.lines.feed(fd):
                        os.close(fd)
                        self._fds.remove(fd)
                if progress:
                    progress(min(self.done, total), total)
        finally:
            failed = self._reap()
        if failed:
            raise RuntimeError("a worker process rendering builds failed (%s); see its traceback above"
                               % ", ".join(failed))

    def _reap(self):
        failed = []
        for pid in self._pids:
            _, status = os.waitpid(pid, 0)
            if status:
                failed.append(describe_status(status))
        self._pids = []
        return failed

    def kill(self):
        for pid in self._pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self._reap()


def _run_share(share, k, count, report):
    pending = [0]

    def tick():
        pending[0] += 1
        if pending[0] >= TICK:
            report("+%d" % pending[0])
            pending[0] = 0

    def unfinal(name, n):
        report(json.dumps([name, n], ensure_ascii=True))
    share(k, count, tick, unfinal)
    if pending[0]:
        report("+%d" % pending[0])


def describe_status(status):
    """A waitpid status in words."""
    if os.WIFSIGNALED(status):
        return "killed by signal %d" % os.WTERMSIG(status)
    return "exit status %d" % os.waitstatus_to_exitcode(status)
