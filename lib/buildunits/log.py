"""Logging for the daemons: one line per transition, identity first.

    log.info("hello #3: build started on worker w1", builder="hello", build=3)

Lines go to journald with structured fields (BUILDUNITS_BUILDER=,
BUILDUNITS_BUILD=, BUILDUNITS_STEP=, BUILDUNITS_RESULT=, ...) when stderr is
connected to the journal (systemd sets JOURNAL_STREAM), through Debian's
python3-systemd; otherwise to stderr as plain text, so a daemon run by hand
or under a test prints readable lines.
"""

import os
import sys
import time

_journal = None
_identifier = "buildunits"
_stream = sys.stderr


def setup(identifier, stream=None):
    """Choose journald or a plain stream for this process."""
    global _journal, _identifier, _stream
    _identifier = identifier
    _stream = stream or sys.stderr
    _journal = None
    js = os.environ.get("JOURNAL_STREAM", "")
    if js and stream is None:
        try:
            dev, ino = (int(x) for x in js.split(":"))
            st = os.fstat(_stream.fileno())
            if (st.st_dev, st.st_ino) == (dev, ino):
                from systemd import journal
                _journal = journal
        except (ValueError, OSError, ImportError):
            _journal = None


def _emit(priority, message, fields):
    if _journal is not None:
        extra = {"BUILDUNITS_" + k.upper(): str(v) for k, v in fields.items() if v is not None}
        try:
            _journal.send(message, PRIORITY=priority, SYSLOG_IDENTIFIER=_identifier, **extra)
            return
        except OSError:
            pass
    try:
        _stream.write("%s %s[%d]: %s\n" % (time.strftime("%H:%M:%S"), _identifier, os.getpid(), message))
        _stream.flush()
    except (OSError, ValueError):
        pass


def info(message, **fields):
    _emit(6, message, fields)


def notice(message, **fields):
    _emit(5, message, fields)


def warning(message, **fields):
    _emit(4, message, fields)


def error(message, **fields):
    _emit(3, message, fields)
