"""`buildunits` commands in process: checkconfig, force, rebuild, cancel,
sendchange, status.  The bus is replaced by a stand-in (bus.call): either
nobody is on it (the spool fallback) or a scheduler that is handed the
call, made of the real Scheduler's D-Bus methods, so both paths are seen
to say the same (control.py).  fsck has tests/test_fsck.py."""

import json
import os
import types

import pytest

from buildunits import bus as busmod, cli, config, scheduler
from buildunits.bus import NoBus
from buildunits.spool import Spool
from buildunits.state import State
from support import inprocess

REV = "a" * 40


@pytest.fixture
def dirs(tmp_path):
    d = inprocess.dirs(tmp_path)
    inprocess.write_builders(d, {"hello": "[Builder]\nRepository=/srv/git/hello.git\nBranches=main\n[Step s]\nCommand=true\n"})
    return d


class _Notifier:
    watchdog_sec = None

    def status(self, text):
        pass

    ready = reloading = reloaded = stopping = watchdog = status


@pytest.fixture(params=["spool", "bus"])
def via(request, dirs, monkeypatch):
    """Where force and cancel go: "spool" (nobody on the bus) or "bus" (a
    Scheduler's D-Bus methods, in process)."""
    if request.param == "spool":
        def call(role, method, *args, **kw):
            raise busmod.Unreachable("no bus")
    else:
        s = scheduler.Scheduler(dirs, config.load(dirs.config), NoBus(), _Notifier())
        s.spool.ensure()
        s.state.ensure()
        s.wake = lambda *a: None

        def call(role, method, *args, **kw):
            try:
                return s.methods()[method](*args, "root")
            except busmod.MethodError as e:
                raise busmod.Refused(str(e))
    monkeypatch.setattr(busmod, "call", call)
    return request.param


@pytest.fixture
def run(dirs, capsys):
    def run(*args):
        argv = ["--config-dir", dirs.config, "--spool-dir", dirs.spool, "--state-dir", dirs.state,
                "--site-dir", dirs.site] + list(args)
        code = cli.main(argv)
        out = capsys.readouterr()
        return types.SimpleNamespace(code=code, out=out.out, err=out.err)
    return run


def forces(dirs):
    sp = Spool(dirs.spool)
    return [sp.read("changes", cid) for cid in sp.pending("changes")]


# ---------------------------------------------------------- checkconfig
def test_checkconfig_lists_the_builders(run, dirs):
    r = run("checkconfig")
    assert r.code == 0 and "hello: /srv/git/hello.git [main]; 1 step" in r.out
    assert "configuration OK, 1 builder" in r.out


def test_checkconfig_names_each_problem(run, dirs):
    with open(os.path.join(dirs.config, "builders", "bad.builder"), "w") as f:
        f.write("[Step s]\n")
    r = run("checkconfig")
    assert r.code == 1 and "bad.builder" in r.err and "1 problem" in r.err


def test_checkconfig_names_the_file_and_line_of_a_bad_systemd_directive(run, dirs):
    path = os.path.join(dirs.config, "builders", "limits.builder")
    with open(path, "w") as f:
        f.write("[Builder]\nMemoryMax=2G\n[Step s]\nCommand=true\nLimitNOFILE=lots\nUser=root\n")
    r = run("checkconfig")
    assert r.code == 1 and "2 problems" in r.err
    assert "%s:5: [Step s] LimitNOFILE=: not a whole number" % path in r.err
    assert "%s:6: [Step s] User=: set by buildunits, not by a builder" % path in r.err


# ---------------------------------------------------------------- force
def test_force_queues_a_force_record(run, dirs, via):
    r = run("force", "hello", "--reason", "because", "--property", "color=blue", "--revision", REV)
    assert r.code == 0 and r.out.startswith("forced build of hello queued (")
    [rec] = forces(dirs)
    assert rec["format"] == "force" and rec["builder"] == "hello" and rec["revision"] == REV
    assert rec["reason"] == "because" and rec["properties"] == {"color": "blue"}


def test_force_of_an_unknown_builder_is_refused_the_same_way(run, dirs, via):
    r = run("force", "nosuch")
    assert r.code == 1 and "no builder 'nosuch' (builders: hello)" in r.err and forces(dirs) == []


@pytest.mark.parametrize("args,message", [
    (["--revision", "HEAD"], "--revision must be a full commit id"),
    (["--property", "color"], "--property wants NAME=VALUE, not 'color'"),
    (["--property", "9lives=x"], "--property: property name '9lives' is not [A-Za-z_][A-Za-z0-9_]{0,63}"),
    (["--property", "a-b=x"], "property name 'a-b' is not"),
    (["--property", "a" * 65 + "=x"], "property name '%s' is not" % ("a" * 65)),
    (["--property", "big=" + "x" * 4097], "the value of property big is 4097 bytes long, more than 4096"),
    (["--property", "bad=\udcff"], "the value of property bad is not valid UTF-8"),
    (sum((["--property", "p%d=%s" % (i, "x" * 4000)] for i in range(5)), []),
     "the properties are 20010 bytes together, more than 16384"),
    (sum((["--property", "p%d=" % i] for i in range(65)), []), "65 properties, more than 64"),
])
def test_force_usage_errors_exit_2(run, dirs, via, args, message):
    r = run("force", "hello", *args)
    assert r.code == 2 and message in r.err and forces(dirs) == []


def test_force_takes_any_text_as_a_property_value(run, dirs, via):
    hostile = {"cmd": "$(touch /tmp/pwned)", "semi": "; rm -rf /", "tick": "`id`", "nl": "a\nb\n",
               "quote": "'\"", "empty": "", "_x9": "\u00e9t\u00e9", "A" * 64: "max"}
    r = run("force", "hello", *sum((["--property", "%s=%s" % kv] for kv in hostile.items()), []))
    assert r.code == 0, r.err
    [rec] = forces(dirs)
    assert rec["properties"] == hostile


def test_the_force_method_refuses_bad_properties_with_the_same_words(dirs):
    s = scheduler.Scheduler(dirs, config.load(dirs.config), NoBus(), _Notifier())
    s.spool.ensure()
    with pytest.raises(busmod.MethodError, match=r"property name 'x y' is not \[A-Za-z_\]"):
        s.methods()["Force"]("hello", "", "", "", {"x y": "1"}, "root")
    with pytest.raises(busmod.MethodError, match="the value of property k holds a NUL character"):
        s.methods()["Force"]("hello", "", "", "", {"k": "a\0b"}, "root")
    assert forces(dirs) == []


def test_force_of_a_branch_outside_branches_notes_it(run, dirs):
    Spool(dirs.spool).ensure()
    r = run("force", "hello", "--branch", "topic")
    assert r.code == 0 and "note: branch topic is not in hello's Branches= (main); building it anyway" in r.err


def test_force_with_a_broken_configuration_warns_and_queues(run, dirs):
    with open(os.path.join(dirs.config, "builders", "bad.builder"), "w") as f:
        f.write("[Step s]\n")
    r = run("force", "hello")
    assert r.code == 0 and "warning: the configuration in %s has 1 problem" % dirs.config in r.err


# --------------------------------------------------------------- cancel
def _build(dirs, state):
    st = State(dirs.state)
    n = st.allocate_number("hello")
    st.write_build({"builder": "hello", "number": n, "state": state, "result": "success" if state == "finished"
                    else None, "steps": [], "worker": "w1"})
    return n


@pytest.mark.parametrize("args,message", [
    ([], "cancel wants BUILDER NUMBER, or --request ID"),
    (["hello"], "cancel hello: which build? give its NUMBER"),
])
def test_cancel_usage_errors_exit_2(run, dirs, args, message):
    r = run("cancel", *args)
    assert r.code == 2 and message in r.err


def test_cancel_of_a_running_build_asks_its_runner(run, dirs, via):
    Spool(dirs.spool).ensure()
    n = _build(dirs, "running")
    r = run("cancel", "hello", str(n))
    assert r.code == 0 and "cancelling hello #%d (running on w1)" % n in r.out
    assert list(Spool(dirs.spool).cancel_requests()) == [("hello", n)]


@pytest.mark.parametrize("state,message", [(None, "hello #1 does not exist"),
                                           ("finished", "hello #1 has already finished (success)")])
def test_cancel_refusals_say_why_the_same_way(run, dirs, via, state, message):
    Spool(dirs.spool).ensure()
    if state:
        _build(dirs, state)
    r = run("cancel", "hello", "1")
    assert r.code == 1 and message in r.err and Spool(dirs.spool).cancel_requests() == {}


def test_cancel_of_a_queued_request(run, dirs, via):
    sp = Spool(dirs.spool)
    sp.ensure()
    rid = sp.deliver("requests", "request", {"builder": "hello"})
    r = run("cancel", "--request", rid)
    assert r.code == 0 and "request %s cancelled" % rid in r.out and sp.cancelled() == [rid]
    r = run("cancel", "--request", rid)
    assert r.code == 1 and "request %s is not queued (already running, finished or unknown)" % rid in r.err


# -------------------------------------------------------------- rebuild
OLD_CHANGE = {"id": "c1", "revision": REV, "branch": "main", "repository": "/srv/git/hello.git",
              "author": "A <a@example.invalid>", "message": "m", "files": ["f"], "when": 1.0, "queued": 2.0,
              "source": "poller"}


def _finished(dirs, request, revision=REV, branch="main"):
    st = State(dirs.state)
    n = st.allocate_number("hello")
    st.write_build({"builder": "hello", "number": n, "state": "finished", "result": "failure", "steps": [],
                    "worker": "w1", "branch": branch, "revision": revision, "request": request})
    return n


def test_rebuild_queues_what_the_build_built(run, dirs, via):
    Spool(dirs.spool).ensure()
    n = _finished(dirs, {"builder": "hello", "branch": "main", "revision": REV, "changes": [OLD_CHANGE],
                         "properties": {"color": "blue"}, "reason": "change aaaaaaaaaaaa on main"})
    r = run("rebuild", "hello", str(n), "--reason", "flaky")
    assert r.code == 0 and r.out.startswith("rebuild of hello #%d queued (" % n), r.err
    [rec] = forces(dirs)
    assert rec["format"] == "force" and rec["builder"] == "hello" and rec["rebuild_of"] == n
    assert (rec["branch"], rec["revision"], rec["properties"]) == ("main", REV, {"color": "blue"})
    assert rec["changes"] == [OLD_CHANGE] and rec["reason"] == "flaky"
    # The scheduler makes it a request that says what it rebuilds.
    s = scheduler.Scheduler(dirs, config.load(dirs.config), NoBus(), _Notifier())
    s.state.ensure()
    s.work()
    sp = Spool(dirs.spool)
    [req] = [sp.read("requests", rid) for rid in sp.pending("requests")]
    assert (req["rebuild_of"], req["revision"], req["branch"], req["properties"]) == (n, REV, "main", {"color": "blue"})
    assert req["changes"] == [OLD_CHANGE] and req["changes_omitted"] == 0
    assert req["reason"].startswith("rebuild of #%d by " % n) and req["reason"].endswith(": flaky")


def test_rebuild_of_a_forced_tip_builds_the_revision_it_checked_out(run, dirs, via):
    Spool(dirs.spool).ensure()
    # Forced without a revision: the request has none, the record the one checked out.
    n = _finished(dirs, {"builder": "hello", "branch": "main", "revision": "", "changes": [], "properties": {}})
    assert run("rebuild", "hello", str(n)).code == 0
    [rec] = forces(dirs)
    assert rec["revision"] == REV and rec["changes"] == [] and rec["properties"] == {}


def test_rebuild_of_a_build_that_recorded_no_revision_notes_it(run, dirs):
    Spool(dirs.spool).ensure()
    n = _finished(dirs, {"branch": "main", "revision": ""}, revision="")
    r = run("rebuild", "hello", str(n))
    assert r.code == 0 and "note: hello #%d recorded no revision; the newest commit of main is built" % n in r.err


def test_rebuild_of_an_old_record_without_properties_or_changes(run, dirs, via):
    Spool(dirs.spool).ensure()
    n = _finished(dirs, None)   # no request at all in the record
    assert run("rebuild", "hello", str(n)).code == 0
    [rec] = forces(dirs)
    assert (rec["revision"], rec["branch"], rec["changes"], rec["properties"]) == (REV, "main", [], {})


@pytest.mark.parametrize("builder,number,message", [
    ("hello", "7", "hello #7 does not exist"),
    ("nosuch", "1", "no builder 'nosuch' (builders: hello)"),
])
def test_rebuild_refusals_name_what_is_missing(run, dirs, via, builder, number, message):
    Spool(dirs.spool).ensure()
    _finished(dirs, {})
    r = run("rebuild", builder, number)
    assert r.code == 1 and message in r.err and forces(dirs) == []


@pytest.mark.parametrize("number", ["0", "4294967296", "-3"])
def test_rebuild_of_a_number_out_of_range_is_a_usage_error(run, dirs, number):
    r = run("rebuild", "hello", number)
    assert r.code == 2 and "rebuild hello: %s is not a build number (1 to 4294967295)" % number in r.err


# ------------------------------------------------------ sendchange, status
def test_sendchange_queues_a_change_and_status_shows_it(run, dirs):
    r = run("sendchange", "--repository", "/srv/git/hello.git", "--branch", "refs/heads/main", "--revision", REV,
            "--author", "A <a@example.invalid>", "--message", "m", "--when", "1000", "--file", "f")
    assert r.code == 0 and "change aaaaaaaaaaaa on main queued" in r.out
    s = json.loads(run("status", "--json").out)
    assert [(c["kind"], c["branch"], c["revision"]) for c in s["changes"]] == [("change", "main", REV)]
    text = run("status").out
    assert "changes waiting for the scheduler: 1" in text and "main aaaaaaaaaaaa" in text


def test_sendchange_refuses_an_abbreviated_revision_of_a_remote_repository(run, dirs):
    r = run("sendchange", "--repository", "https://example.invalid/r.git", "--branch", "main", "--revision", "abc1234")
    assert r.code == 2 and "is abbreviated; with a remote repository give" in r.err


def test_status_opens_a_bounded_part_of_a_long_queue_and_counts_the_rest(run, dirs, monkeypatch):
    from buildunits import status as statusmod
    sp = Spool(dirs.spool)
    sp.ensure()
    fields = {"builder": "hello", "branch": "main", "revision": REV, "reason": "r", "changes": [], "queued": 1.0}
    for _ in range(statusmod.SHOWN + 30):
        sp.deliver("requests", "request", dict(fields))
    opened = []
    real = Spool.peek
    monkeypatch.setattr(Spool, "peek", lambda self, q, rid: opened.append(rid) or real(self, q, rid))
    s = json.loads(run("status", "--json").out)
    assert s["queued_count"] == statusmod.SHOWN + 30 and len(s["queued"]) == statusmod.SHOWN
    assert len(opened) <= statusmod.SHOWN
    text = run("status").out
    assert "queued builds: %d" % (statusmod.SHOWN + 30) in text and "... and 30 more; by builder: hello 50" in text
