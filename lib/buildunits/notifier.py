"""buildunits-notifier: tell people about finished builds.

NAME
    buildunits-notifier - mail, webhooks, forge commit statuses and commands about builds

DESCRIPTION
    Wakes when a runner says a build started or finished (the D-Bus
    signals BuildStarted and BuildFinished) and on the rescan timer, reads
    the build records it has not handled yet, decides who hears about
    each (the rules of buildunits.builder(5), section NOTIFICATIONS:
    Notify=, NotifyBranches=, Mail=, MailAuthors=, Webhook=, ExecNotify=,
    ForgeStatus=, per builder and site-wide) and queues one message per
    destination in the outbox, SPOOL/outbox/, with the spool's hand-over
    (written to tmp/, fsync'd, renamed into new/: the commit point).
    Then it sends what is due from the outbox:

        mail       through the local MTA, `sendmail -oi -t` (Sendmail=),
                   or SMTPServer= with SMTPStartTLS= and SMTPUser=; a
                   plain-text mail with the result, the failing step, the
                   last lines of its log and links to the pages (SiteURL=)
        webhook    POST of the build's JSON document, the site's
                   api/builders/B/builds/N.json, signed:
                   X-Buildunits-Signature: sha256=HMAC-SHA256 of the body
        forge      a commit status on GitHub, Gitea (Forgejo) or GitLab:
                   pending (GitLab: running) when the build starts, its
                   result when it ends
        exec       ExecNotify=: `/bin/sh -c COMMAND` with BUILDUNITS_BUILDER,
                   _NUMBER, _RESULT, _REVISION, _BRANCH, _URL, _REASON and
                   _WORKER in its environment.  Under systemd, the command
                   runs in the boundary of a build step: a transient unit,
                   buildunits-notify-BUILDER-NUMBER-K.service (K: the
                   command's place among the builder's, its own then the
                   site's), which buildunits-launcher(8) starts as the
                   user buildunits-build, the state, configuration and
                   spool out of its sight, the system read-only; the
                   launcher takes the command from the configuration as
                   it reads it, the notifier only names it.  Its output
                   is in the journal (journalctl -u 'buildunits-notify-*').
                   [Daemons] Executor= decides, read at start, as for
                   build steps: auto (units under systemd, when the
                   launcher answers), transient or local.  Otherwise (no
                   systemd, Executor=local) the command runs as the
                   notifier's child, with the notifier's user and unit
                   hardening: it is NOT in the boundary of a build step;
                   the journal says which, when the configuration has
                   one.

    A message is removed from the outbox only once its destination took
    it (sendmail exited 0, the SMTP server accepted the data, the HTTP
    server answered 2xx, the command exited 0).  A notifier killed while
    a command's unit runs finds it at its next start: a running one is
    waited for, one that ended (how, nobody read) is run again.  One that could not be
    sent is deferred: rewritten with its attempts and last error, and
    its file's mtime set to the time of the next attempt, as Postfix's
    deferred queue does, RetrySec= after the first failure, doubling up
    to RetryMaxSec=.  While a destination is down, the other messages for
    it wait as long without being tried.  A message still not sent
    GiveUpSec= after it was queued (5 days), or refused for good (a 5xx
    of SMTP, a 4xx of HTTP but 408 and 429), is given up: a journal
    line, and a mark in STATE/notifier/BUILDER@NUMBER.json (format
    "undelivered"), which says which messages of that build were lost
    and why, and a hint to buildunits-htmlgen, whose page of the build
    says so.

    Which builds it has queued messages for is its cursor,
    STATE/notifier/cursor.json: per builder, the number up to which every
    build is finished and handled, and the handled ones above it.  The
    messages are committed before the cursor moves, so a crash between
    the two queues them again: a crash delivers twice, never not at all.
    A lost signal costs latency: every wake-up reads the builds above
    the cursor.  At its first start the notifier handles only builds
    that finish from then on (no mail for the whole history; a builder
    configured later, likewise).

    The janitor reads the cursor too: it keeps a finished build the
    notifier has still to read (`buildunits janitor`), so a build
    removed while the notifier is down is not one told of to no one.

    `buildunits status` shows the outbox: how many messages wait, the
    oldest's age and its last error.

FILES
    SPOOL/outbox/new/ID          a message to send, not before its mtime
    SPOOL/outbox/tmp/ID          a message being written (swept when stale)
    STATE/notifier/cursor.json   the builds handled
    STATE/notifier/B@N.json      the messages of build B #N given up on
    SPOOL/hints/B@N              B #N's page must show its mark (for htmlgen)
    $CREDENTIALS_DIRECTORY/notify-webhook, notify-github, notify-gitea,
    notify-gitlab, notify-smtp   the secrets (the unit's LoadCredential=)
    /run/buildunits/launcher.sock  buildunits-launcher(8), for ExecNotify= units

SIGNALS
    SIGHUP re-reads the configuration and looks for builds to handle;
    SIGTERM stops (a delivery under way is finished first).
"""

import os
import time

from . import channels, config, daemon, log, notifyrules, records, results, step as stepmod
from .state import NotLinked

GAP_SEC = 600             # a build number with no record this long is a gap (a runner that crashed)
PREVIOUS_LOOKBACK = 50    # builds looked at, down from a build, for the previous one's result
CATCH_UP = 200            # builds of one builder handled in one pass (the rest in the next)
CURSOR = "cursor"
FIRST_LOOK = 20           # builds of each builder looked at, at the first start


class Notifier(daemon.Daemon):
    role = "Notifier"
    program = "buildunits-notifier"
    subscriptions = (("Runner", "BuildStarted"), ("Runner", "BuildFinished"))

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.cursor = None
        self._hinted = set()
        self._timer = None
        self._sent = 0
        self._given_up = 0
        self._waiting = 0
        self._more = False
        self._units = None       # channels.ExecUnits: ExecNotify= as units; None: as children
        self._units_why = "not decided yet"

    # ----------------------------------------------------------- events
    def signal_BuildStarted(self, builder, number, worker):
        self._hinted.add(builder)
        self.wake()

    def signal_BuildFinished(self, builder, number, result):
        self._hinted.add(builder)
        self.wake()

    def startup(self):
        # Decided once, as a runner decides its executor ([Daemons] Executor=).
        self._units, self._units_why = channels.exec_units(self.cfg.executor)
        self._say_exec()

    def on_config(self, old, new):
        self._say_exec()

    def _say_exec(self):
        if not (self.cfg.exec_notify or any(b.exec_notify for b in self.cfg.builders.values())):
            return
        if self._units is not None:
            log.info("ExecNotify= commands run as transient units (buildunits-notify-BUILDER-NUMBER-K.service) "
                     "started by buildunits-launcher, as buildunits-build in the boundary of a build step")
        else:
            log.notice("ExecNotify= commands run as the notifier's children, with its user and limits: "
                       "not isolated as build steps are (%s)" % self._units_why)

    def work(self):
        if self.cursor is None:
            self.cursor = self._load_cursor()
        names = sorted(self.cfg.builders) if self.rescan_due or self._more else sorted(
            b for b in self._hinted if b in self.cfg.builders)
        self.rescan_due = self._more = False
        self._hinted.clear()
        if names:
            self.queue_messages(names)
        self.send_due()
        if self._more:
            self.wake()

    # ------------------------------------------------- builds -> outbox
    def _load_cursor(self):
        path = self.state.notifier_path(CURSOR)
        try:
            rec = records.read(path, "notifier")
        except FileNotFoundError:
            rec = None
        except (records.RecordError, OSError) as e:
            self.state.quarantine(path, getattr(e, "reason", str(e)))
            rec = None
        if rec is None or not isinstance(rec.get("builders"), dict):
            # The first start: the history is not notified; builds that
            # finish from now on are.
            # The newest FIRST_LOOK builds are looked at once: one running
            # now is notified when it finishes; the finished ones are not.
            rec = {"created": time.time(), "builders": {}}
            for b in self.cfg.builders:
                rec["builders"][b] = {"done": max(0, self._latest(b) - FIRST_LOOK), "handled": [], "started": [],
                                      "new": True}
            records.write(path, "notifier", rec)
            log.info("notifier: first start; builds finished from now on are notified")
        return rec

    def _latest(self, builder):
        nums = self.state.recent_numbers(builder, 1)
        return nums[-1] if nums else 0

    def _entry(self, builder):
        e = self.cursor["builders"].get(builder)
        if not isinstance(e, dict) or not isinstance(e.get("done"), int):
            # A builder configured after the first start: its builds
            # finished since then are notified.
            e = self.cursor["builders"][builder] = {"done": 0, "handled": [], "started": [], "new": True}
        for k in ("handled", "started"):
            if not isinstance(e.get(k), list):
                e[k] = []
        return e

    def queue_messages(self, names):
        """Queue the messages of the builds of NAMES (builders) above the
        cursor, then move the cursor.

        Commit points, in order:
        1. each message's rename into outbox/new/ (Spool.deliver_many, one
           fsync of the directory for them all);
        2. the cursor's rename (records.write), which says the builds are
           handled.
        A crash before 1 loses nothing: the cursor has not moved, the next
        start reads the builds again.  A crash between 1 and 2 leaves the
        messages queued and the builds not handled: queued again, sent
        twice.  After 2, only the outbox holds what is left to do."""
        out, changed = [], False
        for name in names:
            b = self.cfg.builders[name]
            e = self._entry(name)
            latest = self._latest(name)
            handled, started = set(e["handled"]), set(e["started"])
            if not self._has_destinations(b):
                # Nothing to tell: the cursor goes past them unread.
                if e["done"] < latest or handled or started:
                    e.update(done=max(e["done"], latest), handled=[], started=[])
                    changed = True
                continue
            top = min(latest, e["done"] + CATCH_UP)
            self._more = self._more or top < latest
            for n in range(e["done"] + 1, top + 1):
                if n in handled:
                    continue
                try:
                    rec = self.state.read_build(name, n)
                except (records.RecordError, OSError, NotLinked) as err:
                    log.warning("notifier: %s #%d cannot be read (%s): not notified" % (name, n, err))
                    handled.add(n)
                    continue
                if rec is None:
                    if self._old_gap(name, n):
                        handled.add(n)
                    continue
                if rec.get("state") != "finished":
                    if n not in started and b.forge_status:
                        pending = self._plan(b, rec, started=True)
                        if pending:          # else (no revision yet) looked at again next time
                            out += pending
                            started.add(n)
                    continue
                if e.get("new") and (rec.get("finished") or 0) < self.cursor.get("created", 0):
                    handled.add(n)
                    continue
                out += self._plan(b, rec)
                handled.add(n)
                started.discard(n)
            done = e["done"]
            while done + 1 in handled:
                done += 1
                handled.discard(done)
            new = {"done": done, "handled": sorted(handled), "started": sorted(s for s in started if s > done)}
            if any(e.get(k) != v for k, v in new.items()):
                e.update(new)
                changed = True
        if out:
            self.spool.deliver_many("outbox", "message", out)     # commit point 1
            log.info("notifier: %d message%s queued" % (len(out), "" if len(out) == 1 else "s"))
        if changed or out:
            records.write(self.state.notifier_path(CURSOR), "notifier", self.cursor)   # commit point 2

    def _has_destinations(self, b):
        return notifyrules.has_destinations(self.cfg, b)

    def _old_gap(self, builder, n):
        try:
            st = os.lstat(self.state.build_dir(builder, n))
        except FileNotFoundError:
            return True
        return time.time() - st.st_mtime > GAP_SEC

    def _plan(self, b, rec, started=False):
        n = rec["number"]
        try:
            return notifyrules.plan(self.cfg, b, rec, None if started else self._previous(b.name, n),
                                    log_tail=lambda i, s: self._log_tail(b.name, n, s), started=started)
        except Exception as e:   # a record no rule can read: said, not retried for ever
            log.error("notifier: cannot make the messages of %s #%d: %s" % (b.name, n, e))
            return []

    def _previous(self, builder, n):
        for m in range(n - 1, max(0, n - 1 - PREVIOUS_LOOKBACK), -1):
            try:
                rec = self.state.read_build(builder, m)
            except (records.RecordError, OSError, NotLinked):
                continue
            if rec and rec.get("state") == "finished" and results.is_result(rec.get("result")) \
                    and rec["result"] not in notifyrules.NOT_A_VERDICT:
                return rec["result"]
        return None

    def _log_tail(self, builder, n, srec):
        name = srec.get("log")
        if not isinstance(name, str) or "/" in name:
            return []
        fd = self.state.open_log(builder, n, name)
        return stepmod.log_tail(fd, notifyrules.LOG_LINES) if fd is not None else []

    # ---------------------------------------------- outbox -> the world
    def send_due(self):
        """Send every message whose time has come, oldest first.

        The commit point of a delivery is the destination's acceptance;
        the message is removed after it (Spool.remove).  A crash between
        the two sends it again at the next start: twice, never not at all.
        A deferral rewrites the message whole (Spool.defer) before setting
        the time of its next attempt: a crash leaves the old or the new
        record, due now or later."""
        now = time.time()
        down = {}            # destination -> time of its next attempt, in this pass
        waiting, soonest = 0, None
        for rid, not_before in self.spool.due("outbox"):
            if self.stopping:
                break
            if not_before > now:
                waiting += 1
                soonest = not_before if soonest is None else min(soonest, not_before)
                continue
            msg = self.spool.read("outbox", rid)
            if msg is None:
                continue
            key = self._destination(msg)
            if key in down:
                # Down a moment ago: this one waits as long, untried.
                self.spool.hold("outbox", rid, down[key])
                waiting += 1
                soonest = down[key] if soonest is None else min(soonest, down[key])
                continue
            if msg.get("event") == "started" and self._finished(msg):
                self.spool.remove("outbox", rid)   # superseded by the result's status
                continue
            self.keepalive()
            try:
                channels.deliver(msg, self.cfg, self._units)
            except channels.Refused as e:
                self.give_up(rid, msg, "refused: %s" % e)
                continue
            except Exception as e:
                why = str(e) if isinstance(e, channels.Deferred) else "%s: %s" % (type(e).__name__, e)
                when = self.defer(rid, msg, why)
                if when is not None:
                    down[key] = when
                    waiting += 1
                    soonest = when if soonest is None else min(soonest, when)
                continue
            self.spool.remove("outbox", rid)        # after the destination's acceptance
            self._sent += 1
            log.info("notifier: %s #%s: %s sent to %s" % (msg.get("builder"), msg.get("number"),
                                                          msg.get("channel"), notifyrules.clean(msg.get("destination"))))
        self._waiting = waiting
        self._arm(soonest)

    def _destination(self, msg):
        ch = msg.get("channel")
        if ch == "mail":
            return ("mail", self.cfg.smtp_server or self.cfg.sendmail)
        if ch in ("webhook", "forge"):
            from urllib.parse import urlsplit
            return (ch, urlsplit(msg.get("url") or "").netloc)
        return (ch, msg.get("destination"))

    def _finished(self, msg):
        try:
            rec = self.state.read_build(msg.get("builder"), msg.get("number"))
        except Exception:
            return False
        return bool(rec) and rec.get("state") == "finished"

    def defer(self, rid, msg, why):
        """MSG could not be sent (WHY): try again later, or give up once it
        is older than GiveUpSec=.  The time of the next attempt, or None."""
        now = time.time()
        attempts = (msg.get("attempts") or 0) + 1
        queued = msg.get("queued") if isinstance(msg.get("queued"), (int, float)) else now
        if now - queued >= self.cfg.notify_give_up:
            self.give_up(rid, msg, "not sent in %s (%d attempts): %s" % (
                config.format_timespan(self.cfg.notify_give_up), attempts, why))
            return None
        delay = min(self.cfg.notify_retry * 2 ** min(attempts - 1, 30), self.cfg.notify_retry_max)
        when = now + max(delay, 0.001)
        fields = {k: v for k, v in msg.items() if k not in ("format", "version")}
        fields.update(attempts=attempts, last_error=why[:2000], last_attempt=now, next_attempt=when)
        self.spool.defer("outbox", rid, "message", fields, when)
        log.warning("notifier: %s #%s: %s to %s deferred (attempt %d, next in %s): %s" % (
            msg.get("builder"), msg.get("number"), msg.get("channel"), notifyrules.clean(msg.get("destination")),
            attempts, config.format_timespan(delay), notifyrules.clean(why, 500)))
        return when

    def give_up(self, rid, msg, why):
        """Give MSG up: its build's mark first (STATE/notifier/B@N.json,
        the commit point), then a hint to the site (SPOOL/hints/B@N, made
        durable: the build's page shows the mark), then the message is
        removed.  A crash before the removal tries the message again (and
        marks and hints again: one entry per destination), so the hint is
        never lost with the message gone."""
        b, n = msg.get("builder"), msg.get("number")
        log.error("notifier: %s #%s: gave up on the %s to %s: %s" % (
            b, n, msg.get("channel"), notifyrules.clean(msg.get("destination")), notifyrules.clean(why, 500)))
        if isinstance(b, str) and isinstance(n, int):
            mark = self.state.read_undelivered(b, n) or {"builder": b, "number": n, "messages": []}
            # One entry per destination: a message queued twice (a crash
            # before the cursor moved) and given up twice is one loss.
            lost = [m for m in mark.get("messages") or [] if isinstance(m, dict)
                    and (m.get("channel"), m.get("destination")) != (msg.get("channel"), msg.get("destination"))]
            lost.append({"id": rid, "channel": msg.get("channel"), "destination": msg.get("destination"),
                         "queued": msg.get("queued"), "given_up": time.time(), "reason": why[:2000],
                         "attempts": msg.get("attempts") or 0})
            mark["messages"] = lost
            records.write(self.state.notifier_path("%s@%d" % (b, n)), "undelivered",
                          {k: v for k, v in mark.items() if k not in ("format", "version")})
            self.spool.hint(b, n)
            self.spool.sync_hints()
        self.spool.remove("outbox", rid)
        self._given_up += 1

    def _arm(self, when):
        if self._timer is not None:
            self._timer.remove()
            self._timer = None
        if when is not None and not self.stopping:
            def fire():
                self._timer = None
                self.wake()
                return False
            self._timer = daemon.Timer(max(0.01, when - time.time()), fire)

    def status_text(self):
        return "%d waiting in the outbox; %d sent, %d given up" % (self._waiting, self._sent, self._given_up)


def main(argv):
    return daemon.main(Notifier, argv, "Tell people about finished builds.")
