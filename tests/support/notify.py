"""NOTIFY_SOCKET, as systemd provides it: what a daemon says with sd_notify."""

import os
import socket
import threading
import time

from .wait import wait_for


class NotifyReader:
    """A NOTIFY_SOCKET: binds a datagram socket at PATH and collects what
    is sent to it, each datagram as one message string.

    A thread drains the socket continuously: a unix datagram socket whose
    queue is full blocks the sender, and a daemon blocked in sd_notify
    would look like a hang.
    """

    def __init__(self, path, name=""):
        self.path = path
        self.name = name
        self.messages = []
        self.arrivals = []
        self._lock = threading.Lock()
        self._closed = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode("latin-1"))
                self.arrivals.append(time.time())   # when each message came (benchmarks)

    def snapshot(self):
        with self._lock:
            return list(self.messages)

    def lines(self, start=0):
        """Every KEY=VALUE line of every message from index START, in order."""
        return [ln for m in self.snapshot()[start:] for ln in m.split("\n") if ln]

    def has(self, line, start=0):
        return line in self.lines(start)

    def statuses(self, start=0):
        return [ln[len("STATUS="):] for ln in self.lines(start) if ln.startswith("STATUS=")]

    def status(self):
        """The latest STATUS= text, or None."""
        s = self.statuses()
        return s[-1] if s else None

    def arrival(self, line):
        """When the first message holding the line LINE came (time.time()), or None."""
        with self._lock:
            for t, m in zip(self.arrivals, self.messages):
                if line in m.split("\n"):
                    return t
        return None

    def mark(self):
        with self._lock:
            return len(self.messages)

    def wait_for(self, predicate, timeout=10.0, what=None, start=0):
        """Wait until PREDICATE(messages from START) is true; return its value."""
        return wait_for(lambda: predicate(self.snapshot()[start:]), timeout=timeout,
                        what=what or "notify messages%s" % (" from " + self.name if self.name else ""),
                        describe=self.describe)

    def wait_line(self, line, timeout=10.0, start=0):
        """Wait for a message containing the line LINE (e.g. "READY=1")."""
        return self.wait_for(lambda msgs: any(line in m.split("\n") for m in msgs), timeout=timeout,
                             what="%s on NOTIFY_SOCKET%s" % (line, " of " + self.name if self.name else ""),
                             start=start)

    def describe(self):
        return "notify messages%s:\n%s" % (" of " + self.name if self.name else "",
                                           "\n".join("  %r" % m for m in self.snapshot()) or "  (none)")

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._thread.join(2)
        # What the process sent before it exited is still queued: keep it.
        self.sock.setblocking(False)
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                break
            with self._lock:
                self.messages.append(data.decode("latin-1"))
                self.arrivals.append(time.time())
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
