"""Credentials: what a name is, where its file is, and a step's own copies.

A builder or step names the credentials it needs (`Credential=NAME`);
each is a file `CredentialsDirectory=/NAME` (default
/etc/buildunits/credentials), readable by root only.  The step reads it
as `$CREDENTIALS_DIRECTORY/NAME`, as any systemd service does.

- A name is what systemd accepts for LoadCredential=: letters, digits,
  '_', '.' and '-', starting with a letter, a digit or '_', at most 64
  long; never '.', '..' or anything with a '/' (valid_name).
- Its source (credential_source): `NAME.cred`, when it exists, is a
  file encrypted by `systemd-creds encrypt` and is handed over with
  LoadCredentialEncrypted=; otherwise the plain file `NAME`, with
  LoadCredential=.  The privileged side that starts a step's unit calls
  it with the directory of its own configuration (never one the runner
  names), and adds the property it returns.
- Plain-process mode (the local executor, no systemd to hand the files
  over): Private makes a directory of copies of only the step's
  credentials, mode 0700, outside the work directory, before the step
  starts, and removes it after the step ends (and at the runner's next
  start, after a crash).  This isolates nothing: the step runs as the
  runner's user, which can read the credentials directory itself.  It
  gives the step the same `$CREDENTIALS_DIRECTORY` it has under systemd.

Also the heuristics behind checkconfig's warning that an Environment=
value looks like a secret (looks_secret): it belongs in a credential,
where the step's output is masked (mask.py) and the value is in no
record, environment listing or process table.
"""

import errno
import math
import os
import re
import shutil
import stat
import tempfile

DEFAULT_DIRECTORY = "/etc/buildunits/credentials"
VARIABLE = "CREDENTIALS_DIRECTORY"
NAME_RE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
ENCRYPTED_SUFFIX = ".cred"


def valid_name(name):
    """Whether NAME can name a credential.

    >>> [valid_name(n) for n in ("token", "_x.y-z", ".", "..", "a/b", ".hidden", "")]
    [True, True, False, False, False, False, False]
    """
    return bool(NAME_RE.fullmatch(name)) and name not in (".", "..")


def name_problem(name):
    """Why NAME cannot name a credential, or ""."""
    if valid_name(name):
        return ""
    return ("credential name %r must be letters, digits, '_', '.' or '-', starting with a letter, "
            "a digit or '_', at most 64 long" % name)


def credential_source(directory, name):
    """(property, path): how systemd is to hand credential NAME from
    DIRECTORY to a step's unit.  An encrypted NAME.cred wins over NAME.

    >>> credential_source("/nonexistent", "token")
    ('LoadCredential', '/nonexistent/token')
    """
    if not valid_name(name):
        raise ValueError(name_problem(name))
    encrypted = os.path.join(directory, name + ENCRYPTED_SUFFIX)
    if os.path.exists(encrypted):
        return "LoadCredentialEncrypted", encrypted
    return "LoadCredential", os.path.join(directory, name)


class CredentialError(OSError):
    """A credential a step needs cannot be handed to it; str() says which
    and why (its strerror too, for callers that show an OSError's)."""

    def __init__(self, message):
        super().__init__(errno.ENOENT, message)


def _read(directory, name):
    kind, path = credential_source(directory, name)
    if kind != "LoadCredential":
        raise CredentialError("credential %s: %s is encrypted, and only systemd can decrypt it "
                              "(Executor=transient)" % (name, path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CredentialError("credential %s: no file %s" % (name, path)) from None
    except OSError as e:
        raise CredentialError("credential %s: cannot open %s: %s" % (name, path, e.strerror)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CredentialError("credential %s: %s is not a regular file" % (name, path))
    with open(fd, "rb") as f:
        return f.read()


def runtime_directory(environ=os.environ):
    """Where the runner keeps what lives only while it runs: systemd's
    RuntimeDirectory= or the user's runtime directory when there is one,
    else the temporary directory (private to the unit under systemd)."""
    for var in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        value = environ.get(var, "").split(":")[0]
        if value.startswith("/") and os.path.isdir(value):
            return value
    return tempfile.gettempdir()


class Private:
    """The directory of copies a step gets in plain-process mode: PATH,
    made by make(), removed by remove()."""

    def __init__(self, source, worker="", parent=None):
        self.source = source
        self.path = os.path.join(parent or runtime_directory(),
                                 "buildunits-credentials-%d%s" % (os.getuid(), "-" + worker if worker else ""))

    def make(self, names):
        """Copies of the credentials NAMES in a new PATH (what was there is
        removed first); CredentialError if one cannot be read."""
        values = [(n, _read(self.source, n)) for n in dict.fromkeys(names)]
        self.remove()
        try:
            os.mkdir(self.path, 0o700)
        except OSError as e:
            raise CredentialError("cannot make the credentials directory %s: %s" % (self.path, e.strerror)) from None
        try:
            for name, value in values:
                fd = os.open(os.path.join(self.path, name),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400)
                with open(fd, "wb") as f:
                    f.write(value)
            os.chmod(self.path, 0o500)
        except OSError as e:
            self.remove()
            raise CredentialError("cannot copy the credentials into %s: %s" % (self.path, e.strerror)) from None
        return self.path

    def remove(self):
        """Remove PATH and what is in it (a link at PATH is only unlinked)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(self.path)
            return
        os.chmod(self.path, 0o700)
        shutil.rmtree(self.path)


# ------------------------------------------------------ looks secret

SECRET_KEY_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "API_KEY", "APIKEY", "PRIVATE_KEY")
# Shapes of well-known tokens: GitHub, GitLab, Slack, AWS access keys.
TOKEN_SHAPES = re.compile(r"(ghp_|gho_|ghs_|github_pat_|glpat-|xox[bpas]-)[A-Za-z0-9_-]{8,}|AKIA[0-9A-Z]{16}")
LONG_RANDOM = re.compile(r"[A-Za-z0-9+/=_-]{32,}")
MIN_ENTROPY_BITS_PER_CHAR = 3.0


def _entropy(text):
    """Shannon entropy of TEXT, in bits per character."""
    counts = {}
    for c in text:
        counts[c] = counts.get(c, 0) + 1
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def looks_secret(key, value):
    """Why the variable KEY=VALUE looks like a secret, or "".

    >>> looks_secret("GITHUB_TOKEN", "x")
    'its name says so'
    >>> looks_secret("FLAGS", "ghp_" + "a1B2" * 9)
    'its value has the shape of a known token'
    >>> looks_secret("PATH", "/usr/local/bin:/usr/bin:/bin"), looks_secret("CFLAGS", "-O2 -g")
    ('', '')
    """
    if value and any(w in key.upper() for w in SECRET_KEY_WORDS):
        return "its name says so"
    if TOKEN_SHAPES.search(value):
        return "its value has the shape of a known token"
    for m in LONG_RANDOM.finditer(value):
        word = m.group(0)
        if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", word):
            continue   # a commit id
        if _entropy(word) >= MIN_ENTROPY_BITS_PER_CHAR and re.search(r"[0-9]", word) and re.search(r"[A-Za-z]", word):
            return "its value is a long random-looking string"
    return ""
