"""A real SMTP server for the tests: Debian's python3-aiosmtpd, recording
what it receives (the one module that imports aiosmtpd).

    with SMTPServer() as s:        # listens on 127.0.0.1:s.port
        ...
        s.wait_messages(1)         # [email.message.EmailMessage], with a deadline
        s.stop(); s.start()        # down for a while, then back on the same port (s.listening)
        s.hold()                   # DATA is not answered until s.release()
        s.answer = f                # f(message) -> None (accept, 250) or a reply ("451 later")
"""

import email
import email.policy
import socket
import threading

from aiosmtpd.controller import Controller

from .wait import wait_for


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler:
    def __init__(self, server):
        self.server = server

    async def handle_DATA(self, smtp, session, envelope):
        import asyncio
        self.server.entered.set()
        await asyncio.get_event_loop().run_in_executor(None, self.server._gate.wait)
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        reply = self.server.answer(msg) if self.server.answer else None
        if reply:
            with self.server._lock:
                self.server.refused.append(msg)
            return reply
        with self.server._lock:
            self.server.messages.append(msg)
            self.server.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


class SMTPServer:
    def __init__(self, port=None, tls_context=None):
        self.port = port or free_port()
        self.messages = []
        self.envelopes = []
        self.refused = []
        self.answer = None
        self.entered = threading.Event()
        self._gate = threading.Event()
        self._gate.set()
        self._lock = threading.Lock()
        self._tls = tls_context
        self._controller = None

    def start(self):
        kw = {"tls_context": self._tls, "require_starttls": True} if self._tls else {}
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, **kw)
        self._controller.start()
        return self

    def stop(self):
        if self._controller is not None:
            self._gate.set()
            self._controller.stop()
            self._controller = None

    @property
    def listening(self):
        """True between start() and stop()."""
        return self._controller is not None

    def hold(self):
        self.entered.clear()
        self._gate.clear()

    def release(self):
        self._gate.set()

    def wait_messages(self, n, timeout=30.0):
        def enough():
            with self._lock:
                return list(self.messages) if len(self.messages) >= n else None
        return wait_for(enough, timeout=timeout, what="%d message(s) at the SMTP server" % n,
                        describe=lambda: "received %d" % len(self.messages))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
