"""The spool: the durable hand-over between the daemons.

This module alone knows the spool's layout and protocol.  The layout
(default /var/spool/buildunits, one filesystem) is the table LAYOUT below:
each directory, what lives there, what is swept or pruned from it; ensure(),
sweep(), prune(), `buildunits fsck` and units/tmpfiles.d follow it.

Hand-over (qmail, Maildir, Postfix): the writer creates tmp/ID with
O_EXCL, writes the whole record, fsyncs and closes it, renames it to new/ID
and fsyncs new/.  IDs are made in one place (new_id) and sort by time.

A request's id names its builder (TIME.PID.SEQ.RANDOMxTAG, TAG the
builder's name with its '.', '_', '-' and 'Z' escaped: builder_of()), so
a runner knows from the file name alone, from a listing or an inotify
event, whether a request is one it can run, and opens only those
(queueindex.py keeps them per builder in its memory).  The name stays
within the grammar the previous release reads (three dots, letters and
digits), which reads the record and ignores the tag: after a downgrade it
builds these requests as its own.  A request without a tag (queued by a
previous release, or put back by hand) is read once to learn its
builder.  A tag that does not match the record's builder is a broken
request (misnamed()).

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
    message  M1  +outbox/tmp/ID                  being written (by the notifier)
             M2  +outbox/new/ID                  COMMITTED: to be sent, not before its mtime
             M2 -> M2                            deferred: rewritten (tmp/ID renamed over new/ID:
                                                 the old or the new record, never neither), then
                                                 its mtime set to the next attempt (os.utime)
             M3  -outbox/new/ID                  sent (the destination accepted it) or given up
                                                 (the build's mark is committed first)

A crash in C1 or R1 leaves a file in tmp/ that nobody reads (in K1, a
hidden file in cancel/); it is swept after fsutil.TMP_SWEEP_AGE_SEC.  A
cancelled request is kept CANCELLED_KEEP_SEC for whoever asks what became
of it, then pruned (the scheduler's sweep does both).  Every other crash leaves a record in a
committed state, which the consumer's startup rescan picks up.  A record
that cannot be read (torn, not JSON, wrong format) is moved to corrupt/
with the reason and never deleted.

Hints carry no data: a lost hint costs latency (htmlgen rescans), never
history; they are written without fsync.
"""

import collections
import os
import re
import secrets
import time

from . import fsutil, records
from .config import NAME_RE
from .state import parse_number

QUEUES = ("changes", "requests", "outbox")
QUEUE_FORMATS = {"changes": ("change", "force"), "requests": ("request",), "outbox": ("message",)}

# How long a request cancelled while queued stays in requests/cancelled/
# (for `ls` and whoever asks what became of it) before the scheduler's
# sweep prunes it.  Nothing reads it after the cancel, so unlike
# fsutil.TMP_SWEEP_AGE_SEC it pairs with no writer's limit.
CANCELLED_KEEP_SEC = 7 * 86400
HINT_TAKEN = ".taken-"    # hints/.taken-B@N: a hint a pass of htmlgen took, dropped once it is committed

ALL, HIDDEN = "all", "hidden"   # which old files a sweep removes: any, or hidden temp names


# A row of LAYOUT: a directory, what lives there, which temporary files
# sweep() removes from it (ALL, HIDDEN or None) once older than
# fsutil.TMP_SWEEP_AGE_SEC, the age past which prune() removes any entry
# (KEEP), and its mode and group in units/tmpfiles.d.
Dir = collections.namedtuple("Dir", "path holds sweep keep mode group",
                             defaults=(None, None, 0o755, "buildunits"))


# The one table of the layout (the docstring's list, as data).  The
# inboxes are group buildunits-admin, setgid, so its members may hand in
# changes, forced builds and cancellations (docs/design.md).
LAYOUT = (
    Dir("changes", "the scheduler's queue"),
    Dir("changes/tmp", "ID: a change or force record being written", ALL, mode=0o2770, group="buildunits-admin"),
    Dir("changes/new", "ID: queued for the scheduler", mode=0o2770, group="buildunits-admin"),
    Dir("requests", "the runners' queue"),
    Dir("requests/tmp", "ID: a build request being written", ALL, mode=0o750),
    Dir("requests/new", "ID: queued for any runner whose name the builder accepts"),
    Dir("requests/active", "WORKER/ID: claimed by runner WORKER"),
    Dir("requests/cancelled", "ID: cancelled while queued, before any claim", keep=CANCELLED_KEEP_SEC),
    Dir("cancel", "BUILDER@NUMBER: cancel this running build", HIDDEN, mode=0o2770, group="buildunits-admin"),
    Dir("hints", "BUILDER@NUMBER: this build changed (for htmlgen); .taken-BUILDER@NUMBER: taken by a pass of "
                 "htmlgen not yet committed"),
    Dir("outbox", "the notifier's queue of messages (mail, webhook, forge status, ExecNotify=)"),
    Dir("outbox/tmp", "ID: a message being written, or rewritten to defer it", ALL, mode=0o750),
    Dir("outbox/new", "ID: to be sent, not before the file's mtime (Postfix's deferred queue)", mode=0o750),
    Dir("corrupt", "QUEUE.ID and QUEUE.ID.reason: unreadable records, kept", HIDDEN, mode=0o750),
)

_id_counter = 0


def new_id(builder=None, priority=None):
    """A unique record id that sorts by creation time: TIME.PID.SEQ.RANDOM,
    and xTAG after RANDOM when it is a request for BUILDER (see tag()),
    followed by ZpN or ZnN when the request has a PRIORITY of its own (N,
    or -N: a forced build's; priority_of())."""
    global _id_counter
    _id_counter += 1
    t = tag(builder) if builder is not None else None
    if t and isinstance(priority, int) and not isinstance(priority, bool) and abs(priority) <= MAX_PRIORITY:
        t += "Z%s%d" % ("p" if priority >= 0 else "n", abs(priority))
    return "%019d.%d.%d.%s%s" % (now_ns(), os.getpid(), _id_counter, secrets.token_hex(3),
                                 "x" + t if t else "")


def _record_id(queue, fields):
    if queue != "requests":
        return new_id()
    return new_id(fields.get("builder"), fields.get("priority"))


def id_time(rid):
    """The time (ns) the valid id RID was made: its first field.

    >>> id_time("0001700000000000000000.12.3.abcdef")
    1700000000000000000
    """
    return int(rid.partition(".")[0])


def now_ns():
    """The clock new_id() reads, in the unit of id_time()."""
    return time.time_ns()


_ID_RE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9A-Za-z]+")
_TAGGED_RE = re.compile(r"[0-9a-f]{6}x([0-9A-Za-z]+)")    # the last field of a request's id
_ESCAPES = {"Z": "ZZ", ".": "Zd", "_": "Zu", "-": "Zh"}
MAX_PRIORITY = 1000
_UNESCAPES = {v[1]: k for k, v in _ESCAPES.items()}


def tag(builder):
    """BUILDER's name as letters and digits, for a request's id; None if
    it is not a builder's name.

    >>> tag("hello"), tag("Zeta.x_y-z"), tag("no/such")
    ('hello', 'ZZetaZdxZuyZhz', None)
    """
    if not isinstance(builder, str) or not NAME_RE.fullmatch(builder):
        return None
    return "".join(_ESCAPES.get(c, c) for c in builder)


def builder_of(rid):
    """The builder a request's id names, or None: an id without a tag
    (queued by an earlier release) or with one that is not a builder's
    name; the record then says.

    >>> builder_of(new_id("Zeta.x_y-z")), builder_of("1.2.3.abcdef"), builder_of("1.2.3.abcdefxZq")
    ('Zeta.x_y-z', None, None)
    """
    m = _TAGGED_RE.fullmatch(rid.rpartition(".")[2]) if isinstance(rid, str) else None
    if m is None:
        return None
    out, text, i = [], _split_tag(m.group(1))[0], 0
    while i < len(text):
        c = text[i]
        if c == "Z":
            c = _UNESCAPES.get(text[i + 1:i + 2])
            if c is None:
                return None
            i += 1
        out.append(c)
        i += 1
    name = "".join(out)
    return name if NAME_RE.fullmatch(name) else None


def priority_of(rid):
    """The priority a request's id gives it (a forced build's own), or
    None: the builder's Priority= then.

    >>> priority_of(new_id("hello", 5)), priority_of(new_id("hello", -3)), priority_of(new_id("hello"))
    (5, -3, None)
    >>> builder_of(new_id("a-b", -3))
    'a-b'
    """
    m = _TAGGED_RE.fullmatch(rid.rpartition(".")[2]) if isinstance(rid, str) else None
    return _split_tag(m.group(1))[1] if m else None


def _split_tag(text):
    """(the builder's part, the priority or None) of the tag TEXT: the
    priority is a Z that does not begin an escape (ZZ, Zd, Zu, Zh), then p
    or n and 1 to 4 digits, at the end.

    >>> _split_tag("aZZp5"), _split_tag("aZZZp5"), _split_tag("aZn12")
    (('aZZp5', None), ('aZZ', 5), ('a', -12))
    """
    i = 0
    while i < len(text):
        if text[i] == "Z":
            if text[i + 1:i + 2] in ("p", "n") and re.fullmatch(r"[0-9]{1,4}", text[i + 2:]):
                return text[:i], int(text[i + 2:]) * (1 if text[i + 1] == "p" else -1)
            i += 2
        else:
            i += 1
    return text, None


def misnamed(rid, rec):
    """Why the request RID, whose record is REC, is broken by its name: its
    tag names another builder than its record.  None if it does not."""
    named = builder_of(rid)
    if named is not None and isinstance(rec, dict) and rec.get("builder") != named:
        return "file name is for builder %r, the record for %r" % (named, rec.get("builder"))
    return None


class Undelivered(Exception):
    """deliver_many() failed with CAUSE; .delivered: the ids committed before it."""

    def __init__(self, delivered, cause):
        super().__init__("%s (%d of the records were delivered before it)" % (cause, len(delivered)))
        self.delivered = delivered


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
        """Create the layout, every row of LAYOUT (idempotent)."""
        for d in LAYOUT:
            fsutil.makedirs(self.path(d.path))

    def missing(self):
        """The directories of LAYOUT that are missing (for fsck)."""
        return [self.path(d.path) for d in LAYOUT if not os.path.isdir(self.path(d.path))]

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
        rid = _record_id(queue, fields)
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

    def deliver_many(self, queue, fmt, many):
        """Queue the records MANY (a list of fields) with one fsync of
        QUEUE/new/ for them all; return their ids, in order.

        Each record is written to tmp/ and fsync'd (its data is on disk
        before its name can be), then each is renamed into new/ (that
        rename is ITS commit point: a reader sees it whole or not at all),
        then new/ is fsync'd once, which makes every rename survive a power
        loss.  A crash while writing leaves files in tmp/, swept later; a
        crash between two renames leaves the first ones queued (each a
        whole record) and the others in tmp/: the caller must remember
        what it delivered the way it does for deliver() (the scheduler
        counts the changes of queued requests as consumed when it starts).
        A failure raises Undelivered, which names the ids committed
        before it."""
        if fmt not in QUEUE_FORMATS[queue]:
            raise ValueError("%s records do not go to %s/" % (fmt, queue))
        rids, done = [], []
        try:
            for fields in many:
                rid = _record_id(queue, fields)
                fields = dict(fields, id=rid)
                fields.setdefault("queued", time.time())
                fsutil.write_new(self.path(queue, "tmp", rid), records.encode(fmt, fields))
                rids.append(rid)
            for rid in rids:
                os.rename(self.path(queue, "tmp", rid), self.path(queue, "new", rid))  # commit point
                done.append(rid)
        except BaseException as e:
            for rid in rids[len(done):]:
                fsutil._unlink_quietly(self.path(queue, "tmp", rid))
            if done:
                fsutil.fsync_dir_after_commit(self.path(queue, "new"))
            if isinstance(e, Exception):
                raise Undelivered(done, e) from e
            raise
        if done:
            fsutil.fsync_dir_after_commit(self.path(queue, "new"))
        return done

    def due(self, queue, now=None):
        """[(id, not before)] of QUEUE/new, oldest first: each entry's mtime,
        the time before which it is not to be tried again (defer()).
        Stray names go to corrupt/."""
        out = []
        for rid in self.pending(queue):
            try:
                st = os.stat(self.path(queue, "new", rid), follow_symlinks=False)
            except FileNotFoundError:
                continue
            out.append((rid, st.st_mtime))
        return out

    def defer(self, queue, rid, fmt, fields, not_before):
        """Rewrite the queued record RID with FIELDS and hold it back until
        NOT_BEFORE (its mtime), as Postfix's deferred queue does.

        The new record is written to tmp/RID, fsync'd, and renamed over
        new/RID: a crash leaves the old record or the new one, whole (the
        rename is the commit point); then its mtime is set.  A crash before
        os.utime() leaves it due now: tried once more at once, never lost.
        False if RID is no longer queued (nothing is written then)."""
        new = self.path(queue, "new", rid)
        if not os.path.lexists(new):
            return False
        fields = dict(fields, id=rid)
        tmp = self.path(queue, "tmp", rid)
        fsutil._unlink_quietly(tmp)      # a leftover of a crash here, never read
        fsutil.write_new(tmp, records.encode(fmt, fields))
        try:
            os.rename(tmp, new)          # commit point
        except BaseException:
            fsutil._unlink_quietly(tmp)
            raise
        os.utime(new, (not_before, not_before), follow_symlinks=False)
        fsutil.fsync_dir_after_commit(self.path(queue, "new"))
        return True

    def hold(self, queue, rid, not_before):
        """Hold the queued RID back until NOT_BEFORE without rewriting it
        (its destination is down: it waits as long, untried)."""
        try:
            os.utime(self.path(queue, "new", rid), (not_before, not_before), follow_symlinks=False)
        except FileNotFoundError:
            pass

    def pending(self, queue):
        """Ids queued in QUEUE/new, oldest first.  Stray names go to corrupt/."""
        out = []
        for n in self.entries(queue):
            if valid_id(n):
                out.append(n)
            else:
                self.reject(queue, n, "file name is not a spool id")
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
        except (records.RecordError, OSError) as e:
            self.corrupt(p, queue, getattr(e, "reason", None) or "cannot read: %s" % e.strerror)
            return None

    def remove(self, queue, rid):
        """Drop a consumed record (the consumer has committed it elsewhere)."""
        try:
            os.unlink(self.path(queue, "new", rid))
        except FileNotFoundError:
            return
        fsutil.fsync_dir_after_commit(self.path(queue, "new"))

    def _locate(self, queue, name, worker=None):
        """(path, formats) of the entry NAME of QUEUE ("changes", "requests"
        or "cancel"): in QUEUE/new, or claimed by WORKER."""
        if queue == "cancel":
            return self.path("cancel", name), ("cancel",)
        return self.path(queue, "new" if worker is None else os.path.join("active", worker), name), \
            QUEUE_FORMATS[queue]

    def where(self, queue, name, worker=None):
        """The path of the entry NAME of QUEUE (see _locate), for messages."""
        return self._locate(queue, name, worker)[0]

    def peek(self, queue, rid, worker=None):
        """The record RID of QUEUE (see _locate), or None if it is gone or
        unreadable; read-only (status): nothing is moved."""
        try:
            return records.read(*self._locate(queue, rid, worker))
        except (OSError, records.RecordError):
            return None

    def problem(self, queue, name, worker=None):
        """What is wrong with the entry NAME of QUEUE (see _locate): the reason
        read() would move it to corrupt/ with, or None if it is a good record
        or gone.  Read-only (fsck)."""
        if not (valid_id(name) if queue != "cancel" else cancel_target(name)):
            return "file name is not a spool id" if queue != "cancel" else "file name is not BUILDER@NUMBER"
        try:
            rec = records.read(*self._locate(queue, name, worker))
        except FileNotFoundError:
            return None
        except records.RecordError as e:
            return e.reason
        except OSError as e:
            return "cannot read: %s" % e.strerror
        return misnamed(name, rec) if queue == "requests" else None

    def reject(self, queue, name, reason, worker=None):
        """Move the entry NAME of QUEUE (see _locate) to corrupt/ with REASON."""
        return self.corrupt(self._locate(queue, name, worker)[0], queue, reason)

    def entry_name(self, queue, path):
        """NAME if PATH (from an inotify event) is QUEUE/new/NAME, else None."""
        d, _slash, name = path.rpartition(os.sep)
        return name if queue in QUEUES and d == self.path(queue, "new") and valid_id(name) else None

    def entries(self, queue, worker=None):
        """Every name but hidden ones in QUEUE (see _locate), ids or not,
        sorted (for fsck; pending() moves the strays)."""
        return _listdir(os.path.dirname(self._locate(queue, "x", worker)[0]))

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
        return self.read_claimed(worker, rid)

    def claimed(self, worker):
        """Ids claimed by WORKER, oldest first."""
        try:
            return sorted(n for n in os.listdir(self.path("requests", "active", worker)) if valid_id(n))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def queued(self, queue, rid):
        """Whether RID (an id) is in QUEUE/new/ now."""
        return valid_id(rid) and os.path.exists(self.path(queue, "new", rid))

    def was_cancelled(self, rid):
        """Whether the request RID was cancelled while queued."""
        return valid_id(rid) and os.path.exists(self.path("requests", "cancelled", rid))

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

    def claimants(self):
        """Names of the directories in requests/active/ (fsck)."""
        return _listdir(self.path("requests", "active"))

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
        try:
            os.utime(self.path("requests", "cancelled", rid))   # CANCELLED_KEEP_SEC counts from now
        except OSError:
            pass
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
        for n in self.entries("cancel"):
            target = cancel_target(n)
            rec = self.read_cancel(*target) if target else None
            if rec is not None:
                out[target] = rec
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

    def sync_hints(self):
        """Make the hints written so far durable (one fsync of hints/): for
        the janitor, whose hints are the site's only word of a removal."""
        try:
            fsutil.fsync_dir(self.path("hints"))
        except OSError:
            pass

    def claim_hints(self):
        """The hints waiting, taken for a pass that may not finish: each is
        renamed to hints/.taken-NAME, and dropped (drop_hints) only once
        the pass that acts on them is committed.  The hints a pass that
        did not finish (a crash) had taken are taken again.  A hint made
        again meanwhile (the janitor's, after its rename, of a build a
        runner had hinted) is a new file, not lost with the one taken.
        Returns ([(builder, number)], the names to drop)."""
        out, taken = set(), []
        try:
            names = os.listdir(self.path("hints"))
        except FileNotFoundError:
            return [], taken
        for n in names:
            if n.startswith(HINT_TAKEN):
                t, n = n, n[len(HINT_TAKEN):]
            else:
                t = HINT_TAKEN + n
                try:
                    os.rename(self.path("hints", n), self.path("hints", t))
                except FileNotFoundError:
                    continue
            taken.append(t)
            b, at, num = n.rpartition("@")
            if at and parse_number(num) is not None:
                out.add((b, parse_number(num)))
        return sorted(out), taken

    def drop_hints(self, taken):
        """Remove the hints TAKEN (claim_hints) once their pass is committed."""
        for t in taken:
            try:
                os.unlink(self.path("hints", t))
            except FileNotFoundError:
                pass

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
        dest = fsutil.move_aside(path, self.path("corrupt"), queue, reason)
        if dest is not None and self.on_corrupt:
            self.on_corrupt(path, dest, reason)
        return dest

    on_corrupt = None  # callable(path, dest, reason), set by daemons to log

    def corrupted(self):
        """[(name, reason)] in corrupt/."""
        return fsutil.read_aside(self.path("corrupt"))

    # --------------------------------------------------------------- sweep
    def sweep(self, dry_run=False, now=None):
        """Remove the temporary files abandoned by crashed writers that
        LAYOUT says are swept (older than fsutil.TMP_SWEEP_AGE_SEC); return
        their paths."""
        out = []
        for d in LAYOUT:
            if d.sweep:
                out += fsutil.sweep_stale_tmp(self.path(d.path), now=now, dry_run=dry_run, everything=d.sweep == ALL)
        return out

    def prune(self, dry_run=False, now=None):
        """Remove the entries older than their row's KEEP (cancelled requests
        after CANCELLED_KEEP_SEC, counted from the cancel); return their paths."""
        out = []
        for d in LAYOUT:
            if d.keep:
                out += fsutil.sweep_stale_tmp(self.path(d.path), now=now, age=d.keep, dry_run=dry_run,
                                              everything=True)
        return out


def cancel_target(name):
    """(builder, number) of the cancel/ entry NAME ("B@N"), or None."""
    b, at, num = name.rpartition("@")
    number = parse_number(num)
    return (b, number) if at and b and number is not None else None


def _listdir(d):
    try:
        return sorted(n for n in os.listdir(d) if not n.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []
