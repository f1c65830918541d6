"""Tags= of a git builder: new tags are built (the commit each names,
with the tag's name in the change), and the checkout step fetches the
tags, so that `git describe` works in a step.  Real git repositories;
the poller in-process (as test_poller.py), then the real daemons.
"""

import os

import pytest

import harness
from support import inprocess
from support.inprocess import RecordingNotifier
from buildunits import config, paths, poller
from buildunits.bus import NoBus
from harness import wait_for


def write_builder(d, repository, extra):
    os.makedirs(os.path.join(d, "builders"), exist_ok=True)
    with open(os.path.join(d, "builders", "hello.builder"), "w") as f:
        f.write("[Builder]\nRepository=%s\nBranches=main\n%sPollIntervalSec=1h\n[Step s]\nCommand=true\n"
                % (repository, extra))


def make_poller(tmp_path, repository, extra="Tags=v*\n"):
    d = paths.Dirs(config=str(tmp_path / "config"), spool=str(tmp_path / "spool"),
                   state=str(tmp_path / "state"), site=str(tmp_path / "site"))
    write_builder(d.config, repository, extra)
    p = poller.Poller(d, config.load(d.config), NoBus(), RecordingNotifier())
    p.spool.ensure()
    p.state.ensure()
    [p.key] = p.repositories()
    return p


def reload(p, extra):
    write_builder(p.dirs.config, p.key, extra)
    old, p.cfg = p.cfg, config.load(p.dirs.config)
    p.on_config(old, p.cfg)


def take(p):
    out = [p.spool.read("changes", cid) for cid in p.spool.pending("changes")]
    for c in out:
        p.spool.remove("changes", c["id"])
    return out


def tag(repo, name, rev="HEAD", message=None, force=False):
    """Tag REV in the work clone (annotated with MESSAGE) and push the tag."""
    repo.git("tag", *(["-f"] if force else []), *(["-a", "-m", message] if message else []), name, rev)
    repo.git("push", "-q", *(["-f"] if force else []), "origin", "refs/tags/" + name)


@pytest.fixture
def repo(tmp_path):
    r = harness.make_repo(tmp_path / "repos" / "hello.git")
    r.commit({"README": "hello\n"}, message="initial")
    return r


@pytest.fixture
def logged(monkeypatch):
    return inprocess.capture_log(monkeypatch)


def test_tags_there_at_the_first_poll_are_recorded_not_built(tmp_path, repo):
    tag(repo, "v0")
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    assert take(p) == []
    assert p.state.read_poller(p.key)["refs"] == {"main": repo.head(), "refs/tags/v0": repo.head()}


def test_a_new_tag_queues_its_commit_with_the_tags_name(tmp_path, repo):
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    old = repo.head()
    repo.commit({"a": "1"}, "after")
    take(p)
    tag(repo, "v1", old)                              # lightweight, on an older commit
    tag(repo, "v2", "HEAD", message="release two")   # annotated: the commit it names is built
    tag(repo, "other")                                # not in Tags=
    p.poll(p.key)
    changes = [c for c in take(p) if c.get("tag")]
    assert [(c["branch"], c["tag"], c["revision"]) for c in changes] == [
        ("refs/tags/v1", "v1", old), ("refs/tags/v2", "v2", repo.head())]
    assert changes[0]["message"] == "initial" and changes[1]["message"] == "after"
    refs = p.state.read_poller(p.key)["refs"]
    assert refs["refs/tags/v2"] == repo.head() and "refs/tags/other" not in refs
    p.poll(p.key)
    assert take(p) == []


def test_a_moved_tag_is_built_again_and_a_deleted_one_forgotten(tmp_path, repo):
    tag(repo, "v1")
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    new = repo.commit({"a": "1"}, "fixed", push=False)
    repo.push("main")
    tag(repo, "v1", new, force=True)
    p.poll(p.key)
    assert sorted((c["branch"], c["revision"]) for c in take(p)) == [("main", new), ("refs/tags/v1", new)]
    repo.git("push", "-q", "origin", ":refs/tags/v1")
    p.poll(p.key)
    assert "refs/tags/v1" not in p.state.read_poller(p.key)["refs"]


def test_tags_are_not_polled_without_tags_and_adding_it_builds_no_old_tag(tmp_path, repo, logged):
    tag(repo, "v1")
    p = make_poller(tmp_path, repo.url, extra="")
    p.poll(p.key)
    tag(repo, "v2")
    p.poll(p.key)
    assert take(p) == [] and "refs/tags/v1" not in p.state.read_poller(p.key)["refs"]
    reload(p, "Tags=v*\n")
    p.poll(p.key)
    assert take(p) == []
    assert any("first poll of its tags: recorded 2 tags; tags from now on will be built" in l for l in logged())
    tag(repo, "v3")
    p.poll(p.key)
    assert [c["tag"] for c in take(p)] == ["v3"]


def test_the_fingerprint_sees_a_new_tag(tmp_path, repo):
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    for top, dirs, files in os.walk(repo.bare):
        for n in dirs + files + ["."]:
            path = os.path.join(top, n)
            st = os.lstat(path)
            os.utime(path, (st.st_atime - 3600, st.st_mtime - 3600), follow_symlinks=False)
    p.poll(p.key)
    assert p._fingerprints.get(p.key) is not None      # trusted: the next poll would need no git
    tag(repo, "v1")
    p.poll(p.key)
    assert [c["tag"] for c in take(p)] == ["v1"]


def test_tags_on_an_hg_builder_are_an_error(tmp_path):
    from support.hgsvn import HgRepo
    r = HgRepo(tmp_path / "hg")
    write_builder(str(tmp_path / "cfg"), r.url, "Tags=v*\n")
    with pytest.raises(config.ConfigError, match=r"Tags=: is for git repositories; .* is hg"):
        config.load(str(tmp_path / "cfg"))


def test_a_builder_wants_a_tag_by_tags_not_branches():
    b = config.Builder(name="b", path="p", branches=["*"], tags=["v*"])
    assert b.wants_branch("main") and b.wants_branch("refs/tags/v1") and not b.wants_branch("refs/tags/x1")
    assert not config.Builder(name="b", path="p").wants_branch("refs/tags/v1")


# -------------------------------------------------------------- end to end

HELLO = """
[Builder]
Repository={repo}
Branches=main
Tags=v*
PollIntervalSec=200ms

[Step describe]
Command=echo "described as $(git describe --tags) on $BUILDUNITS_BRANCH"
"""


def test_a_tag_is_built_and_git_describe_works_in_a_step(daemons, git_repo):
    git_repo.commit({"a": "0"}, "initial")
    daemons.write_builder("hello", HELLO.format(repo=git_repo.bare))
    for name in ("poller", "scheduler"):
        daemons.start(name)
    daemons.start("runner", "w1")
    wait_for(lambda: os.listdir(os.path.join(daemons.state_dir, "poller")), what="the poller's first poll")
    tag(git_repo, "v1.0", message="one")
    b1 = daemons.wait_build_finished("hello", 1)
    assert b1["result"] == "success" and b1["revision"] == git_repo.head() and b1["branch"] == "refs/tags/v1.0"
    assert b1["request"]["changes"][0]["tag"] == "v1.0"
    assert "described as v1.0 on refs/tags/v1.0" in daemons.step_log("hello", 1, "describe")
    sha = git_repo.commit({"a": "1"}, "after the tag")
    b2 = daemons.wait_build_finished("hello", 2)
    assert b2["revision"] == sha and b2["branch"] == "main"
    assert "described as v1.0-1-g%s on main" % sha[:7] in daemons.step_log("hello", 2, "describe")
