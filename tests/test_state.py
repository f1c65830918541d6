"""state: build numbers that never repeat, and the daemons' state records."""

import os
import threading

import pytest

from buildunits import records, state as statemod
from buildunits.state import State


@pytest.fixture
def state(tmp_path):
    s = State(str(tmp_path / "state"))
    s.ensure()
    return s


def hint_path(state, builder):
    return os.path.join(state.builder_dir(builder), "next.json")


def test_ensure_layout(state):
    for d in ("builds", "poller", "scheduler", "workers", "work"):
        assert os.path.isdir(state.path(d))


def test_allocate_gives_1_2_3_per_builder(state):
    assert [state.allocate_number("hello") for _ in range(3)] == [1, 2, 3]
    assert state.allocate_number("other") == 1
    assert state.build_numbers("hello") == [1, 2, 3]
    assert state.builders() == ["hello", "other"]
    assert records.read(hint_path(state, "hello"), "counter")["next"] == 4


def test_numbers_never_repeat_when_the_hint_is_deleted(state):
    for _ in range(3):
        state.allocate_number("hello")
    os.unlink(hint_path(state, "hello"))
    assert state.allocate_number("hello") == 4


@pytest.mark.parametrize("content", [
    b"", b"garbage", b'{"format": "counter", "version": 1, "next": ', b'{"format": "counter", "version": 1}\n',
    b'{"format": "counter", "version": 1, "next": "7"}\n', b'{"format": "counter", "version": 1, "next": 0}\n',
    b'{"format": "counter", "version": 1, "next": -5}\n', b'{"format": "build", "version": 1, "next": 1}\n',
    b'[1]\n', b'\xff\xfe',
])
def test_numbers_never_repeat_when_the_hint_is_corrupt(state, content):
    for _ in range(3):
        state.allocate_number("hello")
    with open(hint_path(state, "hello"), "wb") as f:
        f.write(content)
    assert state.allocate_number("hello") == 4
    assert state.allocate_number("hello") == 5


def test_numbers_never_repeat_when_the_hint_is_set_back(state):
    for _ in range(5):
        state.allocate_number("hello")
    records.write(hint_path(state, "hello"), "counter", {"next": 2})
    assert state.allocate_number("hello") == 6
    assert state.build_numbers("hello") == [1, 2, 3, 4, 5, 6]


def test_a_leftover_empty_number_directory_is_skipped(state):
    # A crash after mkdir and before build.json: a gap, never a repeat.
    assert state.allocate_number("hello") == 1
    os.mkdir(os.path.join(state.builder_dir("hello"), "2"))
    assert state.allocate_number("hello") == 3
    assert state.read_build("hello", 2) is None
    # Even with the hint gone, the empty directory still counts as taken.
    os.unlink(hint_path(state, "hello"))
    assert state.allocate_number("hello") == 4


def test_hint_ahead_leaves_a_gap_not_a_repeat(state):
    state.allocate_number("hello")
    records.write(hint_path(state, "hello"), "counter", {"next": 10})
    assert state.allocate_number("hello") == 10


def test_concurrent_allocation_never_repeats(state):
    got = []
    lock = threading.Lock()

    def take():
        mine = State(state.root)  # as another process would
        for _ in range(10):
            n = mine.allocate_number("hello")
            with lock:
                got.append(n)

    threads = [threading.Thread(target=take) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 60 and len(set(got)) == 60
    assert state.build_numbers("hello") == sorted(got)


def test_build_numbers_ignore_other_names(state):
    state.allocate_number("hello")
    bdir = state.builder_dir("hello")
    for n in ("007", "x", ".5", "5.tmp"):
        os.mkdir(os.path.join(bdir, n))
    assert state.build_numbers("hello") == [1]
    assert state.build_numbers("nobody") == []


@pytest.mark.parametrize("value", [True, False, 2 ** 32, 2 ** 40, 4.0, None, [4]])
def test_a_counter_that_is_not_a_build_number_is_treated_as_missing(state, value):
    # {"next": true} made a directory builds/hello/True; past 2**32 a number
    # no longer fits the uint32 of the D-Bus signals.
    for _ in range(3):
        state.allocate_number("hello")
    records.write(hint_path(state, "hello"), "counter", {"next": value})
    assert state.recent_numbers("hello", 2) == [2, 3]
    assert state.allocate_number("hello") == 4
    assert sorted(os.listdir(state.builder_dir("hello"))) == ["1", "2", "3", "4", "next.json"]
    assert records.read(hint_path(state, "hello"), "counter")["next"] == 5
    records.write(hint_path(state, "hello"), "counter", {"next": value})
    assert state.read_counter("hello") is None


def test_only_canonical_decimal_names_are_builds(state):
    state.allocate_number("hello")
    bdir = state.builder_dir("hello")
    for n in ("True", "0", "00", "+2", "-3", " 4", "5\n", "\u00b2", "\u0661", "\uff17", "4294967296", "99999999999"):
        os.mkdir(os.path.join(bdir, n))
    os.mkdir(os.path.join(bdir, "4294967295"))
    assert state.build_numbers("hello") == [1, 4294967295]
    assert [statemod.parse_number(n) for n in ("1", "10", "4294967295", "4294967296", "01", "\u0661", "True")] \
        == [1, 10, 4294967295, None, None, None, None]


def test_build_numbers_stop_below_2_to_the_32(state):
    os.makedirs(state.build_dir("hello", 2 ** 32 - 2))
    records.write(hint_path(state, "hello"), "counter", {"next": 2 ** 32 - 2})
    assert state.allocate_number("hello") == 2 ** 32 - 1
    with pytest.raises(statemod.NumbersExhausted, match="every build number up to 4294967295"):
        state.allocate_number("hello")
    os.unlink(hint_path(state, "hello"))
    with pytest.raises(statemod.NumbersExhausted):
        state.allocate_number("hello")
    assert state.build_numbers("hello") == [2 ** 32 - 2, 2 ** 32 - 1]
    assert state.recent_numbers("hello", 5) == [2 ** 32 - 2, 2 ** 32 - 1]


def test_build_record_round_trip_keeps_unknown_keys(state):
    n = state.allocate_number("hello")
    rec = {"builder": "hello", "number": n, "result": "success", "steps": [{"name": "compile"}],
           "added_by_a_newer_release": [1, 2]}
    state.write_build(rec)
    got = state.read_build("hello", n)
    assert got["format"] == "build" and got["version"] == records.FORMATS["build"]
    assert {k: got[k] for k in rec} == rec
    got["result"] = "failure"
    state.write_build(got)
    assert state.read_build("hello", n)["added_by_a_newer_release"] == [1, 2]
    assert state.read_build("hello", n)["result"] == "failure"
    assert state.read_build("hello", 99) is None


def test_a_finished_build_record_is_never_rewritten(state):
    from buildunits.state import FinishedBuild
    n = state.allocate_number("hello")
    running = {"builder": "hello", "number": n, "state": "running", "result": None, "steps": []}
    state.write_build(running, durable=False)
    state.write_build(dict(running, reason="progress"), durable=False)
    state.write_build(dict(running, state="finished", result="retry"))
    with open(state.build_path("hello", n), "rb") as f:
        committed = f.read()
    for rec in (dict(running, state="finished", result="success"), running):
        with pytest.raises(FinishedBuild):
            state.write_build(rec)
    with open(state.build_path("hello", n), "rb") as f:
        assert f.read() == committed


def test_a_running_build_is_read_with_its_progress_lines(state):
    n = state.allocate_number("hello")
    steps = [{"name": "a", "state": "pending", "result": None}, {"name": "b", "state": "pending", "result": None}]
    state.write_build({"builder": "hello", "number": n, "state": "running", "result": None, "steps": steps,
                       "revision": ""}, durable=False)
    state.start_progress("hello", n)
    state.append_progress("hello", n, 0, {"state": "running", "started": 1.0, "name": "not settable"})
    state.append_progress("hello", n, 0, {"state": "finished", "result": "success"}, {"revision": "abc"})
    state.append_progress("hello", n, 7, {"state": "running"})            # no such step: ignored
    rec = state.read_build("hello", n)
    assert rec["steps"][0] == {"name": "a", "state": "finished", "result": "success", "started": 1.0}
    assert rec["steps"][1]["state"] == "pending" and rec["revision"] == "abc"
    # A torn last line (a crash while it was written) is ignored, and so is
    # everything after a line that does not parse.
    with open(state.progress_path("hello", n), "ab") as f:
        f.write(b'{"step":1,"set":{"state":"running"}}\n{"step":1,"set":{"state":"fini')
    assert state.read_build("hello", n)["steps"][1]["state"] == "running"
    with open(state.progress_path("hello", n), "ab") as f:
        f.write(b'\n{"step":1,"set":{"result":"failure"}}\n')
    assert state.read_build("hello", n)["steps"][1]["result"] is None
    # A progress file of another build is not applied.
    m = state.allocate_number("hello")
    state.write_build({"builder": "hello", "number": m, "state": "running", "steps": [{"name": "a"}]})
    with open(state.progress_path("hello", n), "rb") as src, open(state.progress_path("hello", m), "wb") as dst:
        dst.write(src.read())
    assert state.read_build("hello", m)["steps"] == [{"name": "a"}]
    # The final record is the whole build: the progress file goes, and a
    # leftover one beside a finished record is ignored.
    final = dict(state.read_build("hello", n), state="finished", result="success")
    state.write_build(final)
    assert not os.path.exists(state.progress_path("hello", n))
    state.start_progress("hello", n)
    state.append_progress("hello", n, 0, {"result": "failure"})
    assert state.read_build("hello", n)["steps"][0]["result"] == "success"


def test_log_paths(state):
    assert state.log_name(1, "compile") == "01-compile.log"
    assert state.log_path("hello", 4, 12, "test") == os.path.join(state.build_dir("hello", 4), "12-test.log")


def test_poller_record_round_trip(state):
    repo = "/srv/git/hello.git"
    assert state.read_poller(repo) is None
    refs = {"refs/heads/main": "a" * 40, "refs/heads/release-1": "b" * 40}
    state.write_poller(repo, refs, extra={"last_poll": 1700000000.0})
    rec = state.read_poller(repo)
    assert rec["format"] == "poller" and rec["repository"] == repo and rec["refs"] == refs
    assert rec["last_poll"] == 1700000000.0
    # extra cannot override the repository or refs
    state.write_poller(repo, {}, extra={"repository": "other", "refs": {"x": "y"}})
    rec = state.read_poller(repo)
    assert rec["repository"] == repo and rec["refs"] == {}


def test_poller_paths_are_distinct_and_safe(state):
    repos = ["/srv/git/hello.git", "/srv/git/hello.git/", "https://example.org/hello.git",
             "/srv/git/../../etc/passwd", "git@host:x/y.git", "/" + "a" * 300]
    paths = [state.poller_path(r) for r in repos]
    assert len(set(paths)) == len(repos)
    for p in paths:
        assert os.path.dirname(p) == state.path("poller")
        assert len(os.path.basename(p)) < 100
    for r in repos:
        state.write_poller(r, {"refs/heads/main": "c" * 40})
        assert state.read_poller(r)["repository"] == r


def test_corrupt_poller_record_raises(state):
    repo = "/srv/git/hello.git"
    with open(state.poller_path(repo), "wb") as f:
        f.write(b'{"format": "poller", "vers')
    with pytest.raises(records.RecordError):
        state.read_poller(repo)


def test_scheduler_record_round_trip(state):
    assert state.read_scheduler("hello") is None
    rec = {"builder": "hello", "pending": [{"id": "1.2.3.abc", "branch": "main"}], "future": True}
    state.write_scheduler("hello", rec)
    got = state.read_scheduler("hello")
    assert got["format"] == "scheduler"
    assert {k: got[k] for k in rec} == rec


def test_worker_record_round_trip_and_clear(state):
    assert state.read_worker("w1") is None and state.workers() == []
    state.write_worker("w1", {"request": "1.2.3.abc", "builder": "hello", "number": 3, "pid": 42})
    state.write_worker("w2", {})
    assert state.workers() == ["w1", "w2"]
    got = state.read_worker("w1")
    assert got["format"] == "worker" and got["number"] == 3 and got["pid"] == 42
    state.clear_worker("w1")
    state.clear_worker("w1")  # harmless
    assert state.read_worker("w1") is None and state.workers() == ["w2"]
    assert state.work_dir("w2", "hello") == state.path("work", "w2", "hello")


def test_recent_numbers_without_listing_history(tmp_path):
    st = State(str(tmp_path))
    st.ensure()
    for _ in range(30):
        st.allocate_number("b")
    os.rmdir(st.build_dir("b", 27))                       # a gap
    expected = [n for n in range(1, 31) if n != 27][-5:]
    assert st.recent_numbers("b", 5) == expected == st.build_numbers("b")[-5:]
    # A hint left behind by a crash after the mkdir: the newest is still found.
    os.mkdir(st.build_dir("b", 31))
    assert st.recent_numbers("b", 3) == [29, 30, 31]
    # No hint: the directory is listed.
    os.unlink(os.path.join(st.builder_dir("b"), "next.json"))
    assert st.recent_numbers("b", 3) == [29, 30, 31]
    assert st.recent_numbers("nobody", 3) == []
