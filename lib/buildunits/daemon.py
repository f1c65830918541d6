"""What every buildunits daemon does the same way.

A daemon is a GLib main loop in the main thread, woken by:

- inotify on its spool directories (watch.py; the watcher thread only
  schedules work on the loop),
- D-Bus signals from the daemon upstream of it (bus.py),
- a slow rescan timer ([Daemons] RescanIntervalSec=, default 5min),
- its own timers (poll intervals, tree-stable windows, step timeouts).

Every wake-up runs the same work(), which reads the spool, so a lost
signal or inotify event costs latency, never data.  A daemon that keeps
what an event says in memory (the runner's and htmlgen's queue index,
queueindex.py) gets it through spool_event() and signal_NAME(), and lists
the spool again when rescan_due is set: at start, on the rescan timer and
after SIGHUP.  Nothing runs while idle but those timers.

Startup: load the configuration (a bad one is refused: exit status 1 with
each problem as FILE:LINE), take the instance lock, recover (startup()),
rescan (work()), then READY=1.  SIGHUP re-reads the configuration; a bad
one is refused and the running one kept, with a log line per problem.
SIGTERM and SIGINT stop: the daemon finishes or hands back what it holds
(shutdown()), says STOPPING=1 and exits 0.  Signal handlers only schedule
work on the loop.

EXIT STATUS: 0 after SIGTERM, 1 on a bad configuration or an unusable
directory, 2 on bad usage, 3 if another instance holds the lock.
"""

import argparse
import errno
import fcntl
import hashlib
import os
import signal
import socket
import time
import traceback

from gi.repository import GLib

from . import __version__, bus as busmod, config, fsutil, log, notify, paths
from .timer import Timer, remove_source  # noqa: F401 (daemon.Timer: the name the daemons use)
from .spool import Spool
from .state import State

RETRY_MIN_SEC = 0.5   # first retry after a failed work(); doubles up to the rescan interval

class Daemon:
    role = None          # bus role: "Poller", "Scheduler", "Runner", "HTMLGen"
    program = None       # "buildunits-poller", ...
    watch_queues = ()    # spool queues whose new entries wake this daemon
    subscriptions = ()   # (role, signal) pairs that wake this daemon

    def __init__(self, dirs, cfg, bus, notifier, args=None):
        self.dirs = dirs
        self.cfg = cfg
        self.args = args
        self.bus = bus
        self.notifier = notifier
        self.spool = Spool(dirs.spool)
        self.state = State(dirs.state)
        self.spool.on_corrupt = self.state.on_corrupt = self._log_corrupt
        self.loop = GLib.MainLoop()
        self.stopping = False
        self.exit_status = 0
        self._wake_pending = False
        self._watcher = None
        self._rescan_source = None
        self.rescan_due = True   # list the spool, do not trust what events said (start, rescan, SIGHUP)
        self.events = False      # a watcher feeds spool_event() (not so in process, in the tests)

    # ------------------------------------------------------------- hooks
    def instance(self):
        """Name of this instance (runners: the worker), for the lock and bus."""
        return None

    def methods(self):
        """D-Bus methods this daemon exports: {name: callable}."""
        return {}

    def startup(self):
        """Recovery before the first rescan (e.g. claims of a dead runner)."""

    def work(self):
        """Process what is queued.  Must be safe to call at any time."""

    def on_config(self, old, new):
        """A new configuration was accepted."""

    def spool_event(self, path, present):
        """PATH, in a watched spool directory, appeared (PRESENT) or left."""
        if present:
            self.wake()

    def shutdown(self):
        """Hand back what is held.  Return True when the loop may quit now;
        otherwise call self.quit() later."""
        return True

    def status_text(self):
        return "idle"

    # -------------------------------------------------------------- loop
    # Milliseconds to hold a wake-up back, gathering the wakes that follow it
    # into one pass: 0 for the daemons on a build's path; htmlgen waits a
    # little so a burst of step events costs one render, not one each.
    wake_holdoff_ms = 0

    def wake(self, *_ignored):
        """Schedule work() once on the main loop (coalescing repeated wakes)."""
        if not self._wake_pending and not self.stopping:
            self._wake_pending = True
            if self.wake_holdoff_ms:
                GLib.timeout_add(self.wake_holdoff_ms, self._do_work)
            else:
                GLib.idle_add(self._do_work)

    def _do_work(self):
        self._wake_pending = False
        if self.stopping:
            return False
        if not self.check_lock():
            self._on_term()
            return False
        try:
            self.work()
        except Exception as e:
            # A failure here is a bug or the disk (full, read-only): say so,
            # keep running, and try again soon (and on every wake).
            log.error("%s: work failed: %s (will retry)" % (self.program, e))
            for line in traceback.format_exc().rstrip().splitlines():
                log.error("  " + line)
            self.notifier.status("error: %s (will retry)" % e)
            self.retry_later()
        else:
            self._retry_delay = 0
            self.notifier.status(self.status_text())
        return False

    def retry_later(self):
        """Wake again after a delay that doubles from RETRY_MIN_SEC to the
        rescan interval while work keeps failing (a full disk frees up by
        itself; a tight retry loop would only fill the journal)."""
        if getattr(self, "_retry_source", None) is not None:
            return
        delay = min(max(RETRY_MIN_SEC, getattr(self, "_retry_delay", 0) * 2), self.cfg.rescan_interval)
        self._retry_delay = delay

        def fire():
            self._retry_source = None
            self.wake()
            return False
        self._retry_source = Timer(delay, fire)

    def _rescan(self):
        self.rescan_due = True
        self.wake()
        return True

    def _set_rescan_timer(self):
        if self._rescan_source is not None:
            self._rescan_source.remove()
        self._rescan_source = Timer(max(1.0, self.cfg.rescan_interval), self._rescan)

    def _on_hup(self):
        self.notifier.reloading()
        try:
            new = config.load(self.dirs.config)
        except config.ConfigError as e:
            log.error("reload refused, keeping the running configuration (%d problem%s):"
                      % (len(e.problems), "" if len(e.problems) == 1 else "s"))
            for p in e.problems:
                log.error("  %s" % p)
            # Until a reload succeeds, every STATUS= says so first.
            self.notifier.note("reload refused: %s (see the journal)" % e.problems[0].location())
            self.notifier.reloaded(self.status_text())
            return True
        for w in new.warnings:
            log.warning(str(w))
        old, self.cfg = self.cfg, new
        self.rescan_due = True
        self.on_config(old, new)
        self._set_rescan_timer()
        log.info("configuration reloaded: %d builder%s" % (len(new.builders), "" if len(new.builders) == 1 else "s"))
        self.notifier.note(None)
        self.notifier.reloaded(self.status_text())
        self.wake()
        return True

    def _on_term(self):
        if self.stopping:
            return True
        self.stopping = True
        log.info("%s: stopping" % self.program)
        self.notifier.stopping()
        if self.shutdown():
            self.quit()
        return True

    def quit(self):
        self.loop.quit()

    def _watchdog(self):
        self.notifier.watchdog()
        return True

    def keepalive(self):
        """Feed systemd's watchdog during long work on the main loop (a big
        poll, a full site rebuild); at most once a second."""
        if self.notifier.watchdog_sec:
            now = time.monotonic()
            if now - getattr(self, "_last_keepalive", 0) >= 1:
                self._last_keepalive = now
                self.notifier.watchdog()

    def _log_corrupt(self, path, dest, reason):
        log.error("%s: %s; moved to %s" % (path, reason, dest))

    def run(self):
        lock = self._lock()
        if lock is None:
            return 3
        try:
            self.bus.publish(self.role, self.instance(), self.methods())
        except Exception as e:
            log.error("cannot own bus name %s: %s" % (busmod.bus_name(self.role, self.instance()), e))
            return 3
        for role, sig in self.subscriptions:
            self.bus.subscribe(role, sig, getattr(self, "signal_" + sig, self.wake))
        dirs = self.spool.watch_dirs(*self.watch_queues)
        if dirs:
            from . import watch   # only daemons that watch pay for watchdog's import
            self._watcher = watch.Watcher(dirs, lambda path, present: busmod.call_soon(self.spool_event, path,
                                                                                         present))
            self.events = True
        for signum, handler in ((signal.SIGHUP, self._on_hup), (signal.SIGTERM, self._on_term),
                                (signal.SIGINT, self._on_term)):
            GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, handler)
        # A failure here (a full disk, an I/O error) must not become a restart
        # loop: say so, become ready, and try again on the next wake or rescan.
        for step in (self.startup, self.work):
            try:
                step()
            except Exception as e:
                log.error("%s: %s failed: %s (will retry)" % (self.program, step.__name__, e))
                for line in traceback.format_exc().rstrip().splitlines():
                    log.error("  " + line)
                self.retry_later()
        self._set_rescan_timer()
        if self.notifier.watchdog_sec:
            Timer(max(0.1, self.notifier.watchdog_sec / 3), self._watchdog)
        self.notifier.ready(self.status_text())
        log.info("%s %s ready: %s" % (self.program, __version__, self.status_text()))
        self.loop.run()
        if self._watcher:
            self._watcher.stop()
        self.bus.close()
        log.info("%s: stopped" % self.program)
        return self.exit_status

    def _lock(self):
        """One instance per role (and worker) per state directory.

        Two locks, both released by the kernel when the process dies:

        - an abstract unix socket bound to a name made from the state
          directory's device and inode and the instance's name.  Nobody can
          delete it while it is held (it is not a file), so it is the lock
          that counts: a second instance cannot bind it, whatever was done
          to the files.  Its namespace is the network namespace, so it does
          not separate a daemon with PrivateNetwork= (htmlgen, scheduler)
          from one started by hand; the flock below does;
        - an flock on STATE/locks/PROGRAM[@WORKER].lock, which `buildunits
          status` and `fsck` find in /proc/locks.  A file can be deleted
          while it is held, and a second instance would then lock a new
          file of that name: check_lock() notices the deletion at each work
          pass and locks the file again (or exits if someone else did)."""
        name = self.program + ("@" + self.instance() if self.instance() else "")
        try:
            st = os.stat(self.dirs.state)
            key = hashlib.sha256(("%d:%d:%s" % (st.st_dev, st.st_ino, name)).encode()).hexdigest()[:40]
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.bind("\0buildunits-lock-" + key)
            except OSError as e:
                sock.close()
                if e.errno != errno.EADDRINUSE:
                    raise
                log.error("another %s is running on %s" % (name, self.dirs.state))
                return None
        except OSError as e:   # no AF_UNIX here (a sandbox): the flock alone
            log.warning("cannot bind the lock socket of %s: %s; relying on the lock file" % (name, e))
            sock = None
        self._lock_sock = sock  # held until exit
        self._lock_name = name
        fd = self._lock_file()
        if fd is None and sock is not None:
            sock.close()
        return fd

    def _lock_file(self):
        path = self.state.lock_path(self.program, self.instance())
        os.makedirs(os.path.dirname(path), exist_ok=True)   # recreated if someone removed it
        name = self._lock_name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.error("another %s is running on %s" % (name, self.dirs.state))
            os.close(fd)
            return None
        self._lock_fd = fd  # held until exit
        self._lock_path = path
        return fd

    def check_lock(self):
        """True if this daemon still holds its lock file.  A deleted (or
        replaced) lock file is locked anew, so that status readers see this
        daemon again; False (and an error) if another process holds the
        new one: the caller must stop."""
        fd = getattr(self, "_lock_fd", None)
        if fd is None:
            return True
        try:
            a, b = os.fstat(fd), os.stat(self._lock_path)
            if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
                return True
        except FileNotFoundError:
            pass
        log.warning("%s: the lock file %s was deleted or replaced while held; locking it again"
                    % (self._lock_name, self._lock_path))
        os.close(fd)
        self._lock_fd = None
        if self._lock_file() is None:
            log.error("%s: lost the lock file to another process; stopping" % self._lock_name)
            self.exit_status = 3
            return False
        return True


def argument_parser(program, description):
    p = argparse.ArgumentParser(prog=program, description=description)
    paths.add_arguments(p)
    p.add_argument("--version", action="version", version="%(prog)s " + __version__)
    return p


def main(cls, argv, description, extra_args=None):
    """Parse ARGV, load the configuration, and run a daemon of class CLS."""
    parser = argument_parser(cls.program, description)
    if extra_args:
        extra_args(parser)
    args = parser.parse_args(argv)
    dirs = paths.from_args(args)
    log.setup(cls.program)
    try:
        cfg = config.load(dirs.config)
    except config.ConfigError as e:
        log.error("configuration refused (%d problem%s):" % (len(e.problems), "" if len(e.problems) == 1 else "s"))
        for p in e.problems:
            log.error("  %s" % p)
        return 1
    for w in cfg.warnings:
        log.warning(str(w))
    try:
        Spool(dirs.spool).ensure()
        State(dirs.state).ensure()
    except OSError as e:
        log.error("cannot use %s: %s" % (e.filename, e.strerror))
        return 1
    fsutil.on_fsync_error = lambda path, e: log.warning(
        "fsync of %s failed after a commit: %s (the record stands, but may not survive a power loss)"
        % (path, e.strerror))
    bus, why = busmod.connect()
    if not bus.available:
        log.notice("no system bus (%s): working with inotify and rescans only" % why)
    notifier = notify.Notifier()
    d = cls(dirs, cfg, bus, notifier, args)
    return d.run()
