"""spool: delivery, claims, hand-back, corrupt/, hints and the tmp/ sweep.

Also checks the state table in spool.py's docstring against the files that
actually exist at each step.
"""

import os
import threading
import time

import pytest

from buildunits import fsutil, records, spool as spoolmod
from buildunits.spool import Spool


@pytest.fixture
def spool(tmp_path):
    s = Spool(str(tmp_path / "spool"))
    s.ensure()
    return s


def files(spool):
    """Every file under the spool, as relative paths (the qmail-style state)."""
    out = set()
    for d, _dirs, names in os.walk(spool.root):
        for n in names:
            out.add(os.path.relpath(os.path.join(d, n), spool.root))
    return out


CHANGE = {"repository": "/srv/git/hello.git", "branch": "main", "revision": "a" * 40}


def test_ensure_makes_the_layout_and_is_idempotent(spool):
    spool.ensure()
    for d in ("changes/tmp", "changes/new", "requests/tmp", "requests/new", "requests/active",
              "hints", "corrupt"):
        assert os.path.isdir(spool.path(d)), d
    assert spool.watch_dirs("changes", "requests", "hints") == [
        spool.path("changes", "new"), spool.path("requests", "new"), spool.path("hints")]


def test_ids_are_unique_valid_and_sort_by_time():
    ids = [spoolmod.new_id() for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(spoolmod.valid_id(i) for i in ids)
    assert ids == sorted(ids)
    for bad in ("", ".hidden.1.2.3", "x.1.2.3", "1.2.3", "1/2.3.4.5", "1.2.3.4.5", "stray",
                ids[0] + "\n", "\n" + ids[0], "\u00b2.1.1.abc", "1.2.3.a b", "1.2.3.", "1..3.abc"):
        assert not spoolmod.valid_id(bad), bad


def test_deliver_pending_read_remove(spool):
    a = spool.deliver("changes", "change", CHANGE)
    b = spool.deliver("changes", "force", {"builder": "hello", "reason": "because"})
    assert files(spool) == {"changes/new/" + a, "changes/new/" + b}  # C2 for both, nothing in tmp/
    assert spool.pending("changes") == [a, b]
    rec = spool.read("changes", a)
    assert rec["format"] == "change" and rec["id"] == a
    assert rec["revision"] == "a" * 40 and isinstance(rec["queued"], float)
    assert spool.read("changes", b)["format"] == "force"
    spool.remove("changes", a)  # C3
    assert spool.pending("changes") == [b]
    assert spool.read("changes", a) is None
    spool.remove("changes", a)  # twice is harmless
    assert spool.pending("requests") == []


def test_deliver_keeps_a_given_queued_time_and_refuses_wrong_queue(spool):
    rid = spool.deliver("requests", "request", {"builder": "hello", "queued": 5.0})
    assert spool.read("requests", rid)["queued"] == 5.0
    with pytest.raises(ValueError):
        spool.deliver("requests", "change", CHANGE)
    with pytest.raises(ValueError):
        spool.deliver("changes", "request", {})
    assert files(spool) == {"requests/new/" + rid}


def test_pending_is_oldest_first_across_many(spool):
    ids = [spool.deliver("requests", "request", {"builder": "b", "i": i}) for i in range(30)]
    assert spool.pending("requests") == ids
    assert [spool.read("requests", r)["i"] for r in spool.pending("requests")] == list(range(30))


def test_claim_unclaim_finish_follow_the_state_table(spool):
    rid = spool.deliver("requests", "request", {"builder": "hello"})
    assert files(spool) == {"requests/new/" + rid}                      # R2
    rec = spool.claim(rid, "w1")
    assert rec["id"] == rid
    assert files(spool) == {"requests/active/w1/" + rid}                # R3
    assert spool.pending("requests") == []
    assert spool.claimed("w1") == [rid]
    assert spool.all_claimed() == {"w1": [rid]}
    assert spool.read_claimed("w1", rid)["builder"] == "hello"
    assert spool.unclaim("w1", rid) is True                             # R3 -> R2
    assert files(spool) == {"requests/new/" + rid}
    assert spool.unclaim("w1", rid) is False
    assert spool.claim(rid, "w2")["id"] == rid
    spool.finish("w2", rid)                                             # R4
    assert files(spool) == set()
    assert spool.all_claimed() == {}
    spool.finish("w2", rid)  # harmless


def test_two_claims_of_one_request_exactly_one_wins(spool):
    rid = spool.deliver("requests", "request", {"builder": "hello"})
    assert spool.claim(rid, "w1") is not None
    assert spool.claim(rid, "w2") is None
    assert spool.all_claimed() == {"w1": [rid]}


def test_racing_claims_exactly_one_wins(tmp_path):
    for _round in range(20):
        s = Spool(str(tmp_path / ("spool%d" % _round)))
        s.ensure()
        rid = s.deliver("requests", "request", {"builder": "hello"})
        won = []
        go = threading.Barrier(8)

        def claimer(w):
            # Separate Spool objects, as separate runner processes would have.
            mine = Spool(s.root)
            go.wait()
            if mine.claim(rid, w) is not None:
                won.append(w)

        threads = [threading.Thread(target=claimer, args=("w%d" % i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, won
        assert s.all_claimed() == {won[0]: [rid]}


def test_claim_of_missing_request_is_none(spool):
    assert spool.claim("1.2.3.abc", "w1") is None


def _corrupt_reason(spool, name):
    with open(spool.path("corrupt", name + ".reason"), encoding="utf-8") as f:
        return f.read()


def test_garbage_in_new_goes_to_corrupt_with_reason(spool):
    good = spool.deliver("changes", "change", CHANGE)
    bad = spoolmod.new_id()
    with open(spool.path("changes", "new", bad), "wb") as f:
        f.write(b"\x00\x01 this is no record")
    seen = []
    spool.on_corrupt = lambda path, dest, reason: seen.append((path, dest, reason))
    assert spool.pending("changes") == [good, bad]  # by name it looks fine...
    assert spool.read("changes", bad) is None      # ...reading finds it broken
    assert spool.pending("changes") == [good]
    assert os.path.exists(spool.path("corrupt", "changes." + bad))
    reason = _corrupt_reason(spool, "changes." + bad)
    assert reason.startswith("not a record")
    assert "from: " + spool.path("changes", "new", bad) in reason
    assert spool.corrupted() == [("changes." + bad, reason.splitlines()[0])]
    assert seen == [(spool.path("changes", "new", bad), spool.path("corrupt", "changes." + bad),
                     reason.splitlines()[0])]
    assert spool.read("changes", good)["id"] == good


def test_torn_record_goes_to_corrupt(spool):
    rid = spool.deliver("requests", "request", {"builder": "hello", "steps": ["a", "b"]})
    p = spool.path("requests", "new", rid)
    with open(p, "rb") as f:
        data = f.read()
    with open(p, "wb") as f:
        f.write(data[: len(data) // 2])
    assert spool.claim(rid, "w1") is None  # claimed by rename, then found torn
    assert spool.claimed("w1") == []
    name = "requests." + rid
    assert os.path.exists(spool.path("corrupt", name))
    with open(spool.path("corrupt", name), "rb") as f:
        assert f.read() == data[: len(data) // 2]  # kept as it was, for a human
    assert spool.corrupted()[0][0] == name


def test_wrong_format_in_a_queue_goes_to_corrupt(spool):
    rid = spoolmod.new_id()
    with open(spool.path("changes", "new", rid), "wb") as f:
        f.write(records.encode("build", {"builder": "x"}))
    assert spool.read("changes", rid) is None
    assert "format 'build'" in spool.corrupted()[0][1]


def test_stray_names_go_to_corrupt_hidden_names_are_left(spool):
    with open(spool.path("changes", "new", "README"), "w") as f:
        f.write("not a spool entry")
    with open(spool.path("changes", "new", ".editor-swap"), "w") as f:
        f.write("hidden")
    rid = spool.deliver("changes", "change", CHANGE)
    assert spool.pending("changes") == [rid]
    assert spool.corrupted() == [("changes.README", "file name is not a spool id")]
    assert os.path.exists(spool.path("changes", "new", ".editor-swap"))


def test_corrupt_never_overwrites_an_earlier_corrupt_file(spool):
    for content in (b"first", b"second"):
        with open(spool.path("changes", "new", "junk"), "wb") as f:
            f.write(content)
        spool.pending("changes")
    kept = sorted(n for n, _ in spool.corrupted())
    assert len(kept) == 2 and kept[0] == "changes.junk"
    contents = set()
    for n in kept:
        with open(spool.path("corrupt", n), "rb") as f:
            contents.add(f.read())
    assert contents == {b"first", b"second"}


def test_corrupt_of_a_vanished_file_leaves_no_reason(spool):
    assert spool.corrupt(spool.path("changes", "new", "gone"), "changes", "why") is None
    assert os.listdir(spool.path("corrupt")) == []


def test_hints(spool):
    spool.hint("hello", 3)
    spool.hint("hello", 3)  # idempotent
    spool.hint("my@builder", 12)
    with open(spool.path("hints", "junk"), "w"):
        pass
    assert sorted(spool.take_hints()) == [("hello", 3), ("my@builder", 12)]
    assert spool.take_hints() == []
    assert os.listdir(spool.path("hints")) == []  # junk is taken away too


def test_an_id_with_a_trailing_newline_goes_to_corrupt(spool):
    rid = spool.deliver("changes", "change", CHANGE)
    os.rename(spool.path("changes", "new", rid), spool.path("changes", "new", rid + "\n"))
    assert spool.pending("changes") == []
    [(name, reason)] = spool.corrupted()
    assert name == "changes." + rid + "\n" and reason == "file name is not a spool id"


def test_hint_and_cancel_names_that_are_not_build_numbers_are_ignored(spool):
    # "²".isdigit() is true but int("²") raises: one such name failed every pass.
    for name in ("hello@\u00b2", "hello@\u0661", "hello@007", "hello@True", "hello@4294967296"):
        with open(spool.path("hints", name), "w"):
            pass
        with open(spool.path("cancel", name), "w") as f:
            f.write('{"format": "cancel", "version": 1, "builder": "hello", "number": 1}\n')
    spool.hint("hello", 4294967295)
    spool.request_cancel("hello", 2, "ann", "wrong branch")
    assert spool.take_hints() == [("hello", 4294967295)]
    assert list(spool.cancel_requests()) == [("hello", 2)]


def test_hint_without_directory_is_quiet(tmp_path):
    s = Spool(str(tmp_path / "nothing"))
    s.hint("hello", 1)  # best effort: no exception
    assert s.take_hints() == []
    assert s.pending("changes") == [] and s.all_claimed() == {} and s.corrupted() == []


def _age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_sweep_removes_old_tmp_files_only(spool):
    # A crashed writer (C1/R1) left these; a live writer's file is young.
    dead = spool.path("changes", "tmp", spoolmod.new_id())
    live = spool.path("requests", "tmp", spoolmod.new_id())
    for p in (dead, live):
        fsutil.write_new(p, b'{"format": "change"')
    _age(dead, fsutil.TMP_SWEEP_AGE_SEC + 10)
    queued = spool.deliver("changes", "change", CHANGE)
    _age(spool.path("changes", "new", queued), fsutil.TMP_SWEEP_AGE_SEC + 10)
    assert spool.sweep(dry_run=True) == [dead]
    assert os.path.exists(dead)
    assert spool.sweep() == [dead]
    assert not os.path.exists(dead) and os.path.exists(live)
    assert spool.pending("changes") == [queued]  # committed records are never swept


def test_sweep_keeps_old_corrupt_files(spool):
    rid = spoolmod.new_id()
    with open(spool.path("changes", "new", rid), "wb") as f:
        f.write(b"garbage")
    spool.read("changes", rid)
    for n in os.listdir(spool.path("corrupt")):
        _age(spool.path("corrupt", n), fsutil.TMP_SWEEP_AGE_SEC + 10)
    assert spool.sweep() == []
    assert len(spool.corrupted()) == 1


def test_sweep_never_deletes_a_corrupt_file_whatever_its_name(spool):
    with open(spool.path("changes", "new", "hook.tmp-1"), "wb") as f:
        f.write(b"half a change from a broken hook")
    spool.pending("changes")
    assert [n for n, _ in spool.corrupted()] == ["changes.hook.tmp-1"]
    for n in os.listdir(spool.path("corrupt")):
        _age(spool.path("corrupt", n), fsutil.TMP_SWEEP_AGE_SEC + 10)
    spool.sweep()
    assert [n for n, _ in spool.corrupted()] == ["changes.hook.tmp-1"]


def test_a_stray_file_in_requests_active_is_not_a_worker(tmp_path):
    sp = spoolmod.Spool(str(tmp_path / "spool"))
    sp.ensure()
    for name in (".keep", "stray-file"):
        open(sp.path("requests", "active", name), "w").close()
    assert sp.all_claimed() == {}
    assert sp.claimed("stray-file") == []
