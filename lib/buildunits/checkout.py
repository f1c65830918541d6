"""The implicit checkout step: the shell script that fetches a build's
revision into the work directory and checks it out.

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

from . import git, nofollow, redact

DESCRIPTION = "fetch and check out the revision"


def checkout_script(repository, branch, revision):
    """The shell commands of the implicit checkout step.

    The repository's URL is not in them: it may hold credentials, and the
    command is recorded and shown (with the URL masked, as a comment).  The
    step has it in BUILDUNITS_REPOSITORY, and gives it to git as the URL of
    a remote through GIT_CONFIG_* variables, so it is on no command line and
    in no file; git's messages, which may quote it, are shown masked.

    REVISION is empty or a full id (git.valid_revision: the runner refuses
    any other request); the branch and the revision are data, so each
    git command has `--end-of-options` before them (git
    checkout has no such option: it is given the id rev-parse printed,
    and `--` after it)."""
    q = shlex.quote
    target = revision if revision else "FETCH_HEAD"
    fetch_ref = revision if revision else "refs/heads/" + branch
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
        'git checkout --quiet --force --detach "$rev" --',
        "git clean --quiet -ffdx",
        "git log -1 --format='checked out %H%n%an: %s'",
    ]
    return "\n".join(lines)


# redact.text() in sed (POSIX BRE): user:secret@ -> user:***@, token@ -> ***@.
_SED_MASK = ("s|\\(://[^/?#[:space:]:@]*\\):[^/?#[:space:]]*@|\\1:***@|g; "
             "s|://[^/?#[:space:]:@]\\{1,\\}@|://***@|g")


def head(workdir):
    """The commit WORKDIR has checked out, or "": the id in its .git/HEAD,
    which the script above leaves detached.  Read as a file, opened
    without following links, not with git: the checkout belongs to the
    build (under systemd, to the step's user), and git run by the runner
    in a repository a build controls would obey that repository's
    configuration (core.fsmonitor and friends run commands).

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); os.mkdir(os.path.join(d, ".git"))
    >>> _ = open(os.path.join(d, ".git", "HEAD"), "w").write("0123456789abcdef0123456789abcdef01234567\\n")
    >>> head(d)
    '0123456789abcdef0123456789abcdef01234567'
    >>> _ = open(os.path.join(d, ".git", "HEAD"), "w").write("ref: refs/heads/main\\n")
    >>> head(d)
    ''
    """
    try:
        fd = nofollow.open_file(workdir, [".git", "HEAD"])
    except (OSError, nofollow.NotLinked):
        return ""
    with os.fdopen(fd, "rb") as f:
        text = f.read(200).decode("ascii", "replace").strip()
    return text if git.valid_revision(text) else ""
