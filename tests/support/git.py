"""git for tests: repositories isolated from the machine's and the user's
configuration."""

import os
import re
import subprocess


def git_env(extra=None):
    """The environment for git: no system or global configuration."""
    env = dict(os.environ)
    env.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
                "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
    for k in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"):
        env.pop(k, None)
    env.update(extra or {})
    return env


def git(*args, cwd=None, check=True, env=None):
    """Run git; return its stdout, stripped.  Raises with stderr on failure."""
    p = subprocess.run(["git"] + list(args), cwd=cwd, env=git_env(env), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and p.returncode != 0:
        raise RuntimeError("git %s (in %s) failed with status %d:\n%s%s"
                           % (" ".join(args), cwd, p.returncode, p.stdout, p.stderr))
    return p.stdout.strip()


class GitRepo:
    """A bare repository (what a builder's Repository= names) and a work
    clone to commit from.

    .bare   path of the bare repository
    .work   path of the work tree
    .url    same as .bare
    """

    def __init__(self, bare, work, branch):
        self.bare = str(bare)
        self.work = str(work)
        self.url = self.bare
        self.default_branch = branch
        self._tick = 0

    def git(self, *args, check=True):
        return git(*args, cwd=self.work, check=check)

    def commit(self, files, message="change", branch=None, push=True, author=None):
        """Write FILES ({path: str | bytes | None to delete}) on BRANCH
        (default: the default branch; created from the current one if new),
        commit, push unless push=False; return the new commit's sha."""
        branch = branch or self.default_branch
        current = self.git("symbolic-ref", "--short", "HEAD")
        if current != branch:
            if self.git("rev-parse", "--verify", "--quiet", "refs/heads/" + branch, check=False):
                self.git("checkout", "-q", branch)
            else:
                self.git("checkout", "-q", "-b", branch)
        for path, content in files.items():
            full = os.path.join(self.work, path)
            if content is None:
                self.git("rm", "-q", "-f", "--", path)
                continue
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            self.git("add", "--", path)
        args = ["commit", "-q", "--allow-empty", "-m", message]
        if author:
            args += ["--author", author]
        self.git(*args)
        sha = self.git("rev-parse", "HEAD")
        if push:
            self.push(branch)
        return sha

    def push(self, branch=None, force=False):
        """Push BRANCH (default: every local branch) to the bare repository."""
        refspec = ("refs/heads/%s:refs/heads/%s" % (branch, branch)) if branch else "refs/heads/*:refs/heads/*"
        self.git("push", "-q", "origin", ("+" if force else "") + refspec)

    def delete_branch(self, branch):
        """Delete BRANCH in the bare repository (the work clone keeps it)."""
        self.git("push", "-q", "origin", ":refs/heads/" + branch)

    def head(self, branch=None):
        """The sha BRANCH points to in the bare repository, or None."""
        out = git("rev-parse", "--verify", "--quiet", "refs/heads/" + (branch or self.default_branch),
                  cwd=self.bare, check=False)
        return out or None

    def ls_remote(self):
        """{ref: sha} as `git ls-remote` of the bare repository shows it."""
        out = git("ls-remote", self.bare)
        refs = {}
        for line in out.splitlines():
            sha, ref = line.split("\t", 1)
            refs[ref] = sha
        return refs


def make_repo(path, branch="main", work=None, user="Test Harness", email="harness@example.invalid"):
    """Create a bare repository at PATH and a work clone beside it
    (PATH minus ".git" plus ".work"), with no commits; return a GitRepo."""
    path = str(path)
    work = str(work) if work else re.sub(r"\.git$", "", path.rstrip("/")) + ".work"
    git("-c", "init.defaultBranch=" + branch, "init", "-q", "--bare", path)
    git("-c", "init.defaultBranch=" + branch, "init", "-q", work)
    for cwd in (path, work):
        git("config", "user.name", user, cwd=cwd)
        git("config", "user.email", email, cwd=cwd)
    git("symbolic-ref", "HEAD", "refs/heads/" + branch, cwd=path)
    git("symbolic-ref", "HEAD", "refs/heads/" + branch, cwd=work)
    git("remote", "add", "origin", path, cwd=work)
    return GitRepo(path, work, branch)
