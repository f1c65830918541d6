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

    Everything in a repository is what whoever can push chose, and is
    parsed so that no content can change the structure (see git.py).  A
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

SIGNALS
    SIGHUP re-reads the configuration; SIGTERM stops after the current poll.
"""

import fnmatch
import time

from gi.repository import GLib

from . import config, daemon, git, log, records
from . import redact

MAX_COMMITS = 200   # per branch and poll; older ones are logged as skipped
SKIPPED_KEPT = 20   # unparseable commits remembered per repository (state "skipped")


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

    # Each repository polls on its own timer; a wake (rescan, reload)
    # polls everything.
    def repositories(self):
        """{normalized repository: (interval, [branch globs])}."""
        repos = {}
        for b in self.cfg.builders.values():
            if not b.repository:
                continue
            r = config.normalize_repository(b.repository)
            interval, globs = repos.get(r, (None, []))
            if b.poll_interval > 0:
                interval = b.poll_interval if interval is None else min(interval, b.poll_interval)
            repos[r] = (interval, globs + b.branches)
        return repos

    def _arm(self):
        for src in self._timers.values():
            src.remove()
        self._timers = {}
        for repo, (interval, _globs) in self.repositories().items():
            if interval:
                self._timers[repo] = daemon.Timer(max(0.1, interval), self._timer, repo)

    def _timer(self, repo):
        if not self.stopping:
            try:
                self.poll(repo)
            except Exception as e:
                # A full disk or an I/O error: say so, keep the timer, and
                # try again at the next tick (nothing was recorded as seen).
                self._problem(repo, "%s: %s" % (type(e).__name__, e))
            self.notifier.status(self.status_text())
        return True

    def startup(self):
        self._arm()

    def on_config(self, old, new):
        self._arm()

    def work(self):
        for repo, (interval, _g) in self.repositories().items():
            if interval:
                self.poll(repo)
                self.keepalive()

    def status_text(self):
        text = "watching %d repositor%s; %d polls, %d changes queued" % (
            len(self._timers), "y" if len(self._timers) == 1 else "ies", self._polls, self._queued)
        if self._skipped:
            text += "; %d commit%s skipped (cannot be parsed)" % (self._skipped, "" if self._skipped == 1 else "s")
        for repo, why in sorted(self._errors.items()):
            text += "; cannot poll %s: %s" % (redact.url(repo), why)
        # STATUS= is one line, and a git error may quote what a server sent.
        return "".join(ch if ch >= " " and ch != "\x7f" else " " for ch in text)

    # -------------------------------------------------------------- poll
    def poll(self, repo):
        """Poll one repository; queue its new commits; record its heads."""
        globs = self.repositories().get(repo, (None, []))[1]
        self._polls += 1
        try:
            heads = git.heads(repo)
        except git.GitError as e:
            self._problem(repo, str(e))
            return
        wanted = {br: sha for br, sha in heads.items() if any(fnmatch.fnmatchcase(br, g) for g in globs)}
        try:
            prev = self.state.read_poller(repo)
        except records.RecordError as e:
            self.state.quarantine(e.path, e.reason)     # logged, kept in STATE/corrupt/
            log.error("treating %s as new" % redact.url(repo))
            prev = None
        if prev is None or "polled" not in prev:
            # (A record without "polled" holds only the problem of a
            # repository never polled yet: see _record_problem.)
            self.state.write_poller(repo, wanted, {"polled": time.time()})
            log.info("%s: first poll: recorded %d branch head%s; commits from now on will be built"
                     % (redact.url(repo), len(wanted), "" if len(wanted) == 1 else "s"))
            self._errors.pop(repo, None)
            return
        old_refs = prev.get("refs") if isinstance(prev.get("refs"), dict) else {}
        moved = {br: sha for br, sha in wanted.items() if old_refs.get(br) != sha}
        if not moved:
            self._clear_problem(repo, prev, {br: sha for br, sha in old_refs.items() if br in heads})
            return
        skipped = []
        try:
            src = git.source(repo, self.state.mirror_path(repo), sorted(moved))
            for br, sha in sorted(moved.items()):
                skipped += self._queue_branch(repo, src, br, old_refs.get(br), sha)
        except git.GitError as e:
            self._problem(repo, str(e))
            return
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

    def _queue_branch(self, repo, src, br, old, sha):
        """Queue the commits of branch BR from OLD (None: a new branch) to
        SHA; return the commits skipped because they cannot be parsed."""
        if old is not None and not git.has_commit(src, old):
            # A force-push dropped it (and gc pruned it), or the state
            # holds something that is no commit id: old..new means
            # nothing, so do as for a new branch.
            log.warning("%s %s: old head %s no longer exists; building the new head only"
                        % (redact.url(repo), br, str(old)[:40]), repository=redact.url(repo), branch=br)
            old = None
        unparseable, skipped = [], []
        found = git.commits(src, old, sha, MAX_COMMITS + 1, unparseable)
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
        fields.update(c)
        cid = self.spool.deliver("changes", "change", fields)
        self._queued += 1
        log.info("%s %s %s: change queued: %s" % (repo, branch, c["revision"][:12],
                                                  (c["message"].splitlines() or [""])[0][:72]),
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

    def _clear_problem(self, repo, prev, refs):
        """A good poll that queued nothing: forget the problem, if any, and
        the branches deleted since (REFS are the heads still there): a
        branch pushed again later is then a new branch, built from its tip,
        not from the head it had before it was deleted."""
        self._errors.pop(repo, None)
        if "problem" in prev or refs != prev.get("refs"):
            prev.pop("problem", None)
            self.state.write_poller(repo, refs, prev)


def main(argv):
    return daemon.main(Poller, argv, "Notice new commits and queue one change record each.")
