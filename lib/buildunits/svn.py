"""Reading Subversion repositories: branch heads and revision details.

The readings have git.py's shape (heads, source, commits, has_commit),
each a generator of the commands it needs (git.Command, run by "svn"), so
the poller drives them as it drives git's: from the main loop, each
command a child process (gitjob.Job), within PollTimeoutSec=.  svn is
always asked over its URL (a local path becomes a file:// URL); there is
no mirror to keep, so the poller's poller/KEY.svn is only svn's
configuration directory (--config-dir), keeping the daemon's home
untouched.

Branches.  Subversion has none: a branch is a directory by convention.
Repository= names the directory holding the standard layout, and a
branch is the path of a directory below it: "trunk", and "branches/NAME"
for each directory in branches/ (tags/ is not polled).  So Branches=
matches those paths (`Branches=trunk branches/release-*`; the default `*`
matches all of them), the change records say "trunk" or
"branches/1.x", and the checkout step checks out REPOSITORY/BRANCH.  A
repository laid out otherwise (one project per directory) is named per
project: Repository=file:///srv/svn/repo/project.  The paths are names
svn gives, so they are checked (vcs.branch_problem) before they are
polled: no space, "%" or "@", so a branch is the same word in a URL and
a shell script.

A branch's head is the revision that last changed anything below it
(`svn list --xml`: a directory's commit revision).  A branch that moved
queues every revision that changed it since (`svn log -r NEW:OLD+1
--stop-on-copy`: a branch deleted and copied anew stops at the copy, as a
git branch force-pushed does not bring back what was dropped); a new one
queues its head.  A revision that changed two branches is a change on
each.  A change's files are the paths it changed below its branch.

Parsing.  Everything in a revision (the log message, the author, paths)
is what whoever can commit chose, and svn writes it as XML with `--xml`,
which is parsed with xml.etree from the standard library, not by lines:
svn escapes "<", "&" and ">" in every value and writes control characters
as "?\\NNN", so no value can open or close an element.  Two things svn
does not guarantee are handled before parsing: a revision property that
is not UTF-8 (a repository loaded with --bypass-prop-validation) is
written as raw bytes, so invalid UTF-8 becomes U+FFFD (it is never a
byte of markup); and a control character XML forbids becomes "?".  svn
never writes a DTD, an entity declaration, a comment or CDATA: output
holding "<!" anywhere is refused whole, so no entity can be declared,
expanded or fetched.  A logentry without a revision number or a date
cannot be parsed: it is left out and reported (the caller's SKIPPED
list), as git.py does.

Revisions are decimal numbers (vcs.valid_revision(rev, "svn")), and
every svn command line has `--` before the URLs, each ending in "@PEG"
(svn would otherwise take an "@" in a path as one).
"""

import datetime
import os
import re
import urllib.parse
import xml.etree.ElementTree as ET

from . import git, vcs

SvnError = git.GitError     # the poller's readings all fail with a GitError
MIRROR_SUFFIX = ".svn"      # the poller's svn configuration directory: poller/KEY.svn
_ENV = {"LC_ALL": "C"}
_ILLEGAL_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def environment():
    env = dict(os.environ)
    env.update(_ENV)
    return env


def url(repository):
    """The URL svn is given for REPOSITORY (a local path: file://)."""
    if repository.startswith("/"):
        return "file://" + urllib.parse.quote(repository)
    return repository.rstrip("/")


def _svn(config_dir, args):
    return git.Command([args[0], "--xml", "--non-interactive", "--no-auth-cache", "--config-dir", config_dir]
                       + args[1:], program="svn", env=environment())


def valid_revision(rev):
    return vcs.valid_revision(rev, "svn")


class Source:
    """Where a poll reads revisions: the repository's URL, its directory's
    path from the repository root (PREFIX, "" at the root, "/p" for a
    project), and the configuration directory."""

    def __init__(self, base, prefix, config_dir):
        self.base, self.prefix, self.config_dir = base, prefix, config_dir


def heads_steps(repository, config_dir):
    """Reading: {branch: revision (a string)} of trunk and branches/* of
    REPOSITORY whose names pass vcs.branch_problem()."""
    base = url(repository)
    top = yield _svn(config_dir, ["list", "--", base + "@"])
    heads, dirs = {}, {}
    for name, rev in _entries(top):
        dirs[name] = rev
    if "trunk" in dirs:
        heads["trunk"] = dirs["trunk"]
    if "branches" in dirs:
        for name, rev in _entries((yield _svn(config_dir, ["list", "--", base + "/branches@"]))):
            if not vcs.branch_problem("svn", "branches/" + name):
                heads["branches/" + name] = rev
    return heads


def _entries(out):
    """(name, commit revision) of each directory of an `svn list --xml`."""
    for entry in _xml(out, "list").iter("entry"):
        name, commit = entry.find("name"), entry.find("commit")
        rev = commit.get("revision") if commit is not None else None
        if entry.get("kind") == "dir" and name is not None and name.text and valid_revision(rev):
            yield name.text, rev


def source_steps(repository, config_dir, branches):
    """Reading: a Source for REPOSITORY (its path from the root, from
    `svn info`, to tell the changed paths below a branch)."""
    base = url(repository)
    out = yield _svn(config_dir, ["info", "--", base + "@"])
    rel = _xml(out, "info").find("entry/relative-url")
    if rel is None or not (rel.text or "").startswith("^/"):
        raise SvnError("svn info: no relative-url for %s" % base)
    return Source(base, urllib.parse.unquote(rel.text[1:]).rstrip("/"), config_dir)


def has_commit_steps(src, rev, branch=None):
    """Reading: True: a revision number, once made, always exists (a
    branch copied anew since is met by --stop-on-copy)."""
    return valid_revision(rev)
    yield   # a reading, as git.has_commit_steps


def commits_steps(src, old, new, limit, skipped=None, branch=None):
    """Reading: the revisions that changed BRANCH after OLD up to NEW (only
    NEW when OLD is None), oldest first, at most LIMIT (the newest): each
    {"revision", "author", "when", "message", "files"}, as git.py's.  One
    that cannot be parsed is left out and (revision, reason) appended to
    SKIPPED."""
    for rev in (old, new) if old is not None else (new,):
        if not valid_revision(rev):
            raise SvnError("not a Subversion revision: %r" % (rev,))
    why = vcs.branch_problem("svn", branch)
    if why:
        raise SvnError(why)
    if old is not None and int(old) >= int(new):
        old = None
    span = [new] if old is None else ["%s:%d" % (new, int(old) + 1), "--limit", "%d" % limit]
    out = yield _svn(src.config_dir, ["log", "--verbose", "--stop-on-copy", "-r"] + span
                     + ["--", "%s/%s@%s" % (src.base, branch, new)])
    below = "%s/%s/" % (src.prefix, branch)
    result = []
    for entry in _xml(out, "log").iter("logentry"):
        try:
            result.append(_parse(entry, below))
        except ValueError as e:
            rev = entry.get("revision")
            if skipped is not None:
                skipped.append((rev if valid_revision(rev) else "?", str(e)))
    result.reverse()
    return result


def _parse(entry, below):
    rev = entry.get("revision")
    if not valid_revision(rev):
        raise ValueError("no revision number")
    date = entry.findtext("date")
    try:
        when = datetime.datetime.strptime(date or "", "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        raise ValueError("no date")
    files = []
    for p in entry.iterfind("paths/path"):
        # Files, as git lists them: a directory added or copied is not one.
        if p.get("kind") != "dir" and p.text and p.text.startswith(below) and len(p.text) > len(below):
            files.append(p.text[len(below):])
    return {"revision": rev, "author": entry.findtext("author") or "(no author)", "when": when,
            "message": (entry.findtext("msg") or "").rstrip("\n"), "files": files}


def _xml(out, what):
    """The root element of svn's XML output OUT (see the docstring)."""
    text = _ILLEGAL_XML.sub("?", out.decode("utf-8", "replace"))
    if "<!" in text:
        raise SvnError("svn %s: output holds a declaration svn never writes (<!...)" % what)
    try:
        return ET.fromstring(text.encode("utf-8"))
    except ET.ParseError as e:
        raise SvnError("svn %s: output is not XML: %s" % (what, e))
