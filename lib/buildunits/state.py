"""State: build history and daemon state, as plain versioned files.

This module alone knows the state directory's layout (default
/var/lib/buildunits):

    builds/BUILDER/NUMBER/build.json   the build record (format "build")
    builds/BUILDER/NUMBER/NN-STEP.log  each step's output, streamed as produced
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
"""

import hashlib
import os
import re

from . import fsutil, records


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
        """The build record, or None if the number holds none (a gap)."""
        try:
            return records.read(self.build_path(builder, number), "build")
        except FileNotFoundError:
            return None

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
