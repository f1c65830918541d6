"""The spool: the durable hand-over between the daemons.

This module alone knows the spool's layout and protocol.  Layout (default
/var/spool/buildunits, one filesystem):

    changes/tmp/ID            a change or force record being written
    changes/new/ID            queued for the scheduler
    requests/tmp/ID           a build request being written
    requests/new/ID           queued for any runner whose name the builder accepts
    requests/active/WORKER/ID claimed by runner WORKER
    requests/cancelled/ID     a queued request cancelled before any runner claimed it
    cancel/BUILDER@NUMBER     "cancel this running build" (format "cancel"), for its runner
    hints/BUILDER@NUMBER      "this build changed": wake-up hints for htmlgen
    corrupt/QUEUE.ID          an unreadable record, kept for a human
    corrupt/QUEUE.ID.reason   why it was moved there

Hand-over (qmail, Maildir, Postfix): the writer creates tmp/ID with
O_EXCL, writes the whole record, fsyncs and closes it, renames it to new/ID
and fsyncs new/.  IDs are made in one place (new_id) and sort by time.

The states of a record, as the set of files that exist (qmail's
INTERNALS notation; "+" exists, "-" does not):

    change   C1  +changes/tmp/ID                 being written; does not exist yet
             C2  +changes/new/ID                 COMMITTED (the rename); never lost from here
             C3  -changes/new/ID                 consumed: the scheduler committed it to its
                                                 own state file (scheduler.py) first
    request  R1  +requests/tmp/ID                being written
             R2  +requests/new/ID                COMMITTED: queued
             R3  +requests/active/W/ID           claimed by W (rename; ENOENT: another won)
             R4  -requests/active/W/ID           done: the build record is final first
             R3 -> R2                            handed back by W's next start (runner.py)
             R2 -> +requests/cancelled/ID        cancelled while queued (a rename: a runner's
                                                 claim and the cancel cannot both win)
    cancel   K1  +cancel/.B@N.tmp-*              being written
             K2  +cancel/B@N                     COMMITTED: the runner of B #N cancels it
             K3  -cancel/B@N                     removed once B #N is final (by any runner)

A crash in C1 or R1 leaves a file in tmp/ that nobody reads; it is swept
after fsutil.TMP_SWEEP_AGE_SEC.  Every other crash leaves a record in a
committed state, which the consumer's startup rescan picks up.  A record
that cannot be read (torn, not JSON, wrong format) is moved to corrupt/
with the reason and never deleted.

Hints carry no data: a lost hint costs latency (htmlgen rescans), never
history; they are written without fsync.
"""

import hashlib
import os
import re
import secrets
import time

from . import fsutil, records
from .state import parse_number

QUEUES = ("changes", "requests")
QUEUE_FORMATS = {"changes": ("change", "force"), "requests": ("request",)}

_id_counter = 0


def new_id():
    """A unique record id that sorts by creation time: TIME.PID.SEQ.RANDOM."""
    global _id_counter
    _id_counter += 1
    return "%019d.%d.%d.%s" % (time.time_ns(), os.getpid(), _id_counter, secrets.token_hex(3))


_ID_RE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9A-Za-z]+")


def valid_id(name):
    """True if NAME is the form new_id() makes: whole (fullmatch: not "ID\n"),
    ASCII digits (not "²"), no "/" and no leading dot."""
    return isinstance(name, str) and _ID_RE.fullmatch(name) is not None


class Spool:
    def __init__(self, root):
        self.root = root

    # -------------------------------------------------------------- layout
    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def ensure(self):
        """Create the layout (idempotent)."""
        for q in QUEUES:
            fsutil.makedirs(self.path(q, "tmp"))
            fsutil.makedirs(self.path(q, "new"))
        fsutil.makedirs(self.path("requests", "active"))
        fsutil.makedirs(self.path("requests", "cancelled"))
        fsutil.makedirs(self.path("cancel"))
        fsutil.makedirs(self.path("hints"))
        fsutil.makedirs(self.path("corrupt"))

    def watch_dirs(self, *what):
        """Directories whose new entries mean work: 'changes', 'requests', 'cancel', 'hints'."""
        out = []
        for w in what:
            out.append(self.path(w) if w in ("hints", "cancel") else self.path(w, "new"))
        return out

    # ------------------------------------------------------------ delivery
    def deliver(self, queue, fmt, fields):
        """Queue a record; return its id once it is committed."""
        if fmt not in QUEUE_FORMATS[queue]:
            raise ValueError("%s records do not go to %s/" % (fmt, queue))
        rid = new_id()
        fields = dict(fields)
        fields["id"] = rid
        fields.setdefault("queued", time.time())
        tmp = self.path(queue, "tmp", rid)
        fsutil.write_new(tmp, records.encode(fmt, fields))
        try:
            os.rename(tmp, self.path(queue, "new", rid))  # commit point
        except BaseException:
            fsutil._unlink_quietly(tmp)
            raise
        fsutil.fsync_dir_after_commit(self.path(queue, "new"))
        return rid

    def pending(self, queue):
        """Ids queued in QUEUE/new, oldest first.  Stray names go to corrupt/."""
        d = self.path(queue, "new")
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            if valid_id(n):
                out.append(n)
            elif not n.startswith("."):
                self.corrupt(os.path.join(d, n), queue, "file name is not a spool id")
        out.sort()
        return out

    def read(self, queue, rid, where="new"):
        """The record QUEUE/WHERE/RID, or None if it is gone (or was corrupt:
        it is then moved to corrupt/ with the reason, and the reason logged
        through on_corrupt)."""
        p = self.path(queue, where, rid)
        try:
            return records.read(p, QUEUE_FORMATS[queue])
        except FileNotFoundError:
            return None
        except records.RecordError as e:
            self.corrupt(p, queue, e.reason)
            return None
        except OSError as e:
            self.corrupt(p, queue, "cannot read: %s" % e.strerror)
            return None

    def remove(self, queue, rid):
        """Drop a consumed record (the consumer has committed it elsewhere)."""
        try:
            os.unlink(self.path(queue, "new", rid))
        except FileNotFoundError:
            return
        fsutil.fsync_dir_after_commit(self.path(queue, "new"))

    # -------------------------------------------------------------- claims
    def claim(self, rid, worker):
        """Claim request RID for WORKER; the record, or None if another won."""
        adir = self.path("requests", "active", worker)
        if not os.path.isdir(adir):
            fsutil.makedirs(adir)
        try:
            os.rename(self.path("requests", "new", rid), os.path.join(adir, rid))  # claim point
        except FileNotFoundError:
            return None
        fsutil.fsync_dir_after_commit(adir)
        return self.read("requests", rid, where=os.path.join("active", worker))

    def claimed(self, worker):
        """Ids claimed by WORKER, oldest first."""
        try:
            return sorted(n for n in os.listdir(self.path("requests", "active", worker)) if valid_id(n))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def all_claimed(self):
        """{worker: [ids]} for every claimant."""
        out = {}
        try:
            workers = os.listdir(self.path("requests", "active"))
        except FileNotFoundError:
            return out
        for w in sorted(workers):
            if w.startswith("."):
                continue   # not a worker's directory (workers are named like builders)
            ids = self.claimed(w)
            if ids:
                out[w] = ids
        return out

    def read_claimed(self, worker, rid):
        return self.read("requests", rid, where=os.path.join("active", worker))

    def unclaim(self, worker, rid):
        """Hand a claimed request back to the queue (R3 -> R2)."""
        try:
            os.rename(self.path("requests", "active", worker, rid), self.path("requests", "new", rid))
        except FileNotFoundError:
            return False
        fsutil.fsync_dir_after_commit(self.path("requests", "new"))
        return True

    def finish(self, worker, rid):
        """Drop a claimed request whose build record is final (R3 -> R4)."""
        adir = self.path("requests", "active", worker)
        try:
            os.unlink(os.path.join(adir, rid))
        except FileNotFoundError:
            return
        fsutil.fsync_dir_after_commit(adir)

    # ---------------------------------------------------------- cancelling
    def cancel_queued(self, rid):
        """Cancel queued request RID (R2 -> cancelled); False if it is not
        queued (claimed already, or unknown)."""
        try:
            os.rename(self.path("requests", "new", rid), self.path("requests", "cancelled", rid))
        except FileNotFoundError:
            return False
        fsutil.fsync_dir_after_commit(self.path("requests", "cancelled"))
        return True

    def request_cancel(self, builder, number, user, reason=""):
        """Ask the runner of BUILDER #NUMBER to cancel it (K2)."""
        fsutil.makedirs(self.path("cancel"))
        records.write(self.path("cancel", "%s@%d" % (builder, number)), "cancel",
                      {"builder": builder, "number": number, "user": user, "reason": reason,
                       "requested": time.time()})

    def cancel_requests(self):
        """{(builder, number): cancel record} of the cancellations pending."""
        out = {}
        try:
            names = os.listdir(self.path("cancel"))
        except FileNotFoundError:
            return out
        for n in names:
            b, at, num = n.rpartition("@")
            number = parse_number(num)
            if n.startswith(".") or not at or number is None:
                continue
            rec = self.read_cancel(b, number)
            if rec is not None:
                out[(b, number)] = rec
        return out

    def read_cancel(self, builder, number):
        p = self.path("cancel", "%s@%d" % (builder, number))
        try:
            return records.read(p, "cancel")
        except FileNotFoundError:
            return None
        except (records.RecordError, OSError) as e:
            self.corrupt(p, "cancel", getattr(e, "reason", str(e)))
            return None

    def clear_cancel(self, builder, number):
        try:
            os.unlink(self.path("cancel", "%s@%d" % (builder, number)))
        except FileNotFoundError:
            return
        fsutil.fsync_dir_after_commit(self.path("cancel"))

    def cancelled(self):
        """Ids of requests cancelled while queued, oldest first."""
        try:
            return sorted(n for n in os.listdir(self.path("requests", "cancelled")) if valid_id(n))
        except FileNotFoundError:
            return []

    # --------------------------------------------------------------- hints
    def hint(self, builder, number):
        """Tell htmlgen that build BUILDER #NUMBER changed (best effort)."""
        try:
            fd = os.open(self.path("hints", "%s@%d" % (builder, number)),
                         os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.close(fd)
        except OSError:
            pass  # a hint; the rescan timer is the safety net

    def take_hints(self):
        """The (builder, number) hints waiting, removed as they are taken."""
        out = []
        try:
            names = os.listdir(self.path("hints"))
        except FileNotFoundError:
            return out
        for n in names:
            b, at, num = n.rpartition("@")
            try:
                os.unlink(self.path("hints", n))
            except FileNotFoundError:
                continue
            if at and parse_number(num) is not None:
                out.append((b, parse_number(num)))
        return out

    # ------------------------------------------------------------- corrupt
    def corrupt(self, path, queue, reason):
        """Move the broken file PATH to corrupt/ with REASON beside it."""
        base = os.path.basename(path)
        # A name that is not UTF-8, or too long to carry a prefix and a
        # suffix, is shortened to something printable plus a digest.
        printable = os.fsencode(base).decode("utf-8", "replace")
        if printable != base or len(os.fsencode(base)) > 160:
            digest = hashlib.sha256(os.fsencode(base)).hexdigest()[:12]
            base = "%s-%s" % (re.sub(r"[^A-Za-z0-9._-]", "_", printable)[:100], digest)
        name = "%s.%s" % (queue, base)
        dest = self.path("corrupt", name)
        if os.path.lexists(dest):
            dest = self.path("corrupt", "%s.%s" % (name, secrets.token_hex(3)))
        fsutil.makedirs(self.path("corrupt"))
        # The reason first: a crash between the two leaves a reason for a
        # file still in the queue, and the next read moves it again.
        shown = os.fsencode(path).decode("utf-8", "replace")
        fsutil.write_atomic(dest + ".reason",
                            "%s\nfrom: %s\nwhen: %s\n" % (reason, shown, time.strftime("%Y-%m-%d %H:%M:%S %z")))
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            fsutil._unlink_quietly(dest + ".reason")
            return None
        fsutil.fsync_dir_after_commit(self.path("corrupt"))
        if self.on_corrupt:
            self.on_corrupt(path, dest, reason)
        return dest

    on_corrupt = None  # callable(path, dest, reason), set by daemons to log

    def corrupted(self):
        """[(name, reason)] in corrupt/."""
        out = []
        try:
            names = sorted(os.listdir(self.path("corrupt")))
        except FileNotFoundError:
            return out
        for n in names:
            if n.endswith(".reason") or n.startswith("."):
                continue
            try:
                with open(self.path("corrupt", n + ".reason"), encoding="utf-8", errors="replace") as f:
                    reason = f.readline().strip()
            except FileNotFoundError:
                reason = "(no reason recorded)"
            out.append((n, reason))
        return out

    # --------------------------------------------------------------- sweep
    def sweep(self, dry_run=False, now=None):
        """Remove temporary files abandoned by crashed writers; return them."""
        out = []
        for q in QUEUES:
            out += fsutil.sweep_stale_tmp(self.path(q, "tmp"), now=now, dry_run=dry_run)
        out += fsutil.sweep_stale_tmp(self.path("corrupt"), now=now, dry_run=dry_run)
        return out
