"""Forcing and cancelling builds, and handing in changes: one set of
checks and messages.

change() makes the fields of a change record as `buildunits sendchange`
and buildunits-webhook both queue it (the poller has its own, from its
reading of git).  Force and cancel are used by the scheduler's D-Bus methods Force and Cancel (the D-Bus policy
says who may) and by `buildunits force` and `cancel` when no scheduler is
on the bus (the spool's permissions say who may), so both refuse the same
things with the same words.  Each function checks, then commits one spool
record (the commit point) and returns what to tell the caller; a refusal
is a Refused whose text says why.
"""

import time

from . import config, git, records, redact


class Refused(Exception):
    """A force or cancel that is not done; str() says why."""


def force(spool, cfg, builder, branch, revision, reason, properties, user, source=None):
    """Queue a force record for BUILDER (the scheduler makes it a request).
    SOURCE "timer": queued by the builder's OnCalendar= timer (periodic.py),
    whose REASON the request takes as it is.  Returns (force id, [notes
    for the user])."""
    b = cfg.builders.get(builder)
    if b is None:
        raise Refused("no builder %r (builders: %s)" % (builder, ", ".join(sorted(cfg.builders)) or "none"))
    if revision and not git.valid_revision(revision):
        raise Refused("revision %r is not %s" % (revision, git.REVISION_RULE))
    notes = []
    if branch and b.repository and not b.wants_branch(branch):
        notes.append("branch %s is not in %s's Branches= (%s); building it anyway"
                     % (branch, b.name, " ".join(b.branches)))
    fields = {"builder": b.name, "branch": branch or "", "revision": revision or "", "reason": reason or "",
              "properties": dict(properties), "user": user}
    if source:
        fields["source"] = source
    fid = spool.deliver("changes", "force", fields)
    return fid, notes


def change(source, repository, branch, revision, author=None, message=None, files=None, when=None):
    """The fields of a change record (records.FORMATS "change") of
    REVISION, a full commit id (git.valid_revision), on BRANCH of
    REPOSITORY, queued by SOURCE ("sendchange", "webhook"): the repository
    normalized (config.normalize_repository) and masked (redact.url), the
    branch without refs/heads/.  When the repository is local, an author,
    message, file list or time left out (None) is read from git (a
    git.GitError if it cannot be); otherwise it is empty, and the time is
    now.  Committed with Spool.deliver() or, a push at once,
    deliver_many()."""
    if not git.valid_revision(revision):
        raise ValueError("revision %r is not %s" % (revision, git.REVISION_RULE))
    repo = config.normalize_repository(repository)
    if branch.startswith("refs/heads/"):
        branch = branch[len("refs/heads/"):]
    fields = {"source": source, "repository": redact.url(repo), "branch": branch, "revision": revision,
              "author": author, "message": message, "files": list(files) if files is not None else None,
              "when": when}
    if git.is_local(repo) and any(fields[k] is None for k in ("author", "message", "files", "when")):
        c = git.commit(git.git_dir_for(repo), revision)
        for k in ("author", "message", "files", "when"):
            if fields[k] is None:
                fields[k] = c[k]
        fields["revision"] = c["revision"]
    return {k: (v if v is not None else ([] if k == "files" else "" if k != "when" else time.time()))
            for k, v in fields.items()}


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
