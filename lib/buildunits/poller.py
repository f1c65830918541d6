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

    Crash safety: the last seen heads (state poller/KEY.json) are written
    only after the change records are committed to the spool, so a crash
    in between re-sends changes on the next poll rather than losing them;
    the scheduler drops re-sent revisions.  A commit pushed while the
    poller is down is found by its first poll after it starts.

FILES
    SPOOL/changes/new/ID      the change records it queues
    STATE/poller/KEY.json     last seen heads per repository
    STATE/poller/KEY.git      bare mirror of a remote (non-path) repository

SIGNALS
    SIGHUP re-reads the configuration; SIGTERM stops after the current poll.
"""

import fnmatch
import os
import time

from gi.repository import GLib

from . import config, daemon, git, log, records
from . import redact

MAX_COMMITS = 200   # per branch and poll; older ones are logged as skipped


class Poller(daemon.Daemon):
    role = "Poller"
    program = "buildunits-poller"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._timers = {}        # repository -> daemon.Timer
        self._errors = {}        # repository -> last error text (logged once)
        self._polls = 0
        self._queued = 0

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
        return "watching %d repositor%s; %d polls, %d changes queued" % (
            len(self._timers), "y" if len(self._timers) == 1 else "ies", self._polls, self._queued)

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
            aside = e.path + ".corrupt-%d" % time.time()
            os.rename(e.path, aside)
            log.error("%s: %s; moved to %s; treating %s as new" % (e.path, e.reason, aside, redact.url(repo)))
            prev = None
        if prev is None:
            self.state.write_poller(repo, wanted, {"polled": time.time()})
            log.info("%s: first poll: recorded %d branch head%s; commits from now on will be built"
                     % (redact.url(repo), len(wanted), "" if len(wanted) == 1 else "s"))
            self._errors.pop(repo, None)
            return
        old_refs = prev.get("refs") if isinstance(prev.get("refs"), dict) else {}
        moved = {br: sha for br, sha in wanted.items() if old_refs.get(br) != sha}
        if not moved:
            self._errors.pop(repo, None)
            return
        try:
            src = git.source(repo, self.state.poller_path(repo)[:-5] + ".git", sorted(moved))
            for br, sha in sorted(moved.items()):
                old = old_refs.get(br)
                found = git.commits(src, old, sha, MAX_COMMITS + 1)
                if len(found) > MAX_COMMITS:
                    log.warning("%s %s: %d+ new commits; queueing the newest %d"
                                % (redact.url(repo), br, MAX_COMMITS, MAX_COMMITS))
                    found = found[-MAX_COMMITS:]
                for c in found:
                    self.queue_change(repo, br, c)
        except git.GitError as e:
            self._problem(repo, str(e))
            return
        # Only now, with every change committed to the spool: a crash
        # before this line re-sends them (the scheduler drops repeats).
        refs = dict(old_refs)
        refs.update(wanted)
        for br in list(refs):
            if br not in heads:
                del refs[br]   # deleted branch: forget it
        prev.update({"refs": refs, "polled": time.time()})
        self.state.write_poller(repo, refs, prev)
        self._errors.pop(repo, None)

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
        if self._errors.get(repo) != text:
            log.error("%s: cannot poll: %s" % (redact.url(repo), redact.text(text)))
            self._errors[repo] = text


def main(argv):
    return daemon.main(Poller, argv, "Notice new commits and queue one change record each.")
