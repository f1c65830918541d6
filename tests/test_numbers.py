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
