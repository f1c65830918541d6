"""Mercurial and Subversion for tests: real repositories made with hg and
svnadmin, isolated from the user's configuration (HGRCPATH empty, svn
given a configuration directory of the test's own)."""

import os
import subprocess
import urllib.parse


def _run(argv, cwd=None, env=None, input=None):
    p = subprocess.run(argv, cwd=cwd, env=env, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise RuntimeError("%s (in %s) failed with status %d:\n%s%s"
                           % (" ".join(map(str, argv)), cwd, p.returncode, p.stdout.decode(errors="replace"),
                              p.stderr.decode(errors="replace")))
    return p.stdout.decode("utf-8", "replace").strip()


def hg_env(extra=None):
    env = dict(os.environ)
    env.update({"HGRCPATH": "", "HGPLAIN": "1", "HGENCODING": "utf-8", "LC_ALL": "C"})
    env.update(extra or {})
    return env


class HgRepo:
    """A Mercurial repository at PATH (what Repository= names), committed
    to directly (hg needs no bare repository: pushes and commits look the
    same to a reader).

    .path, .url   the repository's path
    """

    def __init__(self, path):
        self.path = self.url = str(path)
        os.makedirs(self.path, exist_ok=True)
        self.hg("init", ".")

    def hg(self, *args, env=None, input=None):
        return _run(["hg"] + list(args), cwd=self.path, env=hg_env(env), input=input)

    def commit(self, files, message="change", branch=None, author="Test Harness <harness@example.invalid>",
               encoding=None):
        """Write FILES ({path: str | bytes | None to delete}) on BRANCH
        (default: the current one; a new branch starts from the current
        changeset), commit with MESSAGE (str or bytes: read from a file,
        so it may hold NUL) as AUTHOR (str or bytes), with HGENCODING
        ENCODING if given; return the new changeset's node."""
        if branch:
            self.hg("branch", "-q", "-f", "--", branch)
        for path, content in files.items():
            full = os.path.join(self.path, path)
            if content is None:
                os.remove(full)
                continue
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
        msg = os.path.join(os.path.dirname(self.path), ".hg-message")
        with open(msg, "wb") as f:
            f.write(message.encode("utf-8") if isinstance(message, str) else message)
        user = author.encode("utf-8") if isinstance(author, str) else author
        env = {"HGENCODING": encoding} if encoding else None
        subprocess.run(["hg", "commit", "-q", "--addremove", "-l", msg, "-u", user], cwd=self.path,
                       env=hg_env(env), check=True)
        return self.head()

    def update(self, rev):
        self.hg("update", "-q", "-r", rev)

    def head(self, branch=None):
        """The node of BRANCH's tip (default: the working directory's parent)."""
        rev = "max(branch('literal:%s'))" % branch if branch else "."
        return self.hg("log", "-r", rev, "-T", "{node}")


class SvnRepo:
    """A Subversion repository made by svnadmin at PATH, with the standard
    layout (trunk/, branches/, tags/), and a working copy of its root to
    commit from.

    .path   the repository's directory
    .url    its file:// URL (what Repository= names)
    """

    def __init__(self, path, layout=True):
        self.path = str(path)
        self.url = "file://" + urllib.parse.quote(self.path)
        self.config_dir = self.path + ".svnconfig"
        self.work = self.path + ".work"
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        _run(["svnadmin", "create", self.path])
        if layout:
            self.svn("mkdir", "-q", "-m", "layout", "--", self.url + "/trunk", self.url + "/branches",
                     self.url + "/tags")
        self.svn("checkout", "-q", "--", self.url, self.work)

    def svn(self, *args, cwd=None):
        return _run(["svn", "--non-interactive", "--config-dir", self.config_dir] + list(args),
                    cwd=cwd, env=dict(os.environ, LC_ALL="C"))

    def commit(self, files, message="change", branch="trunk", author="harness"):
        """Write FILES ({path: str | bytes | None}) below BRANCH ("trunk",
        "branches/NAME"), commit as AUTHOR with MESSAGE; return the new
        revision (a string)."""
        self.svn("update", "-q", "--", self.work)
        top = os.path.join(self.work, branch)
        for path, content in files.items():
            full = os.path.join(top, path)
            if content is None:
                self.svn("rm", "-q", "--", full)
                continue
            new = not os.path.exists(full)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            if new:
                self.svn("add", "-q", "--parents", "--", full)
        msg = self.path + ".message"
        with open(msg, "wb") as f:
            f.write(message.encode("utf-8") if isinstance(message, str) else message)
        self.svn("commit", "-q", "-F", msg, "--username", author, "--", self.work)
        return self.youngest()

    def branch(self, name, source="trunk", message="branch"):
        """Copy SOURCE to branches/NAME (one revision); return it."""
        self.svn("copy", "-q", "-m", message, "--", "%s/%s@" % (self.url, source),
                 "%s/branches/%s" % (self.url, name))
        return self.youngest()

    def youngest(self):
        return _run(["svnlook", "youngest", self.path])

    def set_revprop(self, rev, name, value):
        """Write revision property NAME of REV as raw bytes VALUE, past svn's
        own checks (UTF-8, no NUL): what a repository loaded with
        `svnadmin load --bypass-prop-validation` may hold.  It rewrites
        the FSFS revision-properties file of an unpacked repository."""
        path = os.path.join(self.path, "db", "revprops", str(int(rev) // 1000), str(rev))
        with open(path, "rb") as f:
            props = _read_hash(f.read())
        props[name.encode()] = value
        with open(path, "wb") as f:
            for k, v in props.items():
                f.write(b"K %d\n%s\nV %d\n%s\n" % (len(k), k, len(v), v))
            f.write(b"END\n")


def _read_hash(data):
    """An svn hash dump ("K len\\nkey\\nV len\\nvalue\\n"... "END\\n")."""
    props, pos = {}, 0
    while not data.startswith(b"END\n", pos):
        eol = data.index(b"\n", pos)
        klen = int(data[pos + 2:eol])
        key = data[eol + 1:eol + 1 + klen]
        pos = eol + 1 + klen + 1
        eol = data.index(b"\n", pos)
        vlen = int(data[pos + 2:eol])
        props[key] = data[eol + 1:eol + 1 + vlen]
        pos = eol + 1 + vlen + 1
    return props
