"""buildunits-poller: notice new commits and queue one change record each.

NAME
    buildunits-poller - the change poller

DESCRIPTION
    For every repository named by a builder's Repository=, the poller reads
    the heads of the branches some builder of that repository wants
    (Branches=), every PollIntervalSec= (the shortest of its builders; 0
    means never: changes then come from a hook, see `buildunits
    sendchange`).  For each new commit on a branch it queues one change
    record (revision, branch, author, date, message, files) in the spool,
    oldest first, then emits ChangeQueued.

    The first time the poller sees a repository it records the heads and
    queues nothing (as Buildbot does): pointing a new builder at a long
    history must not start a storm of builds, and "built from now on" is
    the rule people expect.  `buildunits force BUILDER` builds the current
    tip.  A branch that appears later has its tip queued (one change, not
    its whole history); a branch that moves queues every commit reachable
    from the new head and not from the old one (at most MAX_COMMITS, the
    newest).

    A repository is git's, Mercurial's or Subversion's (the builders'
    Type=, vcs.py), and is read by git.py, hg.py or svn.py, whose
    readings have one shape: what follows holds for the three, with hg's
    named branches and svn's trunk and branches/NAME as branches (svn.py).

    Everything in a repository is what whoever can push chose, and is
    parsed so that no content can change the structure (see git.py,
    hg.py, svn.py).  A
    commit that cannot be parsed (no author line, no date) is that
    commit's problem: it is logged, recorded in the state record's
    "skipped" list (shown by `buildunits status`) and left out; the
    commits after it are queued and the new heads saved as usual.  A
    branch whose old head no longer exists (a force-push, then `git gc
    --prune=now`) is treated as a new branch: its new tip is queued, and
    the log says "old head X no longer exists; building the new head only".
    A repository that cannot be polled (git fails, the path is gone) is
    shown, with the reason, in `buildunits status` (the state record's
    "problem") and in the STATUS= line of `systemctl status`, until a poll
    succeeds again; the other repositories are polled as usual.

    Polls run side by side, at most MaxParallelPolls= at a time
    (buildunits.conf [Daemons], default 4), each git command a child
    process the main loop watches, so the daemon goes on answering its
    timers, the watchdog and SIGHUP while git works.  A repository comes
    due at its interval and waits for a free slot, in the order it came
    due; one whose poll is still under way or waiting is not queued twice.
    A poll that has not ended after PollTimeoutSec= (default 5min: a
    remote that never answers) is ended: its git gets SIGTERM, and SIGKILL
    2 seconds later, with whatever it started (its process group); its
    repository shows the problem "git COMMAND: no answer in SPAN" and is
    polled again at its next interval.  A hung remote holds one slot, not
    the others.

    The repositories to poll, with their intervals and branch globs, are
    worked out when the configuration is loaded, and again at each
    reload.  A local repository is read in place; between two polls it
    costs a few stat calls (git.refs_fingerprint: the files git keeps the
    branch heads in, their inodes and times; hg.fingerprint: its
    changelog's), and git (or hg) only when one of them changed.  A rescan ([Daemons] RescanIntervalSec=), a reload and
    the start ask git of every repository.

    Crash safety: the last seen heads (state poller/KEY.json) are written
    only after the change records are committed to the spool, so a crash
    in between re-sends changes on the next poll rather than losing them;
    the scheduler drops re-sent revisions.  A commit pushed while the
    poller is down is found by its first poll after it starts.

FILES
    SPOOL/changes/new/ID      the change records it queues
    STATE/poller/KEY.json     last seen heads per repository; its problem and
                              skipped commits, for `buildunits status`
    STATE/poller/KEY.git      bare mirror of a remote (non-path) repository
    STATE/poller/KEY.hg       mirror of a remote Mercurial repository
    STATE/poller/KEY.svn      svn's configuration directory (--config-dir)

SIGNALS
    SIGHUP re-reads the configuration: repositories no builder names any
    more are no longer polled (a poll of one under way ends as usual),
    new ones are polled at once.  SIGTERM stops at once: the polls under
    way are ended (their git stopped as on a time-out) before they save
    their heads, so the next start queues again what they had queued,
    and the scheduler drops those repeats.
"""

import fnmatch
import re
import time

from gi.repository import GLib

from . import daemon, git, gitjob, hg, log, records, svn
from . import redact
from .config import TAG_PREFIX

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# The readings of each kind of repository (vcs.py), all of git.py's shape.
READERS = {"git": git, "hg": hg, "svn": svn}

MAX_COMMITS = 200   # per branch and poll; older ones are logged as skipped
SKIPPED_KEPT = 20   # unparseable commits remembered per repository (state "skipped")
STATUS_EVERY_MS = 1000   # STATUS= after polls that changed only the counts: at most this often


class Poller(daemon.Daemon):
    role = "Poller"
    program = "buildunits-poller"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._timers = {}        # repository -> daemon.Timer
        self._errors = {}        # repository -> last error text (logged once)
        self._polls = 0
        self._queued = 0
        self._skipped = 0        # unparseable commits left out since start
        self._running = {}       # repository -> its poll under way (gitjob.Job)
        self._waiting = {}       # repositories due, in the order they came due, waiting for a slot
        self._fingerprints = {}  # local repository -> its fingerprint (git.py, hg.py) at its last clean poll
        self._starting = False
        self._status_source = None
        self._shown = None       # what the last STATUS= said, but for the counts of polls

    # Each repository polls on its own timer; a wake (start, rescan,
    # reload) polls everything.
    def repositories(self):
        """{normalized repository: (interval, [branch globs])}, worked out
        when the configuration was loaded (config.polled_repositories)."""
        return self.cfg.polled_repositories()

    def _arm(self):
        for src in self._timers.values():
            src.remove()
        self._timers = {}
        for repo, (interval, _globs) in self.repositories().items():
            if interval:
                self._timers[repo] = daemon.Timer(max(0.1, interval), self._timer, repo)

    def _timer(self, repo):
        if not self.stopping:
            self.request(repo)
        return True

    def startup(self):
        self._arm()

    def on_config(self, old, new):
        self._fingerprints.clear()     # Branches= may have changed what a poll records
        self._arm()

    def work(self):
        # Git is asked of every repository, whatever its fingerprint: a
        # rescan also notices what the fingerprint cannot (a state record
        # moved aside, say).
        self._fingerprints.clear()
        for repo, (interval, _g) in self.repositories().items():
            if interval:
                self.request(repo)

    def shutdown(self):
        # What a poll under way queued is queued again by the next start's
        # poll, since its heads were not saved (the scheduler drops repeats).
        self._waiting.clear()
        for job in list(self._running.values()):
            if job is not None:
                job.cancel()
        self._running.clear()
        return True

    def status_text(self):
        text = "watching %d repositor%s; %d polls, %d changes queued" % (
            len(self._timers), "y" if len(self._timers) == 1 else "ies", self._polls, self._queued)
        if self._running or self._waiting:
            text += "; %d polling, %d waiting" % (len(self._running), len(self._waiting))
        if self._skipped:
            text += "; %d commit%s skipped (cannot be parsed)" % (self._skipped, "" if self._skipped == 1 else "s")
        for repo, why in sorted(self._errors.items()):
            text += "; cannot poll %s: %s" % (redact.url(repo), why)
        # STATUS= is one line, and a git error may quote what a server sent.
        return "".join(ch if ch >= " " and ch != "\x7f" else " " for ch in text)

    # ------------------------------------------------------ poll queue
    def request(self, repo):
        """Poll REPO as soon as a slot is free ([Daemons] MaxParallelPolls=);
        nothing more if its poll is already under way or waiting."""
        if repo in self._running or repo in self._waiting:
            return
        self._waiting[repo] = True
        self._start_due()

    def _start_due(self):
        """Start the waiting polls while slots are free.  A poll that needs
        no git (its fingerprint) ends inside Job(): the loop goes on."""
        if self._starting:
            return
        self._starting = True
        try:
            while self._waiting and len(self._running) < self.cfg.max_parallel_polls and not self.stopping:
                repo = next(iter(self._waiting))
                del self._waiting[repo]
                if repo not in self.repositories():
                    continue            # dropped by a reload while it waited
                self._running[repo] = None
                job = gitjob.Job(self._poll_steps(repo), self.cfg.poll_timeout,
                                 lambda _value, error, repo=repo: self._ended(repo, error))
                if not job.done:
                    self._running[repo] = job
        finally:
            self._starting = False

    def _ended(self, repo, error):
        self._running.pop(repo, None)
        if error is not None:
            # A full disk or an I/O error: say so, keep the timer, and try
            # again at the next tick (nothing was recorded as seen).
            self._problem(repo, "%s: %s" % (type(error).__name__, error))
        self._report()
        self._start_due()

    def _report(self):
        """STATUS= now when a poll changed more than the counts (a problem,
        changes queued), else at most every STATUS_EVERY_MS: with hundreds
        of repositories polls end many times a second."""
        shown = (self._queued, self._skipped, tuple(sorted(self._errors.items())), len(self._timers))
        if shown != self._shown:
            self._shown = shown
            self._report_now()
        elif self._status_source is None:
            self._status_source = GLib.timeout_add(STATUS_EVERY_MS, self._report_now)

    def _report_now(self):
        if self._status_source is not None:
            GLib.source_remove(self._status_source)
            self._status_source = None
        self.notifier.status(self.status_text())
        return False

    # -------------------------------------------------------------- poll
    def poll(self, repo):
        """Poll one repository now, each git command in turn, blocking (the
        daemon's polls are jobs of the main loop: see _start_due)."""
        git.run(self._poll_steps(repo))

    def _poll_steps(self, repo):
        """The poll of REPO, as a reading (git.py): a generator of the git
        commands it needs.  A local repository whose fingerprint is the one
        of its last clean poll has moved nowhere: no git at all."""
        globs = self.repositories().get(repo, (None, []))[1]
        self._polls += 1
        reader = READERS[self.cfg.repository_kind(repo)]
        tags = self.cfg.polled_tags(repo) if reader is git else []
        fingerprint = None
        if reader is git and git.is_local(repo):
            fingerprint = git.refs_fingerprint(repo, bool(tags))
        elif reader is hg and hg.is_local(repo):
            fingerprint = hg.fingerprint(repo)
        if fingerprint is not None and self._fingerprints.get(repo) == fingerprint:
            return
        self._fingerprints.pop(repo, None)
        # Taken before git reads the heads: a push in between changes it
        # again, so the next poll asks git again.
        if (yield from self._poll_heads(repo, globs, reader, tags)) and fingerprint is not None:
            self._fingerprints[repo] = fingerprint

    def _poll_heads(self, repo, globs, reader=git, tags=()):
        """Reading: queue REPO's new commits on the branches GLOBS match,
        and the commits of the tags TAGS match (git: a tag is the branch
        "refs/tags/NAME" of its heads), record its heads; True if the
        poll went through without a problem.  READER is the module
        reading REPO's kind (READERS)."""
        mirror = self.state.mirror_path(repo, reader.MIRROR_SUFFIX)
        try:
            heads = yield from (reader.heads_steps(repo, mirror, tags=True) if tags
                                else reader.heads_steps(repo, mirror))
        except git.GitError as e:
            self._problem(repo, str(e))
            return False
        wanted = {br: sha for br, sha in heads.items() if _wanted(br, globs, tags)}
        try:
            prev = self.state.read_poller(repo)
        except records.RecordError as e:
            self.state.quarantine(e.path, e.reason)     # logged, kept in STATE/corrupt/
            log.error("treating %s as new" % redact.url(repo))
            prev = None
        if prev is None or "polled" not in prev:
            # (A record without "polled" holds only the problem of a
            # repository never polled yet: see _record_problem.)
            self.state.write_poller(repo, wanted, dict({"polled": time.time()}, **({"tags": True} if tags else {})))
            log.info("%s: first poll: recorded %d branch head%s; commits from now on will be built"
                     % (redact.url(repo), len(wanted), "" if len(wanted) == 1 else "s"))
            self._errors.pop(repo, None)
            return True
        old_refs = prev.get("refs") if isinstance(prev.get("refs"), dict) else {}
        moved = {br: sha for br, sha in wanted.items() if old_refs.get(br) != sha}
        marked = False
        if tags and prev.get("tags") is not True:
            # Tags= is new to this repository: its tags are recorded as a
            # first poll records heads, and not built (a storm of old
            # releases otherwise); tags made from now on are.
            first = {br: sha for br, sha in moved.items() if br.startswith(TAG_PREFIX)}
            old_refs = dict(old_refs, **first)
            moved = {br: sha for br, sha in moved.items() if br not in first}
            prev["tags"] = marked = True
            log.info("%s: first poll of its tags: recorded %d tag%s; tags from now on will be built"
                     % (redact.url(repo), len(first), "" if len(first) == 1 else "s"))
        elif not tags and "tags" in prev:
            del prev["tags"]
            marked = True
        if not moved:
            self._clear_problem(repo, prev, {br: sha for br, sha in old_refs.items() if br in heads}, marked)
            return True
        skipped = []
        try:
            src = yield from reader.source_steps(repo, mirror, sorted(moved))
            for br, sha in sorted(moved.items()):
                skipped += yield from self._queue_branch(repo, src, br, old_refs.get(br), sha, reader)
        except git.GitError as e:
            self._problem(repo, str(e))
            return False
        self._save_heads(repo, prev, old_refs, wanted, heads, skipped)
        return True

    def _save_heads(self, repo, prev, old_refs, wanted, heads, skipped):
        # Only now, with every change committed to the spool: a crash
        # before this line re-sends them (the scheduler drops repeats),
        # and logs the skipped commits again.
        refs = dict(old_refs)
        refs.update(wanted)
        for br in list(refs):
            if br not in heads:
                del refs[br]   # deleted branch: forget it
        prev.update({"refs": refs, "polled": time.time()})
        prev.pop("problem", None)
        if skipped:
            kept = prev.get("skipped") if isinstance(prev.get("skipped"), list) else []
            prev["skipped"] = (kept + skipped)[-SKIPPED_KEPT:]
            self._skipped += len(skipped)
        self.state.write_poller(repo, refs, prev)
        self._errors.pop(repo, None)

    def _queue_branch(self, repo, src, br, old, sha, reader=git):
        """Reading: queue the commits of branch BR from OLD (None: a new
        branch) to SHA; return the commits skipped because they cannot be
        parsed."""
        if br.startswith(TAG_PREFIX):
            old = None      # a new or moved tag: its commit, not the history between
        if old is not None and not (yield from reader.has_commit_steps(src, old, br)):
            # A force-push dropped it (and gc pruned it), or the state
            # holds something that is no commit id: old..new means
            # nothing, so do as for a new branch.
            log.warning("%s %s: old head %s no longer exists; building the new head only"
                        % (redact.url(repo), br, str(old)[:40]), repository=redact.url(repo), branch=br)
            old = None
        unparseable, skipped = [], []
        found = yield from reader.commits_steps(src, old, sha, MAX_COMMITS + 1, unparseable, branch=br)
        if len(found) > MAX_COMMITS:
            log.warning("%s %s: %d+ new commits; queueing the newest %d"
                        % (redact.url(repo), br, MAX_COMMITS, MAX_COMMITS))
            found = found[-MAX_COMMITS:]
        for rev, why in unparseable:
            log.error("%s %s %s: commit skipped: cannot be parsed: %s" % (redact.url(repo), br, rev[:12], why),
                      repository=redact.url(repo), branch=br, revision=rev)
            skipped.append({"revision": rev, "branch": br, "reason": why, "when": time.time()})
        for c in found:
            self.queue_change(repo, br, c)
        return skipped

    def queue_change(self, repo, branch, c):
        repo = redact.url(repo)   # what records, the journal and the bus show
        fields = {"source": "poller", "repository": repo, "branch": branch}
        if branch.startswith(TAG_PREFIX):
            fields["tag"] = branch[len(TAG_PREFIX):]
        fields.update(c)
        cid = self.spool.deliver("changes", "change", fields)
        self._queued += 1
        # The subject is the committer's text: its control characters (an
        # escape sequence, a NUL, which hg and git keep) would make the
        # line a blob journalctl does not show, or reach a terminal.
        subject = _CONTROL.sub("?", (c["message"].splitlines() or [""])[0][:72])
        log.info("%s %s %s: change queued: %s" % (repo, branch, c["revision"][:12], subject),
                 repository=repo, branch=branch, revision=c["revision"], change=cid)
        self.bus.emit("ChangeQueued", cid, repo, branch, c["revision"])

    def _problem(self, repo, text):
        text = redact.text(text)   # a git error may quote the URL: kept and shown masked
        if self._errors.get(repo) != text:
            log.error("%s: cannot poll: %s" % (redact.url(repo), text))
            self._errors[repo] = text
            self._record_problem(repo, text)

    def _record_problem(self, repo, text):
        """Keep TEXT as the repository's "problem" in its state record, for
        `buildunits status` (another process) to show until a poll succeeds.
        Only the problem changes: the refs are written back as read, so this
        write can never lose or re-send a change.  A repository never polled
        yet gets a record without "polled", which its first good poll still
        treats as a first poll."""
        try:
            prev = self.state.read_poller(repo)
        except (records.RecordError, OSError):
            return          # the next poll that reaches git quarantines it
        prev = dict(prev or {})
        old = prev.get("problem")
        if isinstance(old, dict) and old.get("text") == text:
            return          # already recorded (by this poller or the previous one)
        prev["problem"] = {"text": text, "since": time.time()}
        try:
            self.state.write_poller(repo, prev.get("refs") if isinstance(prev.get("refs"), dict) else {}, prev)
        except OSError as e:
            log.error("%s: cannot record the problem in %s: %s"
                      % (redact.url(repo), self.state.poller_path(repo), e.strerror or e))

    def _clear_problem(self, repo, prev, refs, changed=False):
        """A good poll that queued nothing: forget the problem, if any, and
        the branches deleted since (REFS are the heads still there): a
        branch pushed again later is then a new branch, built from its tip,
        not from the head it had before it was deleted.  CHANGED: PREV
        has changed otherwise (its "tags"), and is written anyway."""
        self._errors.pop(repo, None)
        if changed or "problem" in prev or refs != prev.get("refs"):
            prev.pop("problem", None)
            self.state.write_poller(repo, refs, prev)


def _wanted(ref, globs, tags):
    """True if the head REF is polled: a branch Branches= GLOBS match, or a
    tag ("refs/tags/NAME") Tags= TAGS match."""
    if ref.startswith(TAG_PREFIX):
        return any(fnmatch.fnmatchcase(ref[len(TAG_PREFIX):], g) for g in tags)
    return any(fnmatch.fnmatchcase(ref, g) for g in globs)


def main(argv):
    return daemon.main(Poller, argv, "Notice new commits and queue one change record each.")
