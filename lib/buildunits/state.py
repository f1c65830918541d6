"""State: build history and daemon state, as plain versioned files.

This module alone knows the state directory's layout (default
/var/lib/buildunits):

    builds/BUILDER/NUMBER/build.json   the build record (format "build")
    builds/BUILDER/NUMBER/NN-STEP.log  each step's output, streamed as produced
    builds/BUILDER/NUMBER/progress.jsonl  a running build's step transitions ("progress")
    builds/BUILDER/next.json           hint: the next number to try ("counter")
    poller/KEY.json                    last seen refs of one repository ("poller")
    poller/KEY.git/                    bare mirror of a remote (non-path) repository
    scheduler/BUILDER.json             consumed change ids and revisions ("scheduler")
    locks/PROGRAM[@WORKER].lock        held by the running daemon (flock)
    workers/WORKER.json                the build a runner holds ("worker")
    work/WORKER/BUILDER/               a runner's work directory (the checkout)

Build numbers never repeat, even across crashes: a number is taken by
mkdir(builds/BUILDER/NUMBER), which is atomic and exclusive, and made
durable (fsync of builds/BUILDER/) before it is used.  next.json is only a
hint of where to start trying; if it is lost or behind, the mkdir loop
still skips every number taken.  A crash after the mkdir and before
build.json is written leaves an empty directory: a number used by no build
(a gap, never a repeat), which the pages skip and `buildunits fsck` lists.

A build number is an int with 1 <= N < 2**32 (the D-Bus signals carry it as
uint32), and only its canonical decimal name (no leading zero, ASCII digits)
is a build directory.  next.json is read by read_counter() alone: a "next"
that is not such a number (true, 2**40, "7") is treated as missing, and the
directory listed.  allocate_number() refuses to go past 2**32 - 1.

Symbolic links are never records.  A build step runs as the same user
and can write here, so whatever it plants is hostile: the readers of the
builds tree (build_numbers, builders, read_build, open_log) walk it with
O_NOFOLLOW at every step below builds/, so a link to a directory or a file
elsewhere is neither followed nor shown (fsck reports it), and the runner
creates each step log with O_EXCL, never writing through what is there.

A build is written whole twice: build.json when it starts (state
"running", every step pending) and when it ends (state "finished", the
COMMIT POINT of its result, fsync'd).  In between, each step transition
is one line appended to progress.jsonl (format "progress"): a cost that
does not grow with the build (rewriting build.json at each step was
quadratic in its number of steps).  read_build() applies those lines to a
running record, so every reader sees the build as it progresses; a
finished record is complete and its progress file, removed after the
commit point, is ignored if a crash left it.  The lines are not fsync'd:
a crash leaves some prefix of them (a torn last line is ignored), and
recovery records the build as interrupted from what is there.
"""

import errno
import hashlib
import json
import os
import re
import stat

from . import fsutil, records, redact


class NotLinked(ValueError):
    """A symbolic link (or a non-directory) where the state tree must have
    a directory or a file of its own: not followed."""

    def __init__(self, path, link):
        self.path = path
        self.reason = "a symbolic link, not followed" if link else "not a directory"
        super().__init__("%s: %s" % (path, self.reason))

# Build numbers are carried as D-Bus uint32 ("u" in BuildStarted and the
# others): 1 <= NUMBER < 2**32.  The counter's "next" is held to the same.
MAX_BUILD_NUMBER = 2 ** 32 - 1
_NUMBER_RE = re.compile(r"[1-9][0-9]{0,9}")   # canonical decimal, ASCII digits only


def valid_number(n):
    """True if N is a build number: an int (not a bool), 1 <= N < 2**32."""
    return isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_BUILD_NUMBER


def parse_number(name):
    """The build number a directory or file name NAME spells, or None: only
    canonical decimal (no sign, no leading zero, no other digits than 0-9)."""
    if isinstance(name, str) and _NUMBER_RE.fullmatch(name):
        n = int(name)
        if valid_number(n):
            return n
    return None


class NumbersExhausted(Exception):
    """A builder has used every build number below 2**32."""

PROGRESS = "progress.jsonl"
# The keys of a step a progress line may set, and those of the build.
PROGRESS_STEP_KEYS = ("state", "result", "started", "finished", "log", "exit_status", "summary", "timed_out")
PROGRESS_BUILD_KEYS = ("revision", "reason")


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _no_constant(name):
    raise ValueError("%s is not a JSON number" % name)


class FinishedBuild(RuntimeError):
    """A finished build record was about to be rewritten (refused)."""

    def __init__(self, path):
        super().__init__("%s is finished already; a finished build record is never rewritten" % path)
        self.path = path


class State:
    def __init__(self, root):
        self.root = root

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def ensure(self):
        for d in ("builds", "poller", "scheduler", "workers", "work"):
            fsutil.makedirs(self.path(d))

    # -------------------------------------------------------------- builds
    def builder_dir(self, builder):
        return self.path("builds", builder)

    def build_dir(self, builder, number):
        return self.path("builds", builder, str(number))

    def build_path(self, builder, number):
        return self.path("builds", builder, str(number), "build.json")

    def counter_path(self, builder):
        return self.path("builds", builder, "next.json")

    def read_counter(self, builder):
        """The next-number hint of BUILDER, or None when it is missing,
        unreadable or not a valid build number (see valid_number): then the
        caller lists the directory.  The one reader of next.json."""
        try:
            rec = self._read_record("counter", "builds", builder, "next.json")
        except (OSError, records.RecordError):
            return None
        n = rec.get("next") if rec else None
        return n if valid_number(n) else None

    def write_counter(self, builder, n, durable=False):
        """Write the hint NEXT=N (a hint: not fsync'd unless DURABLE).  One
        past the last number (2**32) is not written: nothing follows it."""
        if valid_number(n):
            records.write(self.counter_path(builder), "counter", {"next": n}, durable=durable)

    def allocate_number(self, builder):
        """Take the next build number of BUILDER for good; see the docstring.
        Raises NumbersExhausted past 2**32 - 1."""
        bdir = self.builder_dir(builder)
        fsutil.makedirs(bdir)
        n = self.read_counter(builder)
        if n is None:
            nums = self.build_numbers(builder)
            n = (nums[-1] + 1) if nums else 1
        while True:
            if n > MAX_BUILD_NUMBER:
                raise NumbersExhausted("%s has used every build number up to %d (2^32 - 1, the largest "
                                       "D-Bus signals carry); move its history away to start again"
                                       % (builder, MAX_BUILD_NUMBER))
            try:
                os.mkdir(os.path.join(bdir, str(n)))
                break
            except FileExistsError:
                n += 1
        fsutil.fsync_dir(bdir)  # the number is now taken for good
        self.write_counter(builder, n + 1)
        return n

    def build_numbers(self, builder):
        """All build numbers of BUILDER, ascending (reads the directory).
        Only canonical names count (parse_number): not "007", "True" or "²"."""
        try:
            fd = self._open_dir("builds", builder)
        except (FileNotFoundError, NotLinked):
            return []
        try:
            with os.scandir(fd) as it:
                # d_type, no stat per entry: a link to a directory is no build.
                names = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        finally:
            os.close(fd)
        return sorted(n for n in map(parse_number, names) if n is not None)

    def recent_numbers(self, builder, count):
        """The highest COUNT build numbers of BUILDER, ascending, without
        listing its directory (which grows with history): counted down from
        the next-number hint, and up past it (the hint is written after the
        mkdir, so a crash can leave it behind).  Lists the directory only
        when the hint is missing or unreadable."""
        nxt = self.read_counter(builder)
        if nxt is None:
            return self.build_numbers(builder)[-count:]
        top = nxt - 1
        while top < MAX_BUILD_NUMBER and os.path.isdir(self.build_dir(builder, top + 1)):
            top += 1
        # Twice COUNT candidates: room for the gaps a crash can leave.
        found = [n for n in range(top, max(0, top - 2 * count), -1) if os.path.isdir(self.build_dir(builder, n))]
        return sorted(found[:count])

    def builders(self):
        """Names of builders with any history."""
        try:
            with os.scandir(self.path("builds")) as it:
                return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    def read_build(self, builder, number):
        """The build record, or None if the number holds none (a gap).
        A symbolic link on the way (builds/B, builds/B/N, build.json) or a
        file that is not a regular one raises RecordError: never followed.
        A running build's record has its progress lines applied (see the
        module's docstring)."""
        rec = self._read_record("build", "builds", builder, str(number), "build.json")
        if rec is not None and rec.get("state") == "running":
            self._apply_progress(rec, builder, number)
        return rec

    def _read_record(self, fmt, *parts):
        """The record STATE/PARTS of format FMT, or None if it is missing;
        reached without following a symbolic link (RecordError if one is on
        the way, or the file is not a regular one)."""
        path = self.path(*parts)
        try:
            fd = self.open_file(*parts)
        except FileNotFoundError:
            return None
        except NotLinked as e:
            raise records.RecordError(e.path, e.reason)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise records.RecordError(path, "not a regular file")
            data = f.read()
        return records.decode(data, path, fmt)

    def build_stamp(self, builder, number):
        """What tells one version of a build from another without reading it
        (build.json's and its progress file's inode, mtime and size), or
        None if it has no build.json."""
        out = []
        for path in (self.build_path(builder, number), self.progress_path(builder, number)):
            try:
                st = os.stat(path)
            except OSError:
                if not out:
                    return None
                out.append(None)
                continue
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def progress_path(self, builder, number):
        return os.path.join(self.build_dir(builder, number), PROGRESS)

    def start_progress(self, builder, number):
        """Create the progress file of a build that starts (its first line
        names it).  Not fsync'd: see the module's docstring."""
        head = {"format": "progress", "version": records.FORMATS["progress"], "builder": builder, "number": number}
        fd = os.open(self.progress_path(builder, number),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, (json.dumps(head, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))
        finally:
            os.close(fd)

    def append_progress(self, builder, number, step=None, fields=None, build=None):
        """Append one transition: FIELDS of step STEP (an index in the
        record's steps), and BUILD fields of the build.  One write(2) of a
        line on O_APPEND, whose cost does not depend on the build's size."""
        event = {}
        if step is not None:
            event["step"] = step
            event["set"] = {k: v for k, v in (fields or {}).items() if k in PROGRESS_STEP_KEYS}
        if build:
            event["build"] = {k: v for k, v in build.items() if k in PROGRESS_BUILD_KEYS}
        line = json.dumps(event, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n"
        fd = os.open(self.progress_path(builder, number),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, line.encode("utf-8"))
        finally:
            os.close(fd)

    def _apply_progress(self, rec, builder, number):
        """Apply the lines of the progress file of B #N to the running REC.
        A file that is not one (no header naming the build), and anything
        from a line that does not parse on (a torn end), are ignored; so is
        a symbolic link (open_file)."""
        try:
            fd = self.open_file("builds", builder, str(number), PROGRESS)
        except (OSError, NotLinked):
            return
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return
            head = f.readline()
            try:
                head = json.loads(head)
            except ValueError:
                return
            if not isinstance(head, dict) or head.get("format") != "progress" \
                    or head.get("builder") != rec.get("builder") or head.get("number") != rec.get("number"):
                return
            steps = rec.get("steps") if isinstance(rec.get("steps"), list) else []
            for line in f:
                if not line.endswith(b"\n"):
                    break          # torn: the writer died in the middle of it
                try:
                    ev = json.loads(line, parse_constant=_no_constant)
                except ValueError:
                    break
                if not isinstance(ev, dict):
                    break
                i, fields = ev.get("step"), ev.get("set")
                if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(steps) \
                        and isinstance(steps[i], dict) and isinstance(fields, dict):
                    steps[i].update((k, v) for k, v in fields.items() if k in PROGRESS_STEP_KEYS)
                build = ev.get("build")
                if isinstance(build, dict):
                    rec.update((k, v) for k, v in build.items() if k in PROGRESS_BUILD_KEYS)

    def write_build(self, rec, durable=True):
        """Atomically (re)write a build record; REC keeps unknown keys.
        durable=False skips the fsyncs, for the runner's progress updates
        (see runner.py: only the final record is a commit point).

        A finished record is never rewritten: if the one on disk is
        finished, FinishedBuild is raised and nothing is written.  This is
        the one place every writer of build.json goes through, so two
        writers that both believe they own a build (two runners of one
        name, a runner and `fsck --repair`) cannot change a result once it
        is committed.  (A writer between this check and its rename could
        still race another; the instance locks, daemon.py, keep one
        runner per worker, and this is the check that a lost lock or a
        confused writer does no harm with.)"""
        path = self.build_path(rec["builder"], rec["number"])
        try:
            old = records.read(path, "build")
        except FileNotFoundError:
            old = None
        except records.RecordError:
            old = None        # torn or unreadable: not a committed result; rewritten
        if old is not None and old.get("state") == "finished":
            raise FinishedBuild(path)
        records.write(path, "build", rec, durable=durable)
        if rec.get("state") == "finished":
            # After the commit point: the record is complete, and a crash
            # before this leaves a progress file that readers ignore.
            try:
                os.unlink(self.progress_path(rec["builder"], rec["number"]))
            except OSError:
                pass

    def log_name(self, index, step):
        return "%02d-%s.log" % (index, step)

    def log_path(self, builder, number, index, step):
        return os.path.join(self.build_dir(builder, number), self.log_name(index, step))

    def open_log(self, builder, number, name):
        """A read-only descriptor of the log NAME of B #N, or None if it is
        missing, a symbolic link (or under one) or not a regular file."""
        try:
            fd = self.open_file("builds", builder, str(number), name)
        except (OSError, NotLinked):
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    def create_log(self, builder, number, name):
        """A new log file NAME of B #N, open for appending.  Never opens
        what is already there (a file or link planted by an earlier step):
        raises FileExistsError, or NotLinked for a link on the way."""
        return self.open_file("builds", builder, str(number), name,
                              flags=os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, mode=0o644)

    # ------------------------------------------------------------ no links
    def _open_dir(self, *parts):
        """A descriptor of the directory STATE/PARTS, reached without
        following a symbolic link below the root."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, part in enumerate(parts):
                try:
                    nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        link = stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode)
                        raise NotLinked(os.path.join(self.root, *parts[:i + 1]), link)
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_file(self, *parts, flags=os.O_RDONLY, mode=0o644):
        """os.open of STATE/PARTS, following no symbolic link below the root
        (NotLinked if there is one, or a file where a directory should be).
        Never blocks on a FIFO."""
        dfd = self._open_dir(*parts[:-1])
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise NotLinked(os.path.join(self.root, *parts), True)
            raise
        finally:
            os.close(dfd)

    # -------------------------------------------------------------- poller
    def poller_path(self, repository, _shown=True):
        # The readable part is made from the masked URL: no credentials in
        # file names (redact.py); the digest, of the real one, tells apart
        # two URLs that differ only in them.
        shown = redact.url(repository) if _shown else repository
        key = re.sub(r"[^A-Za-z0-9._-]+", "_", shown.strip("/"))[-48:]
        digest = hashlib.sha256(repository.encode("utf-8")).hexdigest()[:12]
        return self.path("poller", "%s-%s.json" % (key.strip("._") or "repo", digest))

    def read_poller(self, repository):
        """(record or None).  A corrupt one raises RecordError."""
        path = self.poller_path(repository)
        old = self.poller_path(repository, _shown=False)
        if old != path and not os.path.lexists(path) and os.path.lexists(old):
            # Named after the URL with its credentials by buildunits 0.1.
            if os.path.isdir(old[:-5] + ".git") and not os.path.lexists(path[:-5] + ".git"):
                os.rename(old[:-5] + ".git", path[:-5] + ".git")
            os.rename(old, path)
        try:
            return records.read(path, "poller")
        except FileNotFoundError:
            return None

    def write_poller(self, repository, refs, extra=None):
        fields = dict(extra or {})
        fields.update({"repository": redact.url(repository), "refs": refs})
        records.write(self.poller_path(repository), "poller", fields)

    # ----------------------------------------------------------- scheduler
    def scheduler_path(self, builder):
        return self.path("scheduler", builder + ".json")

    def read_scheduler(self, builder):
        try:
            return records.read(self.scheduler_path(builder), "scheduler")
        except FileNotFoundError:
            return None

    def write_scheduler(self, builder, rec, durable=True):
        records.write(self.scheduler_path(builder), "scheduler", rec, durable=durable)

    # ------------------------------------------------------------- workers
    def worker_path(self, worker):
        return self.path("workers", worker + ".json")

    def read_worker(self, worker):
        try:
            return records.read(self.worker_path(worker), "worker")
        except FileNotFoundError:
            return None

    def write_worker(self, worker, fields):
        records.write(self.worker_path(worker), "worker", fields)

    def clear_worker(self, worker):
        try:
            os.unlink(self.worker_path(worker))
        except FileNotFoundError:
            return
        fsutil.fsync_dir_after_commit(self.path("workers"))

    def work_dir(self, worker, builder):
        return self.path("work", worker, builder)

    def workers(self):
        try:
            return sorted(n[:-5] for n in os.listdir(self.path("workers")) if n.endswith(".json")
                          and not n.startswith("."))
        except FileNotFoundError:
            return []
