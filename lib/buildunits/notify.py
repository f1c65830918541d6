"""sd_notify(3) for the daemons: the only module that imports sdnotify.

READY=1 after the startup rescan, STATUS= for what the daemon is doing,
WATCHDOG=1 when systemd set WATCHDOG_USEC, STOPPING=1 on the way out.
Outside systemd (no NOTIFY_SOCKET) every call does nothing.
STATUS= text is reduced to printable ASCII: sdnotify drops text it cannot
encode as latin-1, and `systemctl status` shows it in any locale.
"""

import os
import re

try:
    import sdnotify
except ImportError:  # pragma: no cover - the Debian package is a dependency
    sdnotify = None


def _ascii(text):
    return re.sub(r"[^\x20-\x7e]", "?", text)[:480]


class Notifier:
    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        self._n = None
        if env.get("NOTIFY_SOCKET") and sdnotify is not None:
            self._n = sdnotify.SystemdNotifier()
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_sec = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_sec = int(usec) / 1e6
        self._status = None     # the last STATUS= sent, as sent
        self._note = None

    def _send(self, text):
        if self._n is not None:
            self._n.notify(text)

    def _full(self, text):
        return "%s; %s" % (self._note, text) if self._note and text else (self._note or text)

    def ready(self, status=None):
        status = self._full(status)
        self._send("READY=1" + ("\nSTATUS=" + _ascii(status) if status else ""))
        self._status = status

    def status(self, text):
        text = self._full(text)
        if text != self._status:
            self._status = text
            self._send("STATUS=" + _ascii(text))

    def note(self, text):
        """Put TEXT before every STATUS= from now on (None: no more): a
        standing condition, such as a configuration on disk that was
        refused, that the passing status must not hide."""
        self._note = text

    def reloading(self):
        self._send("RELOADING=1")

    def reloaded(self, status=None):
        status = self._full(status)
        self._send("READY=1" + ("\nSTATUS=" + _ascii(status) if status else ""))
        self._status = status

    def stopping(self, status="stopping"):
        self._send("STOPPING=1\nSTATUS=" + _ascii(status))

    def watchdog(self):
        self._send("WATCHDOG=1")
