"""Who hears about which build, and what the messages say: pure, no I/O.

The notifier (notifier.py) reads a finished build's record and the result
of the builder's previous build, and asks plan() for the messages to
queue; each is a dict of the fields of a "message" record (the outbox,
spool.py), complete: delivery reads nothing but the message (and the
secret it names).

Rules.  A builder has two: its own ([Notify] of its file) and the site's
([Notify] of buildunits.conf); each is applied on its own, and what both
send to is sent once (one mail to the union of their recipients, one POST
per URL, one run per command).  A rule applies to a build when its
branch matches one of NotifyBranches= (globs) and its result one of the
Notify= modes (Buildbot's):

    failing    the result is failure
    passing    the result is success
    warnings   the result is warnings
    exception  the result is exception
    change     the result differs from the previous build's (none before: no change)
    problem    a failure whose previous build passed (success or warnings)
    all        any result

The previous build is the nearest lower-numbered finished build of the
builder whose result is not retry or cancelled (an interrupted attempt, a
cancel: neither says anything of the code).  A build whose result is
retry (it runs again under another number) is never notified.

Forge commit status (ForgeStatus=) follows no mode: every build of a
matching branch with a full revision reports when it starts and when it
ends, as a forge's own CI would.

    >>> modes_match(["problem"], "failure", "success"), modes_match(["problem"], "failure", "failure")
    (True, False)
    >>> modes_match(["change"], "success", None), modes_match(["change"], "success", "failure")
    (False, True)
"""

import email.policy
import email.utils
import fnmatch
import re
import socket
from email.headerregistry import Address
from email.message import EmailMessage
from urllib.parse import quote

from . import config, results, siteviews

# Results that say nothing of the code: skipped over to find the previous build.
NOT_A_VERDICT = (results.RETRY, results.CANCELLED)
LOG_LINES = 20           # of the failing step's log, in a mail
MAX_AUTHORS = 20         # MailAuthors=: at most this many authors' addresses
# The forges' words for a result (their documented states).
FORGE_STATES = {
    "github": {"pending": "pending", results.SUCCESS: "success", results.WARNINGS: "success",
               results.FAILURE: "failure", results.SKIPPED: "success"},
    "gitea": {"pending": "pending", results.SUCCESS: "success", results.WARNINGS: "warning",
              results.FAILURE: "failure", results.SKIPPED: "success"},
    # GitLab tells a queued job (pending) from one that runs (running).
    "gitlab": {"pending": "running", results.SUCCESS: "success", results.WARNINGS: "success",
               results.FAILURE: "failed", results.SKIPPED: "skipped", results.CANCELLED: "canceled"},
}
FORGE_ERROR = {"github": "error", "gitea": "error", "gitlab": "failed"}
_FULL_REVISION = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def passed(result):
    return result in (results.SUCCESS, results.WARNINGS)


def modes_match(modes, result, previous):
    """Whether the Notify= MODES hold for a build whose result is RESULT
    and whose previous build's was PREVIOUS (None: no previous build)."""
    if result == results.RETRY:
        return False
    for m in modes:
        if m == "all":
            return True
        if m == "failing" and result == results.FAILURE or m == "passing" and result == results.SUCCESS:
            return True
        if m == "warnings" and result == results.WARNINGS or m == "exception" and result == results.EXCEPTION:
            return True
        if m == "change" and previous is not None and previous != result:
            return True
        if m == "problem" and result == results.FAILURE and previous is not None and passed(previous):
            return True
    return False


def branch_matches(globs, branch):
    return any(fnmatch.fnmatchcase(branch, g) for g in globs)


def rules(cfg, builder):
    """The rules of BUILDER (a config.Builder): its own, then the site's."""
    return [builder, cfg]


def has_destinations(cfg, builder):
    """Whether any build of BUILDER (a config.Builder) may be told of: the
    notifier reads its builds (and the janitor waits for it to)."""
    return bool(builder.forge_status or any(r.mail or r.mail_authors or r.webhook or r.exec_notify
                                            for r in rules(cfg, builder)))


def awaits_notifier(cursor, builder, number, finished, now, give_up):
    """Whether the notifier has still to read build BUILDER #NUMBER, which
    finished at FINISHED, by its CURSOR (the "notifier" record of
    notifier.py, or None: no notifier ever ran).  A build finished before
    the cursor was made (the history at its first start) is never read,
    nor one older than GIVE_UP seconds (GiveUpSec=: a message that old is
    given up; a notifier down that long has lost it anyway).

    >>> c = {"created": 100.0, "builders": {"b": {"done": 4, "handled": [6]}}}
    >>> [awaits_notifier(c, "b", n, 150.0, 200.0, 1000) for n in (4, 5, 6)]
    [False, True, False]
    >>> awaits_notifier(c, "b", 5, 50.0, 200.0, 1000), awaits_notifier(c, "b", 5, 150.0, 2000.0, 1000)
    (False, False)
    >>> awaits_notifier(c, "new", 1, 150.0, 200.0, 1000), awaits_notifier(None, "b", 5, 150.0, 200.0, 1000)
    (True, False)
    """
    if not isinstance(cursor, dict) or not isinstance(finished, (int, float)) or isinstance(finished, bool):
        return False
    created = cursor.get("created")
    if isinstance(created, (int, float)) and finished < created or now - finished >= give_up:
        return False
    e = (cursor.get("builders") or {}).get(builder)
    if not isinstance(e, dict) or not isinstance(e.get("done"), int):
        return True          # a builder the notifier has not looked at yet: from 0
    handled = e.get("handled")
    return number > e["done"] and not (isinstance(handled, list) and number in handled)


def clean(text, limit=200):
    """TEXT on one line: every control character (CR, LF, NUL, ...) a
    space, at most LIMIT characters.  For header values and one-line facts.

    >>> clean("main\\r\\nBcc: x@example.org")
    'main  Bcc: x@example.org'
    """
    text = text if isinstance(text, str) else ""
    text = "".join(" " if ord(c) < 32 or 0x7f <= ord(c) < 0xa0 or c in "\u2028\u2029" else c for c in text)
    return text[:limit]


def author_address(author):
    """The mail address of a change's AUTHOR ("Name <addr>"), or None if
    it holds none that buildunits would send to.

    >>> author_address("A U Thor <a@example.org>"), author_address("x <a@b\\n.org>"), author_address("<a@b>, c@d")
    ('a@example.org', None, None)
    """
    if not isinstance(author, str) or any(ord(c) < 32 for c in author):
        return None
    m = re.fullmatch(r"[^<>]*<([^<>]*)>\s*", author)
    addr = m.group(1).strip() if m else author.strip()
    return addr if not config._address_problem(addr) else None


def _url(site_url, path):
    return site_url + "/" + path if site_url else ""


def failing_step(rec):
    """(index, step record) of the first step whose result is failure or
    exception, else of the last step that ran; (None, None) if none."""
    steps = [(i, s) for i, s in enumerate(rec.get("steps") or [], 1) if isinstance(s, dict)]
    for i, s in steps:
        if s.get("result") in (results.FAILURE, results.EXCEPTION):
            return i, s
    ran = [(i, s) for i, s in steps if s.get("result")]
    return ran[-1] if ran else (None, None)


def facts(rec, site_url):
    """The facts every channel tells of the build REC (one line each)."""
    view = siteviews.build_view(rec)
    return {"builder": view["builder"], "number": view["number"], "result": view["status"],
            "branch": clean(view["branch"]), "revision": clean(view["revision"], 64),
            "reason": clean(view["reason"] or view["request_reason"]), "worker": clean(view["worker"]),
            "url": _url(site_url, view["html"]), "view": view}


def plan(cfg, builder, rec, previous, log_tail=None, started=False):
    """The messages (fields of "message" records) for build REC of BUILDER
    (config.Builder) under CFG, whose previous build's result is PREVIOUS.
    LOG_TAIL(step index, step record) gives the last lines of a step's log.
    STARTED: the build has just started (only forge statuses say so)."""
    f = facts(rec, cfg.site_url)
    result = f["result"]
    out = []
    base = {"builder": f["builder"], "number": f["number"], "result": "pending" if started else result,
            "event": "started" if started else "finished"}
    if builder.forge_status and branch_matches(builder.notify_branches, f["branch"]) \
            and _FULL_REVISION.fullmatch(f["revision"]) and (started or result != results.RETRY):
        out.append(dict(base, **forge_message(builder, f, started)))
    if started:
        return out
    matching = [r for r in rules(cfg, builder)
                if branch_matches(r.notify_branches, f["branch"]) and modes_match(r.notify_modes, result, previous)]
    to, seen = [], set()

    def add(addr):
        if addr and addr.lower() not in seen:
            seen.add(addr.lower())
            to.append(addr)
    for r in matching:
        for a in r.mail:
            add(a)
    if any(r.mail_authors for r in matching):
        authors = [author_address(c.get("author")) for c in f["view"]["changes"]]
        for a in [a for a in authors if a][:MAX_AUTHORS]:
            add(a)
    if to:
        out.append(dict(base, **mail_message(cfg, rec, f, to, previous, log_tail)))
    urls = []
    for r in matching:
        for u in r.webhook:
            if u not in [x for x, _c in urls]:
                urls.append((u, r.webhook_credential))
    for u, cred in urls:
        out.append(dict(base, channel="webhook", destination=u, url=u, credential=cred,
                        body=siteviews.build_json(f["view"])))
    commands = []
    for r in matching:
        for c in r.exec_notify:
            if c not in commands:
                commands.append(c)
    for c in commands:
        out.append(dict(base, channel="exec", destination=c, command=c, environment=exec_environment(f)))
    return out


def exec_commands(cfg, builder):
    """Every ExecNotify= command of BUILDER under CFG, whatever the build:
    its own, then the site's, each once.  A command's place here is its K
    in the unit buildunits-launcher(8) runs it as (under systemd), which
    looks a command up in this list as the launcher itself reads the
    configuration, never in the request."""
    out = []
    for r in rules(cfg, builder):
        for c in r.exec_notify:
            if c not in out:
                out.append(c)
    return out


# ExecNotify='s facts, and the longest value the launcher passes on.
EXEC_FACTS = ("BUILDUNITS_BUILDER", "BUILDUNITS_NUMBER", "BUILDUNITS_RESULT", "BUILDUNITS_REVISION",
              "BUILDUNITS_BRANCH", "BUILDUNITS_URL", "BUILDUNITS_REASON", "BUILDUNITS_WORKER")
EXEC_FACT_MAX = 4096


def exec_environment(f):
    """ExecNotify='s environment: the build's facts, as BUILDUNITS_*."""
    return {"BUILDUNITS_BUILDER": f["builder"], "BUILDUNITS_NUMBER": str(f["number"]),
            "BUILDUNITS_RESULT": f["result"], "BUILDUNITS_REVISION": f["revision"],
            "BUILDUNITS_BRANCH": f["branch"], "BUILDUNITS_URL": f["url"], "BUILDUNITS_REASON": f["reason"],
            "BUILDUNITS_WORKER": f["worker"]}


def forge_message(builder, f, started):
    """A forge commit status: the request's URL, headers but the token, and body."""
    forge = builder.forge_status
    api, repo = builder.forge_target()
    word = FORGE_STATES[forge].get("pending" if started else f["result"], FORGE_ERROR[forge])
    context = builder.forge_context or "buildunits/" + f["builder"]
    description = clean("%s #%d: %s" % (f["builder"], f["number"], "running" if started else f["result"]), 140)
    sha = f["revision"]
    if forge == "github":
        url = "%s/repos/%s/statuses/%s" % (api, "/".join(quote(p, safe="") for p in repo.split("/")), sha)
        body = {"state": word, "target_url": f["url"] or None, "description": description, "context": context}
    elif forge == "gitea":
        url = "%s/api/v1/repos/%s/statuses/%s" % (api, "/".join(quote(p, safe="") for p in repo.split("/")), sha)
        body = {"state": word, "target_url": f["url"], "description": description, "context": context}
    else:
        # :id is the project's id or its path, URL-encoded ("group%2Fproject").
        url = "%s/api/v4/projects/%s/statuses/%s" % (api, quote(repo, safe=""), sha)
        body = {"state": word, "name": context, "target_url": f["url"] or None, "description": description}
        if f["branch"] and not f["branch"].startswith(config.TAG_PREFIX):
            body["ref"] = f["branch"]
    body = {k: v for k, v in body.items() if v is not None}
    return {"channel": "forge", "forge": forge, "destination": "%s %s" % (forge, url), "url": url, "body": body,
            "credential": builder.forge_credential or "notify-" + forge}


def mail_message(cfg, rec, f, to, previous, log_tail):
    """A mail: its headers and plain-text body, as the bytes to send."""
    view = f["view"]
    index, step = failing_step(rec)
    subject = "buildunits: %s #%d %s" % (f["builder"], f["number"], f["result"])
    if f["branch"]:
        subject += " on %s" % f["branch"]
    if step is not None and f["result"] not in (results.SUCCESS,):
        subject += " (step %s)" % clean(step.get("name"), 64)
    lines = ["%s #%d: %s" % (f["builder"], f["number"], f["result"]), ""]
    for k in ("branch", "revision", "worker", "reason"):
        if f[k]:
            lines.append("%-10s %s" % (k + ":", f[k]))
    if previous is not None:
        lines.append("%-10s %s" % ("previous:", previous))
    if f["url"]:
        lines.append("%-10s %s" % ("build:", f["url"]))
    sv = view["steps"][index - 1] if index else None
    if step is not None and f["result"] != results.SUCCESS:
        lines += ["", "Step %s: %s%s" % (clean(step.get("name"), 64), sv["status"],
                                         " (%s)" % clean(step.get("summary")) if step.get("summary") else "")]
        if sv["log"] and cfg.site_url:
            lines.append("log: %s" % _url(cfg.site_url, sv["log"]["html"]))
        tail = log_tail(index, step) if log_tail else []
        if tail:
            lines += ["", "The last lines of its log:", ""] + ["    " + _printable(t) for t in tail]
    if view["changes"]:
        lines += ["", "Changes:"]
        for c in view["changes"][:siteviews.MAX_CHANGES_SHOWN]:
            lines.append("  %s  %s  %s" % (clean(c["revision"], 12), clean(c["author"], 80), clean(c["subject"], 100)))
        if len(view["changes"]) > siteviews.MAX_CHANGES_SHOWN:
            lines.append("  ... and %d more" % (len(view["changes"]) - siteviews.MAX_CHANGES_SHOWN))
    msg = EmailMessage(policy=email.policy.SMTP)
    sender = cfg.mail_from or default_sender()
    msg["From"] = Address("buildunits", addr_spec=sender)
    msg["To"] = [Address(addr_spec=a) for a in to]
    msg["Subject"] = clean(subject, 300)
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = email.utils.make_msgid("buildunits", domain=sender.rpartition("@")[2])
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Buildunits-Builder"] = f["builder"]
    msg["X-Buildunits-Build"] = str(f["number"])
    msg["X-Buildunits-Result"] = f["result"]
    msg.set_content("\n".join(lines) + "\n")
    return {"channel": "mail", "destination": ", ".join(to), "sender": sender, "recipients": to,
            "message": msg.as_string()}


def default_sender():
    """MailFrom='s default: buildunits@ the host's name (localhost if that
    is no domain name)."""
    host = socket.gethostname()
    addr = "buildunits@" + host
    return addr if not config._address_problem(addr) else "buildunits@localhost"


def _printable(line):
    """A log line as a mail may carry it: control characters but TAB shown as '?'."""
    return "".join(c if c == "\t" or (ord(c) >= 32 and ord(c) != 0x7f) else "?" for c in line)[:500]
