#!/usr/bin/python3
"""make_screenshot.py: the picture of the waterfall in the README.

Runs the built-in example (share/examples/demo.py --local: the daemons as
plain processes on a private bus, a passing and a failing commit) in a
temporary directory, and saves a screenshot of the waterfall it produced
as docs/waterfall.png (or the path given), 1000x600.

    /usr/bin/python3 tests/make_screenshot.py [OUT.png] [--site DIR] [--size WxH]

--site DIR screenshots an existing site instead of running the demo;
--size sets the window (default 1000x600).
Needs Debian's chromium (`make deps`).  Exits non-zero, saying why, if the
demo or the browser fails.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import browser  # noqa: E402

SIZE = (1000, 600)
DEMO_TIMEOUT = 300


def run_demo(out_dir):
    """Run the local demo with its output in OUT_DIR; the site directory."""
    env = dict(os.environ, BUILDUNITS_DEMO_OUT=out_dir)
    for k in ("NOTIFY_SOCKET", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"):
        env.pop(k, None)
    proc = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "share", "examples", "demo.py"), "--local"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=DEMO_TIMEOUT,
                          text=True)
    site = os.path.join(out_dir, "site")
    # The demo exits 1 unless build 1 passes and build 2 fails: that is the
    # picture we want, so anything else is an error here too.
    if proc.returncode != 0 or not os.path.isfile(os.path.join(site, "index.html")):
        raise SystemExit("make_screenshot: the demo failed (exit status %d):\n%s"
                         % (proc.returncode, proc.stdout[-4000:]))
    return site


def main(argv=None):
    p = argparse.ArgumentParser(description="Save a screenshot of the example's waterfall.")
    p.add_argument("out", nargs="?", default=os.path.join(ROOT, "docs", "waterfall.png"))
    p.add_argument("--site", help="an existing site directory (default: run the demo)")
    p.add_argument("--size", default="%dx%d" % SIZE, help="the window, WIDTHxHEIGHT (default %(default)s)")
    args = p.parse_args(argv)
    try:
        size = tuple(int(x) for x in args.size.lower().split("x"))
        if len(size) != 2 or min(size) < 1:
            raise ValueError
    except ValueError:
        p.error("--size: expected WIDTHxHEIGHT, such as 1000x600")
    tmp = None
    try:
        if args.site:
            site = args.site
        else:
            tmp = tempfile.mkdtemp(prefix="buildunits-screenshot-")
            site = run_demo(tmp)
        browser.screenshot(os.path.join(site, "index.html"), args.out, size=size)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    w, h = browser.png_size(args.out)
    print("%s: %dx%d, %d bytes" % (args.out, w, h, os.path.getsize(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
