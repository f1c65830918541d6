"""The notifier's channels: one message delivered, or why not.

deliver(message, cfg, ...) sends one "message" record (notifyrules.py made
it) and returns when the destination has ACCEPTED it: sendmail(8) exited
0, the SMTP server answered 250 to the end of DATA, the HTTP server
answered 2xx, the ExecNotify= command exited 0.  Otherwise it raises
Deferred (try again later: a connection refused or timed out, a 4xx of
SMTP, a 5xx, 408 or 429 of HTTP, a command that failed) or Refused (the
destination said no for good: a 5xx of SMTP, another 4xx of HTTP; the
notifier gives up on it at once).  Only this module talks to the outside.

Secrets are systemd credentials (the unit's LoadCredential=): the file
$CREDENTIALS_DIRECTORY/NAME, or, run by hand, CredentialsDirectory=/NAME;
one trailing newline is dropped, and "none" (the unit's SetCredential=
fallback) is no secret.  They are read at each delivery, so a secret put
in place later is used without a restart.
"""

import hashlib
import hmac
import http.client
import json
import os
import signal
import smtplib
import ssl
import stat
import subprocess
from urllib.parse import urlsplit

from . import __version__, credentials

USER_AGENT = "buildunits-notifier/" + __version__
OUTPUT_KEPT = 2000       # bytes of a failed command's output, in the error


class Deferred(Exception):
    """The destination could not take the message now; try again later."""


class Refused(Exception):
    """The destination refused the message for good."""


def read_secret(cfg, name):
    """The bytes of credential NAME, or None (missing, empty, "none")."""
    directory = os.environ.get(credentials.VARIABLE) or cfg.credentials_directory
    if not name or not credentials.valid_name(name):
        return None
    try:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        value = f.read(64 * 1024)
    value = value[:-2] if value.endswith(b"\r\n") else value[:-1] if value.endswith(b"\n") else value
    return None if value in (b"", b"none") else value


def deliver(msg, cfg, units=None):
    """Send MSG (a "message" record) under CFG; see the module's docstring.
    UNITS (an ExecUnits, or None): how ExecNotify= commands run."""
    channel = msg.get("channel")
    if channel == "mail":
        return smtp(msg, cfg) if cfg.smtp_server else sendmail(msg, cfg)
    if channel == "webhook":
        return webhook(msg, cfg)
    if channel == "forge":
        return forge(msg, cfg)
    if channel == "exec":
        return units.run(msg, cfg) if units is not None else run(msg, cfg)
    raise Refused("unknown channel %r" % (channel,))


# ----------------------------------------------------------------- mail
def sendmail(msg, cfg):
    """The local MTA: `sendmail -oi -t`, the message on its standard input
    (recipients from its To: header, which notifyrules.py made)."""
    data = msg["message"].replace("\r\n", "\n").encode("utf-8")
    try:
        p = subprocess.run([cfg.sendmail, "-oi", "-t"], input=data, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=cfg.notify_timeout, start_new_session=True)
    except FileNotFoundError:
        raise Deferred("%s: not found (install an MTA, or set SMTPServer=)" % cfg.sendmail)
    except subprocess.TimeoutExpired:
        raise Deferred("%s did not finish within %gs" % (cfg.sendmail, cfg.notify_timeout))
    except OSError as e:
        raise Deferred("%s: %s" % (cfg.sendmail, e.strerror))
    if p.returncode != 0:
        raise Deferred("%s exited with status %d: %s" % (cfg.sendmail, p.returncode, _output(p.stdout)))


def smtp(msg, cfg):
    """SMTPServer=: SMTP, with STARTTLS (SMTPStartTLS=yes, certificate
    checked) and AUTH (SMTPUser=, the password the credential
    SMTPCredential=) when configured.

    A login the server refuses (535, and any other answer to AUTH) is
    Deferred, not Refused, as Postfix's smtp_sasl_auth_soft_bounce does:
    it is the configuration that is wrong, not the message, and the
    credential is read again at each attempt, so once its file is right
    the next retry sends every message waiting.  So is a server that
    offers no AUTH (one that offers it only after STARTTLS, say).  The
    error names the user and the credential, never the password."""
    try:
        with smtplib.SMTP(cfg.smtp_server, cfg.smtp_port, timeout=cfg.notify_timeout) as s:
            s.ehlo()
            if cfg.smtp_starttls:
                s.starttls(context=ssl.create_default_context())
                s.ehlo()
            if cfg.smtp_user:
                password = read_secret(cfg, cfg.smtp_credential)
                if password is None:
                    raise Deferred("no credential %s for SMTPUser=%s" % (cfg.smtp_credential, cfg.smtp_user))
                try:
                    s.login(cfg.smtp_user, password.decode("utf-8", "replace"))
                except smtplib.SMTPAuthenticationError as e:
                    raise Deferred("%s:%d refused the login of SMTPUser=%s (%d %s): check the credential %s" % (
                        cfg.smtp_server, cfg.smtp_port, cfg.smtp_user, e.smtp_code, _text(e.smtp_error),
                        cfg.smtp_credential))
                except smtplib.SMTPNotSupportedError:
                    raise Deferred("%s:%d offers no AUTH for SMTPUser=%s%s" % (
                        cfg.smtp_server, cfg.smtp_port, cfg.smtp_user,
                        "" if cfg.smtp_starttls else " (it may want SMTPStartTLS=yes first)"))
            s.sendmail(msg["sender"], msg["recipients"], msg["message"].encode("utf-8"))
    except smtplib.SMTPRecipientsRefused as e:
        codes = [c for c, _t in e.recipients.values()]
        text = "; ".join("%s: %d %s" % (a, c, _text(t)) for a, (c, t) in e.recipients.items())
        raise (Refused if all(c >= 500 for c in codes) else Deferred)("recipients refused: " + text)
    except smtplib.SMTPResponseException as e:
        raise (Refused if e.smtp_code >= 500 else Deferred)("%s:%d said %d %s" % (
            cfg.smtp_server, cfg.smtp_port, e.smtp_code, _text(e.smtp_error)))
    except (smtplib.SMTPException, OSError) as e:
        raise Deferred("%s:%d: %s" % (cfg.smtp_server, cfg.smtp_port, e))


# ----------------------------------------------------------------- HTTP
def post(url, body, headers, timeout):
    """POST BODY (bytes) to URL; the status.  Raises Deferred or Refused.
    No redirect is followed (a status API does not move)."""
    u = urlsplit(url)
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    kw = {"context": ssl.create_default_context()} if u.scheme == "https" else {}
    conn = cls(u.hostname, u.port, timeout=timeout, **kw)
    path = (u.path or "/") + ("?" + u.query if u.query else "")
    try:
        conn.request("POST", path, body=body, headers=dict(headers, **{"User-Agent": USER_AGENT,
                                                                       "Content-Length": str(len(body))}))
        r = conn.getresponse()
        answer = r.read(OUTPUT_KEPT)
    except (OSError, http.client.HTTPException) as e:
        raise Deferred("%s: %s" % (_where(u), e))
    finally:
        conn.close()
    if 200 <= r.status < 300:
        return r.status
    why = "%s answered %d %s: %s" % (_where(u), r.status, r.reason, _output(answer))
    if r.status in (408, 429) or r.status >= 500 or 300 <= r.status < 400:
        raise Deferred(why)
    raise Refused(why)


def webhook(msg, cfg):
    """Webhook=: the build's JSON document, signed as buildunits-webhook
    checks its generic hook: X-Buildunits-Signature: sha256=HMAC-SHA256
    of the body with the credential WebhookCredential= (unsigned when it
    is missing)."""
    body = json.dumps(msg["body"], ensure_ascii=False, sort_keys=True).encode("utf-8")
    headers = {"Content-Type": "application/json", "X-Buildunits-Event": "build-" + msg.get("event", "finished"),
               "X-Buildunits-Delivery": msg["id"]}
    secret = read_secret(cfg, msg.get("credential"))
    if secret is not None:
        headers["X-Buildunits-Signature"] = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    post(msg["url"], body, headers, cfg.notify_timeout)


def forge(msg, cfg):
    """ForgeStatus=: a commit status, with the forge's token (credential
    ForgeCredential=, default notify-FORGE) as each forge documents it."""
    token = read_secret(cfg, msg.get("credential"))
    if token is None:
        raise Deferred("no credential %s (the %s token)" % (msg.get("credential"), msg["forge"]))
    token = token.decode("ascii", "replace").strip()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if msg["forge"] == "github":
        headers.update({"Authorization": "Bearer " + token, "Accept": "application/vnd.github+json",
                        "X-GitHub-Api-Version": "2022-11-28"})
    elif msg["forge"] == "gitea":
        headers["Authorization"] = "token " + token
    else:
        headers["PRIVATE-TOKEN"] = token
    post(msg["url"], json.dumps(msg["body"], ensure_ascii=False).encode("utf-8"), headers, cfg.notify_timeout)


# ----------------------------------------------------------------- exec
def exec_facts(msg):
    """The build's facts of the exec message MSG, as the command's environment."""
    return {k: v for k, v in (msg.get("environment") or {}).items()
            if isinstance(k, str) and isinstance(v, str) and k.startswith("BUILDUNITS_") and "\0" not in v}


def run(msg, cfg):
    """ExecNotify= without systemd: `/bin/sh -c COMMAND` with the build's
    facts in its environment (and PATH), as the notifier's child: NOT in
    the boundary of a build step (buildunits-notifier(8) says so)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    env.update(exec_facts(msg))
    p = subprocess.Popen(["/bin/sh", "-c", msg["command"]], env=env, cwd="/", stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=cfg.notify_timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.communicate()
        raise Deferred("did not finish within %gs (killed)" % cfg.notify_timeout)
    if p.returncode != 0:
        raise Deferred("exited with status %d: %s" % (p.returncode, _output(out)))


def exec_units(setting):
    """(ExecUnits, None) when ExecNotify= commands run as transient units,
    else (None, why not): [Daemons] Executor= decides as it does for the
    runners' steps (auto: under systemd, with buildunits-launcher
    answering; transient: always, a launcher that does not answer defers
    the messages; local: never)."""
    if setting == "local":
        return None, "Executor=local"
    from . import executor
    if setting != "transient" and not executor.under_systemd():
        return None, "not under systemd"
    units = ExecUnits()
    if setting != "transient":
        try:
            units.launcher.request("probe")
        except OSError as e:
            return None, "cannot start units: %s" % (e.strerror or e)
    return units, None


class ExecUnits:
    """ExecNotify= commands as transient units, buildunits-notify-BUILDER-
    NUMBER-K.service, which buildunits-launcher(8) starts in the boundary
    of a build step (user buildunits-build, the state, configuration and
    spool out of sight, the system read-only, no privileges); LAUNCHER and
    SYSTEMD as executor_unit has them (the socket, the system bus)."""

    def __init__(self, launcher=None, systemd=None, poll_max=0.25):
        from . import executor_unit
        self.launcher = launcher or executor_unit.LauncherClient()
        self.systemd = systemd or executor_unit.Systemd()
        self.poll_max = poll_max

    def run(self, msg, cfg):
        """Run MSG's command in its unit and wait for its end; Deferred or
        Refused as run() raises them.

        The message is the truth, the unit only an attempt at it: the
        notifier removes the message once this returns (the command exited
        0), never before.  Killed while the unit runs, it leaves the
        message queued and the unit loaded (RemainAfterExit=); its next
        start delivers the message again, and the launcher, finding the
        unit, lets a running one go on (this waits for it: one run) or runs
        an ended one again (its end was never read: two runs).  At least
        once, as every channel."""
        import time
        from . import executor_unit as eu, launcher as lmod, notifyrules
        b = cfg.builders.get(msg.get("builder"))
        command = msg.get("command")
        if b is None or command not in notifyrules.exec_commands(cfg, b):
            # The launcher runs only what the configuration says.
            raise Refused("%r is no longer an ExecNotify= command of builder %s: not run"
                          % (command, msg.get("builder")))
        fields = {"builder": msg["builder"], "number": msg["number"],
                  "digest": hashlib.sha256(command.encode("utf-8")).hexdigest(),
                  "environment": {k: v for k, v in exec_facts(msg).items() if k in notifyrules.EXEC_FACTS}}
        try:
            reply = self.launcher.request("notify", fields)
        except OSError as e:
            raise Deferred("cannot start its unit: %s" % (e.strerror or e))
        unit = reply.get("unit")
        if not isinstance(unit, str) or not unit.startswith(eu.NOTIFY_PREFIX) or not lmod.UNIT_RE.fullmatch(unit):
            raise Deferred("buildunits-launcher answered no unit")
        if reply.get("started") is False:
            from . import log
            log.notice("notifier: %s #%s: the unit %s of an earlier attempt still runs the command: "
                       "waiting for its end" % (msg["builder"], msg["number"], unit))
        deadline = time.monotonic() + cfg.notify_timeout + lmod.NOTIFY_GRACE_SEC + 10
        delay = 0.01
        while True:
            st = self.systemd.get_some(unit, eu.UNIT, eu.STATE)
            if st is None or lmod.ended_state(st):
                break
            if time.monotonic() > deadline:
                # systemd stops it at RuntimeMaxSec=; this is in case it did not.
                self._release(unit, kill=True)
                raise Deferred("its unit %s did not end within %gs (stopped)" % (unit, cfg.notify_timeout))
            time.sleep(delay)
            delay = min(delay * 2, self.poll_max)
        svc = self.systemd.get_some(unit, eu.SERVICE, ("ExecMainCode", "ExecMainStatus", "Result")) or {}
        self._release(unit)
        see = "journalctl -u %s" % unit
        if not svc.get("ExecMainCode"):
            raise Deferred("its unit %s ended without running it (%s)" % (unit, see))
        if svc.get("Result") == "timeout":
            raise Deferred("did not finish within %gs, stopped by systemd (%s)" % (cfg.notify_timeout, see))
        code = eu.exit_code(svc["ExecMainCode"], svc.get("ExecMainStatus", 0))
        if code != 0:
            raise Deferred("%s in its unit (its output: %s)" % (
                "exited with status %d" % code if code > 0 else "killed by signal %d" % -code, see))

    def _release(self, unit, kill=False):
        try:
            if kill:
                self.launcher.request("kill", {"unit": unit, "signal": "SIGKILL"})
            self.launcher.request("release", {"unit": unit})
        except OSError:
            pass    # left loaded: the launcher releases an ended one before its next run


def _output(data):
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    text = " ".join(text.split())
    return text[:OUTPUT_KEPT] or "(no output)"


def _text(t):
    return _output(t if isinstance(t, bytes) else str(t).encode())


def _where(u):
    return "%s://%s" % (u.scheme, u.netloc.rpartition("@")[2])
