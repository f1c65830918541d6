"""What a finished build's page says of what came after it: the builds it
started (After=, Trigger=) with their results, the notifications given up
on, and the linked builds the janitor removed.

Builds written with the project's own writers (State), the site's engine
(site.Site) updated from the hints as htmlgen takes them, the janitor's
real pass (janitor.run), and the real notifier and htmlgen daemons for a
notification given up on.  What a user checks: the upstream's page and
JSON list the downstream build and its result; the page says the
notification was given up, and why (escaped); every href of every HTML
file resolves, and a link to a removed build says "removed".
"""

import json
import os
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from buildunits import janitor, site
from buildunits.spool import Spool
from buildunits.state import State
from harness import wait_for
from test_site import T0, check_links, files_of, finish, make_build, make_cfg, written_since


def _env(tmp_path, names, workers=None):
    st, sp = State(str(tmp_path / "state")), Spool(str(tmp_path / "spool"))
    st.ensure()
    sp.ensure()
    cfg = make_cfg(tmp_path, names=names)
    return st, sp, cfg, site.Site(str(tmp_path / "site"), st, sp, cfg, workers=workers)


def _page(s, builder, n):
    with open(os.path.join(s.root, "builders", builder, str(n), "index.html"), encoding="utf-8") as f:
        return f.read()


def _doc(s, builder, n):
    with open(os.path.join(s.root, "api", "builders", builder, "builds", "%d.json" % n), encoding="utf-8") as f:
        return json.load(f)


def _row(page, term):
    """The text of the build page's fact TERM (its <dd>), or None."""
    m = re.search(r"<dt>%s</dt><dd[^>]*>(.*?)</dd>" % re.escape(term), page)
    return m.group(1) if m else None


def _link(builder, n):
    return '<a href="../../../builders/%s/%d/index.html">%s #%d</a>' % (builder, n, builder, n)


def test_the_upstreams_page_lists_its_downstream_build_and_its_result(tmp_path):
    st, sp, cfg, s = _env(tmp_path, ("up", "down"))
    u = make_build(st, "up", started=T0)
    s.update([("up", u)])
    assert _row(_page(s, "up", u), "downstream") is None and _doc(s, "up", u)["downstream"] == []
    before = files_of(s.root)
    # The scheduler's request ran: D #1 names U #1 as its upstream, and runs.
    d = make_build(st, "down", started=T0 + 200, running_step=("test", "running\n"),
                   extra={"upstream": {"builder": "up", "number": u}})
    s.update([("down", d)])
    assert _row(_page(s, "up", u), "downstream") == _link("down", d) + " running"
    assert _row(_page(s, "down", d), "upstream") == "started by " + _link("up", u)
    # Only U's page and its JSON file were written again (not its logs), and its links.
    assert [p for p in written_since(s.root, before) if "/up/" in p] == [
        "api/builders/up/builds/1.json", "builders/up/1/.links", "builders/up/1/index.html"]
    # It ends: U's page (written once, finished long ago) shows its result.
    finish(st, "down", d, "failure", at=T0 + 300)
    s.update([("down", d)])
    assert _row(_page(s, "up", u), "downstream") == _link("down", d) + " failure"
    assert _doc(s, "up", u)["downstream"] == [{"builder": "down", "number": d, "html": "builders/down/1/index.html",
                                                "status": "failure", "removed": False}]
    check_links(s.root)
    # An update with nothing new writes nothing.
    before = files_of(s.root)
    s.update([])
    assert written_since(s.root, before) == []


@pytest.mark.parametrize("crash_at", ["page", "links"])
def test_a_crash_while_linking_is_made_good_by_the_next_process(tmp_path, monkeypatch, crash_at):
    """htmlgen dies writing U's page, or U's links after it: a new process
    (from INDEX) finds D not final, links it again, and U's page lists it."""
    st, sp, cfg, s = _env(tmp_path, ("up", "down"))
    u = make_build(st, "up", started=T0)
    s.update([("up", u)])
    d = make_build(st, "down", started=T0 + 200, extra={"upstream": {"builder": "up", "number": u}})
    real_write, real_build = s.files.write, s.pages.build

    class Crash(Exception):
        pass

    def write(path, data):
        if crash_at == "links" and path.endswith(os.path.join("up", "1", site.LINKS)):
            raise Crash()
        return real_write(path, data)

    def build(cfg, b, bdir, view):
        if crash_at == "page" and b.name == "up":
            raise Crash()
        return real_build(cfg, b, bdir, view)
    monkeypatch.setattr(s.files, "write", write)
    monkeypatch.setattr(s.pages, "build", build)
    with pytest.raises(Crash):
        s.update([("down", d)])
    assert not os.path.exists(os.path.join(s.root, "builders", "down", str(d), ".final"))
    s = site.Site(s.root, st, sp, cfg)
    s.update([])
    assert _row(_page(s, "up", u), "downstream") == _link("down", d) + " success"
    assert ("down", "down", d, "success") in s._read_links(os.path.join(s.root, "builders", "up", "1"))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_rendering_from_the_state_alone_makes_the_same_links(tmp_path, workers):
    """The links are the site's (beside the pages), derived: a site lost
    is rendered again from the state, by one process or by workers."""
    st, sp, cfg, s = _env(tmp_path, ("up", "down", "deploy", "ok"), workers=workers)
    u = make_build(st, "up", started=T0)
    d = make_build(st, "down", started=T0 + 100, extra={"upstream": {"builder": "up", "number": u}})
    x = make_build(st, "ok", started=T0 + 150, extra={"upstream": {"builder": "deploy", "number": 1}})
    t = make_build(st, "deploy", started=T0 + 120, steps=(("fire", "success", None),))
    rec = st.read_build("deploy", t)
    rec["steps"][0]["triggered"] = [{"builder": "ok", "number": x, "request": "r9", "result": None}]
    from test_site import forge_build
    forge_build(st, rec)
    for _ in range(2):
        s.rebuild(force=True)
        assert _row(_page(s, "up", u), "downstream") == _link("down", d) + " success"
        # Triggered without Wait=: the result comes from the triggered build's own record.
        assert _row(_page(s, "deploy", t), "triggered") == _link("ok", x) + ' success <span class="dim">by step fire</span>'
        assert _row(_page(s, "deploy", t), "downstream") is None
        check_links(s.root)
        shutil.rmtree(s.root)
        s = site.Site(s.root, st, sp, cfg, workers=workers)


def _janitor(st, sp, cfg, keep):
    for name, n in keep.items():
        cfg.builders[name].keep_builds = n
    try:
        return janitor.run(st, sp, cfg, site=janitor.SiteHints(sp))
    finally:
        for name in keep:
            cfg.builders[name].keep_builds = float("inf")


def test_links_to_builds_the_janitor_removed_say_removed_and_none_points_nowhere(tmp_path):
    st, sp, cfg, s = _env(tmp_path, ("up", "down", "deploy", "ok"))

    def build(builder, **kw):
        n = make_build(st, builder, started=T0 + 10 * len(st.build_numbers(builder)) + 100 * len(builder), **kw)
        s.update(sp.take_hints() + [(builder, n)])
        return n

    u1 = build("up")
    u2 = build("up", request_extra={"rebuild_of": u1})
    build("up")
    d1 = build("down", extra={"upstream": {"builder": "up", "number": u1}})
    d2 = build("down", extra={"upstream": {"builder": "up", "number": u1}})
    t1 = build("deploy", steps=(("fire", "success", None),),
               extra={"steps": [{"name": "fire", "state": "finished", "result": "success", "started": T0,
                                 "finished": T0 + 1, "triggered": [{"builder": "ok", "number": 1, "request": "r"}]}]})
    x1 = build("ok", extra={"upstream": {"builder": "deploy", "number": t1}})
    build("ok")
    assert _row(_page(s, "up", u1), "downstream") == _link("down", d1) + " success; " + _link("down", d2) + " success"
    assert _row(_page(s, "up", u1), "rebuilt") == _link("up", u2) + " success"
    check_links(s.root)
    # The downstream D #1 and the triggered ok #1 go: their upstreams' pages say so.
    rep = _janitor(st, sp, cfg, {"down": 1, "ok": 1})
    assert (list(rep.removed["down"]), list(rep.removed["ok"])) == ([d1], [x1])
    s.update(sp.take_hints())
    check_links(s.root)
    assert _row(_page(s, "up", u1), "downstream") == \
        'down #1 <span class="dim">(removed)</span>; ' + _link("down", d2) + " success"
    assert _row(_page(s, "deploy", t1), "triggered") == 'ok #1 <span class="dim">(removed)</span> <span class="dim">by step fire</span>'
    assert _doc(s, "deploy", t1)["triggered"][0]["removed"] is True
    assert _doc(s, "up", u1)["downstream"][0] == {"builder": "down", "number": d1, "html": None,
                                                  "status": "removed", "removed": True}
    # The upstream U #1 goes: its rebuild and its downstream build say so.
    rep = _janitor(st, sp, cfg, {"up": 2})
    assert list(rep.removed["up"]) == [u1]
    s.update(sp.take_hints())
    check_links(s.root)
    assert _row(_page(s, "down", d2), "upstream") == 'started by up #1 <span class="dim">(removed)</span>'
    assert _row(_page(s, "up", u2), "rebuild") == 'rebuild of #1 <span class="dim">(removed)</span>'
    assert _doc(s, "up", u2)["rebuild_of_removed"] is True and _doc(s, "down", d2)["upstream"]["removed"] is True
    # A new process, and a full rendering, agree; so does one from nothing.
    for fresh in (False, True):
        if fresh:
            shutil.rmtree(s.root)
        s = site.Site(s.root, st, sp, cfg)
        s.rebuild(force=True)
        check_links(s.root)
        assert _row(_page(s, "down", d2), "upstream") == 'started by up #1 <span class="dim">(removed)</span>'
        assert _row(_page(s, "up", u2), "rebuild") == 'rebuild of #1 <span class="dim">(removed)</span>'
        assert "(removed)" in _row(_page(s, "deploy", t1), "triggered")


def test_a_full_rendering_catches_up_with_a_removal_it_was_not_told_of(tmp_path):
    """htmlgen was down while the janitor ran and its hints were lost: a
    full rendering (the pages of final builds are not written again)
    still writes again the pages that linked to the build removed."""
    st, sp, cfg, s = _env(tmp_path, ("up", "down"))
    u = make_build(st, "up", started=T0)
    d1 = make_build(st, "down", started=T0 + 100, extra={"upstream": {"builder": "up", "number": u}})
    make_build(st, "down", started=T0 + 200)
    s.rebuild(force=True)
    assert _link("down", d1) in _row(_page(s, "up", u), "downstream")
    _janitor(st, sp, cfg, {"down": 1})
    sp.take_hints()                               # lost
    os.unlink(os.path.join(s.root, site.INDEX))   # and INDEX: a full rendering, not forced
    s = site.Site(s.root, st, sp, cfg)
    s.rebuild()
    check_links(s.root)
    assert _row(_page(s, "up", u), "downstream") == 'down #1 <span class="dim">(removed)</span>'


# ------------------------------------------------------- notifications
class Refuser(BaseHTTPRequestHandler):
    """A webhook receiver that refuses for good (400), saying hostile things."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b"<script>alert('x')</script> & no"
        self.send_response(400)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def refuser():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Refuser)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_a_notification_given_up_shows_on_the_builds_page(daemons, refuser):
    """The real notifier gives up (a 400 is for good) and hints the real
    htmlgen, which writes the finished build's page again."""
    from test_notifier import finished_build, wake
    url = "http://127.0.0.1:%d/hook?token=s3cret" % refuser.server_address[1]
    daemons.write_global("[Notify]\nRetrySec=100ms\n")
    daemons.write_builder("b", "[Builder]\n[Step test]\nCommand=false\n[Notify]\nWebhook=%s\n" % url)
    daemons.start("htmlgen")
    daemons.start("notifier")
    n = finished_build(daemons, "b", "failure")
    daemons.spool.hint("b", n)
    page = os.path.join(daemons.site_dir, "builders", "b", str(n), "index.html")
    wait_for(lambda: os.path.exists(os.path.join(os.path.dirname(page), ".final")), what="the build's final page")
    wake(daemons)
    wait_for(lambda: daemons.state.read_undelivered("b", n), timeout=20, what="the notifier giving up")

    def shown():
        with open(page, encoding="utf-8") as f:
            return _row(f.read(), "notification")
    row = wait_for(shown, timeout=20, what="the page saying the notification was given up")
    assert row.startswith("notification to the webhook at 127.0.0.1 given up: ")
    assert "answered 400" in row and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; no" in row
    assert "<script>" not in open(page, encoding="utf-8").read() and "s3cret" not in open(page).read()
    doc = os.path.join(daemons.site_dir, "api", "builders", "b", "builds", "%d.json" % n)
    [m] = wait_for(lambda: json.load(open(doc))["undelivered"], what="the JSON file (written after the page)")
    assert m["channel"] == "webhook" and m["to"] == "the webhook at 127.0.0.1" and "answered 400" in m["reason"]
    assert isinstance(m["given_up"], float)
    check_links(daemons.site_dir)


def test_what_a_given_up_notification_shows_keeps_its_secrets():
    """A webhook's URL (its path or query may be the secret), an
    ExecNotify= command line, credentials in a reason: never shown."""
    from buildunits import siteviews
    mark = {"messages": [
        {"channel": "webhook", "destination": "https://hooks.example.org/services/T0/B0/SECRET?x=1",
         "reason": "refused: https://user:pw@hooks.example.org/ said 403 \x00", "given_up": T0, "attempts": 2},
        {"channel": "exec", "destination": "/usr/bin/notify --token SECRET", "reason": "exit 1", "given_up": T0},
        {"channel": "mail", "destination": "dev@example.org", "reason": "550 no", "given_up": "never"},
        "junk", {"channel": "webhook", "destination": "http://[::1", "reason": 5}]}
    v = siteviews.build_view({"builder": "b", "number": 1, "state": "finished", "_undelivered": mark})
    shown = [(m["to"], m["reason"], m["given_up"]) for m in v["undelivered"]]
    assert shown == [("the webhook at hooks.example.org", "refused: https://user:***@hooks.example.org/ said 403 \ufffd", T0),
                     ("ExecNotify=", "exit 1", T0), ("mail to dev@example.org", "550 no", None),
                     ("a webhook", "5", None)]
    assert "SECRET" not in json.dumps(siteviews.build_json(v))


def test_hostile_names_in_links_come_out_escaped_and_link_nowhere_unknown(tmp_path):
    """A record naming an upstream, a rebuild and triggered builds that
    are no builds (hostile names, numbers never taken): shown escaped,
    as removed, never as a link; no LINKS is made for them."""
    st, sp, cfg, s = _env(tmp_path, ("up",))
    n = make_build(st, "up", started=T0, request_extra={"rebuild_of": 99},
                   extra={"upstream": {"builder": "<b>x</b>&", "number": 3},
                          "steps": [{"name": "fire", "state": "finished", "result": "success",
                                     "triggered": [{"builder": "../../etc", "number": 1, "request": "r"}]}]})
    s.update([("up", n)])
    page = _page(s, "up", n)
    assert _row(page, "upstream") == 'started by &lt;b&gt;x&lt;/b&gt;&amp; #3 <span class="dim">(removed)</span>'
    assert _row(page, "rebuild") == 'rebuild of #99 <span class="dim">(removed)</span>'
    assert _row(page, "triggered").startswith('../../etc #1 <span class="dim">(removed)</span>')
    check_links(s.root)
    assert sorted(os.listdir(os.path.join(s.root, "builders"))) == ["up"]
    assert "99" not in os.listdir(os.path.join(s.root, "builders", "up"))
