"""Reading git repositories: branch heads and commit details.

A local repository (a path, bare or not) is read in place: one
`git for-each-ref` per poll of an unchanged repository, and per changed
branch one `git rev-list`, one `git cat-file --batch` and one
`git diff-tree --stdin`.  A remote one (any URL git understands) is asked
with `git ls-remote`, and new commits are fetched into a bare mirror under
the poller's state directory before they are read.

Everything read from a repository is data that whoever can push chose:
a commit message, an author, a file name or a branch name may hold any
byte git can store.  So nothing here splits git's output on a character
that such data may contain.  Commit ids come from `git rev-list` (hex
only, one per line); each commit is read whole from `git cat-file --batch`,
whose framing is the object's length, and its own header lines are parsed
(see _parse); file names come from `git diff-tree -z --raw`, where each
name is NUL-terminated (git cannot store a NUL in a name) and follows a
fixed-form record (see _files).  A commit that cannot be parsed is left
out and reported (the caller's SKIPPED list), never raised: it is that
commit's problem, not the repository's.

A revision is a full object id: 40 lowercase hex digits (SHA-1), or 64
(SHA-256 repositories).  valid_revision() is the one check, applied where
a revision enters (the poller, `buildunits sendchange` and `force`, the
scheduler's D-Bus Force, the spool records read by the scheduler and the
runner).  Every git command line puts `--end-of-options` before the
revisions, refs and URLs it takes from data, so none can become an option.
"""

import codecs
import os
import re
import subprocess

from .config import normalize_repository

GIT_TIMEOUT_SEC = 300
_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "LC_ALL": "C"}


_REVISION_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


class GitError(Exception):
    pass


def valid_revision(rev):
    """True if REV is a full object id: 40 or 64 lowercase hex digits."""
    return isinstance(rev, str) and _REVISION_RE.fullmatch(rev) is not None


REVISION_RULE = "a full commit id (40 or 64 lowercase hex digits)"


def _run(args, cwd=None, input=None):
    env = dict(os.environ)
    env.update(_ENV)
    try:
        p = subprocess.run(["git"] + args, cwd=cwd, env=env,
                           stdin=subprocess.DEVNULL if input is None else None, input=input,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=GIT_TIMEOUT_SEC)
    except subprocess.TimeoutExpired:
        raise GitError("git %s: no answer in %ds" % (args[0], GIT_TIMEOUT_SEC))
    except OSError as e:
        raise GitError("cannot run git: %s" % e.strerror)
    if p.returncode != 0:
        msg = p.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GitError("git %s: %s" % (args[0], msg[-1] if msg else "exit status %d" % p.returncode))
    return p.stdout


def is_local(repository):
    return repository.startswith("/")


def heads(repository, mirror=None):
    """{branch: revision} of REPOSITORY's branches.  A ref whose object id
    is not a full hex id (a hostile server may send anything) is left out."""
    if is_local(repository):
        if not os.path.isdir(repository):
            raise GitError("%s: no such repository" % repository)
        out = _run(["--git-dir=" + _git_dir(repository), "for-each-ref",
                    "--format=%(objectname) %(refname)", "--end-of-options", "refs/heads/"])
        sep = " "
    else:
        out = _run(["ls-remote", "--heads", "--end-of-options", repository])
        sep = "\t"
    refs = {}
    for line in out.decode("utf-8", "replace").splitlines():
        sha, _, ref = line.partition(sep)
        if ref.startswith("refs/heads/") and len(ref) > len("refs/heads/") and valid_revision(sha):
            refs[ref[len("refs/heads/"):]] = sha
    return refs


def _git_dir(repository):
    dot = os.path.join(repository, ".git")
    return dot if os.path.exists(dot) else repository


def source(repository, mirror, branches):
    """A git dir holding BRANCHES' commits: the repository itself when it is
    local, else MIRROR, fetched now."""
    if is_local(repository):
        return _git_dir(repository)
    if not os.path.isdir(mirror):
        _run(["init", "--quiet", "--bare", "--end-of-options", mirror])
    # Each refspec starts with "+", so no branch name can make it an option.
    specs = ["+refs/heads/%s:refs/heads/%s" % (b, b) for b in branches]
    _run(["--git-dir=" + mirror, "fetch", "--quiet", "--no-tags", "--end-of-options", repository] + specs)
    return mirror


def commits(git_dir, old, new, limit, skipped=None):
    """The commits in NEW not in OLD (all of NEW's if OLD is None: then only
    NEW itself), oldest first, at most LIMIT (the newest ones).

    Each is {"revision", "author", "when", "message", "files"}.  A commit
    that cannot be parsed is left out, and (revision, reason) appended to
    SKIPPED (a list) when one is given.  OLD and NEW must be full ids
    (valid_revision); OLD must exist (see has_commit)."""
    for rev in (old, new) if old is not None else (new,):
        if not valid_revision(rev):
            raise GitError("not a full commit id: %r" % (rev,))
    revs = [new] if old is None else [new, "^" + old]
    out = _run(["--git-dir=" + git_dir, "rev-list", "-n", "1" if old is None else "%d" % limit,
                "--end-of-options"] + revs)
    ids = out.decode("ascii", "replace").split()
    bad = [i for i in ids if not valid_revision(i)]
    if bad:
        raise GitError("rev-list: unexpected output %r" % bad[0][:80])
    if not ids:
        return []
    objects = _cat_file(git_dir, ids)
    files = _files(git_dir, ids)
    result = []
    for sha in ids:
        try:
            c = _parse(sha, objects.get(sha))
        except _Unparseable as e:
            if skipped is not None:
                skipped.append((sha, str(e)))
            continue
        c["files"] = files.get(sha, [])
        result.append(c)
    result.reverse()
    return result


def has_commit(git_dir, rev):
    """True if the commit REV (a full id) is in GIT_DIR: a force-push
    followed by `git gc --prune=now` removes a branch's old head."""
    if not valid_revision(rev):
        return False
    try:
        _run(["--git-dir=" + git_dir, "rev-parse", "--verify", "--quiet", "--end-of-options",
              rev + "^{commit}"])
    except GitError:
        return False
    return True


def resolve(git_dir, rev):
    """The full id of the commit named by REV (an abbreviated hex id)."""
    if not re.fullmatch(r"[0-9a-fA-F]{4,64}", rev or ""):
        raise GitError("not a commit id: %r" % (rev,))
    out = _run(["--git-dir=" + git_dir, "rev-parse", "--verify", "--end-of-options", rev + "^{commit}"])
    full = out.decode("ascii", "replace").strip()
    if not valid_revision(full):
        raise GitError("rev-parse: unexpected output %r" % full[:80])
    return full


def commit(git_dir, rev):
    """Details of one commit (for `buildunits sendchange`)."""
    skipped = []
    found = commits(git_dir, None, rev, 1, skipped)
    if not found:
        raise GitError("cannot parse commit %s: %s" % (rev, skipped[0][1] if skipped else "not found"))
    return found[0]


class _Unparseable(ValueError):
    pass


def _cat_file(git_dir, ids):
    """{id: raw commit object bytes, or None if it is not a commit}.

    `git cat-file --batch` answers each id with "ID TYPE SIZE\n", then SIZE
    bytes, then "\n" (or "ID missing\n"): the contents are taken by their
    length, so no byte in them can be mistaken for the next header."""
    out = _run(["--git-dir=" + git_dir, "cat-file", "--batch"], input="".join(i + "\n" for i in ids).encode())
    objects, pos = {}, 0
    for sha in ids:
        eol = out.find(b"\n", pos)
        if eol < 0:
            raise GitError("cat-file: output ends early")
        line = out[pos:eol]
        head = line.split(b" ")
        pos = eol + 1
        if head[0].decode("ascii", "replace") != sha:
            raise GitError("cat-file: answered %r for %s" % (line[:80], sha))
        if len(head) != 3 or not head[2].isdigit():
            objects[sha] = None     # "missing" (cannot happen: rev-list listed it)
            continue
        size = int(head[2])
        if out[pos + size:pos + size + 1] != b"\n":
            raise GitError("cat-file: object %s is not %d bytes" % (sha, size))
        objects[sha] = out[pos:pos + size] if head[1] == b"commit" else None
        pos += size + 1
    return objects


def _files(git_dir, ids):
    """{id: [file names changed by that commit]}, from one
    `git diff-tree --stdin -z -r --raw --root --always`.

    Its output is a sequence of NUL-terminated fields.  For each commit
    there is the commit's id (asked by --always even when nothing changed),
    then one entry per changed file: a raw record ":MODE MODE ID ID STATUS"
    followed by the path (two paths for a copy or rename, status C or R;
    never without -M/-C, handled anyway).  A path is only ever read as the
    field after a raw record, and a commit id only where a raw record could
    start; a raw record starts with ":", a commit id never does.  So a file
    name (which may be 40 hex digits, contain newlines or start with ":")
    can never be taken for an id or a record: the framing does not depend
    on what is in any name.  Merge commits list no files (as `git log`
    without -m)."""
    out = _run(["--git-dir=" + git_dir, "diff-tree", "--stdin", "-z", "-r", "--raw", "--root", "--always",
                "--no-renames"], input="".join(i + "\n" for i in ids).encode())
    fields = out.split(b"\0")
    if fields and fields[-1] == b"":
        fields.pop()
    result, current, i = {}, None, 0
    while i < len(fields):
        f = fields[i]
        if f.startswith(b":"):
            if current is None:
                raise GitError("diff-tree: a file before any commit")
            status = f.rsplit(b" ", 1)[-1][:1]
            n = 2 if status in (b"C", b"R") else 1
            if i + n >= len(fields):
                raise GitError("diff-tree: output ends early")
            current.extend(p.decode("utf-8", "replace") for p in fields[i + 1:i + 1 + n])
            i += 1 + n
            continue
        sha = f.decode("ascii", "replace")
        if not valid_revision(sha):
            raise GitError("diff-tree: unexpected output %r" % f[:80])
        current = result.setdefault(sha, [])
        i += 1
    return result


_AUTHOR_RE = re.compile(rb"(.*) ([0-9]{1,20}) ([+-][0-9]{4})", re.S)


def _parse(sha, raw):
    """A commit object's fields, from its own header lines (see
    git-cat-file(1) and the commit object format): header lines up to the
    first empty line, each "KEY VALUE" (a line starting with a space
    continues the previous one, e.g. gpgsig), then the message.

    author: the first "author" line, "IDENT TIMESTAMP TZ": IDENT (normally
    "Name <email>") is kept whole as the author, whatever bytes it holds;
    the timestamp must be decimal digits.  No author line, or one without
    a timestamp and zone, makes the commit unparseable.  Text is decoded
    with the commit's "encoding" header when Python knows it as a text
    encoding, else as UTF-8; undecodable bytes become U+FFFD."""
    if raw is None:
        raise _Unparseable("not a commit object")
    head, sep, body = raw.partition(b"\n\n")
    if not sep and raw.endswith(b"\n"):
        head = raw[:-1]
    author = encoding = None
    for line in head.split(b"\n"):
        key, _, value = line.partition(b" ")
        if key == b"author" and author is None:
            author = value
        elif key == b"encoding" and encoding is None:
            encoding = value
    if author is None:
        raise _Unparseable("no author line")
    m = _AUTHOR_RE.fullmatch(author)
    if m is None:
        raise _Unparseable("author line without a timestamp and time zone")
    enc = _text_encoding(encoding)
    return {"revision": sha, "author": _decode(m.group(1), enc), "when": float(int(m.group(2))),
            "message": _decode(body, enc).rstrip("\n")}


def _text_encoding(name):
    """The codec named by the commit's encoding header (bytes), or "utf-8"
    when there is none or Python does not know it."""
    if not name:
        return "utf-8"
    try:
        return codecs.lookup(name.decode("ascii")).name
    except (UnicodeError, LookupError, ValueError):
        return "utf-8"


def _decode(data, enc):
    """DATA as text: with ENC, falling back to UTF-8, undecodable bytes as
    U+FFFD.  The header's codec is the repository's choice: whatever it
    does (raises, is not a text codec, makes lone surrogates, as
    unicode_escape can), the result must be text a record can hold."""
    if enc != "utf-8":
        try:
            text = data.decode(enc, "replace")
            text.encode("utf-8")
            return text
        except Exception:
            pass
    return data.decode("utf-8", "replace")


def git_dir_for(repository):
    """The git dir of a local REPOSITORY."""
    return _git_dir(normalize_repository(repository))
