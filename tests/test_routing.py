"""routing.py: the scheduler's decisions, from a table of changes and
times to requests and the next deadline, without a scheduler."""

import doctest

import pytest

from buildunits import config, routing, scheduler

REPO = "https://example.org/hello.git"


def rev(n):
    return "%040x" % n


def change(n, branch="main", queued=100.0, revision=None):
    return {"id": "c%d" % n, "repository": REPO, "branch": branch,
            "revision": revision or rev(n), "queued": queued}


def builder(name, tree_stable=0.0, branches=("*",)):
    return config.Builder(name=name, path="/dev/null", repository=REPO, branches=list(branches),
                          tree_stable=tree_stable)


class Memories(dict):
    def __call__(self, name):
        return self.setdefault(name, scheduler._Memory(None))


def schedule(builders, changes, now):
    """Route CHANGES to BUILDERS, then what is due at NOW."""
    memory, pending = Memories(), {}
    for c in changes:
        routing.route(c, builders, memory, pending)
    stable = {b.name: b.tree_stable for b in builders}
    return routing.due(pending, stable.__getitem__, now)


def test_doctests():
    assert doctest.testmod(routing).failed == 0


@pytest.mark.parametrize("stable, changes, now, requests, waiting, deadline", [
    # TreeStableSec=0: one request per change, at once, in arrival order.
    (0, [change(1), change(2)], 100.0, [("b", "main", ["c1"]), ("b", "main", ["c2"])], {}, None),
    # A window: nothing before it closes, measured from the newest change.
    (60, [change(1, queued=100.0), change(2, queued=130.0)], 150.0, [], {("b", "main"): 2}, 190.0),
    # ... then one request for the newest revision, carrying both.
    (60, [change(1, queued=100.0), change(2, queued=130.0)], 190.0, [("b", "main", ["c1", "c2"])], {}, None),
    # Each branch has its own window; the next deadline is the earliest.
    (60, [change(1, "main", 100.0), change(2, "dev", 120.0), change(3, "main", 150.0)], 185.0,
     [("b", "dev", ["c2"])], {("b", "main"): 2}, 210.0),
    # A change without a queued time counts as queued now.
    (60, [{"id": "c9", "repository": REPO, "branch": "main", "revision": rev(9)}], 500.0,
     [], {("b", "main"): 1}, 560.0),
])
def test_tree_stable_windows(stable, changes, now, requests, waiting, deadline):
    got, got_waiting, got_deadline = schedule([builder("b", stable)], changes, now)
    assert [(b, br, [c["id"] for c in cs]) for b, br, cs in got] == requests
    assert (got_waiting, got_deadline) == (waiting, deadline)


def test_a_change_goes_to_each_builder_whose_branches_match():
    builders = [builder("all"), builder("releases", branches=["release-*"]), builder("slow", 30)]
    got, waiting, deadline = schedule(builders, [change(1, "main"), change(2, "release-1")], 100.0)
    assert [(b, br, [c["id"] for c in cs]) for b, br, cs in got] == [
        ("all", "main", ["c1"]), ("all", "release-1", ["c2"]), ("releases", "release-1", ["c2"])]
    assert waiting == {("slow", "main"): 1, ("slow", "release-1"): 1} and deadline == 130.0


def test_the_same_revision_waiting_twice_is_dropped_once():
    memory, pending = Memories(), {}
    b = builder("b", 60)
    assert routing.route(change(1), [b], memory, pending) == (False, [])
    # The same commit from a hook and from the poller: a second id.
    assert routing.route(change(2, revision=rev(1)), [b], memory, pending) == (True, [("b", routing.WAITING)])
    assert [c["id"] for c in pending[("b", "main")]] == ["c1"]


def test_a_revision_requested_before_is_dropped_and_a_consumed_id_is_ignored():
    memory, pending = Memories(), {}
    b = builder("b")
    memory("b").add(["c1"], [("main", rev(5))])
    assert routing.route(change(1), [b], memory, pending) == (True, [])                 # consumed
    assert routing.route(change(2, revision=rev(5)), [b], memory, pending) == (
        True, [("b", routing.REQUESTED)])
    assert routing.route(change(3, branch="dev", revision=rev(5)), [b], memory, pending) == (False, [])
    assert pending == {("b", "dev"): [change(3, branch="dev", revision=rev(5))]}


def test_a_change_no_builder_wants_is_done():
    assert routing.route(change(1), [builder("b", branches=["release-*"])], Memories(), {}) == (True, [])
    assert routing.route(change(1), [], Memories(), {}) == (True, [])


def test_request_fields_mask_the_url_and_build_the_newest():
    b = config.Builder(name="b", path="/dev/null", repository="https://u:TOKEN@example.org/r.git")
    fields = routing.request_fields(b, "main", [change(1), change(2)])
    assert fields["repository"] == "https://u:***@example.org/r.git"
    assert (fields["revision"], fields["reason"], fields["force"]) == (rev(2), "2 changes on main", None)
    assert [c["id"] for c in fields["changes"]] == ["c1", "c2"] and fields["changes_omitted"] == 0
    one = routing.request_fields(b, "dev", [change(7, "dev")])
    assert one["reason"] == "change %s on dev" % rev(7)[:12]
