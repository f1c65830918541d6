"""buildunits-notifier against real servers: an SMTP server (aiosmtpd), an
HTTP server for webhooks (http.server), and a stand-in for the forges'
status APIs (no forge runs here; see ForgeStandIn).

Most tests write a finished build's record as a runner does (state.py)
and wake the notifier with SIGHUP; test_a_failed_build_is_mailed runs
the whole way through the real scheduler and runner on the bus.
"""

import hashlib
import hmac
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import harness
from buildunits import notifyrules, records, siteviews
from harness import wait_for
from support.smtp import SMTPServer, free_port


# ------------------------------------------------------------ helpers
def finished_build(daemons, builder, result="failure", branch="main", revision="a" * 40, log="",
                   author="A U Thor <a@example.org>", started_only=False):
    """Write B #N as a runner does: its number, its step's log, its record."""
    st = daemons.state
    n = st.allocate_number(builder)
    steps = [{"name": "compile", "state": "finished", "result": "success", "log": "01-compile.log",
              "summary": "", "command": "make", "started": 1.0, "finished": 2.0},
             {"name": "test", "state": "finished" if not started_only else "running",
              "result": None if started_only else result, "log": "02-test.log",
              "summary": "exit status 2" if result == "failure" else "", "command": "make test",
              "started": 2.0, "finished": 3.0}]
    for s, text in ((steps[0], "compiled\n"), (steps[1], log)):
        fd = st.create_log(builder, n, s["log"])
        os.write(fd, text.encode())
        os.close(fd)
    rec = {"builder": builder, "number": n, "request_id": "r%d" % n, "worker": "w1",
           "state": "running" if started_only else "finished", "result": None if started_only else result,
           "reason": "", "started": time.time() - 5, "finished": None if started_only else time.time(),
           "repository": "/srv/git/x.git", "branch": branch, "revision": revision, "steps": steps,
           "request": {"id": "r%d" % n, "branch": branch, "revision": revision, "reason": "a test",
                       "changes": [{"revision": revision, "author": author, "message": "Fix it\n\nmore",
                                    "branch": branch, "files": ["x.c"], "when": 1700000000}]}}
    st.write_build(rec)
    return n


def finish(daemons, builder, n, result):
    rec = daemons.state.read_build(builder, n)
    rec.update(state="finished", result=result, finished=time.time())
    rec["steps"][1].update(state="finished", result=result)
    daemons.state.write_build(rec)


def outbox(daemons):
    return daemons.spool.pending("outbox")


def start_notifier(daemons, conf, builder_notify="", builder="b", bus=False, env=None):
    daemons.write_global(conf)
    daemons.write_builder(builder, "[Builder]\n[Step test]\nCommand=false\n" + builder_notify)
    return daemons.start("notifier", bus=bus, env=env)


def wake(daemons):
    daemons.reload("notifier")


def smtp_conf(port, extra=""):
    return ("[Site]\nSiteURL=https://ci.example.org/\n[Notify]\nSMTPServer=127.0.0.1\nSMTPPort=%d\n"
            "MailFrom=ci@example.org\nRetrySec=200ms\nRetryMaxSec=1s\n%s" % (port, extra))


# -------------------------------------------------------------- rules
def test_modes_are_buildbots():
    m = notifyrules.modes_match
    assert m(["failing"], "failure", None) and not m(["failing"], "success", None)
    assert m(["passing"], "success", None) and m(["warnings"], "warnings", None)
    assert m(["exception"], "exception", None) and not m(["exception"], "failure", None)
    assert m(["change"], "failure", "success") and not m(["change"], "failure", "failure")
    assert m(["problem"], "failure", "warnings") and not m(["problem"], "failure", None)
    assert m(["all"], "cancelled", None) and not m(["all"], "retry", "success")


def test_hostile_text_makes_no_header():
    assert "\n" not in notifyrules.clean("x\r\nBcc: evil@example.org")
    assert notifyrules.author_address("Evil <a@example.org>\nBcc: b@example.org") is None
    assert notifyrules.author_address("Evil <a@example.org>, <b@example.org>") is None


# --------------------------------------------------------------- mail
@pytest.fixture
def smtp():
    with SMTPServer() as s:
        yield s


def test_a_failure_is_mailed_with_its_step_log_tail_and_links(daemons, smtp):
    start_notifier(daemons, smtp_conf(smtp.port), "[Notify]\nMail=dev@example.org\nMailAuthors=yes\n")
    log = "".join("line %d\n" % i for i in range(100)) + "error: it broke\n"
    n = finished_build(daemons, "b", "failure", branch="main\r\nBcc: evil@example.org", log=log)
    wake(daemons)
    msg = smtp.wait_messages(1)[0]
    assert sorted(smtp.envelopes[0][1]) == ["a@example.org", "dev@example.org"]
    assert "evil" not in str(msg["To"]) and "Bcc" not in msg and "\n" not in msg["Subject"]
    assert msg["Subject"].startswith("buildunits: b #%d failure" % n) and "step test" in msg["Subject"]
    body = msg.get_content()
    assert "Step test: failure (exit status 2)" in body
    assert "    error: it broke" in body and "    line 99" in body and "line 50\n" not in body
    assert "https://ci.example.org/builders/b/%d/index.html" % n in body
    assert "https://ci.example.org/builders/b/%d/02-test.html" % n in body
    wait_for(lambda: not outbox(daemons), what="the outbox to empty")


def test_rules_modes_branches_and_the_site_rule(daemons, smtp):
    start_notifier(daemons, smtp_conf(smtp.port, "Notify=problem\nMail=admin@example.org\n"),
                   "[Notify]\nNotify=change\nNotifyBranches=main release-*\nMail=dev@example.org\n")
    finished_build(daemons, "b", "success")           # no previous: no change, no problem
    finished_build(daemons, "b", "success", branch="feature")   # not a notified branch (site: no problem)
    finished_build(daemons, "b", "failure")           # change, and problem for the site rule
    wake(daemons)
    msgs = smtp.wait_messages(1)
    finished_build(daemons, "b", "failure")           # no change; problem no more
    finished_build(daemons, "b", "success")           # change
    wake(daemons)
    msgs = smtp.wait_messages(2)
    wait_for(lambda: not outbox(daemons))
    assert [sorted(r) for _f, r in smtp.envelopes] == [["admin@example.org", "dev@example.org"],
                                                       ["dev@example.org"]]
    assert [m["X-Buildunits-Result"] for m in msgs] == ["failure", "success"]


def test_history_before_the_first_start_is_not_mailed(daemons, smtp):
    daemons.write_builder("b", "[Builder]\n[Step test]\nCommand=false\n[Notify]\nMail=dev@example.org\n")
    finished_build(daemons, "b", "failure")
    daemons.write_global(smtp_conf(smtp.port))
    daemons.start("notifier", bus=False)
    n = finished_build(daemons, "b", "failure")
    wake(daemons)
    assert [m["X-Buildunits-Build"] for m in smtp.wait_messages(1)] == [str(n)]
    cursor = records.read(daemons.state.notifier_path(), "notifier")
    wait_for(lambda: records.read(daemons.state.notifier_path(), "notifier")["builders"]["b"]["done"] == n)
    assert cursor["version"] == 1


def test_the_smtp_server_down_for_a_while(daemons):
    port = free_port()
    start_notifier(daemons, smtp_conf(port), "[Notify]\nMail=dev@example.org\n")
    ns = [finished_build(daemons, "b", "failure") for _ in range(3)]
    wake(daemons)

    def deferred():
        recs = [daemons.spool.peek("outbox", r) for r in outbox(daemons)]
        return len(recs) == 3 and recs[0] and recs[0].get("attempts", 0) >= 2 and recs
    recs = wait_for(deferred, what="three messages deferred, the oldest tried twice")
    assert "127.0.0.1:%d" % port in recs[0]["last_error"]
    # While the server is down, the others wait untried (one attempt per retry, not one per message).
    assert all(not r.get("attempts") for r in recs[1:] if r)
    assert all(os.stat(daemons.spool.path("outbox", "new", r)).st_mtime > time.time() - 1 for r in outbox(daemons))
    p = daemons.cli("status", bus=False)
    assert "outbox: 3 messages waiting" in p.stdout and "127.0.0.1:%d" % port in p.stdout, p.stdout
    with SMTPServer(port=port) as s:
        got = s.wait_messages(3)
        wait_for(lambda: not outbox(daemons), what="the outbox to empty")
    assert sorted(m["X-Buildunits-Build"] for m in got) == sorted(map(str, ns))
    assert "deferred" in daemons.log("notifier")


def test_killed_mid_delivery_the_mail_still_arrives(daemons, smtp):
    start_notifier(daemons, smtp_conf(smtp.port), "[Notify]\nMail=dev@example.org\n")
    smtp.hold()
    n = finished_build(daemons, "b", "failure")
    wake(daemons)
    wait_for(smtp.entered.is_set, what="the notifier to be sending DATA")
    daemons.kill("notifier")
    assert len(outbox(daemons)) == 1                   # not accepted: still queued
    smtp.release()
    daemons.start("notifier", bus=False)
    msgs = smtp.wait_messages(1)
    wait_for(lambda: not outbox(daemons))
    assert all(m["X-Buildunits-Build"] == str(n) for m in msgs)   # at least once (twice if accepted meanwhile)


def test_given_up_after_giveupsec_with_a_mark_for_the_build(daemons):
    port = free_port()
    start_notifier(daemons, smtp_conf(port, "GiveUpSec=1s\n"), "[Notify]\nMail=dev@example.org\n")
    n = finished_build(daemons, "b", "failure")
    wake(daemons)
    mark = wait_for(lambda: daemons.state.read_undelivered("b", n), timeout=20, what="the build's mark")
    assert mark["messages"][0]["channel"] == "mail" and "not sent in 1s" in mark["messages"][0]["reason"]
    wait_for(lambda: not outbox(daemons))
    assert "gave up on the mail to dev@example.org" in daemons.log("notifier")


def test_sendmail_by_default(daemons, tmp_path):
    """Sendmail= is a stand-in for the local MTA (none runs here): a script
    that keeps its arguments and standard input."""
    fake = tmp_path / "sendmail"
    out = tmp_path / "sent"
    fake.write_text("#!/bin/sh\nprintf '%%s\\n' \"$*\" > %s.args\ncat > %s\n" % (out, out))
    fake.chmod(0o755)
    start_notifier(daemons, "[Notify]\nSendmail=%s\nMailFrom=ci@example.org\n" % fake,
                   "[Notify]\nMail=dev@example.org\n")
    finished_build(daemons, "b", "failure")
    wake(daemons)
    wait_for(lambda: not outbox(daemons) and out.exists())
    assert (tmp_path / "sent.args").read_text() == "-oi -t\n"
    assert "To: dev@example.org" in out.read_text() and "\r" not in out.read_text()


# ------------------------------------------------------------ webhook
class Recorder(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.got.append((self.path, dict(self.headers), body))
        code = self.server.answers.pop(0) if self.server.answers else 200
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def http_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    srv.got, srv.answers = [], []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_webhook_posts_the_sites_json_signed(daemons, http_server, tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "notify-webhook").write_text("s3cret-s3cret-s3cret\n")
    http_server.answers = [503]         # down once: deferred, then sent
    url = "http://127.0.0.1:%d/hook" % http_server.server_address[1]
    start_notifier(daemons, "[Notify]\nRetrySec=100ms\n", "[Notify]\nNotify=all\nWebhook=%s\n" % url,
                   env={"CREDENTIALS_DIRECTORY": str(creds)})
    n = finished_build(daemons, "b", "success")
    wake(daemons)
    wait_for(lambda: len(http_server.got) == 2 and not outbox(daemons), what="the webhook delivered")
    path, headers, body = http_server.got[1]
    assert path == "/hook" and headers["Content-Type"] == "application/json"
    assert headers["X-Buildunits-Signature"] == "sha256=" + hmac.new(b"s3cret-s3cret-s3cret", body,
                                                                     hashlib.sha256).hexdigest()
    doc = json.loads(body)
    assert doc == json.loads(json.dumps(siteviews.build_json(siteviews.build_view(daemons.state.read_build("b", n)))))
    assert doc["format"] == "site-build" and doc["number"] == n


# ------------------------------------------------------------- forges
class ForgeStandIn(BaseHTTPRequestHandler):
    """A STAND-IN for the forges' commit status APIs (no forge runs here):
    it checks each request against the documented endpoint, method,
    headers and JSON body of GitHub (POST /repos/{owner}/{repo}/statuses/{sha}),
    Gitea/Forgejo (POST /api/v1/repos/{owner}/{repo}/statuses/{sha}) and
    GitLab (POST /api/v4/projects/:id/statuses/:sha), answers 201, and
    records what it accepted (400 and a reason for anything else)."""

    STATES = {"github": {"pending", "success", "failure", "error"},
              "gitea": {"pending", "success", "error", "failure", "warning"},
              "gitlab": {"pending", "running", "success", "failed", "canceled", "skipped"}}

    def do_POST(self):
        import re
        body = self.rfile.read(int(self.headers["Content-Length"]))
        problems = []
        try:
            doc = json.loads(body)
        except ValueError:
            doc, problems = {}, ["body is not JSON"]
        if self.headers.get("Content-Type") != "application/json":
            problems.append("Content-Type")
        m = (re.fullmatch(r"/repos/([^/]+)/([^/]+)/statuses/([0-9a-f]{40})", self.path) and "github"
             or re.fullmatch(r"/api/v1/repos/([^/]+)/([^/]+)/statuses/([0-9a-f]{40})", self.path) and "gitea"
             or re.fullmatch(r"/api/v4/projects/([^/]+)/statuses/([0-9a-f]{40})", self.path) and "gitlab")
        token = {"github": self.headers.get("Authorization") == "Bearer tok-github",
                 "gitea": self.headers.get("Authorization") == "token tok-gitea",
                 "gitlab": self.headers.get("PRIVATE-TOKEN") == "tok-gitlab"}.get(m)
        if not m:
            problems.append("no such endpoint %s" % self.path)
        elif not token:
            problems.append("bad token")
        else:
            if m == "github" and (self.headers.get("Accept") != "application/vnd.github+json"
                                  or not self.headers.get("User-Agent")):
                problems.append("GitHub wants Accept and User-Agent")
            if doc.get("state") not in self.STATES[m]:
                problems.append("state %r" % doc.get("state"))
            allowed = {"state", "target_url", "description", "context"} if m != "gitlab" else \
                {"state", "ref", "name", "target_url", "description", "coverage", "pipeline_id"}
            if set(doc) - allowed:
                problems.append("unknown fields %s" % sorted(set(doc) - allowed))
        code = 400 if problems else 201
        self.server.got.append((m, self.path, doc, problems))
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.mark.parametrize("forge,repo,path", [
    ("github", "o/r", "/repos/o/r/statuses/"), ("gitea", "o/r", "/api/v1/repos/o/r/statuses/"),
    ("gitlab", "g/sub/p", "/api/v4/projects/g%2Fsub%2Fp/statuses/")])
def test_forge_status_pending_then_the_result(daemons, tmp_path, forge, repo, path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), ForgeStandIn)
    srv.got = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / ("notify-" + forge)).write_text("tok-%s\n" % forge)
        api = "http://127.0.0.1:%d" % srv.server_address[1]
        start_notifier(daemons, "[Site]\nSiteURL=https://ci.example.org\n",
                       "[Notify]\nForgeStatus=%s\nForgeURL=%s\nForgeRepository=%s\n" % (forge, api, repo),
                       env={"CREDENTIALS_DIRECTORY": str(creds)})
        n = finished_build(daemons, "b", started_only=True, revision="c" * 40)
        wake(daemons)
        wait_for(lambda: len(srv.got) == 1 and not outbox(daemons), what="the pending status")
        finish(daemons, "b", n, "failure")
        wake(daemons)
        wait_for(lambda: len(srv.got) == 2 and not outbox(daemons), what="the result's status")
        assert [p for _m, _p, _d, p in srv.got] == [[], []]
        assert all(p == path + "c" * 40 for _m, p, _d, _p in srv.got)
        states = [d["state"] for _m, _p, d, _x in srv.got]
        assert states == {"github": ["pending", "failure"], "gitea": ["pending", "failure"],
                          "gitlab": ["running", "failed"]}[forge]
        d = srv.got[1][2]
        assert d["target_url"] == "https://ci.example.org/builders/b/%d/index.html" % n
        assert (d.get("context") or d.get("name")) == "buildunits/b"
    finally:
        srv.shutdown()
        srv.server_close()


# --------------------------------------------------------------- exec
def test_exec_notify_gets_the_facts(daemons, tmp_path):
    out = tmp_path / "env"
    start_notifier(daemons, "[Site]\nSiteURL=https://ci.example.org\n",
                   "[Notify]\nExecNotify=env | grep ^BUILDUNITS_ | sort > %s\n" % out)
    n = finished_build(daemons, "b", "failure", branch="main; rm -rf /")
    wake(daemons)
    wait_for(lambda: out.exists() and not outbox(daemons))
    env = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert env["BUILDUNITS_BUILDER"] == "b" and env["BUILDUNITS_NUMBER"] == str(n)
    assert env["BUILDUNITS_RESULT"] == "failure" and env["BUILDUNITS_BRANCH"] == "main; rm -rf /"
    assert env["BUILDUNITS_REVISION"] == "a" * 40
    assert env["BUILDUNITS_URL"] == "https://ci.example.org/builders/b/%d/index.html" % n
    assert "not isolated" in daemons.log("notifier")


# -------------------------------------------------- through the daemons
def test_a_failed_build_is_mailed(daemons, smtp):
    """The real scheduler and runner on the bus: a forced build fails, and
    its mail names the failing step and ends with its log."""
    daemons.write_global(smtp_conf(smtp.port))
    daemons.write_builder("hello", "[Builder]\n[Step compile]\nCommand=echo compiling\n"
                          "[Step test]\nCommand=echo 'test 3 of 7 failed: expected 4, got 5'; exit 3\n"
                          "[Notify]\nMail=dev@example.org\n")
    daemons.start("notifier")
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.cli("force", "hello", "--reason", "try it", check=True)
    msg = smtp.wait_messages(1, timeout=60)[0]
    assert msg["Subject"].startswith("buildunits: hello #1 failure") and "(step test)" in msg["Subject"]
    body = msg.get_content()
    assert "Step test: failure (exit status 3)" in body
    assert "    test 3 of 7 failed: expected 4, got 5" in body


@pytest.fixture
def tls(tmp_path):
    """(server context, certificate file): a self-signed certificate for
    127.0.0.1 made here by openssl(1), which the notifier is told to trust
    (SSL_CERT_FILE) as its one authority.  (The standard library's ssl
    cannot make a certificate: without openssl there is nothing to test.)"""
    import shutil
    import ssl
    import subprocess
    if not shutil.which("openssl"):
        pytest.skip("openssl(1) is needed to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx, cert


def test_smtp_login_over_starttls_a_wrong_password_waits_for_the_right_one(daemons, tmp_path, tls):
    """SMTPUser= against a server that takes AUTH only over TLS, the
    password the credential notify-smtp.  Wrong, the mail is deferred with
    an error naming the user and the credential (not the password); once
    the credential's file is right, the next retry sends it: no restart."""
    ctx, cert = tls
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "notify-smtp").write_text("not-the-pass-word\n")
    with SMTPServer(tls_context=ctx, users={"ci": "pass-word-1"}) as s:
        start_notifier(daemons, smtp_conf(s.port, "SMTPStartTLS=yes\nSMTPUser=ci\n"),
                       "[Notify]\nMail=dev@example.org\n",
                       env={"SSL_CERT_FILE": str(cert), "CREDENTIALS_DIRECTORY": str(creds)})
        n = finished_build(daemons, "b", "failure")
        wake(daemons)

        def deferred():
            recs = [daemons.spool.peek("outbox", r) for r in outbox(daemons)]
            return recs and recs[0] and recs[0].get("attempts", 0) >= 2 and recs[0]
        rec = wait_for(deferred, what="the mail deferred twice")
        why = rec["last_error"]
        assert "refused the login of SMTPUser=ci (535 " in why and "check the credential notify-smtp" in why, why
        assert s.messages == [] and s.logins and all(login == ("ci", False) for login in list(s.logins))
        assert "not-the-pass-word" not in daemons.log("notifier") + json.dumps(rec)
        assert "refused the login of SMTPUser=ci" in daemons.cli("status", bus=False).stdout
        (creds / "notify-smtp").write_text("pass-word-1\n")
        assert s.wait_messages(1)[0]["X-Buildunits-Build"] == str(n)
        wait_for(lambda: not outbox(daemons), what="the outbox to empty")
    assert s.logins[-1] == ("ci", True)
    assert daemons.state.read_undelivered("b", n) is None


def test_smtp_with_starttls(daemons, tls):
    """SMTPStartTLS=yes against a server that requires it, its certificate
    (made here, for 127.0.0.1) the one authority the notifier trusts."""
    ctx, cert = tls
    with SMTPServer(tls_context=ctx) as s:
        start_notifier(daemons, smtp_conf(s.port, "SMTPStartTLS=yes\n"), "[Notify]\nMail=dev@example.org\n",
                       env={"SSL_CERT_FILE": str(cert)})
        n = finished_build(daemons, "b", "failure")
        wake(daemons)
        assert s.wait_messages(1)[0]["X-Buildunits-Build"] == str(n)
        wait_for(lambda: not outbox(daemons))
