"""Headless Chromium for the tests: the DOM after scripts, and screenshots.

    dump_dom(url_or_path)                 the page's DOM as HTML, after its scripts ran
    dump_doms(paths)                      {path: DOM} for many pages, a few browsers at a time
    screenshot(path, out_png, size=)      a PNG of the page as a window of SIZE shows it
    png_size(path)                        (width, height) of a PNG, checking its header

Each call starts Debian's chromium (`make deps` installs it) once, with a
profile of its own in a temporary directory that is removed afterwards, and
with the flags that keep it off the network (as root it also needs
--no-sandbox).  Nothing is skipped: a missing chromium, a crash, a time-out
or an empty result raises BrowserError, which names the command and shows the
end of chromium's stderr.

A call that outlives its time-out has its whole process group killed (the
browser, its zygote and renderers), never anything else.

Only the standard library: no Selenium, no DevTools client.
"""

import os
import shutil
import signal
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIMEOUT = 60.0 * float(os.environ.get("BUILDUNITS_TEST_TIMEOUT_SCALE", "1") or 1)
# Virtual time a page gets to run its timers and load events before the DOM
# is taken; virtual, so it costs no wall-clock time on a page that loads
# nothing from the network.  Below the pages' 60 s meta refresh.
SCRIPT_BUDGET_MS = 3000

# Without these, chromium as root refuses to start, or starts and keeps
# trying to reach Google (component updates, sync, QUIC probes).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-breakpad",
    "--metrics-recording-only",
    "--mute-audio",
)


class BrowserError(RuntimeError):
    """Chromium is missing, failed, timed out, or produced nothing."""


def chromium():
    """The chromium program: $BUILDUNITS_CHROMIUM, else chromium on PATH."""
    exe = os.environ.get("BUILDUNITS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        raise BrowserError("chromium not found (%s): the browser tests need Debian's chromium; "
                           "`make deps` installs it (apt-get install chromium)" % exe)
    return exe


def to_url(url_or_path):
    """A URL chromium can open: URLs pass through, paths become file:// URLs."""
    s = str(url_or_path)
    scheme = urlsplit(s).scheme
    if scheme and len(scheme) > 1:     # "C:" style paths do not happen here; one letter is not a scheme
        return s
    return Path(os.path.abspath(s)).as_uri()


def dump_dom(url_or_path, timeout=TIMEOUT, budget_ms=SCRIPT_BUDGET_MS):
    """The DOM of the page at URL_OR_PATH serialized as HTML, once it has
    loaded and its scripts and timers have had BUDGET_MS of virtual time."""
    out = _run(["--virtual-time-budget=%d" % budget_ms, "--dump-dom", to_url(url_or_path)],
               timeout, what="dump the DOM of %s" % url_or_path)
    if not out.strip():
        raise BrowserError("chromium dumped an empty DOM for %s" % url_or_path)
    # A page's text may hold anything, invalid UTF-8 included; chromium
    # writes the DOM as UTF-8, so "replace" only shows what is already U+FFFD.
    return out.decode("utf-8", errors="replace")


def dump_doms(paths, jobs=None, **kw):
    """{path: DOM} of every page in PATHS, JOBS browsers at a time."""
    paths = list(paths)
    jobs = jobs or min(4, (os.cpu_count() or 1) + 1)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        doms = list(pool.map(lambda p: dump_dom(p, **kw), paths))
    return dict(zip(paths, doms))


def screenshot(url_or_path, out_png, size=(1280, 900), timeout=TIMEOUT):
    """Save a PNG of the page as a SIZE (width, height) window shows it;
    return OUT_PNG.  The PNG's header is checked."""
    out_png = os.path.abspath(out_png)
    os.makedirs(os.path.dirname(out_png), exist_ok=True)
    tmp = out_png + ".tmp.png"   # chromium writes in place; rename once it is whole
    try:
        _run(["--hide-scrollbars", "--window-size=%d,%d" % tuple(size),
              "--run-all-compositor-stages-before-draw", "--virtual-time-budget=%d" % SCRIPT_BUDGET_MS,
              "--screenshot=%s" % tmp, to_url(url_or_path)],
             timeout, what="screenshot %s" % url_or_path)
        if not os.path.exists(tmp):
            raise BrowserError("chromium wrote no screenshot of %s" % url_or_path)
        png_size(tmp)
        os.rename(tmp, out_png)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_png


def png_size(path):
    """(width, height) of the PNG at PATH; BrowserError if it is not one."""
    with open(path, "rb") as f:
        head = f.read(24)
    # The signature, then the IHDR chunk: length (4), type (4), width, height.
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise BrowserError("%s is not a PNG (starts %r)" % (path, head[:16]))
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _run(args, timeout, what):
    """Run chromium with FLAGS, a fresh profile and ARGS; its stdout (bytes)."""
    exe = chromium()
    with tempfile.TemporaryDirectory(prefix="buildunits-chromium-") as home:
        profile = os.path.join(home, "profile")
        cmd = [exe, *FLAGS, "--user-data-dir=" + profile, *args]
        # HOME and XDG dirs in the temporary directory too: the launcher
        # script and chromium's caches stay out of the real home.
        env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, "config"),
                   XDG_CACHE_HOME=os.path.join(home, "cache"), XDG_DATA_HOME=os.path.join(home, "data"))
        env.pop("DISPLAY", None)
        env.pop("WAYLAND_DISPLAY", None)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, cwd=home, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            raise BrowserError("chromium did not %s within %.0fs\ncommand: %s\nstderr (end):\n%s"
                               % (what, timeout, " ".join(cmd), _tail(err)))
        finally:
            # Helpers that outlive the browser (they should not) go with it.
            _kill_group(proc)
        if proc.returncode != 0:
            raise BrowserError("chromium failed to %s (exit status %d)\ncommand: %s\nstderr (end):\n%s"
                               % (what, proc.returncode, " ".join(cmd), _tail(err)))
        return out


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # our own session: start_new_session=True
    except (ProcessLookupError, PermissionError):
        pass


def _tail(err, n=2000):
    text = err.decode("utf-8", errors="replace")
    # Drop the D-Bus complaints of a machine without a session bus: noise.
    lines = [ln for ln in text.splitlines() if "dbus" not in ln.lower()]
    return "\n".join(lines)[-n:]
