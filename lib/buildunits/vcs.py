"""Which version control system a repository is kept in, and what its
revisions and branch names look like.

A builder's Type= says it: git, hg (Mercurial) or svn (Subversion).  When
Type= is not given, kind() works it out from Repository= where that
cannot be mistaken, and says git otherwise (git was the only kind before
Type= existed, so every builder written then keeps its meaning):

    svn://HOST/..., svn+SCHEME://...    svn (no other system speaks it)
    a local path or file:// URL         hg if it is a Mercurial repository
                                        (it holds .hg/), svn if it or one
                                        of its parents is a Subversion
                                        repository (format, db/fs-type)
    anything else (https://, ssh://)    git: an http URL could be any of
                                        the three, so Type= must say hg
                                        or svn

The answer for a local path is read from the file system when the
configuration is loaded; a repository created later is seen at the next
reload.  Type= always wins.

A revision is the one thing of a repository that becomes a request, a
build and a command line, so it is checked where it enters (the poller,
sendchange, force, the scheduler's and the runner's spool records):
valid_revision().  Git's is a full object id (git.py); Mercurial's a full
changeset id (40 lowercase hex digits: never a short id, a revision
number or a revset, which hg would evaluate); Subversion's a revision
number, decimal, without sign or leading zero.  Without a kind, any of
these is valid: the runner's check of a request is kind-blind, and the
checkout step (checkout.py) refuses a revision its kind cannot have.

Branch names of hg and svn that reach a command line, a revset or a URL
are checked by branch_problem(): the poller does not poll a branch whose
name fails (so it never becomes a change), and the checkout step refuses
it.  Git's branch names are git's (refspecs, --end-of-options).
"""

import os
import re

KINDS = ("git", "hg", "svn")
DEFAULT = "git"
DEFAULT_BRANCH = {"git": "main", "hg": "default", "svn": "trunk"}

_REVISION_RE = {
    "git": re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}"),
    "hg": re.compile(r"[0-9a-f]{40}"),
    "svn": re.compile(r"[1-9][0-9]{0,9}"),
}
REVISION_RULES = {
    "git": "a full commit id (40 or 64 lowercase hex digits)",
    "hg": "a full changeset id (40 lowercase hex digits)",
    "svn": "a Subversion revision number (decimal, from 1)",
}
REVISION_RULE = "a full commit id (40 or 64 lowercase hex digits) or a Subversion revision number"

# Letters, digits and . _ + - (and / in hg): no space, quote, backslash,
# "%", ":" or control character, so a name is the same word in a shell
# script, a revset string literal and a URL path, and never an option.
_HG_BRANCH_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+/-]{0,199}")
_SVN_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,199}")


def valid_revision(rev, kind=None):
    """True if REV is a revision of a repository of KIND (None: of any).

    >>> valid_revision("1234"), valid_revision("1234", "git"), valid_revision("0" * 40, "hg")
    (True, False, True)
    >>> valid_revision("01"), valid_revision("tip", "hg"), valid_revision("1\\n")
    (False, False, False)
    """
    if not isinstance(rev, str):
        return False
    return any(_REVISION_RE[k].fullmatch(rev) for k in ((kind,) if kind else KINDS))


def revision_rule(kind=None):
    return REVISION_RULES[kind] if kind else REVISION_RULE


def branch_problem(kind, branch):
    """Why BRANCH cannot be a branch of a KIND repository here, or "".

    An svn branch is the path of a directory under the repository:
    "trunk", or "branches/NAME" (see svn.py).

    >>> branch_problem("svn", "branches/1.x"), branch_problem("hg", "stable")
    ('', '')
    >>> bool(branch_problem("svn", "tags/v1")), bool(branch_problem("hg", "-r"))
    (True, True)
    """
    if not isinstance(branch, str):
        return "not a branch name: %r" % (branch,)
    if kind == "hg":
        if _HG_BRANCH_RE.fullmatch(branch) and "//" not in branch:
            return ""
        return ("hg branch %r: only letters, digits and . _ + - / are polled, starting with "
                "a letter, a digit or _" % branch[:80])
    if kind == "svn":
        if branch == "trunk" or (branch.startswith("branches/") and _SVN_NAME_RE.fullmatch(branch[9:])):
            return ""
        return ("svn branch %r: must be trunk or branches/NAME, NAME letters, digits and . _ + -, "
                "starting with a letter, a digit or _" % branch[:80])
    return ""


def kind(repository, declared=""):
    """The kind of REPOSITORY (a Repository= value): DECLARED (Type=) if
    given, else as the module docstring says."""
    if declared:
        return declared
    repo = repository.strip()
    if re.match(r"svn(\+[A-Za-z0-9.+-]+)?://", repo):
        return "svn"
    if repo.startswith("file://"):
        repo = repo[len("file://"):]
    if repo.startswith("/"):
        path = os.path.realpath(repo)
        if os.path.isdir(os.path.join(path, ".hg")):
            return "hg"
        while True:
            if os.path.isfile(os.path.join(path, "db", "fs-type")) and os.path.isfile(os.path.join(path, "format")):
                return "svn"
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
    return DEFAULT
