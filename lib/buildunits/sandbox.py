"""buildunits-sandbox [--clean DIR]...: run a builder's steps inside its sandbox.

NAME
    buildunits-sandbox - the process inside a builder's sandbox unit that runs its steps

DESCRIPTION
    The main process of a builder's sandbox: the transient unit
    buildunits-build-BUILDER-sandbox-WORKER.service, which
    buildunits-launcher(8) starts for a runner as the user
    buildunits-build with the builder's sandbox, limits and credentials.
    Setting up that sandbox (a mount namespace, a private /tmp, the
    state hidden, the system read-only) is what makes a unit expensive,
    70 to 150 ms; starting a process inside one that exists is a fork.
    So the sandbox is set up once for a run of builds of one builder on
    one worker, and this process runs each step in it as its child, one
    at a time, as the runner asks.  It is not started by hand.

    Its standard input is a Unix socket (SOCK_SEQPACKET) whose other end
    is the runner's: the runner made the pair and handed this end to the
    launcher, which handed it to systemd as the unit's standard input.
    Nothing else can reach it.  One JSON object a message, in both
    directions (version 1):

        runner:  {"op": "run", "argv": [...], "env": {...}, "cwd": DIR,
                  "token": TOKEN, "rlimits": [[LimitNAME, SOFT, HARD], ...],
                  "title": WHAT}, with the log file's descriptor
                  (SCM_RIGHTS), which becomes the step's standard output
                  and error; its standard input is /dev/null
        sandbox: {"op": "started", "pid": PID}, or {"op": "error",
                  "error": WHY} if it could not start (nothing runs)
        runner:  {"op": "signal", "signal": "SIGTERM" | "SIGKILL"}
                  to every process of the step
        sandbox: {"op": "ended", "code": CODE, "usage": {...}}: the step's
                  main process has exited (CODE its status, -SIGNAL if it
                  was killed) and what it left running has been killed;
                  USAGE as executor.py describes, from wait4(2) and this
                  process's RUSAGE_CHILDREN

    The builder's Limit*= are set here, in the step's process before it
    runs (setrlimit(2)), not on the unit: on the unit they would bind
    this long-lived process as well (LimitCPU= would count the CPU time of
    every build it ever ran).  Its cgroup limits (MemoryMax=, TasksMax=)
    are the unit's, and so count this process too: one task, a few MiB.

    Each step's start and end is a line in the unit's journal, named by
    its TITLE ("hello #42 step test"): journalctl -u
    'buildunits-build-hello-*' shows which steps the sandbox ran.

    When a run request carries another build's TOKEN than the last, the
    directories given with --clean (the unit's private /tmp and
    /var/tmp) are emptied first: a build starts with an empty /tmp, as a
    unit of its own would.  At the end of the socket (the runner closed
    it, idle, reloaded or died) every process of the step is killed and
    this process exits; systemd then stops the unit (KillMode=
    control-group), which ends anything else of it.

THE BOUNDARY INSIDE
    This process runs as the same user as the steps, so a step can
    signal it; it cannot do more.  It makes itself non-dumpable
    (PR_SET_DUMPABLE), so no process of that user can ptrace it or read
    its memory or its descriptors (/proc/PID/fd), and the socket is
    never inherited by a step.  It is a child subreaper: whatever a step
    leaves running (setsid, a double fork) is reparented to it and
    killed when the step ends; nothing of a step can leave the unit's
    cgroup.  A step that kills it costs its own build: the runner sees
    the socket end and records the step as ended unknown (-1), and the
    unit is stopped as a whole.  A step that stops it (SIGSTOP) is
    caught by the runner's time-out, which then kills the unit.

    The runner trusts nothing it reads from here beyond "ended": the
    exit status and the numbers are checked as they come in
    (executor_unit.py).
"""

import argparse
import ctypes
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import sys

from . import proctree

VERSION = 1
MAX_MESSAGE = 512 * 1024
_PR_SET_DUMPABLE = 4
SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
UNLIMITED = 2 ** 64 - 1         # unitprops.INFINITY


def encode(msg):
    return json.dumps(dict(msg, v=VERSION)).encode()


def decode(data):
    """The message DATA (one JSON object of this version), or ValueError."""
    try:
        msg = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("not a JSON message")
    if not isinstance(msg, dict) or msg.get("v") != VERSION or not isinstance(msg.get("op"), str):
        raise ValueError("not a version %d message" % VERSION)
    return msg


def receive(sock):
    """(message bytes, [descriptors]) of one message; b"" at the end."""
    fds = []
    data, anc, flags, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4 * 4))
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(raw[i:i + 4], sys.byteorder) for i in range(0, len(raw) - len(raw) % 4, 4)]
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise ValueError("message too long, or too many descriptors")
    return data, fds


def empty(directory):
    """Remove what is in DIRECTORY (not DIRECTORY itself), as far as this
    user may: what a build left in its private /tmp."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        except OSError:
            pass


def _run_request(msg):
    """The checked fields of a run request, or ValueError naming the field."""
    argv, env, cwd, token = msg.get("argv"), msg.get("env"), msg.get("cwd"), msg.get("token")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise ValueError("argv: not a list of strings")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) and "=" not in k
                                            and "\0" not in k + v for k, v in env.items()):
        raise ValueError("env: not a map of strings")
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise ValueError("cwd: not an absolute path")
    if not isinstance(token, str):
        raise ValueError("token: not a string")
    limits = []
    for item in msg.get("rlimits") or []:
        ok = isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and item[0].startswith("Limit")
        res = getattr(resource, "RLIMIT_" + item[0][len("Limit"):], None) if ok else None
        if not isinstance(res, int) or not all(isinstance(n, int) and 0 <= n <= UNLIMITED for n in item[1:]):
            raise ValueError("rlimits: %r is not a [LimitNAME, soft, hard] triple" % (item,))
        limits.append((res, tuple(resource.RLIM_INFINITY if n == UNLIMITED else n for n in item[1:])))
    return argv, env, cwd, token, limits


def _printable(text):
    """TEXT for a journal line: a string, without control characters."""
    text = text if isinstance(text, str) else "a step"
    return "".join(c if c.isprintable() else "?" for c in text)[:200] or "a step"


def _signame(sig):
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "signal %d" % sig


def _child(argv, env, cwd, limits, log_fd, gate_r, gate_w):
    """The step's process, between fork and exec: never returns."""
    try:
        os.close(gate_w)
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        what = "apply the step's Limit*= settings"
        for res, pair in limits:
            resource.setrlimit(res, pair)
        what = "change to %s" % cwd
        os.chdir(cwd)
        os.read(gate_r, 1)          # the end of the pipe: "started" has gone
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        what = "run %s" % argv[0]
        os.execvpe(argv[0], argv, env)
    except BaseException as e:
        try:
            os.write(2, ("buildunits-sandbox: cannot %s: %s\n" % (what, getattr(e, "strerror", None) or e)).encode())
        finally:
            os._exit(127)


class Driver:
    """The steps of one sandbox, asked for on SOCK."""

    def __init__(self, sock, clean=(), wakeup=None):
        self.sock = sock
        self.clean = list(clean)
        self.token = None
        self.title = ""
        self.pid = None
        self.pidfd = None
        self.before = None
        self.sel = selectors.DefaultSelector()
        if wakeup is not None:
            # SIGCHLD's wake-up descriptor, where pidfds are missing.
            self.sel.register(wakeup, selectors.EVENT_READ, "sigchld")

    def send(self, **msg):
        try:
            self.sock.sendall(encode(msg))
        except OSError:
            pass        # the runner is gone: the next receive says so

    def run(self):
        self.sel.register(self.sock, selectors.EVENT_READ, "socket")
        while True:
            for key, _ in self.sel.select():
                if key.data == "socket":
                    if not self.message():
                        self.abandon()
                        return 0
                else:
                    if key.data == "sigchld":
                        os.read(key.fd, 512)
                    self.reap()

    def message(self):
        """Carry out one message; False at the end of the socket."""
        try:
            data, fds = receive(self.sock)
        except ValueError as e:
            self.send(op="error", error=str(e))
            return True
        except OSError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        try:
            msg = decode(data)
            if msg["op"] == "run":
                given, fds = fds, []
                self.start(msg, given)      # which closes them
            elif msg["op"] == "signal":
                sig = SIGNALS.get(msg.get("signal"))
                if sig is None:
                    raise ValueError("signal: one of %s" % " ".join(SIGNALS))
                if self.pid is not None:
                    proctree.kill_tree(self.pid, sig)
            else:
                raise ValueError("op: %r is not an operation" % msg["op"])
        except ValueError as e:
            self.send(op="error", error=str(e))
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def start(self, msg, fds):
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise ValueError("run: exactly one descriptor (the log file) must come with it")
        log_fd = fds[0]
        try:
            if self.pid is not None:
                raise ValueError("run: a step is running already")
            argv, env, cwd, token, limits = _run_request(msg)
            if token != self.token:
                for d in self.clean:
                    empty(d)
                self.token = token
            env = dict(env)
            env[proctree.TOKEN_VARIABLE] = token
            env["HOME"] = "/tmp"
            creds = os.environ.get("CREDENTIALS_DIRECTORY")
            if creds:
                env["CREDENTIALS_DIRECTORY"] = creds
            else:
                env.pop("CREDENTIALS_DIRECTORY", None)
            self.before = resource.getrusage(resource.RUSAGE_CHILDREN)
            # The step waits at this gate until "started" has gone: a step
            # that stops or kills this process at once cannot keep the
            # runner waiting for the answer.  So a command that cannot run
            # (no such program) is a step that ends with 127, saying why
            # in its log, as a shell's would.
            gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
            pid = os.fork()
            if pid == 0:
                _child(argv, env, cwd, limits, log_fd, gate_r, gate_w)
            os.close(gate_r)
        finally:
            os.close(log_fd)
        self.pid = pid
        try:
            self.pidfd = os.pidfd_open(pid)
            self.sel.register(self.pidfd, selectors.EVENT_READ, "step")
        except (AttributeError, OSError):
            self.pidfd = None       # no pidfds (Linux < 5.3): SIGCHLD's wake-up instead
        self.title = _printable(msg.get("title"))
        self.send(op="started", pid=pid)
        os.close(gate_w)            # the step goes on
        self.say("%s: started as process %d" % (self.title, pid))

    def reap(self):
        """The step's main process has ended (its pidfd, or SIGCHLD): reap
        it with its rusage, kill what it left, and say how it ended."""
        if self.pid is None:
            proctree.reap()
            return
        try:
            pid, status, own = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status, own = self.pid, -1, None
        if pid == 0:
            return
        if self.pidfd is not None:
            self.sel.unregister(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None
        code = os.waitstatus_to_exitcode(status) if status >= 0 else -1
        proctree.kill_leftovers(self.pid)
        used = proctree.usage(self.before, resource.getrusage(resource.RUSAGE_CHILDREN), own)
        self.pid = None
        self.send(op="ended", code=code, usage=used)
        self.say("%s: %s" % (self.title, "exited with status %d" % code if code >= 0 else
                             "killed by %s" % _signame(-code) if code < -1 else "ended, its status unknown"))

    def say(self, text):
        try:
            print(text, flush=True)
        except OSError:
            pass

    def abandon(self):
        """The runner has gone: nothing of the step outlives this process."""
        if self.pid is not None:
            proctree.kill_tree(self.pid, signal.SIGKILL)
        proctree.reap()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="buildunits-sandbox",
                                 description="run a builder's steps inside its sandbox unit (started by "
                                             "buildunits-launcher, not by hand)")
    ap.add_argument("--clean", action="append", default=[], metavar="DIR",
                    help="a directory emptied when a new build starts (the private /tmp)")
    args = ap.parse_args(argv)
    try:
        sock = socket.socket(fileno=0)
    except OSError as e:
        print("buildunits-sandbox: standard input is not a socket: %s" % e, file=sys.stderr)
        return 2
    if sock.type != socket.SOCK_SEQPACKET:
        print("buildunits-sandbox: standard input is not the runner's socket", file=sys.stderr)
        return 2
    # Nothing of the steps' user may trace this process or take its socket.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    proctree.become_subreaper()
    # The socket is fd 0; a step's standard input is /dev/null, its own.
    os.set_inheritable(0, False)
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(w)
    return Driver(sock, args.clean, r).run()
