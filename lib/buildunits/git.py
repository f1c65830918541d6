"""Reading git repositories: branch heads and commit details.

A local repository (a path, bare or not) is read in place: one
`git for-each-ref` per poll of an unchanged repository, one `git log` per
changed branch.  A remote one (any URL git understands) is asked with
`git ls-remote`, and new commits are fetched into a bare mirror under the
poller's state directory before they are read.
"""

import os
import subprocess

from .config import normalize_repository

GIT_TIMEOUT_SEC = 300
_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "LC_ALL": "C"}


class GitError(Exception):
    pass


def _run(args, cwd=None):
    env = dict(os.environ)
    env.update(_ENV)
    try:
        p = subprocess.run(["git"] + args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
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
    """{branch: revision} of REPOSITORY's branches."""
    if is_local(repository):
        if not os.path.isdir(repository):
            raise GitError("%s: no such repository" % repository)
        out = _run(["--git-dir=" + _git_dir(repository), "for-each-ref",
                    "--format=%(objectname) %(refname)", "refs/heads/"])
        sep = " "
    else:
        out = _run(["ls-remote", "--heads", repository])
        sep = "\t"
    refs = {}
    for line in out.decode("utf-8", "replace").splitlines():
        sha, _, ref = line.partition(sep)
        if ref.startswith("refs/heads/"):
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
        _run(["init", "--quiet", "--bare", mirror])
    specs = ["+refs/heads/%s:refs/heads/%s" % (b, b) for b in branches]
    _run(["--git-dir=" + mirror, "fetch", "--quiet", "--no-tags", repository] + specs)
    return mirror


def commits(git_dir, old, new, limit):
    """The commits in NEW not in OLD (all of NEW's if OLD is None: then only
    NEW itself), oldest first, at most LIMIT (the newest ones)."""
    rng = [new, "-1"] if old is None else ["%s..%s" % (old, new), "-%d" % limit]
    out = _run(["--git-dir=" + git_dir, "log", "-z", "--format=%x1e%H%x1f%an <%ae>%x1f%at%x1f%B%x1f",
                "--name-only"] + rng)
    result = [_parse(chunk) for chunk in out.decode("utf-8", "replace").split("\x1e")[1:]]
    result.reverse()
    return result


def commit(git_dir, rev):
    """Details of one commit (for `buildunits sendchange`)."""
    return commits(git_dir, None, rev, 1)[0]


def _parse(chunk):
    sha, author, when, body, rest = chunk.split("\x1f", 4)
    files = [f for f in rest.lstrip("\0\n").split("\0") if f and f != "\n"]
    return {"revision": sha, "author": author, "when": float(when),
            "message": body.rstrip("\n"), "files": files}


def git_dir_for(repository):
    """The git dir of a local REPOSITORY."""
    return _git_dir(normalize_repository(repository))
