"""The scheduler's decisions, as pure functions: which builders want a
change, which waiting changes are due as requests, and what a request says.

A change goes to each builder of its repository whose Branches= matches
its branch, unless that builder has consumed the change's id already, or
has had its revision requested on that branch (a re-sent change, or one
commit reported by a hook and by the poller), or has the same revision
waiting.  The changes waiting for one (builder, branch) form a group:
with TreeStableSec=0 each change is its own request at once; otherwise
the group is due when TreeStableSec has passed since the newest of them
was queued, and becomes one request for the newest revision.

Nothing here does I/O or reads the clock: the scheduler passes NOW and
each builder's memory (scheduler._Memory: has_id(), has_revision()), and
delivers the requests.

>>> class B:
...     name, repository, branches, tree_stable = "b", "https://h/r", ["*"], 60
...     def wants_branch(self, branch): return True
>>> mem = lambda name: type("M", (), {"has_id": lambda s, i: False,
...                                   "has_revision": lambda s, b, r: False})()
>>> pending = {}
>>> route({"id": "c1", "branch": "main", "revision": "a" * 40, "queued": 100.0}, [B()], mem, pending)
(False, [])
>>> due(pending, lambda name: 60, 130.0)
([], {('b', 'main'): 1}, 160.0)
>>> [(b, br, len(cs)) for b, br, cs in due(pending, lambda name: 60, 160.0)[0]]
[('b', 'main', 1)]
"""

from . import changes as changes_mod, redact

REQUESTED = "requested"   # the builder had this revision of the branch requested before
WAITING = "waiting"       # the same revision is already waiting for the builder


def route(change, builders, memory, pending):
    """Add CHANGE to PENDING ({(builder, branch): [changes]}, the caller's,
    changed in place) for each of BUILDERS (those of its repository) that
    still wants it.  MEMORY(name) is what the builder has consumed.

    Returns (done, dropped): DONE is true if no builder still wants the
    change (it can leave the spool); DROPPED lists (builder name, why)
    for builders that take it as consumed without a request of its own,
    WHY being REQUESTED or WAITING."""
    cid, branch, rev = change["id"], change["branch"], change["revision"]
    done, dropped = True, []
    for b in builders:
        if not b.wants_branch(branch):
            continue
        m = memory(b.name)
        if m.has_id(cid):
            continue
        if m.has_revision(branch, rev):
            dropped.append((b.name, REQUESTED))
            continue
        queue = pending.setdefault((b.name, branch), [])
        if any(c["revision"] == rev for c in queue):
            dropped.append((b.name, WAITING))
            continue
        queue.append(change)
        done = False
    return done, dropped


def due(pending, tree_stable, now):
    """What PENDING's groups come to at NOW, given TREE_STABLE(builder
    name), its TreeStableSec.

    Returns (requests, waiting, next_deadline): REQUESTS, the requests to
    make now, in order, as (builder name, branch, [changes]); WAITING,
    {(builder, branch): number of changes} of the groups not yet due; and
    NEXT_DEADLINE, the earliest time one of those is due (None if none)."""
    requests, waiting, next_deadline = [], {}, None
    for (bname, branch), group in sorted(pending.items()):
        stable = tree_stable(bname)
        if stable <= 0:
            requests.extend((bname, branch, [c]) for c in group)
            continue
        deadline = max(c.get("queued", now) for c in group) + stable
        if deadline <= now:
            requests.append((bname, branch, group))
        else:
            waiting[(bname, branch)] = len(group)
            next_deadline = deadline if next_deadline is None else min(next_deadline, deadline)
    return requests, waiting, next_deadline


def reason(branch, changes):
    """The request's reason text.

    >>> reason("main", [{"revision": "0123456789abcdef"}])
    'change 0123456789ab on main'
    >>> reason("main", [{"revision": "a"}, {"revision": "b"}])
    '2 changes on main'
    """
    if len(changes) == 1:
        return "change %s on %s" % (changes[0]["revision"][:12], branch)
    return "%d changes on %s" % (len(changes), branch)


def request_fields(builder, branch, changes):
    """The fields of the request of BUILDER (config.Builder) for CHANGES
    on BRANCH, oldest first: a build of the newest revision."""
    carried, omitted = changes_mod.bound_changes(changes)
    return {"builder": builder.name, "repository": redact.url(builder.repository), "branch": branch,
            "revision": changes[-1]["revision"], "reason": reason(branch, changes), "changes": carried,
            "changes_omitted": omitted, "force": None, "properties": change_properties(changes[-1])}


def change_properties(change):
    """The properties of a build of CHANGE: a change from a forge's push
    hook (buildunits-webhook) has the forge and the delivery it came in.

    >>> change_properties({"source": "webhook", "delivery": "github:72d3162e"})
    {'forge': 'github', 'delivery': '72d3162e'}
    >>> change_properties({"source": "poller"})
    {}
    """
    delivery = change.get("delivery") if change.get("source") == "webhook" else None
    forge, colon, rest = delivery.partition(":") if isinstance(delivery, str) else ("", "", "")
    return {"forge": forge, "delivery": rest} if colon else {}
