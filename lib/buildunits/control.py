"""Forcing, rebuilding and cancelling builds, and handing in changes: one
set of checks and messages.

change() makes the fields of a change record as `buildunits sendchange`
and buildunits-webhook both queue it (the poller has its own, from its
reading of git).  Force, rebuild and cancel are used by the scheduler's
D-Bus methods Force, Rebuild and Cancel (the D-Bus policy says who may)
and by `buildunits force`, `rebuild` and `cancel` when no scheduler is on
the bus (the spool's permissions say who may), so both refuse the same
things with the same words.  Each function checks, then commits one spool
record (the commit point) and returns what to tell the caller; a refusal
is a Refused whose text says why.
"""

import time

from . import config, git, hg, properties as propsmod, records, redact, vcs
from . import spool as spoolmod


class Refused(Exception):
    """A force or cancel that is not done; str() says why."""


def force(spool, cfg, builder, branch, revision, reason, properties, user, source=None, priority=None):
    """Queue a force record for BUILDER (the scheduler makes it a request).
    SOURCE "timer": queued by the builder's OnCalendar= timer (periodic.py),
    whose REASON the request takes as it is.  PRIORITY: the build's own,
    instead of the builder's Priority=.  Returns (force id, [notes for
    the user])."""
    b = cfg.builders.get(builder)
    if b is None:
        raise Refused("no builder %r (builders: %s)" % (builder, ", ".join(sorted(cfg.builders)) or "none"))
    kind = b.kind if b.repository else None
    if revision and not vcs.valid_revision(revision, kind):
        raise Refused("revision %r is not %s" % (revision, vcs.revision_rule(kind)))
    if branch and kind and vcs.branch_problem(kind, branch):
        raise Refused(vcs.branch_problem(kind, branch))
    problems = propsmod.check(properties)
    if problems:
        raise Refused("; ".join(problems))
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)
                                 or abs(priority) > spoolmod.MAX_PRIORITY):
        raise Refused("priority %r is not a whole number from -%d to %d"
                      % (priority, spoolmod.MAX_PRIORITY, spoolmod.MAX_PRIORITY))
    notes = []
    if branch and b.repository and not b.wants_branch(branch):
        notes.append("branch %s is not in %s's Branches= (%s); building it anyway"
                     % (branch, b.name, " ".join(b.branches)))
    fields = {"builder": b.name, "branch": branch or "", "revision": revision or "", "reason": reason or "",
              "properties": dict(properties), "user": user}
    if source:
        fields["source"] = source
    if priority is not None:
        fields["priority"] = priority
    fid = spool.deliver("changes", "force", fields)
    return fid, notes


def rebuild(spool, state, cfg, builder, number, reason, user):
    """Queue a force record for BUILDER that builds again what build
    NUMBER built: its revision (the one checked out), branch, changes and
    properties, with rebuild_of: NUMBER (the scheduler makes it a request
    saying so).  Returns (force id, [notes for the user])."""
    b = cfg.builders.get(builder)
    if b is None:
        raise Refused("no builder %r (builders: %s)" % (builder, ", ".join(sorted(cfg.builders)) or "none"))
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number < 2 ** 32:
        raise Refused("build number %r is not a whole number from 1 to %d" % (number, 2 ** 32 - 1))
    try:
        rec = state.read_build(b.name, number)
    except (records.RecordError, OSError) as e:
        raise Refused("cannot read %s #%d: %s" % (b.name, number, e))
    if rec is None:
        raise Refused("%s #%d does not exist" % (b.name, number))
    req = rec.get("request") if isinstance(rec.get("request"), dict) else {}
    # The revision checked out (a forced build of a branch tip records it
    # once its checkout ran), else the one asked for.
    revision = next((r for r in (rec.get("revision"), req.get("revision")) if git.valid_revision(r)), "")
    branch = next((br for br in (rec.get("branch"), req.get("branch")) if isinstance(br, str) and br), "")
    changes = req.get("changes") if isinstance(req.get("changes"), list) else []
    props = req.get("properties") if isinstance(req.get("properties"), dict) else {}
    notes = []
    if not revision:
        notes.append("%s #%d recorded no revision; the newest commit of %s is built"
                     % (b.name, number, branch or "its branch"))
    # Its properties and changes were accepted once: carried as they are.
    # The commit point, as for force(): before it nothing is queued; after
    # it the scheduler makes the request, once (the force id is consumed).
    fid = spool.deliver("changes", "force", {
        "builder": b.name, "branch": branch, "revision": revision, "reason": reason or "",
        "properties": props, "user": user, "rebuild_of": number,
        "changes": [c for c in changes if isinstance(c, dict)]})
    return fid, notes


def change(source, repository, branch, revision, author=None, message=None, files=None, when=None):
    """The fields of a change record (records.FORMATS "change") of
    REVISION, a full revision of the repository's kind (vcs.kind,
    vcs.valid_revision), on BRANCH of
    REPOSITORY, queued by SOURCE ("sendchange", "webhook"): the repository
    normalized (config.normalize_repository) and masked (redact.url), the
    branch without refs/heads/.  When the repository is local, an author,
    message, file list or time left out (None) is read from git (or hg; a
    git.GitError if it cannot be); otherwise it is empty, and the time is
    now.  Committed with Spool.deliver() or, a push at once,
    deliver_many()."""
    kind = vcs.kind(repository)
    if not vcs.valid_revision(revision, kind):
        raise ValueError("revision %r is not %s" % (revision, vcs.revision_rule(kind)))
    repo = config.normalize_repository(repository)
    if branch.startswith("refs/heads/"):
        branch = branch[len("refs/heads/"):]
    fields = {"source": source, "repository": redact.url(repo), "branch": branch, "revision": revision,
              "author": author, "message": message, "files": list(files) if files is not None else None,
              "when": when}
    if kind in ("git", "hg") and git.is_local(repo) and any(
            fields[k] is None for k in ("author", "message", "files", "when")):
        c = _hg_changeset(repo, revision) if kind == "hg" else git.commit(git.git_dir_for(repo), revision)
        for k in ("author", "message", "files", "when"):
            if fields[k] is None:
                fields[k] = c[k]
        fields["revision"] = c["revision"]
    return {k: (v if v is not None else ([] if k == "files" else "" if k != "when" else time.time()))
            for k, v in fields.items()}


def _hg_changeset(repo, node):
    """The details of changeset NODE of the local hg repository REPO (a
    git.GitError if it has none)."""
    skipped = []
    found = git.run(hg.commits_steps(repo, None, node, 1, skipped))
    if not found:
        raise git.GitError("cannot parse changeset %s: %s" % (node, skipped[0][1] if skipped else "not found"))
    return found[0]


def cancel_request(spool, request):
    """Cancel the queued request REQUEST.  Returns the message."""
    if not spool.cancel_queued(request):
        raise Refused("request %s is not queued (already running, finished or unknown)" % request)
    return "request %s cancelled" % request


def cancel_build(spool, state, builder, number, user):
    """Ask the runner of the running build BUILDER #NUMBER to cancel it.
    Returns the message."""
    try:
        rec = state.read_build(builder, number)
    except (records.RecordError, OSError) as e:
        raise Refused(str(e))
    if rec is None:
        raise Refused("%s #%d does not exist" % (builder, number))
    if rec.get("state") == "finished":
        raise Refused("%s #%d has already finished (%s)" % (builder, number, rec.get("result")))
    spool.request_cancel(builder, number, user)        # commit point
    return "cancelling %s #%d (running on %s)" % (builder, number, rec.get("worker"))
