"""buildunits-notifier under a real systemd: mail, a webhook and an
ExecNotify= command about a failing build, as an operator would see them.

One container for the module.  Inside it, a real SMTP server (aiosmtpd,
Debian's python3-aiosmtpd, keeping what it receives in a Maildir) and a
real HTTP server (http.server, keeping each POST) run as units of their
own; the notifier is the installed one, started by buildunits.target.
A builder whose test step fails is forced:

- the mail arrives, naming the failing step, with the end of its log;
- the webhook receives the build's JSON, signed with the credential
  notify-webhook (LoadCredential= of the notifier's unit);
- the ExecNotify= command runs in a transient unit of its own,
  buildunits-notify-fails-1-0.service, as buildunits-build (systemctl
  show, ps, and `id` in its own output in the journal), and can read
  neither the state nor the configuration;
- the notifier killed (SIGKILL) while that unit runs: restarted by
  systemd, it finds the unit and waits for it, and the command runs once;
- the SMTP server stopped, a build failed, the server started again: the
  mail still arrives.
"""

import email
import email.policy
import hashlib
import hmac
import json
import os
import secrets
import shlex
import time

import pytest

import container as ct
from test_systemd import CI, DAEMONS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "hook-" + secrets.token_hex(12)
SMTP_PORT = 2525
HOOK_PORT = 8025
MAILDIR = "/var/tmp/mail"
HOOKS = "/var/tmp/hooks"
GO = "/run/notify-go"        # the ExecNotify= command waits for it (readable under ProtectSystem=strict)
NOTIFIER = "buildunits-notifier.service"

# Each attempt prints "blocked NAME" or "ESCAPED NAME".
COMMAND = ("i=0; while [ ! -e %s ] && [ $i -lt 250 ]; do sleep 0.1; i=$((i+1)); done; "
           "echo \"ran uid=$(id -u) user=$(id -un) build=$BUILDUNITS_BUILDER#$BUILDUNITS_NUMBER "
           "result=$BUILDUNITS_RESULT branch=$BUILDUNITS_BRANCH\"; "
           "for f in /etc/buildunits/buildunits.conf /etc/buildunits/credentials/notify-webhook "
           "/var/lib/buildunits/builds/fails/1/build.json /var/spool/buildunits/outbox/new; do "
           "if cat $f >/dev/null 2>&1 || ls $f >/dev/null 2>&1; "
           "then echo \"ESCAPED $f\"; else echo \"blocked $f\"; fi; "
           "done; if touch /var/lib/buildunits/pwned 2>/dev/null; then echo ESCAPED write-state; "
           "else echo blocked write-state; fi" % GO)

FAILS = """\
[Builder]
Repository=/srv/git/hello.git
Branches=main
PollIntervalSec=1
TreeStableSec=0

[Step compile]
Command=make

[Step test]
Command=echo 'running 7 tests'; echo 'test 3 of 7 failed: expected 4, got 5'; exit 3

[Notify]
Mail=dev@example.org
Webhook=http://127.0.0.1:%d/hook
ExecNotify=%s
""" % (HOOK_PORT, COMMAND)

CONF = """\
[Site]
SiteURL=https://ci.example.org/

[Notify]
SMTPServer=127.0.0.1
SMTPPort=%d
MailFrom=ci@example.org
RetrySec=1s
RetryMaxSec=2s
""" % SMTP_PORT

HOOK_RECEIVER = r"""
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        n = len(os.listdir(sys.argv[2]))
        tmp = os.path.join(sys.argv[2], ".%d.tmp" % n)
        with open(tmp, "w") as f:
            json.dump({"path": self.path, "headers": dict(self.headers), "body": body.decode()}, f)
        os.rename(tmp, os.path.join(sys.argv[2], "%03d.json" % n))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@pytest.fixture(scope="module")
def ci(image):
    """One booted container for the module: the project installed, the
    servers started, the builder configured, buildunits.target running."""
    start = time.monotonic()
    c = ct.Container(image, ct.unique_name(), binds=[(REPO_ROOT, "/src")])
    try:
        c.boot()
        ct.install_project(c)
        ci = CI(c)
        c.write_file("/usr/local/lib/hook-receiver.py", HOOK_RECEIVER)
        ci.sh("mkdir -p %s/tmp %s/new %s/cur %s /etc/buildunits/credentials" % (MAILDIR, MAILDIR, MAILDIR, HOOKS))
        c.write_file("/etc/buildunits/credentials/notify-webhook", SECRET + "\n", mode=0o600)
        start_smtp(ci)
        ci.sh("systemd-run -q --unit=test-hooks /usr/bin/python3 /usr/local/lib/hook-receiver.py %d %s"
              % (HOOK_PORT, HOOKS))
        ci.setup({"fails": FAILS}, conf=CONF)
        ci.wait_active((NOTIFIER,))
        ct.log("notifier system tier: container booted and set up in %.1f s" % (time.monotonic() - start))
        ci.boot_seconds = time.monotonic() - start
        yield ci
    finally:
        c.stop()
        ct.log("notifier system tier: the module's container ran %.1f s" % (time.monotonic() - start))


@pytest.fixture(autouse=True)
def report_container(request, ci):
    """The container's journal in the report of a failing test (conftest.py)."""
    request.node._buildunits_containers = [ci.c]


def start_smtp(ci):
    ci.sh("systemd-run -q --unit=test-smtp /usr/bin/python3 -m aiosmtpd -n -l 127.0.0.1:%d "
          "-c aiosmtpd.handlers.Mailbox %s" % (SMTP_PORT, MAILDIR))
    ct._wait(lambda: ci.sh("python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", %d), 1)'"
                           % SMTP_PORT, check=False).returncode == 0, 30, "the SMTP server to listen")


def mails(ci):
    """The mails the SMTP server kept, by X-Buildunits-Build."""
    out = {}
    names = ci.sh("ls %s/new" % MAILDIR, check=False).stdout.split()
    for name in names:
        raw = ci.sh("cat %s/new/%s" % (MAILDIR, shlex.quote(name))).stdout
        msg = email.message_from_string(raw, policy=email.policy.default)
        out.setdefault(msg["X-Buildunits-Build"], []).append(msg)
    return out


def wait_mail(ci, number, timeout=60):
    return ct._wait(lambda: mails(ci).get(str(number)), timeout, "the mail of build #%d" % number)[0]


def hooks(ci):
    names = sorted(ci.sh("ls %s" % HOOKS).stdout.split())
    return [json.loads(ci.sh("cat %s/%s" % (HOOKS, n)).stdout) for n in names]


def outbox_empty(ci):
    return ci.sh("ls /var/spool/buildunits/outbox/new").stdout.split() == []


def unit_journal(ci, unit):
    return ci.journal("-u", unit)


def main_pid(ci, unit):
    return int(ci.sh("systemctl show -P MainPID %s" % unit).stdout.strip() or 0)


def test_a_failing_build_mail_webhook_and_exec_notify_in_its_unit(ci):
    unit = "buildunits-notify-fails-1-0.service"
    ci.sh("buildunits force fails --reason 'a failing test'")
    b = ci.wait_finished("fails", 1)
    assert b["result"] == "failure"

    # The mail: the failing step and the end of its log.
    msg = wait_mail(ci, 1)
    assert msg["Subject"].startswith("buildunits: fails #1 failure") and "(step test)" in msg["Subject"]
    assert msg["To"] == "dev@example.org" and msg["From"].addresses[0].addr_spec == "ci@example.org"
    body = msg.get_content()
    assert "Step test: failure (exit status 3)" in body, body
    assert "    test 3 of 7 failed: expected 4, got 5" in body, body
    assert "https://ci.example.org/builders/fails/1/index.html" in body, body

    # The webhook: the build's JSON, signed with the unit's credential.
    got = ct._wait(lambda: hooks(ci), 60, "the webhook's POST")
    h = got[0]
    assert h["path"] == "/hook" and h["headers"]["X-Buildunits-Event"] == "build-finished"
    want = "sha256=" + hmac.new(SECRET.encode(), h["body"].encode(), hashlib.sha256).hexdigest()
    assert h["headers"]["X-Buildunits-Signature"] == want
    doc = json.loads(h["body"])
    assert doc["builder"] == "fails" and doc["number"] == 1 and doc["result"] == "failure"

    # ExecNotify=: a transient unit of its own, as buildunits-build, waiting for GO.
    ct._wait(lambda: ci.sh("systemctl is-active %s" % unit, check=False).stdout.strip() == "active",
             60, "the ExecNotify= unit to run")
    shown = ci.sh("systemctl show -p User -p Group -p ProtectSystem -p NoNewPrivileges -p InaccessiblePaths "
                  "-p RemainAfterExit %s" % unit).stdout
    props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    assert props["User"] == props["Group"] == "buildunits-build", shown
    assert props["ProtectSystem"] == "strict" and props["NoNewPrivileges"] == "yes", shown
    assert "/etc/buildunits" in props["InaccessiblePaths"] and "/var/spool/buildunits" in props["InaccessiblePaths"]
    pid = main_pid(ci, unit)
    assert ci.sh("ps -o user= -p %d" % pid).stdout.strip() == "buildunits-build"
    # ... not the notifier's child: in its own cgroup.
    assert ("/%s" % unit) in ci.sh("cat /proc/%d/cgroup" % pid).stdout

    # The notifier killed while the unit runs: systemd restarts it, it
    # delivers the message again, finds the unit and waits for it.
    before = main_pid(ci, NOTIFIER)
    ci.sh("systemctl kill -s KILL %s" % NOTIFIER)
    ct._wait(lambda: main_pid(ci, NOTIFIER) not in (0, before), 30, "the notifier to be restarted")
    ct._wait(lambda: "of an earlier attempt still runs the command" in ci.journal("-u", NOTIFIER),
             60, "the restarted notifier to find the unit")
    assert ci.sh("systemctl is-active %s" % unit, check=False).stdout.strip() == "active"
    ci.sh("touch %s" % GO)
    ct._wait(lambda: outbox_empty(ci), 60, "the outbox to empty")
    out = unit_journal(ci, unit)
    ran = [line for line in out.splitlines() if line.startswith("ran ")]
    uid = ci.sh("id -u buildunits-build").stdout.strip()
    assert ran == ["ran uid=%s user=buildunits-build build=fails#1 result=failure branch=main" % uid], out
    assert "ESCAPED" not in out and out.count("blocked ") == 5, out
    # Released once its end was read: unloaded.
    ct._wait(lambda: ci.sh("systemctl list-units --all --no-legend %s" % unit).stdout.strip() == "",
             30, "the unit to be released")
    journal = ci.journal("-u", NOTIFIER)
    assert "as transient units (buildunits-notify-BUILDER-NUMBER-K.service)" in journal, journal
    assert "not isolated" not in journal


def test_the_smtp_server_down_the_mail_arrives_when_it_is_back(ci):
    ci.sh("touch %s" % GO)
    ci.sh("systemctl stop test-smtp")
    ci.sh("buildunits force fails --reason 'while the mail server is down'")
    ci.wait_finished("fails", 2)

    def deferred():
        return any("fails #2: mail" in line and "deferred" in line for line in ci.journal("-u", NOTIFIER).splitlines())
    ct._wait(deferred, 60, "the mail of #2 to be deferred")
    # The webhook and the command went; the mail waits, with its error.
    status = ct._wait(lambda: (lambda s: "outbox: 1 message waiting" in s and s)(ci.sh("buildunits status").stdout),
                      60, "the outbox to hold the mail alone")
    assert "127.0.0.1:%d" % SMTP_PORT in status, status
    assert "2" not in mails(ci)
    start_smtp(ci)
    msg = wait_mail(ci, 2)
    assert "Step test: failure (exit status 3)" in msg.get_content()
    ct._wait(lambda: outbox_empty(ci), 60, "the outbox to empty")
    assert len(mails(ci)["2"]) == 1
