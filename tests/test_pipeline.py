"""The pipeline end to end: real daemons, a private bus, real git.

A commit in a real repository becomes a change, a request, a build and
pages; the tests check what a user would: build records, step logs, the
pages, the bus signals, the notify messages, the journal-style log lines.
"""

import json
import os
import re
import signal
import subprocess
import time

import pytest

import harness
from buildunits import records
from harness import wait_for

HELLO = """
[Builder]
Description=Build and test hello
Repository={repo}
Branches=main release-*
PollIntervalSec=200ms
TreeStableSec={stable}
Workers=*

[Step compile]
Command=make
HaltOnFailure=yes

[Step test]
Command=make test
TimeoutSec=600
"""

MAKEFILE = "all:\n\t@echo compiled {v}\ntest:\n\t@echo testing {v}; test {v} != broken\n"


def hello(daemons, repo, stable="0"):
    daemons.write_builder("hello", HELLO.format(repo=repo.bare, stable=stable))


def start_all(daemons, runners=("w1",), htmlgen=True):
    for name in ("poller", "scheduler"):
        daemons.start(name)
    for w in runners:
        daemons.start("runner", w)
    if htmlgen:
        daemons.start("htmlgen")


def first_poll_done(daemons):
    """The poller has recorded the repository's heads (it builds nothing on a first poll)."""
    wait_for(lambda: os.listdir(os.path.join(daemons.state_dir, "poller")), what="the poller's first poll")


def requests(daemons):
    sp = daemons.spool
    return sp.pending("requests") + [i for ids in sp.all_claimed().values() for i in ids]


def test_commit_becomes_build_with_pages(daemons, git_repo, monitor):
    git_repo.commit({"Makefile": MAKEFILE.format(v="v0")}, "initial")
    hello(daemons, git_repo)
    start_all(daemons)
    first_poll_done(daemons)
    assert daemons.builds("hello") == [], "a first poll must not build the existing history"

    sha1 = git_repo.commit({"Makefile": MAKEFILE.format(v="v1")}, "version one\n\nwith a body")
    b1 = daemons.wait_build_finished("hello", 1)
    assert b1["result"] == "success"
    assert b1["revision"] == sha1 and b1["branch"] == "main" and b1["worker"] == "w1"
    assert [s["name"] for s in b1["steps"]] == ["checkout", "compile", "test"]
    assert [s["result"] for s in b1["steps"]] == ["success"] * 3
    change = b1["request"]["changes"][0]
    assert change["revision"] == sha1 and change["author"] == "Test Harness <harness@example.invalid>"
    assert change["message"] == "version one\n\nwith a body" and change["files"] == ["Makefile"]
    assert "compiled v1" in daemons.step_log("hello", 1, "compile")
    assert "testing v1" in daemons.step_log("hello", 1, "test")
    assert sha1 in daemons.step_log("hello", 1, "checkout")

    sha2 = git_repo.commit({"Makefile": MAKEFILE.format(v="broken")}, "break it")
    b2 = daemons.wait_build_finished("hello", 2)
    assert b2["revision"] == sha2 and b2["result"] == "failure"
    assert b2["steps"][2]["result"] == "failure" and b2["steps"][2]["exit_status"] != 0

    # The pages: waterfall boxes, build pages, log pages, all linked.
    site = daemons.site_dir
    page2 = os.path.join(site, "builders", "hello", "2", "index.html")
    daemons.wait_site_finished("hello", 2)
    assert os.path.exists(os.path.join(site, "builders", "hello", "2", ".final"))
    index = open(os.path.join(site, "index.html"), encoding="utf-8").read()
    assert "builders/hello/1/index.html" in index and "builders/hello/2/index.html" in index
    assert re.search(r"failure", index) and re.search(r"success", index)
    build_page = open(page2, encoding="utf-8").read()
    assert "break it" in build_page and sha2[:12] in build_page
    log_links = re.findall(r'href="([^"]+\.html)"', build_page)
    assert any("test" in l for l in log_links)
    test_log = [l for l in os.listdir(os.path.dirname(page2)) if l.endswith("-test.txt")]
    assert test_log and "testing broken" in open(os.path.join(os.path.dirname(page2), test_log[0])).read()

    # The signals: each daemon's in the order of its own commits (signals of
    # different daemons may interleave; see bus.py).
    monitor.wait_for_signal("BuildFinished", args=lambda a: list(a[:3]) == ["hello", 2, "failure"])
    # Another daemon's signal is emitted after its commit, which may come
    # after a later daemon acted on it: wait for each daemon's last.
    monitor.wait_for_signal("ChangeQueued", args=lambda a: list(a[2:]) == ["main", sha2])
    wait_for(lambda: len(monitor.find("BuildRequested")) >= 2, what="the second BuildRequested")
    per = {}
    for sig in monitor.snapshot():
        if sig.interface != "org.buildunits.HTMLGen":
            per.setdefault(sig.interface.rsplit(".", 1)[1], []).append((sig.member, list(sig.args)))
    assert [m for m, a in per["Poller"]] == ["ChangeQueued", "ChangeQueued"]
    assert [a[2:] for m, a in per["Poller"]] == [["main", sha1], ["main", sha2]]
    assert [(m, a[1]) for m, a in per["Scheduler"]] == [("BuildRequested", "hello")] * 2
    build1 = [m for m, a in per["Runner"] if a[:2] == ["hello", 1]]
    assert build1 == ["BuildStarted", "StepStarted", "StepFinished", "StepStarted", "StepFinished",
                      "StepStarted", "StepFinished", "BuildFinished"], build1


def test_step_rules_halt_flunk_always_timeout(daemons, git_repo, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    git_repo.commit({"README": "x"}, "initial")
    daemons.write_builder("rules", """
        [Builder]
        Repository={repo}
        PollIntervalSec=0

        [Step soft]
        Command=echo soft; exit 3
        FlunkOnFailure=no
        WarnOnFailure=yes

        [Step hard]
        Command=echo hard; exit 1
        HaltOnFailure=yes

        [Step skipped]
        Command=echo should not run

        [Step cleanup]
        Command=echo cleaning up
        AlwaysRun=yes
        """.format(repo=git_repo.bare))
    daemons.write_builder("slow", """
        [Builder]
        PollIntervalSec=0

        [Step hang]
        # A grandchild in the step's process group, and one that escaped it with setsid.
        Command=sh -c 'sleep 300 & echo $! > {pids}/child; setsid sleep 301 & echo $! > {pids}/escaped; wait'
        TimeoutSec=1s

        [Step quiet]
        Command=echo one line; sleep 300
        TimeoutIdleSec=1s
        AlwaysRun=yes

        [Step env]
        Command=env | grep ^BUILDUNITS_ | sort
        Environment=EXTRA=yes
        AlwaysRun=yes
        """.format(pids=pids))
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    assert daemons.cli("force", "rules", "--reason", "rules test").returncode == 0
    b = daemons.wait_build_finished("rules", 1)
    results = {s["name"]: s["result"] for s in b["steps"]}
    assert results == {"checkout": "success", "soft": "failure", "hard": "failure",
                       "skipped": "skipped", "cleanup": "success"}, results
    assert b["result"] == "failure"
    assert "cleaning up" in daemons.step_log("rules", 1, "cleanup")
    assert daemons.step_log("rules", 1, "skipped") is None

    daemons.cli("force", "slow", check=True)
    s = daemons.wait_build_finished("slow", 1, timeout=60)
    hang, quiet, env = s["steps"]
    assert hang["result"] == "failure" and hang["timed_out"] and "timed out" in hang["summary"]
    assert quiet["result"] == "failure" and "no output" in quiet["summary"]
    for name in ("child", "escaped"):
        pid = int((pids / name).read_text())
        wait_for(lambda: not _alive(pid), timeout=10, what="the step's %s process %d to be killed" % (name, pid))
    text = daemons.step_log("slow", 1, "env")
    assert "BUILDUNITS_BUILDER=slow" in text and "BUILDUNITS_BUILD=1" in text and "BUILDUNITS_WORKER=w1" in text
    assert "BUILDUNITS_STEP=env" in text and "BUILDUNITS_WORKDIR=" in text


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_tree_stable_collapses_and_branch_filter(daemons, git_repo):
    git_repo.commit({"Makefile": MAKEFILE.format(v="v0")}, "initial")
    hello(daemons, git_repo, stable="2s")
    start_all(daemons, htmlgen=False)
    first_poll_done(daemons)
    git_repo.commit({"Makefile": MAKEFILE.format(v="v1")}, "one")
    git_repo.commit({"Makefile": MAKEFILE.format(v="v2")}, "two", branch="feature")   # not in Branches=
    git_repo.git("checkout", "-q", "main")
    sha = git_repo.commit({"Makefile": MAKEFILE.format(v="v3")}, "three")
    b = daemons.wait_build_finished("hello", 1)
    assert b["revision"] == sha
    assert [c["message"] for c in b["request"]["changes"]] == ["one", "three"]
    assert b["branch"] == "main"
    # Nothing else is queued or waiting: the feature branch made nothing.
    wait_for(lambda: not daemons.spool.pending("changes"), what="the changes to be consumed")
    # The claim goes once the final record is written (R3 -> R4 in spool.py).
    wait_for(lambda: requests(daemons) == [], what="the request's claim to be removed",
             describe=lambda: str(requests(daemons)))
    assert daemons.builds("hello") == [1]


def test_pushed_while_poller_down_built_once_and_restarts_build_nothing_twice(daemons, git_repo):
    git_repo.commit({"Makefile": MAKEFILE.format(v="v0")}, "initial")
    hello(daemons, git_repo)
    start_all(daemons, htmlgen=False)
    first_poll_done(daemons)
    daemons.stop("poller")
    sha = git_repo.commit({"Makefile": MAKEFILE.format(v="v1")}, "pushed while the poller was down")
    daemons.start("poller")
    b = daemons.wait_build_finished("hello", 1)
    assert b["revision"] == sha
    for name in ("poller", "scheduler", "runner@w1"):
        daemons.restart(name)
    # A forced build after the restarts is the marker: it gets number 2 only
    # if nothing was built twice in between.
    daemons.cli("force", "hello", "--reason", "marker", check=True)
    assert daemons.wait_build_finished("hello", 2)["request"]["force"]
    assert daemons.builds("hello") == [1, 2]


@pytest.mark.parametrize("call, queued", [("rename", 0), ("unlink", 1)],
                         ids=["before-request-commit", "after-request-commit"])
def test_scheduler_killed_between_change_and_request(daemons, git_repo, call, queued):
    """SIGKILL at the scheduler's first rename (the request's commit) or its
    first unlink (removing the consumed change, after the request is
    queued and the change recorded as consumed): after a restart there is
    exactly one request."""
    if not harness.shutil.which("strace"):
        pytest.fail("strace is needed (make deps installs it)")
    git_repo.commit({"Makefile": MAKEFILE.format(v="v0")}, "initial")
    hello(daemons, git_repo)
    sha = git_repo.head()
    daemons.cli("sendchange", "--repository", git_repo.bare, "--branch", "main", "--revision", sha, check=True)
    calls = {"rename": "rename,renameat,renameat2", "unlink": "unlink,unlinkat"}[call]
    # The unlink is the change's own (-P: calls on that path only).
    only = ["-P", daemons.spool.path("changes", "new", daemons.spool.pending("changes")[0])] if call == "unlink" else []
    argv = ["strace", "-f", "-qq", "-o", "/dev/null"] + only + ["-e", "trace=" + calls,
            "-e", "inject=%s:signal=SIGKILL:when=1" % calls,
            harness.PYTHON, os.path.join(harness.BIN_DIR, "buildunits-scheduler")] + daemons.dir_args()
    p = subprocess.run(argv, env=daemons.env(bus=False), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=60)
    assert p.returncode != 0, p.stdout
    assert len(requests(daemons)) == queued, "the kill landed elsewhere: %s" % p.stdout
    assert daemons.spool.pending("changes"), "the change was consumed before the kill"
    daemons.start("scheduler")
    wait_for(lambda: not daemons.spool.pending("changes"), what="the change to be consumed")
    reqs = requests(daemons)
    assert len(reqs) == 1, reqs
    rec = daemons.spool.read("requests", reqs[0])
    assert rec["revision"] == sha


def test_bad_config_refused_at_start_and_on_reload(daemons, git_repo):
    git_repo.commit({"Makefile": MAKEFILE.format(v="v0")}, "initial")
    hello(daemons, git_repo)
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    path = daemons.write_dropin("hello", "50-broken", """
        [Step test]
        TimeoutSec=ten minutes
        """)
    check = daemons.cli("checkconfig")
    assert check.returncode == 1
    assert "%s:2: [Step test] TimeoutSec=: not a time span" % path in check.stderr
    # At start: refused, with the same message.
    d = daemons.start("poller", wait_ready=False)
    assert daemons.wait_exit("poller") == 1
    assert "%s:2" % path in daemons.log("poller")
    # On reload: the old configuration keeps working, and the log says why.
    daemons.reload("scheduler")
    assert "reload refused" in daemons.log("scheduler") and "%s:2" % path in daemons.log("scheduler")
    assert daemons.running("scheduler")
    refused = "reload refused: %s:2: [Step test] TimeoutSec=" % path
    assert daemons.notify("scheduler").status().startswith(refused)
    # The CLI hands the force to the running scheduler over the bus; a force
    # dropped into the spool is taken too: the old configuration builds.
    daemons.cli("force", "hello", check=False)
    daemons.spool.deliver("changes", "force", {"builder": "hello", "branch": "", "revision": "",
                                               "reason": "", "properties": {}, "user": "test"})
    assert daemons.wait_build_finished("hello", 1)["result"] == "success"
    # The status keeps saying so, also after the work it did since.
    # (The scheduler sends its status after the pass that made the request.)
    wait_for(lambda: re.search(r"; [12] requests made", daemons.notify("scheduler").status()),
             what="the scheduler's status after its requests")
    status = daemons.notify("scheduler").status()
    assert status.startswith(refused), status
    os.unlink(path)
    daemons.reload("scheduler")
    assert "configuration reloaded" in daemons.log("scheduler")
    assert "refused" not in daemons.notify("scheduler").status()


def test_garbage_in_spool_goes_to_corrupt(daemons, git_repo):
    git_repo.commit({"Makefile": MAKEFILE.format(v="v0")}, "initial")
    hello(daemons, git_repo)
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    # Each file is written whole in tmp/ and renamed into new/, as the
    # protocol asks of any writer: what is broken is the content.
    def drop(queue, name, data):
        tmp = os.path.join(daemons.spool_dir, queue, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(daemons.spool_dir, queue, "new", name))
    drop("changes", "1700000000000000000.1.1.abcdef", b'{"format": "change", "version": 1, "repository": "/x", "bran')
    drop("requests", "1700000000000000001.1.1.abcdef", b"\xff\xfe not a record")
    corrupt = os.path.join(daemons.spool_dir, "corrupt")
    wait_for(lambda: len([n for n in os.listdir(corrupt) if n.endswith(".reason")]) == 2,
             what="both files to be moved to corrupt/")
    reasons = {n: open(os.path.join(corrupt, n)).read() for n in os.listdir(corrupt) if n.endswith(".reason")}
    assert any("truncated" in r for r in reasons.values()), reasons
    assert any("UTF-8" in r for r in reasons.values()), reasons
    # The log line follows the move.
    wait_for(lambda: "truncated" in daemons.log("scheduler") and "corrupt" in daemons.log("scheduler"),
             what="the scheduler's log line about the corrupt change")
    daemons.cli("force", "hello", check=True)
    assert daemons.wait_build_finished("hello", 1)["result"] == "success"
    fsck = daemons.cli("fsck")
    assert "corrupt/" in fsck.stdout and fsck.returncode == 0


def test_notify_sequence_and_no_bus(daemons, git_repo):
    git_repo.commit({"Makefile": MAKEFILE.format(v="v0")}, "initial")
    hello(daemons, git_repo)
    for name in ("poller", "scheduler"):
        daemons.start(name, bus=False)
    r = daemons.start("runner", "w1", bus=False)
    lines = r.notify.lines()
    assert lines[:2] == ["READY=1", "STATUS=idle; 0 builds run"], lines
    assert "no system bus" in daemons.log("runner@w1")
    first_poll_done(daemons)
    git_repo.commit({"Makefile": MAKEFILE.format(v="v1")}, "built without a bus")
    assert daemons.wait_build_finished("hello", 1)["result"] == "success"
    r.notify.wait_line("STATUS=idle; 1 build run")
    statuses = r.notify.statuses()
    assert any(s.startswith("building hello #1") for s in statuses), statuses
    daemons.stop("runner@w1")
    assert r.notify.has("STOPPING=1")


def test_cli_status_and_fsck(daemons, git_repo):
    git_repo.commit({"Makefile": MAKEFILE.format(v="v0")}, "initial")
    hello(daemons, git_repo)
    daemons.start("scheduler")
    daemons.cli("force", "hello", "--reason", "queued only", check=True)
    wait_for(lambda: daemons.spool.pending("requests"), what="the forced request")
    st = json.loads(daemons.cli("status", "--json", check=True).stdout)
    assert len(st["queued"]) == 1 and st["queued"][0]["builder"] == "hello"
    assert "forced by" in st["queued"][0]["reason"]
    assert st["builders"]["hello"]["last"] is None
    text = daemons.cli("status", check=True).stdout
    assert "queued builds: 1" in text
    unknown = daemons.cli("force", "nosuch")
    assert unknown.returncode == 1 and "no builder 'nosuch'" in unknown.stderr and "hello" in unknown.stderr
    daemons.start("runner", "w1")
    daemons.wait_build_finished("hello", 1)
    st = json.loads(daemons.cli("status", "--json", check=True).stdout)
    assert st["builders"]["hello"]["last"]["result"] == "success" and st["queued"] == []
    # A build left "running" by a runner that died and will not come back.
    daemons.stop("runner@w1")
    rec = daemons.read_build("hello", 1)
    rec.update(state="running", result=None, number=1)
    # (written as a file: write_build never turns a finished record back)
    records.write(daemons.state.build_path("hello", 1), "build", rec)
    fsck = daemons.cli("fsck")
    assert fsck.returncode == 1 and "would repair" in fsck.stdout and "hello #1" in fsck.stdout
    assert daemons.cli("fsck", "--repair").returncode == 0
    assert daemons.read_build("hello", 1)["result"] == "exception"
    assert daemons.cli("fsck").returncode == 0


def test_sendchange_from_post_receive_hook(daemons, git_repo):
    git_repo.commit({"Makefile": MAKEFILE.format(v="v0")}, "initial")
    daemons.write_builder("hello", HELLO.format(repo=git_repo.bare, stable="0").replace(
        "PollIntervalSec=200ms", "PollIntervalSec=0"))
    hook = os.path.join(git_repo.bare, "hooks", "post-receive")
    wrapper = os.path.join(daemons.tmp_path, "buildunits-wrapper")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nexec %s %s %s \"$@\"\n" % (harness.PYTHON, os.path.join(harness.BIN_DIR, "buildunits"),
                                                        " ".join(daemons.dir_args())))
    os.chmod(wrapper, 0o755)
    with open(os.path.join(harness.REPO_ROOT, "share", "examples", "post-receive")) as f:
        text = f.read()
    with open(hook, "w") as f:
        f.write(text.replace("BUILDUNITS=${BUILDUNITS:-buildunits}", "BUILDUNITS=" + wrapper))
    os.chmod(hook, 0o755)
    start_all(daemons, htmlgen=False)
    sha = git_repo.commit({"Makefile": MAKEFILE.format(v="v1")}, "handed in by the hook")
    b = daemons.wait_build_finished("hello", 1)
    assert b["revision"] == sha and b["request"]["changes"][0]["source"] == "sendchange"
    assert b["request"]["changes"][0]["message"] == "handed in by the hook"


def test_runner_sigterm_hands_back_and_restart_retries(daemons, git_repo):
    git_repo.commit({"README": "x"}, "initial")
    daemons.write_builder("long", """
        [Builder]
        PollIntervalSec=0

        [Step wait]
        Command=test -e {flag} || {{ echo waiting; sleep 300; }}
        """.format(flag=os.path.join(daemons.tmp_path, "flag")))
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.cli("force", "long", check=True)
    wait_for(lambda: (daemons.read_build("long", 1) or {}).get("steps", [{}])[0].get("state") == "running",
             what="the step to start")
    daemons.stop("runner@w1")
    b1 = daemons.read_build("long", 1)
    assert b1["result"] == "retry" and "interrupted" in b1["reason"]
    assert len(daemons.spool.pending("requests")) == 1
    open(os.path.join(daemons.tmp_path, "flag"), "w").close()
    daemons.start("runner", "w1")
    assert daemons.wait_build_finished("long", 2)["result"] == "success"


def test_runner_killed_recovers_claim(daemons, git_repo):
    daemons.write_builder("long", """
        [Builder]
        PollIntervalSec=0

        [Step wait]
        Command=test -e {flag} || sleep 300
        """.format(flag=os.path.join(daemons.tmp_path, "flag")))
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.cli("force", "long", check=True)
    wait_for(lambda: (daemons.read_build("long", 1) or {}).get("steps", [{}])[0].get("state") == "running",
             what="the step to start")
    daemons.kill("runner@w1")
    assert daemons.read_build("long", 1)["state"] == "running"
    open(os.path.join(daemons.tmp_path, "flag"), "w").close()
    daemons.start("runner", "w1")
    b1 = daemons.read_build("long", 1)
    assert b1["result"] == "retry" and "runner w1 stopped" in b1["reason"]
    assert daemons.wait_build_finished("long", 2)["result"] == "success"
    assert daemons.cli("fsck").returncode == 0


def test_watchdog_pings_when_systemd_asks(daemons):
    # Without WATCHDOG_USEC there is no ping (and no timer while idle): the
    # poller runs all the while the scheduler pings twice.
    quiet = daemons.start("poller")
    d = daemons.start("scheduler", env={"WATCHDOG_USEC": "300000"})
    d.notify.wait_for(lambda lines: lines.count("WATCHDOG=1") >= 2, what="two WATCHDOG=1 pings")
    daemons.stop("scheduler")
    assert "WATCHDOG=1" not in quiet.notify.lines()


def test_stale_temporary_files_are_swept_only_when_old(daemons):
    """A crashed writer's temporary files go after fsutil.TMP_SWEEP_AGE_SEC, never sooner."""
    from buildunits import fsutil
    daemons.write_builder("solo", "[Step hi]\nCommand=echo hi\n")
    daemons.spool.ensure()
    old = os.path.join(daemons.spool_dir, "changes", "tmp", "1700000000000000000.1.1.aaaaaa")
    fresh = os.path.join(daemons.spool_dir, "requests", "tmp", "1800000000000000000.1.1.bbbbbb")
    hidden = os.path.join(daemons.state_dir, "scheduler", ".solo.json.tmp-1-abcd")
    os.makedirs(os.path.dirname(hidden), exist_ok=True)
    for p in (old, fresh, hidden):
        with open(p, "w") as f:
            f.write('{"format": "change", "ver')
    aged = time.time() - fsutil.TMP_SWEEP_AGE_SEC - 60
    os.utime(old, (aged, aged))
    os.utime(hidden, (aged, aged))
    fsck = daemons.cli("fsck")
    assert fsck.returncode == 1 and old in fsck.stdout and hidden in fsck.stdout and fresh not in fsck.stdout
    daemons.start("scheduler")
    assert not os.path.exists(old) and not os.path.exists(hidden) and os.path.exists(fresh)
    assert "abandoned by a writer that crashed" in daemons.log("scheduler")


def test_checkout_no_builds_on_changes_without_a_checkout(daemons, git_repo):
    sha0 = git_repo.commit({"README": "x"}, "initial")
    daemons.write_builder("nocheckout", """
        [Builder]
        Repository={repo}
        PollIntervalSec=0
        Checkout=no

        [Step show]
        Command=echo "$BUILDUNITS_BRANCH $BUILDUNITS_REVISION"; ls -A
        """.format(repo=git_repo.bare))
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.cli("sendchange", "--repository", git_repo.bare, "--branch", "main", "--revision", sha0, check=True)
    b = daemons.wait_build_finished("nocheckout", 1)
    assert [s["name"] for s in b["steps"]] == ["show"] and b["result"] == "success"
    assert daemons.step_log("nocheckout", 1, "show").strip() == "main %s" % sha0


def test_checkconfig_shows_warnings_beside_errors(daemons, git_repo):
    hello(daemons, git_repo)
    path = daemons.write_dropin("hello", "50-typo", """
        [Step test]
        TimeoutSecs=10min
        TimeoutIdleSec=soon
        """)
    check = daemons.cli("checkconfig")
    assert check.returncode == 1
    assert "%s:3: [Step test] TimeoutIdleSec=: not a time span" % path in check.stderr
    assert "warning: %s:2: [Step test] TimeoutSecs=: unknown key, ignored" % path in check.stderr


def test_force_without_bus_while_the_config_on_disk_is_broken(daemons, git_repo):
    """The daemons keep the last configuration they accepted, so a broken
    file on disk does not stop a forced build through the spool."""
    git_repo.commit({"Makefile": MAKEFILE.format(v="v0")}, "initial")
    hello(daemons, git_repo)
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.write_dropin("hello", "50-broken", "[Step test]\nTimeoutSec=ten minutes\n")
    forced = daemons.cli("force", "hello", "--reason", "while broken", bus=False)
    assert forced.returncode == 0, forced.stderr
    assert "problem" in forced.stderr and "checkconfig" in forced.stderr
    assert daemons.wait_build_finished("hello", 1)["result"] == "success"
    unknown = daemons.cli("force", "nosuch", bus=False)
    assert unknown.returncode == 1 and "no builder 'nosuch'" in unknown.stderr


def test_post_receive_hook_that_cannot_hand_in_says_what_to_do(tmp_path):
    """The hook does not promise a poller that may not exist."""
    hook = os.path.join(harness.REPO_ROOT, "share", "examples", "post-receive")
    new = "1" * 40
    p = subprocess.run(["sh", hook], cwd=str(tmp_path), input="%s %s refs/heads/main\n" % ("0" * 40, new),
                       env=dict(os.environ, BUILDUNITS="false"), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    assert p.returncode == 0
    assert "could not hand in %s (main)" % new in p.stderr
    assert "PollIntervalSec=" in p.stderr and "--revision=%s" % new in p.stderr
    assert "the poller will find it" not in p.stderr
