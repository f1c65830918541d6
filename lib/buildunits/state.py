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

import hashlib
import json
import os
import re
import stat

from . import fsutil, records

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

    def allocate_number(self, builder):
        """Take the next build number of BUILDER for good; see the docstring."""
        bdir = self.builder_dir(builder)
        fsutil.makedirs(bdir)
        hint_path = os.path.join(bdir, "next.json")
        try:
            n = records.read(hint_path, "counter").get("next")
            if not isinstance(n, int) or n < 1:
                raise ValueError
        except (OSError, ValueError):
            nums = self.build_numbers(builder)
            n = (nums[-1] + 1) if nums else 1
        while True:
            try:
                os.mkdir(os.path.join(bdir, str(n)))
                break
            except FileExistsError:
                n += 1
        fsutil.fsync_dir(bdir)  # the number is now taken for good
        records.write(hint_path, "counter", {"next": n + 1}, durable=False)
        return n

    def build_numbers(self, builder):
        """All build numbers of BUILDER, ascending (reads the directory)."""
        try:
            names = os.listdir(self.builder_dir(builder))
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit() and not n.startswith("0"))

    def recent_numbers(self, builder, count):
        """The highest COUNT build numbers of BUILDER, ascending, without
        listing its directory (which grows with history): counted down from
        the next-number hint, and up past it (the hint is written after the
        mkdir, so a crash can leave it behind).  Lists the directory only
        when the hint is missing or unreadable."""
        try:
            nxt = records.read(os.path.join(self.builder_dir(builder), "next.json"), "counter").get("next")
            if not isinstance(nxt, int) or isinstance(nxt, bool) or nxt < 1:
                raise ValueError
        except (OSError, ValueError):
            return self.build_numbers(builder)[-count:]
        top = nxt - 1
        while os.path.isdir(self.build_dir(builder, top + 1)):
            top += 1
        # Twice COUNT candidates: room for the gaps a crash can leave.
        found = [n for n in range(top, max(0, top - 2 * count), -1) if os.path.isdir(self.build_dir(builder, n))]
        return sorted(found[:count])

    def builders(self):
        """Names of builders with any history."""
        try:
            return sorted(n for n in os.listdir(self.path("builds")) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def read_build(self, builder, number):
        """The build record, or None if the number holds none (a gap).  A
        running build's record has its progress lines applied (see the
        module's docstring)."""
        try:
            rec = records.read(self.build_path(builder, number), "build")
        except FileNotFoundError:
            return None
        if rec.get("state") == "running":
            self._apply_progress(rec, self.progress_path(builder, number))
        return rec

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

    @staticmethod
    def _apply_progress(rec, path):
        """Apply the lines of the progress file PATH to the running REC.  A
        file that is not one (no header naming the build), and anything from
        a line that does not parse on (a torn end), are ignored."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
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

    # -------------------------------------------------------------- poller
    def poller_path(self, repository):
        key = re.sub(r"[^A-Za-z0-9._-]+", "_", repository.strip("/"))[-48:]
        digest = hashlib.sha256(repository.encode("utf-8")).hexdigest()[:12]
        return self.path("poller", "%s-%s.json" % (key.strip("._") or "repo", digest))

    def read_poller(self, repository):
        """(record or None).  A corrupt one raises RecordError."""
        try:
            return records.read(self.poller_path(repository), "poller")
        except FileNotFoundError:
            return None

    def write_poller(self, repository, refs, extra=None):
        fields = dict(extra or {})
        fields.update({"repository": repository, "refs": refs})
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
