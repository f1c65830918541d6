"""systemd's unit-file syntax (systemd.syntax(7)), with no knowledge of keys.

What this module reads: "[Section]" headers; "Key=Value" assignments; "#"
and ";" comment lines; a trailing backslash continues a line on the next
(comment lines inside a continuation are skipped, as systemd does);
drop-ins FILE.d/*.conf, read after FILE in name order.  Values are left as
text; the converters turn them into time spans (systemd.time(7)),
booleans and environment assignments.  Which sections and keys exist, and
what they mean, is the caller's schema (config.py for buildunits).

Every problem is a Problem naming FILE:LINE, the section and the key,
so a caller can list them all at once rather than stop at the first.

    >>> sections, problems = parse_unit_file("x.conf", "[A]\\nKey=one \\\\\\n  two\\n")
    >>> [(name, [(a.key, a.value) for a in assigned]) for name, assigned, _ in sections]
    [('A', [('Key', 'one two')])]
    >>> problems
    []
    >>> print(parse_unit_file("x.conf", "Key=1\\n")[1][0])
    x.conf:1: Key=: assignment outside of any section
"""

import math
import os
import re
import shlex
from dataclasses import dataclass

from . import redact


@dataclass(frozen=True)
class Problem:
    """One problem at PATH:LINE (LINE 0: the file as a whole)."""

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
class Assignment:
    """One Key=Value line (a continued line is one assignment, at its first line)."""

    path: str
    line: int
    section: str
    key: str
    value: str


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
    >>> parse_timespan("10 parsecs")
    Traceback (most recent call last):
    ...
    ValueError: unknown time unit 'parsecs' in '10 parsecs'
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
    """A short human form of SECONDS.

    >>> [format_timespan(s) for s in (0.25, 41, 125, 3780, float("inf"))]
    ['250ms', '41s', '2min 5s', '1h 3min', 'infinity']
    """
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
    """systemd's booleans, in any case.

    >>> parse_boolean("Yes"), parse_boolean("off")
    (True, False)
    """
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


# ---------------------------------------------------------------- files

_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*")


def _read_text(path):
    """(text, None), or (None, Problem) when PATH cannot be read as UTF-8."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        return None, Problem(path, 0, "", "", "cannot read: %s" % e.strerror)
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        return None, Problem(path, line, "", "", "not valid UTF-8")


def _logical_lines(text):
    """(line number, logical line) with comments dropped and continuations
    joined; a last item (number, None) if the text ends inside one."""
    pending, pending_line = None, 0
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if pending is None and (not stripped or stripped[0] in "#;"):
            continue
        if pending is not None:
            if stripped[:1] in ("#", ";"):
                continue
            logical, start = pending + " " + stripped, pending_line
        else:
            logical, start = stripped, lineno
        if logical.endswith("\\"):
            pending, pending_line = logical[:-1].rstrip(), start
            continue
        pending = None
        yield start, logical
    if pending is not None:
        yield pending_line, None


def parse_unit_file(path, text=None):
    """The sections of one file (read from PATH unless TEXT is given):
    ([(section, [Assignment], (path, header line)), ...], [Problem])."""
    if text is None:
        text, problem = _read_text(path)
        if problem:
            return [], [problem]
    sections, problems = [], []
    current = None
    for start, logical in _logical_lines(text):
        if logical is None:
            problems.append(Problem(path, start, "", "", "file ends inside a continued line"))
        elif logical.startswith("["):
            if not logical.endswith("]") or len(logical) < 3:
                problems.append(Problem(path, start, "", "", "bad section header %r" % logical))
                current = None
                continue
            current = (logical[1:-1].strip(), [], (path, start))
            sections.append(current)
        else:
            key, eq, value = logical.partition("=")
            key = key.strip()
            if not eq or not key or not _KEY_RE.fullmatch(key):
                problems.append(Problem(path, start, current[0] if current else "", "",
                                        "expected Key=Value, got %r" % logical[:80]))
            elif current is None:
                problems.append(Problem(path, start, "", key, "assignment outside of any section"))
            else:
                current[1].append(Assignment(path, start, current[0], key, value.strip()))
    return sections, problems


def dropins(path):
    """PATH.d/*.conf in name order (hidden files left out)."""
    d = path + ".d"
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".conf") and not n.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(d, n) for n in names]


def read_with_dropins(path, missing_ok=False):
    """The sections and problems of PATH and then of its drop-ins.
    missing_ok: a PATH that does not exist is no problem (its drop-ins are
    still read)."""
    if missing_ok and not os.path.exists(path):
        sections, problems = [], []
    else:
        sections, problems = parse_unit_file(path)
    for d in dropins(path):
        s, p = parse_unit_file(d)
        sections += s
        problems += p
    return sections, problems
