"""`make demo-local` stays true: the demo script runs start to finish (the
container demo, `make demo`, is tested in tests/system/test_demo_container.py).

What a user of the demo looks at is checked where it is: the site's pages
and files, the mail as the SMTP server kept it, the output of the
ExecNotify= command, and the demo's own output."""

import email
import email.policy
import getpass
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile

import harness


def test_demo_builds_pass_and_fail_and_writes_the_site(tmp_path):
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDUNITS_", "NOTIFY_SOCKET", "DBUS_"))}
    env["BUILDUNITS_DEMO_OUT"] = str(out)
    p = subprocess.run([harness.PYTHON, os.path.join(harness.REPO_ROOT, "share", "examples", "demo.py"), "--local"],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert p.returncode == 0, p.stdout
    assert "build hello #1: success" in p.stdout and "build hello #2: failure" in p.stdout
    assert "build hello #3: success (forced, properties {'release': '1.0'})" in p.stdout
    assert "file://%s/site/index.html" % out in p.stdout
    index = (out / "site" / "index.html").read_text()
    assert "builders/hello/2/index.html" in index
    page3 = (out / "site" / "builders" / "hello" / "3" / "index.html").read_text()
    assert "release" in page3 and "1.0" in page3

    # The mail of the failing build waited in the outbox while the SMTP
    # server was down (`buildunits status` said so), then arrived, naming
    # the failing step and the end of its log.
    assert re.search(r"\n  outbox: 1 message waiting; the oldest \(mail to dev@example\.org\) queued .*, "
                     r"last error: 127\.0\.0\.1:\d+: .*Connection refused\n", p.stdout), p.stdout
    mails = [email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
             for f in sorted((out / "mail" / "new").iterdir())]
    assert len(mails) == 1, mails
    msg = mails[0]
    assert msg["Subject"] == "buildunits: hello #2 failure on main (step test)"
    assert msg["To"] == "dev@example.org" and msg["From"].addresses[0].addr_spec == "ci@example.org"
    body = msg.get_content()
    assert "Step test: failure (exit status 2)" in body and "    got:      Goodbye, world!" in body, body
    assert "  Subject: buildunits: hello #2 failure on main (step test)\n" in p.stdout

    # ExecNotify=, without systemd the notifier's child, as the demo's user: once.
    notified = (out / "notified.txt").read_text()
    assert notified == "ExecNotify: hello #2 failure on main, run as %s\n" % getpass.getuser()
    assert "\n  " + notified in p.stdout

    # Artifacts=: package #1 and #2 (after hello #1 and #3) each kept the
    # tarball of the program they built; the site has it, the same bytes
    # as the record says, and builders/package/latest leads to #2's.
    assert "build package #1: success (after hello #1 (success))" in p.stdout
    assert "build package #2: success (after hello #3 (success))" in p.stdout
    for n in (1, 2):
        rec = json.loads((out / "state" / "builds" / "package" / str(n) / "build.json").read_text())
        (art,) = rec["artifacts"]
        assert art["name"] == "dist/hello.tar.gz"
        data = (out / "site" / "builders" / "package" / str(n) / "artifacts" / "dist" / "hello.tar.gz").read_bytes()
        assert hashlib.sha256(data).hexdigest() == art["sha256"] and len(data) == art["size"]
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            assert tar.extractfile("build/hello").read().decode().endswith('echo "Hello, world!"\n# greet politely\n')
        page = (out / "site" / "builders" / "package" / str(n) / "index.html").read_text()
        assert art["sha256"] in page and "dist/hello.tar.gz" in page
    assert os.readlink(out / "site" / "builders" / "package" / "latest") == "2/artifacts"
    latest = (out / "site" / "builders" / "package" / "latest" / "dist" / "hello.tar.gz").read_bytes()
    assert hashlib.sha256(latest).hexdigest() == art["sha256"]
    assert "file://%s/site/builders/package/2/artifacts/dist/hello.tar.gz\n" % out in p.stdout
    assert "file://%s/site/builders/package/latest/dist/hello.tar.gz\n" % out in p.stdout

    # `buildunits keep hello 2`: the page says it is kept, by whom and why.
    page2 = (out / "site" / "builders" / "hello" / "2" / "index.html").read_text()
    assert re.search(r"<dt>kept</dt><dd>kept by %s .*: the failure the mail was about" % re.escape(getpass.getuser()),
                     page2), page2
    assert re.search(r"\n  kept: kept by %s .*: the failure the mail was about \(the janitor never removes it\)\n"
                     % re.escape(getpass.getuser()), p.stdout), p.stdout
