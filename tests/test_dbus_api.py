"""The D-Bus API: force, rebuild, cancel and status over a private system
bus, the spool fallback without a bus, who may call what (the project's
policy), and signals checked against their sender."""

import json
import os
import pwd
import shutil
import subprocess
import tempfile

import pytest

from gi.repository import GLib

import harness
from harness import wait_for

LONG = """
[Builder]
PollIntervalSec=0

[Step wait]
Command=echo started; echo $$ > {pidfile}; sleep 300

[Step after]
Command=echo should not run
AlwaysRun=yes
"""


def long_builder(daemons, tmp_path):
    pidfile = tmp_path / "step.pid"
    daemons.write_builder("long", LONG.format(pidfile=pidfile))
    return pidfile


def _running(daemons, builder, number):
    rec = daemons.read_build(builder, number) or {}
    return any(s.get("state") == "running" and s["name"] == "wait" for s in rec.get("steps", []))


def test_force_and_cancel_over_the_bus(daemons, tmp_path, monitor):
    pidfile = long_builder(daemons, tmp_path)
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    out = daemons.cli("force", "long", "--reason", "over the bus", "--property", "color=blue", check=True)
    assert "not on the bus" not in out.stdout
    wait_for(lambda: _running(daemons, "long", 1), what="the step to run")
    rec = daemons.read_build("long", 1)
    assert rec["request"]["reason"].startswith("forced by root: over the bus")
    assert rec["request"]["properties"] == {"color": "blue"}
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the step's pid"))
    out = daemons.cli("cancel", "long", "1", check=True)
    assert "cancelling long #1" in out.stdout
    b = daemons.wait_build_finished("long", 1)
    assert b["result"] == "cancelled" and b["reason"] == "cancelled by root"
    assert [s["result"] for s in b["steps"]] == ["cancelled", "skipped"]
    wait_for(lambda: not os.path.exists("/proc/%d" % pid) or
             open("/proc/%d/stat" % pid).read().split(")")[-1].split()[0] == "Z",
             what="the step's process to be killed")
    monitor.wait_for_signal("CancelRequested", ("long", 1))
    monitor.wait_for_signal("BuildFinished", ("long", 1, "cancelled"))
    # Not retried, and the cancellation is cleared (just after the final record).
    wait_for(lambda: daemons.spool.cancel_requests() == {} and not daemons.spool.all_claimed(),
             what="the cancellation and the claim to be cleared")
    assert daemons.spool.pending("requests") == []
    # Errors come back as the daemon's message.
    bad = daemons.cli("force", "nosuch")
    assert bad.returncode == 1 and "no builder 'nosuch'" in bad.stderr
    done = daemons.cli("cancel", "long", "1")
    assert done.returncode == 1 and "already finished (cancelled)" in done.stderr
    status = json.loads(daemons.cli("status", "--json", check=True).stdout)
    assert status["builders"]["long"]["last"]["result"] == "cancelled"


def test_cancel_a_queued_request(daemons, tmp_path):
    long_builder(daemons, tmp_path)
    daemons.start("scheduler")
    daemons.cli("force", "long", check=True)
    rid = wait_for(lambda: daemons.spool.pending("requests"), what="the request")[0]
    out = daemons.cli("cancel", "--request", rid, check=True)
    assert "cancelled" in out.stdout
    assert daemons.spool.cancelled() == [rid]
    # A runner started now finds nothing to build.
    r = daemons.start("runner", "w1")
    assert daemons.builds("long") == []
    again = daemons.cli("cancel", "--request", rid)
    assert again.returncode == 1 and "not queued" in again.stderr
    assert r.running()


def test_cancel_without_a_bus_goes_through_the_spool(daemons, tmp_path):
    long_builder(daemons, tmp_path)
    daemons.start("scheduler", bus=False)
    daemons.start("runner", "w1", bus=False)
    out = daemons.cli("force", "long", bus=False, check=True)
    assert "not on the bus" in out.stdout
    wait_for(lambda: _running(daemons, "long", 1), what="the step to run")
    daemons.cli("cancel", "long", "1", bus=False, check=True)
    b = daemons.wait_build_finished("long", 1)
    assert b["result"] == "cancelled"
    # The user is whoever ran the CLI.
    assert b["reason"].startswith("cancelled by ")


def test_runner_restart_finds_its_build_cancelled(daemons, tmp_path):
    long_builder(daemons, tmp_path)
    daemons.start("scheduler", bus=False)
    daemons.start("runner", "w1", bus=False)
    daemons.cli("force", "long", bus=False, check=True)
    wait_for(lambda: _running(daemons, "long", 1), what="the step to run")
    daemons.kill("runner@w1")
    daemons.cli("cancel", "long", "1", bus=False, check=True)
    daemons.start("runner", "w1", bus=False)
    b = daemons.read_build("long", 1)
    assert b["result"] == "cancelled" and daemons.spool.pending("requests") == []
    assert daemons.builds("long") == [1]


def test_status_method_and_introspection(daemons):
    daemons.write_builder("solo", "[Step hi]\nCommand=echo hi\n")
    daemons.start("scheduler")
    p = subprocess.run(["busctl", "--address=" + daemons.bus.address, "introspect", "--no-pager",
                        "org.buildunits.Scheduler", "/org/buildunits/Scheduler"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.returncode == 0, p.stderr
    for member in (".Force", ".Rebuild", ".Cancel", ".Status", ".BuildRequested", ".CancelRequested"):
        assert member in p.stdout
    p = subprocess.run(["busctl", "--address=" + daemons.bus.address, "call", "--json=short",
                        "org.buildunits.Scheduler", "/org/buildunits/Scheduler", "org.buildunits.Scheduler",
                        "Status"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.returncode == 0, p.stderr
    status = json.loads(json.loads(p.stdout)["data"][0])
    assert "solo" in status["builders"] and status["queued"] == []


def test_signals_from_a_connection_not_owning_the_name_are_ignored(private_bus):
    """A subscriber acts on BuildRequested from the owner of
    org.buildunits.Scheduler, and not on the same signal forged by another
    connection."""
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = private_bus.address
    try:
        from buildunits import bus as busmod
        import pydbus
        from gi.repository import Gio
        conn = lambda: busmod.Bus(pydbus.connect(private_bus.address))  # noqa: E731
        owner, forger, listener = conn(), conn(), conn()
        owner.publish("Scheduler")
        heard = []
        listener.subscribe("Scheduler", "BuildRequested", lambda *args: heard.append(args[0]))
        # The forger emits the same signal on the same path and interface, unnamed.
        forger._bus.con.emit_signal(None, "/org/buildunits/Scheduler", "org.buildunits.Scheduler",
                                    "BuildRequested", GLib.Variant("(ssss)", ("forged", "b", "main", "x")))
        # A round trip of the forger's to the bus: the bus has routed its
        # signal (messages of one connection are handled in order) before
        # the genuine one is sent, so the listener gets the forged one first.
        forger._bus.con.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                  "GetId", None, None, Gio.DBusCallFlags.NONE, -1, None)
        owner.emit("BuildRequested", "genuine", "b", "main", "x")
        ctx = GLib.MainContext.default()
        def genuine_heard():
            while ctx.iteration(False):
                pass
            return "genuine" in heard
        wait_for(genuine_heard, what="the genuine signal")
        # The forged one was sent first, so it would have arrived first.
        assert heard == ["genuine"]
        owner.close()
    finally:
        del os.environ["DBUS_SYSTEM_BUS_ADDRESS"]


def test_force_over_the_bus_refuses_a_revision_that_is_not_a_commit_id(daemons):
    daemons.write_builder("solo", "[Step hi]\nCommand=echo hi\n")
    daemons.start("scheduler")
    call = ["busctl", "--address=" + daemons.bus.address, "call", "--", "org.buildunits.Scheduler",
            "/org/buildunits/Scheduler", "org.buildunits.Scheduler", "Force", "ssssa{ss}", "solo", "main"]
    p = subprocess.run(call + ["--upload-pack=touch x", "why", "0"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    assert p.returncode != 0
    assert "revision '--upload-pack=touch x' is not a full commit id (40 or 64 lowercase hex digits)" in p.stderr
    assert daemons.spool.pending("changes") == [] and daemons.spool.pending("requests") == []
    p = subprocess.run(call + ["b" * 40, "why", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.returncode == 0, p.stderr
    rid = wait_for(lambda: daemons.spool.pending("requests"), what="the request")[0]
    assert daemons.spool.read("requests", rid)["revision"] == "b" * 40


def _busctl(address, *call, user=None):
    """busctl call on the bus at ADDRESS, as USER (a pwd entry) if given."""
    def become():
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    return subprocess.run(["busctl", "--address=" + address, "call", "--json=short", "--",
                           "org.buildunits.Scheduler", "/org/buildunits/Scheduler", "org.buildunits.Scheduler"]
                          + list(call), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=become if user else None)


def test_rebuild_over_the_bus(daemons, monitor):
    daemons.write_builder("solo", "[Step hi]\nCommand=echo $BUILDUNITS_PROPERTY_who\n")
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.cli("force", "solo", "--property", "who=ann", check=True)
    assert daemons.wait_build_finished("solo", 1)["result"] == "success"
    p = _busctl(daemons.bus.address, "Rebuild", "sus", "solo", "1", "again")
    assert p.returncode == 0, p.stderr
    fid = json.loads(p.stdout)["data"][0]
    b = daemons.wait_build_finished("solo", 2)
    assert b["request"]["force"] == fid and b["request"]["rebuild_of"] == 1
    assert b["request"]["reason"] == "rebuild of #1 by root: again" and b["request"]["properties"] == {"who": "ann"}
    assert "ann" in daemons.step_log("solo", 2, "hi")
    monitor.wait_for_signal("BuildRequested", args=lambda a: a[1] == "solo" and a[0] == b["request_id"])
    # A number that holds no build: the error names it, and nothing is queued.
    p = _busctl(daemons.bus.address, "Rebuild", "sus", "solo", "9", "")
    assert p.returncode != 0 and "solo #9 does not exist" in p.stderr
    out = daemons.cli("rebuild", "solo", "9")
    assert out.returncode == 1 and "rebuild refused: solo #9 does not exist" in out.stderr
    assert daemons.spool.pending("changes") == [] and daemons.spool.pending("requests") == []


@pytest.mark.skipif(os.getuid() != 0, reason="calls the bus as another user, which needs root")
def test_rebuild_needs_what_force_needs(tmp_path):
    """Under the project's policy, a user who is neither root nor in
    buildunits-admin may call Status, and neither Force nor Rebuild."""
    # The socket in a directory the other user can reach (tmp_path is root's alone).
    sockdir = tempfile.mkdtemp(prefix="bu-", dir="/tmp")
    os.chmod(sockdir, 0o755)
    bus = harness.PrivateBus(tmp_path / "dbus", sockdir=sockdir)
    assert bus.uses_project_policy
    d = None
    try:
        bus.start()
        d = harness.Daemons(tmp_path, bus=bus)
        d.write_builder("solo", "[Step hi]\nCommand=echo hi\n")
        d.start("scheduler")
        nobody = pwd.getpwnam("nobody")
        for call in (["Force", "ssssa{ss}", "solo", "", "", "", "0"], ["Rebuild", "sus", "solo", "1", ""]):
            p = _busctl(bus.address, *call, user=nobody)
            assert p.returncode != 0 and "Access denied" in p.stderr, (call, p.stderr)
        p = _busctl(bus.address, "Status", user=nobody)
        assert p.returncode == 0, p.stderr
        assert d.spool.pending("changes") == [] and d.spool.pending("requests") == []
        # Root may, and is told what is wrong with the call.
        p = _busctl(bus.address, "Rebuild", "sus", "solo", "1", "")
        assert p.returncode != 0 and "solo #1 does not exist" in p.stderr
    finally:
        if d is not None:
            d.close()
        bus.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
