"""Headless Chromium for the tests: the DOM after scripts, and screenshots.

    dump_dom(url_or_path)                 the page's DOM as HTML, after its scripts ran
    dump_doms(paths)                      {path: DOM} for many pages, a few browsers at a time
    screenshot(path, out_png, size=)      a PNG of the page as a window of SIZE shows it
    png_size(path)                        (width, height) of a PNG, checking its header

Debian's chromium (`make deps` installs it), each browser with a profile of
its own in a temporary directory that is removed afterwards, and with the
flags that keep it off the network (as root it also needs --no-sandbox).
Nothing is skipped: a missing chromium, a crash, a time-out or an empty
result raises BrowserError, which names what was asked and shows the end
of chromium's stderr.

The DOMs come through the DevTools protocol on a pipe
(--remote-debugging-pipe: JSON messages ended by NUL on file descriptors 3
and 4), so that one browser loads page after page: a browser per page, as
`chromium --dump-dom` is, costs a second or two of start-up each, and a
site has hundreds of pages.  Each page is loaded in a tab of its own,
in real time up to its load event, then given SCRIPT_BUDGET_MS of
virtual time for its timers, and serialized as --dump-dom does.  (Not in
virtual time from the start, as --dump-dom: virtual time jumps to the
next timer whenever the page is idle, and the site's pages reload
themselves after 60 s, so a load could be overtaken by a reload.)
Dialogs a payload opens are accepted, so that they cannot stall the test.
The client is the standard library's: no Selenium, no DevTools package.

A browser that outlives its time-out has its whole process group killed
(the browser, its zygote and renderers), never anything else.
"""

import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
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
    return dump_doms([url_or_path], jobs=1, timeout=timeout, budget_ms=budget_ms)[url_or_path]


def dump_doms(paths, jobs=None, timeout=TIMEOUT, budget_ms=SCRIPT_BUDGET_MS):
    """{path: DOM} of every page in PATHS (dump_dom's), JOBS browsers at a
    time, each loading its share of the pages one after the other."""
    paths = list(dict.fromkeys(paths))
    jobs = max(1, min(jobs or min(3, (os.cpu_count() or 1) + 1), len(paths)))
    shares = [paths[k::jobs] for k in range(jobs)]

    def one(share):
        with Browser(timeout=timeout) as b:
            return {p: b.dom(p, budget_ms) for p in share}
    out = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for doms in pool.map(one, shares):
            out.update(doms)
    return {p: out[p] for p in paths}


# What --dump-dom prints: the doctype, a newline, the document element.
_SERIALIZE = ("(document.doctype ? new XMLSerializer().serializeToString(document.doctype) + '\\n' : '')"
              " + (document.documentElement ? document.documentElement.outerHTML : '')")


class Browser:
    """One headless chromium, driven through the DevTools protocol on a
    pipe: dom(page) for each page, each in a tab of its own.  A context
    manager; TIMEOUT bounds each wait for the browser."""

    def __init__(self, timeout=TIMEOUT):
        self.timeout = timeout
        self._home = tempfile.TemporaryDirectory(prefix="buildunits-chromium-")
        home = self._home.name
        self._err = open(os.path.join(home, "stderr"), "w+b")
        # Our ends stay in this process only (close-on-exec); chromium's are
        # moved to 3 (commands in) and 4 (answers out) by bash, whose
        # redirections, unlike dash's, take descriptors above 9.
        cmd_r, self._w = os.pipe()
        self._r, res_w = os.pipe()
        theirs = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (cmd_r, res_w)]
        os.close(cmd_r)
        os.close(res_w)
        move = 'exec "$0" "$@" 3<&%d 4>&%d %d<&- %d>&-' % (theirs[0], theirs[1], theirs[0], theirs[1])
        self._cmd = [chromium(), *FLAGS, "--user-data-dir=" + os.path.join(home, "profile"),
                     "--remote-debugging-pipe", "about:blank"]
        try:
            self._proc = subprocess.Popen(["/bin/bash", "-c", move, *self._cmd], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=self._err, env=_env(home), cwd=home,
                                          pass_fds=theirs, start_new_session=True)
        except BaseException:
            self._close_pipes()
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        self._buf = b""
        self._next = 0
        self._events = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        _kill_group(self._proc)     # the browser and whatever it started
        self._proc.wait()
        self._close_pipes()
        self._err.close()
        self._home.cleanup()

    def _close_pipes(self):
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass

    def _fail(self, what):
        self._err.flush()
        self._err.seek(0)
        return BrowserError("chromium could not %s\ncommand: %s\nstderr (end):\n%s"
                            % (what, " ".join(self._cmd), _tail(self._err.read())))

    # ------------------------------------------------------ the protocol
    def _send(self, method, params=None, session=None, wait=True):
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        try:
            os.write(self._w, json.dumps(msg).encode("utf-8") + b"\0")
        except OSError as e:
            raise self._fail("take %s (%s)" % (method, e)) from None
        if not wait:
            return None
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._receive(deadline, method)
            if m.get("id") == msg["id"]:
                if "error" in m:
                    raise self._fail("%s: %s" % (method, m["error"]))
                return m.get("result", {})
            if "method" in m:
                self._events.append(m)

    def _receive(self, deadline, what):
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise self._fail("%s within %.0fs" % (what, self.timeout))
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise self._fail("%s: the browser closed its pipe (exit status %s)" % (what, self._proc.poll()))
            self._buf += chunk
        text, _, self._buf = self._buf.partition(b"\0")
        m = json.loads(text)
        if m.get("method") == "Page.javascriptDialogOpening":
            self._send("Page.handleJavaScriptDialog", {"accept": True}, m.get("sessionId"), wait=False)
        elif m.get("method") in ("Inspector.targetCrashed", "Target.targetCrashed"):
            raise self._fail("%s: the page's renderer crashed" % what)
        return m

    def _event(self, what, match):
        """The first event MATCH (a predicate of a message) accepts."""
        for i, m in enumerate(self._events):
            if match(m):
                return self._events.pop(i)
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._receive(deadline, what)
            if match(m):
                return m
            if "method" in m:
                self._events.append(m)

    def dom(self, url_or_path, budget_ms=SCRIPT_BUDGET_MS):
        """The DOM of the page at URL_OR_PATH, as dump_dom's."""
        url = to_url(url_or_path)
        # A failure below leaves the tab open: the browser goes with it
        # (dump_doms' with), and a wait for its close would hide the cause.
        target = self._send("Target.createTarget", {"url": "about:blank"})["targetId"]
        tab = self._send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self._send("Page.enable", {}, tab)
        self._send("Page.setLifecycleEventsEnabled", {"enabled": True}, tab)
        nav = self._send("Page.navigate", {"url": url}, tab)
        if nav.get("errorText"):
            raise self._fail("load %s: %s" % (url, nav["errorText"]))
        # The load of this navigation (its loader), not of one the page
        # started itself.  It loads in real time: virtual time, once on,
        # jumps to the next timer whenever the page is idle, and the site's
        # pages reload themselves after 60 s.
        self._event("load %s" % url, lambda m: m.get("method") == "Page.lifecycleEvent"
                    and m.get("sessionId") == tab and m["params"].get("name") == "load"
                    and m["params"].get("loaderId") == nav.get("loaderId"))
        self._send("Emulation.setVirtualTimePolicy",
                   {"policy": "pauseIfNetworkFetchesPending", "budget": budget_ms}, tab)
        self._event("let %s run its timers" % url, lambda m: m.get("sessionId") == tab
                    and m.get("method") == "Emulation.virtualTimeBudgetExpired")
        got = self._send("Runtime.evaluate", {"expression": _SERIALIZE, "returnByValue": True}, tab)
        self._send("Target.closeTarget", {"targetId": target})
        self._events = [m for m in self._events if "sessionId" not in m]
        if "exceptionDetails" in got:
            raise self._fail("serialize %s: %s" % (url, got["exceptionDetails"].get("text")))
        dom = got.get("result", {}).get("value") or ""
        if not dom.strip():
            raise BrowserError("chromium dumped an empty DOM for %s" % url_or_path)
        return dom + "\n"


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
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=_env(home), cwd=home, start_new_session=True)
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


def _env(home):
    """The environment of a chromium whose HOME is HOME: the XDG
    directories there too, so that the launcher script and chromium's
    caches stay out of the real home; no display."""
    env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, "config"),
               XDG_CACHE_HOME=os.path.join(home, "cache"), XDG_DATA_HOME=os.path.join(home, "data"))
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return env


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
