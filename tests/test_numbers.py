"""Numbers and names that must not get past validation, with the real daemons.

Time spans longer than GLib's 32-bit millisecond timers, non-finite
numbers in spool records, the build-number counter, and names with a
trailing newline: each is either supported or refused with a clear
error, and never wedges a daemon.
"""

import json
import os

import harness
from harness import wait_for


def requests(daemons):
    sp = daemons.spool
    return sp.pending("requests") + [i for ids in sp.all_claimed().values() for i in ids]


def status_of(daemons, name):
    return daemons.notify(name).status() or ""


# ------------------------------------------------------------ time spans

def test_a_step_with_a_60_day_timeout_runs_once_to_completion(daemons):
    daemons.write_builder("patient", """
        [Builder]
        PollIntervalSec=0

        [Step work]
        Command=echo worked
        TimeoutSec=60d
        TimeoutIdleSec=60d
        """)
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.cli("force", "patient", check=True)
    b = daemons.wait_build_finished("patient", 1)
    assert b["result"] == "success", b
    assert daemons.step_log("patient", 1, "work").strip() == "worked"
    wait_for(lambda: requests(daemons) == [] and status_of(daemons, "runner@w1").startswith("idle"),
             what="the runner to be idle with nothing queued",
             describe=lambda: "%s; %s" % (requests(daemons), status_of(daemons, "runner@w1")))
    assert daemons.builds("patient") == [1]
    assert "failed" not in daemons.log("runner@w1")


def test_a_60_day_tree_stable_window_holds_changes_without_failing(daemons, git_repo):
    sha1 = git_repo.commit({"README": "1"}, "one")
    daemons.write_builder("slowly", """
        [Builder]
        Repository={repo}
        PollIntervalSec=0
        TreeStableSec=60d

        [Step show]
        Command=true
        """.format(repo=git_repo.bare))
    daemons.start("scheduler")
    daemons.cli("sendchange", "--repository", git_repo.bare, "--branch", "main", "--revision", sha1, check=True)
    wait_for(lambda: "1 change waiting" in status_of(daemons, "scheduler"),
             what="the scheduler to hold the change", describe=lambda: status_of(daemons, "scheduler"))
    sha2 = git_repo.commit({"README": "2"}, "two")
    daemons.cli("sendchange", "--repository", git_repo.bare, "--branch", "main", "--revision", sha2, check=True)
    wait_for(lambda: "2 changes waiting" in status_of(daemons, "scheduler"),
             what="the scheduler to hold both changes", describe=lambda: status_of(daemons, "scheduler"))
    assert requests(daemons) == [] and len(daemons.spool.pending("changes")) == 2
    st = daemons.cli("status", check=True).stdout
    assert "error" not in st, st
    assert "failed" not in daemons.log("scheduler") and "error" not in daemons.log("scheduler")


def test_a_60_day_poll_interval_and_a_200_year_rescan_interval_arm_without_failing(daemons, git_repo):
    git_repo.commit({"README": "1"}, "one")
    daemons.write_global("[Daemons]\nRescanIntervalSec=200y\n")
    daemons.write_builder("rarely", """
        [Builder]
        Repository={repo}
        PollIntervalSec=60d

        [Step show]
        Command=true
        """.format(repo=git_repo.bare))
    daemons.start("poller")
    wait_for(lambda: os.listdir(os.path.join(daemons.state_dir, "poller")), what="the poller's first poll")
    assert "watching 1 repository" in status_of(daemons, "poller")
    assert "failed" not in daemons.log("poller"), daemons.log("poller")


# ---------------------------------------------- non-finite numbers in records

def drop(daemons, queue, name, fmt, fields, raw):
    """Commit a record to QUEUE/new as any writer does (tmp/, then rename),
    with the JSON number 12345.678 in FIELDS replaced by RAW."""
    data = harness.records.encode(fmt, dict(fields, id=name)).replace(b"12345.678", raw)
    tmp = os.path.join(daemons.spool_dir, queue, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, os.path.join(daemons.spool_dir, queue, "new", name))


def corrupt_reasons(daemons):
    d = os.path.join(daemons.spool_dir, "corrupt")
    return {n[:-len(".reason")]: open(os.path.join(d, n)).read() for n in os.listdir(d) if n.endswith(".reason")}


def test_a_request_with_1e400_goes_to_corrupt_and_the_runner_builds_the_next(daemons):
    daemons.write_builder("plain", """
        [Builder]
        PollIntervalSec=0

        [Step work]
        Command=echo worked
        """)
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    drop(daemons, "requests", "1700000000000000001.1.1.abcdef", "request",
         {"builder": "plain", "repository": "", "branch": "", "revision": "", "reason": "hostile",
          "changes": [], "force": None, "properties": {}, "queued": 12345.678}, b"1e400")
    wait_for(lambda: "requests.1700000000000000001.1.1.abcdef" in corrupt_reasons(daemons),
             what="the request to be moved to corrupt/", describe=lambda: str(corrupt_reasons(daemons)))
    assert "1e400" in corrupt_reasons(daemons)["requests.1700000000000000001.1.1.abcdef"]
    daemons.cli("force", "plain", "--reason", "after the hostile one", check=True)
    b = daemons.wait_build_finished("plain", 1)
    assert b["result"] == "success" and "after the hostile one" in b["request"]["reason"]
    # The runner survives a restart with nothing left over.
    daemons.restart("runner@w1")
    daemons.cli("force", "plain", check=True)
    assert daemons.wait_build_finished("plain", 2)["result"] == "success"
    assert daemons.builds("plain") == [1, 2]


def test_a_change_with_1e400_goes_to_corrupt_and_the_scheduler_goes_on(daemons, git_repo):
    sha = git_repo.commit({"README": "1"}, "one")
    daemons.write_builder("plain", """
        [Builder]
        Repository={repo}
        PollIntervalSec=0

        [Step work]
        Command=echo worked
        """.format(repo=git_repo.bare))
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    drop(daemons, "changes", "1700000000000000001.1.1.abcdef", "change",
         {"source": "sendchange", "repository": git_repo.bare, "branch": "main", "revision": sha,
          "author": "x", "message": "hostile", "files": [], "when": 12345.678, "queued": 1700000000.0},
         b"-" + b"9" * 400)
    wait_for(lambda: "changes.1700000000000000001.1.1.abcdef" in corrupt_reasons(daemons),
             what="the change to be moved to corrupt/", describe=lambda: str(corrupt_reasons(daemons)))
    assert "out of range" in corrupt_reasons(daemons)["changes.1700000000000000001.1.1.abcdef"]
    daemons.cli("sendchange", "--repository", git_repo.bare, "--branch", "main", "--revision", sha, check=True)
    b = daemons.wait_build_finished("plain", 1)
    assert b["result"] == "success" and b["revision"] == sha
    assert daemons.spool.pending("changes") == []
    assert "work failed" not in daemons.log("scheduler")


def test_sendchange_refuses_a_when_that_is_not_a_finite_number(daemons, git_repo):
    sha = git_repo.commit({"README": "1"}, "one")
    for when in ("inf", "nan", "1e400", "-infinity"):
        p = daemons.cli("sendchange", "--repository", git_repo.bare, "--branch", "main", "--revision", sha,
                        "--when=" + when)
        assert p.returncode == 2, (when, p.stderr)
        assert "--when" in p.stderr and "finite" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert daemons.spool.pending("changes") == []
    ok = daemons.cli("sendchange", "--repository", git_repo.bare, "--branch", "main", "--revision", sha,
                     "--when", "1700000000.5", check=True)
    assert ok.returncode == 0
    [cid] = daemons.spool.pending("changes")
    assert daemons.spool.read("changes", cid)["when"] == 1700000000.5


# ---------------------------------------------------------------- the counter

def test_fsck_repairs_a_counter_that_is_not_a_build_number(daemons):
    st = daemons.state
    st.ensure()
    daemons.spool.ensure()
    for _ in range(2):
        n = st.allocate_number("hello")
        st.write_build({"builder": "hello", "number": n, "state": "finished", "result": "success", "steps": []})
    assert daemons.cli("fsck").returncode == 0
    for bad in (2 ** 40, 2 ** 32, True):
        harness.records.write(os.path.join(st.builder_dir("hello"), "next.json"), "counter", {"next": bad})
        fsck = daemons.cli("fsck")
        assert fsck.returncode == 1, (bad, fsck.stdout)
        assert "hello: next-number hint is missing or not a build number (the highest build is #2)" in fsck.stdout
        assert daemons.cli("fsck", "--repair").returncode == 0
        with open(os.path.join(st.builder_dir("hello"), "next.json")) as f:
            assert json.load(f)["next"] == 3
        assert daemons.cli("fsck").returncode == 0
    assert st.allocate_number("hello") == 3
    assert sorted(os.listdir(st.builder_dir("hello"))) == ["1", "2", "3", "next.json"]


# ---------------------------------------------------------------------- names

def test_checkconfig_refuses_a_builder_file_whose_name_ends_in_a_newline(daemons):
    daemons.write_builder("ok", "[Builder]\n\n[Step s]\nCommand=true\n")
    daemons.write_builder("ok\n", "[Builder]\n\n[Step s]\nCommand=true\n")
    p = daemons.cli("checkconfig")
    assert p.returncode == 1, p.stdout
    assert "builder name 'ok\\n' must be letters" in p.stderr and "1 problem" in p.stderr


def test_a_runner_named_with_a_trailing_newline_is_refused(daemons):
    daemons.start("runner", "w1\n", wait_ready=False)
    assert daemons.wait_exit("runner@w1\n") == 2
    assert "invalid worker name value: 'w1\\n'" in daemons.log("runner@w1\n")
    assert not os.path.exists(os.path.join(daemons.state_dir, "locks", "buildunits-runner@w1\n.lock"))


def test_sendchange_refuses_a_revision_with_a_trailing_newline(daemons, git_repo):
    sha = git_repo.commit({"README": "1"}, "one")
    p = daemons.cli("sendchange", "--repository", git_repo.bare, "--branch", "main", "--revision", sha + "\n")
    assert p.returncode == 2 and "--revision" in p.stderr, p.stderr
    assert daemons.spool.pending("changes") == []
