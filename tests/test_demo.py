"""`make demo-local` stays true: the demo script runs start to finish (the
container demo, `make demo`, is tested in tests/system/test_demo.py)."""

import os
import subprocess

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
