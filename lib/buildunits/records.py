"""Record files: the one encoding every spool entry and state file uses.

A record is one JSON object in a UTF-8 file, ending in a newline, with two
keys every reader checks first:

    {"format": "build", "version": 1, ...}

Why JSON: any language and `jq` can read it, and its own syntax is the end
marker a truncated file needs.  A record is an object, so its text must end
with the "}" that balances its first "{": no proper prefix of a record is
itself valid JSON.  A file cut short by a crash (or a full disk) is
therefore always detected as torn, even if it was renamed into place.

Versioning rules (see docs/buildunits-state.5.md for every format):

- new code reads every older version of every format, forever;
- changes within a major version are additive, and readers ignore (and,
  when they rewrite a record, keep) keys they do not know, so the previous
  release can read what this one writes;
- a reader meeting a *higher* version than it knows still reads the keys
  it knows; only a format name it does not expect is an error;
- a rewrite carries the writer's version, with the unknown keys kept.

The formats and their current versions are listed in FORMATS.
"""

import errno
import json
import math
import os
import stat

from . import fsutil

# format name -> current version.  Bump a version only with an entry in
# docs/buildunits-state.5.md saying what changed.
FORMATS = {
    "change": 1,        # spool changes/: a commit, from the poller or sendchange
    "force": 1,         # spool changes/: an operator's forced build
    "request": 2,       # spool requests/: a build to run (2: changes bounded, changes.py)
    "cancel": 1,        # spool cancel/BUILDER@NUMBER: cancel a running build
    "build": 2,         # state builds/BUILDER/NUMBER/build.json (2: progress in progress.jsonl)
    "progress": 1,      # state builds/BUILDER/NUMBER/progress.jsonl: a running build's step transitions
    "poller": 1,        # state poller/KEY.json: last seen refs of a repository
    "scheduler": 1,     # state scheduler/BUILDER.json: consumed change ids and revisions
    "consumed": 1,      # state scheduler/consumed.jsonl: the scheduler's journal of what was consumed
    "consumed-mark": 1,  # state scheduler/consumed.mark: requests up to when are in the files, durably
    "worker": 1,        # state workers/WORKER.json: what a runner holds
    "counter": 1,       # state builds/BUILDER/next.json: next build number hint
    "timer": 1,         # state timers/BUILDER.json: the last elapse of a builder's OnCalendar= (no systemd)
    "deliveries": 1,    # state webhook/deliveries.jsonl: the webhook deliveries taken (first line)
    "keep": 1,          # state builds/BUILDER/NUMBER/keep.json: a pinned build (janitor.py)
    "pruned": 1,        # state builds/BUILDER/NUMBER/pruned.json: its logs or artifacts removed (janitor.py)
    "retention": 1,     # state janitor/retention.json: what the janitor measured, how far it looked
    "lock-holder": 1,   # state locks/KIND/NAME.K: who holds a build lock's slot (the flock is the truth)
    "message": 1,       # spool outbox/: one notification to send (notifier.py)
    "notifier": 1,      # state notifier/cursor.json: the builds the notifier has queued messages for
    "undelivered": 1,   # state notifier/BUILDER@NUMBER.json: a build's messages given up on
}


class RecordError(ValueError):
    """A record file is unreadable, torn, or not the expected format."""

    def __init__(self, path, reason):
        super().__init__("%s: %s" % (path, reason))
        self.path = path
        self.reason = reason


def encode(fmt, fields):
    """The bytes of a record of format FMT with FIELDS (a dict)."""
    rec = {"format": fmt, "version": FORMATS[fmt]}
    for k, v in fields.items():
        if k not in ("format", "version"):
            rec[k] = v
    # allow_nan=False: Infinity and NaN are not JSON; a writer must map them
    # (e.g. an unlimited time-out to null) rather than make an unreadable file.
    return (json.dumps(rec, ensure_ascii=False, indent=1, allow_nan=False) + "\n").encode("utf-8")


def decode(data, path, formats):
    """Parse DATA (bytes) read from PATH; its format must be in FORMATS."""
    if isinstance(formats, str):
        formats = (formats,)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data":
            raise RecordError(path, "truncated record (cut inside a character after %d bytes)" % len(data))
        raise RecordError(path, "not UTF-8 (byte %d)" % e.start)
    if not text.strip():
        raise RecordError(path, "empty file")
    try:
        rec = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_finite_int)
    except RecursionError:
        raise RecordError(path, "not a record: nested too deeply")
    except _NonFinite as e:
        raise RecordError(path, "not a record: %s" % e.args[0])
    except json.JSONDecodeError as e:
        if e.msg != "Extra data" and _unclosed(text):
            # A record's last character is the "}" that closes it.
            raise RecordError(path, "truncated record (no closing brace after %d bytes)" % len(data))
        raise RecordError(path, "not a record: %s at line %d column %d" % (e.msg, e.lineno, e.colno))
    except ValueError as e:   # e.g. an integer longer than Python converts
        raise RecordError(path, "not a record: %s" % e)
    if not isinstance(rec, dict):
        raise RecordError(path, "not a record: top level is not an object")
    fmt = rec.get("format")
    if fmt not in formats:
        raise RecordError(path, "format %r where %s was expected" % (fmt, " or ".join(map(repr, formats))))
    version = rec.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RecordError(path, "bad version %r" % (version,))
    return rec


class _NonFinite(ValueError):
    pass


def _no_constant(name):
    # NaN and Infinity are not JSON (encode() refuses them); Python's json
    # would accept them and hand a value to code that cannot write it back.
    raise _NonFinite("%s is not a JSON number" % name)


def _shown(text):
    return text if len(text) <= 40 else "%s... (%d digits)" % (text[:20], len(text))


def _finite_float(text):
    # 1e400 is valid JSON, but a double cannot hold it: Python makes it
    # infinity, which encode() cannot write back.  Not a record.
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite("the number %s is out of range (not a finite double)" % _shown(text))
    return value


def _finite_int(text):
    # Likewise an integer beyond a double's range: no JSON reader but
    # Python's keeps it, and time or arithmetic on it overflows.
    try:
        value = int(text)
        float(value)
    except (ValueError, OverflowError):   # past Python's digit limit, or a double's range
        raise _NonFinite("the number %s is out of range (not a finite double)" % _shown(text))
    return value


def _unclosed(text):
    """True if TEXT opens an object it never closes (outside strings): a
    proper prefix of a record, i.e. one cut short."""
    t = text.lstrip()
    if not t.startswith("{"):
        return False
    depth, in_string, escaped = 0, False, False
    for ch in t:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return False
    return True


def read(path, formats):
    """Read and check the record at PATH.  Raises RecordError or OSError.

    Only a regular file is a record: a FIFO is never opened for reading in
    a way that could block, and a symbolic link is not followed (a record is
    never a link; a dangling one would otherwise look like a consumed
    record forever)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RecordError(path, "a symbolic link, not a record")
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RecordError(path, "not a regular file")
        data = f.read()
    return decode(data, path, formats)


def write(path, fmt, fields, durable=True):
    """Atomically replace the record at PATH (see fsutil.write_atomic)."""
    fsutil.write_atomic(path, encode(fmt, fields), durable=durable)
