"""buildunits-poller, in-process: Poller.poll() against real git repositories.

Each test builds a Poller over temporary config, spool and state
directories (no bus, a notifier that records what it would send), commits
with real git, calls poll() and checks what a user would see: the change
records in SPOOL/changes/new, the state record STATE/poller/KEY.json, the
status line and the log lines.
"""

import os
import time

import pytest

import harness
from support import inprocess
from support.inprocess import RecordingNotifier
from buildunits import config, paths, poller
from buildunits.bus import NoBus




@pytest.fixture
def logged(monkeypatch):
    """The daemon's log lines, as plain text."""
    return inprocess.capture_log(monkeypatch)


def make_poller(tmp_path, repository, branches="*"):
    d = paths.Dirs(config=str(tmp_path / "config"), spool=str(tmp_path / "spool"),
                   state=str(tmp_path / "state"), site=str(tmp_path / "site"))
    os.makedirs(os.path.join(d.config, "builders"), exist_ok=True)
    with open(os.path.join(d.config, "builders", "hello.builder"), "w") as f:
        f.write("[Builder]\nRepository=%s\nBranches=%s\nPollIntervalSec=1h\n[Step s]\nCommand=true\n"
                % (repository, branches))
    p = poller.Poller(d, config.load(d.config), NoBus(), RecordingNotifier())
    p.spool.ensure()
    p.state.ensure()
    [p.key] = p.repositories()
    return p


def queued(p):
    """The change records queued, oldest first."""
    return [p.spool.read("changes", cid) for cid in p.spool.pending("changes")]


def take(p):
    """The change records queued, removed from the spool (as the scheduler would)."""
    out = queued(p)
    for c in out:
        p.spool.remove("changes", c["id"])
    return out


@pytest.fixture
def repo(tmp_path):
    r = harness.make_repo(tmp_path / "repos" / "hello.git")
    r.commit({"README": "hello\n"}, message="initial")
    return r


def test_the_first_poll_records_the_heads_and_queues_nothing(tmp_path, repo, logged):
    repo.commit({"a": "1"}, branch="feature")
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    assert queued(p) == []
    assert p.state.read_poller(p.key)["refs"] == {"main": repo.head("main"), "feature": repo.head("feature")}
    assert "%s: first poll: recorded 2 branch heads; commits from now on will be built" % p.key in logged()
    assert p.status_text() == "watching 0 repositories; 1 polls, 0 changes queued"


def test_a_new_commit_queues_one_change_with_gits_fields(tmp_path, repo, logged):
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    sha = repo.commit({"src/a.c": "int a;\n", "README": None, "docs/b.txt": "b\n"},
                      message="Add a\n\nWith a body,\nand: colons.", author="Ann Example <ann@example.org>")
    p.poll(p.key)
    [c] = queued(p)
    assert c["format"] == "change" and c["source"] == "poller"
    assert (c["repository"], c["branch"], c["revision"]) == (p.key, "main", sha)
    assert c["author"] == repo.git("log", "-1", "--format=%an <%ae>", sha) == "Ann Example <ann@example.org>"
    assert c["message"] == repo.git("log", "-1", "--format=%B", sha) == "Add a\n\nWith a body,\nand: colons."
    assert c["when"] == float(repo.git("log", "-1", "--format=%at", sha))
    assert sorted(c["files"]) == sorted(repo.git("diff-tree", "--no-commit-id", "--name-only", "-r", sha).split())
    assert sorted(c["files"]) == ["README", "docs/b.txt", "src/a.c"]
    assert p.state.read_poller(p.key)["refs"] == {"main": sha}
    assert "%s main %s: change queued: Add a" % (p.key, sha[:12]) in logged()
    # Nothing moved since: the next poll queues nothing more.
    p.poll(p.key)
    assert len(queued(p)) == 1
    assert "1 changes queued" in p.status_text()


def test_commits_are_queued_oldest_first(tmp_path, repo):
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    shas = [repo.commit({"n": str(i)}, message="c%d" % i, push=False) for i in range(3)]
    repo.push("main")
    p.poll(p.key)
    assert [c["revision"] for c in queued(p)] == shas
    assert [c["message"] for c in queued(p)] == ["c0", "c1", "c2"]


def test_a_new_branch_queues_only_its_tip(tmp_path, repo):
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    shas = [repo.commit({"f": str(i)}, message="f%d" % i, branch="feature", push=False) for i in range(3)]
    repo.push("feature")
    p.poll(p.key)
    [c] = queued(p)
    assert (c["branch"], c["revision"]) == ("feature", shas[-1])
    assert p.state.read_poller(p.key)["refs"]["feature"] == shas[-1]


def test_at_most_max_commits_are_queued_the_newest(tmp_path, repo, logged, monkeypatch):
    monkeypatch.setattr(poller, "MAX_COMMITS", 3)
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    shas = [repo.commit({"n": str(i)}, message="c%d" % i, push=False) for i in range(5)]
    repo.push("main")
    p.poll(p.key)
    assert [c["revision"] for c in queued(p)] == shas[-3:]
    assert "%s main: 3+ new commits; queueing the newest 3" % p.key in logged()
    assert p.state.read_poller(p.key)["refs"] == {"main": shas[-1]}


def test_a_deleted_branch_is_forgotten(tmp_path, repo):
    repo.commit({"f": "1"}, branch="feature")
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    repo.delete_branch("feature")
    sha = repo.commit({"m": "1"}, branch="main")
    p.poll(p.key)
    assert [(c["branch"], c["revision"]) for c in take(p)] == [("main", sha)]
    assert p.state.read_poller(p.key)["refs"] == {"main": sha}
    # Pushed again later, it is a new branch: its tip only.
    tip = repo.commit({"f": "2"}, branch="feature")
    p.poll(p.key)
    assert [(c["branch"], c["revision"]) for c in take(p)] == [("feature", tip)]


def test_a_deleted_branch_is_forgotten_when_nothing_else_moved(tmp_path, repo):
    repo.commit({"f": "1"}, branch="feature")
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    repo.delete_branch("feature")
    p.poll(p.key)
    assert p.state.read_poller(p.key)["refs"] == {"main": repo.head("main")}


def test_a_branch_deleted_then_pushed_again_builds_only_its_tip(tmp_path, repo):
    repo.commit({"f": "1"}, branch="feature")
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    repo.delete_branch("feature")
    p.poll(p.key)                                   # only the deletion: nothing moved
    repo.git("checkout", "-q", "main")
    repo.git("branch", "-q", "-D", "feature")
    main = [repo.commit({"m": str(i)}, message="m%d" % i, push=False) for i in range(2)]
    repo.push("main")
    tip = repo.commit({"f": "again"}, branch="feature")
    p.poll(p.key)
    got = [(c["branch"], c["revision"]) for c in queued(p)]
    assert sorted(got) == sorted([("main", main[0]), ("main", main[1]), ("feature", tip)])


def test_a_repository_that_cannot_be_polled_shows_its_problem_until_a_poll_succeeds(tmp_path, logged):
    path = tmp_path / "repos" / "later.git"
    p = make_poller(tmp_path, str(path))
    p.poll(p.key)
    assert queued(p) == []
    rec = p.state.read_poller(p.key)
    assert rec["problem"]["text"] and "polled" not in rec
    assert "; cannot poll %s: %s" % (p.key, rec["problem"]["text"]) in p.status_text()
    assert "%s: cannot poll: %s" % (p.key, rec["problem"]["text"]) in logged()
    # Logged once, not at every poll.
    p.poll(p.key)
    assert sum("cannot poll" in line for line in logged()) == 1
    r = harness.make_repo(path)
    sha = r.commit({"a": "1"})
    p.poll(p.key)                                   # the first good poll: still a first poll
    assert queued(p) == []
    rec = p.state.read_poller(p.key)
    assert "problem" not in rec and rec["refs"] == {"main": sha}
    assert "cannot poll" not in p.status_text()


def test_a_repository_that_goes_away_keeps_its_heads_and_its_problem_clears(tmp_path, repo):
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    heads = p.state.read_poller(p.key)["refs"]
    os.rename(repo.bare, repo.bare + ".away")
    p.poll(p.key)
    rec = p.state.read_poller(p.key)
    assert rec["refs"] == heads and rec["problem"]["text"]
    assert "cannot poll" in p.status_text()
    os.rename(repo.bare + ".away", repo.bare)
    p.poll(p.key)                                   # nothing moved: only the problem goes
    rec = p.state.read_poller(p.key)
    assert "problem" not in rec and rec["refs"] == heads
    assert "cannot poll" not in p.status_text()
    assert queued(p) == []
    # And a commit pushed meanwhile is queued as usual.
    sha = repo.commit({"b": "1"})
    p.poll(p.key)
    assert [c["revision"] for c in queued(p)] == [sha]


def test_the_problem_reaches_the_status_line_sent_by_the_timer(tmp_path):
    p = make_poller(tmp_path, str(tmp_path / "nowhere.git"))
    assert p._timer(p.key) is True                  # the timer keeps running
    [status] = p.notifier.statuses()
    assert status.startswith("watching 0 repositories; 1 polls, 0 changes queued; cannot poll %s: " % p.key)


def test_a_force_push_whose_old_head_was_pruned_builds_the_new_head(tmp_path, repo, logged):
    root = repo.head()
    old = [repo.commit({"o": str(i)}, message="old%d" % i) for i in range(2)]
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    repo.git("reset", "-q", "--hard", root)
    new = [repo.commit({"n": str(i)}, message="new%d" % i, push=False) for i in range(2)]
    repo.push("main", force=True)
    harness.git("reflog", "expire", "--expire=now", "--all", cwd=repo.bare)
    harness.git("gc", "-q", "--prune=now", cwd=repo.bare)
    assert harness.git("cat-file", "-t", old[-1], cwd=repo.bare, check=False) == ""
    p.poll(p.key)
    assert [c["revision"] for c in queued(p)] == [new[-1]]
    assert "%s main: old head %s no longer exists; building the new head only" % (p.key, old[-1]) in logged()
    assert p.state.read_poller(p.key)["refs"] == {"main": new[-1]}


def test_a_force_push_whose_old_head_remains_queues_the_new_commits(tmp_path, repo):
    root = repo.head()
    repo.commit({"o": "1"}, message="old")
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    repo.git("reset", "-q", "--hard", root)
    new = [repo.commit({"n": str(i)}, message="new%d" % i, push=False) for i in range(2)]
    repo.push("main", force=True)
    p.poll(p.key)
    assert [c["revision"] for c in queued(p)] == new


def test_branches_globs_choose_the_branches_polled(tmp_path, repo):
    for br in ("release/1", "feature/x", "releases"):
        repo.commit({"x": br}, branch=br)
    p = make_poller(tmp_path, repo.url, branches="main release/*")
    p.poll(p.key)
    assert sorted(p.state.read_poller(p.key)["refs"]) == ["main", "release/1"]
    shas = {br: repo.commit({"y": br}, branch=br) for br in ("main", "release/1", "feature/x", "releases")}
    repo.commit({"z": "new"}, branch="release/2")
    repo.commit({"z": "new"}, branch="hotfix")
    p.poll(p.key)
    got = {(c["branch"], c["revision"]) for c in queued(p)}
    assert got == {("main", shas["main"]), ("release/1", shas["release/1"]),
                   ("release/2", repo.head("release/2"))}
    assert sorted(p.state.read_poller(p.key)["refs"]) == ["main", "release/1", "release/2"]


def test_the_state_is_written_only_after_the_changes(tmp_path, repo, monkeypatch):
    # A crash while queueing leaves the old heads: the next poll re-sends.
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    before = p.state.read_poller(p.key)["refs"]
    sha = repo.commit({"a": "1"})

    def crash(*a):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(p.spool, "deliver", crash)
    with pytest.raises(OSError):
        p.poll(p.key)
    assert p.state.read_poller(p.key)["refs"] == before
    monkeypatch.undo()
    p.poll(p.key)
    assert [c["revision"] for c in queued(p)] == [sha]
    assert p.state.read_poller(p.key)["refs"] == {"main": sha}


def test_the_polled_time_is_recorded(tmp_path, repo):
    p = make_poller(tmp_path, repo.url)
    t0 = time.time()
    p.poll(p.key)
    assert p.state.read_poller(p.key)["polled"] >= t0
