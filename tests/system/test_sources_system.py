"""Every way a build starts, under a real systemd: Mercurial and Subversion
repositories polled and checked out, the forges' push hooks through the
socket-activated receiver, and a step that triggers builds and waits.

One container for the module (its boot and `make install` are most of a
test's time): the installed units, buildunits.target with two runners,
real socket activation and journald.  The repositories are real (hg init,
svnadmin create, and svnserve for an svn:// URL), made and committed to by
a user of their own, "dev", so that every read crosses a user boundary:
the poller reads them as buildunits, and the checkout step runs as
buildunits-build in its sandbox.  The forges' pushes are the payloads of
tests/data/webhook (their documentation's examples, as tests/test_webhook.py
sends them), signed with secrets the webhook unit loads as systemd
credentials, sent with http.client from inside the container (its network
is its own) to the socket's ListenStream= address.  What is asserted is
what an operator reads: the build records, the steps' logs, the journal,
the site's pages and JSON.
"""

import base64
import json
import os
import re
import shlex

import pytest

import container as ct
from test_systemd import CI, DAEMONS, RUNNERS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(REPO_ROOT, "tests", "data", "webhook")
HG = "/srv/hg/hello"
PIPE = "/srv/hg/pipe"
SVN = "/srv/svn/repo"
SVN_WC = "/home/dev/wc"
CREDENTIALS = "/etc/buildunits/credentials"
# tests/test_webhook.py's secrets, here as the files of the credentials directory.
SECRETS = {"github": b"It's a Secret to Everybody\n", "gitea": b"gitea-secret-0123456789",
           "gitlab": b"gitlab-token-0123456789"}

# The source repository's own configuration, its owner's: a build must
# neither run these hooks nor be stopped by them (hg aborts a pull on a
# pre- hook it does not trust, from a repository of another user).
HOSTILE_HGRC = "[hooks]\npreoutgoing = echo HOOK-RAN-preoutgoing\nincoming = echo HOOK-RAN-incoming\n"

SHOW_HG = "hg id --debug -i -b -t; echo user $(id -un); cat f"
SHOW_SVN = ("echo revision $(svn info --show-item revision); echo url $(svn info --show-item relative-url); "
            "echo user $(id -un); cat f")
SHOW_HOOK = ('echo "forge=$BUILDUNITS_PROPERTY_forge delivery=$BUILDUNITS_PROPERTY_delivery '
             'revision=$BUILDUNITS_REVISION branch=$BUILDUNITS_BRANCH"')

BUILDERS = {
    "hg-hello": "[Builder]\nRepository=%s\nType=hg\nPollIntervalSec=1\n\n[Step show]\nCommand=%s\n" % (HG, SHOW_HG),
    # Type=svn worked out from the repository (svnadmin create) and the URL.
    "svn-file": "[Builder]\nRepository=file://%s\nPollIntervalSec=1\n\n[Step show]\nCommand=%s\n" % (SVN, SHOW_SVN),
    "svn-served": "[Builder]\nRepository=svn://127.0.0.1/repo\nPollIntervalSec=1\n\n[Step show]\nCommand=%s\n"
                  % SHOW_SVN,
    # The forges' pushes name repositories that are not here: built without a checkout.
    "from-github": "[Builder]\nRepository=git@github.com:codertocat/hello-world\nPollIntervalSec=0\nCheckout=no\n\n"
                   "[Step show]\nCommand=%s\n" % SHOW_HOOK,
    "from-gitea": "[Builder]\nRepository=http://localhost:3000/gitea/webhooks.git\nPollIntervalSec=0\nCheckout=no\n\n"
                  "[Step show]\nCommand=%s\n" % SHOW_HOOK,
    "from-gitlab": "[Builder]\nRepository=https://example.com/mike/diaspora.git\nPollIntervalSec=0\nCheckout=no\n\n"
                   "[Step show]\nCommand=%s\n" % SHOW_HOOK,
    # Trigger= with Wait=yes: the downstream builds check out the same
    # revision of the same (unpolled) repository.
    "pipeline": "[Builder]\nRepository=%s\nType=hg\nPollIntervalSec=0\nCheckout=no\n\n"
                "[Step fanout]\nTrigger=down-a down-b\nWait=yes\n" % PIPE,
    "down-a": "[Builder]\nRepository=%s\nType=hg\nPollIntervalSec=0\n\n[Step show]\n"
              "Command=echo node $(hg id --debug -i) flavour $BUILDUNITS_PROPERTY_flavour\n" % PIPE,
    "down-b": "[Builder]\nRepository=%s\nType=hg\nPollIntervalSec=0\n\n[Step show]\n"
              "Command=echo node $(hg id --debug -i) flavour $BUILDUNITS_PROPERTY_flavour\n\n"
              "[Step lint]\nCommand=echo lint found things; exit 1\nFlunkOnFailure=no\nWarnOnFailure=yes\n" % PIPE,
}

SETUP = r"""
set -e
useradd --create-home dev
install -d -o dev -g dev /srv/hg /srv/svn
runuser -u dev -- sh -e -c '
    for r in /srv/hg/hello /srv/hg/pipe; do
        hg init "$r"; cd "$r"; echo one > f; hg add -q f; hg commit -q -u "Dev Eloper <dev@example.org>" -m initial
    done
    svnadmin create /srv/svn/repo
    svn mkdir -q -m layout file:///srv/svn/repo/trunk file:///srv/svn/repo/branches file:///srv/svn/repo/tags
    svn checkout -q file:///srv/svn/repo/trunk /home/dev/wc
    cd /home/dev/wc; echo one > f; svn add -q f; svn commit -q -m "first file"
'
# svn:// served by svnserve, as its owner (anonymous read: svnserve.conf's default).
systemd-run -q --unit=svnserve -p User=dev svnserve --daemon --foreground --root=/srv/svn --listen-host=127.0.0.1
"""

# A Python client inside the container: a request from standard input
# (path, headers, body in base64), the answer as [status, text].
CLIENT = """\
import base64, http.client, json, sys
req = json.loads(sys.stdin.read())
conn = http.client.HTTPConnection("127.0.0.1", 8011, timeout=30)
conn.request("POST", req["path"], body=base64.b64decode(req["body"]), headers=req["headers"])
r = conn.getresponse()
print(json.dumps([r.status, r.read().decode("utf-8", "replace")]))
"""


def q(text):
    return shlex.quote(text)


@pytest.fixture(scope="module")
def ci(image):
    """One booted container for the module, everything above set up and
    buildunits.target started; the first polls of the polled repositories
    done (commits after them are built)."""
    c = ct.Container(image, ct.unique_name(), binds=[(REPO_ROOT, "/src")])
    try:
        c.boot()
        ct.install_project(c)
        ci = CI(c)
        ci.sh(SETUP)
        c.run(["install", "-d", "-m", "0700", CREDENTIALS])
        for forge, secret in SECRETS.items():
            c.write_file("%s/webhook-%s" % (CREDENTIALS, forge), secret.decode(), mode=0o600)
        c.write_file(HG + "/.hg/hgrc", HOSTILE_HGRC, owner="dev:dev")
        for name, text in BUILDERS.items():
            c.write_file("/etc/buildunits/builders/%s.builder" % name, text)
        ci.sh("systemctl enable -q --now buildunits-webhook.socket")
        ci.sh("systemctl enable -q %s && systemctl start buildunits.target" % " ".join(RUNNERS))
        ci.wait_active(DAEMONS + ("buildunits-webhook.socket", "svnserve.service"))
        polled = {HG, SVN, "svn://127.0.0.1/repo"}

        def first_polls():
            out = ci.sh("cat /var/lib/buildunits/poller/*.json 2>/dev/null", check=False).stdout
            seen = set(re.findall(r'"repository": "([^"]*)"', out))
            return polled <= seen
        ct._wait(first_polls, 60, "the poller's first poll of %s" % ", ".join(sorted(polled)))
    except BaseException:
        # (The report hook shows a test's journal, not a module fixture's.)
        if c.running():
            print("--- journalctl -b of %s ---\n%s" % (c.name, ct._tail(c.journal("-b"), 200)))
        c.stop()
        raise
    try:
        yield ci
    finally:
        c.stop()


@pytest.fixture(autouse=True)
def _journal_on_failure(request, ci):
    # conftest's report hook adds these containers' journals to a failure.
    request.node._buildunits_containers = [ci.c]


def finished(ci, builder, number, timeout=60):
    """BUILDER #NUMBER's record once finished.  A finished build.json is
    written whole and never changes (buildunits-state(5)): read with cat,
    which costs the two CPUs less than a Python reader as often."""
    path = "/var/lib/buildunits/builds/%s/%d/build.json" % (builder, number)

    def done():
        p = ci.c.run(["cat", path], check=False)
        try:
            rec = json.loads(p.stdout) if p.returncode == 0 else None
        except ValueError:
            return None
        return rec if isinstance(rec, dict) and rec.get("state") == "finished" else None
    return ct._wait(done, timeout, "%s #%d to finish" % (builder, number))


def step_log(ci, builder, number, step):
    b = finished(ci, builder, number)
    (s,) = [s for s in b["steps"] if s["name"] == step]
    return ci.sh("cat /var/lib/buildunits/builds/%s/%d/%s" % (builder, number, s["log"])).stdout


def journal_has(ci, unit, *texts, timeout=20):
    """Wait until UNIT's journal holds every one of TEXTS (journald reads
    each daemon's messages in its own time); return it."""
    def look():
        j = ci.journal("-u", unit)
        return j if all(t in j for t in texts) else None
    return ct._wait(look, timeout, "%s's journal to show %r" % (unit, texts))


# ----------------------------------------------------------- hg and svn

HG_COMMIT = r"""
set -e
cd /srv/hg/hello
hg branch -q release/1.x
echo two > f
# A subject with an escape sequence and markup, a CR LF, a body with a
# NUL, a tab, quotes and a backslash, and not only ASCII.
printf 'subject \033[31mred </a> "q"\r\nbody\000nul\ttab \\ back ☃ é\n' > /tmp/msg
hg commit -q -u 'Eve "<eve@example.org>" $(id)' -l /tmp/msg
hg log -r tip -T '{node}\n{desc|json}\n'
"""


def test_an_hg_commit_is_polled_and_built_across_the_user_boundary(ci):
    node, desc = ci.sh(HG_COMMIT, user="dev").stdout.splitlines()
    message = json.loads(desc)          # hg's own reading of what it stored
    assert "\x00" in message and "\x1b" in message and '"' in message, repr(message)
    b = finished(ci, "hg-hello", 1)
    assert b["result"] == "success", b
    assert (b["revision"], b["branch"]) == (node, "release/1.x")
    (change,) = b["request"]["changes"]
    assert (change["source"], change["revision"], change["branch"], change["author"], change["message"]) == (
        "poller", node, "release/1.x", 'Eve "<eve@example.org>" $(id)', message)
    # The checkout, as buildunits-build, of a repository of dev's: no hook
    # of the repository's ran, none stopped it, hg read no .hg/hgrc.
    checkout = step_log(ci, "hg-hello", 1, "checkout")
    assert "checked out %s" % node in checkout, checkout
    assert "HOOK-RAN" not in checkout and "trust" not in checkout, checkout
    show = step_log(ci, "hg-hello", 1, "show")
    assert show == "%s release/1.x tip\nuser buildunits-build\ntwo\n" % node, show
    # The journal shows the subject, its control characters as "?" (a
    # line with them would be a blob journalctl does not show).
    journal_has(ci, "buildunits-poller", "%s release/1.x %s: change queued: subject ?[31mred </a> \"q\"\n"
                % (HG, node[:12]))
    # Forced, of the branch's tip: the runner reads what the step checked
    # out (its file in .hg/, buildunits-build's) into the record.
    ci.sh("buildunits force hg-hello --branch release/1.x")
    b = finished(ci, "hg-hello", 2)
    assert (b["result"], b["request"]["revision"], b["revision"], b["branch"]) == (
        "success", "", node, "release/1.x"), b


SVN_COMMIT = r"""
set -e
cd /home/dev/wc
echo two > f
printf 'svn subject <b> & "q"\n\tbody \033[1m ☃\n' > /tmp/smsg
svn commit -q -F /tmp/smsg
svnlook youngest /srv/svn/repo
"""


def test_an_svn_commit_is_polled_and_built_from_a_file_url_and_from_svnserve(ci):
    rev = ci.sh(SVN_COMMIT, user="dev").stdout.strip()
    assert rev == "3", rev          # r1 the layout, r2 the first file
    for builder, url in (("svn-file", "file://" + SVN), ("svn-served", "svn://127.0.0.1/repo")):
        b = finished(ci, builder, 1)
        assert b["result"] == "success", (builder, b)
        assert (b["revision"], b["branch"], b["repository"]) == (rev, "trunk", url)
        (change,) = b["request"]["changes"]
        # svn writes a control character in its XML as "?\NNN" (svn.py).
        assert (change["revision"], change["branch"], change["author"], change["message"], change["files"]) == (
            rev, "trunk", "dev", 'svn subject <b> & "q"\n\tbody ?\\027[1m \u2603', ["f"]), (builder, change)
        assert "checked out r3 of ^/trunk" in step_log(ci, builder, 1, "checkout")
        show = step_log(ci, builder, 1, "show")
        assert show == "revision 3\nurl ^/trunk\nuser buildunits-build\ntwo\n", (builder, show)
    # Forced, of trunk's head: the revision the step checked out is recorded.
    ci.sh("buildunits force svn-file")
    b = finished(ci, "svn-file", 2)
    assert (b["result"], b["request"]["revision"], b["revision"], b["branch"]) == ("success", "", rev, "trunk"), b


# ------------------------------------------------------------- webhooks

def hook_payload(name):
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def hmac_hex(secret, body):
    import hashlib
    import hmac
    return hmac.new(secret.rstrip(b"\n"), body, hashlib.sha256).hexdigest()


def post(ci, path, body, headers):
    """(status, text): BODY POSTed to the socket's address from inside."""
    req = json.dumps({"path": path, "headers": headers, "body": base64.b64encode(body).decode()})
    out = ci.c.run(["python3", "-c", CLIENT], input=req).stdout
    return tuple(json.loads(out))


def github(body, delivery, secret=SECRETS["github"]):
    return {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": "sha256=" + hmac_hex(secret, body)}


def gitea(body, delivery, secret=SECRETS["gitea"]):
    return {"Content-Type": "application/json", "X-Gitea-Event": "push", "X-Gitea-Delivery": delivery,
            "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "X-Gitea-Signature": hmac_hex(secret, body)}


def gitlab(body, delivery, token=SECRETS["gitlab"]):
    return {"Content-Type": "application/json", "X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": delivery,
            "X-Gitlab-Token": token.decode()}


# forge: (payload, headers, builder, the revisions the push holds, branch)
PUSHES = {
    "github": ("github-push.json", github, "from-github",
               {"a10867b14bb761a232cd80139fbd4c0d33264240", "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"}, "main"),
    "gitea": ("gitea-push.json", gitea, "from-gitea", {"bffeb74224043ba2feb48d137756c8a9331c449a"}, "develop"),
    "gitlab": ("gitlab-push.json", gitlab, "from-gitlab",
               {"b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327", "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"}, "master"),
}


def test_each_forges_push_through_the_socket_activated_receiver(ci):
    # Not started before the first connection: the socket holds the address.
    assert ci.sh("systemctl is-active buildunits-webhook.service", check=False).stdout.strip() == "inactive"
    # A bad signature (or token) of each forge first: 403, a journal line, nothing queued.
    wrong = {"github": github, "gitea": gitea, "gitlab": gitlab}
    for forge, (name, headers, _builder, _revs, _branch) in PUSHES.items():
        body = hook_payload(name)
        bad = wrong[forge](body, "bad-%s-1" % forge, b"not-the-secret-0123456789")
        status, text = post(ci, "/" + forge, body, bad)
        assert status == 403, (forge, status, text)
    journal_has(ci, "buildunits-webhook", "webhook: github bad-github-1 from 127.0.0.1: 403",
                "webhook: gitea bad-gitea-1 from 127.0.0.1: 403", "webhook: gitlab bad-gitlab-1 from 127.0.0.1: 403")
    assert ci.sh("ls /var/spool/buildunits/changes/new").stdout == ""
    # Then each forge's push as its documentation shows it, rightly signed.
    for forge, (name, headers, builder, revs, branch) in PUSHES.items():
        status, text = post(ci, "/" + forge, hook_payload(name), headers(hook_payload(name), "good-%s-1" % forge))
        assert status == 202, (forge, status, text)
        assert len(text.split()) == len(revs), text       # a change id per commit
    j = journal_has(ci, "buildunits-webhook", "webhook: github good-github-1 from 127.0.0.1: 202 queued 2 changes",
                    "webhook: gitea good-gitea-1 from 127.0.0.1: 202 queued 1 change",
                    "webhook: gitlab good-gitlab-1 from 127.0.0.1: 202 queued 2 changes")
    assert "listening on 127.0.0.1:8011 (socket-activated)" in j, j
    # Each commit is a build that ran, with the forge's name and delivery.
    # The bad requests came first: a change of theirs would have been a
    # build before these, with their delivery.
    for forge, (_name, _headers, builder, revs, branch) in PUSHES.items():
        builds = [finished(ci, builder, n) for n in range(1, len(revs) + 1)]
        assert {b["revision"] for b in builds} == revs, (forge, builds)
        for b in builds:
            assert b["result"] == "success" and b["branch"] == branch, b
            assert b["request"]["properties"] == {"forge": forge, "delivery": "good-%s-1" % forge}, b
            assert [c["source"] for c in b["request"]["changes"]] == ["webhook"], b
            assert step_log(ci, builder, b["number"], "show") == (
                "forge=%s delivery=good-%s-1 revision=%s branch=%s\n" % (forge, forge, b["revision"], branch))
        assert ci.numbers(builder) == list(range(1, len(revs) + 1)), (builder, ci.numbers(builder))
    assert ci.sh("ls /var/spool/buildunits/changes/new").stdout == ""


# -------------------------------------------------------------- Trigger=

def site_json(ci, path):
    p = ci.sh("cat /var/lib/buildunits/site/%s" % path, check=False)
    try:
        return json.loads(p.stdout) if p.returncode == 0 else None
    except ValueError:
        return None


def test_a_trigger_step_waits_for_its_builds_and_takes_the_worst_result(ci):
    # Two commits: the build is of the first, not of the tip.
    out = ci.sh("cd %s && hg log -r tip -T '{node}' && echo two > f && hg commit -q -u 'Dev <d@x>' -m second"
                % PIPE, user="dev").stdout
    node = out.strip()
    ci.sh("buildunits force pipeline --branch default --revision %s --property flavour=spicy" % node)
    up = finished(ci, "pipeline", 1, timeout=120)
    down = {name: finished(ci, name, 1) for name in ("down-a", "down-b")}
    assert (down["down-a"]["result"], down["down-b"]["result"]) == ("success", "warnings"), down
    # The upstream step waited for both, and took the worst of their results.
    (fanout,) = [s for s in up["steps"] if s["name"] == "fanout"]
    assert up["result"] == fanout["result"] == "warnings", up
    assert fanout["started"] <= min(d["started"] for d in down.values()), (fanout, down)
    assert fanout["finished"] >= max(d["finished"] for d in down.values()), (fanout, down)
    assert fanout["summary"] == "down-a #1 success; down-b #1 warnings", fanout
    assert [(t["builder"], t["number"], t["result"]) for t in fanout["triggered"]] == [
        ("down-a", 1, "success"), ("down-b", 1, "warnings")], fanout
    # Each downstream build: the same revision and branch, the upstream's
    # properties, the upstream named; its checkout of that revision.
    for name, d in down.items():
        assert (d["revision"], d["branch"]) == (node, "default"), d
        assert d["request"]["properties"] == {"flavour": "spicy"}, d
        assert d["request"]["upstream"] == {"builder": "pipeline", "number": 1, "step": "fanout"}, d
        assert (d["upstream"]["builder"], d["upstream"]["number"]) == ("pipeline", 1), d
        assert d["worker"] != up["worker"], (d, up)
        assert step_log(ci, name, 1, "show") == "node %s flavour spicy\n" % node
    # The pages link both ways: the site's JSON and HTML.
    def shown():
        doc = site_json(ci, "api/builders/pipeline/builds/1.json")
        ok = doc and doc.get("state") == "finished" and [t.get("number") for t in doc.get("triggered", [])] == [1, 1]
        return doc if ok else None
    doc = ct._wait(shown, 30, "the site to show pipeline #1 finished with its triggered builds")
    assert [(t["builder"], t["number"], t["result"], t["html"]) for t in doc["triggered"]] == [
        ("down-a", 1, "success", "builders/down-a/1/index.html"),
        ("down-b", 1, "warnings", "builders/down-b/1/index.html")], doc
    for name in ("down-a", "down-b"):
        d = ct._wait(lambda: site_json(ci, "api/builders/%s/builds/1.json" % name), 30, "%s #1's JSON" % name)
        assert d["upstream"] == {"builder": "pipeline", "number": 1, "html": "builders/pipeline/1/index.html",
                                 "removed": False}, d
        page = ci.sh("cat /var/lib/buildunits/site/builders/%s/1/index.html" % name).stdout
        assert re.search(r'href="(\.\./)*builders/pipeline/1/index\.html">pipeline #1</a>', page), page
    page = ci.sh("cat /var/lib/buildunits/site/builders/pipeline/1/index.html").stdout
    for name in ("down-a", "down-b"):
        assert re.search(r'href="(\.\./)*builders/%s/1/index\.html">%s #1</a>' % (name, name), page), page
