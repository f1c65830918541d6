"""A daemon object in the test's own process: no subprocess, no bus.

The per-module tests (test_poller, test_scheduler, test_runner,
test_htmlgen, test_daemon, test_layout) build the real daemon class over a
test's directories, with NoBus and a RecordingNotifier, and drive it by
calling its methods (and, where it arms timers or child watches, by
iterating GLib's main context until an event, with a deadline).
"""

import io
import os

from buildunits import config, log, notify, paths
from buildunits.bus import NoBus


class RecordingNotifier(notify.Notifier):
    """The real Notifier (its STATUS= composition), sending into a list."""

    def __init__(self):
        super().__init__(environ={})
        self.sent = []

    def _send(self, text):
        self.sent.append(text)

    def statuses(self):
        """The STATUS= texts sent, in order."""
        return [line[len("STATUS="):] for m in self.sent for line in m.split("\n") if line.startswith("STATUS=")]


def dirs(root):
    """The four directories under ROOT."""
    root = str(root)
    return paths.Dirs(config=os.path.join(root, "config"), spool=os.path.join(root, "spool"),
                      state=os.path.join(root, "state"), site=os.path.join(root, "site"))


def write_builders(d, builders):
    """Write {NAME: TEXT} as D's builders/NAME.builder files."""
    os.makedirs(os.path.join(d.config, "builders"), exist_ok=True)
    for name, text in builders.items():
        with open(os.path.join(d.config, "builders", name + ".builder"), "w") as f:
            f.write(text)


def make(cls, d, args=None):
    """An instance of the daemon class CLS over the directories D, with its
    configuration loaded from D.config, no bus and a RecordingNotifier."""
    return cls(d, config.load(d.config), NoBus(), RecordingNotifier(), args)


def capture_log(monkeypatch):
    """Send the daemons' log lines to a buffer; a function returning them
    (without the identifier) as plain text."""
    buf = io.StringIO()
    monkeypatch.setattr(log, "_journal", None)
    monkeypatch.setattr(log, "_stream", buf)
    return lambda: [line.split(": ", 1)[1] for line in buf.getvalue().splitlines()]
