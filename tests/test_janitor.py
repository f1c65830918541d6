"""Retention: `buildunits janitor` and `buildunits keep`, through the command.

Each test writes a history as a runner leaves it (records, step logs,
artifacts/) with the retention keys in real builder files, runs the
command (in process, as cli.main; under strace, a real process killed
between a build's rename and its deletion), and checks what a user would:
which builds are left, what their directories hold, what the janitor and
`status` print, that a number is never taken twice.
"""

import json
import os
import subprocess
import time

import pytest

import harness
from buildunits import cli, fsutil, janitor, records, spool as spoolmod
from buildunits.spool import Spool
from buildunits.state import State
from support import inprocess

DAY = 86400
STEP = "[Step test]\nCommand=true\n"


@pytest.fixture
def dirs(tmp_path):
    d = inprocess.dirs(tmp_path)
    Spool(d.spool).ensure()
    State(d.state).ensure()
    return d


@pytest.fixture
def run(dirs, capsys):
    """run(*args) -> (exit status, [output lines]) of `buildunits ARGS`."""
    def run(*args):
        argv = ["--config-dir", dirs.config, "--spool-dir", dirs.spool, "--state-dir", dirs.state,
                "--site-dir", dirs.site] + list(args)
        code = cli.main(argv)
        cap = capsys.readouterr()
        return code, cap.out.splitlines() + cap.err.splitlines()
    return run


def builder(dirs, name="hello", keys="", conf=""):
    inprocess.write_builders(dirs, {name: "[Builder]\n%s\n%s" % (keys, STEP)})
    if conf:
        with open(os.path.join(dirs.config, "buildunits.conf"), "w") as f:
            f.write(conf)


def build(dirs, b, n, days_ago, state="finished", logs=2, artifacts=False, now=None):
    """Build B #N as a runner leaves it, started DAYS_AGO."""
    st = State(dirs.state)
    t = (now or time.time()) - days_ago * DAY
    os.makedirs(st.build_dir(b, n), exist_ok=True)
    steps = []
    for i in range(1, logs + 1):
        name = st.log_name(i, "s%d" % i)
        with open(st.build_file(b, n, name), "wb") as f:
            f.write(b"output line\n" * 400)
        steps.append({"name": "s%d" % i, "state": state, "result": "success" if state == "finished" else None,
                      "started": t, "finished": t + 5 if state == "finished" else None, "log": name,
                      "exit_status": 0, "summary": "", "timed_out": False})
    rec = {"builder": b, "number": n, "request_id": "r%d" % n, "worker": "w1", "state": state,
           "result": "success" if state == "finished" else None, "reason": "", "started": t,
           "finished": t + 10 if state == "finished" else None, "branch": "main", "revision": "a" * 40,
           "steps": steps}
    if artifacts:
        os.makedirs(os.path.join(st.build_dir(b, n), "artifacts", "dist"))
        with open(os.path.join(st.build_dir(b, n), "artifacts", "dist", "hello.tar.gz"), "wb") as f:
            f.write(b"\0" * 10000)
        rec["artifacts"] = [{"name": "dist/hello.tar.gz", "size": 10000, "sha256": "0" * 64, "step": ""}]
    records.write(st.build_path(b, n), "build", rec)
    st.write_counter(b, max(n + 1, st.read_counter(b) or 1))
    return rec


def history(dirs, b="hello", count=10, **kw):
    """Builds 1..COUNT of B, #N started COUNT - N + 0.5 days ago (one a day)."""
    for n in range(1, count + 1):
        build(dirs, b, n, count - n + 0.5, **kw)


def numbers(dirs, b="hello"):
    return State(dirs.state).build_numbers(b)


def tree(top):
    """Every path under TOP with its size and mtime (for "nothing changed")."""
    out = {}
    for d, subdirs, files in os.walk(top):
        for name in subdirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            out[os.path.relpath(p, top)] = (st.st_size, st.st_mtime_ns) if not os.path.isdir(p) else None
    return out


# ------------------------------------------------------------- the rules
def test_nothing_is_removed_by_default(dirs, run):
    builder(dirs)
    history(dirs, count=5, artifacts=True)
    before = tree(os.path.join(dirs.state, "builds"))
    code, out = run("janitor")
    assert code == 0 and out[-1].startswith("janitor: removed 0 builds, the logs of 0 and the artifacts of 0"), out
    assert tree(os.path.join(dirs.state, "builds")) == before


def test_keep_builds_removes_the_oldest_and_no_number_is_taken_again(dirs, run):
    builder(dirs, keys="KeepBuilds=2")
    history(dirs, count=6)
    code, out = run("janitor")
    assert code == 0, out
    assert ["hello #%d: removed (KeepBuilds=2)" % n for n in (1, 2, 3, 4)] == out[:4], out
    assert numbers(dirs) == [5, 6]
    # Even with the next-number hint lost, the next build is #7.
    st = State(dirs.state)
    os.unlink(st.counter_path("hello"))
    assert st.allocate_number("hello") == 7


def test_the_newest_build_stays_whatever_the_keys_say(dirs, run):
    builder(dirs, keys="KeepBuilds=1\nKeepDays=0")
    history(dirs, count=3)
    run("janitor")
    assert numbers(dirs) == [3]
    st = State(dirs.state)
    os.unlink(st.counter_path("hello"))
    assert st.allocate_number("hello") == 4


def test_keep_days_reads_from_the_oldest_and_stops_at_the_first_young_build(dirs, run):
    builder(dirs, keys="KeepDays=10")
    history(dirs, count=100)          # #N started 100.5 - N days ago: #91.. are young
    st = State(dirs.state)
    rep = janitor.run(st, Spool(dirs.spool), _cfg(dirs))
    assert numbers(dirs) == list(range(91, 101))
    assert rep.removed == {"hello": list(range(1, 91))}
    # A second pass removes nothing and reads a record or two, not the history.
    rep = janitor.run(st, Spool(dirs.spool), _cfg(dirs))
    assert rep.removed == {} and rep.records_read <= 2, rep


def test_keep_builds_alone_reads_no_record_to_remove_nothing(dirs):
    builder(dirs, keys="KeepBuilds=50")
    history(dirs, count=20)
    st = State(dirs.state)
    janitor.run(st, Spool(dirs.spool), _cfg(dirs))      # the first pass measures the disk
    rep = janitor.run(st, Spool(dirs.spool), _cfg(dirs))
    assert rep.removed == {} and rep.records_read == 0, rep


def test_the_site_wide_defaults_apply_and_a_builder_may_override_them(dirs, run):
    inprocess.write_builders(dirs, {"hello": "[Builder]\n" + STEP, "lib": "[Builder]\nKeepBuilds=infinity\n" + STEP})
    with open(os.path.join(dirs.config, "buildunits.conf"), "w") as f:
        f.write("[Defaults]\nKeepBuilds=3\n")
    history(dirs, "hello", count=5)
    history(dirs, "lib", count=5)
    run("janitor")
    assert numbers(dirs, "hello") == [3, 4, 5] and numbers(dirs, "lib") == [1, 2, 3, 4, 5]


def test_a_pinned_build_stays_whole_until_unkept(dirs, run):
    builder(dirs, keys="KeepBuilds=1\nKeepLogDays=0")
    history(dirs, count=4, artifacts=True)
    code, out = run("keep", "hello", "2", "--reason", "the release")
    assert code == 0 and out == ["hello #2 is kept: the janitor leaves it, its logs and artifacts as they are"]
    keep = State(dirs.state).read_keep("hello", 2)
    assert keep["user"] and keep["reason"] == "the release" and abs(keep["when"] - time.time()) < 60
    before = tree(State(dirs.state).build_dir("hello", 2))
    run("janitor")
    assert numbers(dirs) == [2, 4]
    assert tree(State(dirs.state).build_dir("hello", 2)) == before
    code, out = run("keep", "--unkeep", "hello", "2")
    assert code == 0 and out == ["hello #2 is no longer kept: the janitor may remove it"]
    run("janitor")
    assert numbers(dirs) == [4]


def test_a_build_unpinned_later_loses_its_old_logs(dirs, run):
    builder(dirs, keys="KeepLogDays=2")
    history(dirs, count=5)
    run("keep", "hello", "1")
    run("janitor")
    st = State(dirs.state)
    assert os.path.exists(st.build_file("hello", 1, "01-s1.log"))
    assert not os.path.exists(st.build_file("hello", 2, "01-s1.log"))
    run("keep", "--unkeep", "hello", "1")
    run("janitor")
    assert not os.path.exists(st.build_file("hello", 1, "01-s1.log"))
    assert st.read_pruned("hello", 1)["logs_removed"]


def test_keep_of_a_build_that_is_not_there_is_an_error(dirs, run):
    builder(dirs)
    history(dirs, count=2)
    code, out = run("keep", "hello", "9")
    assert code == 1 and out == ["buildunits: hello #9: no such build (removed, or never built)"], out
    code, out = run("keep", "hello", "0")
    assert code == 2, out


def test_a_running_build_is_never_removed_nor_its_logs(dirs, run):
    builder(dirs, keys="KeepBuilds=1\nKeepDays=1\nKeepLogDays=1")
    build(dirs, "hello", 1, 30)
    build(dirs, "hello", 2, 20, state="running")      # a long build, still running
    build(dirs, "hello", 3, 10)
    build(dirs, "hello", 4, 5)
    run("janitor")
    st = State(dirs.state)
    assert numbers(dirs) == [2, 4]
    assert os.path.exists(st.build_file("hello", 2, "01-s1.log"))


def test_a_number_just_taken_stays_an_old_empty_one_goes(dirs, run):
    builder(dirs, keys="KeepBuilds=1")
    build(dirs, "hello", 1, 10)
    st = State(dirs.state)
    for n in (2, 3):
        os.makedirs(st.build_dir("hello", n))          # numbers taken, no record (yet, or ever)
    old = time.time() - fsutil.TMP_SWEEP_AGE_SEC - 60
    os.utime(st.build_dir("hello", 2), (old, old))
    build(dirs, "hello", 4, 0)
    build(dirs, "hello", 5, 0)
    os.makedirs(st.build_dir("hello", 6))               # a runner between its mkdir and its record
    os.utime(st.build_dir("hello", 6), (old, old))      # ... even an old one: the newest stays
    run("janitor")
    assert numbers(dirs) == [3, 6]


def test_an_unreadable_record_is_kept_as_it_is(dirs, run):
    builder(dirs, keys="KeepBuilds=1")
    history(dirs, count=3)
    st = State(dirs.state)
    with open(st.build_path("hello", 1), "w") as f:
        f.write('{"format": "build", "vers')
    run("janitor")
    assert numbers(dirs) == [1, 3]


def test_old_logs_and_artifacts_go_the_records_stay_unchanged(dirs, run):
    builder(dirs, keys="KeepLogDays=5\nKeepArtifactDays=3")
    history(dirs, count=8, artifacts=True)              # #N started 8.5 - N days ago
    st = State(dirs.state)
    recs = {n: open(st.build_path("hello", n), "rb").read() for n in range(1, 9)}
    code, out = run("janitor")
    assert code == 0, out
    assert "hello #3: logs removed (KeepLogDays=)" in out and "hello #5: artifacts removed (KeepArtifactDays=)" in out
    for n in range(1, 9):
        assert open(st.build_path("hello", n), "rb").read() == recs[n]      # never rewritten
        d = set(os.listdir(st.build_dir("hello", n)))
        logs_gone, arts_gone = 8.5 - n > 5, 8.5 - n > 3
        assert ("01-s1.log" in d) != logs_gone and ("artifacts" in d) != arts_gone, (n, d)
        pruned = st.read_pruned("hello", n)
        if logs_gone or arts_gone:
            assert isinstance(pruned.get("logs_removed"), float) == logs_gone, (n, pruned)
            assert isinstance(pruned.get("artifacts_removed"), float) == arts_gone, (n, pruned)
        else:
            assert pruned is None
    assert numbers(dirs) == list(range(1, 9))


def test_a_dry_run_says_what_would_go_and_changes_nothing(dirs, run):
    builder(dirs, keys="KeepBuilds=2\nKeepLogDays=0")
    history(dirs, count=4)
    before = tree(dirs.state)
    code, out = run("janitor", "--dry-run")
    assert code == 0
    assert "hello #1: would be removed (KeepBuilds=2)" in out and "hello #2: would be removed (KeepBuilds=2)" in out
    assert out[-1].startswith("janitor: would remove 2 builds"), out
    after = tree(dirs.state)
    after = {k: v for k, v in after.items() if not k.startswith("locks")}
    assert after == {k: v for k, v in before.items() if not k.startswith("locks")}


def test_cancelled_requests_are_pruned_after_seven_days(dirs, run):
    builder(dirs)
    sp = Spool(dirs.spool)
    old, young = (sp.deliver("requests", "request", {"builder": "hello", "branch": "main"}) for _ in range(2))
    for rid in (old, young):
        assert sp.cancel_queued(rid)
    t = time.time() - spoolmod.CANCELLED_KEEP_SEC - 60
    os.utime(os.path.join(dirs.spool, "requests", "cancelled", old), (t, t))
    code, out = run("janitor")
    assert code == 0 and any(line.endswith("pruned (cancelled more than 7 days ago)") for line in out), out
    assert sorted(os.listdir(os.path.join(dirs.spool, "requests", "cancelled"))) == [young]


def test_one_pass_at_a_time(dirs, run):
    builder(dirs)
    fd = janitor.Janitor._lock(State(dirs.state).lock_path("buildunits-janitor"))
    try:
        code, out = run("janitor")
    finally:
        os.close(fd)
    assert code == 1 and "another janitor pass is running" in out[0], out


# ------------------------------------------------------------- crashes
def _under_strace(dirs, when):
    """`buildunits janitor` as a process, SIGKILLed at its WHENth unlink
    or rmdir: in the deletion of the first build it renamed."""
    calls = "unlink,unlinkat,rmdir"
    argv = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=" + calls,
            "-e", "inject=%s:signal=SIGKILL:when=%d" % (calls, when),
            harness.PYTHON, os.path.join(harness.BIN_DIR, "buildunits"), "--config-dir", dirs.config,
            "--spool-dir", dirs.spool, "--state-dir", dirs.state, "--site-dir", dirs.site, "janitor"]
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)


@pytest.mark.parametrize("when", [1, 3], ids=["before-deleting", "half-deleted"])
def test_a_janitor_killed_after_the_rename_leaves_no_half_build(dirs, run, when):
    """Killed after the renames (the commit points, #1 and #2 in one batch)
    and in the deletion of the first: both are gone for every reader (not
    build numbers any more), their files under the hidden names (#2's
    whole), fsck says so, and the next pass finishes them first."""
    if not harness.shutil.which("strace"):
        pytest.fail("strace is needed (make deps installs it)")
    builder(dirs, keys="KeepBuilds=2")
    history(dirs, count=4, artifacts=True)
    p = _under_strace(dirs, when)
    assert p.returncode != 0, p.stdout
    st = State(dirs.state)
    assert numbers(dirs) == [3, 4]
    assert sorted(os.listdir(st.builder_dir("hello"))) == [".removing-1", ".removing-2", "3", "4", "next.json"]
    whole = sorted(os.listdir(os.path.join(st.builder_dir("hello"), ".removing-2")))
    assert whole == ["01-s1.log", "02-s2.log", "artifacts", "build.json"]
    # The site was told before anything was deleted.
    assert sorted(os.listdir(os.path.join(dirs.spool, "hints"))) == ["hello@1", "hello@2"]
    code, out = run("fsck")
    for n in (1, 2):
        assert code == 1 and ("would repair: hello #%d: half removed by the janitor (renamed out of the builds, "
                              "not yet deleted); deleted by its next pass" % n) in out, out
    code, out = run("janitor")
    assert out[:2] == ["hello #%d: half removed by an earlier pass; removed" % n for n in (1, 2)], out
    assert sorted(os.listdir(st.builder_dir("hello"))) == ["3", "4", "next.json"]
    assert run("fsck")[0] == 0


def test_a_hidden_directory_left_by_a_crash_is_finished(dirs, run):
    builder(dirs)
    history(dirs, count=3)
    st = State(dirs.state)
    assert st.begin_removal("hello", 2)                 # as a crash right after the rename leaves it
    assert numbers(dirs) == [1, 3]
    code, out = run("janitor")
    assert out[0] == "hello #2: half removed by an earlier pass; removed"
    assert sorted(os.listdir(st.builder_dir("hello"))) == ["1", "3", "next.json"]


def _waiting_on(path):
    """True if some process waits for an flock of PATH (/proc/locks: "->")."""
    st = os.stat(path)
    token = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    with open("/proc/locks") as f:
        return any("->" in line and token in line.split() for line in f)


def test_a_pin_made_while_the_janitor_is_deciding_is_seen(dirs, run):
    """`keep` and the janitor's renames take the same lock: a pin written
    while the janitor waits for it (having chosen the build already) is
    seen under the lock, and the build stays."""
    from support.wait import wait_for
    builder(dirs, keys="KeepBuilds=1")
    history(dirs, count=3)
    st = State(dirs.state)
    lock = janitor.Janitor._lock(st.lock_path("retention"))
    try:
        p = subprocess.Popen([harness.PYTHON, os.path.join(harness.BIN_DIR, "buildunits"), "--config-dir",
                              dirs.config, "--spool-dir", dirs.spool, "--state-dir", dirs.state, "janitor"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: _waiting_on(st.lock_path("retention")), 30, what="the janitor to wait for the lock")
        st.write_keep("hello", 1, {"builder": "hello", "number": 1, "user": "bob", "when": time.time(),
                                   "reason": ""})
    finally:
        os.close(lock)
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 0, out
    assert numbers(dirs) == [1, 3] and "hello #2: removed (KeepBuilds=1)" in out, out


# ------------------------------------------------------------- status
def test_status_shows_the_disk_the_janitor_measured_with_its_age(dirs, run):
    builder(dirs, keys="KeepBuilds=3")
    history(dirs, count=5, artifacts=True)
    code, out = run("status")
    assert "disk: not measured yet (`buildunits janitor` measures it)" in out, out
    run("janitor")
    code, out = run("status", "--json")
    disk = json.loads("\n".join(out))["disk"]
    st = State(dirs.state)
    want = {"state": 0, "logs": 0, "artifacts": 0}
    for n in st.build_numbers("hello"):
        for k, v in st.usage("hello", n).items():
            want[k] += v
    got = disk["builders"]["hello"]
    assert got == {"builds": 3, "state_bytes": want["state"], "logs_bytes": want["logs"],
                   "artifacts_bytes": want["artifacts"]}, (got, want)
    assert want["logs"] >= 3 * 2 * 4800 and want["artifacts"] >= 3 * 10000
    code, out = run("status")
    i = out.index(next(line for line in out if line.startswith("disk (measured by the janitor ")))
    assert out[i].endswith(" ago):"), out[i]
    assert out[i + 1].split() [:3] == ["hello", "3", "builds:"], out[i + 1]
    # Kept up to date pass by pass: two more builds, then the oldest removed.
    build(dirs, "hello", 6, 0, artifacts=True)
    build(dirs, "hello", 7, 0)
    run("janitor")
    disk = json.loads("\n".join(run("status", "--json")[1]))["disk"]["builders"]["hello"]
    want = {"state": 0, "logs": 0, "artifacts": 0}
    for n in st.build_numbers("hello"):
        for k, v in st.usage("hello", n).items():
            want[k] += v
    assert disk == {"builds": 3, "state_bytes": want["state"], "logs_bytes": want["logs"],
                    "artifacts_bytes": want["artifacts"]}


def _cfg(dirs):
    from buildunits import config
    return config.load(dirs.config)


# ------------------------------------------------------------- the keys
def test_bad_retention_values_name_the_file_and_line(dirs, run):
    inprocess.write_builders(dirs, {"hello": "[Builder]\nKeepBuilds=0\nKeepDays=a week\nKeepLogDays=-1\n" + STEP})
    code, out = run("checkconfig")
    path = os.path.join(dirs.config, "builders", "hello.builder")
    assert code == 1
    assert "%s:2: [Builder] KeepBuilds=: must be at least 1: '0'" % path in out, out
    assert "%s:3: [Builder] KeepDays=: not a whole number: 'a week'" % path in out, out
    assert "%s:4: [Builder] KeepLogDays=: not a whole number: '-1'" % path in out, out


def test_a_broken_configuration_removes_nothing(dirs, run):
    inprocess.write_builders(dirs, {"hello": "[Builder]\nKeepBuilds=100\nKeepDays=ten\n" + STEP})
    with open(os.path.join(dirs.config, "buildunits.conf"), "w") as f:
        f.write("[Defaults]\nKeepBuilds=1\n")
    history(dirs, count=3)
    code, out = run("janitor")
    assert code == 1 and out[-1].endswith("(run `buildunits checkconfig`); nothing removed"), out
    assert numbers(dirs) == [1, 2, 3]


def test_an_empty_assignment_keeps_everything_again(dirs):
    from buildunits import config
    inprocess.write_builders(dirs, {"hello": "[Builder]\nKeepBuilds=5\nKeepBuilds=\nKeepDays=30\n" + STEP})
    with open(os.path.join(dirs.config, "buildunits.conf"), "w") as f:
        f.write("[Defaults]\nKeepLogDays=7\n")
    b = config.load(dirs.config).builders["hello"]
    assert (b.keep_builds, b.keep_days, b.keep_log_days, b.keep_artifact_days) == (
        float("inf"), 30, 7, float("inf"))
