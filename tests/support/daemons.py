"""The project's programs, run from this checkout against one test's directories."""

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import textwrap

from . import BIN_DIR, LIB_DIR, PYTHON, REPO_ROOT
from .bus import NO_BUS
from .notify import NotifyReader
from .procs import become_subreaper, children_of, kill_group, kill_tree, own_pids, short_dir
from .wait import WaitTimeout, scaled, wait_for

from buildunits import results  # noqa: E402  (lib/ is on sys.path: see __init__)
from buildunits.spool import Spool  # noqa: E402
from buildunits.state import State  # noqa: E402


PROGRAMS = {
    "poller": "buildunits-poller",
    "scheduler": "buildunits-scheduler",
    "runner": "buildunits-runner",
    "htmlgen": "buildunits-htmlgen",
    "notifier": "buildunits-notifier",
}


def build_is_finished(rec):
    """A build record is final when its "result" is a result word (not
    running/queued) and its "state", if it has one, is not running/queued.
    (The harness's reading of the build format; see docs for the format.)"""
    return bool(rec) and results.is_result(rec.get("result")) and rec.get("state") not in (
        results.RUNNING, results.QUEUED)


class DaemonProcess:
    """One run of one program: .key, .proc, .pid, .notify, .log_path, .argv."""

    def __init__(self, key, argv, proc, notify, log_path, instance):
        self.key = key
        self.argv = argv
        self.proc = proc
        self.pid = proc.pid
        self.notify = notify
        self.log_path = log_path
        self.instance = instance

    @property
    def returncode(self):
        return self.proc.poll()

    def running(self):
        return self.proc.poll() is None


class Daemons:
    """The project's programs, run from this checkout against one test's
    directories.

    Keys: a daemon is known by its program name ("poller", "scheduler",
    "htmlgen") or, with arguments, NAME@ARG ("runner@w1"), like systemd's
    template instances; start("runner@w1") is start("runner", "w1").
    """

    def __init__(self, tmp_path, bus=None, sockdir=None):
        self.tmp_path = str(tmp_path)
        self.root = os.path.join(self.tmp_path, "bu")
        self.config_dir = os.path.join(self.root, "config")
        self.spool_dir = os.path.join(self.root, "spool")
        self.state_dir = os.path.join(self.root, "state")
        self.site_dir = os.path.join(self.root, "site")
        self.logs_dir = os.path.join(self.tmp_path, "logs")
        self.home = os.path.join(self.tmp_path, "home")
        for d in (os.path.join(self.config_dir, "builders"), self.logs_dir, self.home):
            os.makedirs(d, exist_ok=True)
        self.bus = bus
        if sockdir is None:
            sockdir, self._remove_sockdir = short_dir(self.tmp_path)
        else:
            self._remove_sockdir = False
        self.sockdir = sockdir
        self.spool = Spool(self.spool_dir)
        self.state = State(self.state_dir)
        self.procs = {}       # key -> current DaemonProcess
        self.history = []     # every DaemonProcess ever started, in order
        become_subreaper()
        self._children_before = set(children_of(os.getpid()))
        self._instances = collections.Counter()
        self._nsock = 0

    # ------------------------------------------------------------ plumbing
    def dir_args(self):
        return ["--config-dir", self.config_dir, "--spool-dir", self.spool_dir,
                "--state-dir", self.state_dir, "--site-dir", self.site_dir]

    def env(self, bus=True, extra=None):
        """The environment of a program: this test's directories, HOME and
        git isolated, the private bus (bus=False: a bus that does not exist)."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("BUILDUNITS_", "NOTIFY_SOCKET", "WATCHDOG_", "DBUS_", "LISTEN_",
                                    "INVOCATION_ID", "JOURNAL_STREAM", "GIT_"))}
        env.update({
            "PYTHONPATH": LIB_DIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": self.home,
            "LANG": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1",
            "BUILDUNITS_CONFIG_DIR": self.config_dir,
            "BUILDUNITS_SPOOL_DIR": self.spool_dir,
            "BUILDUNITS_STATE_DIR": self.state_dir,
            "BUILDUNITS_SITE_DIR": self.site_dir,
        })
        use_bus = self.bus is not None and bus
        env["DBUS_SYSTEM_BUS_ADDRESS"] = self.bus.address if use_bus else NO_BUS
        env.update(extra or {})
        return env

    @staticmethod
    def _split_key(name, args):
        if "@" in name:
            name, arg = name.split("@", 1)
            args = (arg,) + tuple(args)
        args = tuple(str(a) for a in args)
        return name, args, (name + "@" + args[0]) if args else name

    def _key(self, name):
        if name in self.procs:
            return name
        raise KeyError("no daemon %r was started (known: %s)" % (name, ", ".join(self.procs) or "none"))

    # ----------------------------------------------------------- lifecycle
    def start(self, name, *args, wait_ready=True, bus=True, env=None, timeout=30.0, options=(),
              program=None):
        """Start program NAME with ARGS (after the directory options and
        OPTIONS); wait for READY=1 unless wait_ready=False.  If it exits
        first, raise with its log.  Returns the DaemonProcess.  PROGRAM
        (a path) runs instead of bin/buildunits-NAME (the harness's own
        tests use it)."""
        name, args, key = self._split_key(name, args)
        if program is None and name not in PROGRAMS:
            raise ValueError("unknown program %r (one of %s)" % (name, ", ".join(PROGRAMS)))
        if key in self.procs and self.procs[key].running():
            raise RuntimeError("%s is already running (pid %d)" % (key, self.procs[key].pid))
        path = program or os.path.join(BIN_DIR, PROGRAMS[name])
        if not os.path.exists(path):
            raise FileNotFoundError("%s does not exist in this checkout" % path)
        self._instances[key] += 1
        n = self._instances[key]
        self._nsock += 1
        notify = NotifyReader(os.path.join(self.sockdir, "n%d.sock" % self._nsock), name="%s#%d" % (key, n))
        log_path = os.path.join(self.logs_dir, "%s.%d.log" % (key, n))
        argv = [PYTHON, path] + self.dir_args() + list(options) + list(args)
        e = self.env(bus=bus, extra=env)
        e["NOTIFY_SOCKET"] = notify.path
        with open(log_path, "ab") as log:
            log.write(("$ %s\n" % " ".join(argv)).encode())
            log.flush()
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=e, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        d = DaemonProcess(key, argv, proc, notify, log_path, n)
        d.program, d.args = name, args
        d.start_options = dict(bus=bus, env=env, options=options, program=program)
        self.procs[key] = d
        self.history.append(d)
        if wait_ready:
            self.wait_ready(key, timeout=timeout)
        return d

    def wait_ready(self, name, timeout=30.0, start=0):
        """Wait for READY=1 (in messages from index START) from NAME's
        current process; raise with its log if it exits first."""
        d = self.procs[self._key(name)]

        def ready():
            if d.notify.has("READY=1", start):
                return True
            if d.proc.poll() is not None:
                # It may have said READY=1 just before exiting; look once more.
                if d.notify.has("READY=1", start):
                    return True
                raise RuntimeError("%s exited with status %s before READY=1\n%s\n--- log ---\n%s"
                                   % (d.key, d.proc.returncode, d.notify.describe(), self.log(d.key, -1)))
            return False

        return wait_for(ready, timeout=timeout, what="READY=1 from %s" % d.key,
                        describe=lambda: "%s\n--- log ---\n%s" % (d.notify.describe(), self.log(d.key, -1)))

    def notify(self, name):
        """The NotifyReader of NAME's current process."""
        return self.procs[self._key(name)].notify

    def pid(self, name):
        return self.procs[self._key(name)].pid

    def running(self, name):
        return name in self.procs and self.procs[name].running()

    def signal(self, name, sig):
        os.kill(self.procs[self._key(name)].pid, sig)

    def reload(self, name, wait_ready=True, timeout=30.0):
        """SIGHUP; wait for the READY=1 that ends the reload."""
        d = self.procs[self._key(name)]
        start = d.notify.mark()
        os.kill(d.pid, signal.SIGHUP)
        if wait_ready:
            self.wait_ready(name, timeout=timeout, start=start)

    def stop(self, name, timeout=30.0):
        """SIGTERM and wait for the exit; return the exit status."""
        d = self.procs[self._key(name)]
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGTERM)
        try:
            rc = d.proc.wait(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            self._cleanup(d)
            raise WaitTimeout("%s did not exit within %.0fs of SIGTERM\n--- log ---\n%s"
                              % (d.key, scaled(timeout), self.log(d.key, -1)))
        self._cleanup(d)
        return rc

    def kill(self, name, group=True):
        """SIGKILL (a crash).  group=True also kills every process below it,
        in its process group or not, as systemd kills a unit's cgroup when
        its main process dies; group=False leaves them running (until
        teardown).  Returns the exit status."""
        d = self.procs[self._key(name)]
        if group:
            kill_tree(d.pid)
            kill_group(d.proc, True)
        else:
            try:
                d.proc.kill()
            except ProcessLookupError:
                pass
        rc = d.proc.wait()
        if not group:
            d.notify.close()
        else:
            self._cleanup(d)
        return rc

    def wait_exit(self, name, timeout=30.0):
        """Wait for NAME to exit by itself; return its exit status."""
        d = self.procs[self._key(name)]
        try:
            rc = d.proc.wait(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            raise WaitTimeout("timed out after %.0fs waiting for %s to exit\n--- log ---\n%s"
                              % (scaled(timeout), d.key, self.log(d.key, -1)))
        self._cleanup(d)
        return rc

    def restart(self, name, wait_ready=True, kill=False, timeout=30.0):
        """Stop (or kill=True: SIGKILL) and start again with the same arguments."""
        d = self.procs[self._key(name)]
        if kill:
            self.kill(name)
        else:
            self.stop(name, timeout=timeout)
        return self.start(d.program, *d.args, wait_ready=wait_ready, timeout=timeout, **d.start_options)

    def _cleanup(self, d):
        kill_group(d.proc, True)  # children left behind by the daemon
        d.notify.close()

    def close(self):
        """Kill everything still running: each daemon with every process
        below it, then the orphans they left (reparented to this process,
        the subreaper), which are also reaped."""
        for d in self.history:
            if d.proc.poll() is None:
                kill_tree(d.pid)
                d.proc.wait()
            kill_group(d.proc, True)
            d.notify.close()
        me = os.getpid()
        ours = self._children_before | own_pids()
        for pid in children_of(me):
            if pid not in ours:
                kill_tree(pid)
        for pid in children_of(me):
            if pid not in ours:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        if self._remove_sockdir:
            shutil.rmtree(self.sockdir, ignore_errors=True)

    # ----------------------------------------------------------------- logs
    def log(self, name, instance=None):
        """The output of NAME: every run concatenated (instance=None), or
        one run (1 is the first, -1 the latest)."""
        runs = [d for d in self.history if d.key == name]
        if not runs:
            raise KeyError("no daemon %r was started" % name)
        if instance is not None:
            runs = [runs[instance - 1 if instance > 0 else instance]]
        out = []
        for d in runs:
            try:
                with open(d.log_path, encoding="utf-8", errors="replace") as f:
                    out.append(f.read())
            except FileNotFoundError:
                pass
        return "".join(out)

    def all_logs(self):
        """Every run's log with a header, for failure reports."""
        out = []
        for d in self.history:
            rc = d.proc.poll()
            out.append("===== %s (run %d, pid %d, %s) =====\n%s%s" % (
                d.key, d.instance, d.pid, "running" if rc is None else "exit status %s" % rc,
                self.log(d.key, d.instance), d.notify.describe() + "\n"))
        return "\n".join(out)

    # ------------------------------------------------------------------ cli
    def cli(self, *args, check=False, bus=True, env=None, input=None, timeout=60.0):
        """Run `bin/buildunits DIR-OPTIONS ARGS`; the CompletedProcess (text)."""
        argv = [PYTHON, os.path.join(BIN_DIR, "buildunits")] + self.dir_args() + [str(a) for a in args]
        p = subprocess.run(argv, cwd=REPO_ROOT, env=self.env(bus=bus, extra=env), input=input,
                           stdin=None if input is not None else subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=scaled(timeout))
        if check and p.returncode != 0:
            raise AssertionError("buildunits %s exited with status %d\nstdout:\n%s\nstderr:\n%s"
                                 % (" ".join(map(str, args)), p.returncode, p.stdout, p.stderr))
        return p

    # --------------------------------------------------------------- config
    def write_config_file(self, relpath, text):
        path = os.path.join(self.config_dir, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        text = textwrap.dedent(text).lstrip("\n")
        tmp = path + ".harness-tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.rename(tmp, path)  # daemons never see half a file
        return path

    def write_builder(self, name, text):
        """Write CONFIG/builders/NAME.builder (TEXT is dedented)."""
        return self.write_config_file(os.path.join("builders", name + ".builder"), text)

    def write_dropin(self, name, conf, text):
        """Write CONFIG/builders/NAME.builder.d/CONF.conf."""
        return self.write_config_file(os.path.join("builders", name + ".builder.d", conf + ".conf"), text)

    def write_global(self, text):
        """Write CONFIG/buildunits.conf."""
        return self.write_config_file("buildunits.conf", text)

    def remove_builder(self, name):
        os.unlink(os.path.join(self.config_dir, "builders", name + ".builder"))

    # --------------------------------------------------------------- state
    def read_build(self, builder, number):
        """The build record (build.json, with a running build's progress
        lines applied: State.read_build), or None."""
        return self.state.read_build(builder, number)

    def builds(self, builder):
        """The build numbers of BUILDER, ascending (empty ones included)."""
        return self.state.build_numbers(builder)

    def wait_build(self, builder, number, timeout=30.0):
        """Wait until build BUILDER #NUMBER has a record; return it."""
        return wait_for(lambda: self.read_build(builder, number), timeout=timeout,
                        what="build %s #%s to be recorded" % (builder, number),
                        describe=self._describe_builds)

    def wait_build_finished(self, builder, number, timeout=60.0):
        """Wait until the record of BUILDER #NUMBER is final; return it."""
        def done():
            rec = self.read_build(builder, number)
            return rec if build_is_finished(rec) else None
        return wait_for(done, timeout=timeout, what="build %s #%s to finish" % (builder, number),
                        describe=self._describe_builds)

    def wait_site_finished(self, builder, number, timeout=30.0):
        """Wait until the site shows BUILDER #NUMBER (or a later build) as
        its last finished build, the way docs/site.md tells scripts to:
        api/builders.json is the last file of every update."""
        path = os.path.join(self.site_dir, "api", "builders.json")

        def shown():
            try:
                with open(path, encoding="utf-8") as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                return None
            for b in doc.get("builders", []):
                last = b.get("last") or {}
                if b.get("name") == builder and last.get("number", 0) >= number:
                    return doc
            return None
        return wait_for(shown, timeout=timeout, what="the site to show %s #%d finished" % (builder, number))

    def step_log(self, builder, number, step):
        """The text of STEP's log in build BUILDER #NUMBER, or None."""
        d = self.state.build_dir(builder, number)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return None
        for n in sorted(names):
            if re.match(r"^\d+-%s\.log$" % re.escape(step), n):
                with open(os.path.join(d, n), encoding="utf-8", errors="replace") as f:
                    return f.read()
        return None

    def _describe_builds(self):
        out = []
        for b in self.state.builders():
            for n in self.builds(b):
                try:
                    rec = self.read_build(b, n)
                except Exception as e:
                    rec = "unreadable: %s" % e
                if isinstance(rec, dict):
                    rec = "result=%r state=%r" % (rec.get("result"), rec.get("state"))
                out.append("  %s #%d: %s" % (b, n, rec))
        return "builds in state:\n" + ("\n".join(out) or "  (none)") + "\nprocesses:\n" + "\n".join(
            "  %s: %s" % (k, "running" if d.running() else "exited %s" % d.returncode)
            for k, d in self.procs.items())
