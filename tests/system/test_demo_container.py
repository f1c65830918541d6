"""`make demo` stays true: under a real systemd in a container, a passing and
a failing build, the site copied out, the journal lines printed."""

import os
import re
import subprocess

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
