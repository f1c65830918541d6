"""`buildunits fsck`, in process: one test per check of fsck.py, each a
finding as the user sees it, what --repair does about it, and that fsck
is then content.  No daemon runs: every runner is dead unless a test holds
its lock."""

import fcntl
import os

import pytest

from buildunits import cli, fsck, fsutil, spool as spoolmod
from buildunits.spool import Spool
from buildunits.state import State
from support import inprocess

OLD = fsutil.TMP_SWEEP_AGE_SEC + 10


@pytest.fixture
def dirs(tmp_path):
    d = inprocess.dirs(tmp_path)
    inprocess.write_builders(d, {"hello": "[Step s]\nCommand=true\n"})
    Spool(d.spool).ensure()
    State(d.state).ensure()
    return d


@pytest.fixture
def run(dirs, capsys):
    """run(*args) -> (exit status, [output lines]) of `buildunits ... fsck ARGS`."""
    def run(*args):
        argv = ["--config-dir", dirs.config, "--spool-dir", dirs.spool, "--state-dir", dirs.state,
                "--site-dir", dirs.site, "fsck"] + list(args)
        code = cli.main(argv)
        return code, capsys.readouterr().out.splitlines()
    return run


def sp(dirs):
    return Spool(dirs.spool)


def st(dirs):
    return State(dirs.state)


def age(path, seconds=OLD):
    t = os.stat(path, follow_symlinks=False).st_mtime - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def repaired(run, line):
    """LINE is what fsck would repair; --repair does; then all is well."""
    code, out = run()
    assert code == 1 and "would repair: " + line in out, out
    code, out = run("--repair")
    assert code == 0 and "repaired: " + line in out, out
    code, out = run()
    assert code == 0 and not any(line.startswith("would repair") for line in out), out


def noted(run, line):
    code, out = run()
    assert code == 0 and "note: " + line in out, out


def build(dirs, state="finished", result="success"):
    s = st(dirs)
    n = s.allocate_number("hello")
    s.write_build({"builder": "hello", "number": n, "state": state, "result": result if state == "finished" else None,
                   "steps": [{"name": "s", "state": "pending"}], "worker": "w1"})
    return n


# ------------------------------------------------------------------ spool
def test_a_consistent_spool_and_state(run, dirs):
    assert run() == (0, ["fsck: %s and %s are consistent" % (dirs.spool, dirs.state)])


def test_spool_dirs_a_missing_row_is_a_note_that_repair_makes(run, dirs):
    os.rmdir(sp(dirs).path("requests", "cancelled"))
    noted(run, "missing spool directory %s (made when a daemon starts)" % sp(dirs).path("requests", "cancelled"))
    assert run("--repair")[0] == 0 and os.path.isdir(sp(dirs).path("requests", "cancelled"))


def test_spool_tmp_an_abandoned_temp_file(run, dirs):
    p = sp(dirs).path("changes", "tmp", spoolmod.new_id())
    open(p, "w").close()
    age(p)
    repaired(run, "stale temporary file %s (older than %ds)" % (p, fsutil.TMP_SWEEP_AGE_SEC))
    assert not os.path.exists(p)


def test_queued_an_unreadable_change_goes_to_corrupt(run, dirs):
    rid = spoolmod.new_id()
    with open(sp(dirs).path("changes", "new", rid), "w") as f:
        f.write("{")
    repaired(run, "%s: truncated record (no closing brace after 1 bytes)" % sp(dirs).path("changes", "new", rid))
    assert [n for n, _r in sp(dirs).corrupted()] == ["changes." + rid]


def test_claims_of_a_dead_runner_are_handed_back_and_of_a_live_one_kept(run, dirs):
    s = sp(dirs)
    rid = s.deliver("requests", "request", {"builder": "hello"})
    s.claim(rid, "w1")
    lock = st(dirs).lock_path("buildunits-runner", "w1")
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        assert run()[0] == 0                                    # w1 runs: its claim is its own
    repaired(run, "request %s claimed by worker w1, whose runner is not running; it is handed back when "
                  "that runner starts" % rid)
    assert s.pending("requests") == [rid]


def test_cancelled_requests_past_their_age_are_pruned(run, dirs):
    s = sp(dirs)
    rid = s.deliver("requests", "request", {"builder": "hello"})
    s.cancel_queued(rid)
    assert run()[0] == 0
    age(s.path("requests", "cancelled", rid), spoolmod.CANCELLED_KEEP_SEC + 10)
    repaired(run, "cancelled request %s is older than %ds (the scheduler prunes it)"
             % (s.path("requests", "cancelled", rid), spoolmod.CANCELLED_KEEP_SEC))
    assert s.cancelled() == []


def test_cancels_of_a_finished_build_are_cleared_and_unreadable_ones_kept(run, dirs):
    s = sp(dirs)
    n = build(dirs)
    s.request_cancel("hello", n, "root")
    repaired(run, "cancel/hello@%d: hello #%d is finished; the cancellation is no longer needed" % (n, n))
    assert s.cancel_requests() == {}
    with open(s.path("cancel", "hello@9"), "w") as f:
        f.write("not a record")
    code, out = run("--repair")
    assert code == 0 and any(line.startswith("repaired: %s: " % s.path("cancel", "hello@9")) for line in out), out
    assert [n for n, _r in s.corrupted()] == ["cancel.hello@9"]


def test_spool_corrupt_is_listed_and_kept(run, dirs):
    s = sp(dirs)
    with open(s.path("changes", "new", "README"), "w") as f:
        f.write("hello")
    s.pending("changes")
    noted(run, "corrupt/changes.README: file name is not a spool id (kept for inspection)")
    assert os.path.exists(s.path("corrupt", "changes.README"))


# ------------------------------------------------------------------ state
def test_state_dirs_a_missing_row_is_a_note(run, dirs):
    os.rmdir(st(dirs).path("corrupt"))
    noted(run, "missing state directory %s (made when a daemon starts)" % st(dirs).path("corrupt"))


def test_state_tmp_in_a_build_directory(run, dirs):
    n = build(dirs)
    p = os.path.join(st(dirs).build_dir("hello", n), ".build.json.tmp-1-ab")
    open(p, "w").close()
    age(p)
    repaired(run, "stale temporary file %s (older than %ds)" % (p, fsutil.TMP_SWEEP_AGE_SEC))


def test_workers_an_unreadable_pointer_is_quarantined_a_stale_one_cleared(run, dirs):
    s = st(dirs)
    with open(s.worker_path("w1"), "w") as f:
        f.write("{")
    code, out = run("--repair")
    assert code == 0 and "repaired: %s: truncated record (no closing brace after 1 bytes) (quarantined: the " \
        "runner ignores it)" % s.worker_path("w1") in out, out
    assert [n for n, _r in s.quarantined()] == ["workers.w1.json"]
    s.write_worker("w1", {"request": spoolmod.new_id(), "builder": "hello", "number": 1})
    repaired(run, "worker w1's pointer names request %s, which it no longer holds" % s.read_worker("w1")["request"])
    assert s.workers() == []


def test_odd_entries_a_link_in_the_builds_tree_is_noted_and_kept(run, dirs):
    n = build(dirs)
    link = os.path.join(st(dirs).build_dir("hello", n), "00-s.log")
    os.symlink("/etc/passwd", link)
    noted(run, "%s: a symbolic link -> /etc/passwd (kept; not followed, not shown)" % link)
    assert os.path.islink(link)


def test_builds_a_gap_is_noted_and_a_lost_running_build_finished(run, dirs):
    s = st(dirs)
    gap = s.allocate_number("hello")
    noted(run, "hello #%d: number taken but no build record (a crash before the build started)" % gap)
    n = build(dirs, state="running")
    code, out = run()
    assert code == 1 and "would repair: hello #%d: recorded as running, but no runner holds it" % n in out
    assert run("--repair")[0] == 0
    assert s.read_build("hello", n)["state"] == "finished" and s.read_build("hello", n)["result"] == "exception"


def test_removals_a_build_half_removed_by_the_janitor_is_deleted(run, dirs):
    first, second = build(dirs), build(dirs)
    assert st(dirs).begin_removal("hello", first)       # a janitor killed after its rename
    repaired(run, "hello #%d: half removed by the janitor (renamed out of the builds, not yet deleted); deleted "
                  "by its next pass" % first)
    assert sorted(os.listdir(st(dirs).builder_dir("hello"))) == [str(second), "next.json"]


def test_removals_the_site_is_told_of_a_build_fsck_deletes(run, dirs):
    """What the torture run found: a janitor killed between its rename and
    its hint, then `fsck --repair`, left the removed build's pages on the
    site for good.  The repair hints the site as the janitor's next pass
    would, and the site's update from the hints removes the pages."""
    from buildunits import config, site
    from buildunits.spool import Spool
    first, second = build(dirs), build(dirs)
    cfg = config.load(dirs.config)
    sp = Spool(dirs.spool)
    s = site.Site(dirs.site, st(dirs), sp, cfg)
    s.rebuild(force=True)
    sp.take_hints()
    page = os.path.join(dirs.site, "builders", "hello", str(first), "index.html")
    assert os.path.exists(page)
    assert st(dirs).begin_removal("hello", first)       # a janitor killed after its rename, before its hint
    assert run("--repair")[0] == 0
    s.update(sp.take_hints())
    assert not os.path.lexists(page)
    assert os.path.exists(os.path.join(dirs.site, "builders", "hello", str(second), "index.html"))


def test_counters_a_missing_hint_is_written(run, dirs):
    build(dirs)
    os.unlink(st(dirs).counter_path("hello"))
    repaired(run, "hello: next-number hint is missing or not a build number (the highest build is #1)")
    assert st(dirs).read_counter("hello") == 2


def test_pollers_an_unreadable_record_is_quarantined(run, dirs):
    s = st(dirs)
    path = s.poller_path("/srv/git/hello.git")
    with open(path, "w") as f:
        f.write("[]")
    repaired(run, "%s: not a record: top level is not an object (quarantined: the poller treats the "
                  "repository as new)" % path)
    assert [n for n, _r in s.quarantined()] == ["poller." + os.path.basename(path)]


def test_schedulers_an_unreadable_record_is_quarantined(run, dirs):
    s = st(dirs)
    with open(s.scheduler_path("hello"), "w") as f:
        f.write("{")
    repaired(run, "%s: truncated record (no closing brace after 1 bytes) (quarantined: the scheduler starts "
                  "hello's memory afresh)" % s.scheduler_path("hello"))


def test_state_corrupt_is_listed_and_kept(run, dirs):
    s = st(dirs)
    with open(s.scheduler_path("hello"), "w") as f:
        f.write("{")
    s.quarantine(s.scheduler_path("hello"), "torn")
    noted(run, "%s: state corrupt/scheduler.hello.json: torn (kept for inspection)" % dirs.state)


def test_every_check_has_a_test():
    tested = {name[len("test_"):].split("_a_")[0] for name in globals() if name.startswith("test_")}
    for check in fsck.CHECKS:
        assert any(t.startswith(check.__name__) for t in tested), check.__name__


# ------------------------------------------------------------------ --deep
def test_builds_a_long_history_default_checks_structure_deep_reads_every_record(run, dirs, monkeypatch):
    """Without --deep only the newest fsck.RECENT builds are read; an older
    torn record, a link or a stale temporary file in an older build's
    directory is found by --deep.  A gap (a number without build.json) and
    a missing next-number hint are structure: found either way."""
    monkeypatch.setattr(fsck, "RECENT", 2)
    s = st(dirs)
    old, gap = build(dirs), s.allocate_number("hello")
    stray = build(dirs)
    for _ in range(2):
        build(dirs)                                              # the newest two
    with open(s.build_path("hello", old), "w") as f:
        f.write('{"format": "build", "vers')
    link = os.path.join(s.build_dir("hello", stray), "00-s.log")
    os.symlink("/etc/passwd", link)
    tmp = fsutil.tmp_name(s.build_path("hello", stray))
    with open(tmp, "w") as f:
        f.write("{")
    age(tmp)
    os.unlink(s.counter_path("hello"))
    torn = "%s: truncated record" % s.build_path("hello", old)
    structural = ["note: hello #%d: number taken but no build record (a crash before the build started)" % gap,
                  "would repair: hello: next-number hint is missing or not a build number (the highest build is #5)"]

    code, out = run()
    assert code == 1 and all(line in out for line in structural), out
    assert not any(torn in line or link in line or tmp in line for line in out), out

    code, out = run("--deep")
    assert code == 1 and all(line in out for line in structural), out
    assert any(line.startswith("note: " + torn) for line in out), out
    assert "note: %s: a symbolic link -> /etc/passwd (kept; not followed, not shown)" % link in out
    assert any(line.startswith("would repair: stale temporary file %s" % tmp) for line in out), out


def test_builds_a_torn_record_among_the_newest_is_found_without_deep(run, dirs, monkeypatch):
    monkeypatch.setattr(fsck, "RECENT", 2)
    s = st(dirs)
    numbers = [build(dirs) for _ in range(4)]
    with open(s.build_path("hello", numbers[-1]), "w") as f:
        f.write('{"format": "build", "vers')
    code, out = run()
    assert any(line.startswith("note: %s: truncated record" % s.build_path("hello", numbers[-1])) for line in out), out
