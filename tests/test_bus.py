"""bus.py: the names and paths of the daemons' objects, their introspection
XML, NoBus, and a method round trip on a private dbus-daemon (in process:
the daemon's side on this thread's main loop, the caller on another thread,
each with a connection of its own)."""

import os
import pwd
import re
import threading
import time
import xml.etree.ElementTree as ET

import pytest
from gi.repository import GLib

import harness
from buildunits import bus as busmod

ROLES = ("Poller", "Scheduler", "Runner", "HTMLGen")
ELEMENT = re.compile(r"\A[A-Za-z_-][A-Za-z0-9_-]*\Z")


# ------------------------------------------------------------ names
def test_each_daemon_has_its_well_known_name_and_object_path():
    assert busmod.bus_name("Poller") == "org.buildunits.Poller"
    assert busmod.bus_name("Scheduler") == "org.buildunits.Scheduler"
    assert busmod.bus_name("HTMLGen") == "org.buildunits.HTMLGen"
    assert busmod.bus_name("Runner", "w1") == "org.buildunits.Runner.w1"
    for role in ROLES:
        assert busmod.object_path(role) == "/org/buildunits/" + role
    # One path for every runner: the worker is in the name only.
    assert busmod.object_path("Runner") == "/org/buildunits/Runner"


@pytest.mark.parametrize("worker", ["w1", "build.host", "1", "x_y", "a-b", "é", "a b", "_2e", "", "9lives"])
def test_a_workers_name_becomes_a_valid_bus_name_element(worker):
    e = busmod.escape_element(worker)
    assert ELEMENT.match(e), e
    name = busmod.bus_name("Runner", worker)
    assert len(name) <= 255 and all(ELEMENT.match(p) for p in name.split("."))


def test_different_workers_never_share_a_bus_name():
    # "build.host" and "build_2ehost" must not collide, nor "1" and "_1".
    workers = ["build.host", "build_2ehost", "build-host", "build_host", "1", "_1", "_31", "a.b", "a_2eb"]
    escaped = [busmod.escape_element(w) for w in workers]
    assert len(set(escaped)) == len(escaped), dict(zip(workers, escaped))


def test_introspection_is_valid_xml_naming_each_signal_and_method_with_typed_args():
    expected = {
        "Poller": ({"ChangeQueued"}, set()),
        "Scheduler": ({"BuildRequested", "CancelRequested"}, {"Force", "ForcePriority", "Rebuild", "Cancel", "Status"}),
        "Runner": ({"BuildStarted", "StepStarted", "StepFinished", "BuildFinished"}, {"Status"}),
        "HTMLGen": ({"SiteUpdated"}, set()),
    }
    for role, (signals, methods) in expected.items():
        root = ET.fromstring(busmod.introspection_xml(role))
        assert root.tag == "node"
        [iface] = root.findall("interface")
        assert iface.get("name") == "org.buildunits." + role
        assert {s.get("name") for s in iface.findall("signal")} == signals
        assert {m.get("name") for m in iface.findall("method")} == methods
        for member in list(iface):
            for arg in member.findall("arg"):
                assert arg.get("name") and GLib.Variant.is_signature(arg.get("type")), (role, arg.attrib)
                if member.tag == "method":
                    assert arg.get("direction") in ("in", "out")
    force = ET.fromstring(busmod.introspection_xml("Scheduler")).find(".//method[@name='Force']")
    assert [(a.get("type"), a.get("direction")) for a in force.findall("arg")] == \
        [("s", "in")] * 4 + [("a{ss}", "in"), ("s", "out")]
    rebuild = ET.fromstring(busmod.introspection_xml("Scheduler")).find(".//method[@name='Rebuild']")
    assert [(a.get("name"), a.get("type"), a.get("direction")) for a in rebuild.findall("arg")] == \
        [("builder", "s", "in"), ("number", "u", "in"), ("reason", "s", "in"), ("id", "s", "out")]
    # Only Status is open to anyone, and every role that has methods has it.
    assert busmod.READ_ONLY_METHODS == ("Status",)


def test_no_bus_does_nothing_and_says_so():
    nb = busmod.NoBus()
    assert nb.available is False and nb.unique_name is None
    assert nb.publish("Runner", "w1", {"Status": lambda caller: "{}"}) is None
    heard = []
    nb.subscribe("Runner", "BuildFinished", heard.append)
    nb.emit("BuildFinished", "hello", 1, "success")
    nb.close()
    assert heard == []


def test_call_without_a_reachable_bus_is_unreachable(monkeypatch):
    import pydbus

    def no_bus():
        raise GLib.Error("Could not connect: No such file or directory")
    monkeypatch.setattr(pydbus, "SystemBus", no_bus)
    with pytest.raises(busmod.Unreachable, match="Could not connect"):
        busmod.call("Scheduler", "Status")


# ------------------------------------------------------- round trip
def _call_in_thread(func):
    """Run FUNC on another thread while this one iterates the main context
    (where the published object's methods run); its result or exception."""
    out = {}

    def run():
        try:
            out["value"] = func()
        except BaseException as e:
            out["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    ctx = GLib.MainContext.default()
    deadline = time.monotonic() + harness.scaled(15)
    while t.is_alive() and time.monotonic() < deadline:
        ctx.iteration(False) or t.join(0.01)
    assert not t.is_alive(), "the call did not return"
    return out


@pytest.fixture
def on_private_bus(private_bus, monkeypatch):
    """busmod.call() pointed at PRIVATE_BUS (a new connection per call, as
    a command's one call per process has)."""
    import pydbus
    monkeypatch.setattr(pydbus, "SystemBus", lambda: pydbus.connect(private_bus.address))
    daemons = []

    def make():
        d = busmod.Bus(pydbus.connect(private_bus.address))
        daemons.append(d)
        return d
    yield make
    for d in daemons:
        d.close()


def test_a_published_method_is_called_with_its_arguments_and_the_callers_name(on_private_bus):
    d = on_private_bus()
    seen = []

    def cancel(builder, number, request, caller):
        seen.append((builder, number, request, caller))
        return "cancelling %s #%d" % (builder, number)
    d.publish("Scheduler", methods={"Cancel": cancel, "Status": lambda caller: '{"ok": true}'})
    out = _call_in_thread(lambda: busmod.call("Scheduler", "Cancel", "hello", 7, ""))
    assert out == {"value": "cancelling hello #7"}
    assert seen == [("hello", 7, "", pwd.getpwuid(os.getuid()).pw_name)]
    assert _call_in_thread(lambda: busmod.call("Scheduler", "Status")) == {"value": '{"ok": true}'}


def test_a_refused_call_raises_refused_with_the_daemons_message(on_private_bus):
    d = on_private_bus()

    def force(builder, branch, revision, reason, properties, caller):
        raise busmod.MethodError("no builder %r" % builder)
    d.publish("Scheduler", methods={"Force": force})
    out = _call_in_thread(lambda: busmod.call("Scheduler", "Force", "nosuch", "main", "", "why", {}))
    assert isinstance(out.get("error"), busmod.Refused), out
    assert str(out["error"]) == "no builder 'nosuch'"


def test_a_runners_method_is_reached_through_its_workers_name(on_private_bus):
    d = on_private_bus()
    d.publish("Runner", "build.host", methods={"Status": lambda caller: "busy"})
    assert _call_in_thread(lambda: busmod.call("Runner", "Status", worker="build.host")) == {"value": "busy"}
    out = _call_in_thread(lambda: busmod.call("Runner", "Status", worker="other"))
    assert isinstance(out.get("error"), busmod.Unreachable), out


def test_a_name_already_owned_cannot_be_taken_over(on_private_bus):
    first, second = on_private_bus(), on_private_bus()
    first.publish("HTMLGen")
    with pytest.raises((RuntimeError, GLib.Error)):
        second.publish("HTMLGen")
