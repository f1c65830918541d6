"""buildunits-webhook [--listen ADDRESS] [--idle-sec N]: take the forges' push events.

NAME
    buildunits-webhook - turn a forge's push event into changes in the spool

DESCRIPTION
    A small HTTP receiver for the push events of GitHub, Gitea (and
    Forgejo) and GitLab, and for a generic JSON form a script can send.
    Every commit of a push becomes one change record in the spool, made
    and committed exactly as `buildunits sendchange` makes and commits
    it, so the scheduler cannot tell the two apart but by their "source"
    ("webhook").  It keeps no memory but the deliveries it took.

    The forge is named by the request's path, one per kind of hook,
    since Gitea also sends GitHub's headers:

        POST /github     X-Hub-Signature-256: sha256=HMAC-SHA256 of the body, hex
        POST /gitea      X-Gitea-Signature (or X-Forgejo-Signature): the same, bare hex
        POST /forgejo    the same as /gitea
        POST /gitlab     X-Gitlab-Token: the secret itself (compared in constant time)
        POST /generic    X-Buildunits-Signature: sha256=HMAC-SHA256 of the body, hex

    The secret of each is a systemd credential, a file of the credentials
    directory: webhook-github, webhook-gitea (for /forgejo too),
    webhook-gitlab, webhook-generic.  The unit loads them (LoadCredential=,
    from /etc/buildunits/credentials/, root's alone; never in a builder
    file) and the receiver reads $CREDENTIALS_DIRECTORY/NAME once at
    start, without one trailing newline; without $CREDENTIALS_DIRECTORY
    (run by hand) it reads the CredentialsDirectory= of buildunits.conf.
    The unit's LoadCredential= paths are fixed: with another
    CredentialsDirectory= in buildunits.conf, a drop-in of
    buildunits-webhook.service names the files there (LoadCredential=
    webhook-github:/srv/secrets/webhook-github), as for the notifier's.
    A forge whose credential is missing, or is "none" (what the unit
    gives when the file is not there), is not enabled: its path answers
    404.  A secret shorter than MIN_SECRET_BYTES (16) is refused as too
    easy to guess, with a journal line, and its hook is not enabled
    either (`openssl rand -hex 32` makes a good one).

    Each delivery names itself: X-GitHub-Delivery, X-Gitea-Delivery (or
    X-Forgejo-Delivery), X-Gitlab-Event-UUID, X-Buildunits-Delivery.  A
    delivery id already taken is a replay and queues nothing.  The ids
    are kept in STATE/webhook/deliveries.jsonl, the newest KEEP_DELIVERIES
    of them.  A build of a pushed commit has the properties forge
    (github, gitea, gitlab or generic) and delivery (the forge's id), in
    its steps' environment as BUILDUNITS_PROPERTY_forge and
    BUILDUNITS_PROPERTY_delivery (those of the newest commit when changes
    were collapsed).

    The event is X-GitHub-Event, X-Gitea-Event (X-Forgejo-Event) or
    X-Gitlab-Event: only a push ("push", "Push Hook") queues changes; a
    ping, and any other event, is answered 200 and queues nothing.  A
    push of a tag, or one that deletes a branch, queues nothing either.

    Which repository: the payload's clone URLs (GitHub's and Gitea's
    repository clone_url, ssh_url, git_url, html_url; GitLab's project
    git_http_url, git_ssh_url, web_url) are compared with every builder's
    Repository= by host and path: scheme, user, password and port left
    out, the path without a trailing "/" or ".git", both in lower case.
    So https://github.com/o/r.git, git@github.com:o/r and
    ssh://git@github.com:22/o/r are one repository.  The change names
    the builder's Repository= (masked), as the poller's would; a push
    that matches no builder's is answered 404.  The generic form names
    its repository itself, compared the same way, or, a local path,
    exactly.

    The generic form, for a script (application/json):

        {"repository": "https://git.example.org/hello.git",
         "branch": "main",
         "commits": [{"revision": "FULL HEX ID", "author": "A U Thor <a@example.org>",
                      "message": "Fix it", "files": ["src/x.c"], "when": 1700000000}]}

    Every field but revision may be left out of a commit (author and
    message are then empty, files none, when the time of queueing; with
    a local repository they are read from git, as sendchange does).

    A push lists its commits oldest first, each with its id, author,
    message, time and the files it added, modified and removed; GitLab
    lists at most 20 (the newest) and GitHub 2048, so a bigger push is
    queued as the commits its payload holds.  A push whose list is empty
    (a new branch at a commit already pushed) queues its head.

    Everything in a body is hostile.  Before anything is queued, every
    commit's id must be a full hex commit id, the branch one git accepts
    (git check-ref-format), authors and messages strings without NUL or
    control characters (a message may hold newlines and tabs), file
    names non-empty strings without NUL, times ISO 8601 or seconds since
    the epoch; one bad field refuses the whole push, naming the field.

OPTIONS
    --listen ADDRESS  where to listen when not socket-activated:
                      HOST:PORT, [IPV6]:PORT (default 127.0.0.1:8011)
    --idle-sec N      exit after N seconds without a request (default
                      IDLE_SEC, 120, when socket-activated; else never)

ANSWERS
    202  the changes are committed to the spool: their ids, one a line
    200  a ping, an event that is not a push, a tag or a deleted branch:
         nothing to queue
    400  the body is not JSON, a field is bad (named), no delivery id
    401  no signature or token
    403  the signature or token does not match
    404  no such path, a forge not enabled, a repository no builder has
    405  not POST
    409  a delivery id already taken (a replay)
    411  no Content-Length
    413  a body over MAX_BODY_BYTES (1 MiB): refused before it is read
    415  not application/json (set the hook's content type to JSON)
    500  the spool or the record cannot be written: the forge delivers again

    Every answer but 202 and 200 is also a journal line (priority warning,
    500 error) naming the peer, the forge, the delivery and why; nothing
    is queued by a request answered otherwise than 202.

SOCKET ACTIVATION
    buildunits-webhook.socket listens (ListenStream=127.0.0.1:8011 by
    default: the forge reaches it through a reverse proxy that holds
    the TLS certificate; a drop-in changes it) and starts the service
    for the first connection (Accept=no); the service takes the
    listening socket from LISTEN_FDS and exits after --idle-sec (default
    IDLE_SEC) without a request.  Run by hand, it listens on --listen
    itself and does not exit when idle unless --idle-sec is given.

    Requests are answered one at a time: each takes milliseconds, and a
    client that sends nothing for READ_TIMEOUT_SEC (10 s) is cut off; the
    reverse proxy, which buffers a request before forwarding it, keeps a
    client that drips its bytes from holding the others back.  SIGHUP reloads the configuration before the next request;
    it is also read at each start.

CRASH SAFETY
    A push is committed to the spool first (Spool.deliver_many: every
    record written to tmp/ and fsync'd, renamed into changes/new/, one
    fsync of the directory: each rename is a change's commit point), and
    its delivery id appended to deliveries.jsonl and fsync'd after; only
    then is it answered 202.  A crash before the first rename queues
    nothing, and the forge, with no answer, shows the delivery as failed,
    to be delivered again (GitHub's and Gitea's Redeliver, GitLab's
    Resend request, or its retry).  A crash between the renames and the
    id's append leaves the changes queued and the id not taken: when the
    push is delivered again, the same changes are queued again, and the
    scheduler drops them (a revision is requested once per builder and
    branch).  So a push is never lost, at worst
    queued twice.  A crash in the middle of an append leaves a torn last
    line, which the next start ignores and removes (it rewrites the
    record).  When the record holds twice KEEP_DELIVERIES lines, it is
    rewritten with the newest KEEP_DELIVERIES (a new file renamed onto
    it: the old or the new one is whole).  A record that cannot be read
    is moved to STATE/corrupt/ with the reason, and the receiver starts
    with none: a replay older than that is then queued again, and dropped
    by the scheduler as above.  One receiver at a time uses a state (it
    holds STATE/locks/buildunits-webhook.lock); a second exits with
    status 3.

FILES
    /etc/buildunits/credentials/webhook-*  the secrets (loaded by the unit)
    /etc/buildunits/builders/              read for their Repository=
    /var/spool/buildunits/changes/         where the changes go
    /var/lib/buildunits/webhook/deliveries.jsonl  the deliveries taken

EXIT STATUS
    0 when idle for --idle-sec, or after SIGTERM; 1 when the socket or the
    state cannot be used; 2 on bad usage; 3 when another receiver holds
    the lock.
"""

import argparse
import datetime
import errno
import fcntl
import hashlib
import hmac
import http.server
import json
import os
import re
import signal
import socket
import stat
import sys
import time
import urllib.parse

from . import config, control, credentials, fsutil, git, log, paths, records
from .spool import Spool, Undelivered
from .state import State

DEFAULT_LISTEN = "127.0.0.1:8011"
IDLE_SEC = 120
MAX_BODY_BYTES = 1024 * 1024
MIN_SECRET_BYTES = 16
NOT_ENABLED = b"none"                 # the unit's SetCredential= when a secret's file is not there
READ_TIMEOUT_SEC = 10
KEEP_DELIVERIES = 10000
MAX_FIELD_CHARS = 64 * 1024           # an author, a file name, a URL; a message is bounded by the body
MAX_DELIVERY_CHARS = 128
DELIVERY_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
ZERO = re.compile(r"\A0+\Z")          # the "after" of a deleted branch


class Refused(Exception):
    """A request answered STATUS with the text of the exception."""

    def __init__(self, status, text):
        super().__init__(text)
        self.status = status


# ------------------------------------------------------------ the forges

class Forge:
    """What differs between forges: the credential, the headers, how the
    signature or token is checked, how a push's body is read."""

    def __init__(self, name, credential, delivery, event, push_events, check, parse):
        self.name, self.credential = name, credential
        self.delivery, self.event, self.push_events = delivery, event, push_events
        self.check, self.parse = check, parse


def _hmac_hex(secret, body):
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def _check_prefixed(header):
    """A check of HEADER: "sha256=" and the HMAC-SHA256 of the body, hex."""
    def check(secret, headers, body):
        given = headers.get(header)
        if given is None:
            raise Refused(401, "no %s header: the hook has no secret, or is not this forge's" % header)
        scheme, eq, digest = given.strip().partition("=")
        if not eq or scheme != "sha256":
            raise Refused(403, "%s is not sha256=HEX" % header)
        if not hmac.compare_digest(digest.lower().encode("ascii", "replace"), _hmac_hex(secret, body).encode()):
            raise Refused(403, "%s does not match the body (a wrong secret?)" % header)
    return check


def _check_gitea(secret, headers, body):
    names = ("X-Gitea-Signature", "X-Forgejo-Signature")
    given = next((headers.get(n) for n in names if headers.get(n) is not None), None)
    if given is None:
        raise Refused(401, "no X-Gitea-Signature header: the hook has no secret, or is not Gitea's")
    if not hmac.compare_digest(given.strip().lower().encode("ascii", "replace"), _hmac_hex(secret, body).encode()):
        raise Refused(403, "X-Gitea-Signature does not match the body (a wrong secret?)")


def _check_gitlab(secret, headers, body):
    given = headers.get("X-Gitlab-Token")
    if given is None:
        raise Refused(401, "no X-Gitlab-Token header: the hook has no secret token")
    # http.server decodes a header's bytes as Latin-1: encoding it so gives them back.
    if not hmac.compare_digest(given.encode("latin-1", "replace"), secret):
        raise Refused(403, "X-Gitlab-Token is not the secret token")


class Push:
    """One push, read from a body: the repository's URLs as the payload
    names them, the ref, the head, and the commits (dicts of the fields of
    control.change), oldest first."""

    def __init__(self, urls, ref, after, commits, head=None):
        self.urls, self.ref, self.after, self.commits, self.head = urls, ref, after, commits, head


def _get(obj, key, where, kinds=(str,), required=True):
    """OBJ[KEY] (OBJ a dict), checked to be one of KINDS; WHERE names it."""
    if not isinstance(obj, dict):
        raise Refused(400, "%s is not an object" % (where.rpartition(".")[0] or "the body"))
    if key not in obj or obj[key] is None:
        if required:
            raise Refused(400, "no %s" % where)
        return None
    value = obj[key]
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise Refused(400, "%s is not %s" % (where, " or ".join(
            {str: "a string", list: "a list", dict: "an object", int: "a number", float: "a number",
             bool: "a boolean"}[k] for k in kinds)))
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _text(value, where, lines=False, limit=MAX_FIELD_CHARS):
    """VALUE, a string without control characters (LINES: but newlines
    and tabs), at most LIMIT characters; a Refused naming WHERE if not."""
    if not isinstance(value, str):
        raise Refused(400, "%s is not a string" % where)
    bad = (_CONTROL_BUT_LINES if lines else _CONTROL).search(value)
    if bad:
        raise Refused(400, "%s holds the control character %r" % (where, bad.group(0)))
    if limit is not None and len(value) > limit:
        raise Refused(400, "%s is longer than %d characters" % (where, limit))
    return value


def revision(value, where):
    """VALUE as a full lowercase commit id (git.valid_revision)."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}", value):
        raise Refused(400, "%s is not %s" % (where, git.REVISION_RULE))
    return value.lower()


def _when(value, where):
    """A commit's time: ISO 8601 (forges) or seconds since the epoch."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0 <= value < 2 ** 40:
            raise Refused(400, "%s is not a time" % where)
        return float(value)
    if not isinstance(value, str) or len(value) > 64:
        raise Refused(400, "%s is not a time" % where)
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        t = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise Refused(400, "%s is not an ISO 8601 time: %r" % (where, value[:64])) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    return t.timestamp()


def _files(commit, where):
    """The sorted, unique names of the files a forge's commit added,
    modified or removed."""
    out = set()
    for key in ("added", "modified", "removed"):
        names = _get(commit, key, "%s.%s" % (where, key), (list,), required=False) or []
        for i, n in enumerate(names):
            n = _text(n, "%s.%s[%d]" % (where, key, i), limit=4096)
            if not n or "\x00" in n:
                raise Refused(400, "%s.%s[%d] is not a file name" % (where, key, i))
            out.add(n)
    return sorted(out)


def _author(person, where):
    """"Name <email>" of a forge's author object (either part may be missing)."""
    if person is None:
        return ""
    if not isinstance(person, dict):
        raise Refused(400, "%s is not an object" % where)
    name = _text(_get(person, "name", where + ".name", required=False) or "", where + ".name")
    email = _text(_get(person, "email", where + ".email", required=False) or "", where + ".email")
    if "<" in email or ">" in email:
        raise Refused(400, "%s.email holds '<' or '>'" % where)
    return ("%s <%s>" % (name, email)).strip() if email else name


def _forge_commit(c, where):
    """The fields of one commit of a GitHub, Gitea or GitLab push."""
    if not isinstance(c, dict):
        raise Refused(400, "%s is not an object" % where)
    return {"revision": revision(_get(c, "id", where + ".id"), where + ".id"),
            "author": _author(c.get("author"), where + ".author"),
            "message": _text(_get(c, "message", where + ".message", required=False) or "", where + ".message",
                             lines=True, limit=None),
            "files": _files(c, where),
            "when": _when(c["timestamp"], where + ".timestamp") if c.get("timestamp") is not None else None}


def _urls(obj, keys, where):
    out = []
    if obj is None:
        return out
    if not isinstance(obj, dict):
        raise Refused(400, "%s is not an object" % where)
    for k in keys:
        u = _get(obj, k, "%s.%s" % (where, k), required=False)
        if u:
            out.append(_text(u, "%s.%s" % (where, k), limit=4096))
    return out


def _parse_forge(body, repo_keys, project_keys=()):
    ref = _text(_get(body, "ref", "ref"), "ref", limit=4096)
    after = _get(body, "after", "after")
    commits = _get(body, "commits", "commits", (list,), required=False) or []
    urls = _urls(body.get("repository"), repo_keys, "repository")
    if project_keys:
        urls = _urls(body.get("project"), project_keys, "project") + urls
    if ZERO.fullmatch(after or ""):
        return Push(urls, ref, None, [])
    after = revision(after, "after")
    head = body.get("head_commit")
    return Push(urls, ref, after, [_forge_commit(c, "commits[%d]" % i) for i, c in enumerate(commits)],
                _forge_commit(head, "head_commit") if head is not None else None)


def parse_github(body):
    return _parse_forge(body, ("clone_url", "ssh_url", "git_url", "html_url", "url"))


def parse_gitea(body):
    return _parse_forge(body, ("clone_url", "ssh_url", "html_url"))


def parse_gitlab(body):
    return _parse_forge(body, ("git_http_url", "git_ssh_url", "url", "homepage"),
                        ("git_http_url", "git_ssh_url", "web_url"))


def parse_generic(body):
    repo = _text(_get(body, "repository", "repository"), "repository", limit=4096)
    branch = _get(body, "branch", "branch")
    commits = _get(body, "commits", "commits", (list,))
    if not commits:
        raise Refused(400, "commits is empty")
    out = []
    for i, c in enumerate(commits):
        where = "commits[%d]" % i
        if not isinstance(c, dict):
            raise Refused(400, "%s is not an object" % where)
        fields = {"revision": revision(_get(c, "revision", where + ".revision"), where + ".revision")}
        author = _get(c, "author", where + ".author", required=False)
        message = _get(c, "message", where + ".message", required=False)
        files = _get(c, "files", where + ".files", (list,), required=False)
        fields["author"] = None if author is None else _text(author, where + ".author")
        fields["message"] = None if message is None else _text(message, where + ".message", lines=True,
                                                                   limit=None)
        fields["files"] = None if files is None else sorted(set(
            _text(f, "%s.files[%d]" % (where, j), limit=4096) for j, f in enumerate(files)))
        if fields["files"] and "" in fields["files"]:
            raise Refused(400, "%s.files holds an empty name" % where)
        fields["when"] = None if c.get("when") is None else _when(c["when"], where + ".when")
        out.append(fields)
    ref = branch if branch.startswith("refs/") else "refs/heads/" + branch
    return Push([repo], _text(ref, "branch", limit=4096), out[-1]["revision"], out)


FORGES = {f.name: f for f in (
    Forge("github", "webhook-github", ("X-GitHub-Delivery",), ("X-GitHub-Event",), ("push",),
          _check_prefixed("X-Hub-Signature-256"), parse_github),
    Forge("gitea", "webhook-gitea", ("X-Gitea-Delivery", "X-Forgejo-Delivery"),
          ("X-Gitea-Event", "X-Forgejo-Event"), ("push",), _check_gitea, parse_gitea),
    Forge("gitlab", "webhook-gitlab", ("X-Gitlab-Event-UUID",), ("X-Gitlab-Event",), ("Push Hook",),
          _check_gitlab, parse_gitlab),
    Forge("generic", "webhook-generic", ("X-Buildunits-Delivery",), (), (), 
          _check_prefixed("X-Buildunits-Signature"), parse_generic),
)}
PATHS = {"/github": "github", "/gitea": "gitea", "/forgejo": "gitea", "/gitlab": "gitlab", "/generic": "generic"}


def read_secrets(directory):
    """{forge: secret bytes} of the forges whose credential is in
    DIRECTORY and not empty (one trailing newline dropped)."""
    out = {}
    for f in FORGES.values():
        if directory is None:
            continue
        path = os.path.join(directory, f.credential)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            value = fh.read(64 * 1024)
        value = value[:-2] if value.endswith(b"\r\n") else value[:-1] if value.endswith(b"\n") else value
        if value in (b"", NOT_ENABLED):
            continue
        if len(value) < MIN_SECRET_BYTES:
            log.warning("webhook: the secret %s is shorter than %d bytes, too easy to guess: the %s hook is not "
                        "enabled" % (path, MIN_SECRET_BYTES, f.name))
            continue
        out[f.name] = value
    return out


# --------------------------------------------------- which repository

_SCP = re.compile(r"\A(?:[^@/:]+@)?(?P<host>[^/:]+):(?!//)(?P<path>.+)\Z")


def repository_key(url):
    """The form repositories are matched in: HOST/PATH in lower case,
    without scheme, user, port, a trailing "/" or ".git"; None for a
    local path or what is no URL.

    >>> [repository_key(u) for u in ("https://GitHub.com/o/R.git", "git@github.com:o/r",
    ...                              "ssh://git@github.com:22/o/r/", "https://u:tok@github.com/o/r.git/")]
    ['github.com/o/r', 'github.com/o/r', 'github.com/o/r', 'github.com/o/r']
    >>> repository_key("/srv/git/r.git"), repository_key("not a url")
    (None, None)
    """
    if not isinstance(url, str) or url.startswith("/"):
        return None
    url = url.strip()
    if "://" in url:
        try:
            parts = urllib.parse.urlsplit(url)
            host, path = parts.hostname, parts.path
        except ValueError:
            return None
    else:
        m = _SCP.match(url)
        if not m:
            return None
        host, path = m.group("host"), m.group("path")
    if not host or any(c.isspace() for c in host + path):
        return None
    path = path.strip("/")
    if path.lower().endswith(".git"):
        path = path[:-4].rstrip("/")
    if not path:
        return None
    return "%s/%s" % (host.lower(), path.lower())


def repository_index(cfg):
    """{key: [normalized Repository=, ...]} of the configuration's
    polled repositories (Config.polled_repositories), by repository_key,
    and each local one by its own path."""
    out = {}
    for repo in cfg.polled_repositories():
        out.setdefault(repository_key(repo) or repo, []).append(repo)
    return out


def repositories_for(index, urls, local=False):
    """The configured repositories (normalized) that one of URLS names;
    a local path only if LOCAL (the generic form: a forge's URLs are the
    forge's, never a path of this machine)."""
    found = []
    for u in urls:
        key = repository_key(u)
        if key is None and local and u.startswith(("/", "file://")):
            key = config.normalize_repository(u)
        for repo in index.get(key, []):
            if repo not in found:
                found.append(repo)
    return found


# ------------------------------------------------ the deliveries taken

class Deliveries:
    """The delivery ids taken, newest last: STATE/webhook/deliveries.jsonl
    (format "deliveries"), a header line then {"id": ID, "at": TIME} per
    line, appended and fsync'd; the module's CRASH SAFETY says why that
    is enough.  One receiver writes it at a time (main() holds its lock
    file), so it is read once, at load()."""

    def __init__(self, state, keep=KEEP_DELIVERIES):
        self.state, self.path, self.keep = state, state.deliveries_path(), keep
        self.ids, self.order, self.fd = set(), [], None

    def _open(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "%s is not a regular file" % self.path)
        return fd

    def load(self):
        """Read the record: a torn last line (a crash in an append) is
        dropped and the record rewritten; a file that is not a deliveries
        record is quarantined (State.quarantine) and a new one begun."""
        fsutil.makedirs(os.path.dirname(self.path))
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            data = b""
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            self.state.quarantine(self.path, "a symbolic link, not a record")
            data = b""
        else:
            with os.fdopen(fd, "rb") as f:
                data = f.read() if stat.S_ISREG(os.fstat(fd).st_mode) else None
        if data is None:
            self.state.quarantine(self.path, "not a regular file")
            data = b""
        lines = data.split(b"\n")
        torn = bool(lines[-1])
        order, bad = [], None
        if data:
            try:
                head = json.loads(lines[0])
            except ValueError:
                head = None
            if not isinstance(head, dict) or head.get("format") != "deliveries":
                bad = "not a deliveries record (its first line is not the header)"
            for raw in lines[1:-1]:
                try:
                    ev = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(ev, dict) and isinstance(ev.get("id"), str):
                    at = ev.get("at")
                    order.append((ev["id"], at if isinstance(at, (int, float)) and not isinstance(at, bool) else 0))
        if bad:
            self.state.quarantine(self.path, bad)
            order, torn = [], False
        self.order = order
        self.ids = {i for i, _at in order}
        if torn or len(order) > 2 * self.keep:
            self._rewrite()
        else:
            self.fd = self._open()
            if os.fstat(self.fd).st_size == 0:
                os.write(self.fd, _head())
                os.fsync(self.fd)
                fsutil.fsync_dir_after_commit(os.path.dirname(self.path))
        return self

    def _rewrite(self):
        """Replace the record with its newest KEEP ids (the rename is the
        commit point: the old or the new file is whole)."""
        del self.order[:-self.keep]
        self.ids = {i for i, _at in self.order}
        fsutil.write_atomic(self.path, _head() + b"".join(_line({"id": i, "at": at}) for i, at in self.order))
        if self.fd is not None:
            os.close(self.fd)
        self.fd = self._open()

    def __contains__(self, delivery):
        return delivery in self.ids

    def add(self, delivery):
        """Record DELIVERY as taken: one line appended in one write(2) and
        fsync'd (its commit point)."""
        now = time.time()
        os.write(self.fd, _line({"id": delivery, "at": now}))
        os.fsync(self.fd)
        self.ids.add(delivery)
        self.order.append((delivery, now))
        if len(self.order) > 2 * self.keep:
            self._rewrite()


def _head():
    return _line({"format": "deliveries", "version": records.FORMATS["deliveries"]})


def _line(obj):
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


# --------------------------------------------------------- the receiver

class Receiver:
    """What a request does, apart from HTTP: take(forge, headers, body)
    returns (status, text) or raises Refused; nothing is queued unless
    it returns 202."""

    def __init__(self, dirs, cfg, secrets, deliveries):
        self.dirs, self.secrets, self.deliveries = dirs, secrets, deliveries
        self.spool = Spool(dirs.spool)
        self.configure(cfg)

    def configure(self, cfg):
        self.cfg = cfg
        self.index = repository_index(cfg)

    def forge(self, path):
        """The Forge of the request path PATH, or Refused(404)."""
        name = PATHS.get(urllib.parse.urlsplit(path).path.rstrip("/") or "/")
        if name is None:
            raise Refused(404, "no hook at %s (the hooks: %s)" % (path[:100], " ".join(sorted(PATHS))))
        if name not in self.secrets:
            raise Refused(404, "the %s hook is not enabled: no credential %s" % (name, FORGES[name].credential))
        return FORGES[name]

    def take(self, forge, headers, body):
        """(status, text, delivery id, [change ids]) of a request with
        HEADERS and BODY for FORGE, or a Refused; the changes are queued
        only when the status is 202."""
        forge.check(self.secrets[forge.name], headers, body)
        delivery = next((headers.get(h) for h in forge.delivery if headers.get(h)), None)
        if delivery is None:
            raise Refused(400, "no delivery id (%s)" % forge.delivery[0])
        if not DELIVERY_RE.fullmatch(delivery.strip()):
            raise Refused(400, "%s is not a delivery id: %r" % (forge.delivery[0], delivery[:MAX_DELIVERY_CHARS]))
        delivery = "%s:%s" % (forge.name, delivery.strip())
        event = next((headers.get(h) for h in forge.event if headers.get(h)), None)
        if forge.event and event is None:
            raise Refused(400, "no event (%s)" % forge.event[0])
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise Refused(415, "Content-Type is %r, not application/json: set the hook's content type to "
                               "application/json" % ctype[:100])
        if delivery in self.deliveries:
            raise Refused(409, "delivery %s was taken already: a replay, nothing queued" % delivery)
        if forge.event and event not in forge.push_events:
            return 200, "event %r: nothing to queue" % event[:100], delivery, []
        try:
            payload = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise Refused(400, "the body is not JSON: %s" % str(e)[:200]) from None
        if not isinstance(payload, dict):
            raise Refused(400, "the body is not a JSON object")
        changes, why = self.changes(forge, forge.parse(payload), delivery)
        if not changes:
            return 200, why, delivery, []
        ids = self.spool.deliver_many("changes", "change", changes)       # each change's commit point
        self.deliveries.add(delivery)                                     # then the delivery's
        return 202, "\n".join(ids), delivery, ids

    def changes(self, forge, push, delivery):
        """([change fields], "") of PUSH, or ([], why there are none)."""
        if not push.ref.startswith("refs/heads/"):
            if push.ref.startswith("refs/tags/"):
                return [], "%s is a tag: nothing to queue" % push.ref[:300]
            raise Refused(400, "ref %r is not a branch (refs/heads/NAME)" % push.ref[:300])
        branch = push.ref[len("refs/heads/"):]
        if not git.valid_branch(branch):
            raise Refused(400, "ref: %r is not %s" % (branch[:300], git.BRANCH_RULE))
        if push.after is None:
            return [], "branch %s deleted: nothing to queue" % branch
        repos = repositories_for(self.index, push.urls, local=forge.name == "generic")
        if not repos:
            raise Refused(404, "no builder's Repository= is %s" % (" or ".join(repr(u[:300]) for u in push.urls)
                                                                  or "named by the push"))
        commits = list(push.commits)
        if not commits:
            commits = [push.head or {"revision": push.after}]
        # The head last, wherever the payload had it: the newest revision
        # is the one a tree-stable window builds.
        commits.sort(key=lambda c: c["revision"] == push.after)
        out = []
        for repo in repos:
            for c in commits:
                try:
                    fields = control.change("webhook", repo, branch, c["revision"], c.get("author"),
                                            c.get("message"), c.get("files"), c.get("when"))
                except git.GitError as e:
                    raise Refused(400, "commit %s is not in %s: %s" % (c["revision"], repo, e)) from None
                fields["delivery"] = delivery
                out.append(fields)
        return out, ""


def _no_constant(name):
    raise ValueError("%s is not a JSON number" % name)


# --------------------------------------------------------------- HTTP

class Handler(http.server.BaseHTTPRequestHandler):
    timeout = READ_TIMEOUT_SEC

    def version_string(self):
        return "buildunits-webhook"

    def _answer(self, status, text):
        data = (text + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(data)
        except OSError:
            pass

    def _refuse(self, forge, e, delivery=None):
        (log.error if e.status >= 500 else log.warning)(
            "webhook: %s %s from %s: %d %s" % (forge or "-", _shown(delivery or self._delivery(forge)),
                                               self.client_address[0] if self.client_address else "?",
                                               e.status, _shown(str(e), 300)))
        self._answer(e.status, str(e))

    def _delivery(self, forge):
        f = FORGES.get(forge)
        return next((self.headers.get(h) for h in (f.delivery if f else ()) if self.headers.get(h)), "-")

    def _length(self):
        text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise Refused(411, "Transfer-Encoding is not supported: send a Content-Length")
        if text is None:
            raise Refused(411, "no Content-Length")
        if not re.fullmatch(r"[0-9]{1,12}", text.strip()):
            raise Refused(400, "Content-Length %r is not a number" % text[:20])
        n = int(text)
        if n > MAX_BODY_BYTES:
            raise Refused(413, "the body is %d bytes, more than %d" % (n, MAX_BODY_BYTES))
        return n

    def handle_expect_100(self):
        # The size is known before the body is sent: refuse it then.
        try:
            self._length()
        except Refused as e:
            self._refuse(PATHS.get(self.path), e)
            return False
        return super().handle_expect_100()

    def do_POST(self):
        receiver = self.server.receiver
        name = PATHS.get(urllib.parse.urlsplit(self.path).path.rstrip("/"))
        try:
            self.server.before_request()
            forge = receiver.forge(self.path)
            n = self._length()
            body = self.rfile.read(n)
            if len(body) != n:
                raise Refused(400, "the body ended after %d of its %d bytes" % (len(body), n))
            status, text, delivery, ids = receiver.take(forge, self.headers, body)
        except Refused as e:
            return self._refuse(name, e)
        except socket.timeout:
            return self._refuse(name, Refused(408, "nothing more of the body came for %gs" % self.timeout))
        except (OSError, Undelivered) as e:
            # Undelivered: some of the changes are queued, the delivery is
            # not taken; the push delivered again queues them again, and
            # the scheduler drops what it has (CRASH SAFETY).
            return self._refuse(name, Refused(500, "cannot queue: %s" % e))
        except Exception as e:     # a bug: said, and the next request is answered
            return self._refuse(name, Refused(500, "internal error: %s: %s" % (type(e).__name__, e)))
        log.info("webhook: %s %s from %s: %d %s" % (name, _shown(delivery.partition(":")[2]), self.client_address[0],
                                                   status,
                                                   ("queued %d change%s" % (len(ids), "" if len(ids) == 1 else "s"))
                                                   if status == 202 else _shown(text, 300)))
        self._answer(status, text)

    def _not_post(self):
        self._refuse(PATHS.get(self.path), Refused(405, "%s: only POST" % self.command))

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = _not_post

    def log_message(self, fmt, *args):
        pass     # every answer has its own journal line

    def log_error(self, fmt, *args):
        log.warning("webhook: from %s: %s" % (self.client_address[0] if self.client_address else "?",
                                              _shown(fmt % args, 300)))


def _shown(text, limit=MAX_DELIVERY_CHARS):
    """Hostile TEXT on one journal line: control characters escaped, cut."""
    text = str(text)
    text = text if len(text) <= limit else text[:limit] + "..."
    return text.encode("unicode_escape").decode("ascii") if _CONTROL.search(text) else text


class Server(http.server.HTTPServer):
    """An HTTPServer on a socket already listening (systemd's, or ours)."""

    def __init__(self, listener, receiver, reload_config):
        super().__init__(listener.getsockname()[:2] if listener.family != socket.AF_UNIX else "", Handler,
                         bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.receiver = receiver
        self.reload_config = reload_config
        self.idle = False
        self.hup = False

    def before_request(self):
        if self.hup:
            self.hup = False
            self.reload_config()

    def handle_timeout(self):
        self.idle = True

    def serve(self, idle):
        """Answer requests until IDLE seconds pass without one (never, if None)."""
        self.timeout = idle
        while not self.idle:
            self.handle_request()
        return 0


def listening_socket(listen):
    """The socket systemd passed (LISTEN_FDS, fd 3), else a new one
    listening on LISTEN ("ADDRESS:PORT", "[V6]:PORT")."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS") == "1":
        for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(var, None)
        return socket.socket(fileno=3), True
    host, _colon, port = listen.rpartition(":")
    host = host.strip("[]")
    if not re.fullmatch(r"[0-9]{1,5}", port):
        raise ValueError("--listen %r is not ADDRESS:PORT" % listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(64)
    return s, False


_held = []


def _lock(state):
    """Take the receiver's lock (STATE/locks/buildunits-webhook.lock) for
    as long as it runs: one receiver writes the deliveries record."""
    path = state.lock_path("buildunits-webhook")
    fsutil.makedirs(os.path.dirname(path))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _held.append(fd)
    return True


def _load_config(directory):
    try:
        return config.load(directory)
    except config.ConfigError as e:
        log.warning("webhook: the configuration in %s has %d problem%s (run `buildunits checkconfig`); the "
                    "builders without problems are used" % (directory, len(e.problems),
                                                             "" if len(e.problems) == 1 else "s"))
        return e.partial


def main(argv=None):
    ap = argparse.ArgumentParser(prog="buildunits-webhook",
                                 description="take the forges' push events and queue their commits as changes")
    ap.add_argument("--listen", default=DEFAULT_LISTEN,
                    help="ADDRESS:PORT to listen on without socket activation (%(default)s)")
    ap.add_argument("--idle-sec", type=float, default=None,
                    help="exit after this long without a request (socket-activated: %d)" % IDLE_SEC)
    paths.add_arguments(ap)
    args = ap.parse_args(argv)
    log.setup("buildunits-webhook")
    dirs = paths.from_args(args)
    try:
        listener, activated = listening_socket(args.listen)
    except (OSError, ValueError) as e:
        where = "the socket passed as fd 3" if os.environ.get("LISTEN_FDS") else args.listen
        print("buildunits-webhook: cannot listen on %s: %s" % (where, e), file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    cfg = _load_config(dirs.config)
    directory = os.environ.get(credentials.VARIABLE) or cfg.credentials_directory
    secrets = read_secrets(directory)
    if not secrets:
        log.warning("webhook: no credential webhook-github, -gitea, -gitlab or -generic in %s: every hook is "
                    "refused" % directory)
    state = State(dirs.state)
    try:
        Spool(dirs.spool).ensure()
        if not _lock(state):
            log.error("webhook: another buildunits-webhook holds %s" % state.lock_path("buildunits-webhook"))
            return 3
        deliveries = Deliveries(state).load()
    except OSError as e:
        log.error("webhook: cannot use %s or %s: %s" % (dirs.spool, dirs.state, e))
        return 1
    state.on_corrupt = lambda path, dest, reason: log.warning("webhook: %s moved to %s: %s" % (path, dest, reason))
    receiver = Receiver(dirs, cfg, secrets, deliveries)
    server = Server(listener, receiver, lambda: receiver.configure(_load_config(dirs.config)))

    def on_hup(*_):
        server.hup = True
    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    idle = args.idle_sec if args.idle_sec is not None else (IDLE_SEC if activated else None)
    log.info("webhook: listening on %s%s, hooks %s" % (
        _address(listener), " (socket-activated)" if activated else "",
        " ".join("/" + n for n in sorted(secrets)) or "none"))
    server.serve(idle or None)
    log.info("webhook: idle for %ds, exiting" % idle)
    return 0


def _address(s):
    try:
        a = s.getsockname()
        return "%s:%s" % (a[0], a[1]) if isinstance(a, tuple) else str(a)
    except OSError:
        return "?"
