"""Forcing and cancelling builds: one set of checks and messages.

Used by the scheduler's D-Bus methods Force and Cancel (the D-Bus policy
says who may) and by `buildunits force` and `cancel` when no scheduler is
on the bus (the spool's permissions say who may), so both refuse the same
things with the same words.  Each function checks, then commits one spool
record (the commit point) and returns what to tell the caller; a refusal
is a Refused whose text says why.
"""

from . import git, records


class Refused(Exception):
    """A force or cancel that is not done; str() says why."""


def force(spool, cfg, builder, branch, revision, reason, properties, user):
    """Queue a force record for BUILDER (the scheduler makes it a request).
    Returns (force id, [notes for the user])."""
    b = cfg.builders.get(builder)
    if b is None:
        raise Refused("no builder %r (builders: %s)" % (builder, ", ".join(sorted(cfg.builders)) or "none"))
    if revision and not git.valid_revision(revision):
        raise Refused("revision %r is not %s" % (revision, git.REVISION_RULE))
    notes = []
    if branch and b.repository and not b.wants_branch(branch):
        notes.append("branch %s is not in %s's Branches= (%s); building it anyway"
                     % (branch, b.name, " ".join(b.branches)))
    fid = spool.deliver("changes", "force", {
        "builder": b.name, "branch": branch or "", "revision": revision or "", "reason": reason or "",
        "properties": dict(properties), "user": user})
    return fid, notes


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
