"""buildunits-scheduler, in-process: change and force records in
SPOOL/changes/new become build requests in SPOOL/requests/new.

Each test builds a Scheduler over temporary directories (no bus, a
notifier that records what it would send), delivers records to its inbox
as the poller and `buildunits force` do, runs one pass (work()) and checks
the requests, the spool and the status line.  Time is driven through the
records' `queued` times and the scheduler's clock, never by waiting.
"""

import os
import time
import types

import pytest
from gi.repository import GLib

import harness
from support import inprocess
from support.inprocess import RecordingNotifier
from buildunits import config, paths, scheduler, spool as spoolmod
from buildunits.bus import NoBus

REPO = "/srv/git/hello.git"
OTHER = "/srv/git/other.git"




@pytest.fixture
def logged(monkeypatch):
    """The daemon's log lines, as plain text."""
    return inprocess.capture_log(monkeypatch)


def builder(repository=REPO, branches="*", tree_stable="0"):
    return ("[Builder]\nRepository=%s\nBranches=%s\nTreeStableSec=%s\n[Step s]\nCommand=true\n"
            % (repository, branches, tree_stable))


def dirs(tmp_path):
    return paths.Dirs(config=str(tmp_path / "config"), spool=str(tmp_path / "spool"),
                      state=str(tmp_path / "state"), site=str(tmp_path / "site"))


def make_scheduler(tmp_path, builders=None):
    d = dirs(tmp_path)
    os.makedirs(os.path.join(d.config, "builders"), exist_ok=True)
    for name, text in (builders or {}).items():
        with open(os.path.join(d.config, "builders", name + ".builder"), "w") as f:
            f.write(text)
    s = scheduler.Scheduler(d, config.load(d.config), NoBus(), RecordingNotifier())
    s.spool.ensure()
    s.state.ensure()
    return s


@pytest.fixture
def cleanup():
    made = []
    yield made.append
    for s in made:
        s.stopping = True
        if s._timer is not None:
            s._timer.remove()
    ctx = GLib.MainContext.default()
    while ctx.iteration(False):
        pass


def rev(n):
    return ("%x" % n).rjust(40, "a")


def change(s, revision, branch="main", repository=REPO, queued=None, **extra):
    fields = {"source": "poller", "repository": repository, "branch": branch, "revision": revision,
              "author": "Ann <ann@example.org>", "when": 1.0, "message": "m " + revision[-4:], "files": []}
    if queued is not None:
        fields["queued"] = queued
    fields.update(extra)
    return s.spool.deliver("changes", "change", fields)


def remembered(s, name):
    """The change ids a restarted scheduler counts as consumed by NAME."""
    again = scheduler.Scheduler(s.dirs, s.cfg, NoBus(), RecordingNotifier())
    again.startup()
    return again.state.read_scheduler(name)["consumed"]


def requests(s):
    return [s.spool.read("requests", rid) for rid in s.spool.pending("requests")]


def test_a_change_becomes_a_request_for_each_builder_that_wants_it(tmp_path, logged):
    s = make_scheduler(tmp_path, {"all": builder(), "main-only": builder(branches="main"),
                                  "releases": builder(branches="release/*"), "other": builder(OTHER)})
    cid = change(s, rev(1))
    s._do_work()                                    # a wake's pass: work(), then STATUS=
    reqs = requests(s)
    assert sorted(r["builder"] for r in reqs) == ["all", "main-only"]
    for r in reqs:
        assert (r["repository"], r["branch"], r["revision"]) == (REPO, "main", rev(1))
        assert r["reason"] == "change %s on main" % rev(1)[:12]
        assert [c["id"] for c in r["changes"]] == [cid] and r["changes"][0]["author"] == "Ann <ann@example.org>"
        assert r["force"] is None
    assert s.spool.pending("changes") == []                         # consumed by all: removed
    assert "all: build requested for main %s (change %s on main)" % (rev(1)[:12], rev(1)[:12]) in logged()
    assert remembered(s, "all") == [cid]
    assert s.notifier.sent[-1] == "STATUS=2 requests made; 0 changes waiting for a stable tree"
    change(s, rev(2), branch="release/1")
    s.work()
    assert [(r["builder"], r["revision"]) for r in requests(s)[2:]] == [("all", rev(2)), ("releases", rev(2))]


def test_a_change_no_builder_wants_leaves_the_spool(tmp_path):
    s = make_scheduler(tmp_path, {"main-only": builder(branches="main")})
    change(s, rev(1), branch="feature")
    change(s, rev(2), repository=OTHER)
    s.work()
    assert requests(s) == [] and s.spool.pending("changes") == []


def test_tree_stable_changes_wait_then_become_one_request_for_the_newest(tmp_path, monkeypatch, cleanup):
    s = make_scheduler(tmp_path, {"slow": builder(tree_stable="60"), "fast": builder()})
    cleanup(s)
    now = time.time()
    ids = [change(s, rev(1), queued=now - 30), change(s, rev(2), queued=now - 20)]
    s.work()
    assert [r["builder"] for r in requests(s)] == ["fast", "fast"]
    assert s.spool.pending("changes") == ids                        # still the only copy
    assert s.status_text() == "2 requests made; 2 changes waiting for a stable tree"
    assert s._timer is not None and 39 <= s._timer.seconds <= 41     # due 60s after the newest
    # A restarted scheduler keeps the window: it is measured from `queued`.
    s2 = make_scheduler(tmp_path)
    cleanup(s2)
    s2.startup()
    s2.work()
    assert len(requests(s2)) == 2 and s2._timer is not None
    monkeypatch.setattr(scheduler, "time", types.SimpleNamespace(time=lambda: now + 41))
    s2.work()
    [r] = [r for r in requests(s2) if r["builder"] == "slow"]
    assert (r["revision"], r["reason"]) == (rev(2), "2 changes on main")
    assert [c["id"] for c in r["changes"]] == ids
    assert s2.spool.pending("changes") == [] and s2._timer is None
    assert s2.status_text() == "1 requests made; 0 changes waiting for a stable tree"
    s2.work()
    assert len(requests(s2)) == 3                                   # once


def test_the_tree_stable_timer_wakes_the_scheduler(tmp_path, cleanup):
    s = make_scheduler(tmp_path, {"slow": builder(tree_stable="60")})
    cleanup(s)
    change(s, rev(1), queued=time.time() - 59.95)
    s.work()
    assert requests(s) == [] and s._timer is not None
    ctx = GLib.MainContext.default()
    deadline = time.monotonic() + harness.scaled(5)
    while not s.spool.pending("requests") and time.monotonic() < deadline:
        ctx.iteration(True)
    [r] = requests(s)
    assert r["builder"] == "slow" and r["revision"] == rev(1)


def test_a_revision_already_requested_is_dropped(tmp_path, logged):
    s = make_scheduler(tmp_path, {"hello": builder()})
    change(s, rev(1))
    s.work()
    again = change(s, rev(1), source="sendchange")                  # a hook reports it too
    s.work()
    assert len(requests(s)) == 1
    assert s.spool.pending("changes") == []
    assert "hello: main %s already requested; change %s dropped" % (rev(1)[:12], again) in logged()
    assert again in remembered(s, "hello")
    change(s, rev(1), branch="other")                               # another branch is another build
    s.work()
    assert [(r["branch"], r["revision"]) for r in requests(s)] == [("main", rev(1)), ("other", rev(1))]


def test_the_same_revision_twice_in_one_window_is_one_change(tmp_path, cleanup):
    s = make_scheduler(tmp_path, {"slow": builder(tree_stable="60")})
    cleanup(s)
    first, second = change(s, rev(1), queued=time.time() - 100), change(s, rev(1), queued=time.time() - 100)
    s.work()
    [r] = requests(s)
    assert [c["id"] for c in r["changes"]] == [first]
    assert s.spool.pending("changes") == []
    assert second in remembered(s, "slow")


def test_a_force_record_becomes_a_request(tmp_path, logged):
    s = make_scheduler(tmp_path, {"hello": builder(branches="stable *")})
    fid = s.spool.deliver("changes", "force", {"builder": "hello", "branch": "", "revision": "",
                                               "user": "ann", "reason": "try it", "properties": {"k": "v"}})
    s.work()
    [r] = requests(s)
    assert (r["builder"], r["branch"], r["revision"], r["force"]) == ("hello", "stable", "", fid)
    assert r["reason"] == "forced by ann: try it" and r["properties"] == {"k": "v"} and r["changes"] == []
    assert s.spool.pending("changes") == []
    assert "hello: forced build requested (forced by ann: try it)" in logged()
    s.spool.deliver("changes", "force", {"builder": "hello", "branch": "main", "revision": rev(7)})
    s.work()
    assert [(r["branch"], r["revision"], r["reason"]) for r in requests(s)[1:]] == \
        [("main", rev(7), "forced by someone: no reason given")]


def test_a_rebuild_record_becomes_a_request_saying_what_it_rebuilds(tmp_path, logged):
    s = make_scheduler(tmp_path, {"hello": builder()})
    many = [{"id": "c%d" % i, "revision": rev(i), "branch": "main", "message": "m" * 20000} for i in range(25)]
    s.spool.deliver("changes", "force", {"builder": "hello", "branch": "main", "revision": rev(24), "user": "ann",
                                         "reason": "", "properties": {"k": "v"}, "rebuild_of": 3,
                                         "changes": many + ["not a change"]})
    s.work()
    [r] = requests(s)
    assert (r["rebuild_of"], r["revision"], r["properties"], r["reason"]) == (3, rev(24), {"k": "v"},
                                                                              "rebuild of #3 by ann")
    # Bounded as any request's changes are, whoever wrote the record.
    assert [c["id"] for c in r["changes"]] == ["c%d" % i for i in range(25)] and r["changes_omitted"] == 5
    assert len(r["changes"][-1]["message"]) < 17000
    assert "hello: forced build requested (rebuild of #3 by ann)" in logged()


@pytest.mark.parametrize("bad", [True, "3", 0, 2 ** 32, None])
def test_a_force_whose_rebuild_of_is_not_a_build_number_is_a_plain_force(tmp_path, bad):
    s = make_scheduler(tmp_path, {"hello": builder()})
    s.spool.deliver("changes", "force", {"builder": "hello", "branch": "main", "revision": rev(1),
                                         "rebuild_of": bad, "changes": [{"id": "c", "revision": rev(1)}]})
    s.work()
    [r] = requests(s)
    assert "rebuild_of" not in r and r["changes"] == [] and r["reason"].startswith("forced by ")


def test_a_force_of_an_unknown_builder_goes_to_corrupt(tmp_path):
    s = make_scheduler(tmp_path, {"hello": builder()})
    fid = s.spool.deliver("changes", "force", {"builder": "nobody"})
    s.work()
    assert requests(s) == [] and s.spool.pending("changes") == []
    assert ("changes." + fid, "forced build of unknown builder 'nobody'") in s.spool.corrupted()


@pytest.mark.parametrize("bad, why", [
    ("HEAD", "change record whose revision 'HEAD' is not "),
    ("--upload-pack=x", "change record whose revision '--upload-pack=x' is not "),
    (rev(1).upper(), "change record whose revision %r is not " % rev(1).upper()),
])
def test_a_change_with_a_bad_revision_goes_to_corrupt_with_the_reason(tmp_path, bad, why, logged):
    s = make_scheduler(tmp_path, {"hello": builder()})
    cid = change(s, bad)
    good = change(s, rev(2))
    s.work()
    assert [r["revision"] for r in requests(s)] == [rev(2)]           # the next one goes on
    [(name, reason)] = s.spool.corrupted()
    assert name == "changes." + cid and reason.startswith(why)
    assert s.spool.pending("changes") == []
    assert any(line.startswith(os.path.join(s.dirs.spool, "changes", "new", cid) + ": " + why) for line in logged())
    assert good


def test_a_change_without_a_branch_goes_to_corrupt(tmp_path):
    s = make_scheduler(tmp_path, {"hello": builder()})
    change(s, rev(1), branch="")
    s.work()
    assert requests(s) == []
    assert [r for _n, r in s.spool.corrupted()] == ["change record without a valid branch"]


def test_startup_recovers_what_queued_requests_consumed(tmp_path):
    # A crash after a request is delivered but before the memory is written
    # (and before the change leaves the spool): the restarted scheduler
    # must not request it again.
    s = make_scheduler(tmp_path, {"hello": builder()})
    cid = change(s, rev(1))
    s._done = lambda cid: None
    s._work()                                       # deliver only: no memory flush, change stays
    assert len(requests(s)) == 1 and s.spool.pending("changes") == [cid]
    assert s.state.read_scheduler("hello") is None

    s2 = make_scheduler(tmp_path)
    s2.startup()
    assert cid in s2.state.read_scheduler("hello")["consumed"]
    s2.work()
    assert len(requests(s2)) == 1
    assert s2.spool.pending("changes") == []


def test_startup_recovers_from_claimed_requests_too(tmp_path):
    s = make_scheduler(tmp_path, {"hello": builder()})
    cid = change(s, rev(1))
    s._done = lambda cid: None
    s._work()
    [rid] = s.spool.pending("requests")
    s.spool.claim(rid, "w1")
    s2 = make_scheduler(tmp_path)
    s2.startup()
    s2.work()
    assert s2.spool.pending("requests") == [] and s2.spool.pending("changes") == []
    assert list(s2.spool.all_claimed().values()) == [[rid]]


def test_without_recovery_the_change_would_be_requested_twice(tmp_path):
    # The counter-test of the two above: what startup() prevents.
    s = make_scheduler(tmp_path, {"hello": builder()})
    change(s, rev(1))
    s._done = lambda cid: None
    s._work()
    s2 = make_scheduler(tmp_path)
    s2.work()
    assert len(requests(s2)) == 2


def test_one_change_to_many_builders_is_one_journal_line_until_folded(tmp_path, monkeypatch):
    s = make_scheduler(tmp_path, {"b%d" % i: builder() for i in range(5)})
    monkeypatch.setattr(scheduler.consumed, "FOLD_LINES", 3)
    first = change(s, rev(1))
    s.work()
    assert len(requests(s)) == 5
    assert s.state.read_journal() == [(["b0", "b1", "b2", "b3", "b4"], [first], [("main", rev(1))])]
    assert s.state.schedulers() == []                               # no file per builder yet
    for n in (2, 3):
        change(s, rev(n))
        s.work()
    assert s.state.read_journal() == []                             # folded into the files
    assert all(len(s.state.read_scheduler("b%d" % i)["consumed"]) == 3 for i in range(5))


def test_a_torn_journal_line_is_ignored_and_the_requests_recover_it(tmp_path):
    s = make_scheduler(tmp_path, {"hello": builder()})
    cid = change(s, rev(1))
    s._done = lambda cid: None                      # the change stays, as after a crash
    s.work()
    with open(s.state.journal_path(), "ab") as f:
        f.write(b'{"builders": ["hel')                  # a crash in the middle of an append
    s2 = make_scheduler(tmp_path)
    s2.startup()
    assert s2.state.read_journal() == [] and cid in s2.state.read_scheduler("hello")["consumed"]
    s2.work()
    assert len(requests(s2)) == 1 and s2.spool.pending("changes") == []


def test_a_failed_batch_consumes_what_it_delivered(tmp_path, monkeypatch):
    s = make_scheduler(tmp_path, {"b%d" % i: builder() for i in range(3)})
    cid = change(s, rev(1))
    real = os.rename
    calls = []

    def rename(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return real(a, b)
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(spoolmod.Undelivered) as e:
        s.work()
    assert "Input/output error" in str(e.value) and len(e.value.delivered) == 1
    monkeypatch.setattr(os, "rename", real)
    assert [r["builder"] for r in requests(s)] == ["b0"] and os.listdir(s.spool.path("requests", "tmp")) == []
    s.work()                                        # the next pass requests the others, not b0 again
    assert sorted(r["builder"] for r in requests(s)) == ["b0", "b1", "b2"]
    assert s.spool.pending("changes") == [] and cid


def _spoil_queued(s):
    """Overwrite every queued request with bytes no reader accepts: a start
    that opened one would move it to corrupt/."""
    names = s.spool.pending("requests")
    for rid in names:
        with open(s.spool.path("requests", "new", rid), "wb") as f:
            f.write(b"not a record\n")
    return names


def test_startup_does_not_read_the_requests_queued_before_its_mark(tmp_path):
    s = make_scheduler(tmp_path, {"hello": builder(), "other": builder()})
    s.startup()
    cids = [change(s, rev(n)) for n in range(1, 31)]
    s.work()                                        # 60 requests, consumed in the journal
    assert len(s.spool.pending("requests")) == 60
    make_scheduler(tmp_path).startup()              # a restart folds them and sets the mark
    queued = _spoil_queued(s)

    again = make_scheduler(tmp_path)
    again.startup()
    assert again.spool.corrupted() == []            # not one queued request was opened
    assert again.spool.pending("requests") == queued
    # ... and what they consumed is still known: the poller re-sending the
    # same commits after a crash requests nothing.
    for n in range(1, 31):
        change(again, rev(n))
    again.work()
    assert again.spool.pending("requests") == queued and again.spool.pending("changes") == []
    assert set(cids) <= set(again.state.read_scheduler("hello")["consumed"])


def test_a_crash_after_the_mark_is_recovered_from_the_requests_made_since(tmp_path):
    s = make_scheduler(tmp_path, {"hello": builder()})
    s.startup()
    for n in range(1, 11):
        change(s, rev(n))
    s.work()
    make_scheduler(tmp_path).startup()              # folded: the mark is after these ten
    old = _spoil_queued(s)

    crashed = make_scheduler(tmp_path)
    crashed.startup()
    cid = change(crashed, rev(11))
    crashed._done = lambda cid: None
    crashed._work()                                 # delivered, then a crash: no journal line
    [new] = [r for r in crashed.spool.pending("requests") if r not in old]

    s2 = make_scheduler(tmp_path)
    s2.startup()
    assert s2.spool.corrupted() == []               # the old ones unread ...
    assert cid in s2.state.read_scheduler("hello")["consumed"]     # ... the new one read
    s2.work()
    assert s2.spool.pending("requests") == old + [new] and s2.spool.pending("changes") == []


def test_a_clock_set_back_below_the_mark_lowers_it_before_delivering(tmp_path, monkeypatch):
    s = make_scheduler(tmp_path, {"hello": builder()})
    s.startup()
    ahead = spoolmod.now_ns() + 3600 * 10 ** 9
    real = spoolmod.now_ns
    monkeypatch.setattr(spoolmod, "now_ns", lambda: ahead)
    s._fold()                                       # a fold while the clock was an hour ahead
    assert s.state.read_mark() == ahead
    monkeypatch.setattr(spoolmod, "now_ns", real)   # the clock set right again
    cid = change(s, rev(1))
    s._done = lambda cid: None
    s._work()                                       # delivered, then a crash: no journal line
    [rid] = s.spool.pending("requests")
    assert s.state.read_mark() < spoolmod.id_time(rid)

    s2 = make_scheduler(tmp_path)
    s2.startup()
    s2.work()
    assert s2.spool.pending("requests") == [rid] and s2.spool.pending("changes") == []
    assert cid in s2.state.read_scheduler("hello")["consumed"]


def test_an_unreadable_mark_is_quarantined_and_every_request_read(tmp_path):
    s = make_scheduler(tmp_path, {"hello": builder()})
    cid = change(s, rev(1))
    s._done = lambda cid: None
    s._work()                                       # delivered, then a crash: no journal line
    with open(s.state.mark_path(), "wb") as f:
        f.write(b'{"format": "consumed-mark", "version": 1, "through": "soon"}\n')
    s2 = make_scheduler(tmp_path)
    s2.startup()
    assert cid in s2.state.read_scheduler("hello")["consumed"]
    s2.work()
    assert len(requests(s2)) == 1 and s2.spool.pending("changes") == []
    assert [n for n, _r in s2.state.quarantined()] == ["scheduler.consumed.mark"]
