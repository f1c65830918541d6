"""Full disk and failing I/O: accept nothing that cannot be stored, tear
nothing, keep running, resume alone.

The spool and the state are put on a 2 MiB tmpfs (this needs root: CI runs
as root; BUILDUNITS_SKIP_ROOT_TESTS=1 skips instead of failing), which a
filler file then fills to the last page.  While it is full:

- the CLI (`sendchange`, `force`, through the spool or over D-Bus) exits
  non-zero with a message saying the disk is full, and stores nothing;
- each daemon given work it cannot store (a change, a request, the end of
  a step) logs a clear error naming the problem, writes no torn record,
  and keeps running;
- once the filler is deleted, each resumes by itself: the rescan timer
  ([Daemons] RescanIntervalSec=, short here) or the next wake picks the
  work up, and it is done exactly once.

Work is handed to a daemon while the disk is full by writing the record
into the spool's tmp/ beforehand and renaming it into new/ after filling
(a rename needs no space), as a writer's commit would.

Then EIO: strace injects it (`-e inject=fsync:error=EIO:when=N`, same for
rename) into the CLI and into a running daemon's main thread, at each call
in turn: same expectations.
"""

import errno
import os
import subprocess
import time

import pytest

from buildunits import fsutil, records, results, spool as spoolmod
from harness import wait_for
from test_handover_crash import (Attached, all_builds, check_fsck, check_one_build_each, check_records,
                                 cli_under_strace, drain)

DISK_SIZE = "2m"
RESCAN = "1s"
ENOSPC_TEXT = "No space left on device"
EIO_TEXT = "Input/output error"


# ====================================================================
# the small disk

def _mount(path):
    os.makedirs(path, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % DISK_SIZE, "tmpfs", path],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        msg = "cannot mount a tmpfs on %s (%s): these tests need root" % (path, p.stdout.strip())
        if os.environ.get("BUILDUNITS_SKIP_ROOT_TESTS") == "1":
            pytest.skip(msg)
        pytest.fail(msg + "; set BUILDUNITS_SKIP_ROOT_TESTS=1 to skip them")


def _umount(path):
    if subprocess.run(["umount", path]).returncode != 0:
        subprocess.run(["umount", "-l", path])


class SmallDisk:
    """The tmpfs holding the test's spool and state (and configuration)."""

    def __init__(self, root):
        self.root = root
        self.filler = os.path.join(root, "filler")

    def free(self):
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def fill(self):
        """Fill the filesystem to its last byte with one file."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for size in (1 << 20, 1 << 16, 4096, 512, 1):
                chunk = b"\0" * size
                while True:
                    try:
                        os.write(fd, chunk)
                    except OSError as e:
                        assert e.errno == errno.ENOSPC, e
                        break
        finally:
            os.close(fd)
        assert self.free() == 0, self.free()
        with pytest.raises(OSError):      # not even one byte more, in a new file
            with open(os.path.join(self.root, "probe"), "wb") as f:
                f.write(b"x")
                f.flush()
        os.unlink(os.path.join(self.root, "probe"))

    def unfill(self):
        os.unlink(self.filler)


@pytest.fixture
def disk(daemons):
    """Mount a small tmpfs on the harness's directory tree root (config,
    spool, state, site); unmount it at teardown, after every daemon is gone."""
    _mount(daemons.root)
    os.makedirs(os.path.join(daemons.config_dir, "builders"))
    daemons.write_global("[Daemons]\nRescanIntervalSec=%s\n" % RESCAN)
    daemons.spool.ensure()
    daemons.state.ensure()
    try:
        yield SmallDisk(daemons.root)
    finally:
        daemons.close()
        _umount(daemons.root)


def staged(daemons, queue, fmt, fields):
    """A record written to QUEUE/tmp/ now; calling the result commits it
    (renames it into QUEUE/new/) and returns its id."""
    sp = daemons.spool
    rid = spoolmod.new_id()
    fields = dict(fields, id=rid, queued=time.time())
    tmp = sp.path(queue, "tmp", rid)
    fsutil.write_new(tmp, records.encode(fmt, fields))

    def commit():
        os.rename(tmp, sp.path(queue, "new", rid))
        return rid
    return commit


def log_says(daemons, key, text, start=0):
    return text in daemons.log(key)[start:]


def wait_logged(daemons, key, text, start=0, timeout=15):
    wait_for(lambda: log_says(daemons, key, text, start), timeout=timeout,
             what="%s to log %r" % (key, text), describe=lambda: daemons.log(key))


def log_mark(daemons, key):
    return len(daemons.log(key))


def assert_running(daemons, *keys):
    for k in keys:
        assert daemons.running(k), "%s died:\n%s" % (k, daemons.log(k, -1))


def assert_clear_error(daemons, key, text, start=0):
    """KEY logged TEXT on a line of its own making, not only in a traceback."""
    lines = [ln for ln in daemons.log(key)[start:].splitlines() if text in ln]
    assert lines, "%s never said %r:\n%s" % (key, text, daemons.log(key))
    assert any(not ln.split(": ", 1)[-1].startswith(("  ", "OSError", "PermissionError", "FileNotFoundError"))
               for ln in lines), lines


FORCE_BUILDER = "[Builder]\n[Step s]\nCommand=true\n"


def _builder_with_repo(repo, extra=""):
    return ("[Builder]\nRepository=%s\nBranches=main\nPollIntervalSec=200ms\n%s[Step s]\nCommand=true\n"
            % (repo.bare, extra))


# ====================================================================
# the CLI on a full disk

def test_cli_stores_nothing_on_a_full_disk_and_says_why(daemons, disk, git_repo):
    sha = git_repo.commit({"f": "1"}, "one")
    daemons.write_builder("plain", FORCE_BUILDER)
    disk.fill()
    send = ["sendchange", "--repository", git_repo.bare, "--branch", "main", "--revision", sha,
            "--author", "A <a@b>", "--message", "m", "--file", "f", "--when", "1700000000"]
    for args in (send, ["force", "plain"]):
        p = daemons.cli(*args, bus=False)
        assert p.returncode != 0, (args, p.stdout)
        assert ENOSPC_TEXT in p.stderr and p.stderr.startswith("buildunits: "), p.stderr
        assert "Traceback" not in p.stderr
        assert not os.listdir(daemons.spool.path("changes", "new"))
        assert not os.listdir(daemons.spool.path("changes", "tmp")), "a half-written file was left"
    disk.unfill()
    for args in (send, ["force", "plain"]):
        daemons.cli(*args, bus=False, check=True)
    assert len(daemons.spool.pending("changes")) == 2
    check_records(daemons)


@pytest.mark.parametrize("failure", ["ENOSPC", "EIO"])
def test_cli_error_message_names_what_could_not_be_stored(daemons, disk, git_repo, failure):
    sha = git_repo.commit({"f": "1"}, "one")
    args = ["sendchange", "--repository", git_repo.bare, "--branch", "main", "--revision", sha,
            "--author", "A <a@b>", "--message", "m", "--file", "f", "--when", "1700000000"]
    if failure == "ENOSPC":
        disk.fill()
        p = daemons.cli(*args, bus=False)
    else:
        p = cli_under_strace(daemons, args, "fsync", 1, action="error=EIO")
    assert p.returncode == 1
    assert ": :" not in p.stderr and daemons.spool_dir in p.stderr, p.stderr


def test_force_over_dbus_on_a_full_disk(daemons, disk):
    daemons.write_builder("plain", FORCE_BUILDER)
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    disk.fill()
    mark = log_mark(daemons, "scheduler")
    p = daemons.cli("force", "plain")
    assert p.returncode != 0, p.stdout
    assert ENOSPC_TEXT in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not daemons.spool.pending("changes") and not os.listdir(daemons.spool.path("changes", "tmp"))
    assert_running(daemons, "scheduler", "runner@w1")
    disk.unfill()
    p = daemons.cli("force", "plain", check=True)
    daemons.wait_build_finished("plain", 1)
    drain(daemons, ["plain"])
    assert daemons.builds("plain") == [1]
    assert not log_says(daemons, "scheduler", "Traceback", mark)
    check_records(daemons)
    check_fsck(daemons)


# ====================================================================
# the daemons on a full disk

def test_poller_on_a_full_disk_logs_and_resumes(daemons, disk, git_repo):
    git_repo.commit({"f": "0"}, "base")
    daemons.write_builder("p", _builder_with_repo(git_repo))
    daemons.start("poller")
    wait_for(lambda: os.listdir(daemons.state.path("poller")), what="the first poll")
    disk.fill()
    mark = log_mark(daemons, "poller")
    sha = git_repo.commit({"f": "1"}, "while full")
    wait_logged(daemons, "poller", ENOSPC_TEXT, mark)
    assert_running(daemons, "poller")
    assert_clear_error(daemons, "poller", ENOSPC_TEXT, mark)
    check_records(daemons)
    disk.unfill()
    wait_for(lambda: [c for c in daemons.spool.pending("changes")
                      if daemons.spool.read("changes", c)["revision"] == sha],
             timeout=15, what="the commit pushed while the disk was full to be queued")
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.wait_build_finished("p", 1)
    drain(daemons, ["p"])
    check_one_build_each(daemons, "p", [sha], lambda r: r["revision"])
    check_records(daemons)
    check_fsck(daemons)


def test_poller_keeps_its_poll_timer_after_a_full_disk(daemons, disk, git_repo):
    daemons.write_global("[Daemons]\nRescanIntervalSec=1h\n")
    git_repo.commit({"f": "0"}, "base")
    daemons.write_builder("p", _builder_with_repo(git_repo))
    daemons.start("poller")
    wait_for(lambda: os.listdir(daemons.state.path("poller")), what="the first poll")
    disk.fill()
    mark = log_mark(daemons, "poller")
    git_repo.commit({"f": "1"}, "while full")
    wait_logged(daemons, "poller", ENOSPC_TEXT, mark)
    disk.unfill()
    wait_for(lambda: daemons.spool.pending("changes"), timeout=20,
             what="the next poll (PollIntervalSec=200ms) to queue the commit")
    assert_clear_error(daemons, "poller", ENOSPC_TEXT, mark)


def test_scheduler_on_a_full_disk_logs_and_resumes(daemons, disk, git_repo):
    daemons.write_builder("one", _builder_with_repo(git_repo).replace("200ms", "0"))
    daemons.write_builder("plain", FORCE_BUILDER)
    daemons.start("scheduler")
    change = staged(daemons, "changes", "change", {
        "source": "test", "repository": git_repo.bare, "branch": "main", "revision": "a" * 40,
        "author": "", "message": "", "files": [], "when": 0})
    force = staged(daemons, "changes", "force", {"builder": "plain", "branch": "", "revision": "",
                                                 "reason": "full", "properties": {}, "user": "test"})
    disk.fill()
    mark = log_mark(daemons, "scheduler")
    cid, fid = change(), force()
    wait_logged(daemons, "scheduler", ENOSPC_TEXT, mark)
    assert_running(daemons, "scheduler")
    assert_clear_error(daemons, "scheduler", ENOSPC_TEXT, mark)
    check_records(daemons)
    assert daemons.spool.pending("changes") == sorted([cid, fid]), "a change was taken but not requested"
    disk.unfill()
    wait_for(lambda: not daemons.spool.pending("changes"), timeout=10,
             what="the scheduler to resume after the disk was freed")
    reqs = [daemons.spool.read("requests", r) for r in daemons.spool.pending("requests")]
    assert sorted(r["builder"] for r in reqs) == ["one", "plain"], reqs
    check_records(daemons)
    daemons.restart("scheduler")
    assert len(daemons.spool.pending("requests")) == 2
    check_fsck(daemons)


def test_runner_full_disk_when_starting_a_build(daemons, disk):
    daemons.write_builder("plain", FORCE_BUILDER)
    daemons.start("runner", "w1")
    req = staged(daemons, "requests", "request", {"builder": "plain", "repository": "", "branch": "main",
                                                  "revision": "", "changes": [], "force": "f",
                                                  "reason": "full", "properties": {}})
    disk.fill()
    mark = log_mark(daemons, "runner@w1")
    rid = req()
    wait_logged(daemons, "runner@w1", ENOSPC_TEXT, mark)
    assert_running(daemons, "runner@w1")
    check_records(daemons)
    disk.unfill()
    wait_for(lambda: any(r and r["request_id"] == rid and r["state"] == "finished"
                         for r in all_builds(daemons, "plain").values()),
             timeout=20, what="the runner to build the request once the disk was freed",
             describe=daemons._describe_builds)
    drain(daemons, ["plain"])
    check_one_build_each(daemons, "plain", [rid], lambda r: r["request_id"])
    check_fsck(daemons)


def test_runner_full_disk_when_a_step_ends(daemons, disk, tmp_path):
    flag = str(tmp_path / "go")
    daemons.write_builder("slow", "[Builder]\n[Step wait]\nCommand=while [ ! -e %s ]; do sleep 0.05; done\n"
                          "[Step two]\nCommand=true\n" % flag)
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.cli("force", "slow", check=True)
    wait_for(lambda: (daemons.read_build("slow", 1) or {}).get("steps", [{}])[0].get("state") == "running",
             what="the step to run")
    disk.fill()
    mark = log_mark(daemons, "runner@w1")
    open(flag, "w").close()
    wait_logged(daemons, "runner@w1", ENOSPC_TEXT, mark)
    assert_running(daemons, "runner@w1")
    check_records(daemons)
    disk.unfill()
    rec = daemons.wait_build_finished("slow", 1, timeout=20)
    assert rec["result"] in (results.SUCCESS, results.RETRY, results.EXCEPTION), rec
    drain(daemons, ["slow"], timeout=20)
    assert_clear_error(daemons, "runner@w1", ENOSPC_TEXT, mark)
    check_fsck(daemons)


def test_a_step_that_fills_the_disk_ends_its_build_and_is_not_retried(daemons, disk, tmp_path):
    """The disk is not full when the step starts; the step's own output
    fills it.  The build is an exception saying so, not a retry (which
    would fill the disk again, forever), and once there is room again the
    next build runs."""
    flag = str(tmp_path / "fixed")       # outside the small disk
    daemons.write_builder("noisy", "[Builder]\n[Step fill]\nCommand=[ -e %s ] || yes filling the disk\n" % flag)
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    # Most of the disk taken by something else, 300 KiB left to the step.
    with open(disk.filler, "wb") as f:
        f.write(b"\0" * max(0, disk.free() - 300 * 1024))
    mark = log_mark(daemons, "runner@w1")
    daemons.cli("force", "noisy", check=True)
    wait_logged(daemons, "runner@w1", ENOSPC_TEXT, mark)
    assert_running(daemons, "runner@w1")
    check_records(daemons)
    open(flag, "w").close()
    disk.unfill()
    b1 = daemons.wait_build_finished("noisy", 1, timeout=20)
    assert b1["result"] == results.EXCEPTION, b1
    assert "disk filled up during step fill" in b1["reason"] and "ENOSPC" in b1["reason"], b1["reason"]
    # The step itself: its exit status if that much could be recorded
    # (its write failed: a failure), else an exception like the build.
    assert b1["steps"][0]["result"] in (results.FAILURE, results.EXCEPTION), b1["steps"]
    # Not requeued: the claim is dropped (just after the final record), not handed back.
    wait_for(lambda: daemons.spool.all_claimed() == {}, what="the claim to be dropped")
    assert daemons.spool.pending("requests") == []
    daemons.cli("force", "noisy", check=True)
    assert daemons.wait_build_finished("noisy", 2, timeout=20)["result"] == results.SUCCESS
    drain(daemons, ["noisy"], timeout=20)
    assert daemons.builds("noisy") == [1, 2]
    check_fsck(daemons)


@pytest.mark.parametrize("who", ["scheduler", "runner@w1"])
def test_daemon_starts_on_a_full_disk_with_work_queued(daemons, disk, git_repo, who):
    daemons.write_builder("plain", FORCE_BUILDER)
    if who == "scheduler":
        commit = staged(daemons, "changes", "force", {"builder": "plain", "branch": "", "revision": "",
                                                      "reason": "full", "properties": {}, "user": "t"})
    else:
        commit = staged(daemons, "requests", "request", {"builder": "plain", "repository": "",
                                                         "branch": "main", "revision": "", "changes": [],
                                                         "force": "f", "reason": "r", "properties": {}})
    disk.fill()
    commit()
    daemons.start(who)
    assert_running(daemons, who)
    assert ENOSPC_TEXT in daemons.log(who)


# ====================================================================
# EIO

def _send(git_repo, tag):
    sha = git_repo.commit({"f": tag}, tag)
    return sha, ["sendchange", "--repository", git_repo.bare, "--branch", "main", "--revision", sha,
                 "--author", "A <a@b>", "--message", tag, "--file", "f", "--when", "1700000000"]


def _queued_with(daemons, sha):
    out = []
    for cid in daemons.spool.pending("changes"):
        rec = daemons.spool.read("changes", cid)
        if rec and rec.get("revision") == sha:
            out.append(cid)
    return out


@pytest.mark.parametrize("syscall", ["fsync", "rename"])
def test_cli_eio_at_each_call(daemons, git_repo, syscall):
    """EIO at the Nth fsync or rename of `buildunits sendchange`: a clear
    message and non-zero exit, or success; never a torn record.  (A failure
    after the commit point is the xfail test below.)"""
    daemons.spool.ensure()
    n = 0
    while True:
        n += 1
        assert n < 50
        sha, args = _send(git_repo, "%s-%d" % (syscall, n))
        p = cli_under_strace(daemons, args, syscall, n, action="error=EIO")
        check_records(daemons)
        assert not os.listdir(daemons.spool.path("changes", "tmp")), "a temporary file was left"
        if p.returncode == 0:
            assert len(_queued_with(daemons, sha)) == 1
            break
        assert p.returncode == 1 and EIO_TEXT in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert n > 1, "the injection never hit"


def test_cli_eio_after_the_commit_point_is_not_reported_as_a_failure(daemons, git_repo):
    daemons.spool.ensure()
    # fsync #1 is the record's, #2 the directory's after the rename.
    sha, args = _send(git_repo, "dirsync")
    p = cli_under_strace(daemons, args, "fsync", 2, action="error=EIO")
    queued = _queued_with(daemons, sha)
    assert (p.returncode == 0) == bool(queued), (p.returncode, p.stderr, queued)


@pytest.mark.parametrize("syscall", ["fsync", "rename", "write"])
def test_scheduler_eio_at_each_call(daemons, git_repo, syscall):
    """EIO at the Nth call while the scheduler turns a change into a request:
    it logs the error, keeps running, and the rescan makes the request
    (at least one: duplicates are the xfail test below)."""
    daemons.write_builder("one", _builder_with_repo(git_repo).replace("200ms", "0"))
    daemons.write_global("[Daemons]\nRescanIntervalSec=%s\n" % RESCAN)
    daemons.start("scheduler", bus=False)
    sp = daemons.spool
    n = 0
    while True:
        n += 1
        assert n < 50
        mark = log_mark(daemons, "scheduler")
        with Attached(daemons.pid("scheduler"), syscall, n, action="error=EIO"):
            cid = sp.deliver("changes", "change", {"source": "t", "repository": git_repo.bare, "branch": "main",
                                                   "revision": "%040x" % n, "author": "", "message": "",
                                                   "files": [], "when": 0})
            wait_for(lambda: cid not in sp.pending("changes") or log_says(daemons, "scheduler", EIO_TEXT, mark),
                     timeout=10, what="the change taken, or an error")
        failed = log_says(daemons, "scheduler", EIO_TEXT, mark)
        wait_for(lambda: cid not in sp.pending("changes"), timeout=10, what="the change requested after a rescan")
        assert_running(daemons, "scheduler")
        check_records(daemons)
        reqs = [r for r in (sp.read("requests", x) for x in sp.pending("requests"))
                if any(c.get("id") == cid for c in r["changes"])]
        assert len(reqs) >= 1
        if not failed:
            break
        assert_clear_error(daemons, "scheduler", EIO_TEXT, mark)
    assert n > 1, "the injection never hit"


def test_scheduler_eio_after_a_request_is_committed_requests_once(daemons, git_repo):
    daemons.write_builder("one", _builder_with_repo(git_repo).replace("200ms", "0"))
    daemons.write_global("[Daemons]\nRescanIntervalSec=%s\n" % RESCAN)
    daemons.start("scheduler", bus=False)
    sp = daemons.spool
    with Attached(daemons.pid("scheduler"), "fsync", 2, action="error=EIO"):
        cid = sp.deliver("changes", "change", {"source": "t", "repository": git_repo.bare, "branch": "main",
                                               "revision": "f" * 40, "author": "", "message": "", "files": [],
                                               "when": 0})
        wait_logged(daemons, "scheduler", EIO_TEXT)
    wait_for(lambda: cid not in sp.pending("changes"), timeout=10, what="the change taken")
    assert len(sp.pending("requests")) == 1, [sp.read("requests", r) for r in sp.pending("requests")]


@pytest.mark.parametrize("syscall", ["fsync", "rename"])
def test_runner_eio_at_each_call(daemons, syscall):
    """EIO at the Nth fsync or rename of a runner running a build: the
    error is logged, the runner keeps running, and the request is built
    (one final build) without a restart; nothing is left running."""
    daemons.write_builder("r", "[Builder]\n[Step one]\nCommand=true\n")
    daemons.write_global("[Daemons]\nRescanIntervalSec=%s\n" % RESCAN)
    daemons.start("runner", "w1", bus=False)
    sp = daemons.spool
    n = 0
    while True:
        n += 1
        assert n < 50
        mark = log_mark(daemons, "runner@w1")
        with Attached(daemons.pid("runner@w1"), syscall, n, action="error=EIO"):
            rid = sp.deliver("requests", "request", {"builder": "r", "repository": "", "branch": "main",
                                                      "revision": "", "changes": [], "force": "f%d" % n,
                                                      "reason": "r", "properties": {}})

            def built():
                return (not sp.claimed("w1") and not daemons.state.read_worker("w1") and any(
                    r and r["request_id"] == rid and r["state"] == "finished" and r["result"] != results.RETRY
                    for r in all_builds(daemons, "r").values()))
            wait_for(built, timeout=20, what="the request built without a restart after an EIO at %s #%d"
                     % (syscall, n), describe=lambda: daemons.log("runner@w1")[mark:])
        assert_running(daemons, "runner@w1")
        check_records(daemons)
        if not log_says(daemons, "runner@w1", EIO_TEXT, mark):
            break
        assert_clear_error(daemons, "runner@w1", EIO_TEXT, mark)
    assert n > 1, "the injection never hit"
    drain(daemons, ["r"])
    check_fsck(daemons)
