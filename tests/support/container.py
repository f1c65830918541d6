"""A real systemd for the system tests: Debian trees booted with systemd-nspawn.

The machines this project runs on have no systemd as PID 1, but they can
boot a debootstrapped Debian tree in a container (the measured facts are
in shared/notes/systemd-in-ci.md).  This module is the whole harness,
standard library only (and support.wait), usable from pytest
(tests/system/conftest.py) and from scripts (the demo):

    ensure_tools()              install debootstrap and systemd-container if missing
    why_unavailable()           "" when containers can run here, else the reason
    available()                 not why_unavailable()
    Image().ensure()            the cached bookworm tree, built on first use
    Container(image, name, binds=(), rw_binds=())
        .boot()                 start it, wait for is-system-running
        .run(cmd, input=, check=, timeout=, user=, env=)
                                a command inside (nsenter), clean environment
        .write_file(path, text, mode=0o644, owner=None), .read_file(path)
        .journal(*args)         journalctl --no-pager ARGS, inside
        .host_pid(pid)          the host's PID of a process inside
        .running(), .read_console(), .pid (its PID 1 here), .boot_seconds
        .stop()                 halt it, remove its cgroups
    unique_name()               a machine name that says which process owns it
    install_project(container)  make install inside, then sysusers/tmpfiles/reload
    cleanup_leftovers()         stop what killed runs left behind

    >>> with Container(Image().ensure(), unique_name()) as c:    # doctest: +SKIP
    ...     c.run(["systemctl", "is-system-running"]).stdout
    'running\\n'

THE IMAGE.  One directory per image specification under
/var/cache/buildunits-test/ (CACHE_DIR; BUILDUNITS_TEST_CACHE overrides),
named SUITE-HASH after the specification, with SUITE-HASH.stamp beside it
holding the specification in words (debootstrap command, masked units,
configuration, format number) and, for people, the list of installed
packages.  debootstrap uses its default mirror unless
BUILDUNITS_TEST_MIRROR names another; debs are kept in CACHE_DIR/debs, so
a rebuild after a change of specification downloads only what is new.  A tree is
built in a ".build-*" directory and renamed into place only when
debootstrap, the configuration and a smoke test have all passed; the
stamp is written (atomically) after the rename.  A tree without its
stamp, or with a different one, is not used: a killed build costs a
rebuild, never a broken image.  Builds are serialized by flock(2) on
CACHE_DIR/lock, so concurrent sessions build once; trees of other
specifications are removed under the same lock unless a running
systemd-nspawn uses them.  Containers boot with --volatile=overlay, so the
tree is never written to.

CGROUPS.  Each container gets its own cgroup in the name=systemd (v1) and
the cgroup2 hierarchies, CGROUP_PARENT/NAME, and nspawn is started in it;
otherwise every container's payload lands in the same cgroup and their
systemds manage (and kill) each other's processes.  The hierarchies are
read from /proc/self/mountinfo, so a hybrid host (v1 + cgroup2 at
.../unified, like these machines), a legacy v1 host and a pure cgroup2 host
all work (pure cgroup2 is not tested on these machines).

OWNERSHIP AND LEFTOVERS.  unique_name() makes names PREFIX-OWNERPID-N.
cleanup_leftovers() stops only what no live process owns (the owner of a
container is the process named in its machine name): an nspawn whose owner
is dead, a container PID 1 whose nspawn is gone and whose owner is dead,
a cgroup whose owner is dead.  So two test sessions on one machine do not
stop each other's containers; a live owner whose nspawn was killed stops
its container itself (Container.stop() handles a missing nspawn).

WAITING.  Nothing sleeps a fixed time: every wait polls for the state it
is about, with a deadline, and says what it waited for when it gives up.
"""

import contextlib
import errno
import fcntl
import glob
import hashlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .wait import WaitTimeout, wait_for

FORMAT = 1
CACHE_DIR = os.environ.get("BUILDUNITS_TEST_CACHE") or "/var/cache/buildunits-test"
CGROUP_PARENT = "buildunits-test"
PREFIX = "buildunits-test"
SUITE = "bookworm"
# None: debootstrap's own default, Debian's official mirror network.
# BUILDUNITS_TEST_MIRROR=URL picks another (a local mirror or proxy).
MIRROR = os.environ.get("BUILDUNITS_TEST_MIRROR") or None
VARIANT = "minbase"
# What the project needs at run time (Debian packages of its Python
# dependencies, git and make for builds), plus what the tests use inside.
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "python3", "python3-pydbus", "python3-gi",
    "python3-sdnotify", "python3-watchdog", "python3-jinja2", "python3-systemd",
    "git", "make", "ca-certificates",
    "polkitd", "libpam-systemd",  # the runner's right to start its steps' units (units/polkit-1)
    "procps",  # ps, pgrep for the tests
    "mercurial", "subversion",  # Type=hg|svn repositories, polled and checked out for real
    "python3-aiosmtpd",  # a real SMTP server for the notifier's mail
)
# Units that only slow a boot down or wake up during a test.
MASKED_UNITS = (
    "getty@.service", "serial-getty@.service", "console-getty.service",
    "container-getty@.service", "getty-static.service",
    "apt-daily.timer", "apt-daily.service", "apt-daily-upgrade.timer", "apt-daily-upgrade.service",
    "e2scrub_all.timer", "e2scrub_all.service", "e2scrub_reap.service",
    "fstrim.timer", "fstrim.service", "man-db.timer", "man-db.service",
    "dpkg-db-backup.timer", "dpkg-db-backup.service", "systemd-timesyncd.service",
)
# journald: the container is thrown away, so keep the journal in RAM; never
# drop a message (tests read builds' output from the journal).
JOURNALD_CONF = "[Journal]\nStorage=volatile\nRateLimitIntervalSec=0\n"
IMPORT_CHECK = "import gi, pydbus, sdnotify, watchdog, jinja2, systemd.daemon, systemd.journal"

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLEAN_ENV = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb",
             "SYSTEMD_PAGER": "cat", "SYSTEMD_COLORS": "0"}
TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container", "nsenter": "util-linux"}

# nspawn's per-machine directory on the host; it removes it on a clean exit only.
NSPAWN_PROPAGATE = "/run/systemd/nspawn/propagate"

BOOT_TIMEOUT = 60.0
RUN_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0


class HarnessError(Exception):
    """The harness could not do what was asked; the message says what and why."""


class CommandFailed(subprocess.CalledProcessError):
    """A command inside a container failed; str() includes its output."""

    machine = "a container"

    def __str__(self):
        text = "in %s: %r exited with status %s" % (self.machine, self.cmd, self.returncode)
        for label, out in (("stdout", self.stdout), ("stderr", self.stderr)):
            if out and out.strip():
                text += "\n--- %s ---\n%s" % (label, _tail(out))
        return text


def log(msg):
    print("buildunits-test: " + msg, flush=True)


# ---------------------------------------------------------------- tools

_apt_updated = False


def _host_env(**extra):
    """This process's environment, with the sbin directories on PATH (root's
    PATH may lack them; debootstrap, chroot and umount live there)."""
    dirs = os.environ.get("PATH", "").split(":")
    dirs += [d for d in PATH.split(":") if d not in dirs]
    return dict(os.environ, PATH=":".join(d for d in dirs if d), **extra)


def _which(prog):
    return shutil.which(prog, path=_host_env()["PATH"])


def ensure_tools(say=log):
    """Install debootstrap and systemd-container (apt) if their programs are missing."""
    global _apt_updated
    missing = sorted({pkg for prog, pkg in TOOLS.items() if not _which(prog)})
    if not missing:
        return
    if os.geteuid() != 0:
        raise HarnessError("need %s and not root to install them" % " ".join(missing))
    env = _host_env(DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        say("apt-get update")
        _checked(["apt-get", "update", "-qq"], env=env)
        _apt_updated = True
    say("apt-get install %s" % " ".join(missing))
    _checked(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing, env=env)


def why_unavailable():
    """'' when containers can run on this machine, else the reason why not."""
    if not sys.platform.startswith("linux"):
        return "not Linux"
    if os.geteuid() != 0:
        return "not root (systemd-nspawn, debootstrap and cgroups need root)"
    for prog, pkg in sorted(TOOLS.items()):
        if not _which(prog):
            return "%s not found (Debian package %s; ensure_tools() installs it)" % (prog, pkg)
    roots = cgroup_roots()
    if not roots:
        return "no name=systemd or cgroup2 hierarchy mounted under /sys/fs/cgroup"
    for root in roots:
        if not os.access(root, os.W_OK):
            return "cgroup hierarchy %s is not writable" % root
    return ""


def available():
    return not why_unavailable()


def _checked(argv, **kw):
    kw.setdefault("env", _host_env())
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, **kw)
    if p.returncode != 0:
        raise HarnessError("%s failed (status %d):\n%s" % (" ".join(argv), p.returncode, _tail(p.stdout)))
    return p.stdout


def _tail(text, lines=60):
    parts = text.splitlines()
    if len(parts) <= lines:
        return text
    return "[... %d lines cut ...]\n%s\n" % (len(parts) - lines, "\n".join(parts[-lines:]))


# ---------------------------------------------------------------- image

class Image:
    """A debootstrapped Debian tree, cached under CACHE_DIR by its specification."""

    def __init__(self, cache_dir=CACHE_DIR, packages=PACKAGES, extra_packages=(), suite=SUITE,
                 mirror=MIRROR, masked_units=MASKED_UNITS):
        self.cache_dir = cache_dir
        self.packages = tuple(sorted(set(packages) | set(extra_packages)))
        self.suite = suite
        self.mirror = mirror
        self.masked_units = tuple(sorted(masked_units))
        self.spec = self._spec()
        self.key = hashlib.sha256(self.spec.encode()).hexdigest()[:12]
        self.path = os.path.join(cache_dir, "%s-%s" % (suite, self.key))
        self.stamp_path = self.path + ".stamp"
        self.build_seconds = None  # set when ensure() had to build

    def __fspath__(self):
        return self.path

    def __repr__(self):
        return "Image(%r)" % self.path

    def _spec(self):
        return "".join([
            "buildunits-test image, format %d\n" % FORMAT,
            "debootstrap --variant=%s --include=%s %s DIR%s\n"
            % (VARIANT, ",".join(self.packages), self.suite, " " + self.mirror if self.mirror else ""),
            "masked: %s\n" % " ".join(self.masked_units),
            "/etc/systemd/journald.conf.d/buildunits-test.conf: %s\n" % JOURNALD_CONF.replace("\n", " ").strip(),
            "/etc/hostname: removed (the container's hostname is its machine name)\n",
            "smoke test: python3 -c '%s'\n" % IMPORT_CHECK,
        ])

    def ready(self):
        """Whether the tree is complete and holds exactly this specification."""
        try:
            with open(self.stamp_path) as f:
                stamp = f.read()
        except FileNotFoundError:
            return False
        return stamp.split(STAMP_SEPARATOR)[0] == self.spec and os.path.isdir(self.path)

    def ensure(self, say=log):
        """Return self, building the tree first if it is missing or stale."""
        if self.ready():
            return self
        os.makedirs(self.cache_dir, exist_ok=True)
        with _locked(os.path.join(self.cache_dir, "lock"), say, "another image build") as lock_fd:
            if not self.ready():  # someone else may have built it while we waited
                self._build(say, lock_fd)
            self._prune(say)
        return self

    def _build(self, say, lock_fd):
        ensure_tools(say)
        start = time.monotonic()
        # A tree without a matching stamp is unfinished or stale: replace it.
        for stale in (self.stamp_path, self.path):
            if os.path.lexists(stale):
                _remove_tree(stale)
        tmp = os.path.join(self.cache_dir, ".build-%s-%d" % (os.path.basename(self.path), os.getpid()))
        _remove_tree(tmp)
        debs = os.path.join(self.cache_dir, "debs")
        os.makedirs(debs, exist_ok=True)
        argv = ["debootstrap", "--variant=" + VARIANT, "--include=" + ",".join(self.packages),
                "--cache-dir=" + debs, self.suite, tmp] + ([self.mirror] if self.mirror else [])
        say("building image %s (about a minute): %s" % (self.path, " ".join(argv)))
        try:
            _run_with_progress(argv, tmp, say, start, lock_fd)
            self._configure(tmp)
            say("smoke test: %s" % IMPORT_CHECK)
            _checked(["chroot", tmp, "/usr/bin/python3", "-c", IMPORT_CHECK], env=CLEAN_ENV)
            installed = _checked(["chroot", tmp, "dpkg-query", "-W", "-f", "${Package} ${Version}\n"],
                                 env=CLEAN_ENV)
            os.rename(tmp, self.path)  # the commit point of the tree ...
        except BaseException:
            _remove_tree(tmp)
            raise
        # ... and of the image: the stamp says the tree is complete.
        _write_atomically(self.stamp_path, self.spec + STAMP_SEPARATOR + installed)
        self.build_seconds = time.monotonic() - start
        say("image ready in %.1f s: %s" % (self.build_seconds, self.path))

    def _configure(self, root):
        units = os.path.join(root, "etc/systemd/system")
        os.makedirs(units, exist_ok=True)
        for unit in self.masked_units:
            link = os.path.join(units, unit)
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink("/dev/null", link)
        conf = os.path.join(root, "etc/systemd/journald.conf.d")
        os.makedirs(conf, exist_ok=True)
        with open(os.path.join(conf, "buildunits-test.conf"), "w") as f:
            f.write(JOURNALD_CONF)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(root, "etc/hostname"))
        archives = os.path.join(root, "var/cache/apt/archives")
        if os.path.isdir(archives):
            for name in os.listdir(archives):
                if name.endswith(".deb"):
                    os.unlink(os.path.join(archives, name))

    def _prune(self, say):
        """Remove trees of other specifications and dead builds (under the lock)."""
        in_use = {m for m in (_nspawn_directory(pid) for pid in _pids()) if m}
        pattern = re.compile(r"^(\.build-)?%s-[0-9a-f]{12}(\.stamp|-\d+)?$" % re.escape(self.suite))
        for name in os.listdir(self.cache_dir):
            path = os.path.join(self.cache_dir, name)
            tree = path[:-len(".stamp")] if name.endswith(".stamp") else path
            if path in (self.path, self.stamp_path) or not pattern.match(name) or tree in in_use:
                continue
            say("removing %s %s" % ("an unfinished build" if name.startswith(".build-") else "an old image", path))
            _remove_tree(path)


STAMP_SEPARATOR = "--- installed packages (for people; not compared) ---\n"


def _run_with_progress(argv, target, say, start, lock_fd):
    """Run debootstrap, printing one line per phase instead of one per package.

    debootstrap inherits the build lock: if this process is killed and
    debootstrap lives on, no other build prunes its directory under it.
    """
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", env=_host_env(), pass_fds=(lock_fd,))
    seen, phase, count = [], None, 0
    for line in proc.stdout:
        line = line.rstrip("\n")
        seen.append(line)
        words = line.split()
        verb = words[1] if len(words) > 2 and words[0] == "I:" else None
        verb = "Retrieving" if verb == "Validating" else verb  # they alternate per package
        if verb and verb == phase:
            count += 1
            continue
        if count > 1:
            say("  ... and %d more (%.0f s)" % (count - 1, time.monotonic() - start))
        phase, count = verb, 1
        say("  " + line)
    if proc.wait() != 0:
        log_path = os.path.join(target, "debootstrap", "debootstrap.log")
        extra = ""
        with contextlib.suppress(OSError), open(log_path, errors="replace") as f:
            extra = "\n--- %s ---\n%s" % (log_path, _tail(f.read(), 40))
        raise HarnessError("debootstrap failed (status %d):\n%s%s"
                           % (proc.returncode, _tail("\n".join(seen), 40), extra))


@contextlib.contextmanager
def _locked(path, say, what):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("waiting for %s (lock %s)" % (what, path))
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _write_atomically(path, text):
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    dfd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _remove_tree(path):
    """rm -rf PATH, but first unmount what a killed debootstrap left mounted in
    it (/proc, /sys, bind mounts of the host's /dev nodes): rmtree must never
    reach through a mount into the host."""
    if os.path.isdir(path) and not os.path.islink(path):
        for mount in sorted(_mounts_under(path), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", mount], env=_host_env(), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        still = _mounts_under(path)
        if still:
            raise HarnessError("refusing to delete %s: still mounted there: %s" % (path, " ".join(still)))
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _mounts_under(path):
    path = os.path.realpath(path)
    found = []
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        fields = line.split()
        if len(fields) > 4:
            mountpoint = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if mountpoint == path or mountpoint.startswith(path + "/"):
                found.append(mountpoint)
    return found


# ---------------------------------------------------------------- /proc

def _pids():
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def _read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError as e:  # ESRCH from a process exiting while read
        if e.errno == errno.ESRCH:
            return None
        raise


def _stat(pid):
    """(state, ppid, starttime) of PID, or None when it is gone."""
    text = _read("/proc/%d/stat" % pid)
    if not text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[19])


def _cmdline(pid):
    raw = _read("/proc/%d/cmdline" % pid, "rb")
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]] if raw else []


def _nspid(pid):
    """PID's ids in each nested PID namespace, outermost first ([] when gone)."""
    for line in (_read("/proc/%d/status" % pid) or "").splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return []


def _exe(pid):
    try:
        return os.readlink("/proc/%d/exe" % pid)
    except OSError:
        return ""


def _alive(pid, starttime=None):
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X") and (starttime is None or st[2] == starttime)


def _is_container_init(pid):
    """Whether PID is systemd running as PID 1 of a PID namespace below ours."""
    ids = _nspid(pid)
    return len(ids) > 1 and ids[-1] == 1 and _exe(pid).split(" (deleted)")[0].endswith("/systemd")


def _is_nspawn(pid):
    argv = _cmdline(pid)
    return bool(argv) and os.path.basename(argv[0]) == "systemd-nspawn"


def _nspawn_option(argv, long, short=None):
    for i, arg in enumerate(argv):
        if arg.startswith(long + "="):
            return arg[len(long) + 1:]
        if arg in (long, short) and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _nspawn_machine(pid):
    return _nspawn_option(_cmdline(pid), "--machine", "-M") if _is_nspawn(pid) else None


def _nspawn_directory(pid):
    d = _nspawn_option(_cmdline(pid), "--directory", "-D") if _is_nspawn(pid) else None
    return os.path.normpath(d) if d else None


def _wait(predicate, timeout, what):
    """wait_for, failing with a HarnessError (what this module raises)."""
    try:
        return wait_for(predicate, timeout=timeout, what=what, interval=0.1)
    except WaitTimeout as e:
        raise HarnessError(str(e)) from None


# ---------------------------------------------------------------- cgroups

def cgroup_roots(mountinfo=None):
    """The hierarchies a container needs a cgroup in: name=systemd (v1) and cgroup2.

    MOUNTINFO is /proc/self/mountinfo's text (read when None).  Hybrid:
    both; legacy v1: name=systemd only; pure cgroup2: the cgroup2 mount.
    """
    if mountinfo is None:
        mountinfo = _read("/proc/self/mountinfo") or ""
    v1, v2 = [], []
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields, post = pre.split(), post.split()
        mountpoint, fstype = fields[4].replace("\\040", " "), post[0]
        if fstype == "cgroup2":
            v2.append(mountpoint)
        elif fstype == "cgroup" and "name=systemd" in post[2].split(","):
            v1.append(mountpoint)
    # The first mount of each kind (a hierarchy may be mounted again inside containers).
    return v1[:1] + v2[:1]


def _cgroup_tree_pids(path):
    pids = []
    for dirpath, _dirs, _files in os.walk(path):
        text = _read(os.path.join(dirpath, "cgroup.procs")) or ""
        pids.extend(int(p) for p in text.split())
    return pids


def _remove_cgroup(path, timeout=10.0):
    """rmdir PATH and every cgroup below it, waiting for exiting processes to leave."""
    def attempt():
        if not os.path.isdir(path):
            return True
        for dirpath, _dirs, _files in os.walk(path, topdown=False):
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno in (errno.EBUSY, errno.ENOTEMPTY):
                    return False
                raise
        return True
    try:
        _wait(attempt, timeout, "cgroup %s to empty" % path)
    except HarnessError as e:
        raise HarnessError("%s; still in it: %s" % (e, _describe(_cgroup_tree_pids(path)))) from None


def _describe(pids):
    """'PID (STATE, parent PPID) COMMAND' for each of PIDS, for error messages."""
    out = []
    for pid in pids:
        st = _stat(pid)
        if st:
            out.append("%d (%s, parent %d) %s" % (pid, st[0], st[1], " ".join(_cmdline(pid)) or "?"))
    return "; ".join(out) or "nothing"


def _machine_of_cgroup(pid):
    """NAME when PID's cgroup (any hierarchy) is /CGROUP_PARENT/NAME/..., else None."""
    for line in (_read("/proc/%d/cgroup" % pid) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and (parts[1] == "" or "name=systemd" in parts[1].split(",")):
            segs = parts[2].strip("/").split("/")
            if len(segs) >= 2 and segs[0] == CGROUP_PARENT:
                return segs[1]
    return None


# ---------------------------------------------------------------- names and owners

_counter = itertools.count(1)


def unique_name(prefix=PREFIX):
    """PREFIX-OWNERPID-N: unique on this machine, and says which process owns it."""
    return "%s-%d-%d" % (prefix, os.getpid(), next(_counter))


def _owner(name):
    m = re.search(r"-(\d+)-\d+$", name)
    return int(m.group(1)) if m else None


def _owned_by_live_process(name):
    owner = _owner(name)
    return owner is not None and _alive(owner)


# ---------------------------------------------------------------- containers

class Container:
    """One booted container; see the module docstring.

    BINDS and RW_BINDS are "SRC:DEST" strings or (SRC, DEST) pairs, bound
    read-only and writable.  NAME defaults to unique_name().
    """

    def __init__(self, image, name=None, binds=(), rw_binds=()):
        self.image = image
        self.tree = os.path.normpath(os.fspath(image))
        self.name = name or unique_name()
        self.binds = [_bind(b) for b in binds]
        self.rw_binds = [_bind(b) for b in rw_binds]
        self.nspawn = None       # subprocess.Popen of systemd-nspawn
        self.pid = None          # the container's PID 1, as seen from here
        self._pid_start = None   # its start time, against PID reuse
        self.cgroups = [os.path.join(root, CGROUP_PARENT, self.name) for root in cgroup_roots()]
        self.boot_seconds = None
        self.console = ""        # nspawn's output (the console), kept after stop()
        self._console_path = None
        if len(self.name) > 64 or not re.match(r"^[A-Za-z0-9][A-Za-z0-9.-]*$", self.name):
            raise HarnessError("bad machine name %r (letters, digits, '-', '.'; at most 64)" % self.name)

    def __repr__(self):
        return "Container(%r, pid=%s)" % (self.name, self.pid)

    def __enter__(self):
        self.boot()
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- boot

    def argv(self):
        argv = ["systemd-nspawn", "--directory=" + self.tree, "--boot", "--register=no", "--keep-unit",
                "--volatile=overlay", "--private-network", "--console=passive", "--link-journal=no",
                "--machine=" + self.name]
        argv += ["--bind-ro=%s:%s" % b for b in self.binds]
        argv += ["--bind=%s:%s" % b for b in self.rw_binds]
        return argv

    def boot(self, timeout=BOOT_TIMEOUT):
        """Start the container; return when systemd says running or degraded."""
        if self.nspawn is not None:
            raise HarnessError("%s: already booted" % self.name)
        start = time.monotonic()
        for path in self.cgroups:
            os.makedirs(path, exist_ok=True)
        fd, self._console_path = tempfile.mkstemp(prefix=self.name + "-", suffix=".console")
        # The shell moves itself (so nspawn) into the container's cgroups, then
        # becomes nspawn.  A new session: a ^C to the tests does not reach it.
        mover = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
        procs = [os.path.join(p, "cgroup.procs") for p in self.cgroups]
        try:
            self.nspawn = subprocess.Popen(["/bin/sh", "-c", mover, "sh"] + procs + ["--"] + self.argv(),
                                           stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True,
                                           env=_host_env())
        finally:
            os.close(fd)
        try:
            self.pid = _wait(self._find_init, timeout, "%s: its systemd to start" % self.name)
            self._pid_start = _stat(self.pid)[2]
            state = self._wait_booted(start + timeout - time.monotonic())
        except BaseException:
            self.stop(timeout=5)  # a container that did not boot may not halt either
            raise
        self.boot_seconds = time.monotonic() - start
        if state == "degraded":
            failed = self.run(["systemctl", "--failed", "--no-legend"], check=False).stdout
            log("%s booted degraded; failed units:\n%s" % (self.name, failed))
        return self

    def _find_init(self):
        if self.nspawn.poll() is not None:
            raise HarnessError("%s: systemd-nspawn exited with status %s before boot:\n%s"
                               % (self.name, self.nspawn.returncode, self.read_console()))
        # nspawn first forks a short-lived helper; PID 1 is the child in a new PID namespace.
        for pid in _children(self.nspawn.pid):
            if _is_container_init(pid):
                return pid
        return None

    def _wait_booted(self, timeout):
        deadline = time.monotonic() + timeout
        state = ""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HarnessError("%s: not booted after %.0f s (last state %r)\n--- console ---\n%s"
                                   % (self.name, timeout, state, _tail(self.read_console())))
            try:
                p = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=left)
                state = p.stdout.strip()
            except subprocess.TimeoutExpired:
                continue
            if state in ("running", "degraded"):
                return state
            # "offline": systemctl cannot reach the manager yet (early boot).
            if state in ("maintenance", "stopping"):
                raise HarnessError("%s: system is %s\n--- console ---\n%s"
                                   % (self.name, state, _tail(self.read_console())))
            if not self.running():
                raise HarnessError("%s: died while booting\n--- console ---\n%s"
                                   % (self.name, _tail(self.read_console())))
            time.sleep(0.02)  # the manager is not listening yet; poll again

    def host_pid(self, pid):
        """The PID, as seen from here, of the process that is PID inside."""
        ns = os.readlink("/proc/%d/ns/pid" % self.pid)
        depth = len(_nspid(self.pid))
        for p in _pids():
            ids = _nspid(p)
            if len(ids) == depth and ids[-1] == pid:
                with contextlib.suppress(OSError):
                    if os.readlink("/proc/%d/ns/pid" % p) == ns:
                        return p
        return None

    def running(self):
        return self.pid is not None and _alive(self.pid, self._pid_start)

    def read_console(self):
        if self._console_path:
            text = _read(self._console_path, "rb")
            if text is not None:
                self.console = _ANSI.sub("", text.decode(errors="replace"))
        return self.console

    # -- inside

    def run(self, cmd, input=None, check=True, timeout=RUN_TIMEOUT, user=None, env=None):
        """Run CMD (a list, or a string for sh -c) inside; a CompletedProcess of text.

        The environment is clean (CLEAN_ENV plus ENV).  USER runs it as that
        user (runuser).  On timeout every process the command started is
        killed and subprocess.TimeoutExpired raised.
        """
        if self.pid is None:
            raise HarnessError("%s: not booted" % self.name)
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        environment = dict(CLEAN_ENV, **(env or {}))
        if user is not None:
            environment.update(HOME="/", USER=str(user), LOGNAME=str(user))
            argv = ["runuser", "-u", str(user), "--"] + argv
        full = ["nsenter", "--target", str(self.pid), "--mount", "--uts", "--ipc", "--net", "--pid",
                "--cgroup", "--root", "--wd", "--", "env", "-i"]
        full += ["%s=%s" % kv for kv in sorted(environment.items())] + argv
        proc = subprocess.Popen(full, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="replace", start_new_session=True, env=_host_env())
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            out, err = _kill_inside(proc)
            raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
        result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        if check and proc.returncode != 0:
            e = CommandFailed(proc.returncode, cmd, out, err)
            e.machine = self.name
            raise e
        return result

    def write_file(self, path, text, mode=0o644, owner=None):
        """Write TEXT to PATH inside (parents created), with MODE and OWNER ("user[:group]")."""
        script = 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"'
        if owner:
            script += ' && chown "$3" "$1"'
        self.run(["sh", "-c", script, "sh", path, "%o" % mode] + ([owner] if owner else []), input=text)

    def read_file(self, path):
        return self.run(["cat", path]).stdout

    def journal(self, *args):
        """journalctl --no-pager ARGS inside (the journal is volatile: read it before stop())."""
        p = self.run(["journalctl", "--no-pager"] + list(args), check=False)
        return p.stdout + (("\n--- journalctl stderr ---\n" + p.stderr) if p.stderr.strip() else "")

    # -- stop

    def stop(self, timeout=STOP_TIMEOUT):
        """Halt the container, wait for it, remove its cgroups.  Safe to call twice."""
        if self.nspawn is not None and self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)  # nspawn halts the container cleanly
            try:
                self.nspawn.wait(timeout)
            except subprocess.TimeoutExpired:
                log("%s: nspawn did not stop in %.0f s; killing the container" % (self.name, timeout))
                self._kill_init(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.nspawn.wait(5)
                if self.nspawn.poll() is None:
                    self.nspawn.kill()
                    self.nspawn.wait()
        if self.running():
            # nspawn is gone but the container lives on (nspawn was killed).
            _halt_init(self.pid, self._pid_start, timeout)
        for path in self.cgroups:
            _remove_cgroup(path)
        _remove_empty_dir(os.path.join(NSPAWN_PROPAGATE, self.name))
        self.read_console()
        if self._console_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._console_path)
            self._console_path = None

    def _kill_init(self, sig):
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _kill_inside(proc):
    """Kill what an nsenter (PROC) started, but let nsenter itself reap it.

    The processes inside keep nsenter's process group.  Killing nsenter too
    would leave its dead child to this host's init to reap, and a container's
    PID 1 cannot finish exiting while a zombie of its namespace is unreaped
    (these machines' init reaps late).  Returns nsenter's (stdout, stderr).
    """
    def members():
        return [p for p in _pids() if p != proc.pid and _pgrp(p) == proc.pid]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and proc.poll() is None:
        for pid in members():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            return proc.communicate(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate()


def _pgrp(pid):
    text = _read("/proc/%d/stat" % pid)
    return int(text.rsplit(")", 1)[1].split()[2]) if text else None


def _bind(b):
    src, dest = (b.split(":", 1) + [None])[:2] if isinstance(b, str) else b
    src = os.path.abspath(os.fspath(src))
    return src, dest or src


def _children(pid):
    kids = []
    for tid in os.listdir("/proc/%d/task" % pid) if os.path.isdir("/proc/%d/task" % pid) else ():
        kids += [int(k) for k in (_read("/proc/%d/task/%s/children" % (pid, tid)) or "").split()]
    return kids


def _remove_empty_dir(path):
    with contextlib.suppress(FileNotFoundError, OSError):
        os.rmdir(path)


def _halt_init(pid, starttime, timeout):
    """Halt a container's PID 1 (SIGRTMIN+3), then kill it if it will not go."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGRTMIN + 3)
    try:
        _wait(lambda: not _alive(pid, starttime), timeout, "container PID %d to halt" % pid)
    except HarnessError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # ends every process in its PID namespace
        _wait(lambda: not _alive(pid, starttime), 5, "container PID %d to die" % pid)


# ---------------------------------------------------------------- leftovers

def cleanup_leftovers(prefix=PREFIX, say=log):
    """Stop containers and remove cgroups that killed runs left behind.

    Leftovers are what no live process owns (see unique_name): a
    systemd-nspawn whose --machine starts with PREFIX; a container PID 1 in
    a cgroup CGROUP_PARENT/PREFIX* whose nspawn is gone; a cgroup
    CGROUP_PARENT/PREFIX*.  A name that does not say its owner counts as
    ownerless.  Returns what it stopped or removed, as strings.
    """
    done = []
    for pid in _pids():
        machine = _nspawn_machine(pid)
        if not machine or not machine.startswith(prefix) or _owned_by_live_process(machine):
            continue
        st = _stat(pid)
        if st is None:
            continue
        say("stopping leftover container %s (systemd-nspawn PID %d)" % (machine, pid))
        inits = [k for k in _children(pid) if _is_container_init(k)]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            _wait(lambda: not _alive(pid, st[2]), STOP_TIMEOUT, "leftover nspawn %d to stop" % pid)
        except HarnessError:
            for k in inits:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(k, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        done.append("nspawn %s" % machine)
    for pid in _pids():
        machine = _machine_of_cgroup(pid)
        if not machine or not machine.startswith(prefix) or not _is_container_init(pid):
            continue
        if _owned_by_live_process(machine):
            continue
        st = _stat(pid)
        if st is None or _is_nspawn(st[1]):
            continue  # its nspawn still runs it
        say("halting orphaned container %s (PID %d; its nspawn is gone)" % (machine, pid))
        _halt_init(pid, st[2], STOP_TIMEOUT)
        done.append("orphan %s" % machine)
    for root in cgroup_roots():
        parent = os.path.join(root, CGROUP_PARENT)
        for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else ():
            path = os.path.join(parent, name)
            if name.startswith(prefix) and os.path.isdir(path) and not _owned_by_live_process(name):
                try:
                    _remove_cgroup(path)
                except HarnessError as e:
                    say("cannot remove leftover cgroup: %s" % e)
                    continue
                done.append("cgroup %s" % path)
    # What nspawn and Container leave on the host when they are killed.
    running = {_nspawn_machine(pid) for pid in _pids()}
    for pattern in (os.path.join(NSPAWN_PROPAGATE, "*"), os.path.join(tempfile.gettempdir(), "*.console")):
        for path in glob.glob(pattern):
            base = os.path.basename(path)
            name = re.sub(r"-[^-]*\.console$", "", base)
            if base.startswith(prefix) and name not in running and not _owned_by_live_process(name):
                if path.endswith(".console"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                else:
                    _remove_empty_dir(path)
                if not os.path.exists(path):
                    done.append("file %s" % path)
    return done


# ---------------------------------------------------------------- the project

INSTALL_SCRIPT = r"""
set -e
[ -f "$1/Makefile" ] || { echo "install_project: no source tree at $1" >&2; exit 1; }
rm -rf "$2"
mkdir -p "$2"
# The source is bound read-only; build in a copy (the overlay is writable).
tar -C "$1" --exclude=./.git --exclude=./build --exclude=./demo-output --exclude=./.pytest_cache \
    --exclude='__pycache__' -cf - . | tar -C "$2" -xf -
make -C "$2" -s install PREFIX=/usr PYTHON=/usr/bin/python3
systemd-sysusers
for f in /usr/lib/tmpfiles.d/buildunits*.conf /etc/tmpfiles.d/buildunits*.conf; do
    if [ -e "$f" ]; then systemd-tmpfiles --create "$f"; fi
done
systemctl daemon-reload
systemctl reload dbus
"""


def install_project(container, src="/src", workdir="/var/tmp/buildunits-src"):
    """Install the project bound at SRC inside CONTAINER the way an operator would.

    make install PREFIX=/usr (in a writable copy), then systemd-sysusers,
    systemd-tmpfiles --create for the project's tmpfiles.d files (if any),
    systemctl daemon-reload and a dbus reload for the policy.  Returns the
    CompletedProcess; raises CommandFailed with the output on failure.
    """
    return container.run(["sh", "-c", INSTALL_SCRIPT, "sh", src, workdir], timeout=300)
