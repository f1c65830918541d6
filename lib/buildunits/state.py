"""State: build history and daemon state, as plain versioned files.

This module alone knows the state directory's layout (default
/var/lib/buildunits): the table LAYOUT below (and in buildunits-state(5)),
which ensure(), sweep() and `buildunits fsck` follow.  A poller,
scheduler or worker record that cannot be read is quarantined
(quarantine(): moved to corrupt/ with the reason beside it, and a journal
line), never deleted or overwritten in place, and its daemon goes on as
without it.  Build history is never moved: a build record that cannot be
read stays where it is (the pages skip it, fsck notes it).

Build numbers are taken by mkdir and never repeat, even across crashes;
next.json is only a hint (numbers.py).  Symbolic links are never records,
nor followed below builds/ (nofollow.py).  A running build's step
transitions are lines appended to its progress file (progress.py), which
read_build() applies.
"""

import hashlib
import os
import re
import shutil
import stat

from . import consumed, fsutil, nofollow, numbers, progress, records, redact
from .nofollow import NotLinked  # noqa: F401 (state.NotLinked: the name readers catch)
from .numbers import MAX_BUILD_NUMBER, NumbersExhausted, parse_number, valid_number  # noqa: F401


PROGRESS = progress.NAME
KEEP = "keep.json"            # a pinned build's marker ("keep"): the janitor leaves it whole
PRUNED = "pruned.json"        # what the janitor removed of a build that stays ("pruned")
ARTIFACTS = "artifacts"       # artifacts.py's directory in a build's
REMOVING = ".removing-"       # builds/B/.removing-N: a build being removed (janitor.py)


class FinishedBuild(RuntimeError):
    """A finished build record was about to be rewritten (refused)."""

    def __init__(self, path):
        super().__init__("%s is finished already; a finished build record is never rewritten" % path)
        self.path = path


# The rows of the layout: (directory, what lives there (format), whether
# sweep() removes old hidden temporary files from it).  builds/BUILDER/
# (the next-number hints) is swept too; builds/B/N/ by its runner's recovery.
LAYOUT = (
    ("builds", "BUILDER/NUMBER/build.json: the build record (\"build\"); BUILDER/NUMBER/NN-STEP.log: "
               "each step's output, streamed; BUILDER/NUMBER/progress.jsonl: a running build's step "
               "transitions (\"progress\"); BUILDER/next.json: the next number to try (\"counter\"); "
               "BUILDER/NUMBER/keep.json: a pinned build (\"keep\"); BUILDER/NUMBER/pruned.json: its logs or "
               "artifacts removed (\"pruned\"); "
               "BUILDER/.removing-NUMBER/: a build being removed", False),
    ("poller", "KEY.json: last seen refs of one repository (\"poller\"); KEY.git/: its bare mirror", True),
    ("scheduler", "BUILDER.json: consumed change ids and revisions (\"scheduler\"); consumed.jsonl: "
                  "what was consumed since they were written (\"consumed\"); consumed.mark: the time up to which "
                  "every request's consumption is in the files, durably (\"consumed-mark\")", True),
    ("workers", "WORKER.json: the build a runner holds (\"worker\")", True),
    ("timers", "BUILDER.json: when the scheduler's own OnCalendar= timer of a Persistent=yes builder last "
               "elapsed (\"timer\"; only without systemd, whose timers keep theirs)", True),
    ("webhook", "deliveries.jsonl: the forges' deliveries buildunits-webhook took, newest last "
                "(\"deliveries\")", True),
    ("janitor", "retention.json: what the last janitor pass measured, and how far it has looked, per "
                "builder (\"retention\")", True),
    ("notifier", "cursor.json: the finished builds the notifier has queued its messages for (\"notifier\"); "
                 "BUILDER@NUMBER.json: the messages about a build it gave up on (\"undelivered\")", True),
    ("work", "WORKER/BUILDER/: a runner's work directory (the checkout)", False),
    ("locks", "PROGRAM[@WORKER].lock: held by the running daemon (flock)", False),
    ("corrupt", "DIR.NAME, DIR.NAME.reason: a record that could not be read, and why (quarantine)", True),
)
# The directories whose records are quarantined when they cannot be read.
QUARANTINED = ("poller", "scheduler", "workers", "webhook", "timers", "notifier", "janitor")


class State:
    on_corrupt = None  # callable(path, dest, reason), set by daemons to log

    def __init__(self, root):
        self.root = root

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def ensure(self):
        for d, _holds, _swept in LAYOUT:
            fsutil.makedirs(self.path(d))

    def missing(self):
        """The directories of LAYOUT that are missing (for fsck)."""
        return [self.path(d) for d, _h, _s in LAYOUT if not os.path.isdir(self.path(d))]

    def sweep(self, dry_run=False, now=None, builds=False):
        """Remove temporary files abandoned by crashed writers (older than
        fsutil.TMP_SWEEP_AGE_SEC) in the swept rows of LAYOUT and each
        builder's directory, and with BUILDS in every build's (fsck: it
        lists the whole history); return their paths."""
        dirs = [self.path(d) for d, _h, swept in LAYOUT if swept]
        for b in self.builders():
            dirs.append(self.builder_dir(b))
            if builds:
                dirs += [self.build_dir(b, n) for n in self.build_numbers(b)]
        out = []
        for d in dirs:
            out += fsutil.sweep_stale_tmp(d, now=now, dry_run=dry_run)
        return out

    def lock_path(self, program, instance=None):
        """The lock file of daemon PROGRAM (and its INSTANCE, a worker)."""
        return self.path("locks", program + ("@" + instance if instance else "") + ".lock")

    # ------------------------------------------------------------ quarantine
    def quarantine(self, path, reason):
        """Move the state record PATH that cannot be read (in one of
        QUARANTINED) to corrupt/DIR.NAME with REASON beside it; return where
        it went (None if it was gone, or is not such a record: a build's
        history is never moved).  Logged through on_corrupt."""
        rel = os.path.relpath(path, self.root).split(os.sep)
        if len(rel) != 2 or rel[0] not in QUARANTINED:
            return None
        dest = fsutil.move_aside(path, self.path("corrupt"), rel[0], reason)
        if dest is not None and self.on_corrupt:
            self.on_corrupt(path, dest, reason)
        return dest

    def quarantined(self):
        """[(name, reason)] in corrupt/."""
        return fsutil.read_aside(self.path("corrupt"))

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

    def counter_stamp(self, builder):
        """What tells one next.json of BUILDER from another without reading
        it (it is replaced by rename: a new inode each time), or None."""
        return fsutil.stamp(self.counter_path(builder), follow_symlinks=False)

    def builders_stamp(self):
        """What changes when a builder's directory is added or removed."""
        return fsutil.stamp(self.path("builds"), follow_symlinks=False)

    def write_counter(self, builder, n, durable=False):
        """Write the hint NEXT=N (a hint: not fsync'd unless DURABLE).  One
        past the last number (2**32) is not written: nothing follows it."""
        if valid_number(n):
            records.write(self.counter_path(builder), "counter", {"next": n}, durable=durable)

    def allocate_number(self, builder):
        """Take the next build number of BUILDER for good (numbers.allocate).
        Raises NumbersExhausted past 2**32 - 1."""
        return numbers.allocate(self, builder)

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
        listing its directory (numbers.recent)."""
        return numbers.recent(self, builder, count)

    def walk_builds(self, recent=None):
        """(path, lstat mode, depth) of every entry of builds/ (depth 0),
        builds/B (1) and builds/B/N (2), sorted, following no link (fsck).
        With RECENT, only the newest RECENT builds of each builder are
        entered (the others are listed as directories of builds/B)."""
        if recent is None:
            return nofollow.walk(self.path("builds"), 2)
        newest = {}

        def enter(path, level):
            if level == 0:
                return True
            b = os.path.basename(os.path.dirname(path))
            if b not in newest:
                newest[b] = set(map(str, self.build_numbers(b)[-recent:]))
            return os.path.basename(path) in newest[b]
        return nofollow.walk(self.path("builds"), 2, enter)

    def has_build_record(self, builder, number):
        """True if builds/BUILDER/NUMBER/ has a build.json entry (of any
        type: not read, not followed)."""
        return os.path.lexists(self.build_path(builder, number))

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
        self._progress_write(builder, number, progress.head(builder, number), os.O_TRUNC)

    def append_progress(self, builder, number, step=None, fields=None, build=None):
        """Append one transition (progress.event): one write(2) of a line on
        O_APPEND, whose cost does not depend on the build's size."""
        self._progress_write(builder, number, progress.event(step, fields, build), os.O_APPEND)

    def _progress_write(self, builder, number, line, flag):
        fd = os.open(self.progress_path(builder, number),
                     os.O_WRONLY | os.O_CREAT | flag | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            progress.write_all(fd, line)
        finally:
            os.close(fd)

    def _apply_progress(self, rec, builder, number):
        """Apply the progress file of B #N to the running REC (progress.apply);
        a symbolic link or a file that is not a regular one is ignored."""
        try:
            fd = self.open_file("builds", builder, str(number), PROGRESS)
        except (OSError, NotLinked):
            return
        with os.fdopen(fd, "rb") as f:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                progress.apply(rec, f)

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

    def build_file(self, builder, number, name):
        """The path of the file NAME of B #N (a log); open it with open_log."""
        return os.path.join(self.build_dir(builder, number), name)

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

    # ------------------------------------------------------------ retention
    # The janitor's verbs (janitor.py).  A build is removed whole or not at
    # all: begin_removal() renames builds/B/N to builds/B/.removing-N in the
    # same directory (atomic; fsync'd: the commit point, after which B #N is
    # gone for every reader, since only canonical names are builds), and
    # finish_removal() deletes that tree.  A crash between the two leaves
    # the hidden directory, which removals_left() lists for the next pass.
    def keep_path(self, builder, number):
        return os.path.join(self.build_dir(builder, number), KEEP)

    def is_kept(self, builder, number):
        """True if B #N is pinned (an lstat: the marker is not read)."""
        return os.path.lexists(self.keep_path(builder, number))

    def read_keep(self, builder, number):
        """The "keep" record of B #N, or None; never through a link."""
        return self._read_record("keep", "builds", builder, str(number), KEEP)

    def write_keep(self, builder, number, fields):
        records.write(self.keep_path(builder, number), "keep", fields)

    def remove_keep(self, builder, number):
        """Unpin B #N; False if it was not pinned."""
        try:
            os.unlink(self.keep_path(builder, number))
        except FileNotFoundError:
            return False
        fsutil.fsync_dir_after_commit(self.build_dir(builder, number))
        return True

    def read_pruned(self, builder, number):
        """The "pruned" record of B #N (what the janitor removed of it), or
        None; an unreadable one raises RecordError."""
        return self._read_record("pruned", "builds", builder, str(number), PRUNED)

    def write_pruned(self, builder, number, fields):
        records.write(os.path.join(self.build_dir(builder, number), PRUNED), "pruned", fields)

    def marker_stamp(self, builder, number):
        """What tells the markers of B #N from others without reading them,
        or None when it has none: the janitor's beside its record
        (keep.json, pruned.json) and the notifier's mark of what it gave
        up on (notifier/B@N.json).  Each is replaced by rename (a new
        inode each time)."""
        stamps = tuple(fsutil.stamp(os.path.join(self.build_dir(builder, number), name), follow_symlinks=False)
                       for name in (KEEP, PRUNED))
        given_up = fsutil.stamp(self.notifier_path("%s@%d" % (builder, number)), follow_symlinks=False)
        if given_up is not None:
            stamps += (given_up,)
        return None if stamps == (None, None) else stamps

    def build_mtime(self, builder, number):
        """The mtime of builds/B/N itself (when its number was taken, for a
        directory that holds no record yet), or None."""
        try:
            return os.lstat(self.build_dir(builder, number)).st_mtime
        except OSError:
            return None

    def begin_removal(self, builder, number, durable=True):
        """Rename builds/B/N out of the builds' names: from here B #N is
        gone for every reader (the commit point of its removal), and for
        good once builds/B is fsync'd (here, or by the caller's
        sync_builder() after a batch: DURABLE=False).  False if it was not
        there (a link or a file is not a build either: left as is)."""
        src = self.build_dir(builder, number)
        try:
            if not stat.S_ISDIR(os.lstat(src).st_mode):
                return False
        except FileNotFoundError:
            return False
        dest = os.path.join(self.builder_dir(builder), REMOVING + str(number))
        if os.path.lexists(dest):      # never: numbers do not repeat; a stray copy goes first
            self._delete_tree(dest)
        os.rename(src, dest)
        if durable:
            self.sync_builder(builder)
        return True

    def sync_builder(self, builder):
        """fsync builds/B: the renames in it are durable."""
        fsutil.fsync_dir(self.builder_dir(builder))

    def finish_removal(self, builder, number):
        """Delete builds/B/.removing-N (after begin_removal, or left by a
        crash); what it held, as usage() counts it."""
        path = os.path.join(self.builder_dir(builder), REMOVING + str(number))
        size = self._usage(path)
        self._delete_tree(path)
        return size

    def removals_left(self, builder):
        """The numbers of builds/B/.removing-N left by a crash, ascending."""
        try:
            names = os.listdir(self.builder_dir(builder))
        except OSError:
            return []
        return sorted(n for n in (parse_number(x[len(REMOVING):]) for x in names if x.startswith(REMOVING))
                      if n is not None)

    def usage(self, builder, number):
        """{"state", "logs", "artifacts"}: bytes (st_blocks, as du counts)
        of the files of builds/B/N, by kind; no link followed."""
        return self._usage(self.build_dir(builder, number))

    @staticmethod
    def _usage(top):
        out = {"state": 0, "logs": 0, "artifacts": 0}
        for path, _mode, depth in nofollow.walk(top, 64):
            try:
                size = os.lstat(path).st_blocks * 512
            except OSError:
                continue
            name = os.path.relpath(path, top).split(os.sep)[0]
            kind = "artifacts" if name == ARTIFACTS else "logs" if name.endswith(".log") else "state"
            out[kind] += size
        return out

    def remove_logs(self, builder, number, names):
        """Unlink the logs NAMES (from the record's steps) of B #N: only
        plain file names ending in .log.  Bytes freed."""
        freed = 0
        for name in names:
            if not isinstance(name, str) or "/" in name or not name.endswith(".log") or name.startswith("."):
                continue
            path = self.build_file(builder, number, name)
            try:
                freed += os.lstat(path).st_blocks * 512
                os.unlink(path)
            except FileNotFoundError:
                continue
        return freed

    def has_artifacts(self, builder, number):
        return os.path.lexists(os.path.join(self.build_dir(builder, number), ARTIFACTS))

    def remove_artifacts(self, builder, number):
        """Delete builds/B/N/artifacts/.  Bytes freed."""
        path = os.path.join(self.build_dir(builder, number), ARTIFACTS)
        freed = sum(self._usage(path).values())
        self._delete_tree(path)
        return freed

    @staticmethod
    def _delete_tree(path):
        # rmtree follows no link (it removes the link) and, on Linux, walks
        # by descriptors: a step's planted link cannot lead it elsewhere.
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass

    def retention_path(self):
        return self.path("janitor", "retention.json")

    def read_retention(self):
        """The janitor's "retention" record, or None (missing, or
        quarantined when unreadable: a pass then measures afresh)."""
        try:
            return records.read(self.retention_path(), "retention")
        except FileNotFoundError:
            return None
        except records.RecordError as e:
            self.quarantine(e.path, e.reason)
            return None

    def peek_retention(self):
        """As read_retention, for readers (status): never quarantines."""
        try:
            return records.read(self.retention_path(), "retention")
        except (OSError, records.RecordError):
            return None

    def write_retention(self, fields):
        fsutil.makedirs(self.path("janitor"))     # a state made before janitor/ was in LAYOUT
        records.write(self.retention_path(), "retention", fields)

    # ------------------------------------------------------------ no links
    def _open_dir(self, *parts):
        return nofollow.open_dir(self.root, parts)

    def artifact_path(self, builder, number, *parts):
        """Where B #N keeps its artifact PARTS (artifacts.py); to be opened
        with open_file(), which follows no link, never by this path."""
        return self.path("builds", builder, str(number), "artifacts", *parts)

    def open_file(self, *parts, flags=os.O_RDONLY, mode=0o644):
        """os.open of STATE/PARTS, following no symbolic link below the root
        (nofollow.open_file).  Never blocks on a FIFO."""
        return nofollow.open_file(self.root, parts, flags, mode)

    # -------------------------------------------------------------- poller
    def poller_path(self, repository, _shown=True):
        # The readable part is made from the masked URL: no credentials in
        # file names (redact.py); the digest, of the real one, tells apart
        # two URLs that differ only in them.
        shown = redact.url(repository) if _shown else repository
        key = re.sub(r"[^A-Za-z0-9._-]+", "_", shown.strip("/"))[-48:]
        digest = hashlib.sha256(repository.encode("utf-8")).hexdigest()[:12]
        return self.path("poller", "%s-%s.json" % (key.strip("._") or "repo", digest))

    def mirror_path(self, repository, suffix=".git"):
        """The bare mirror of REPOSITORY (poller/KEY.git, beside its record;
        poller/KEY.hg for Mercurial, poller/KEY.svn for svn's configuration)."""
        return self.poller_path(repository)[:-len(".json")] + suffix

    def poller_records(self):
        """[(path, record, or the RecordError that reading it raised)] of
        every poller record, by file name (status and fsck)."""
        out = []
        for n in self._names("poller", ".json"):
            path = self.path("poller", n)
            try:
                out.append((path, records.read(path, "poller")))
            except records.RecordError as e:
                out.append((path, e))
            except OSError:
                continue
        return out

    def _names(self, d, suffix):
        try:
            return sorted(n for n in os.listdir(self.path(d)) if n.endswith(suffix) and not n.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []

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

    def schedulers(self):
        """Builders with a scheduler record."""
        return [n[:-5] for n in self._names("scheduler", ".json")]

    def read_scheduler(self, builder):
        try:
            return records.read(self.scheduler_path(builder), "scheduler")
        except FileNotFoundError:
            return None

    def write_scheduler(self, builder, rec, durable=True):
        records.write(self.scheduler_path(builder), "scheduler", rec, durable=durable)

    def write_schedulers(self, recs):
        """Replace the BUILDER.json files of RECS, {builder: fields},
        durably and for the cost of one directory fsync: each written
        to a temporary name and fsync'd, each renamed into place (its
        commit point: a reader sees the old record or the new one), then
        scheduler/ fsync'd once for all the renames."""
        done = []
        try:
            for b, rec in recs.items():
                path = self.scheduler_path(b)
                tmp = fsutil.tmp_name(path)
                fsutil.write_new(tmp, records.encode("scheduler", rec))
                done.append((tmp, path))
            for tmp, path in done:
                os.rename(tmp, path)     # commit point of this builder's file
        except BaseException:
            for tmp, _path in done:
                fsutil._unlink_quietly(tmp)
            raise
        if done:
            fsutil.fsync_dir_after_commit(self.path("scheduler"))

    def mark_path(self):
        """The scheduler's mark (consumed.py): up to when the requests'
        consumption is in the BUILDER.json files, durably."""
        return self.path("scheduler", consumed.MARK)

    def read_mark(self):
        """The time (ns, as in a request's id) of the mark, or None if
        there is none.  Raises records.RecordError if it is unreadable."""
        try:
            rec = records.read(self.mark_path(), "consumed-mark")
        except FileNotFoundError:
            return None
        t = rec.get("through")
        if not isinstance(t, int) or isinstance(t, bool) or t < 0:
            raise records.RecordError(self.mark_path(), "through is not a time in nanoseconds")
        return t

    def write_mark(self, through):
        """Set the mark to THROUGH (ns), durably (written whole, fsync'd,
        renamed into place, the directory fsync'd)."""
        records.write(self.mark_path(), "consumed-mark", {"through": through})

    def journal_path(self):
        """The scheduler's journal (consumed.py): lines not yet folded
        into the BUILDER.json files."""
        return self.path("scheduler", consumed.NAME)

    def append_journal(self, data):
        """Append the journal lines DATA (bytes) in one write(2), the
        header first if the journal is new.  Not fsync'd (consumed.py)."""
        fd = os.open(self.journal_path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        try:
            if os.fstat(fd).st_size == 0:
                data = consumed.head() + data
            progress.write_all(fd, data)
        finally:
            os.close(fd)

    def read_journal(self):
        """[(builders, ids, revisions)] of the journal's whole lines
        (consumed.replay); [] if there is none or it is no regular file."""
        try:
            fd = os.open(self.journal_path(), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return []
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return []
            return list(consumed.replay(f))

    def remove_journal(self):
        """Drop the journal once its lines are in the builders' files."""
        try:
            os.unlink(self.journal_path())
        except FileNotFoundError:
            pass

    # -------------------------------------------------------------- timers
    def timer_path(self, builder):
        return self.path("timers", builder + ".json")

    def read_timer(self, builder):
        """The "timer" record of BUILDER (periodic.py), or None."""
        try:
            return records.read(self.timer_path(builder), "timer")
        except FileNotFoundError:
            return None

    def write_timer(self, builder, fields):
        """Replace BUILDER's timer record: written whole and renamed into
        place (fsutil.write_atomic; the rename is the commit point), so a
        crash leaves the old record or the new one, never a torn one."""
        records.write(self.timer_path(builder), "timer", fields)

    # ------------------------------------------------------------- webhook
    def deliveries_path(self):
        """buildunits-webhook's record of the deliveries it took (webhook.py)."""
        return self.path("webhook", "deliveries.jsonl")

    # ------------------------------------------------------------ notifier
    def notifier_path(self, name="cursor"):
        """STATE/notifier/NAME.json: the cursor, or BUILDER@NUMBER's mark."""
        return self.path("notifier", name + ".json")

    def read_undelivered(self, builder, number):
        """The "undelivered" record of B #N (messages given up on), or None."""
        try:
            return records.read(self.notifier_path("%s@%d" % (builder, number)), "undelivered")
        except (FileNotFoundError, records.RecordError):
            return None

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
        return [n[:-5] for n in self._names("workers", ".json")]
