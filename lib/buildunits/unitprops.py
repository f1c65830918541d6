"""The systemd directives a builder may give its steps, and what they become.

A `[Builder]` or `[Step NAME]` section may hold some of systemd's own
resource-control (systemd.resource-control(5)) and sandboxing
(systemd.exec(5)) directives, with systemd's names and syntax.  The
builder's apply to every step (the implicit checkout too), a step's own
after them; the runner hands a step the pairs in that order
(StepSpec.unit).  This module is their table:

    KEYS                  the directives a builder may set
    FIXED                 the directives buildunits sets itself, each
                          with why a builder may not
    check(name, value)    the value normalized, or ValueError saying why
    variants(pairs)       the D-Bus properties of StartTransientUnit
                          (org.freedesktop.systemd1(5)) that the pairs
                          make, as systemd-run would send them
    rlimits(pairs)        the Limit*= ones, as numbers, for setrlimit(2)

Three kinds (KIND): rlimits (Limit*=: the step's processes' own limits,
setrlimit(2); applied by both executors), cgroup limits (MemoryMax=,
CPUQuota=, TasksMax=, IOWeight=, ...: the kernel's cgroup v2 controllers,
over the whole tree of the step) and sandbox settings (PrivateNetwork=,
ReadWritePaths=, ...: the step's mount and namespace view).  The last two
need the step to be a unit of its own (Executor=transient); the local
executor says once per builder that it does not apply them.

Repeated assignments fold as systemd folds them: the last one wins for a
single value, the path lists accumulate, and an empty assignment resets
(to what the builder had not said: buildunits' own setting).

What a builder may change, and what not.  The rule: a builder's settings
may bound its steps further and tighten the sandbox; they never loosen
what buildunits sets, since that sandbox is the boundary between a build
(anything anyone can push) and the machine, buildunits' own files and
other builds.  So ProtectHome= may be `yes` or `tmpfs` (both hide the
home directories) but not `read-only` or `no`, and FIXED lists what a
builder may not set at all, with the reason: the step's user, how it is
stopped, where its output goes, ProtectSystem=strict, PrivateTmp=yes,
NoNewPrivileges=yes, and bind mounts (which could bring back what is
hidden).  ReadWritePaths= opens places to write beside the work
directory: the executor adds its own settings after the builder's (the
work directory writable, buildunits' configuration, state, spool and
site inaccessible), and systemd applies the most specific path last, so
no ReadWritePaths= reaches those; `/` is refused (it is
ProtectSystem=no).

    >>> check("MemoryMax", "1.5G"), check("CPUQuota", "50%"), check("LimitNOFILE", "64")
    ('1610612736', '50%', '64:64')
    >>> [(n, v.get_type_string(), v.unpack()) for n, v in variants([("CPUQuota", "150%")])]
    [('CPUQuotaPerSecUSec', 't', 1500000)]
"""

import posixpath
import re

from gi.repository import GLib

from .unitfile import parse_boolean, parse_timespan

INFINITY = 2 ** 64 - 1       # systemd's "infinity" on the bus (CGROUP_LIMIT_MAX, RLIM_INFINITY)
_SIZE_UNITS = {"": 0, "B": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}
_SIZE_RE = re.compile(r"([0-9]+)(?:\.([0-9]+))?([BKMGTPE]?)")
_PERCENT_RE = re.compile(r"([0-9]+)(?:\.([0-9]))?%")


# ------------------------------------------------------------ values
def parse_size(text):
    """Bytes, base 1024 as systemd's sizes (K, M, G, T, P, E; a fraction
    allowed).

    >>> parse_size("64M"), parse_size("1.5K"), parse_size("100")
    (67108864, 1536, 100)
    """
    m = _SIZE_RE.fullmatch(text)
    if not m:
        raise ValueError("not a size: %r (a number of bytes, with K, M, G or T for KiB, MiB, GiB, TiB)" % text)
    whole, frac, unit = m.groups()
    shift = _SIZE_UNITS[unit]
    n = (int(whole) << shift) + ((int(frac) << shift) // 10 ** len(frac) if frac else 0)
    if n >= INFINITY:
        raise ValueError("too large: %r" % text)
    return n


def permyriad(text, bounded=True):
    """A percentage ("12.5%") in hundredths of a percent; None if TEXT is
    not one.  Above 100% only when not BOUNDED."""
    m = _PERCENT_RE.fullmatch(text)
    if not m:
        return None
    p = int(m.group(1)) * 100 + int(m.group(2) or 0) * 10
    if bounded and p > 10000:
        raise ValueError("above 100%%: %r" % text)
    return p


def _scale(p):
    """A permyriad scaled to 0..2^32-1 (systemd's *Scale properties)."""
    return (p * (2 ** 32 - 1) + 5000) // 10000


def _number(text, low=0, high=INFINITY - 1):
    if not re.fullmatch(r"[0-9]+", text) or not low <= int(text) <= high:
        raise ValueError("not a whole number from %d to %d: %r" % (low, high, text))
    return int(text)


def _or_infinity(parse):
    return lambda text: INFINITY if text == "infinity" else parse(text)


def _cpu_seconds(text):
    """LimitCPU=: a time span (a bare number is seconds), rounded up to
    whole seconds as systemd does."""
    sec = parse_timespan(text)
    return -int(-sec // 1)


# ---------------------------------------------------------- the table
# Limit*= directive -> how one side of SOFT:HARD is read.
RLIMITS = {
    "LimitCPU": _or_infinity(_cpu_seconds),
    "LimitFSIZE": _or_infinity(parse_size), "LimitDATA": _or_infinity(parse_size),
    "LimitSTACK": _or_infinity(parse_size), "LimitCORE": _or_infinity(parse_size),
    "LimitRSS": _or_infinity(parse_size), "LimitAS": _or_infinity(parse_size),
    "LimitMEMLOCK": _or_infinity(parse_size),
    "LimitNOFILE": _or_infinity(_number), "LimitNPROC": _or_infinity(_number),
}
# Cgroup limits: directive -> (its kind of value, low, high).
_MEMORY = ("MemoryMax", "MemoryHigh", "MemorySwapMax")
_WEIGHTS = ("CPUWeight", "IOWeight")
CGROUP = _MEMORY + _WEIGHTS + ("CPUQuota", "TasksMax")
# Sandbox settings, with the values a builder may give (None: a boolean).
SANDBOX = {
    "PrivateNetwork": None, "PrivateDevices": None, "PrivateIPC": None,
    "ProtectKernelTunables": None, "ProtectKernelModules": None, "ProtectKernelLogs": None,
    "ProtectControlGroups": None, "ProtectClock": None, "ProtectHostname": None,
    "RestrictSUIDSGID": None, "RestrictRealtime": None, "LockPersonality": None,
    "MemoryDenyWriteExecute": None,
    "ProtectHome": ("yes", "tmpfs"),
}
PATHS = ("ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths")

KEYS = frozenset(RLIMITS) | frozenset(CGROUP) | frozenset(SANDBOX) | frozenset(PATHS)
KIND = dict([(k, "rlimit") for k in RLIMITS] + [(k, "cgroup") for k in CGROUP]
            + [(k, "sandbox") for k in list(SANDBOX) + list(PATHS)])

_USER = "every step runs as the build user (buildunits-build), which owns none of buildunits' files"
_STOP = "the runner stops a step (TimeoutSec=, cancel) by stopping its unit's whole control group"
_OUTPUT = "a step's output goes to its log file and its input is empty"
_MOUNTS = "a mount could bring back into the step what its sandbox hides"
_RIGHTS = "a step has no privileges, and cannot gain any"
FIXED = {
    "User": _USER, "Group": _USER, "DynamicUser": _USER, "SupplementaryGroups": _USER, "PAMName": _USER,
    "KillMode": _STOP, "KillSignal": _STOP, "SendSIGKILL": _STOP, "TimeoutStopSec": _STOP,
    "StandardInput": _OUTPUT, "StandardOutput": _OUTPUT, "StandardError": _OUTPUT,
    "ProtectSystem": "always strict (all of the file system read-only but the work directory): "
                     "open more with ReadWritePaths=",
    "PrivateTmp": "always on: a step's /tmp is its own, and no build sees another's",
    "NoNewPrivileges": "always on: " + _RIGHTS,
    "CapabilityBoundingSet": _RIGHTS, "AmbientCapabilities": _RIGHTS,
    "BindPaths": _MOUNTS, "BindReadOnlyPaths": _MOUNTS, "TemporaryFileSystem": _MOUNTS,
    "RootDirectory": _MOUNTS, "RootImage": _MOUNTS,
    "UMask": "files a step makes are group-writable, so the runner can clean the work directory",
    "Slice": "where a step's control group sits is buildunits' choice, under the limits the machine sets for builds",
    "Delegate": "a step does not manage control groups of its own",
}


# ------------------------------------------------------------ checking
def check(name, value):
    """VALUE of directive NAME (in KEYS), normalized (check of the result
    is the result); an empty value is a reset, kept as "".  ValueError
    saying what is wrong.

    >>> check("LimitAS", "1G:infinity"), check("TasksMax", "10%"), check("PrivateNetwork", "on")
    ('1073741824:infinity', '10%', 'yes')
    >>> check("ProtectHome", "read-only")
    Traceback (most recent call last):
    ...
    ValueError: not one of yes|tmpfs: 'read-only' (a builder may hide more, never show more)
    >>> check("ReadWritePaths", "-/var/cache/ccache /srv/../etc")
    Traceback (most recent call last):
    ...
    ValueError: not a normalized absolute path: '/srv/../etc'
    """
    value = value.strip()
    if name not in KEYS:
        raise ValueError("set by buildunits, not by a builder: %s" % FIXED[name] if name in FIXED
                         else "not a directive a builder may set")
    if value == "":
        return ""
    if name in RLIMITS:
        soft, hard = _rlimit(name, value)
        return "%s:%s" % tuple("infinity" if n == INFINITY else str(n) for n in (soft, hard))
    if name in PATHS:
        return " ".join(_paths(name, value))
    if name in SANDBOX:
        allowed = SANDBOX[name]
        if allowed is None:
            return "yes" if parse_boolean(value) else "no"
        word = "yes" if value.lower() in ("yes", "true", "on", "1") else value
        if word not in allowed:
            raise ValueError("not one of %s: %r (a builder may hide more, never show more)"
                             % ("|".join(allowed), value))
        return word
    suffix, n = _cgroup(name, value)
    if n == INFINITY:
        return "infinity"
    return value if suffix in ("Scale", "PerSecUSec") else str(n)


def _rlimit(name, value):
    """(soft, hard) of Limit*=VALUE: "N" sets both, "SOFT:HARD" each."""
    sides = [s.strip() for s in value.split(":")]
    if len(sides) > 2:
        raise ValueError("not LIMIT or SOFT:HARD: %r" % value)
    soft, hard = (RLIMITS[name](s) for s in sides * (3 - len(sides)))
    if soft > hard:
        raise ValueError("the soft limit is above the hard one: %r" % value)
    return soft, hard


def _paths(name, value):
    out = []
    for word in value.split():
        path = word[1:] if word.startswith("-") else word
        if any(c in path for c in "\"'\\") or not path.startswith("/"):
            raise ValueError("not an absolute path (optionally with a leading -): %r" % word)
        if path != posixpath.normpath(path) or path.startswith("//"):
            raise ValueError("not a normalized absolute path: %r" % path)
        if name == "ReadWritePaths" and path == "/":
            raise ValueError("the whole file system cannot be writable (that would be ProtectSystem=no)")
        out.append(word)
    return out


def _cgroup(name, value):
    """The cgroup value parsed: (property suffix, number)."""
    if name == "CPUQuota":
        p = permyriad(value, bounded=False)
        if not p:
            raise ValueError("not a percentage above 0%% of one CPU (such as 50%% or 200%%): %r" % value)
        return "PerSecUSec", p * 1000000 // 10000
    if name in _WEIGHTS:
        return "", _number(value, 1, 10000)
    if value == "infinity":
        return "", INFINITY
    p = permyriad(value)
    if p is not None:
        return "Scale", _scale(p)
    if name == "TasksMax":
        return "", _number(value, 1)
    return "", parse_size(value)


# ---------------------------------------------------------- folding
def fold(pairs):
    """{directive: value} of PAIRS ((name, checked value), in order):
    the last value for a single one, the accumulated word list for the
    paths, an empty assignment forgetting what came before."""
    out = {}
    for name, value in pairs:
        if name in PATHS:
            out[name] = out.get(name, []) + value.split() if value else []
        elif value:
            out[name] = value
        else:
            out.pop(name, None)
    return {k: v for k, v in out.items() if v != []}


def variants(pairs):
    """[(D-Bus property, GLib.Variant)] of PAIRS, for StartTransientUnit.

    >>> [(n, v.get_type_string(), v.unpack()) for n, v in variants([
    ...     ("LimitNOFILE", "64:128"), ("ReadOnlyPaths", "/a"), ("ReadOnlyPaths", "/b"),
    ...     ("MemoryMax", "1G"), ("MemoryMax", "50%"), ("PrivateNetwork", "yes")])]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('LimitNOFILE', 't', 128), ('LimitNOFILESoft', 't', 64), ('ReadOnlyPaths', 'as', ['/a', '/b']),
     ('MemoryMaxScale', 'u', 2147483648), ('PrivateNetwork', 'b', True)]
    """
    out = []
    for name, value in fold(pairs).items():
        if name in RLIMITS:
            soft, hard = _rlimit(name, value)
            out += [(name, GLib.Variant("t", hard)), (name + "Soft", GLib.Variant("t", soft))]
        elif name in PATHS:
            out.append((name, GLib.Variant("as", value)))
        elif name in SANDBOX:
            out.append((name, GLib.Variant("b", value == "yes") if SANDBOX[name] is None
                        else GLib.Variant("s", value)))
        else:
            suffix, n = _cgroup(name, value)
            prop = ("CPUQuota" if name == "CPUQuota" else name) + suffix
            out.append((prop, GLib.Variant("u" if suffix == "Scale" else "t", n)))
    return out


def rlimits(pairs):
    """[(Limit*= directive, soft, hard)] of PAIRS, INFINITY for none.

    >>> rlimits([("LimitNOFILE", "64:64"), ("MemoryMax", "1G"), ("LimitCPU", "1min:infinity")])
    [('LimitNOFILE', 64, 64), ('LimitCPU', 60, 18446744073709551615)]
    """
    return [(name,) + _rlimit(name, value) for name, value in fold(pairs).items() if name in RLIMITS]


def not_rlimits(pairs):
    """The directives of PAIRS in effect that are not rlimits (those only a
    unit of its own can apply), in order."""
    return [name for name in fold(pairs) if KIND[name] != "rlimit"]
