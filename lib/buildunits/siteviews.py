"""Siteviews: what the site shows of a record, as plain values.

The view models of the static site, and the JSON contract of docs/site.md
("The JSON files"): pure functions, no I/O, no clock (a time to show is
passed in).  Records come from every past version and may lack keys or
carry unknown ones, and all their text is hostile; the templates use
StrictUndefined, so these functions turn a record into a view with every
key a template reads, whatever the record held, and text that XML cannot
carry replaced by U+FFFD.

A record is reshaped once: build_view() is the one reading of a build
record, and what the other pages and files show of it are projections of
that view, key for key:

    build_view(rec)     the build's page (build.html, log.html)
    card(view)          the build summary of docs/site.md: what the heads,
                        feeds and JSON lists show, kept in memory
    build_json(view)    api/builders/B/builds/N.json (format site-build)

    >>> v = build_view({"builder": "hello", "number": 7, "state": "finished", "result": "success"})
    >>> card(v)["html"], card(v)["status"], build_json(v)["force"]
    ('builders/hello/7/index.html', 'success', None)

Paths in a view are relative URLs from the site's top, quoted; a step's
log_page and log_raw are file names in the build's own directory.
"""

import json
import math
import re
from urllib.parse import quote, urlsplit

from . import buildrecord, redact, templates

API_VERSION = 1                      # of the api/ files; docs/site.md has their history
MAX_CHANGES_SHOWN = 5                # per build on the waterfall, history and cards

# The keys of a build summary (docs/site.md), in the order the JSON files
# give them; a new key goes at the end of its tuple (and in docs/site.md).
SUMMARY_KEYS = ("builder", "number", "state", "result", "status", "started", "finished", "duration",
                "queued", "worker", "branch", "revision", "request_reason", "reason", "current_step",
                "changes", "changes_count", "steps", "html", "json", "locks")
STEP_KEYS = ("name", "description", "state", "result", "status", "started", "finished", "duration",
             "summary", "log")
CHANGE_SUMMARY_KEYS = ("revision", "author", "when", "subject")
# site-build adds these to the summary's steps, and gives its changes whole.
BUILD_STEP_KEYS = STEP_KEYS + ("command", "exit_status", "usage")
# What a step's record may say it used (executor.py), each a whole number
# but the CPU time.
USAGE_KEYS = ("cpu_sec", "memory_peak_bytes", "io_read_bytes", "io_write_bytes", "tasks_max")
BUILD_CHANGE_KEYS = ("revision", "author", "when", "branch", "repository", "message", "files", "subject")


# ---------------------------------------------------------------- builds
def build_view(rec):
    """The one reshaping of a build record REC (which names its builder
    and number): what its page shows, and all the summary and the JSON
    file are made of."""
    builder, number = rec["builder"], rec["number"]
    q = quote(builder, safe="")
    base = "builders/%s/%d/" % (q, number)
    request = _dict(rec.get("request"))
    logs_gone = num(_dict(rec.get("_pruned")).get("logs_removed")) is not None
    steps = [step_view(i, s, base, logs_gone) for i, s in enumerate(_list(rec.get("steps")), 1)
             if isinstance(s, dict)]
    changes = [change_view(c) for c in _list(request.get("changes")) if isinstance(c, dict)]
    state = text(rec.get("state")) or "running"
    current = [s["name"] for s in steps if s["state"] == "running"]
    force = request.get("force")
    rebuilt = request.get("rebuild_of")
    rebuilt = rebuilt if _is_int(rebuilt) and rebuilt >= 1 else None
    return {
        "builder": text(builder), "number": number, "state": state, "result": _result(rec.get("result")),
        "status": status(state, rec.get("result")),
        "started": num(rec.get("started")), "finished": num(rec.get("finished")),
        "duration": _duration(rec.get("started"), rec.get("finished")),
        "queued": num(request.get("queued")), "worker": text(rec.get("worker")),
        "branch": text(rec.get("branch") or request.get("branch")),
        "revision": text(rec.get("revision") or request.get("revision")),
        "request_reason": text(request.get("reason")), "reason": text(rec.get("reason")),
        "current_step": current[0] if current else "",
        "changes": changes, "changes_count": len(changes), "steps": steps,
        "html": base + "index.html", "json": "api/builders/%s/builds/%d.json" % (q, number),
        # Masked again: a record of an older release may hold credentials.
        "repository": redact.url(text(rec.get("repository") or request.get("repository"))),
        "properties": _pairs(request.get("properties")), "force": _pairs(force),
        "force_id": text(force) if isinstance(force, str) else None,
        # The build this one rebuilds (`buildunits rebuild`), of the same builder.
        "rebuild_of": rebuilt,
        "rebuild_of_html": "builders/%s/%d/index.html" % (q, rebuilt) if rebuilt else None,
        "rebuild_of_removed": False,
        # The build that started it (After=, Trigger=), and those its Trigger= steps queued.
        "upstream": _build_link(rec.get("upstream")),
        "triggered": [dict(_build_link(t) or {"builder": text(t.get("builder")), "number": None, "html": None,
                                              "removed": False},
                           step=text(s.get("name")), result=_result(t.get("result")),
                           request=text(t.get("request")))
                      for s in _list(rec.get("steps")) if isinstance(s, dict)
                      for t in _list(s.get("triggered")) if isinstance(t, dict)],
        "collapsed": len([c for c in _list(request.get("collapsed")) if isinstance(c, str)]),
        # The locks it holds while it runs (Locks=), as "NAME".
        "locks": [text(x) for x in _list(rec.get("locks")) if isinstance(x, str)],
        # What it kept (Artifacts=), each a file of its directory's artifacts/.
        "artifacts": [{"name": text(a.get("name")), "size": a["size"] if _is_int(a.get("size")) else None,
                       "sha256": text(a.get("sha256")), "step": text(a.get("step")),
                       "href": "artifacts/" + quote(text(a.get("name")))}
                      for a in _list(rec.get("artifacts")) if isinstance(a, dict) and text(a.get("name"))],
        "artifacts_refused": [{"name": text(a.get("name")), "reason": text(a.get("reason")),
                               "step": text(a.get("step"))}
                              for a in _list(rec.get("artifacts_refused")) if isinstance(a, dict)],
        # What the janitor's markers beside the record say (Source.read):
        # pinned, by whom and when; when its logs and artifacts went.
        "kept": _kept(rec.get("_keep")),
        "logs_removed": num(_dict(rec.get("_pruned")).get("logs_removed")),
        "artifacts_removed": num(_dict(rec.get("_pruned")).get("artifacts_removed")),
        # The notifier's mark (STATE/notifier/B@N.json, Source.read): what it gave up on.
        "undelivered": _undelivered(rec.get("_undelivered")),
        # What only the builds made later say (annotate): those it started, its rebuilds.
        "downstream": [], "rebuilds": [],
    }


def _undelivered(mark):
    """The messages of an "undelivered" mark as the build page shows them:
    where (never a secret: a webhook's host only, no ExecNotify= command
    line), why (the remote server's words: hostile, escaped where shown,
    credentials in URLs masked), when, after how many attempts."""
    out = []
    for m in _list(_dict(mark).get("messages")):
        if not isinstance(m, dict):
            continue
        channel = text(m.get("channel"))
        dest = m.get("destination")
        if channel == "mail":
            where = "mail to " + (", ".join(text(a) for a in dest if isinstance(a, str)) if isinstance(dest, list)
                                  else text(dest))
        elif channel == "webhook":
            try:
                host = urlsplit(dest).hostname if isinstance(dest, str) else None
            except ValueError:
                host = None
            where = "the webhook at " + text(host) if host else "a webhook"
        elif channel == "exec":
            where = "ExecNotify="
        elif channel == "forge":
            where = "the status on " + (text(dest).split(" ", 1)[0] if isinstance(dest, str) else "the forge")
        else:
            where = channel or "(unknown)"
        out.append({"channel": channel, "to": where, "reason": text(redact.text(text(m.get("reason"))))[:2000],
                    "given_up": num(m.get("given_up")),
                    "attempts": m["attempts"] if _is_int(m.get("attempts")) else None})
    return out


# The kinds of links the site keeps (site.py, .links beside a build's
# pages): what the build that names a build is to it.
DOWN, REBUILD, TRIGGERED_BY, LINKS_TO = "down", "rebuild", "from", "to"


def link_targets(view):
    """The other builds VIEW's page links to, as (kind, builder, number):
    KIND is what this build is to that one: DOWN (it started this one:
    After=, or a Trigger= step), REBUILD (this one rebuilds it),
    TRIGGERED_BY (this one's Trigger= step queued it).

    >>> v = build_view({"builder": "d", "number": 2, "upstream": {"builder": "u", "number": 5},
    ...                 "request": {"rebuild_of": 1}})
    >>> link_targets(v)
    [('down', 'u', 5), ('rebuild', 'd', 1)]
    """
    out = []
    if view["upstream"]:
        out.append((DOWN, view["upstream"]["builder"], view["upstream"]["number"]))
    if view["rebuild_of"]:
        out.append((REBUILD, view["builder"], view["rebuild_of"]))
    for t in view["triggered"]:
        if t["number"] is not None:
            out.append((TRIGGERED_BY, t["builder"], t["number"]))
    return [x for i, x in enumerate(out) if x not in out[:i]]


def annotate(view, links, gone):
    """VIEW (a build_view) with what its record cannot say, for its page
    and JSON file: LINKS, the builds that name it ((kind, builder,
    number, status) of link_targets() seen from the other side), become
    its downstream builds and its rebuilds; and every build it links to
    for which GONE(builder, number) is true (the janitor removed it) is
    marked removed, without a link.

    >>> v = build_view({"builder": "u", "number": 5, "state": "finished", "result": "success"})
    >>> v = annotate(v, [("down", "d", 2, "failure"), ("down", "d", 1, "success")], lambda b, n: n == 1)
    >>> [(d["number"], d["status"], d["html"]) for d in v["downstream"]]
    [(1, 'removed', None), (2, 'failure', 'builders/d/2/index.html')]
    """
    def link(builder, number, status=None):
        removed = gone(builder, number)
        return {"builder": text(builder), "number": number,
                "html": None if removed else "builders/%s/%d/index.html" % (quote(builder, safe=""), number),
                "status": "removed" if removed else text(status) or "running", "removed": removed}
    up = view["upstream"]
    if up and gone(up["builder"], up["number"]):
        view["upstream"] = dict(up, html=None, removed=True)
    if view["rebuild_of"] and gone(view["builder"], view["rebuild_of"]):
        view.update(rebuild_of_html=None, rebuild_of_removed=True)
    down = {(b, n): s for kind, b, n, s in links if kind == DOWN}
    triggered = []
    for t in view["triggered"]:
        if t["number"] is not None:
            status = down.pop((t["builder"], t["number"]), None)
            if gone(t["builder"], t["number"]):
                t = dict(t, html=None, removed=True)
            elif t["result"] is None and status not in (None, "running", "pending"):
                t = dict(t, result=text(status))   # it ended after its upstream did (no Wait=)
        triggered.append(t)
    view["triggered"] = triggered
    view["downstream"] = [link(b, n, s) for (b, n), s in sorted(down.items())]
    view["rebuilds"] = [link(b, n, s) for kind, b, n, s in sorted(links)
                        if kind == REBUILD and b == view["builder"]]
    return view


def _kept(keep):
    """A keep.json record as the build page shows it, or None."""
    keep = _dict(keep)
    if not keep:
        return None
    return {"user": text(keep.get("user")), "when": num(keep.get("when")), "reason": text(keep.get("reason"))}


def _build_link(ref):
    """{builder, number, html} of a reference to a build, or None."""
    if not isinstance(ref, dict) or not isinstance(ref.get("builder"), str) or not _is_int(ref.get("number")) \
            or ref["number"] < 1:
        return None
    return {"builder": text(ref["builder"]), "number": ref["number"],
            "html": "builders/%s/%d/index.html" % (quote(ref["builder"], safe=""), ref["number"]),
            "removed": False}


def step_view(index, step, base, log_removed=False):
    """Step number INDEX of a build whose pages are under BASE; LOG_REMOVED:
    the janitor removed the build's logs (KeepLogDays=)."""
    state = text(step.get("state")) or "pending"
    stem = log_stem(step.get("log"))
    # A removed log's page stays, saying so (the pages of many builds link
    # to it and are written once); its raw file goes.
    removed = bool(stem) and log_removed
    usage = usage_view(step.get("usage"))
    return {
        "index": index, "name": text(step.get("name")) or "step %d" % index,
        "description": text(step.get("description")), "command": text(step.get("command")),
        "state": state, "result": _result(step.get("result")), "status": status(state, step.get("result")),
        "started": num(step.get("started")), "finished": num(step.get("finished")),
        "duration": _duration(step.get("started"), step.get("finished")),
        "summary": text(step.get("summary")),
        "exit_status": step.get("exit_status") if _is_int(step.get("exit_status")) else None,
        "usage": usage, "usage_shown": usage_shown(usage),
        # Paths from the site's top (the JSON files'), and file names.
        "log": {"html": base + quote(stem) + ".html", "raw": None if removed else base + quote(stem) + ".txt"}
        if stem else None,
        "log_file": stem + ".log" if stem and not removed else "",
        "log_page": stem + ".html" if stem else "", "log_raw": stem + ".txt" if stem and not removed else "",
        "log_removed": removed,
    }


def usage_view(usage):
    """The measures of a step's `usage` that are numbers, not negative,
    and of a known key; what is absent was not measured (never zero).

    >>> usage_view({"cpu_sec": 1.5, "memory_peak_bytes": True, "io_read_bytes": -1, "x": 2})
    {'cpu_sec': 1.5}
    """
    u = _dict(usage)
    return {k: u[k] for k in USAGE_KEYS
            if (num(u.get(k)) is not None if k == "cpu_sec" else _is_int(u.get(k))) and u[k] >= 0}


def usage_shown(usage):
    """A usage_view() as the build page shows it: [(what, how much)].

    >>> usage_shown({"cpu_sec": 0.25, "memory_peak_bytes": 3 << 20, "io_write_bytes": 0, "tasks_max": 4})
    [('CPU', '0.25s'), ('memory', '3.0 MiB'), ('written', '0 bytes'), ('tasks', '4')]
    """
    shown = []
    if "cpu_sec" in usage:
        cpu = usage["cpu_sec"]
        shown.append(("CPU", "%.2fs" % cpu if cpu < 60 else templates.timespan(cpu)))
    for key, what in (("memory_peak_bytes", "memory"), ("io_read_bytes", "read"), ("io_write_bytes", "written")):
        if key in usage:
            shown.append((what, buildrecord.size(usage[key])))
    if "tasks_max" in usage:
        shown.append(("tasks", str(usage["tasks_max"])))
    return shown


def change_view(c):
    message = text(c.get("message"))
    return {"revision": text(c.get("revision")), "author": text(c.get("author")),
            "when": num(c.get("when")), "branch": text(c.get("branch")),
            "repository": redact.url(text(c.get("repository"))), "message": message,
            "files": [text(f) for f in _list(c.get("files")) if isinstance(f, str)],
            # What the record did not keep of it (changes.py); for the page only.
            "files_omitted": c["files_omitted"] if _is_int(c.get("files_omitted")) else 0,
            "details_omitted": c.get("details_omitted") is True,
            "subject": templates.firstline(message)}


def card(view):
    """The build summary of docs/site.md, from a build_view(): a small dict
    of plain values that the heads keep in memory and show."""
    c = {k: view[k] for k in SUMMARY_KEYS}
    c["changes"] = [{k: ch[k] for k in CHANGE_SUMMARY_KEYS} for ch in view["changes"][:MAX_CHANGES_SHOWN]]
    c["steps"] = [{k: s[k] for k in STEP_KEYS} for s in view["steps"]]
    return c


def removed_card(builder, number):
    """The summary of a build the janitor removed: what the pages that
    listed it show in its place ("removed", linking nowhere).

    >>> c = removed_card("hello", 3); c["status"], c["html"], c["steps"]
    ('removed', '', [])
    """
    c = {k: None for k in SUMMARY_KEYS}
    c.update(builder=text(builder), number=number, state="finished", status="removed", worker="", branch="",
             revision="", request_reason="", reason="", current_step="", changes=[], changes_count=0, steps=[],
             html="", json="")
    return c


def build_json(view):
    """api/builders/B/builds/N.json, from a build_view(): the summary with
    its changes and steps in full, and what the build page adds."""
    doc = {"format": "site-build", "version": API_VERSION}
    doc.update((k, view[k]) for k in SUMMARY_KEYS)
    doc["changes"] = [{k: ch[k] for k in BUILD_CHANGE_KEYS} for ch in view["changes"]]
    doc["steps"] = [{k: s[k] for k in BUILD_STEP_KEYS} for s in view["steps"]]
    force = view["force_id"] if view["force_id"] is not None else dict(view["force"]) or None
    doc.update(repository=view["repository"], properties=dict(view["properties"]), force=force,
               rebuild_of=view["rebuild_of"], upstream=view["upstream"], triggered=view["triggered"],
               collapsed=view["collapsed"],
               artifacts=[dict(a, href=view["html"].rsplit("/", 1)[0] + "/" + a["href"]) for a in view["artifacts"]],
               artifacts_refused=view["artifacts_refused"], kept=view["kept"], logs_removed=view["logs_removed"],
               artifacts_removed=view["artifacts_removed"], rebuild_of_removed=view["rebuild_of_removed"],
               downstream=view["downstream"], rebuilds=view["rebuilds"], undelivered=view["undelivered"])
    return doc


def request_view(req):
    """A queued request, as the waterfall's first rows show it."""
    changes = [change_view(c) for c in _list(req.get("changes")) if isinstance(c, dict)]
    return {"revision": text(req.get("revision")), "branch": text(req.get("branch")),
            "reason": text(req.get("reason")), "queued": num(req.get("queued")),
            "changes": changes}


def status(state, result):
    """The word a box shows: the result, or what the build or step is doing."""
    if isinstance(result, str) and result:
        return text(result)
    if state == "finished":
        return "exception"  # finished without a result: a record from a crash
    return state if state in ("running", "pending") else "running"


# -------------------------------------------------------------- builders
def column(b, builder, queued):
    """Builder B (a siteindex.Builder) as the heads show it; BUILDER its
    configuration (None: only the history knows it), QUEUED (how many
    requests are queued for it, [the first of them, oldest first])."""
    count, requests = queued
    last = None
    if b.last:
        last = dict(b.last, html="builders/%s/%d/index.html" % (b.q, b.last["number"]))
    running = [{"number": n, "html": b.cards[n]["html"], "current_step": b.cards[n]["current_step"],
                "locks": b.cards[n].get("locks") or []}
               for n in sorted(b.cards, reverse=True) if b.cards[n]["state"] != "finished"]
    return {
        "kind": "builder", "name": text(b.name), "description": text(builder.description) if builder else "",
        "configured": builder is not None, "latest": b.known, "last": last, "running": running,
        "queued": [request_view(r) for r in requests], "queued_count": count,
        "html": "builders/%s/index.html" % b.q, "json": "api/builders/%s/index.json" % b.q,
        "atom": "builders/%s/atom.xml" % b.q, "badge": "builders/%s/badge.svg" % b.q,
        # How it takes its turn (the fair queue), and what starts it.
        "priority": builder.priority if builder else 0,
        "locks": ["%s:%d" % lk if lk[1] != 1 else lk[0] for lk in builder.locks] if builder else [],
        "max_builds": builder.max_builds if builder else 0,
        "after": [{"name": text(u), "html": "builders/%s/index.html" % quote(u, safe="")} for u in builder.after]
        if builder else [],
        "latest_artifacts": "builders/%s/latest/" % b.q,
    }


def builder_json(column):
    """A builder's entry in api/builders.json, from its column()."""
    return {k: column[k] for k in ("name", "description", "configured", "latest", "last", "running",
                                   "html", "json", "atom", "badge")} | {"queued": column["queued_count"]}


def builders_doc(title, columns, now):
    """api/builders.json (format site-builders), written at NOW."""
    return {"format": "site-builders", "version": API_VERSION, "title": text(title),
            "generated": now, "waterfall": "index.html", "console": "console.html",
            "atom": "atom.xml", "builders": [builder_json(c) for c in columns]}


def builder_doc(b, column, page_size):
    """api/builders/B/index.json (format site-builder) but its builds."""
    doc = {"format": "site-builder", "version": API_VERSION}
    doc.update(builder_json(column))
    doc["history"] = {"page_size": page_size, "pages": b.pages, "skipped": b.skipped,
                      "html": "builders/%s/history/{page}.html" % b.q,
                      "json": "api/builders/%s/history/{page}.json" % b.q}
    return doc


def history_doc(b, page, first, last, cards):
    """api/builders/B/history/PAGE.json (format site-history) but its builds."""
    return {"format": "site-history", "version": API_VERSION, "builder": text(b.name), "page": page,
            "first": first, "last": last, "final": all(c["state"] == "finished" for c in cards),
            "html": "builders/%s/history/%d.html" % (b.q, page)}


# ---------------------------------------------------------------- order
def card_time(c):
    """When a build is shown to have happened: started, else finished, else queued."""
    for key in ("started", "finished", "queued"):
        if c[key] is not None:
            return c[key]
    return 0.0


def card_order(c):
    return (card_time(c), c["builder"], c["number"])


def sort_time(rec):
    """card_time() of a record not made into a view yet."""
    for key in ("started", "finished"):
        t = num(rec.get(key))
        if t is not None:
            return t
    return num(_dict(rec.get("request")).get("queued")) or 0.0


# --------------------------------------------------------------- values
# Characters XML 1.0 cannot carry, even as references, and lone surrogates
# (from \\u escapes in JSON), which cannot be encoded: shown as U+FFFD.
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
_LOG_NAME = re.compile(r"[0-9]+-[^/]+\.log")


def safe_name(name):
    """A builder or file name usable as one path component of the site."""
    if not (isinstance(name, str) and name and not name.startswith(".") and "/" not in name):
        return False
    if _BAD_CHARS.search(name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False  # an undecodable file name, as os.listdir returns it
    return True


def log_stem(name):
    """The log's file name without .log, if it is one the runner makes
    (NN-STEP.log): never "index", never a path."""
    if isinstance(name, str) and _LOG_NAME.fullmatch(name) and safe_name(name):
        return name[:-len(".log")]
    return ""



def text(v):
    """V as text a page or a feed can carry."""
    s = v if isinstance(v, str) else ("" if v is None else str(v))
    return _BAD_CHARS.sub("\ufffd", s)



def num(v):
    """A time or duration from a record, or None (also for NaN, infinities
    and times no calendar shows)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        v = float(v)
    except OverflowError:
        return None
    return v if math.isfinite(v) and abs(v) < 1e11 else None


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _list(v):
    return v if isinstance(v, list) else []


def _dict(v):
    return v if isinstance(v, dict) else {}


def _result(v):
    return text(v) if isinstance(v, str) and v else None


def _duration(start, end):
    start, end = num(start), num(end)
    return end - start if start is not None and end is not None else None


def _pairs(d):
    """[(key, text)] of a dict of properties, sorted; values shown as JSON
    unless they are strings."""
    if not isinstance(d, dict):
        return []
    out = []
    for k, v in d.items():
        try:
            shown = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True)
        except (TypeError, ValueError):
            shown = repr(v)
        out.append((text(k), text(shown)))
    return sorted(out)
