"""buildunits-webhook: the forges' push events become changes in the spool.

The payloads in tests/data/webhook/ are shaped as GitHub's, Gitea's and
GitLab's documentation shows their push events (the same keys, ids and
nesting; the GitLab and Gitea ones are their documented examples).  Each
request is signed here as the forge signs it (HMAC-SHA256 with the
secret, or GitLab's token), sent with http.client to the receiver
listening on a real socket (in a thread of the test, or as the program
itself, handed its socket as systemd hands it), and what a user checks
is asserted: the HTTP status, the change records committed in the spool,
and the journal line of every refusal; a refused request queues nothing.
"""

import hashlib
import hmac
import http.client
import json
import os
import pathlib
import socket
import subprocess
import threading
import time

import pytest

import harness
from buildunits import changes as changesmod, paths, records, webhook
from buildunits.spool import Spool
from buildunits.state import State
from support.inprocess import capture_log, write_builders
from support.wait import wait_for

DATA = pathlib.Path(__file__).parent / "data" / "webhook"
SECRETS = {"webhook-github": b"It's a Secret to Everybody\n", "webhook-gitea": b"gitea-secret-0123456789",
           "webhook-gitlab": b"gitlab-token-0123456789", "webhook-generic": b"generic-secret-0123456789"}
BUILDERS = {
    # Another form of the URL the GitHub payload names: matched by host and path.
    "hello": "[Builder]\nRepository=git@github.com:codertocat/hello-world\n\n[Step s]\nCommand=true\n",
    "hooks": "[Builder]\nRepository=http://localhost:3000/gitea/webhooks.git\n\n[Step s]\nCommand=true\n",
    "diaspora": "[Builder]\nRepository=https://example.com/mike/diaspora.git\n\n[Step s]\nCommand=true\n",
    "generic": "[Builder]\nRepository=https://git.example.org/hello.git\n\n[Step s]\nCommand=true\n",
}


def payload(name):
    return (DATA / name).read_bytes()


def sign(secret, body):
    return hmac.new(secret.rstrip(b"\n"), body, hashlib.sha256).hexdigest()


def github_headers(body, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958", event="push"):
    return {"Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": "sha256=" + sign(SECRETS["webhook-github"], body)}


def post(port, path, body, headers, method="POST"):
    """(status, text) of a request sent with http.client."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8").rstrip("\n")
    finally:
        conn.close()


def queued(d):
    """The change records in the spool, oldest first."""
    sp = Spool(d.spool)
    return [sp.read("changes", i) for i in sp.pending("changes")]


@pytest.fixture
def dirs(tmp_path):
    d = paths.Dirs(config=str(tmp_path / "config"), spool=str(tmp_path / "spool"), state=str(tmp_path / "state"),
                   site=str(tmp_path / "site"))
    write_builders(d, BUILDERS)
    Spool(d.spool).ensure()
    return d


@pytest.fixture
def creds(tmp_path):
    c = tmp_path / "credentials"
    c.mkdir()
    for name, value in SECRETS.items():
        (c / name).write_bytes(value)
    return c


class Running:
    """A Receiver and Server of webhook.py on 127.0.0.1:PORT, in a thread."""

    def __init__(self, d, creds):
        from buildunits import config
        self.dirs = d
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.deliveries = webhook.Deliveries(State(d.state)).load()
        self.receiver = webhook.Receiver(d, config.load(d.config), webhook.read_secrets(str(creds)), self.deliveries)
        self.server = webhook.Server(self.listener, self.receiver, lambda: None)
        self.server.timeout = 0.05
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stop.is_set():
            self.server.idle = False
            self.server.handle_request()

    def close(self):
        self.stop.set()
        self.thread.join(10)
        self.listener.close()
        if self.deliveries.fd is not None:
            os.close(self.deliveries.fd)


@pytest.fixture
def hook(dirs, creds, monkeypatch):
    lines = capture_log(monkeypatch)
    r = Running(dirs, creds)
    r.lines = lines
    yield r
    r.close()


# ------------------------------------------------------------- pushes

def when(text):
    return webhook._when(text, "x")


def test_a_github_push_queues_every_commit_as_sendchange_does(hook):
    body = payload("github-push.json")
    status, text = post(hook.port, "/github", body, github_headers(body))
    assert status == 202, text
    got = queued(hook.dirs)
    assert text.split("\n") == [c["id"] for c in got]
    assert [(c["source"], c["repository"], c["branch"], c["revision"]) for c in got] == [
        ("webhook", "git@github.com:codertocat/hello-world", "main", "a10867b14bb761a232cd80139fbd4c0d33264240"),
        ("webhook", "git@github.com:codertocat/hello-world", "main", "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c")]
    first, head = got
    assert first["author"] == "Codertocat <21031067+Codertocat@users.noreply.github.com>"
    assert first["message"] == "Add the greeting" and first["files"] == ["README.md", "greeting.txt"]
    assert head["message"] == "Update README.md\n\nSay hello to the world."
    assert head["files"] == ["README.md", "old.txt"]
    assert first["when"] == when("2019-05-15T19:20:30+00:00")
    assert first["delivery"] == "github:72d3162e-cc78-11e3-81ab-4c9367dc0958"
    # The same record a `buildunits sendchange` of that commit would have made.
    from buildunits import control
    same = control.change("sendchange", "git@github.com:codertocat/hello-world", "refs/heads/main",
                          first["revision"], first["author"], first["message"], first["files"], first["when"])
    assert {k: v for k, v in first.items() if k not in ("id", "queued", "format", "version", "delivery")} \
        == dict(same, source="webhook")
    assert any("webhook: github 72d3162e-cc78-11e3-81ab-4c9367dc0958 from 127.0.0.1: 202 queued 2 changes" in line
               for line in hook.lines())


def test_a_gitea_push_and_a_forgejo_one(hook):
    body = payload("gitea-push.json")
    headers = {"Content-Type": "application/json", "X-Gitea-Event": "push",
               "X-Gitea-Delivery": "f6266f16-1bf3-46a5-9ea4-602e06ead473",
               # Gitea sends GitHub's headers too; the path says which forge it is.
               "X-GitHub-Event": "push", "X-GitHub-Delivery": "f6266f16-1bf3-46a5-9ea4-602e06ead473",
               "X-Gitea-Signature": sign(SECRETS["webhook-gitea"], body)}
    assert post(hook.port, "/gitea", body, headers)[0] == 202
    forgejo = {"Content-Type": "application/json", "X-Forgejo-Event": "push",
               "X-Forgejo-Delivery": "0e9d5a10-2f1b-4a0c-9d5e-0c1c2d3e4f50",
               "X-Forgejo-Signature": sign(SECRETS["webhook-gitea"], body)}
    assert post(hook.port, "/forgejo", body, forgejo)[0] == 202
    got = queued(hook.dirs)
    assert [(c["repository"], c["branch"], c["revision"], c["author"], c["message"], c["files"]) for c in got] == [
        ("http://localhost:3000/gitea/webhooks.git", "develop", "bffeb74224043ba2feb48d137756c8a9331c449a",
         "Gitea <someone@gitea.io>", "Webhooks Yay!", ["README.md"])] * 2
    assert got[0]["when"] == when("2017-03-13T17:52:11+00:00")


def test_a_gitlab_push(hook):
    body = payload("gitlab-push.json")
    headers = {"Content-Type": "application/json", "X-Gitlab-Event": "Push Hook",
               "X-Gitlab-Event-UUID": "13792a34-cac6-4fda-95a8-c58e00a3954e",
               "X-Gitlab-Token": SECRETS["webhook-gitlab"].decode()}
    status, text = post(hook.port, "/gitlab", body, headers)
    assert status == 202, text
    got = queued(hook.dirs)
    assert [(c["repository"], c["branch"], c["revision"], c["author"]) for c in got] == [
        ("https://example.com/mike/diaspora.git", "master", "b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327",
         "Jordi Mallach <jordi@softcatala.org>"),
        ("https://example.com/mike/diaspora.git", "master", "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
         "GitLab dev user <gitlabdev@dv6700.(none)>")]
    assert got[0]["files"] == ["CHANGELOG", "app/controller/application.rb"]


def _generic(hook, body, delivery="generic-1"):
    headers = {"Content-Type": "application/json", "X-Buildunits-Delivery": delivery,
               "X-Buildunits-Signature": "sha256=" + sign(SECRETS["webhook-generic"], body)}
    return post(hook.port, "/generic", body, headers)


def test_the_generic_form(hook):
    status, text = _generic(hook, payload("generic-push.json"))
    assert status == 202, text
    (c,) = queued(hook.dirs)
    assert (c["repository"], c["branch"], c["revision"], c["author"], c["message"], c["files"], c["when"]) == (
        "https://git.example.org/hello.git", "main", "3f786850e387550fdab836ed7e6dc881de23001b",
        "A U Thor <author@example.org>", "Fix the build", ["Makefile", "src/hello.c"], 1700000000)


def test_the_generic_form_with_a_local_repository_reads_the_commit_from_git(tmp_path, dirs, creds, monkeypatch):
    repo = harness.make_repo(tmp_path / "repos" / "local.git")
    rev = repo.commit({"a.txt": "one\n"}, message="Local change\n\nwith a body", author="Lo Cal <lo@example.org>")
    write_builders(dirs, {"local": "[Builder]\nRepository=%s\n\n[Step s]\nCommand=true\n" % repo.bare})
    capture_log(monkeypatch)
    r = Running(dirs, creds)
    try:
        body = json.dumps({"repository": "file://%s/" % repo.bare, "branch": "main",
                           "commits": [{"revision": rev}]}).encode()
        status, text = _generic(r, body)
        assert status == 202, text
    finally:
        r.close()
    (c,) = queued(dirs)
    assert (c["repository"], c["revision"], c["author"], c["message"], c["files"]) == (
        os.path.realpath(repo.bare), rev, "Lo Cal <lo@example.org>", "Local change\n\nwith a body", ["a.txt"])


def test_a_forge_cannot_name_a_local_path(hook, tmp_path):
    write_builders(hook.dirs, {"local": "[Builder]\nRepository=/srv/git/local.git\n\n[Step s]\nCommand=true\n"})
    from buildunits import config
    hook.receiver.configure(config.load(hook.dirs.config))
    push = json.loads(payload("github-push.json"))
    push["repository"] = {"clone_url": "/srv/git/local.git"}
    body = json.dumps(push).encode()
    status, text = post(hook.port, "/github", body, github_headers(body))
    assert status == 404 and "no builder's Repository=" in text
    assert queued(hook.dirs) == []


def test_nothing_to_queue_is_answered_200(hook):
    ping = payload("github-ping.json")
    assert post(hook.port, "/github", ping, github_headers(ping, "d1", event="ping")) == (
        200, "event 'ping': nothing to queue")
    push = json.loads(payload("github-push.json"))
    tag = json.dumps(dict(push, ref="refs/tags/v1.0")).encode()
    assert post(hook.port, "/github", tag, github_headers(tag, "d2"))[0] == 200
    gone = json.dumps(dict(push, after="0" * 40, deleted=True, commits=[], head_commit=None)).encode()
    assert post(hook.port, "/github", gone, github_headers(gone, "d3")) == (200, "branch main deleted: nothing to queue")
    assert queued(hook.dirs) == []


def test_a_new_branch_at_a_pushed_commit_queues_its_head(hook):
    push = json.loads(payload("github-push.json"))
    body = json.dumps(dict(push, ref="refs/heads/topic", commits=[], created=True)).encode()
    assert post(hook.port, "/github", body, github_headers(body))[0] == 202
    (c,) = queued(hook.dirs)
    assert (c["branch"], c["revision"], c["message"]) == ("topic", push["after"], push["head_commit"]["message"])


# ---------------------------------------------------- refused requests

def _mutated(**changes):
    push = json.loads(payload("github-push.json"))
    for path, value in changes.items():
        obj = push
        keys = path.split("__")
        for k in keys[:-1]:
            obj = obj[int(k)] if isinstance(obj, list) else obj[k]
        obj[int(keys[-1]) if isinstance(obj, list) else keys[-1]] = value
    return json.dumps(push).encode()


GOOD = payload("github-push.json")

# (id, path, body, headers, status, the reason's words)
REFUSED = [
    ("unsigned", "/github", GOOD, {"Content-Type": "application/json", "X-GitHub-Event": "push",
                                   "X-GitHub-Delivery": "u1"}, 401, "no X-Hub-Signature-256"),
    ("wrong secret", "/github", GOOD, dict(github_headers(GOOD), **{
        "X-Hub-Signature-256": "sha256=" + hmac.new(b"guessed", GOOD, hashlib.sha256).hexdigest()}), 403,
     "does not match"),
    ("tampered body", "/github", GOOD.replace(b"Add the greeting", b"Add the backdoor"), github_headers(GOOD), 403,
     "does not match"),
    ("sha1 signature", "/github", GOOD, dict(github_headers(GOOD), **{"X-Hub-Signature-256": "sha1=00"}), 403,
     "not sha256=HEX"),
    ("gitlab wrong token", "/gitlab", payload("gitlab-push.json"), {
        "Content-Type": "application/json", "X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": "g1",
        "X-Gitlab-Token": "gitlab-token-0123456788"}, 403, "not the secret token"),
    ("gitea unsigned", "/gitea", payload("gitea-push.json"), {
        "Content-Type": "application/json", "X-Gitea-Event": "push", "X-Gitea-Delivery": "t1"}, 401,
     "no X-Gitea-Signature"),
    ("not json", "/github", b"{\"ref\": ", github_headers(b"{\"ref\": "), 400, "not JSON"),
    ("not an object", "/github", b"[1, 2]", github_headers(b"[1, 2]"), 400, "not a JSON object"),
    ("NaN", "/github", b"{\"ref\": NaN}", github_headers(b"{\"ref\": NaN}"), 400, "not JSON"),
    ("short revision", "/github", _mutated(commits__0__id="a10867b"), github_headers(_mutated(commits__0__id="a10867b")),
     400, "commits[0].id is not a full commit id"),
    ("revision not hex", "/github", _mutated(after="z" * 40), github_headers(_mutated(after="z" * 40)), 400,
     "after is not a full commit id"),
    ("option as revision", "/github", _mutated(commits__1__id="--upload-pack=x"),
     github_headers(_mutated(commits__1__id="--upload-pack=x")), 400, "commits[1].id"),
    ("bad branch", "/github", _mutated(ref="refs/heads/a..b"), github_headers(_mutated(ref="refs/heads/a..b")), 400,
     "is not a branch name git accepts"),
    ("branch with newline", "/github", _mutated(ref="refs/heads/main\nx"),
     github_headers(_mutated(ref="refs/heads/main\nx")), 400, "control character"),
    ("not a branch", "/github", _mutated(ref="refs/pull/1/head"), github_headers(_mutated(ref="refs/pull/1/head")),
     400, "not a branch"),
    ("author with control", "/github", _mutated(commits__0__author__name="evil\x1b[2J"),
     github_headers(_mutated(commits__0__author__name="evil\x1b[2J")), 400, "commits[0].author.name"),
    ("author not a string", "/github", _mutated(commits__0__author__email=["x"]),
     github_headers(_mutated(commits__0__author__email=["x"])), 400, "commits[0].author.email is not a string"),
    ("message with NUL", "/github", _mutated(commits__1__message="a\x00b"),
     github_headers(_mutated(commits__1__message="a\x00b")), 400, "commits[1].message"),
    ("file not a string", "/github", _mutated(commits__0__added=[1]), github_headers(_mutated(commits__0__added=[1])),
     400, "commits[0].added[0] is not a string"),
    ("bad time", "/github", _mutated(commits__0__timestamp="yesterday"),
     github_headers(_mutated(commits__0__timestamp="yesterday")), 400, "commits[0].timestamp"),
    ("commits not a list", "/github", _mutated(commits={"id": 1}), github_headers(_mutated(commits={"id": 1})), 400,
     "commits is not a list"),
    ("unknown repository", "/github", _mutated(repository={"clone_url": "https://github.com/other/repo.git"}),
     github_headers(_mutated(repository={"clone_url": "https://github.com/other/repo.git"})), 404,
     "no builder's Repository="),
    ("no delivery id", "/github", GOOD, {k: v for k, v in github_headers(GOOD).items() if k != "X-GitHub-Delivery"},
     400, "no delivery id"),
    ("bad delivery id", "/github", GOOD, dict(github_headers(GOOD), **{"X-GitHub-Delivery": "../../x"}), 400,
     "not a delivery id"),
    ("form encoded", "/github", GOOD, dict(github_headers(GOOD), **{"Content-Type": "application/x-www-form-urlencoded"}),
     415, "application/json"),
    ("no such hook", "/jenkins", GOOD, github_headers(GOOD), 404, "no hook at /jenkins"),
]


@pytest.mark.parametrize("path,body,headers,status,words", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_a_bad_request_is_refused_with_a_status_and_a_journal_line_and_queues_nothing(hook, path, body, headers,
                                                                                      status, words):
    got, text = post(hook.port, path, body, headers)
    assert got == status and words in text, (got, text)
    assert queued(hook.dirs) == []
    refusals = [line for line in hook.lines() if ": %d " % status in line]
    assert len(refusals) == 1 and words in refusals[0], hook.lines()
    assert "\x1b" not in refusals[0] and "\n" not in refusals[0]


def test_a_hook_without_its_credential_is_not_enabled(dirs, creds, monkeypatch):
    (creds / "webhook-gitea").unlink()
    (creds / "webhook-gitlab").write_bytes(b"none\n")            # the unit's fallback
    (creds / "webhook-generic").write_bytes(b"short\n")
    lines = capture_log(monkeypatch)
    r = Running(dirs, creds)
    try:
        body = payload("gitea-push.json")
        for path in ("/gitea", "/gitlab", "/generic"):
            status, text = post(r.port, path, body, {"Content-Type": "application/json"})
            assert status == 404 and "hook is not enabled" in text
        assert post(r.port, "/github", GOOD, github_headers(GOOD))[0] == 202
    finally:
        r.close()
    assert [line for line in lines() if "shorter than 16 bytes" in line and "webhook-generic" in line]


def test_only_post(hook):
    assert post(hook.port, "/github", None, {}, method="GET")[0] == 405
    assert queued(hook.dirs) == []


def test_an_oversized_body_is_refused_before_it_is_sent(hook):
    """The headers alone: the receiver answers 413 without waiting for the body."""
    conn = http.client.HTTPConnection("127.0.0.1", hook.port, timeout=10)
    try:
        conn.putrequest("POST", "/github")
        for k, v in github_headers(GOOD).items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(webhook.MAX_BODY_BYTES + 1))
        conn.endheaders()
        r = conn.getresponse()
        assert r.status == 413 and "more than 1048576" in r.read().decode()
    finally:
        conn.close()
    assert queued(hook.dirs) == []


def test_a_body_that_never_ends_is_cut_off(hook, monkeypatch):
    monkeypatch.setattr(webhook.Handler, "timeout", 0.5)
    with socket.create_connection(("127.0.0.1", hook.port), timeout=10) as s:
        s.sendall(b"POST /github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        answer = s.recv(4096).decode()
    assert answer.startswith("HTTP/1.0 408 ")
    assert queued(hook.dirs) == []


def test_no_content_length(hook):
    with socket.create_connection(("127.0.0.1", hook.port), timeout=10) as s:
        s.sendall(b"POST /github HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert s.recv(4096).decode().startswith("HTTP/1.0 411 ")


# ------------------------------------------------------------ replays

def test_a_replayed_delivery_is_refused_even_after_a_restart(dirs, creds, monkeypatch):
    lines = capture_log(monkeypatch)
    r = Running(dirs, creds)
    try:
        assert post(r.port, "/github", GOOD, github_headers(GOOD, "once"))[0] == 202
        assert post(r.port, "/github", GOOD, github_headers(GOOD, "once")) == (
            409, "delivery github:once was taken already: a replay, nothing queued")
    finally:
        r.close()
    r = Running(dirs, creds)                   # a new activation reads the record
    try:
        assert post(r.port, "/github", GOOD, github_headers(GOOD, "once"))[0] == 409
        assert post(r.port, "/github", GOOD, github_headers(GOOD, "twice"))[0] == 202
    finally:
        r.close()
    assert len(queued(dirs)) == 4
    assert len([line for line in lines() if ": 409 " in line]) == 2


def test_the_deliveries_record_is_bounded_and_survives_a_torn_line(dirs):
    st = State(dirs.state)
    d = webhook.Deliveries(st, keep=3).load()
    for i in range(7):
        d.add("github:%d" % i)
    os.close(d.fd)
    path = st.deliveries_path()
    lines = pathlib.Path(path).read_bytes().split(b"\n")
    assert json.loads(lines[0]) == {"format": "deliveries", "version": records.FORMATS["deliveries"]}
    assert len(lines) - 2 <= 2 * 3
    with open(path, "ab") as f:
        f.write(b'{"id": "github:torn')                # a crash in the middle of an append
    d = webhook.Deliveries(st, keep=3).load()
    assert "github:6" in d and "github:5" in d and "github:0" not in d and "github:torn" not in d
    assert pathlib.Path(path).read_bytes().endswith(b"\n")
    d.add("github:7")
    os.close(d.fd)
    assert "github:7" in webhook.Deliveries(st, keep=3).load()


def test_a_deliveries_record_that_is_not_one_is_quarantined(dirs):
    st = State(dirs.state)
    os.makedirs(os.path.dirname(st.deliveries_path()))
    pathlib.Path(st.deliveries_path()).write_text("garbage\n")
    d = webhook.Deliveries(st).load()
    os.close(d.fd)
    assert [reason for _name, reason in st.quarantined()] == [
        "not a deliveries record (its first line is not the header)"]
    assert pathlib.Path(st.deliveries_path()).read_bytes().startswith(b'{"format":"deliveries"')


# ----------------------------------------------------------- the rules

def test_github_s_documented_signature():
    """docs.github.com's example: secret "It's a Secret to Everybody", body
    "Hello, World!", X-Hub-Signature-256: sha256=757107ea...3e17."""
    check = webhook.FORGES["github"].check
    good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    check(b"It's a Secret to Everybody", {"X-Hub-Signature-256": good}, b"Hello, World!")
    with pytest.raises(webhook.Refused) as e:
        check(b"It's a Secret to Everybody", {"X-Hub-Signature-256": good}, b"Hello, World?")
    assert e.value.status == 403


def test_a_message_is_kept_whole_and_bounded_where_requests_bound_it(hook):
    long = "x" * (changesmod.MAX_MESSAGE_CHARS * 2)
    body = _mutated(commits__0__message=long)
    assert post(hook.port, "/github", body, github_headers(body))[0] == 202
    assert queued(hook.dirs)[0]["message"] == long


# -------------------------------------------------- socket activation

def test_socket_activated_it_answers_on_fd_3_and_exits_when_idle(dirs, creds, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    env = dict(os.environ, CREDENTIALS_DIRECTORY=str(creds), LISTEN_FDS="1", BUILDUNITS_CONFIG_DIR=dirs.config,
               BUILDUNITS_SPOOL_DIR=dirs.spool, BUILDUNITS_STATE_DIR=dirs.state, BUILDUNITS_SITE_DIR=dirs.site)
    env.pop("JOURNAL_STREAM", None)
    fd = listener.fileno()
    # As systemd does: the socket as fd 3, LISTEN_PID the program's own
    # (exec keeps the pid).
    script = ("import os, sys; fd = %d\nif fd != 3: os.dup2(fd, 3); os.close(fd)\n"
              "os.environ['LISTEN_PID'] = str(os.getpid()); "
              "os.execv(sys.argv[1], sys.argv[1:])" % fd)
    with open(tmp_path / "webhook.log", "wb") as logf:
        p = subprocess.Popen([harness.PYTHON, "-c", script, harness.PYTHON,
                              os.path.join(harness.BIN_DIR, "buildunits-webhook"), "--idle-sec", "2"],
                             env=env, pass_fds=(fd,), stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        listener.close()       # the program holds it now, as systemd would
        status, text = post(port, "/github", GOOD, github_headers(GOOD, "activated"))
        assert status == 202, text
        assert [c["revision"] for c in queued(dirs)] == ["a10867b14bb761a232cd80139fbd4c0d33264240",
                                                         "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"]
        assert post(port, "/github", GOOD, github_headers(GOOD, "activated"))[0] == 409
        assert wait_for(lambda: p.poll() is not None, timeout=20, what="the receiver to exit when idle")
    finally:
        harness._terminate(p)
    assert p.returncode == 0
    out = (tmp_path / "webhook.log").read_text()
    assert "(socket-activated)" in out and "idle for 2s, exiting" in out, out
    assert "202 queued 2 changes" in out and "409 delivery github:activated was taken already" in out, out


def test_a_spool_that_cannot_be_written_is_a_500_and_the_delivery_is_not_taken(hook):
    tmp = pathlib.Path(hook.dirs.spool) / "changes" / "tmp"
    tmp.rmdir()
    tmp.write_text("not a directory\n")          # every write into changes/tmp/ fails (even as root)
    status, text = post(hook.port, "/github", GOOD, github_headers(GOOD, "retried"))
    assert status == 500 and "cannot queue" in text
    assert queued(hook.dirs) == []
    assert [line for line in hook.lines() if ": 500 cannot queue" in line]
    tmp.unlink()
    tmp.mkdir()
    # The forge delivers it again: taken now.
    assert post(hook.port, "/github", GOOD, github_headers(GOOD, "retried"))[0] == 202
    assert len(queued(hook.dirs)) == 2


def test_the_scheduler_makes_a_request_of_each_commit_and_drops_a_push_delivered_again(hook):
    """The changes are the scheduler's as a polled commit's are: one request
    per commit for the builder whose Repository= the push named; the same
    push delivered again under a new id (as after a crash before its id was
    taken) adds no request."""
    from buildunits import config, scheduler
    from buildunits.bus import NoBus
    from support.inprocess import RecordingNotifier
    assert post(hook.port, "/github", GOOD, github_headers(GOOD, "first"))[0] == 202
    s = scheduler.Scheduler(hook.dirs, config.load(hook.dirs.config), NoBus(), RecordingNotifier())
    s.state.ensure()
    s.work()
    sp = Spool(hook.dirs.spool)
    reqs = [sp.read("requests", i) for i in sp.pending("requests")]
    assert [(r["builder"], r["branch"], r["revision"]) for r in reqs] == [
        ("hello", "main", "a10867b14bb761a232cd80139fbd4c0d33264240"),
        ("hello", "main", "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c")]
    # The forge and the delivery are the builds' properties (BUILDUNITS_PROPERTY_forge, _delivery).
    assert [r["properties"] for r in reqs] == [{"forge": "github", "delivery": "first"}] * 2
    assert post(hook.port, "/github", GOOD, github_headers(GOOD, "again"))[0] == 202
    s.work()
    assert len(sp.pending("requests")) == 2 and sp.pending("changes") == []
