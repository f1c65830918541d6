"""Configuration: builder files and buildunits.conf, in systemd's syntax.

The configuration directory (default /etc/buildunits) holds:

    buildunits.conf                 site-wide settings
    buildunits.conf.d/*.conf        drop-ins for it
    builders/NAME.builder           one builder each
    builders/NAME.builder.d/*.conf  drop-ins overriding its keys, in name order

The syntax is systemd's unit-file syntax (systemd.syntax(7)): "[Section]"
headers, "Key=Value" lines, "#" and ";" comments, a trailing backslash
continues a line, booleans are yes/no/true/false/on/off/1/0, durations are
time spans ("90s", "10min", "1h 30min", a bare number is seconds,
"infinity").  List settings (Branches=, Workers=, Environment=) accumulate
over repeated assignments, and an empty assignment resets them.  Files are
parsed, never executed.  Every key is documented in
docs/buildunits.builder.5.md; load() raises ConfigError listing each
problem as FILE:LINE: [Section] Key=: message.
"""

import fnmatch
import math
import os
import re
import shlex
from dataclasses import dataclass, field

from . import redact

# \A...\Z and fullmatch: "$" would also match before a final newline ("ok\n").
NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
RESERVED_STEPS = ("checkout",)


class ConfigError(Exception):
    """One or more problems in the configuration; str() lists them all.

    WARNINGS are the warnings found on the way (a misspelt key is often the
    cause of the error it sits beside); PARTIAL is the Config as far as it
    could be read (the builders without problems), for commands that only
    need to know whether a builder exists."""

    def __init__(self, problems, warnings=(), partial=None):
        self.problems = list(problems)
        self.warnings = list(warnings)
        self.partial = partial
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    section: str
    key: str
    message: str

    def location(self):
        """FILE:LINE, then the [Section] and Key= when known: where it is."""
        where = "%s:%d" % (self.path, self.line) if self.line else self.path
        what = " ".join(w for w in ("[%s]" % self.section if self.section else "",
                                     "%s=" % self.key if self.key else "") if w)
        return "%s: %s" % (where, what) if what else where

    def __str__(self):
        # "FILE:LINE: [Section] Key=: message", "FILE:LINE: [Section] message";
        # a message quoting a line quotes no credentials (redact.py).
        return "%s%s%s" % (self.location(), " " if self.section and not self.key else ": ",
                           redact.text(self.message))


@dataclass
class Step:
    name: str
    command: str
    description: str = ""
    working_directory: str = ""
    environment: dict = field(default_factory=dict)
    timeout: float = math.inf
    timeout_idle: float = 20 * 60.0
    halt_on_failure: bool = False
    flunk_on_failure: bool = True
    warn_on_failure: bool = False
    always_run: bool = False


@dataclass
class Builder:
    name: str
    path: str
    description: str = ""
    repository: str = ""
    branches: list = field(default_factory=lambda: ["*"])
    poll_interval: float = 60.0
    tree_stable: float = 0.0
    workers: list = field(default_factory=lambda: ["*"])
    environment: dict = field(default_factory=dict)
    checkout: bool = True
    steps: list = field(default_factory=list)

    def wants_branch(self, branch):
        return any(fnmatch.fnmatchcase(branch, p) for p in self.branches)

    def runs_on(self, worker):
        return any(fnmatch.fnmatchcase(worker, p) for p in self.workers)


@dataclass
class Config:
    directory: str
    builders: dict = field(default_factory=dict)
    title: str = "buildunits"
    waterfall_depth: int = 50
    poll_interval: float = 60.0
    tree_stable: float = 0.0
    rescan_interval: float = 300.0
    warnings: list = field(default_factory=list)

    def builders_for(self, repository):
        """Builders polling REPOSITORY (already normalized).  Records hold
        repositories masked (redact.py), so the masked forms are compared."""
        shown = redact.url(repository)
        return [b for b in self.builders.values()
                if b.repository and redact.url(normalize_repository(b.repository)) == shown]


# ---------------------------------------------------------------- values

_SPAN_UNITS = {
    "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3,
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
    "M": 2629800, "month": 2629800, "months": 2629800,
    "y": 31557600, "year": 31557600, "years": 31557600,
}
_SPAN_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)")
# The longest finite time span, as in systemd: below 2^64 microseconds
# (about 584542 years).  Longer ones are refused, never read as infinity.
MAX_TIMESPAN_SEC = (2 ** 64 - 1) / 1e6


def parse_timespan(text):
    """Seconds in a systemd time span (systemd.time(7)).

    >>> parse_timespan("1h 30min"), parse_timespan("90"), parse_timespan("2min30s")
    (5400.0, 90.0, 150.0)
    >>> parse_timespan("infinity")
    inf
    """
    t = text.strip()
    if t == "infinity":
        return math.inf
    if not t:
        raise ValueError("empty time span")
    total, pos = 0.0, 0
    while pos < len(t):
        m = _SPAN_RE.match(t, pos)
        if not m or m.end() == pos:
            raise ValueError("not a time span: %r (use e.g. 90s, 10min, 1h 30min)" % text)
        unit = m.group(2) or "s"
        if unit not in _SPAN_UNITS:
            raise ValueError("unknown time unit %r in %r" % (unit, text))
        total += float(m.group(1)) * _SPAN_UNITS[unit]
        pos = m.end()
        while pos < len(t) and t[pos].isspace():
            pos += 1
    if not total < MAX_TIMESPAN_SEC:   # also a number too long for a float
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ValueError("time span %r is too long: at most %d years (systemd's limit); "
                         "use infinity for no limit" % (shown, MAX_TIMESPAN_SEC // _SPAN_UNITS["y"]))
    return total


def format_timespan(seconds):
    """A short human form of SECONDS: 41s, 2min 5s, 1h 3min."""
    if seconds is None:
        return ""
    if seconds == math.inf:
        return "infinity"
    if seconds < 1:
        return "%dms" % round(seconds * 1000)
    if seconds < 10:
        return "%.1fs" % seconds if seconds % 1 else "%ds" % seconds
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return "%dh %dmin" % (h, m)
    if m:
        return "%dmin %ds" % (m, s) if s else "%dmin" % m
    return "%ds" % s


_TRUE = ("1", "yes", "y", "true", "t", "on")
_FALSE = ("0", "no", "n", "false", "f", "off")


def parse_boolean(text):
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ValueError("not a boolean: %r (use yes or no)" % text)


def parse_environment(text):
    """Assignments in an Environment= value, as systemd splits them.

    >>> parse_environment('A=1 "B=two words"')
    {'A': '1', 'B': 'two words'}
    """
    out = {}
    for word in shlex.split(text):
        name, eq, value = word.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError("not an assignment NAME=VALUE: %r" % word)
        out[name] = value
    return out


def normalize_repository(repo):
    """The form repositories are compared in: local paths made real."""
    repo = repo.strip()
    if repo.startswith("file://"):
        repo = repo[len("file://"):]
    if repo.startswith("/"):
        return os.path.realpath(repo).rstrip("/") or "/"
    return repo.rstrip("/")


# ---------------------------------------------------------------- parsing

@dataclass
class _Assignment:
    path: str
    line: int
    section: str
    key: str
    value: str


def parse_unit_file(path, text=None):
    """The sections of one file: [(section, [_Assignment], (path, header line)), ...]
    and problems."""
    problems = []
    if text is None:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            return [], [Problem(path, 0, "", "", "cannot read: %s" % e.strerror)]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            return [], [Problem(path, line, "", "", "not valid UTF-8")]
    sections = []
    current = None
    pending, pending_line = None, 0
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if pending is None and (not stripped or stripped[0] in "#;"):
            continue
        if pending is not None:
            if stripped[:1] in ("#", ";"):
                continue
            logical = pending + " " + stripped
            start = pending_line
        else:
            logical, start = stripped, lineno
        if logical.endswith("\\"):
            pending, pending_line = logical[:-1].rstrip(), start
            continue
        pending = None
        if logical.startswith("["):
            if not logical.endswith("]") or len(logical) < 3:
                problems.append(Problem(path, start, "", "", "bad section header %r" % logical))
                current = None
                continue
            current = (logical[1:-1].strip(), [], (path, start))
            sections.append(current)
            continue
        key, eq, value = logical.partition("=")
        key = key.strip()
        if not eq or not key or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key):
            problems.append(Problem(path, start, current[0] if current else "", "",
                                    "expected Key=Value, got %r" % logical[:80]))
            continue
        if current is None:
            problems.append(Problem(path, start, "", key, "assignment outside of any section"))
            continue
        current[1].append(_Assignment(path, start, current[0], key, value.strip()))
    if pending is not None:
        problems.append(Problem(path, pending_line, "", "", "file ends inside a continued line"))
    return sections, problems


def _dropins(path):
    d = path + ".d"
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".conf") and not n.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(d, n) for n in names]


def _read_with_dropins(path):
    sections, problems = parse_unit_file(path)
    for d in _dropins(path):
        s, p = parse_unit_file(d)
        sections += s
        problems += p
    return sections, problems


class _Setter:
    """Applies assignments to an object, collecting problems."""

    def __init__(self, problems, warnings):
        self.problems = problems
        self.warnings = warnings

    def apply(self, obj, assignments, schema):
        for a in assignments:
            spec = schema.get(a.key)
            if spec is None:
                self.warnings.append(Problem(a.path, a.line, a.section, a.key, "unknown key, ignored"))
                continue
            attr, kind = spec
            try:
                if kind == "str":
                    setattr(obj, attr, a.value)
                elif kind == "span":
                    setattr(obj, attr, parse_timespan(a.value))
                elif kind == "bool":
                    setattr(obj, attr, parse_boolean(a.value))
                elif kind == "int":
                    if not re.fullmatch(r"[0-9]+", a.value):
                        raise ValueError("not a whole number: %r" % a.value)
                    setattr(obj, attr, int(a.value))
                elif kind == "list":
                    # Accumulates; an empty assignment resets.  The default
                    # (e.g. "*") is replaced by the first explicit assignment.
                    key = "_set_" + attr
                    if not a.value:
                        setattr(obj, attr, [])
                    else:
                        old = getattr(obj, attr) if getattr(obj, key, False) else []
                        setattr(obj, attr, old + a.value.split())
                    setattr(obj, key, True)
                elif kind == "env":
                    if not a.value:
                        setattr(obj, attr, {})
                    else:
                        env = dict(getattr(obj, attr))
                        env.update(parse_environment(a.value))
                        setattr(obj, attr, env)
                else:  # pragma: no cover - schema typo
                    raise AssertionError(kind)
            except ValueError as e:
                self.problems.append(Problem(a.path, a.line, a.section, a.key, str(e)))


BUILDER_KEYS = {
    "Description": ("description", "str"),
    "Repository": ("repository", "str"),
    "Branches": ("branches", "list"),
    "PollIntervalSec": ("poll_interval", "span"),
    "TreeStableSec": ("tree_stable", "span"),
    "Workers": ("workers", "list"),
    "Environment": ("environment", "env"),
    "Checkout": ("checkout", "bool"),
}

STEP_KEYS = {
    "Command": ("command", "str"),
    "Description": ("description", "str"),
    "WorkingDirectory": ("working_directory", "str"),
    "Environment": ("environment", "env"),
    "TimeoutSec": ("timeout", "span"),
    "TimeoutIdleSec": ("timeout_idle", "span"),
    "HaltOnFailure": ("halt_on_failure", "bool"),
    "FlunkOnFailure": ("flunk_on_failure", "bool"),
    "WarnOnFailure": ("warn_on_failure", "bool"),
    "AlwaysRun": ("always_run", "bool"),
}

GLOBAL_KEYS = {
    "Site": {"Title": ("title", "str"), "WaterfallDepth": ("waterfall_depth", "int")},
    "Defaults": {"PollIntervalSec": ("poll_interval", "span"), "TreeStableSec": ("tree_stable", "span")},
    "Daemons": {"RescanIntervalSec": ("rescan_interval", "span")},
}


def load_builder(path, cfg, problems, warnings):
    """Parse builders/NAME.builder (and its drop-ins) into a Builder."""
    name = os.path.basename(path)[: -len(".builder")]
    b = Builder(name=name, path=path, poll_interval=cfg.poll_interval, tree_stable=cfg.tree_stable)
    if not NAME_RE.fullmatch(name):
        problems.append(Problem(path, 0, "", "", "builder name %r must be letters, digits, '.', '_' "
                                "or '-', start with a letter or digit, at most 64 long" % name))
        return None
    sections, p = _read_with_dropins(path)
    problems.extend(p)
    setter = _Setter(problems, warnings)
    steps = {}
    step_lines = {}
    for section, assignments, header in sections:
        if section == "Builder":
            setter.apply(b, assignments, BUILDER_KEYS)
        elif section.startswith("Step ") or section == "Step":
            sname = section[len("Step"):].strip()
            hpath, line = header
            if not NAME_RE.fullmatch(sname) or sname in RESERVED_STEPS:
                why = ("%r is reserved" % sname) if sname in RESERVED_STEPS else (
                    "step name %r must be letters, digits, '.', '_' or '-', starting with a "
                    "letter or digit" % sname)
                problems.append(Problem(hpath, line, section, "", why))
                continue
            if sname not in steps:
                steps[sname] = Step(name=sname, command="")
                step_lines[sname] = (hpath, line)
            setter.apply(steps[sname], assignments, STEP_KEYS)
        else:
            warnings.append(Problem(header[0], header[1], section, "", "unknown section, ignored"))
    for sname, s in steps.items():
        if not s.command:
            f, line = step_lines[sname]
            problems.append(Problem(f, line, "Step " + sname, "Command", "missing; every step needs a Command="))
    for s in steps.values():
        # As in systemd: a time-out of 0 means no time-out.
        if s.timeout == 0:
            s.timeout = math.inf
        if s.timeout_idle == 0:
            s.timeout_idle = math.inf
    b.steps = list(steps.values())
    if not b.steps:
        problems.append(Problem(path, 0, "", "", "builder has no steps (add a [Step NAME] section with Command=)"))
    if b.tree_stable == math.inf:
        problems.append(Problem(path, 0, "Builder", "TreeStableSec", "must be finite"))
    if not b.workers:
        problems.append(Problem(path, 0, "Builder", "Workers", "empty: no worker could run this builder"))
    return b


def load(directory):
    """Load the configuration in DIRECTORY.  Raises ConfigError.

    A missing directory or one without builders is a valid, empty
    configuration (the daemons then idle); a builders/ file that is not
    NAME.builder is ignored with a warning.
    """
    cfg = Config(directory=directory)
    problems, warnings = [], []
    gpath = os.path.join(directory, "buildunits.conf")
    if os.path.exists(gpath) or _dropins(gpath):
        sections, p = _read_with_dropins(gpath) if os.path.exists(gpath) else ([], [])
        if not os.path.exists(gpath):
            for d in _dropins(gpath):
                s, p2 = parse_unit_file(d)
                sections += s
                p += p2
        problems += p
        setter = _Setter(problems, warnings)
        for section, assignments, header in sections:
            schema = GLOBAL_KEYS.get(section)
            if schema is None:
                warnings.append(Problem(header[0], header[1], section, "", "unknown section, ignored"))
                continue
            setter.apply(cfg, assignments, schema)
    bdir = os.path.join(directory, "builders")
    try:
        names = sorted(os.listdir(bdir))
    except FileNotFoundError:
        names = []
    except OSError as e:
        raise ConfigError([Problem(bdir, 0, "", "", "cannot read: %s" % e.strerror)])
    for n in names:
        p = os.path.join(bdir, n)
        if n.endswith(".builder") and not n.startswith("."):
            b = load_builder(p, cfg, problems, warnings)
            if b is not None:
                cfg.builders[b.name] = b
        elif n.endswith(".builder.d") or n.startswith("."):
            if n.endswith(".builder.d") and n[:-2] not in names:
                warnings.append(Problem(p, 0, "", "", "drop-in directory for a builder that does not exist"))
        else:
            warnings.append(Problem(p, 0, "", "", "not NAME.builder, ignored"))
    cfg.warnings = warnings
    if problems:
        raise ConfigError(problems, warnings, cfg)
    return cfg
