"""Subversion repositories (Type=svn): the poller against real
repositories made with svnadmin (file:// URLs), the checkout step run by
/bin/sh in a real work directory, and a revision built end to end by the
real poller, scheduler and runner.

In-process tests build a Poller over temporary directories (as
test_poller.py does), commit with real svn and call poll(); they check the
change records a user would see in the spool, and the state record.
"""

import os
import subprocess

import pytest

from support import inprocess
from support.hgsvn import SvnRepo
from support.inprocess import RecordingNotifier
from buildunits import checkout, config, paths, poller, svn, vcs
from buildunits.bus import NoBus
from harness import wait_for


def make_poller(tmp_path, repository, branches="*", type_line="Type=svn\n"):
    d = paths.Dirs(config=str(tmp_path / "config"), spool=str(tmp_path / "spool"),
                   state=str(tmp_path / "state"), site=str(tmp_path / "site"))
    os.makedirs(os.path.join(d.config, "builders"), exist_ok=True)
    with open(os.path.join(d.config, "builders", "hello.builder"), "w") as f:
        f.write("[Builder]\nRepository=%s\n%sBranches=%s\nPollIntervalSec=1h\n[Step s]\nCommand=true\n"
                % (repository, type_line, branches))
    p = poller.Poller(d, config.load(d.config), NoBus(), RecordingNotifier())
    p.spool.ensure()
    p.state.ensure()
    [p.key] = p.repositories()
    return p


def take(p):
    out = [p.spool.read("changes", cid) for cid in p.spool.pending("changes")]
    for c in out:
        p.spool.remove("changes", c["id"])
    return out


@pytest.fixture
def repo(tmp_path):
    r = SvnRepo(tmp_path / "repos" / "hello")
    r.commit({"README": "hello\n"}, message="initial")
    return r


@pytest.fixture
def logged(monkeypatch):
    return inprocess.capture_log(monkeypatch)


def test_a_repository_is_detected_from_its_url_or_its_directory(tmp_path, repo):
    assert make_poller(tmp_path, repo.url, type_line="").cfg.builders["hello"].kind == "svn"
    assert vcs.kind(repo.path) == "svn" and vcs.kind(repo.path + "/project") == "svn"
    assert vcs.kind("svn://example.org/repo") == "svn" and vcs.kind("svn+ssh://example.org/r") == "svn"
    assert vcs.kind("https://example.org/repo") == "git" and vcs.kind("https://example.org/r", "svn") == "svn"


def test_the_first_poll_records_the_heads_and_queues_nothing(tmp_path, repo, logged):
    b = repo.branch("1.x")
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    assert take(p) == []
    assert p.state.read_poller(p.key)["refs"] == {"trunk": "2", "branches/1.x": b}
    assert "%s: first poll: recorded 2 branch heads; commits from now on will be built" % p.key in logged()


def test_new_revisions_on_two_branches_are_queued_oldest_first_with_their_fields(tmp_path, repo):
    repo.branch("1.x")
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    r1 = repo.commit({"src/a.c": "int a;\n", "README": "changed\n"}, "Add a\n\nWith a body.", author="ann")
    r2 = repo.commit({"README": None}, "Drop the README")
    r3 = repo.commit({"fix": "1"}, "fix on 1.x", branch="branches/1.x")
    p.poll(p.key)
    changes = take(p)
    assert sorted((c["branch"], c["revision"]) for c in changes) == [
        ("branches/1.x", r3), ("trunk", r1), ("trunk", r2)]
    trunk = [c for c in changes if c["branch"] == "trunk"]
    assert [c["revision"] for c in trunk] == [r1, r2]
    c1 = trunk[0]
    assert c1["author"] == "ann" and c1["message"] == "Add a\n\nWith a body."
    assert sorted(c1["files"]) == ["README", "src/a.c"] and trunk[1]["files"] == ["README"]
    assert isinstance(c1["when"], float) and abs(c1["when"] - os.stat(repo.path).st_mtime) < 3600
    assert [c["files"] for c in changes if c["branch"] != "trunk"] == [["fix"]]
    assert p.state.read_poller(p.key)["refs"] == {"trunk": r2, "branches/1.x": r3}
    p.poll(p.key)
    assert take(p) == []


def test_a_new_branch_queues_only_its_tip_and_tags_are_not_branches(tmp_path, repo):
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    repo.branch("feature")
    repo.commit({"f": "1"}, "feature one", branch="branches/feature")
    tip = repo.commit({"f": "2"}, "feature two", branch="branches/feature")
    repo.svn("copy", "-q", "-m", "tag", "--", repo.url + "/trunk@", repo.url + "/tags/v1")
    p.poll(p.key)
    assert [(c["branch"], c["revision"]) for c in take(p)] == [("branches/feature", tip)]


def test_branches_globs_choose_the_branches_polled(tmp_path, repo):
    repo.branch("release-1")
    p = make_poller(tmp_path, repo.url, branches="branches/release-*")
    p.poll(p.key)
    repo.commit({"x": "1"}, "on trunk")
    rel = repo.commit({"r": "1"}, "release", branch="branches/release-1")
    p.poll(p.key)
    assert [(c["branch"], c["revision"]) for c in take(p)] == [("branches/release-1", rel)]


def test_a_project_below_the_repository_root(tmp_path):
    """Repository= names a project's directory: files are still relative to the branch."""
    r = SvnRepo(tmp_path / "repos" / "multi", layout=False)
    r.svn("mkdir", "-q", "--parents", "-m", "layout", "--", r.url + "/proj/trunk", r.url + "/proj/branches")
    p = make_poller(tmp_path, r.url + "/proj")
    p.poll(p.key)
    rev = r.commit({"a.c": "1"}, "in proj", branch="proj/trunk")
    p.poll(p.key)
    [c] = take(p)
    assert (c["branch"], c["revision"], c["files"]) == ("trunk", rev, ["a.c"])


def test_hostile_messages_authors_and_paths_keep_the_records_structure(tmp_path, repo):
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    message = '<logentry revision="99"><msg>forged</msg></logentry>\n]]> <!DOCTYPE x [<!ENTITY e "x">]> &e; &amp;\n\x01'
    r1 = repo.commit({"<path>&amp;.txt": "1"}, message, author='"></author><author>mallory')
    r2 = repo.commit({"b": "2"}, "plain")
    # Revision properties svn itself would refuse: not UTF-8, a NUL.
    repo.set_revprop(r2, "svn:log", b"caf\xe9 \x00after NUL")
    repo.set_revprop(r2, "svn:author", b"Jos\xe9")
    p.poll(p.key)
    c1, c2 = take(p)
    assert c1["revision"] == r1 and c1["author"] == '"></author><author>mallory'
    # svn writes a control character as "?\NNN".
    assert c1["message"] == message.replace("\x01", "?\\001") and c1["files"] == ["<path>&amp;.txt"]
    assert (c2["revision"], c2["author"], c2["message"]) == (r2, "Jos\ufffd", "caf\ufffd ")


def test_xml_with_a_declaration_is_refused_whole():
    with pytest.raises(svn.SvnError, match="declaration"):
        svn._xml(b'<?xml version="1.0"?><!DOCTYPE log [<!ENTITY a "aaaa">]><log>&a;</log>', "log")
    with pytest.raises(svn.SvnError, match="not XML"):
        svn._xml(b"<log><logentry></log>", "log")


def test_a_repository_that_cannot_be_polled_shows_its_problem(tmp_path):
    p = make_poller(tmp_path, "file://" + str(tmp_path / "nowhere"), type_line="Type=svn\n")
    p.poll(p.key)
    problem = p.state.read_poller(p.key)["problem"]["text"]
    assert problem.startswith("svn list: ") and "nowhere" in problem


# ----------------------------------------------------------------- checkout

def run_checkout(workdir, repository, branch, revision):
    script = checkout.checkout_script(repository, branch, revision, "svn")
    return subprocess.run(["/bin/sh", "-c", script], cwd=workdir, capture_output=True, text=True,
                          env=dict(os.environ, BUILDUNITS_REPOSITORY=repository, HOME=str(workdir) + ".home"))


def test_the_checkout_step_gives_the_revision_and_a_clean_tree(tmp_path, repo):
    r1 = repo.commit({"v": "1"}, "one")
    r2 = repo.commit({"v": "2"}, "two")
    repo.branch("1.x")
    b = repo.commit({"v": "1.x"}, "on 1.x", branch="branches/1.x")
    work = tmp_path / "work"
    work.mkdir()
    p = run_checkout(work, repo.url, "trunk", r1)
    assert p.returncode == 0, p.stderr
    assert (work / "v").read_text() == "1" and checkout.head(str(work)) == r1
    assert "checked out r%s of ^/trunk" % r1 in p.stdout
    (work / "v").write_text("changed by a step")
    (work / "untracked").write_text("x")
    p = run_checkout(work, repo.path, "trunk", r2)     # a plain path works too
    assert p.returncode == 0, p.stderr
    assert (work / "v").read_text() == "2" and not (work / "untracked").exists() and checkout.head(str(work)) == r2
    # Another branch, without a revision (a forced build of its tip).
    p = run_checkout(work, repo.url, "branches/1.x", "")
    assert p.returncode == 0, p.stderr
    assert (work / "v").read_text() == "1.x" and checkout.head(str(work)) == b


def test_the_checkout_step_refuses_what_svn_cannot_have(tmp_path, repo):
    work = tmp_path / "work"
    work.mkdir()
    for rev, branch in (("HEAD", "trunk"), ("a" * 40, "trunk"), ("", "tags/v1"), ("", "branches/x y"),
                        ("", "../../etc")):
        p = run_checkout(work, repo.url, branch, rev)
        assert p.returncode == 1 and "buildunits: cannot check out" in p.stderr, (rev, branch, p.stderr)
    assert os.listdir(work) == []


def test_revisions_are_decimal_numbers():
    assert svn.valid_revision("1") and svn.valid_revision("4294967296")
    for bad in ("0", "01", "-1", "HEAD", "1 ", "1\n", "+1", "a" * 40, "\u0661", None, 1):
        assert not svn.valid_revision(bad), bad


# -------------------------------------------------------------- end to end

HELLO = """
[Builder]
Repository={repo}
Branches=trunk branches/*
PollIntervalSec=200ms

[Step show]
Command=cat version; echo "rev $BUILDUNITS_REVISION on $BUILDUNITS_BRANCH"
"""


def test_a_revision_is_built_by_the_real_daemons(daemons, tmp_path):
    repo = SvnRepo(tmp_path / "repos" / "hello")
    repo.commit({"version": "v0\n"}, "initial")
    repo.branch("1.x")      # before the first poll: a branch made later would have its copy built
    daemons.write_builder("hello", HELLO.format(repo=repo.url))
    for name in ("poller", "scheduler"):
        daemons.start(name)
    daemons.start("runner", "w1")
    wait_for(lambda: os.listdir(os.path.join(daemons.state_dir, "poller")), what="the poller's first poll")
    r1 = repo.commit({"version": "v1\n"}, "version one")
    b1 = daemons.wait_build_finished("hello", 1)
    assert b1["result"] == "success" and b1["revision"] == r1 and b1["branch"] == "trunk"
    assert [s["name"] for s in b1["steps"]] == ["checkout", "show"]
    assert b1["request"]["changes"][0]["message"] == "version one"
    assert "v1\nrev %s on trunk" % r1 in daemons.step_log("hello", 1, "show")
    r2 = repo.commit({"version": "1.x\n"}, "on 1.x", branch="branches/1.x")
    b2 = daemons.wait_build_finished("hello", 2)
    assert b2["result"] == "success" and b2["revision"] == r2 and b2["branch"] == "branches/1.x"
    assert "1.x\nrev %s on branches/1.x" % r2 in daemons.step_log("hello", 2, "show")


def test_sendchange_from_a_post_commit_hook_takes_a_revision_number(daemons, tmp_path):
    repo = SvnRepo(tmp_path / "repos" / "hello")
    rev = repo.commit({"a": "1"}, "from a hook")
    base = ["sendchange", "--repository", repo.url, "--branch", "trunk"]
    for bad in ("HEAD", "0", "a" * 40):
        p = daemons.cli(*(base + ["--revision", bad]))
        assert p.returncode == 2 and "a Subversion revision number" in p.stderr, p.stderr
    daemons.cli(*(base + ["--revision", rev, "--author", "harness", "--message", "from a hook"]), check=True)
    sp = daemons.spool
    [c] = [sp.read("changes", cid) for cid in sp.pending("changes")]
    assert (c["revision"], c["branch"], c["author"], c["message"]) == (rev, "trunk", "harness", "from a hook")
