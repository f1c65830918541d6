"""Reading commits from real repositories whose contents are hostile.

git.commits() must record each commit exactly as git stores it, whatever
bytes its message, author or file names hold: no content may change the
structure of what is parsed (make a second record, move a field, fail the
whole read).  The oracle is the commit object itself (`git cat-file
commit`) and the trees it names.  A commit that cannot be parsed is left
out and reported, and the commits after it are read.

The property test makes raw commit objects with `git hash-object -t commit
--literally` (which stores what `git commit` would refuse) and trees with
`git mktree -z`, from arbitrary bytes.  Examples: BUILDUNITS_FUZZ_EXAMPLES
as in test_fuzz.py (a quarter of it here: each example runs git).
"""

import os
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import harness
from harness import wait_for
from buildunits import git, records

EXAMPLES = int(os.environ.get("BUILDUNITS_FUZZ_EXAMPLES") or 120)
fuzz_git = settings(max_examples=max(10, EXAMPLES // 4), deadline=None, database=None, print_blob=True,
                    suppress_health_check=list(HealthCheck))

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


def raw_git(git_dir, *args, input=b""):
    """Run git on GIT_DIR with bytes in and out; stdout, stripped of the final newline."""
    p = subprocess.run(["git", "--git-dir=" + git_dir] + list(args), input=input, env=harness.git_env(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    return p.stdout.rstrip(b"\n")


def blob(git_dir, content):
    return raw_git(git_dir, "hash-object", "-w", "--stdin", input=content).decode()


def tree(git_dir, names, blob_id):
    """A tree with one entry per name (bytes), each the blob BLOB_ID."""
    entries = b"".join(b"100644 blob %s\t%s\0" % (blob_id.encode(), n) for n in names)
    return raw_git(git_dir, "mktree", "-z", input=entries).decode()


def commit_object(git_dir, tree_id, parent, author, message, date=b"1700000000 +0000", extra=b""):
    """Store a commit object made of exactly these bytes; its id."""
    data = b"tree %s\n" % tree_id.encode()
    if parent:
        data += b"parent %s\n" % parent.encode()
    if author is not None:
        data += b"author " + author + (b" " + date if date else b"") + b"\n"
    data += b"committer C <c@example.invalid> 1700000000 +0000\n" + extra + b"\n" + message
    sha = raw_git(git_dir, "hash-object", "-t", "commit", "--literally", "-w", "--stdin", input=data).decode()
    assert raw_git(git_dir, "cat-file", "commit", sha) == data.rstrip(b"\n")
    return sha


@pytest.fixture
def bare(tmp_path):
    path = str(tmp_path / "r.git")
    harness.git("init", "-q", "--bare", path)
    return path


def text(b):
    return b.decode("utf-8", "replace")


def test_separators_in_a_message_cannot_forge_a_change(git_repo):
    """A message made of the old format's separators (0x1E record, 0x1F
    field) and a second "record" whose revision is an option."""
    git_repo.commit({"a": "1"}, "base")
    forged = ("innocent\x1f\n\x1e--upload-pack=touch /tmp/pwned\x1fEvil <e@x>\x1f0\x1fforged\x1fb\x1e"
              "\x1e" + "f" * 40 + "\x1fX\x1f1\x1f")
    old = git_repo.head()
    sha = git_repo.commit({"b": "2"}, forged)
    found = git.commits(git_repo.bare, old, sha, 10)
    assert [c["revision"] for c in found] == [sha]
    assert found[0]["message"] == forged
    assert found[0]["author"] == "Test Harness <harness@example.invalid>" and found[0]["files"] == ["b"]
    assert records.decode(records.encode("change", found[0]), "x", "change")["message"] == forged


def test_nul_in_the_author_and_no_author_at_all(bare):
    """A NUL in the author (only `hash-object --literally` stores it) is
    kept; a commit with no author line is skipped, and the next is read."""
    b = blob(bare, b"x")
    t = tree(bare, [b"f"], b)
    c1 = commit_object(bare, t, None, b"Ev\0il <e\0@x>", b"one\n")
    c2 = commit_object(bare, EMPTY_TREE, c1, None, b"no author\n")
    c3 = commit_object(bare, t, c2, b"Good <g@x>", b"three\n", date=b"1700000300 -0130")
    skipped = []
    found = git.commits(bare, None, c3, 10) + git.commits(bare, c1, c3, 10, skipped)
    assert [c["revision"] for c in found] == [c3, c3]
    assert skipped == [(c2, "no author line")]
    assert found[0] == {"revision": c3, "author": "Good <g@x>", "when": 1700000300.0, "message": "three",
                        "files": ["f"]}
    first = git.commits(bare, None, c1, 1)[0]
    assert first["author"] == "Ev\0il <e\0@x>" and first["message"] == "one" and first["files"] == ["f"]
    records.encode("change", first)


def test_file_names_with_newlines_hex_and_colons(bare):
    """File names that look like what the framing of other outputs uses:
    newlines, a commit id (the next commit's own), a raw diff record."""
    b = blob(bare, b"x")
    c1 = commit_object(bare, tree(bare, [b"plain"], b), None, b"A <a@x>", b"one")
    names = [b"\n", b"\nlead", b"trail\n", b"a\nb", c1.encode(), b"f" * 40,
             b":100644 100644 " + b"0" * 40 + b" " + b"1" * 40 + b" M", b"-n", b"--end-of-options", b"\xff\xfe"]
    c2 = commit_object(bare, tree(bare, names, b), c1, b"A <a@x>", b"two")
    c3 = commit_object(bare, tree(bare, names, blob(bare, b"y")), c2, b"A <a@x>", b"three")
    found = git.commits(bare, c1, c3, 10)
    assert [c["revision"] for c in found] == [c2, c3]
    assert sorted(found[0]["files"]) == sorted([text(n) for n in names] + ["plain"])
    assert sorted(found[1]["files"]) == sorted(text(n) for n in names)


def test_encoding_header_is_honoured_and_a_hostile_one_ignored(bare):
    c1 = commit_object(bare, EMPTY_TREE, None, "Jos\xe9 <j@x>".encode("latin-1"), "caf\xe9".encode("latin-1"),
                       extra=b"encoding ISO-8859-1\n")
    c2 = commit_object(bare, EMPTY_TREE, c1, b"A <a@x>", b"\\ud800 \xff", extra=b"encoding unicode_escape\n")
    c3 = commit_object(bare, EMPTY_TREE, c2, b"A <a@x>", b"ok", extra=b"encoding rot13\n")
    found = git.commits(bare, None, c1, 1) + git.commits(bare, c1, c3, 10)
    assert found[0]["author"] == "Jos\xe9 <j@x>" and found[0]["message"] == "caf\xe9"
    assert found[1]["message"] == "\\ud800 \ufffd" and found[2]["message"] == "ok"
    for c in found:
        records.encode("change", c)


def test_revisions_are_full_lowercase_hex():
    assert git.valid_revision("a" * 40) and git.valid_revision("0" * 64)
    for bad in ["A" * 40, "a" * 39, "a" * 41, "a" * 63, "--upload-pack=x", "a" * 40 + "\n", "", None, 40,
                "g" * 40, " " + "a" * 39]:
        assert not git.valid_revision(bad), bad
    with pytest.raises(git.GitError):
        git.commits("/nonexistent", None, "--upload-pack=touch /tmp/x", 1)


# ---------------------------------------------------------------- property

# What git can store: a header line holds any byte but a newline; a tree
# entry's name any byte but NUL and "/" (and not "", "." or "..").
header_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b""))
names = st.binary(min_size=1, max_size=20).map(lambda b: b.replace(b"\0", b"").replace(b"/", b"")) \
    .filter(lambda n: n not in (b"", b".", b".."))
commit_spec = st.fixed_dictionaries({
    "author": st.one_of(st.none(), st.tuples(header_bytes, header_bytes)),
    "dated": st.booleans(),
    "date": st.integers(min_value=0, max_value=2 ** 40),
    "message": st.binary(max_size=200),
    "files": st.sets(names, max_size=4),
})


@pytest.mark.torture
@fuzz_git
@given(specs=st.lists(commit_spec, min_size=1, max_size=4))
def test_recorded_change_is_what_git_stores(specs, tmp_path_factory):
    """A chain of raw commits from arbitrary bytes: each parseable one is
    recorded as its object says (revision, author, date, message, files
    against its parent); an unparseable one (no author line, or no date)
    is reported and the next ones still read."""
    bare = str(tmp_path_factory.mktemp("prop") / "r.git")
    harness.git("init", "-q", "--bare", bare)
    base = commit_object(bare, EMPTY_TREE, None, b"Base <b@x>", b"base")
    parent, parent_files, expected, unparseable = base, set(), [], []
    for i, spec in enumerate(specs):
        b = blob(bare, b"content %d" % i)
        t = tree(bare, sorted(spec["files"]), b) if spec["files"] else EMPTY_TREE
        author = None if spec["author"] is None else spec["author"][0] + b" <" + spec["author"][1] + b">"
        date = b"%d +0200" % spec["date"] if spec["dated"] else b""
        sha = commit_object(bare, t, parent, author, spec["message"], date=date)
        if author is None or not spec["dated"]:
            unparseable.append(sha)
        else:
            expected.append({"revision": sha, "author": text(author), "when": float(spec["date"]),
                             "message": text(spec["message"]).rstrip("\n"),
                             # every entry of this tree and of the parent's differs
                             "files": sorted(text(n) for n in spec["files"] | parent_files)})
        parent, parent_files = sha, spec["files"]
    skipped = []
    found = git.commits(bare, base, parent, 100, skipped)
    assert [s for s, _ in skipped] == list(reversed(unparseable))
    for c in found:
        c["files"] = sorted(c["files"])
        assert records.decode(records.encode("change", c), "x", "change") == dict(c, format="change", version=1)
    assert found == expected


# ------------------------------------------------- through the real daemons

POLLED = """
[Builder]
Repository={repo}
Branches=main
PollIntervalSec=200ms
Workers=*

[Step show]
Command=git log -1 --format=%H
"""


def polled(daemons, repo, name="p"):
    daemons.write_builder(name, POLLED.format(repo=repo))


def first_poll_done(daemons, repo):
    path = daemons.state.poller_path(os.path.realpath(repo))
    wait_for(lambda: (records.read(path, "poller") if os.path.exists(path) else {}).get("polled"),
             what="the poller's first poll of %s" % repo)


def idle(daemons):
    """Nothing is waiting for the scheduler or a runner."""
    sp = daemons.spool
    return not sp.pending("changes") and not sp.pending("requests") and not sp.all_claimed()


def status(daemons):
    import json
    return json.loads(daemons.cli("status", "--json", check=True).stdout)


def test_forged_message_cannot_pass_an_option_to_the_checkout(daemons, git_repo, tmp_path):
    """The old parser made a second change out of this message, with the
    revision `--upload-pack=touch PWNED`, which the checkout's git fetch
    ran as an option on the builder."""
    pwned = tmp_path / "pwned"
    git_repo.commit({"a": "1"}, "initial")
    polled(daemons, git_repo.bare)
    for name in ("poller", "scheduler"):
        daemons.start(name)
    daemons.start("runner", "w1")
    first_poll_done(daemons, git_repo.bare)
    forged = "harmless\x1f\x1e--upload-pack=touch %s;false\x1fE <e@x>\x1f0\x1fforged\x1f" % pwned
    sha = git_repo.commit({"b": "2"}, forged)
    b = daemons.wait_build_finished("p", 1)
    wait_for(lambda: idle(daemons), what="the spool to drain")
    assert b["revision"] == sha and b["result"] == "success"
    assert [c["message"] for c in b["request"]["changes"]] == [forged]
    assert daemons.builds("p") == [1]
    assert not pwned.exists()


# ------------------------------------------- revisions where they enter

def queued_changes(daemons):
    sp = daemons.spool
    return [sp.read("changes", c) for c in sp.pending("changes")]


def test_sendchange_takes_only_commit_ids_and_records_the_full_one(daemons, git_repo):
    sha = git_repo.commit({"a": "1"}, "initial")
    base = ["sendchange", "--repository", git_repo.bare, "--branch", "main"]
    bad = daemons.cli(*base, "--revision=--upload-pack=touch x")
    assert bad.returncode == 2 and "--revision must be a commit id" in bad.stderr
    assert daemons.cli(*base, "--revision", sha[:7], check=True).returncode == 0
    assert daemons.cli(*base, "--revision", sha.upper(), check=True).returncode == 0
    assert [c["revision"] for c in queued_changes(daemons)] == [sha, sha]
    unknown = daemons.cli(*base, "--revision", "0000000")
    assert unknown.returncode == 1 and "cannot resolve --revision 0000000" in unknown.stderr
    remote = daemons.cli("sendchange", "--repository", "https://example.invalid/r.git", "--branch", "main",
                         "--revision", sha[:12])
    assert remote.returncode == 2 and "abbreviated; with a remote repository give a full commit id" in remote.stderr
    assert len(queued_changes(daemons)) == 2


def test_force_refuses_a_revision_that_is_not_a_commit_id(daemons):
    daemons.write_builder("solo", "[Step hi]\nCommand=echo hi\n")
    for bus in (True, False):
        for rev in ("--upload-pack=touch x", "HEAD", "abc1234", "A" * 40):
            p = daemons.cli("force", "solo", "--revision=" + rev, bus=bus)
            assert p.returncode == 2 and "--revision must be a full commit id" in p.stderr, p.stderr
    assert queued_changes(daemons) == []
    daemons.cli("force", "solo", "--revision", "a" * 40, bus=False, check=True)
    assert [c["revision"] for c in queued_changes(daemons)] == ["a" * 40]


def test_spool_records_with_a_bad_revision_are_not_built(daemons, git_repo):
    """Written into the spool by hand (or an older release): a change or a
    force goes to corrupt/ at the scheduler, a request at the runner."""
    git_repo.commit({"a": "1"}, "initial")
    daemons.write_builder("p", POLLED.format(repo=git_repo.bare).replace("200ms", "0"))
    sp = daemons.spool
    sp.ensure()
    evil = "--upload-pack=touch %s" % os.path.join(daemons.tmp_path, "pwned")
    sp.deliver("changes", "change", {"source": "poller", "repository": git_repo.bare, "branch": "main",
                                     "revision": evil, "author": "", "message": "", "files": [], "when": 0})
    sp.deliver("changes", "force", {"builder": "p", "branch": "", "revision": "HEAD", "reason": "",
                                    "properties": {}, "user": "u"})
    sp.deliver("requests", "request", {"builder": "p", "repository": git_repo.bare, "branch": "main",
                                       "revision": evil, "reason": "r", "changes": [], "force": None,
                                       "properties": {}})
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    wait_for(lambda: len(sp.corrupted()) == 3, what="three records moved to corrupt/")
    reasons = sorted(r for _, r in sp.corrupted())
    assert reasons == sorted([
        "change record whose revision %r is not a full commit id (40 or 64 lowercase hex digits)" % evil,
        "forced build whose revision 'HEAD' is not empty or a full commit id (40 or 64 lowercase hex digits)",
        "request whose revision %r is not empty or a full commit id (40 or 64 lowercase hex digits)" % evil])
    assert daemons.builds("p") == [] and not os.path.exists(os.path.join(daemons.tmp_path, "pwned"))
    assert idle(daemons)


# ------------------------------- repositories that cannot be (fully) polled

def test_unparseable_commit_is_skipped_shown_and_the_next_built(daemons, git_repo):
    git_repo.commit({"a": "1"}, "initial")
    polled(daemons, git_repo.bare)
    for name in ("poller", "scheduler"):
        daemons.start(name)
    daemons.start("runner", "w1")
    first_poll_done(daemons, git_repo.bare)
    bare = git_repo.bare
    head = git_repo.head()
    tree_id = raw_git(bare, "rev-parse", head + "^{tree}").decode()
    bad = commit_object(bare, tree_id, head, None, b"no author here\n")
    good = commit_object(bare, tree_id, bad, b"Good <g@example.invalid>", b"after the bad one\n")
    raw_git(bare, "update-ref", "refs/heads/main", good, head)
    b = daemons.wait_build_finished("p", 1)
    assert b["revision"] == good and b["result"] == "success"
    assert [c["revision"] for c in b["request"]["changes"]] == [good]
    assert "%s: commit skipped: cannot be parsed: no author line" % bad[:12] in daemons.log("poller")
    repo = status(daemons)["repositories"]
    assert repo[0]["problem"] is None
    assert [(k["revision"], k["branch"], k["reason"]) for k in repo[0]["skipped"]] == [(bad, "main", "no author line")]
    out = daemons.cli("status", check=True).stdout
    assert "commit %s on main skipped, cannot be parsed" % bad[:12] in out
    daemons.notify("poller").wait_for(lambda m: any("1 commit skipped" in x for x in m), what="STATUS= saying so")
    # And the repository goes on.
    git_repo.git("fetch", "-q", "origin")
    git_repo.git("reset", "-q", "--hard", "origin/main")
    sha = git_repo.commit({"c": "3"}, "later")
    assert daemons.wait_build_finished("p", 2)["revision"] == sha


def test_force_push_and_gc_does_not_stop_the_repository(daemons, git_repo):
    base = git_repo.commit({"a": "1"}, "initial")
    polled(daemons, git_repo.bare)
    for name in ("poller", "scheduler"):
        daemons.start(name)
    daemons.start("runner", "w1")
    first_poll_done(daemons, git_repo.bare)
    old = git_repo.commit({"b": "2"}, "to be rewritten")
    assert daemons.wait_build_finished("p", 1)["revision"] == old
    # Rewritten while the poller is down, and the old head pruned.
    daemons.stop("poller")
    git_repo.git("reset", "-q", "--hard", base)
    new = git_repo.commit({"b": "rewritten"}, "rewritten", push=False)
    git_repo.push("main", force=True)
    harness.git("gc", "-q", "--prune=now", cwd=git_repo.bare)
    assert subprocess.run(["git", "--git-dir=" + git_repo.bare, "cat-file", "-e", old],
                          env=harness.git_env(), stderr=subprocess.DEVNULL).returncode != 0, "not pruned"
    daemons.start("poller")
    b = daemons.wait_build_finished("p", 2)
    assert b["revision"] == new and [c["revision"] for c in b["request"]["changes"]] == [new]
    assert "main: old head %s no longer exists; building the new head only" % old in daemons.log("poller")
    later = git_repo.commit({"c": "3"}, "later")
    assert daemons.wait_build_finished("p", 3)["revision"] == later
    assert status(daemons)["repositories"][0]["problem"] is None


def test_repository_that_cannot_be_polled_is_shown_until_it_can(daemons, git_repo, tmp_path):
    git_repo.commit({"a": "1"}, "initial")
    missing = str(tmp_path / "repos" / "later.git")
    polled(daemons, git_repo.bare, "p")
    polled(daemons, missing, "q")
    poller = daemons.start("poller")
    first_poll_done(daemons, git_repo.bare)
    away = git_repo.bare + ".away"
    os.rename(git_repo.bare, away)

    def problems():
        return {r["repository"]: r["problem"]["text"] for r in status(daemons)["repositories"] if r["problem"]}

    found = wait_for(lambda: len(problems()) == 2 and problems(), what="both repositories shown as not pollable")
    assert found == {git_repo.bare: "%s: no such repository" % git_repo.bare,
                     missing: "%s: no such repository" % missing}
    out = daemons.cli("status", check=True).stdout
    assert "%s  CANNOT BE POLLED (since " % git_repo.bare in out and "no such repository" in out
    poller.notify.wait_for(lambda m: any("cannot poll %s: %s: no such repository" % (git_repo.bare, git_repo.bare)
                                         in x for x in m), what="STATUS= naming the repository")
    # Back again: shown as polled; the one that appeared has its first poll
    # (it records the heads and builds nothing).
    os.rename(away, git_repo.bare)
    # The new one appears whole (a rename), as a clone or a push to a new
    # path would: an empty repository first would be polled as having no
    # branch, and its first commit then built as a new branch's tip.
    staging = str(tmp_path / "staging" / "later.git")
    harness.make_repo(staging).commit({"x": "1"}, "first")
    os.rename(staging, missing)
    wait_for(lambda: not problems(), what="the problems to be cleared")
    assert "CANNOT BE POLLED" not in daemons.cli("status", check=True).stdout
    mark = poller.notify.mark()
    poller.notify.wait_for(lambda m: any(x.startswith("STATUS=") and "cannot poll" not in x for x in m),
                           what="STATUS= without the problem", start=mark)
    assert daemons.spool.pending("changes") == []
    assert "%s: first poll" % missing in daemons.log("poller")
