"""The lines of a running build's progress file (format "progress").

state.py owns the file (builds/BUILDER/NUMBER/progress.jsonl, reached
without following links); this module owns its lines: the header that
names the build, one JSON object per step transition, and how they are
applied to the running build record.  See state.py's docstring for why
they exist and what a crash leaves.

A build is written whole twice: build.json when it starts (state
"running", every step pending) and when it ends (state "finished", the
COMMIT POINT of its result, fsync'd).  In between, each step transition
is one line appended to progress.jsonl (format "progress"): a cost that
does not grow with the build (rewriting build.json at each step was
quadratic in its number of steps).  read_build() applies those lines to a
running record, so every reader sees the build as it progresses; a
finished record is complete and its progress file, removed after the
commit point, is ignored if a crash left it.  The lines are not fsync'd:
a crash leaves some prefix of them (a torn last line is ignored), and
recovery records the build as interrupted from what is there.
"""

import json
import os

from . import records

NAME = "progress.jsonl"
# The keys of a step a progress line may set, and those of the build.
STEP_KEYS = ("state", "result", "started", "finished", "log", "exit_status", "summary", "timed_out", "usage",
             "triggered")
BUILD_KEYS = ("revision", "reason")


def write_all(fd, data):
    """os.write DATA to FD whole."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _no_constant(name):
    raise ValueError("%s is not a JSON number" % name)


def _line(obj):
    return (json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")


def head(builder, number):
    """The first line of the progress file of BUILDER #NUMBER (bytes)."""
    return _line({"format": "progress", "version": records.FORMATS["progress"], "builder": builder,
                  "number": number})


def event(step=None, fields=None, build=None):
    """One transition as a line (bytes): FIELDS of step STEP (an index in
    the record's steps), and BUILD fields of the build."""
    ev = {}
    if step is not None:
        ev["step"] = step
        ev["set"] = {k: v for k, v in (fields or {}).items() if k in STEP_KEYS}
    if build:
        ev["build"] = {k: v for k, v in build.items() if k in BUILD_KEYS}
    return _line(ev)


def apply(rec, f):
    """Apply the lines read from the binary file F to the running REC.  A
    file that is not one (no header naming the build), and anything from a
    line that does not parse on (a torn end), are ignored."""
    try:
        first = json.loads(f.readline())
    except ValueError:
        return
    if not isinstance(first, dict) or first.get("format") != "progress" \
            or first.get("builder") != rec.get("builder") or first.get("number") != rec.get("number"):
        return
    steps = rec.get("steps") if isinstance(rec.get("steps"), list) else []
    for line in f:
        if not line.endswith(b"\n"):
            break          # torn: the writer died in the middle of it
        try:
            ev = json.loads(line, parse_constant=_no_constant)
        except ValueError:
            break
        if not isinstance(ev, dict):
            break
        i, fields = ev.get("step"), ev.get("set")
        if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(steps) \
                and isinstance(steps[i], dict) and isinstance(fields, dict):
            steps[i].update((k, v) for k, v in fields.items() if k in STEP_KEYS)
        build = ev.get("build")
        if isinstance(build, dict):
            rec.update((k, v) for k, v in build.items() if k in BUILD_KEYS)
