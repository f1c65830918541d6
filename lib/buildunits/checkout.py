"""The implicit checkout step: the shell script that fetches a build's
revision into the work directory and checks it out, with git, hg or svn
(the builder's Type=, vcs.py).

When a builder has a Repository= (and Checkout= is not off), the runner
runs this script as a first step named "checkout", like any other step:
its output is a log, it obeys the same timeouts and process-tree killing,
and its failure shows on the waterfall.  The script is recorded and
shown, so it holds no secret: the URL comes from the environment, and
git's messages, which may quote it, are masked by sed (the same rule as
redact.text()).
"""

import os
import re
import shlex

from . import nofollow, redact, vcs

DESCRIPTION = "fetch and check out the revision"


def checkout_script(repository, branch, revision, kind="git"):
    """The shell commands of the implicit checkout step of a KIND
    repository (git, hg or svn); BRANCH "" is the kind's default branch
    (vcs.DEFAULT_BRANCH).  A revision or branch KIND cannot have (the
    runner's check of a request is kind-blind) makes a script that says
    so and fails."""
    branch = branch or vcs.DEFAULT_BRANCH[kind]
    why = ""
    if revision and not vcs.valid_revision(revision, kind):
        why = "revision %r is not %s" % (revision, vcs.revision_rule(kind))
    elif vcs.branch_problem(kind, branch):
        why = vcs.branch_problem(kind, branch)
    if why:
        return "echo %s >&2\nexit 1" % shlex.quote("buildunits: cannot check out: " + why)
    if kind == "hg":
        return _hg_script(repository, branch, revision)
    if kind == "svn":
        return _svn_script(repository, branch, revision)
    return _git_script(repository, branch, revision)


def _git_script(repository, branch, revision):
    """The checkout step of a git repository.

    The repository's URL is not in them: it may hold credentials, and the
    command is recorded and shown (with the URL masked, as a comment).  The
    step has it in BUILDUNITS_REPOSITORY, and gives it to git as the URL of
    a remote through GIT_CONFIG_* variables, so it is on no command line and
    in no file; git's messages, which may quote it, are shown masked.

    REVISION is empty or a full id (vcs.valid_revision(REVISION, "git"):
    checkout_script refuses any other); the branch and the revision are data, so each
    git command has `--end-of-options` before them (git
    checkout has no such option: it is given the id rev-parse printed,
    and `--` after it)."""
    q = shlex.quote
    target = revision if revision else "FETCH_HEAD"
    # A forced build of a tag (its branch is refs/tags/NAME) fetches the tag.
    fetch_ref = revision or (branch if branch.startswith("refs/tags/") else "refs/heads/" + branch)
    shown = re.sub(r"[\x00-\x1f\x7f]", "?", redact.url(repository))
    lines = [
        "# fetch from %s" % shown,
        "set -e",
        "[ -d .git ] || git init --quiet .",
        # A git killed with its runner leaves lock files; only this worker's
        # runner (one per worker, locks/ in the state directory) works here.
        "find .git -name '*.lock' -type f -delete",
        'export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=remote.buildunits.url GIT_CONFIG_VALUE_0="$BUILDUNITS_REPOSITORY"',
        # A local repository is the operator's (Repository=) and may belong
        # to another user than the step's: git is told it is safe to read,
        # in a global configuration of the step's own (git gives a local
        # upload-pack none of the GIT_CONFIG_* variables).
        # (Only a path: a URL may hold credentials, and goes in no file.)
        "rm -f .git/buildunits-global",
        'case "$BUILDUNITS_REPOSITORY" in /*|file://*) '
        'git config --file .git/buildunits-global safe.directory "${BUILDUNITS_REPOSITORY#file://}"; '
        'export GIT_CONFIG_GLOBAL="$PWD/.git/buildunits-global";; esac',
        "masked() { \"$@\" 2>.git/buildunits-stderr && s=0 || s=$?; sed -e %s .git/buildunits-stderr >&2; "
        "rm -f .git/buildunits-stderr; return $s; }" % q(_SED_MASK),
        # A revision not on the branch's tip is fetched by name when the
        # server allows it; otherwise all branches are fetched.
        "git fetch --quiet --no-tags --end-of-options buildunits %s 2>/dev/null || "
        "masked git fetch --quiet --no-tags --end-of-options buildunits '+refs/heads/*:refs/remotes/origin/*'"
        % q(fetch_ref),
        "rev=$(git rev-parse --verify --quiet --end-of-options %s) || { echo %s >&2; exit 1; }"
        % (q(target + "^{commit}"), q("buildunits: no commit %s fetched" % target)),
        # The tags, so that `git describe` works in a step: all of them,
        # moved ones forced, deleted ones pruned (after $rev: FETCH_HEAD
        # named it).
        "masked git fetch --quiet --no-tags --prune --end-of-options buildunits '+refs/tags/*:refs/tags/*'",
        'git checkout --quiet --force --detach "$rev" --',
        "git clean --quiet -ffdx",
        "git log -1 --format='checked out %H%n%an: %s'",
    ]
    return "\n".join(lines)


def _shown(repository):
    return "# fetch from %s" % re.sub(r"[\x00-\x1f\x7f]", "?", redact.url(repository))


def _masked(admin):
    """The shell function `masked CMD...`: CMD's standard error through
    the sed of redact.text(), kept meanwhile in the directory ADMIN."""
    return ("masked() { \"$@\" 2>%s/buildunits-stderr && s=0 || s=$?; sed -e %s %s/buildunits-stderr >&2; "
            "rm -f %s/buildunits-stderr; return $s; }" % (admin, shlex.quote(_SED_MASK), admin, admin))


def _hg_script(repository, branch, revision):
    """The checkout step of a Mercurial repository: pull everything into
    the work directory's repository, `hg update --clean` to the revision
    (or the branch's tip), `hg purge --all` (untracked and ignored files:
    git clean -ffdx).  The URL reaches hg as the path "buildunits" of a
    --config option holding the text $BUILDUNITS_REPOSITORY, which hg
    expands itself (it expands variables in paths): on no command line and
    in no file, as for git.  REVISION (a full node, checked) enters the
    revset only as id(NODE), the branch (checked by vcs.branch_problem: no
    quote or backslash) as a literal: string.  hg reads no repository's
    .hg/hgrc here (HGRCSKIPREPO, as in hg.py)."""
    q = shlex.quote
    target = "id(%s)" % revision if revision else "max(branch('literal:%s'))" % branch
    lines = [
        _shown(repository),
        "set -e",
        # No repository's .hg/hgrc is read (hg.py): not the source's (its
        # hooks are its owner's; one of another user's makes hg abort the
        # pull), not the work directory's (a build may have written it).
        "export HGPLAIN=1 HGENCODING=utf-8 HGRCSKIPREPO=1",
        "[ -d .hg ] || hg init .",
        # An hg killed with its runner leaves its locks and an unfinished
        # transaction; only this worker's runner works here.
        "rm -f .hg/wlock .hg/store/lock",
        "[ ! -e .hg/store/journal ] || hg recover --quiet",
        _masked(".hg"),
        "masked hg pull --quiet --config 'paths.buildunits=$BUILDUNITS_REPOSITORY' buildunits",
        "hg update --quiet --clean -r %s" % q(target),
        "hg purge --quiet --all --config extensions.purge=",
        "hg log -r . -T '{node}\\n' > .hg/buildunits-revision",
        "hg log -r . -T 'checked out {node}\\n{author}: {desc|firstline}\\n'",
    ]
    return "\n".join(lines)


def _svn_script(repository, branch, revision):
    """The checkout step of a Subversion repository: REPOSITORY/BRANCH at
    REVISION (HEAD if empty), by `svn switch` in the working copy already
    there (an update when it is of the same URL), else a fresh `svn
    checkout` in an emptied directory; then `svn cleanup
    --remove-unversioned --remove-ignored` (git clean -ffdx).  The branch
    is a path below the repository: trunk or branches/NAME (svn.py).  svn
    URLs hold no password (svn asks for it, or has it cached), so the URL
    is given on the command line; svn's messages are masked anyway."""
    rev = revision or "HEAD"
    at = '"$url@%s"' % rev
    lines = [
        _shown(repository),
        "set -e",
        'case "$BUILDUNITS_REPOSITORY" in /*) url="file://$BUILDUNITS_REPOSITORY";; *) url="$BUILDUNITS_REPOSITORY";; esac',
        'url="${url%%/}/%s"' % branch,
        "mkdir -p .svn-buildunits",
        _masked(".svn-buildunits"),
        # A working copy left locked by a killed svn is cleaned up first;
        # one that cannot be switched (another repository, damaged) is
        # replaced.
        "if [ -d .svn ] && svn cleanup --quiet --non-interactive -- . && svn revert --quiet --recursive -- . "
        "&& masked svn switch --quiet --non-interactive --ignore-ancestry -r %s -- %s .; then :; else" % (rev, at),
        "  find . -mindepth 1 -maxdepth 1 ! -name .svn-buildunits -exec rm -rf -- {} +",
        "  masked svn checkout --quiet --non-interactive -r %s -- %s .; fi" % (rev, at),
        "rm -rf .svn-buildunits",
        "svn cleanup --quiet --non-interactive --remove-unversioned --remove-ignored -- .",
        "rev=$(svn info --show-item last-changed-revision -- .)",
        "printf '%s\\n' \"$rev\" > .svn/buildunits-revision",
        'echo "checked out r$rev of $(svn info --show-item relative-url -- .)"',
    ]
    return "\n".join(lines)


# redact.text() in sed (POSIX BRE): user:secret@ -> user:***@, token@ -> ***@.
_SED_MASK = ("s|\\(://[^/?#[:space:]:@]*\\):[^/?#[:space:]]*@|\\1:***@|g; "
             "s|://[^/?#[:space:]:@]\\{1,\\}@|://***@|g")


def head(workdir):
    """The commit WORKDIR has checked out, or "": the id in its .git/HEAD,
    which the git script above leaves detached, or the revision the hg or
    svn script wrote in .hg/ or .svn/buildunits-revision.  Read as a file,
    opened without following links, not with git: the checkout belongs to the
    build (under systemd, to the step's user), and git run by the runner
    in a repository a build controls would obey that repository's
    configuration (core.fsmonitor and friends run commands; hg hooks too).
    Each script removes the others' directories (as untracked files), so
    only one of them is there after a checkout.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); os.mkdir(os.path.join(d, ".git"))
    >>> _ = open(os.path.join(d, ".git", "HEAD"), "w").write("0123456789abcdef0123456789abcdef01234567\\n")
    >>> head(d)
    '0123456789abcdef0123456789abcdef01234567'
    >>> _ = open(os.path.join(d, ".git", "HEAD"), "w").write("ref: refs/heads/main\\n")
    >>> head(d)
    ''
    """
    for kind, where in (("git", [".git", "HEAD"]), ("hg", [".hg", "buildunits-revision"]),
                        ("svn", [".svn", "buildunits-revision"])):
        try:
            fd = nofollow.open_file(workdir, where)
        except (OSError, nofollow.NotLinked):
            continue
        with os.fdopen(fd, "rb") as f:
            text = f.read(200).decode("ascii", "replace").strip()
        return text if vcs.valid_revision(text, kind) else ""
    return ""
