"""D-Bus for the daemons: the only module that imports pydbus.

Each daemon owns one well-known name on the system bus and exports one
object; signals are emitted only after the spool or state change they
announce is committed, and are wake-up hints: a receiver that misses one
finds the work on its next rescan.

    name                          object path                  signals
    org.buildunits.Poller         /org/buildunits/Poller       ChangeQueued
    org.buildunits.Scheduler      /org/buildunits/Scheduler    BuildRequested
    org.buildunits.Runner.WORKER  /org/buildunits/Runner       BuildStarted StepStarted
                                                               StepFinished BuildFinished
    org.buildunits.HTMLGen        /org/buildunits/HTMLGen      SiteUpdated

Each daemon emits its signals in the order of its own commits.  Signals of
different daemons may interleave out of causal order: a runner woken by
inotify at a request's commit can announce BuildStarted before the
scheduler's BuildRequested reaches the bus.  The spool, not the signal
order, is the truth.

Receivers act only on signals whose sender owns the expected name (tracked
through the bus's NameOwnerChanged), so another connection cannot make a
daemon act by forging a signal.  Every method call passes a timeout.  The
main loop is GLib's, in the main thread; other threads hand events to it
with call_soon().

When no system bus can be reached, connect() returns NoBus, whose methods do
nothing: the daemons still work, through inotify and rescans.
DBUS_SYSTEM_BUS_ADDRESS selects the bus (tests point it at a private
dbus-daemon).
"""

import logging
import pwd
import re

from gi.repository import Gio, GLib

try:
    import pydbus
    from pydbus.generic import signal as _signal
except ImportError:  # pragma: no cover - the Debian package is a dependency
    pydbus = None

CALL_TIMEOUT_SEC = 5
PREFIX = "org.buildunits."

_SIGNALS = {
    "Poller": {"ChangeQueued": [("id", "s"), ("repository", "s"), ("branch", "s"), ("revision", "s")]},
    "Scheduler": {"BuildRequested": [("request", "s"), ("builder", "s"), ("branch", "s"), ("revision", "s")],
                  "CancelRequested": [("builder", "s"), ("number", "u")]},
    "Runner": {
        "BuildStarted": [("builder", "s"), ("number", "u"), ("worker", "s")],
        "StepStarted": [("builder", "s"), ("number", "u"), ("step", "s")],
        "StepFinished": [("builder", "s"), ("number", "u"), ("step", "s"), ("result", "s")],
        "BuildFinished": [("builder", "s"), ("number", "u"), ("result", "s")],
    },
    "HTMLGen": {"SiteUpdated": [("builder", "s"), ("number", "u")]},
}

# Methods: role -> {name: ([(arg, type)], [(out, type)])}.  Daemons pass the
# implementations to publish().
_METHODS = {
    "Scheduler": {
        "Force": ([("builder", "s"), ("branch", "s"), ("revision", "s"), ("reason", "s"),
                   ("properties", "a{ss}")], [("id", "s")]),
        "ForcePriority": ([("builder", "s"), ("branch", "s"), ("revision", "s"), ("reason", "s"),
                           ("properties", "a{ss}"), ("priority", "i")], [("id", "s")]),
        "Rebuild": ([("builder", "s"), ("number", "u"), ("reason", "s")], [("id", "s")]),
        "Cancel": ([("builder", "s"), ("number", "u"), ("request", "s")], [("message", "s")]),
        "Status": ([], [("json", "s")]),
    },
    "Runner": {"Status": ([], [("json", "s")])},
}

# Methods anyone may call (the D-Bus policy, units/dbus/org.buildunits.conf,
# lets only root and the buildunits-admin group call the others).
READ_ONLY_METHODS = ("Status",)
ERROR_PREFIX = PREFIX + "Error."


class MethodError(Exception):
    """Raised by a method implementation: the caller gets the D-Bus error
    org.buildunits.Error.Failed with the message."""


# pydbus names a D-Bus error after the exception's class name when it has a dot.
_Failed = type(ERROR_PREFIX + "Failed", (Exception,), {})

logging.getLogger("pydbus.registration").setLevel(logging.CRITICAL)  # we log our own


def bus_name(role, worker=None):
    """The well-known name of a daemon; a runner's includes its worker."""
    if role == "Runner":
        return PREFIX + "Runner." + escape_element(worker)
    return PREFIX + role


def object_path(role):
    return "/org/buildunits/" + role


def escape_element(text):
    """TEXT as a valid bus-name element: [A-Za-z0-9_-], not starting with a digit.

    >>> escape_element("1"), escape_element("build.host")
    ('_1', 'build_2ehost')
    """
    out = re.sub(r"[^A-Za-z0-9-]", lambda m: "_%02x" % ord(m.group()), text)
    if not out or out[0].isdigit():
        out = "_" + out
    return out


def introspection_xml(role):
    parts = ['<node><interface name="%s%s">' % (PREFIX, role)]
    for name, args in _SIGNALS.get(role, {}).items():
        parts.append('<signal name="%s">' % name)
        parts += ['<arg name="%s" type="%s"/>' % a for a in args]
        parts.append("</signal>")
    for name, (ins, outs) in _METHODS.get(role, {}).items():
        parts.append('<method name="%s">' % name)
        parts += ['<arg name="%s" type="%s" direction="in"/>' % a for a in ins]
        parts += ['<arg name="%s" type="%s" direction="out"/>' % a for a in outs]
        parts.append("</method>")
    parts.append("</interface></node>")
    return "".join(parts)


def call_soon(func, *args):
    """Run FUNC(*ARGS) on the main loop; safe from any thread."""
    def once():
        func(*args)
        return False
    GLib.idle_add(once)


class NoBus:
    """Stands in when there is no system bus: every operation does nothing."""

    available = False
    unique_name = None

    def publish(self, role, worker=None, methods=None):
        return None

    def emit(self, signal, *args):
        pass

    def subscribe(self, role, signal, callback):
        pass

    def close(self):
        pass


class Bus:
    available = True

    def __init__(self, connection):
        self._bus = connection
        self.unique_name = connection.con.get_unique_name()
        self._obj = None
        self._publication = None
        self._owners = {}
        connection.subscribe(sender="org.freedesktop.DBus", iface="org.freedesktop.DBus",
                             signal="NameOwnerChanged", signal_fired=self._owner_changed)
        for n in connection.dbus.ListNames(timeout=CALL_TIMEOUT_SEC):
            if n.startswith(PREFIX):
                try:
                    self._owners[n] = connection.dbus.GetNameOwner(n, timeout=CALL_TIMEOUT_SEC)
                except GLib.Error:
                    pass

    def _owner_changed(self, sender, obj, iface, sig, params):
        name, _old, new = params
        if name.startswith(PREFIX):
            if new:
                self._owners[name] = new
            else:
                self._owners.pop(name, None)

    def publish(self, role, worker=None, methods=None):
        """Export ROLE's object and take its name.  Raises RuntimeError or
        GLib.Error if the name is taken or the policy forbids it."""
        attrs = {"dbus": introspection_xml(role)}
        for s in _SIGNALS.get(role, {}):
            attrs[s] = _signal()
        for m, impl in (methods or {}).items():
            attrs[m] = staticmethod(self._method(impl))
        self._obj = type("BuildUnits" + role, (object,), attrs)()
        self._publication = _publish(self._bus, bus_name(role, worker), object_path(role), self._obj)
        return self._publication

    def _method(self, impl):
        """IMPL(*args, caller=USER) as a pydbus method: the caller's user name
        is looked up on the bus, and MethodError becomes a D-Bus error."""
        def method(*args, dbus_context=None):
            caller = self.caller(dbus_context.sender) if dbus_context is not None else "unknown"
            try:
                return impl(*args, caller=caller)
            except MethodError as e:
                raise _Failed(str(e))
        return method

    def caller(self, sender):
        """The user name (or uid) behind the unique bus name SENDER."""
        try:
            uid = self._bus.dbus.GetConnectionUnixUser(sender, timeout=CALL_TIMEOUT_SEC)
        except GLib.Error:
            return "unknown"
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return "uid %d" % uid

    def emit(self, signal, *args):
        if self._obj is not None:
            getattr(self._obj, signal)(*args)

    def subscribe(self, role, signal, callback):
        """Call CALLBACK(*args) for SIGNAL from the daemon(s) of ROLE, and
        only when the sender owns that role's name."""
        iface = PREFIX + role

        def fired(sender, obj, iface_, sig, params):
            if self._sender_is(role, sender):
                callback(*params)

        self._bus.subscribe(iface=iface, signal=signal, signal_fired=fired)
        # The subscription's match rule goes to the bus asynchronously; one
        # round trip makes sure it is in place before we go on (so a daemon
        # that says READY=1 hears every signal sent after that).
        self._bus.dbus.GetId(timeout=CALL_TIMEOUT_SEC)

    def _sender_is(self, role, unique):
        if role == "Runner":
            pre = PREFIX + "Runner."
            return any(n.startswith(pre) and o == unique for n, o in self._owners.items())
        return self._owners.get(bus_name(role)) == unique

    def close(self):
        if self._publication is not None:
            try:
                self._publication.unpublish()
            except Exception:
                pass
            self._publication = None


def _publish(connection, name, path, obj):
    # As pydbus's publish(), but the name cannot be taken over by another
    # connection (allow_replacement=False).
    from pydbus.publication import Publication
    return Publication(connection, name, (path, obj), allow_replacement=False)


def connect():
    """(Bus or NoBus, error text or None)."""
    if pydbus is None:
        return NoBus(), "pydbus is not installed"
    try:
        return Bus(pydbus.SystemBus()), None
    except GLib.Error as e:
        return NoBus(), e.message
    except Exception as e:  # a bus that answers badly is no bus
        return NoBus(), str(e)


class Unreachable(Exception):
    """No bus, or nobody owns the name: the caller may fall back to the spool."""


class Refused(Exception):
    """The daemon answered with an error, or the policy denied the call."""


def call(role, method, *args, worker=None):
    """Call METHOD on ROLE's object and return its result.

    Raises Unreachable when there is no bus or no such daemon on it, and
    Refused (with the daemon's or the bus's message) for any other error.
    """
    if pydbus is None:
        raise Unreachable("pydbus is not installed")
    try:
        b = pydbus.SystemBus()
    except GLib.Error as e:
        raise Unreachable(e.message)
    try:
        proxy = b.get(bus_name(role, worker), object_path(role), timeout=CALL_TIMEOUT_SEC)
        return getattr(proxy, method)(*args, timeout=CALL_TIMEOUT_SEC)
    except GLib.Error as e:
        remote = _remote_error(e)
        if remote in ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"):
            raise Unreachable(e.message)
        message = e.message
        if remote and remote.startswith(ERROR_PREFIX):
            message = message.split(": ", 1)[-1] if ": " in message else message
        raise Refused(message)


def _remote_error(e):
    """The D-Bus error name of a GLib.Error from a call, or None."""
    try:
        return Gio.DBusError.get_remote_error(e)
    except Exception:
        return None
