"""Credentials in repository URLs are never shown.

`Repository=http://user:TOKEN@host/r.git` must build, and the token must
appear nowhere a user (or anyone who can read the state, the spool, the
site or the journal) would look.  The end-to-end tests serve a repository
over HTTP that refuses any request without the token, so a build that
succeeds proves the real URL was used.
"""

import base64
import functools
import http.server
import json
import os
import threading

import pytest

import harness
from buildunits import config, redact
from harness import wait_for

TOKEN = "ghp_S3cr3tT0kenXYZ"


@pytest.mark.parametrize("url, shown", [
    ("https://user:%s@example.org/r.git" % TOKEN, "https://user:***@example.org/r.git"),
    ("https://%s@example.org/r.git" % TOKEN, "https://***@example.org/r.git"),
    ("http://x-access-token:%s@127.0.0.1:8080/a/b.git" % TOKEN, "http://x-access-token:***@127.0.0.1:8080/a/b.git"),
    ("https://user:p%%40ss@w@example.org/r", "https://user:***@example.org/r"),   # to the last @
    ("https://user:@example.org/r", "https://user:***@example.org/r"),
    ("HTTPS://u:t@Example.org", "HTTPS://u:***@Example.org"),
    ("git://t@host/r", "git://***@host/r"),
    ("ftp://u:p@host/r", "ftp://u:***@host/r"),
    ("ssh://git@host/r.git", "ssh://git@host/r.git"),                # an ssh user is no secret
    ("ssh://git:pw@host/r.git", "ssh://git:***@host/r.git"),
    ("git+ssh://git@host/r.git", "git+ssh://git@host/r.git"),
    ("git@github.com:owner/repo.git", "git@github.com:owner/repo.git"),
    ("https://example.org/r.git", "https://example.org/r.git"),
    ("https://example.org/r.git?u=a@b", "https://example.org/r.git?u=a@b"),    # @ after the host
    ("https://@example.org/r", "https://@example.org/r"),
    ("/srv/git/hello.git", "/srv/git/hello.git"),
    ("file:///srv/git/hello.git", "file:///srv/git/hello.git"),
    ("", ""),
])
def test_redact_url(url, shown):
    assert redact.url(url) == shown
    assert redact.url(shown) == shown, "masking twice changes nothing"


def test_redact_text_masks_every_url_in_a_message():
    msg = "fatal: unable to access 'https://u:%s@h/r.git/': and https://%s@other/x" % (TOKEN, TOKEN)
    out = redact.text(msg)
    assert TOKEN not in out
    assert out == "fatal: unable to access 'https://u:***@h/r.git/': and https://***@other/x"


def test_a_config_problem_quoting_a_line_does_not_show_the_token(tmp_path):
    d = tmp_path / "etc"
    (d / "builders").mkdir(parents=True)
    (d / "builders" / "b.builder").write_text("[Builder]\nhttps://u:%s@host/r.git\n" % TOKEN)
    with pytest.raises(config.ConfigError) as e:
        config.load(str(d))
    assert e.value.problems and all(TOKEN not in str(p) for p in e.value.problems)


# ------------------------------------------------------------ end to end

class _Git(http.server.SimpleHTTPRequestHandler):
    """Git's dumb HTTP protocol (static files), behind Basic auth."""

    def do_GET(self):
        want = "Basic " + base64.b64encode(("user:%s" % TOKEN).encode()).decode()
        if self.headers.get("Authorization") != want:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *a):
        pass


@pytest.fixture
def http_repo(tmp_path, git_repo):
    """(url with the token, GitRepo): the repository served over HTTP."""
    git_repo.commit({"README": "v0\n"}, "initial")
    harness.git("update-server-info", cwd=git_repo.bare)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_Git, directory=os.path.dirname(git_repo.bare)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    url = "http://user:%s@127.0.0.1:%d/%s" % (TOKEN, server.server_address[1], os.path.basename(git_repo.bare))
    try:
        yield url, git_repo
    finally:
        server.shutdown()
        server.server_close()


def _everything(daemons, extra=()):
    """Every byte under the state, spool and site directories, the daemons'
    output (the journal), and EXTRA texts: where a token must not be."""
    out = list(extra)
    for root in (daemons.state_dir, daemons.spool_dir, daemons.site_dir):
        for d, dirs, files in os.walk(root):
            out.extend(dirs)
            for f in files:
                out.append(f)
                p = os.path.join(d, f)
                if os.path.isfile(p) and not os.path.islink(p):
                    with open(p, "rb") as fh:
                        out.append(fh.read().decode("utf-8", "replace"))
    out.append(daemons.all_logs())
    return "\n".join(out)


BUILDER = """
[Builder]
Repository={url}
PollIntervalSec={poll}
Workers=*

[Step show]
Command=cat README
"""


def test_a_repository_with_credentials_builds_and_the_token_is_shown_nowhere(daemons, http_repo, monitor):
    url, repo = http_repo
    shown = redact.url(url)
    daemons.write_builder("secret", BUILDER.format(url=url, poll="200ms"))
    for name in ("poller", "scheduler", "htmlgen"):
        daemons.start(name)
    daemons.start("runner", "w1")
    wait_for(lambda: os.listdir(os.path.join(daemons.state_dir, "poller")), what="the poller's first poll")
    sha = repo.commit({"README": "v1 over http\n"}, "version one")
    harness.git("update-server-info", cwd=repo.bare)
    b = daemons.wait_build_finished("secret", 1)
    assert b["result"] == "success", (b, daemons.step_log("secret", 1, "checkout"))
    assert b["revision"] == sha and "v1 over http" in daemons.step_log("secret", 1, "show")
    assert b["repository"] == shown and shown in b["steps"][0]["command"]
    daemons.wait_site_finished("secret", 1)
    page = open(os.path.join(daemons.site_dir, "builders", "secret", "1", "index.html"), encoding="utf-8").read()
    assert shown in page
    with open(os.path.join(daemons.site_dir, "api", "builders", "secret", "builds", "1.json")) as f:
        assert json.load(f)["repository"] == shown
    monitor.wait_for_signal("ChangeQueued", args=lambda a: a[3] == sha)

    status = daemons.cli("status", check=True).stdout + daemons.cli("status", "--json", check=True).stdout
    check = daemons.cli("checkconfig", check=True)
    assert shown in check.stdout
    signals = repr([list(s.args) for s in monitor.snapshot()])
    everything = _everything(daemons, [status, check.stdout, check.stderr, signals])
    assert TOKEN not in everything
    assert shown in everything


def test_a_failing_checkout_does_not_show_the_token(daemons, tmp_path):
    """Git's own messages quote the URL: an unreachable host, then a
    reachable one that refuses the credentials."""
    daemons.write_builder("down", BUILDER.format(url="http://user:%s@127.0.0.1:9/r.git" % TOKEN, poll="0"))
    daemons.write_builder("gone", BUILDER.format(url="https://%s@host.invalid/r.git" % TOKEN, poll="0"))
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.start("htmlgen")
    for name in ("down", "gone"):
        daemons.cli("force", name, "--revision", "0" * 40, check=True)
        b = daemons.wait_build_finished(name, 1)
        assert b["result"] == "failure" and b["steps"][0]["name"] == "checkout"
        assert "fatal" in daemons.step_log(name, 1, "checkout")
        daemons.wait_site_finished(name, 1)
    assert TOKEN not in _everything(daemons)
