"""A real SMTP server for the tests: Debian's python3-aiosmtpd, recording
what it receives (the one module that imports aiosmtpd).

    with SMTPServer() as s:        # listens on 127.0.0.1:s.port
        ...
        s.wait_messages(1)         # [email.message.EmailMessage], with a deadline
        s.stop(); s.start()        # down for a while, then back on the same port (s.listening)
        s.hold()                   # DATA is not answered until s.release()
        s.answer = f                # f(message) -> None (accept, 250) or a reply ("451 later")

    SMTPServer(tls_context=ctx)                  # STARTTLS required before MAIL
    SMTPServer(tls_context=ctx, users={"ci": "pw"})   # AUTH (PLAIN, LOGIN) required too,
        s.logins                                      # over TLS only: [(login, accepted)]
"""

import email
import email.policy
import socket
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

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


def _authenticator(server):
    def check(smtp, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and server.users.get(
            auth_data.login.decode("utf-8", "replace")) == auth_data.password.decode("utf-8", "replace")
        with server._lock:
            server.logins.append((auth_data.login.decode("utf-8", "replace") if isinstance(auth_data, LoginPassword)
                                  else None, ok))
        return AuthResult(success=ok, handled=False)     # aiosmtpd answers (235, or 535)
    return check


class SMTPServer:
    def __init__(self, port=None, tls_context=None, users=None):
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
        self.users = dict(users or {})
        self.logins = []
        self._controller = None

    def start(self):
        kw = {"tls_context": self._tls, "require_starttls": True} if self._tls else {}
        if self.users:
            kw.update(authenticator=_authenticator(self), auth_required=True, auth_require_tls=True)
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
