"""Reading Mercurial repositories: branch heads and changeset details.

The readings have git.py's shape (heads, source, commits, has_commit),
each a generator of the commands it needs (git.Command, run by "hg"), so
the poller drives them as it drives git's: from the main loop, each
command a child process (gitjob.Job), within PollTimeoutSec=.

A local repository (a path holding .hg/) is read in place with `hg -R`.
A remote one (any URL hg can pull from) is pulled into a mirror under the
poller's state directory (poller/KEY.hg) before each reading: hg has no
ls-remote, so a poll of a remote repository always pulls (hg sends only
what is new).  Branches are hg's named branches; a branch's head is its
tip (`hg branches`: the newest of its heads), and closed branches are not
polled.  Bookmarks are not branches here.

Everything in a changeset is what whoever can push chose.  hg's output is
read as JSON (`hg branches -Tjson`, `hg log -T json(KEYWORDS)`) rather
than through a template of separators: JSON escapes every character that
could end a field (quotes, backslashes, control characters, NUL, new
lines), so no message, author or file name can change the structure, and
json.loads either returns the whole list or fails.  hg writes bytes that
are not UTF-8 (a message committed with another HGENCODING, a file name)
as lone surrogates \\udcXX; they become U+FFFD here, as undecodable bytes
do in git.py.  hg runs with HGPLAIN=1 (no aliases, defaults or localised
messages from anyone's configuration change its output),
HGENCODING=utf-8 and HGRCSKIPREPO=1: no repository's own .hg/hgrc is
read, so its hooks and extensions (its owner's, or, in a build's
checkout, a build's) run in no poll and no checkout step, and a hook hg
would refuse to run from a repository of another user (hg aborts a pull
on an untrusted pre- hook) cannot stop either.  What a repository needs
enabled to be read (an extension its .hg/requires names) goes in the
reading user's or the system's configuration (/etc/mercurial/hgrc.d/).

Revisions are full changeset ids (vcs.valid_revision(rev, "hg")) and
enter a revset only as id(NODE), whose argument is 40 hex digits; branch
names must pass vcs.branch_problem() before they are polled.  Every hg
command line has `--` before a URL or path taken from data.
"""

import json
import os
import time

from . import git, vcs

HgError = git.GitError      # the poller's readings all fail with a GitError
MIRROR_SUFFIX = ".hg"       # the poller's mirror of a remote: poller/KEY.hg
_ENV = {"HGPLAIN": "1", "HGENCODING": "utf-8", "HGRCSKIPREPO": "1", "LC_ALL": "C"}
_LOG_TEMPLATE = "json(node,branch,user,date,desc,files)"


def environment():
    env = dict(os.environ)
    env.update(_ENV)
    env.pop("HGPLAINEXCEPT", None)
    return env


def _hg(args):
    return git.Command(args, program="hg", env=environment())


def is_local(repository):
    return repository.startswith("/")


def valid_revision(rev):
    return vcs.valid_revision(rev, "hg")


_FINGERPRINT_FILES = ("00changelog.i", "00changelog.d", "obsstore")


def fingerprint(repository):
    """A value that changes whenever a branch head of the local REPOSITORY
    may have, read without running hg (a few stat calls: hg costs a
    third of a second to start); None when it cannot be trusted.

    Every changeset, a branch's closing one too, is appended to the
    changelog (.hg/store/00changelog.i, its data in 00changelog.d when
    large), `hg strip` truncates it, and obsolete markers, which hide
    changesets, go to .hg/store/obsstore: their (inode, modification
    time, size) are the fingerprint.  None for a shared repository (its
    store is elsewhere: .hg/sharedpath) or when a time is within
    git.RACY_SEC of now (see git.refs_fingerprint)."""
    store = os.path.join(repository, ".hg", "store")
    now_ns = time.time_ns()
    entries = []
    try:
        if os.path.lexists(os.path.join(repository, ".hg", "sharedpath")):
            return None
        for name in _FINGERPRINT_FILES:
            try:
                st = os.lstat(os.path.join(store, name))
                entries.append((name, st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                entries.append((name, None, 0, 0))
    except OSError:
        return None
    if max(e[2] for e in entries) > now_ns - git.RACY_SEC * 1e9 or entries[0][1] is None:
        return None
    return tuple(entries)


def heads_steps(repository, mirror):
    """Reading: {branch: node} of REPOSITORY's open named branches whose
    names pass vcs.branch_problem() (a remote one pulled into MIRROR
    first)."""
    src = yield from _pull(repository, mirror)
    out = yield _hg(["-R", src, "branches", "-Tjson"])
    heads = {}
    for b in _json_list(out, "branches"):
        name, node = b.get("branch"), b.get("node")
        if isinstance(name, str) and not vcs.branch_problem("hg", name) and valid_revision(node) \
                and not b.get("closed"):
            heads[name] = node
    return heads


def _pull(repository, mirror):
    if is_local(repository):
        if not os.path.isdir(os.path.join(repository, ".hg")):
            raise HgError("%s: no such Mercurial repository" % repository)
        return repository
    if not os.path.isdir(os.path.join(mirror, ".hg")):
        yield _hg(["init", "--", mirror])
    elif os.path.exists(os.path.join(mirror, ".hg", "store", "journal")):
        # A pull ended by the poll's deadline (or a crash) left its
        # transaction; hg refuses to pull again until it is rolled back.
        yield _hg(["-R", mirror, "recover", "--quiet"])
    yield _hg(["-R", mirror, "pull", "--quiet", "--", repository])
    return mirror


def source_steps(repository, mirror, branches):
    """Reading: the repository holding the changesets: REPOSITORY itself
    when local, else MIRROR, pulled by heads_steps moments ago."""
    return repository if is_local(repository) else mirror
    yield   # a reading, as git.source_steps


def commits_steps(src, old, new, limit, skipped=None, branch=None):
    """Reading: the changesets that are ancestors of NEW and not of OLD
    (only NEW when OLD is None), oldest first, at most LIMIT (the newest):
    each {"revision", "author", "when", "message", "files"}, as git.py's.
    One that cannot be parsed is left out and (node, reason) appended to
    SKIPPED.  (BRANCH is not used: a node names one changeset.)"""
    for rev in (old, new) if old is not None else (new,):
        if not valid_revision(rev):
            raise HgError("not a full changeset id: %r" % (rev,))
    revset = "id(%s)" % new if old is None else "last(only(id(%s), id(%s)), %d)" % (new, old, limit)
    out = yield _hg(["-R", src, "log", "-r", revset, "-T", _LOG_TEMPLATE])
    result = []
    for entry in _json_list(out, "log"):
        try:
            result.append(_parse(entry))
        except ValueError as e:
            node = entry.get("node") if isinstance(entry, dict) else None
            if skipped is not None:
                skipped.append((node if valid_revision(node) else "?", str(e)))
    return result


def has_commit_steps(src, rev, branch=None):
    """Reading: True if the changeset REV (a full id) is in SRC (`hg strip`
    removes one)."""
    if not valid_revision(rev):
        return False
    out = yield _hg(["-R", src, "log", "-r", "id(%s)" % rev, "-T", "{node}\n"])
    return out.strip() == rev.encode()


def _json_list(out, what):
    try:
        value = json.loads(out.decode("utf-8", "replace"))
    except ValueError as e:
        raise HgError("hg %s: output is not JSON: %s" % (what, e))
    if not isinstance(value, list):
        raise HgError("hg %s: output is not a JSON list" % what)
    return value


def _text(value, what):
    if not isinstance(value, str):
        raise ValueError("no %s" % what)
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _parse(entry):
    if not isinstance(entry, dict) or not valid_revision(entry.get("node")):
        raise ValueError("no changeset id")
    date = entry.get("date")
    if not (isinstance(date, list) and len(date) == 2 and all(
            isinstance(d, (int, float)) and not isinstance(d, bool) for d in date)):
        raise ValueError("no date")
    files = entry.get("files")
    if not isinstance(files, list):
        raise ValueError("no file list")
    return {"revision": entry["node"], "author": _text(entry.get("user"), "user"), "when": float(date[0]),
            "message": _text(entry.get("desc"), "description").rstrip("\n"),
            "files": [_text(f, "file name") for f in files]}
