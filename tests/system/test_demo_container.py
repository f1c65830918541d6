"""`make demo` stays true: under a real systemd in a container, a passing and
a failing build, the site copied out, the journal lines printed; the
failure's mail at a real SMTP server and its ExecNotify= command in a unit
of its own as buildunits-build, the package's tarball on the site, the
failing build pinned on its page."""

import email
import email.policy
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_make_demo_in_a_container(image, tmp_path):
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDUNITS_DEMO", "NOTIFY_SOCKET"))}
    env["BUILDUNITS_DEMO_OUT"] = str(out)
    p = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "share", "examples", "demo.py")], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert p.returncode == 0, p.stdout
    assert "build hello #1: success" in p.stdout and "build hello #2: failure" in p.stdout
    # The dependent builder built after the passing build only; the hook-only
    # repository was built from the webhook's change.
    assert "build package #1: success (after hello #1 (success))" in p.stdout, p.stdout
    assert "the webhook answered: 202" in p.stdout and "build site #1: success (webhook)" in p.stdout, p.stdout
    assert "buildunits-runner[" in p.stdout and "hello #2: build finished: failure" in p.stdout
    assert "file://%s/site/index.html" % out in p.stdout
    assert "$ buildunits status" in p.stdout and "/srv/git/hello.git  polled " in p.stdout
    # The nightly timer of the demo's builder, a real systemd timer.
    assert re.search(r"\n\w{3} \d{4}-\d\d-\d\d 02:00:00 \w+ .* buildunits-timer-hello\.timer +"
                     r"buildunits-timer@hello\.service\n", p.stdout), p.stdout
    # The janitor's daily timer, which buildunits.target wants.
    assert re.search(r"\n\w{3} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \w+ .* buildunits-janitor\.timer +"
                     r"buildunits-janitor\.service\n", p.stdout), p.stdout
    # The steps ran in the builder's sandbox, a transient unit, which says
    # which step it ran when.
    assert re.search(r"Started buildunits-build-hello-sandbox-\d+\.service - buildunits hello sandbox on \d+\.",
                     p.stdout), p.stdout
    assert re.search(r"hello #2 step test: started as process \d+\n.*hello #2 step test: exited with status 2",
                     p.stdout), p.stdout
    index = (out / "site" / "index.html").read_text()
    assert "builders/hello/1/index.html" in index and "builders/hello/2/index.html" in index
    assert (out / "site" / "builders" / "hello" / "2" / "index.html").exists()

    # The mail waited in the outbox while the SMTP server was down
    # (`buildunits status`), then arrived, naming the failing step.
    assert re.search(r"\n  outbox: 1 message waiting; the oldest \(mail to dev@example\.org\) queued .*, "
                     r"last error: 127\.0\.0\.1:2525: .*Connection refused\n", p.stdout), p.stdout
    mails = [email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
             for f in sorted((out / "mail" / "new").iterdir())]
    assert len(mails) == 1, mails
    assert mails[0]["Subject"] == "buildunits: hello #2 failure on main (step test)"
    body = mails[0].get_content()
    assert "Step test: failure (exit status 2)" in body and "    got:      Goodbye, world!" in body, body
    assert "  Subject: buildunits: hello #2 failure on main (step test)\n" in p.stdout

    # ExecNotify= ran once, in its own transient unit, as buildunits-build.
    journal = p.stdout.split("$ journalctl -o cat -u 'buildunits-notify-*'\n", 1)[1]
    assert "Started buildunits-notify-hello-2-0.service - buildunits hello #2 ExecNotify= command." in journal
    assert journal.count("ExecNotify: hello #2") == 1, journal
    assert "\nExecNotify: hello #2 failure on main, run as buildunits-build\n" in journal, journal

    # Artifacts=: package #1's tarball of the program hello #1 built, on
    # the site with the sha256 its record has, and builders/package/latest.
    doc = json.loads((out / "site" / "api" / "builders" / "package" / "builds" / "1.json").read_text())
    (art,) = doc["artifacts"]
    assert art["name"] == "dist/hello.tar.gz" and art["href"] == "builders/package/1/artifacts/dist/hello.tar.gz"
    data = (out / "site" / art["href"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == art["sha256"] and len(data) == art["size"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("build/hello").read().decode().endswith('echo "Hello, world!"\n# greet politely\n')
    assert art["sha256"] in (out / "site" / "builders" / "package" / "1" / "index.html").read_text()
    assert os.readlink(out / "site" / "builders" / "package" / "latest") == "1/artifacts"
    assert (out / "site" / "builders" / "package" / "latest" / "dist" / "hello.tar.gz").read_bytes() == data
    assert "file://%s/site/builders/package/latest/dist/hello.tar.gz\n" % out in p.stdout

    # `buildunits keep hello 2` (as root): its page says so.
    page2 = (out / "site" / "builders" / "hello" / "2" / "index.html").read_text()
    assert re.search(r"<dt>kept</dt><dd>kept by root .*: the failure the mail was about", page2), page2
    assert re.search(r"\n  kept: kept by root .*: the failure the mail was about \(the janitor never removes it\)\n",
                     p.stdout), p.stdout
