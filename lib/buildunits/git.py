"""Reading git repositories: branch heads and commit details.

A local repository (a path, bare or not) is read in place: one
`git for-each-ref` per poll of an unchanged repository (none while its
refs_fingerprint() stays the same), and per changed
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
(SHA-256 repositories): valid_id().  valid_revision() is the one check,
kind-blind (it also takes hg's and svn's, see vcs.py), applied where
a revision enters (the poller, `buildunits sendchange` and `force`, the
scheduler's D-Bus Force, the spool records read by the scheduler and the
runner).  Every git command line puts `--end-of-options` before the
revisions, refs and URLs it takes from data, so none can become an option.

Each reading (heads, source, commits, has_commit) is written once, as a
generator of the git commands it needs (Command): it yields one, is sent
that command's output (or thrown its GitError), and returns its result.
run() drives one here and now, each command a blocking child (the
`buildunits` command, the tests); gitjob.Job drives one from a GLib main
loop, each command a child process watched by the loop (the poller), so
that a hung remote holds up only its own poll.  refs_fingerprint() tells
the poller, without running git, that a local repository's branches
cannot have moved since its last poll.
"""

import codecs
import os
import re
import stat
import subprocess
import time

from . import vcs
from .config import normalize_repository

GIT_TIMEOUT_SEC = 300
_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "LC_ALL": "C"}


_REVISION_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


class GitError(Exception):
    pass


def valid_id(rev):
    """True if REV is a full object id: 40 or 64 lowercase hex digits."""
    return isinstance(rev, str) and _REVISION_RE.fullmatch(rev) is not None


def valid_revision(rev):
    """True if REV may be the revision of a change, a request or a build:
    a full object id, or a revision of hg or svn (vcs.valid_revision).
    This is the kind-blind check where a revision enters; git's own
    readings take only valid_id(), and the checkout step refuses a
    revision its repository's kind cannot have."""
    return vcs.valid_revision(rev)


# git's rule, in the words of messages about git revisions (the runner's
# kind-blind check says it too: what it refuses is no revision at all).
REVISION_RULE = vcs.REVISION_RULES["git"]

# git check-ref-format's rules for a branch name (refs/heads/NAME), which
# git applies to every ref it creates: no control character, space or
# ~^:?*[\\, no "..", "@{", "//", no component starting with "." or ending
# with ".lock", not "@", not starting with "-" or "/", not ending with "/"
# or ".".
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|(^|/)\.|\.lock(/|$)|^-|^/|/$|\.$|^@$")
MAX_BRANCH_CHARS = 255


def valid_branch(name):
    """True if NAME is a branch name git could have made (check-ref-format).

    >>> [valid_branch(n) for n in ("main", "release/1.0", "feature-x_y", "a..b", "-x", "a b", "x\\n", ".x", "a.lock", "")]
    [True, True, True, False, False, False, False, False, False, False]
    """
    return isinstance(name, str) and 0 < len(name) <= MAX_BRANCH_CHARS and _BAD_REF.search(name) is None


BRANCH_RULE = "a branch name git accepts (git check-ref-format), at most %d characters" % MAX_BRANCH_CHARS


class Command:
    """One command a reading needs: ARGS (after PROGRAM, "git" unless a
    reading of another version control system says otherwise: hg.py,
    svn.py), INPUT, the bytes for its standard input (None: /dev/null),
    and ENV, its whole environment (None: environment())."""

    __slots__ = ("args", "input", "program", "env")

    def __init__(self, args, input=None, program="git", env=None):
        self.args = list(args)
        self.input = input
        self.program = program
        self.env = env


def environment():
    """The environment git runs in: ours, never prompting, in the C locale."""
    env = dict(os.environ)
    env.update(_ENV)
    return env


def failure(args, returncode, stderr, program="git"):
    """The GitError of the command PROGRAM ARGS that exited with RETURNCODE:
    the last line of its STDERR (bytes)."""
    msg = stderr.decode("utf-8", "replace").strip().splitlines()
    return GitError("%s %s: %s" % (program, args[0], msg[-1] if msg else "exit status %d" % returncode))


def _run(args, input=None, program="git", env=None):
    try:
        p = subprocess.run([program] + args, env=environment() if env is None else env,
                           stdin=subprocess.DEVNULL if input is None else None, input=input,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=GIT_TIMEOUT_SEC)
    except subprocess.TimeoutExpired:
        raise GitError("%s %s: no answer in %ds" % (program, args[0], GIT_TIMEOUT_SEC))
    except OSError as e:
        raise GitError("cannot run %s: %s" % (program, e.strerror))
    if p.returncode != 0:
        raise failure(args, p.returncode, p.stderr, program)
    return p.stdout


def run(steps):
    """Drive the reading STEPS (a generator of Commands) here and now: run
    each command it yields in turn, blocking; return what it returns (a
    GitError it does not catch is raised)."""
    value = error = None
    while True:
        try:
            cmd = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value
        try:
            value, error = _run(cmd.args, cmd.input, cmd.program, cmd.env), None
        except GitError as e:
            value, error = None, e


def is_local(repository):
    return repository.startswith("/")


def heads(repository):
    """{branch: revision} of REPOSITORY's branches (see heads_steps)."""
    return run(heads_steps(repository))


def heads_steps(repository, mirror=None, tags=False):
    """Reading: {branch: revision} of REPOSITORY's branches, and with TAGS
    its tags too, each as {"refs/tags/NAME": the commit it names} (an
    annotated tag peeled to its commit).  A ref whose object id is not a
    full hex id (a hostile server may send anything) is left out.  (MIRROR
    is not used: git asks a remote with ls-remote; an hg reading fetches
    into it first.)"""
    prefixes = ["refs/heads/"] + (["refs/tags/"] if tags else [])
    if is_local(repository):
        if not os.path.isdir(repository):
            raise GitError("%s: no such repository" % repository)
        # %(*objectname) is the commit an annotated tag names (empty for
        # anything else): "ID PEELED REF", ref names hold no space.
        out = yield Command(["--git-dir=" + _git_dir(repository), "for-each-ref",
                             "--format=%(objectname) %(*objectname) %(refname)", "--end-of-options"] + prefixes)
        rows = []
        for line in out.decode("utf-8", "replace").splitlines():
            sha, _, rest = line.partition(" ")
            peeled, _, ref = rest.partition(" ")
            rows.append((peeled or sha, ref))
    else:
        out = yield Command(["ls-remote", "--heads"] + (["--tags"] if tags else []) + ["--end-of-options", repository])
        rows, peeled = [], {}
        for line in out.decode("utf-8", "replace").splitlines():
            sha, _, ref = line.partition("\t")
            if ref.endswith("^{}"):
                peeled[ref[:-3]] = sha      # the commit an annotated tag names
            else:
                rows.append((sha, ref))
        rows = [(peeled.get(ref, sha), ref) for sha, ref in rows]
    refs = {}
    for sha, ref in rows:
        if not valid_id(sha):
            continue
        if ref.startswith("refs/heads/") and len(ref) > len("refs/heads/"):
            refs[ref[len("refs/heads/"):]] = sha
        elif tags and ref.startswith("refs/tags/") and len(ref) > len("refs/tags/"):
            refs[ref] = sha
    return refs


FINGERPRINT_MAX_ENTRIES = 10000   # files and directories under refs/heads/
RACY_SEC = 2.0                    # a time this close to the reading's may hide a change


def refs_fingerprint(repository, tags=False):
    """A value that changes whenever a branch head of the local REPOSITORY
    does, read without running git (a few stat calls); None when it cannot
    be trusted, and git must be asked.

    Git keeps a branch head in a file of its own under refs/heads/ (a loose
    ref) or as a line of packed-refs, and updates either by renaming a new
    file (NAME.lock) onto it, which gives the file a new inode and a new
    modification time and changes its directory's.  The fingerprint is the
    (name, inode, modification time, size) of packed-refs and of every file
    and directory under refs/heads/ (and refs/tags/ with TAGS), walked
    without following links.  It is
    None when a file there could be a symbolic ref (its size is not that of
    an id and a newline: its target may move while it stays), when there
    are more than FINGERPRINT_MAX_ENTRIES, when the refs are kept in another
    way (a reftable, a linked work tree's common directory, a .git file),
    or when one of the times is within RACY_SEC of now: a change in the
    same tick of the file system's clock could leave all four as they were
    (git's "racy git" problem, met the same way: such a reading is not
    trusted, the next one is)."""
    git_dir = _git_dir(repository)
    now_ns = time.time_ns()
    try:
        if os.path.lexists(os.path.join(git_dir, "reftable")) or os.path.lexists(os.path.join(git_dir, "commondir")):
            return None
        try:
            st = os.lstat(os.path.join(git_dir, "packed-refs"))
            entries = [("packed-refs", st.st_ino, st.st_mtime_ns, st.st_size)]
        except FileNotFoundError:
            entries = [("packed-refs", None, 0, 0)]
        if not _walk_refs(git_dir, "refs/heads", entries):
            return None
        if tags and os.path.lexists(os.path.join(git_dir, "refs", "tags")):
            if not _walk_refs(git_dir, "refs/tags", entries):
                return None
        elif tags:
            entries.append(("refs/tags/", None, 0, 0))
    except OSError:
        return None
    if max(e[2] for e in entries) > now_ns - RACY_SEC * 1e9:
        return None
    return tuple(sorted(entries, key=lambda e: e[0]))


def _walk_refs(git_dir, rel, entries):
    """Append the (name, inode, mtime, size) of directory REL of GIT_DIR and
    of everything below it to ENTRIES; False if the tree is not one
    refs_fingerprint can trust."""
    todo = [rel]
    while todo:
        rel = todo.pop()
        path = os.path.join(git_dir, rel)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            return False
        entries.append((rel + "/", st.st_ino, st.st_mtime_ns, 0))
        with os.scandir(path) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    todo.append(rel + "/" + e.name)
                    continue
                if not stat.S_ISREG(st.st_mode) or st.st_size not in (41, 65):
                    return False
                entries.append((rel + "/" + e.name, st.st_ino, st.st_mtime_ns, st.st_size))
        if len(entries) > FINGERPRINT_MAX_ENTRIES:
            return False
    return True


def _git_dir(repository):
    dot = os.path.join(repository, ".git")
    return dot if os.path.exists(dot) else repository


def source(repository, mirror, branches):
    """A git dir holding BRANCHES' commits (see source_steps)."""
    return run(source_steps(repository, mirror, branches))


def source_steps(repository, mirror, branches):
    """Reading: a git dir holding BRANCHES' commits: the repository itself
    when it is local, else MIRROR, fetched now."""
    if is_local(repository):
        return _git_dir(repository)
    if not os.path.isdir(mirror):
        yield Command(["init", "--quiet", "--bare", "--end-of-options", mirror])
    # Each refspec starts with "+", so no branch name can make it an option.
    # A tag is named by its whole ref (heads_steps).
    refs = [b if b.startswith("refs/tags/") else "refs/heads/" + b for b in branches]
    specs = ["+%s:%s" % (r, r) for r in refs]
    yield Command(["--git-dir=" + mirror, "fetch", "--quiet", "--no-tags", "--end-of-options", repository] + specs)
    return mirror


def commits(git_dir, old, new, limit, skipped=None):
    """The commits in NEW not in OLD (see commits_steps)."""
    return run(commits_steps(git_dir, old, new, limit, skipped))


def commits_steps(git_dir, old, new, limit, skipped=None, branch=None):
    """Reading: the commits in NEW not in OLD (all of NEW's if OLD is None: then only
    NEW itself), oldest first, at most LIMIT (the newest ones).

    Each is {"revision", "author", "when", "message", "files"}.  A commit
    that cannot be parsed is left out, and (revision, reason) appended to
    SKIPPED (a list) when one is given.  OLD and NEW must be full ids
    (valid_id); OLD must exist (see has_commit).  BRANCH is not used
    (a git id names a commit whatever its branch): hg.py and svn.py
    readings take the same arguments."""
    for rev in (old, new) if old is not None else (new,):
        if not valid_id(rev):
            raise GitError("not a full commit id: %r" % (rev,))
    revs = [new] if old is None else [new, "^" + old]
    out = yield Command(["--git-dir=" + git_dir, "rev-list", "-n", "1" if old is None else "%d" % limit,
                         "--end-of-options"] + revs)
    ids = out.decode("ascii", "replace").split()
    bad = [i for i in ids if not valid_id(i)]
    if bad:
        raise GitError("rev-list: unexpected output %r" % bad[0][:80])
    if not ids:
        return []
    objects = yield from _cat_file(git_dir, ids)
    files = yield from _files(git_dir, ids)
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
    """True if the commit REV is in GIT_DIR (see has_commit_steps)."""
    return run(has_commit_steps(git_dir, rev))


MIRROR_SUFFIX = ".git"      # the poller's mirror of a remote: poller/KEY.git


def has_commit_steps(git_dir, rev, branch=None):
    """Reading: True if the commit REV (a full id) is in GIT_DIR: a
    force-push followed by `git gc --prune=now` removes a branch's old
    head."""
    if not valid_id(rev):
        return False
    try:
        yield Command(["--git-dir=" + git_dir, "rev-parse", "--verify", "--quiet", "--end-of-options",
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
    if not valid_id(full):
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
    out = yield Command(["--git-dir=" + git_dir, "cat-file", "--batch"], "".join(i + "\n" for i in ids).encode())
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
    out = yield Command(["--git-dir=" + git_dir, "diff-tree", "--stdin", "-z", "-r", "--raw", "--root",
                         "--always", "--no-renames"], "".join(i + "\n" for i in ids).encode())
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
        if not valid_id(sha):
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
