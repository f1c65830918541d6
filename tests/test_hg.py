"""Mercurial repositories (Type=hg): the poller against real repositories
made with hg, the checkout step run by /bin/sh in a real work directory,
and a commit built end to end by the real poller, scheduler and runner.

In-process tests build a Poller over temporary directories (as
test_poller.py does), commit with real hg and call poll(); they check the
change records a user would see in the spool, and the state record.
"""

import os
import pathlib
import subprocess

import pytest

from support import inprocess
from support.hgsvn import HgRepo
from support.inprocess import RecordingNotifier
from buildunits import checkout, config, git, hg, paths, poller, vcs
from buildunits.bus import NoBus
from harness import wait_for


def make_poller(tmp_path, repository, branches="*", type_line="Type=hg\n"):
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
    """The change records queued, oldest first, removed from the spool."""
    out = [p.spool.read("changes", cid) for cid in p.spool.pending("changes")]
    for c in out:
        p.spool.remove("changes", c["id"])
    return out


@pytest.fixture
def repo(tmp_path):
    r = HgRepo(tmp_path / "repos" / "hello")
    r.commit({"README": "hello\n"}, message="initial")
    return r


@pytest.fixture
def logged(monkeypatch):
    return inprocess.capture_log(monkeypatch)


def test_a_local_mercurial_repository_is_detected_without_type(tmp_path, repo):
    p = make_poller(tmp_path, repo.url, type_line="")
    assert p.cfg.builders["hello"].kind == "hg" and p.cfg.repository_kind(p.key) == "hg"


def test_the_first_poll_records_the_heads_and_queues_nothing(tmp_path, repo, logged):
    repo.commit({"a": "1"}, branch="stable")
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    assert take(p) == []
    assert p.state.read_poller(p.key)["refs"] == {"default": repo.head("default"), "stable": repo.head("stable")}
    assert "%s: first poll: recorded 2 branch heads; commits from now on will be built" % p.key in logged()


def test_new_changesets_on_two_branches_are_queued_oldest_first_with_their_fields(tmp_path, repo):
    repo.commit({"s": "1"}, "stable starts", branch="stable")
    repo.update("default")
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    n1 = repo.commit({"src/a.c": "int a;\n", "docs/b.txt": "b\n"}, "Add a\n\nWith a body.",
                     author="Ann Example <ann@example.org>")
    n2 = repo.commit({"README": None}, "Drop the README")
    repo.update("stable")
    n3 = repo.commit({"s": "2"}, "fix on stable", branch="stable")
    p.poll(p.key)
    changes = take(p)
    assert [(c["branch"], c["revision"]) for c in changes] == [("default", n1), ("default", n2), ("stable", n3)]
    c1 = changes[0]
    assert c1["author"] == "Ann Example <ann@example.org>" and c1["message"] == "Add a\n\nWith a body."
    assert sorted(c1["files"]) == ["docs/b.txt", "src/a.c"] and changes[1]["files"] == ["README"]
    assert isinstance(c1["when"], float) and abs(c1["when"] - os.stat(repo.path).st_mtime) < 3600
    assert c1["source"] == "poller" and c1["repository"] == p.key
    assert p.state.read_poller(p.key)["refs"] == {"default": n2, "stable": n3}
    p.poll(p.key)
    assert take(p) == []


def test_a_new_branch_queues_only_its_tip(tmp_path, repo):
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    repo.commit({"f": "1"}, "feature one", branch="feature")
    tip = repo.commit({"f": "2"}, "feature two")
    p.poll(p.key)
    assert [(c["branch"], c["revision"]) for c in take(p)] == [("feature", tip)]


def test_branches_globs_choose_the_branches_polled(tmp_path, repo):
    p = make_poller(tmp_path, repo.url, branches="release-*")
    p.poll(p.key)
    repo.commit({"x": "1"}, "on default")
    rel = repo.commit({"r": "1"}, "release", branch="release-1")
    p.poll(p.key)
    assert [(c["branch"], c["revision"]) for c in take(p)] == [("release-1", rel)]


def test_hostile_messages_authors_and_file_names_keep_the_records_structure(tmp_path, repo, logged):
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    # (hg refuses a new line in a user name, not in a message.)
    message = b'first line\x00after NUL\n"quoted", {"json": [1]}\n<xml/>&amp;\n\\u0000'
    n1 = repo.commit({"a\tb.txt": "1", '"q".txt': "2"}, message, author=b'Eve\x01 "<e@x>" \\ {"a": 1}')
    # Bytes that are not UTF-8: a message and author in Latin-1, a file name of raw bytes.
    n2 = repo.commit({os.fsdecode(b"caf\xe9.txt"): "3"}, "caf\xe9 cr\xe8me".encode("latin-1"),
                     author="Jos\xe9 <j@x>".encode("latin-1"), encoding="latin-1")
    p.poll(p.key)
    c1, c2 = take(p)
    assert c1["revision"] == n1 and c1["message"] == message.decode()
    assert c1["author"] == 'Eve\x01 "<e@x>" \\ {"a": 1}' and sorted(c1["files"]) == ['"q".txt', "a\tb.txt"]
    # hg keeps text as UTF-8 (converted from the committer's encoding);
    # a file name is bytes, and an undecodable byte becomes U+FFFD.
    assert c2["revision"] == n2 and c2["message"] == "caf\xe9 cr\xe8me" and c2["author"] == "Jos\xe9 <j@x>"
    assert c2["files"] == ["caf\ufffd.txt"]
    # The journal line shows the subject with its control characters as "?".
    assert "%s default %s: change queued: first line?after NUL" % (p.key, n1[:12]) in logged()


def test_a_branch_whose_name_could_be_an_option_or_a_revset_is_not_polled(tmp_path, repo):
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    for name in ("-r", "x'or'y", "a b"):
        repo.update("default")
        repo.commit({"n": name}, "on a strange branch", branch=name)
    ok = repo.commit({"o": "1"}, "fine", branch="ok/1.x")
    p.poll(p.key)
    assert [(c["branch"], c["revision"]) for c in take(p)] == [("ok/1.x", ok)]
    assert "-r" not in p.state.read_poller(p.key)["refs"]


def test_a_stripped_old_head_builds_the_new_head(tmp_path, repo, logged):
    p = make_poller(tmp_path, repo.url)
    base = repo.head()
    gone = repo.commit({"a": "1"}, "to be stripped")
    p.poll(p.key)
    repo.hg("--config", "extensions.strip=", "strip", "-q", "-r", gone)
    repo.update(base)
    new = repo.commit({"b": "1"}, "instead")
    p.poll(p.key)
    assert [c["revision"] for c in take(p)] == [new]
    assert any("old head %s no longer exists; building the new head only" % gone in line for line in logged())


def test_a_remote_repository_is_pulled_into_a_mirror(tmp_path, repo):
    """hg serve over real HTTP: the poller pulls into poller/KEY.hg."""
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as out:
        server = subprocess.Popen(["hg", "serve", "-R", repo.path, "-a", "127.0.0.1", "-p", "0",
                                   "--config", "web.push_ssl=false"], stdout=out, stderr=subprocess.STDOUT,
                                  env=dict(os.environ, HGRCPATH=""))
    try:
        wait_for(lambda: "bound to 127.0.0.1:" in log_path.read_text(), what="hg serve listening")
        port = log_path.read_text().split("bound to 127.0.0.1:", 1)[1].split(")", 1)[0]
        url = "http://127.0.0.1:%s" % port
        p = make_poller(tmp_path, url)
        p.poll(p.key)
        assert p.state.read_poller(p.key)["refs"] == {"default": repo.head()}
        assert os.path.isdir(os.path.join(p.state.mirror_path(p.key, ".hg"), ".hg"))
        n = repo.commit({"r": "1"}, "served")
        p.poll(p.key)
        assert [(c["revision"], c["message"]) for c in take(p)] == [(n, "served")]
    finally:
        server.terminate()
        server.wait()


# ----------------------------------------------------------------- checkout

def run_checkout(workdir, repository, branch, revision):
    script = checkout.checkout_script(repository, branch, revision, "hg")
    return subprocess.run(["/bin/sh", "-c", script], cwd=workdir, capture_output=True, text=True,
                          env=dict(os.environ, BUILDUNITS_REPOSITORY=repository, HGRCPATH=""))


def test_the_checkout_step_gives_the_revision_and_a_clean_tree(tmp_path, repo):
    n1 = repo.commit({"v": "1"}, "one")
    n2 = repo.commit({"v": "2"}, "two")
    repo.update("default")
    s = repo.commit({"v": "stable"}, "stable", branch="stable")
    work = tmp_path / "work"
    work.mkdir()
    p = run_checkout(work, repo.url, "default", n1)
    assert p.returncode == 0, p.stderr
    assert (work / "v").read_text() == "1" and checkout.head(str(work)) == n1
    assert "checked out %s" % n1 in p.stdout
    (work / "v").write_text("changed by a step")
    (work / "untracked").write_text("x")
    p = run_checkout(work, repo.url, "default", n2)
    assert p.returncode == 0, p.stderr
    assert (work / "v").read_text() == "2" and not (work / "untracked").exists() and checkout.head(str(work)) == n2
    # A forced build without a revision: the branch's tip.
    p = run_checkout(work, repo.url, "stable", "")
    assert p.returncode == 0, p.stderr
    assert checkout.head(str(work)) == s and (work / "v").read_text() == "stable"


def test_no_repositorys_own_hgrc_runs_in_the_checkout_or_the_poll(tmp_path, repo):
    """A repository's .hg/hgrc is its owner's (the source's) or a build's
    (the work directory's): its hooks run in no checkout step and no
    poll.  (A hook of another user's repository also made hg abort the
    pull: "untrusted hook preoutgoing not executed".)"""
    marks = tmp_path / "marks"
    marks.mkdir()
    hook = "touch %s/%%s" % marks
    n1 = repo.commit({"v": "1"}, "one")
    (pathlib.Path(repo.path) / ".hg" / "hgrc").write_text(
        "[hooks]\npreoutgoing = %s\noutgoing = %s\n[extensions]\nnot_there = %s/none.py\n"
        % (hook % "source-pre", hook % "source-out", tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    p = run_checkout(work, repo.url, "default", n1)
    assert p.returncode == 0, p.stderr
    # A build writes hooks into its checkout's .hg/hgrc; the next checkout ignores them.
    (work / ".hg" / "hgrc").write_text("[hooks]\npre-pull = %s\nupdate = %s\n" % (hook % "work-pre", hook % "work-up"))
    n2 = repo.commit({"v": "2"}, "two")
    p = run_checkout(work, repo.url, "default", n2)
    assert p.returncode == 0, p.stderr
    assert checkout.head(str(work)) == n2 and "none.py" not in p.stderr, p.stderr
    # The poll reads the repository without its hgrc (its extension is not loaded).
    p = make_poller(tmp_path, repo.url)
    p.poll(p.key)
    n3 = repo.commit({"v": "3"}, "three")
    p.poll(p.key)
    assert [c["revision"] for c in take(p)] == [n3]
    assert sorted(os.listdir(marks)) == []


def test_the_checkout_step_refuses_a_revision_hg_cannot_have(tmp_path, repo):
    work = tmp_path / "work"
    work.mkdir()
    for rev, branch in (("tip", "default"), ("1234", "default"), ("", "x') or all() or ('")):
        p = run_checkout(work, repo.url, branch, rev)
        assert p.returncode == 1 and "buildunits: cannot check out" in p.stderr
    assert not (work / ".hg").exists()


def test_the_checkout_step_keeps_credentials_off_the_command_line(tmp_path):
    script = checkout.checkout_script("https://user:s3cret@example.org/r", "default", "a" * 40, "hg")
    assert "s3cret" not in script and "https://user:***@example.org/r" in script
    assert "'paths.buildunits=$BUILDUNITS_REPOSITORY'" in script


def test_revisions_are_full_changeset_ids():
    assert hg.valid_revision("0123456789abcdef0123456789abcdef01234567")
    for bad in ("tip", ".", "0", "A" * 40, "a" * 39, "a" * 64, "id(x)", None):
        assert not hg.valid_revision(bad), bad
    assert vcs.valid_revision("a" * 40) and not vcs.valid_revision("a" * 40, "svn")


# -------------------------------------------------------------- end to end

HELLO = """
[Builder]
Repository={repo}
Type=hg
Branches=default stable
PollIntervalSec=200ms

[Step show]
Command=cat version; echo "rev $BUILDUNITS_REVISION on $BUILDUNITS_BRANCH"
"""


def test_a_changeset_is_built_by_the_real_daemons(daemons, tmp_path):
    repo = HgRepo(tmp_path / "repos" / "hello")
    repo.commit({"version": "v0\n"}, "initial")
    daemons.write_builder("hello", HELLO.format(repo=repo.url))
    for name in ("poller", "scheduler"):
        daemons.start(name)
    daemons.start("runner", "w1")
    wait_for(lambda: os.listdir(os.path.join(daemons.state_dir, "poller")), what="the poller's first poll")
    n1 = repo.commit({"version": "v1\n"}, "version one")
    b1 = daemons.wait_build_finished("hello", 1)
    assert b1["result"] == "success" and b1["revision"] == n1 and b1["branch"] == "default"
    assert [s["name"] for s in b1["steps"]] == ["checkout", "show"]
    assert b1["request"]["changes"][0]["message"] == "version one"
    assert "v1\nrev %s on default" % n1 in daemons.step_log("hello", 1, "show")
    assert "checked out %s" % n1 in daemons.step_log("hello", 1, "checkout")
    repo.update("default")
    s = repo.commit({"version": "stable\n"}, "stable", branch="stable")
    b2 = daemons.wait_build_finished("hello", 2)
    assert b2["result"] == "success" and b2["revision"] == s and b2["branch"] == "stable"
    assert "stable\nrev %s on stable" % s in daemons.step_log("hello", 2, "show")


def test_type_must_be_a_known_system_and_builders_of_one_repository_must_agree(tmp_path, repo):
    d = tmp_path / "cfg"
    (d / "builders").mkdir(parents=True)
    (d / "builders" / "a.builder").write_text("[Builder]\nRepository=%s\nType=cvs\n[Step s]\nCommand=true\n" % repo.url)
    with pytest.raises(config.ConfigError) as e:
        config.load(str(d))
    assert "a.builder:3: [Builder] Type=: not one of git|hg|svn: 'cvs'" in str(e.value)
    (d / "builders" / "a.builder").write_text("[Builder]\nRepository=%s\n[Step s]\nCommand=true\n" % repo.url)
    (d / "builders" / "b.builder").write_text("[Builder]\nRepository=%s/\nType=git\n[Step s]\nCommand=true\n"
                                               % repo.url)
    with pytest.raises(config.ConfigError) as e:
        config.load(str(d))
    assert "is git here but hg in builder a; builders naming one repository must agree" in str(e.value)


def test_sendchange_from_a_changegroup_hook_reads_the_changeset(daemons, tmp_path):
    repo = HgRepo(tmp_path / "repos" / "hello")
    node = repo.commit({"a.c": "1"}, "from a hook", author="Ann <a@x>")
    base = ["sendchange", "--repository", repo.url, "--branch", "default"]
    for bad in ("tip", node[:12], "1"):
        p = daemons.cli(*(base + ["--revision", bad]))
        assert p.returncode == 2 and "a full changeset id" in p.stderr, p.stderr
    daemons.cli(*(base + ["--revision", node]), check=True)
    sp = daemons.spool
    [c] = [sp.read("changes", cid) for cid in sp.pending("changes")]
    assert (c["revision"], c["author"], c["message"], c["files"]) == (node, "Ann <a@x>", "from a hook", ["a.c"])


def test_a_pull_left_unfinished_in_the_mirror_is_rolled_back_first(tmp_path, repo):
    """A pull killed at its deadline leaves hg's journal in the mirror."""
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as out:
        server = subprocess.Popen(["hg", "serve", "-R", repo.path, "-a", "127.0.0.1", "-p", "0"], stdout=out,
                                  stderr=subprocess.STDOUT, env=dict(os.environ, HGRCPATH=""))
    try:
        wait_for(lambda: "bound to 127.0.0.1:" in log_path.read_text(), what="hg serve listening")
        port = log_path.read_text().split("bound to 127.0.0.1:", 1)[1].split(")", 1)[0]
        p = make_poller(tmp_path, "http://127.0.0.1:%s" % port)
        p.poll(p.key)
        mirror = p.state.mirror_path(p.key, ".hg")
        with open(os.path.join(mirror, ".hg", "store", "journal"), "wb") as f:
            f.write(b"")     # what an interrupted transaction leaves
        n = repo.commit({"r": "1"}, "after the interrupted pull")
        p.poll(p.key)
        assert [c["revision"] for c in take(p)] == [n]
        assert "problem" not in p.state.read_poller(p.key)
    finally:
        server.terminate()
        server.wait()


def test_an_unchanged_local_repository_is_polled_without_hg(tmp_path, repo, monkeypatch):
    p = make_poller(tmp_path, repo.url)
    store = os.path.join(repo.path, ".hg", "store")
    for n in os.listdir(store):
        st = os.lstat(os.path.join(store, n))
        os.utime(os.path.join(store, n), (st.st_atime - 3600, st.st_mtime - 3600), follow_symlinks=False)
    runs = []
    real = git._run
    monkeypatch.setattr(git, "_run", lambda args, input=None, program="git", env=None:
                        runs.append((program, args[2])) or real(args, input, program, env))
    p.poll(p.key)
    p.poll(p.key)
    assert runs == [("hg", "branches")]                # the second poll ran no hg
    n = repo.commit({"a": "2"}, "seen")                # appends to the changelog: new size and time
    p.poll(p.key)
    assert [c["revision"] for c in take(p)] == [n]
