"""The runners' queue: ids that name their builder, the index made of them.

- A request's id names its builder and stays in the grammar the previous
  release reads (which then builds it as its own after a downgrade).
- A claim takes the oldest request the worker can run, also one queued by
  the previous release (no builder in its name), which is read once.
- A runner whose Workers= exclude a backlog opens none of it, and does not
  list the queue again for a new request: the events say.
- A lost event is repaired by the rescan; a claim that loses the race
  drops the entry; a crash between the delivery and the claim loses
  nothing; a request whose name and record disagree goes to corrupt/.
- The site counts what is queued from the index and reads only what it
  shows, once.

The runners are in process, their build's start replaced by a note of
what they claimed (no step runs).
"""

import os
import types

import pytest
from gi.repository import GLib

import harness
from support.inprocess import RecordingNotifier, dirs as make_dirs, write_builders
from buildunits import config, records, runner, spool as spoolmod
from buildunits.bus import NoBus
from buildunits.sitesource import Source
from buildunits.state import State

BUILDERS = {
    "hello": "[Builder]\nPollIntervalSec=0\n[Step s]\nCommand=true\n",
    "my.odd_Z-name": "[Builder]\nPollIntervalSec=0\n[Step s]\nCommand=true\n",
    "elsewhere": "[Builder]\nPollIntervalSec=0\nWorkers=w2\n[Step s]\nCommand=true\n",
}


def previous_release_valid_id(name):
    """buildunits 0.1.0's spool.valid_id, the names it reads from a queue."""
    return (not name.startswith(".") and "/" not in name and name.count(".") == 3
            and name.split(".", 1)[0].isdigit())


class Claims(runner.Runner):
    """A runner that notes what it claims instead of building it, and
    drops the claim (as a finished build would)."""

    def _start(self, rid, req, b, extra=()):
        self.claims.append((b.name, rid))
        for x in extra:
            self.spool.finish(self.worker, x)
        self.spool.finish(self.worker, rid)
        self._release_locks()


@pytest.fixture
def make(tmp_path):
    d = make_dirs(tmp_path)
    write_builders(d, BUILDERS)

    def make(worker="w1", events=True):
        r = Claims(d, config.load(d.config), NoBus(), RecordingNotifier(), types.SimpleNamespace(worker=worker))
        r.spool.ensure()
        r.state.ensure()
        r.claims = []
        r.events = events          # as if a watcher fed spool_event()
        return r
    return make


def request(sp, builder, **fields):
    f = {"builder": builder, "branch": "main", "revision": "", "repository": "", "reason": "a test",
         "changes": [], "properties": {}}
    f.update(fields)
    return sp.deliver("requests", "request", f)


def legacy_request(sp, builder):
    """A request as the previous release queued it: no builder in its id."""
    rid = spoolmod.new_id()
    records.write(sp.where("requests", rid), "request", {"id": rid, "builder": builder, "branch": "main",
                                                         "revision": "", "reason": "queued by 0.1"})
    return rid


def delivered(r, rid):
    """What inotify tells the daemon about the request RID arriving."""
    r.spool_event(r.spool.where("requests", rid), True)


def reads(monkeypatch, where=os.path.join("requests", "new")):
    """Count the records opened in WHERE: a list of their paths."""
    opened = []
    real = records.read

    def counting(path, *a, **kw):
        if os.sep + where + os.sep in path:
            opened.append(path)
        return real(path, *a, **kw)
    monkeypatch.setattr(records, "read", counting)
    return opened


def spin(until, timeout=10.0):
    ctx = GLib.MainContext.default()
    # (iteration() is true when it ran something, which is not what is waited for)
    harness.wait_for(lambda: (ctx.iteration(False), until())[1], timeout=timeout, what="the runner's pass")


# -------------------------------------------------------------- names
def test_a_requests_id_names_its_builder_and_the_previous_release_reads_it(make):
    sp = make().spool
    longest = "a" + "._-Z" * 15 + "zzz"
    assert len(longest) == 64 and config.NAME_RE.fullmatch(longest)
    for b in ("hello", "my.odd_Z-name", longest, "Z"):
        rid = request(sp, b)
        assert spoolmod.builder_of(rid) == b
        assert spoolmod.valid_id(rid) and previous_release_valid_id(rid) and len(rid) < 200
    assert sp.pending("requests") == sorted(sp.pending("requests")) and len(sp.pending("requests")) == 4
    assert sp.corrupted() == []
    # What the previous release queued, and changes, carry no builder.
    assert spoolmod.builder_of(legacy_request(sp, "hello")) is None
    assert spoolmod.builder_of(sp.deliver("changes", "force", {"builder": "hello"})) is None


def test_fsck_finds_a_request_whose_name_and_record_disagree(make):
    r = make()
    rid = spoolmod.new_id("hello")
    records.write(r.spool.where("requests", rid), "request", {"id": rid, "builder": "elsewhere"})
    assert r.spool.problem("requests", rid) == "file name is for builder 'hello', the record for 'elsewhere'"
    r.work()
    assert r.claims == [] and r.spool.pending("requests") == []
    [(name, reason)] = r.spool.corrupted()
    assert rid in name and "'elsewhere'" in reason


# -------------------------------------------------------------- claims
def test_the_claim_takes_the_oldest_request_the_worker_can_run(make):
    r = make()
    sp = r.spool
    a1 = request(sp, "hello")
    request(sp, "elsewhere")
    old = legacy_request(sp, "my.odd_Z-name")
    a2 = request(sp, "hello")
    odd = request(sp, "my.odd_Z-name")
    request(sp, "elsewhere")
    for _ in range(6):
        r.work()
    assert r.claims == [("hello", a1), ("my.odd_Z-name", old), ("hello", a2), ("my.odd_Z-name", odd)]
    # A request queued later, and one handed back older than it, in age order.
    newer = request(sp, "hello")
    back = request(sp, "hello")
    assert sp.claim(back, "w9") is not None and sp.unclaim("w9", back)
    for rid in (newer, back):
        delivered(r, rid)
    r.work()
    r.work()
    assert r.claims[4:] == [("hello", newer), ("hello", back)]
    assert [spoolmod.builder_of(n) for n in sp.pending("requests")] == ["elsewhere", "elsewhere"]


def test_a_runner_whose_workers_exclude_a_backlog_opens_none_of_it(make, monkeypatch):
    r = make()
    for _ in range(300):
        request(r.spool, "elsewhere")
    opened = reads(monkeypatch, "requests")       # queued or claimed
    listings = []
    real_pending = r.spool.pending
    monkeypatch.setattr(r.spool, "pending", lambda q: listings.append(q) or real_pending(q))
    r.startup()
    r.work()                  # the first pass lists the queue (names only)
    assert listings == ["requests"]
    for _ in range(20):       # new requests it cannot run: no listing, no open
        delivered(r, request(r.spool, "elsewhere"))
        r.work()
    r._rescan()               # the rescan lists again, and opens nothing either
    spin(lambda: not r.rescan_due)
    assert opened == [] and r.claims == [] and listings == ["requests"] * 2
    mine = request(r.spool, "hello")
    delivered(r, mine)
    r.work()
    assert r.claims == [("hello", mine)]
    assert [os.path.basename(p) for p in opened] == [mine]      # the claimed request alone
    assert len(r.spool.pending("requests")) == 320


def test_a_request_without_a_builder_in_its_name_is_read_once(make, monkeypatch):
    r = make()
    legacy_request(r.spool, "elsewhere")
    opened = reads(monkeypatch)
    for _ in range(3):
        r.rescan_due = True
        r.work()
    assert len(opened) == 1 and r.claims == []


def test_a_lost_event_is_repaired_by_the_rescan(make):
    r = make()
    r.work()
    rid = request(r.spool, "hello")        # inotify never says so
    r.work()
    assert r.claims == []
    r._rescan()
    spin(lambda: r.claims)
    assert r.claims == [("hello", rid)]


def test_an_event_for_a_request_already_gone_costs_nothing(make):
    r = make()
    r.work()
    rid = request(r.spool, "hello")
    delivered(r, rid)
    assert r.spool.cancel_queued(rid)       # its departure not seen yet
    later = request(r.spool, "hello")
    delivered(r, later)
    r.work()
    assert r.claims == [("hello", later)] and r.spool.corrupted() == []


def test_a_claim_that_loses_the_race_drops_the_entry_and_takes_the_next(make):
    r1, r2 = make("w1"), make("w1b")
    first, second = request(r1.spool, "hello"), request(r1.spool, "hello")
    r1.work()                                # indexed both, took the first
    assert r1.claims == [("hello", first)]
    r2.work()
    assert r2.claims == [("hello", second)]
    third = request(r1.spool, "hello")
    r3 = make("w1c")
    r3.work()                                # wins the third
    delivered(r1, third)
    r1.work()                                # its index still had the second: ENOENT, then the third
    assert r1.claims == [("hello", first)] and r3.claims == [("hello", third)]
    assert r1._queue.count("hello") == 0 and r1.spool.corrupted() == []


def test_a_crash_between_the_delivery_and_the_claim_loses_nothing(make):
    r = make()
    r.work()
    rid = request(r.spool, "hello")           # committed (the rename)
    delivered(r, rid)
    # The runner dies before its pass; what was being written is in tmp/.
    half = spoolmod.new_id("hello")
    with open(os.path.join(os.path.dirname(r.spool.where("requests", rid)), "..", "tmp", half), "w") as f:
        f.write('{"format": "request", "version": 1, "builder": "hel')
    again = make()
    again.startup()
    again.work()
    again.work()
    assert again.claims == [("hello", rid)] and again.spool.pending("requests") == []
    assert again.spool.corrupted() == []


# ---------------------------------------------------------------- site
def test_the_site_counts_the_queue_from_names_and_reads_only_what_it_shows(make, monkeypatch):
    sp = make().spool
    ids = [request(sp, "hello") for _ in range(50)]
    old = legacy_request(sp, "elsewhere")
    source = Source(State(os.path.join(os.path.dirname(sp.root), "state")), sp)
    source.fed = True
    opened = reads(monkeypatch)
    q = source.queued(5)
    assert {b: (n, [r["id"] for r in reqs]) for b, (n, reqs) in q.items()} == \
        {"hello": (50, ids[:5]), "elsewhere": (1, [old])}
    assert len(opened) == 6            # the five shown, and the untagged one (for its builder)
    del opened[:]
    source.queued(5)
    assert opened == []
    # Events keep it current: a request claimed, one queued; a pass reads the one that moved up.
    assert sp.claim(ids[0], "w1") is not None
    source.queue.discard(ids[0])
    new = request(sp, "hello")
    source.queue.add(new)
    q = source.queued(5)
    assert q["hello"][0] == 50 and [r["id"] for r in q["hello"][1]] == ids[1:6]
    assert [os.path.basename(p) for p in opened] == [ids[5]]


def test_the_watcher_says_what_arrived_and_what_left(tmp_path):
    from buildunits import watch
    new, out = tmp_path / "new", tmp_path / "active"
    new.mkdir()
    out.mkdir()
    seen = []
    w = watch.Watcher([str(new)], lambda path, present: seen.append((os.path.basename(path), present)))
    try:
        (tmp_path / "tmp-r").write_text("{}")
        os.rename(tmp_path / "tmp-r", new / "r")         # a delivery
        os.rename(new / "r", out / "r")                  # a claim
        harness.wait_for(lambda: ("r", False) in seen, timeout=10, what="the claim's event")
        assert seen.index(("r", True)) < seen.index(("r", False))
    finally:
        w.stop()
