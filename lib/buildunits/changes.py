"""Bounds on what requests and build records carry about their changes.

A change record holds a commit's message and file list as git gave them,
which have no size limit: one push of 150 commits with 1 MB messages was
a 157 MB build record, held whole in memory by every daemon that read it.
What a request (and the build record made from it) carries is bounded:

- every change's id and revision (the scheduler's recovery counts them as
  consumed, see scheduler.startup), with its branch, repository, source
  and times;
- full details (author, message, files) only for the newest
  MAX_DETAILED changes; an older one has "details_omitted": true, and the
  request says how many those are in "changes_omitted";
- a message cut to MAX_MESSAGE_CHARS characters, followed by a line
  saying how many were dropped, and "message_omitted" (the count); the
  author cut to MAX_AUTHOR_CHARS; at most MAX_FILES files, and
  "files_omitted" (how many more there were).

The limits are documented in buildunits-state(5) (request version 2).
"""

MAX_DETAILED = 20
MAX_MESSAGE_CHARS = 16 * 1024
MAX_AUTHOR_CHARS = 1024
MAX_FILES = 100

# What a change without its details keeps.
_BRIEF_KEYS = ("id", "repository", "branch", "revision", "when", "queued", "source")


def truncation_mark(dropped):
    return "\n[... %d more character%s not kept]" % (dropped, "" if dropped == 1 else "s")


def bound_change(c):
    """Change C with its message, author and file list capped: C itself if
    nothing is over a limit (or C is not a dict), else a new dict.
    Idempotent: a bounded change is returned as is."""
    if not isinstance(c, dict):
        return c
    out = c
    msg = c.get("message")
    if isinstance(msg, str) and len(msg) > MAX_MESSAGE_CHARS + 64 and "message_omitted" not in c:
        dropped = len(msg) - MAX_MESSAGE_CHARS
        out = dict(out, message=msg[:MAX_MESSAGE_CHARS] + truncation_mark(dropped), message_omitted=dropped)
    author = c.get("author")
    if isinstance(author, str) and len(author) > MAX_AUTHOR_CHARS:
        out = dict(out, author=author[:MAX_AUTHOR_CHARS] + "...")
    files = c.get("files")
    if isinstance(files, list) and len(files) > MAX_FILES:
        out = dict(out, files=files[:MAX_FILES],
                   files_omitted=len(files) - MAX_FILES + _int(c.get("files_omitted")))
    return out


def brief(c):
    """Change C without its details (what every change of a request keeps)."""
    if not isinstance(c, dict):
        return c
    if c.get("details_omitted") is True:
        return c
    out = {k: c[k] for k in _BRIEF_KEYS if k in c}
    out["details_omitted"] = True
    return out


def bound_changes(changes):
    """(bounded list, how many changes lost their details) for CHANGES,
    oldest first as requests hold them: the newest MAX_DETAILED keep their
    (capped) details."""
    if not isinstance(changes, list):
        return changes, 0
    cut = max(0, len(changes) - MAX_DETAILED)
    out = [brief(c) for c in changes[:cut]] + [bound_change(c) for c in changes[cut:]]
    omitted = sum(1 for c in out if isinstance(c, dict) and c.get("details_omitted") is True)
    return out, omitted


def bound_request(req):
    """Request REQ with its changes bounded (REQ itself if they are)."""
    if not isinstance(req, dict) or not isinstance(req.get("changes"), list):
        return req
    changes, omitted = bound_changes(req["changes"])
    if omitted == _int(req.get("changes_omitted")) and all(a is b for a, b in zip(changes, req["changes"])):
        return req
    return dict(req, changes=changes, changes_omitted=omitted)


def _int(v):
    return v if isinstance(v, int) and not isinstance(v, bool) else 0
