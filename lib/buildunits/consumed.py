"""The scheduler's memory: what each builder has consumed, and its journal.

Memory is, per builder, a bounded list of the change ids it consumed and
of the (branch, revision) pairs it had requested (STATE/scheduler/
BUILDER.json, format "scheduler").  One change usually goes to many
builders at once, and writing one file per builder for each change cost
a file per builder per change; so a pass of the scheduler appends ONE
line to its journal instead (STATE/scheduler/consumed.jsonl, format
"consumed"), naming the builders and what they consumed, and the
builders' files are rewritten only now and then (FOLD_LINES), when the
journal is folded into them and removed.

The journal's first line names the format; each further line is

    {"builders": [NAME, ...], "ids": [ID, ...], "revisions": [[BRANCH, REV], ...]}

The journal is not fsync'd: a crash may lose the latest lines (or tear
the last one, which replay() ignores), and the scheduler's startup
recovery (from the requests queued or claimed since the mark and the
recent builds, scheduler.py) counts those changes as consumed again.  A
fold is durable: the files are fsync'd (State.write_schedulers: one
directory fsync for them all), then the mark (STATE/scheduler/
consumed.mark, format "consumed-mark") is set to the time the fold began,
durably, then the journal is removed.  The mark says: every request whose
id's time (spool.new_id) is not after it was consumed in the files, so
the recovery opens only the requests after it, whatever the depth of the
queue.  A crash before the mark is set leaves the earlier mark (more
requests read, nothing missed); a crash after it, the journal beside
files that already hold its lines: replaying a line twice changes
nothing (add() ignores what is known), so the next start simply folds
again.

>>> m = Memory(None)
>>> m.add(["c1"], [("main", "a" * 40)])
>>> m.has_id("c1"), m.has_revision("main", "a" * 40), m.has_id("c2")
(True, True, False)
>>> import io
>>> data = head() + line(["b1", "b2"], ["c1"], [("main", "a" * 40)]) + b'{"builders": ["b'
>>> list(replay(io.BytesIO(data)))
[(['b1', 'b2'], ['c1'], [('main', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa')])]
"""

import json

from . import records

KEEP = 1000          # consumed ids / revisions remembered per builder (at least)
SLACK = 100          # ... and at most KEEP + SLACK: trimmed in batches, not at every add
FOLD_LINES = 100     # journal lines after which the builders' files are rewritten
NAME = "consumed.jsonl"
MARK = "consumed.mark"


class Memory:
    """What one builder has consumed (bounded, most recent last)."""

    def __init__(self, rec):
        rec = rec or {}
        self.rec = rec
        self.consumed = [x for x in rec.get("consumed", []) if isinstance(x, str)]
        self.recent = [tuple(x) for x in rec.get("recent", []) if isinstance(x, list) and len(x) == 2]
        self._c = set(self.consumed)
        self._r = set(self.recent)

    def has_id(self, cid):
        return cid in self._c

    def has_revision(self, branch, rev):
        return (branch, rev) in self._r

    def add(self, ids=(), revisions=()):
        for i in ids:
            if i not in self._c:
                self.consumed.append(i)
                self._c.add(i)
        for r in revisions:
            r = tuple(r)
            if r not in self._r:
                self.recent.append(r)
                self._r.add(r)
        if len(self.consumed) > KEEP + SLACK or len(self.recent) > KEEP + SLACK:
            del self.consumed[:-KEEP]
            del self.recent[:-KEEP]
            self._c = set(self.consumed)
            self._r = set(self.recent)

    def fields(self):
        out = {k: v for k, v in self.rec.items() if k not in ("format", "version")}
        out["consumed"] = self.consumed
        out["recent"] = [list(r) for r in self.recent]
        return out


def _dump(obj):
    return (json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")


def head():
    """The journal's first line (bytes)."""
    return _dump({"format": "consumed", "version": records.FORMATS["consumed"]})


def line(builders, ids, revisions):
    """One journal line (bytes): BUILDERS consumed IDS and REVISIONS."""
    return _dump({"builders": list(builders), "ids": list(ids), "revisions": [list(r) for r in revisions]})


def group(added):
    """The journal lines for ADDED, {builder: (ids, revisions)}: one line
    per distinct (ids, revisions), naming every builder that had it (one
    change to many builders is one line)."""
    by = {}
    for b, (ids, revs) in sorted(added.items()):
        by.setdefault((tuple(ids), tuple(tuple(r) for r in revs)), []).append(b)
    return b"".join(line(bs, ids, revs) for (ids, revs), bs in by.items())


def _strings(v):
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def replay(f):
    """(builders, ids, revisions) of each whole line of the journal read
    from the binary file F.  Hostile input: a file without the header
    yields nothing; a line that is torn or not of this shape is skipped
    (an append cut short by a full disk is followed by whole ones)."""
    try:
        first = json.loads(f.readline())
    except ValueError:
        return
    if not isinstance(first, dict) or first.get("format") != "consumed":
        return
    for raw in f:
        if not raw.endswith(b"\n"):
            return            # torn: the writer died in the middle of it
        try:
            ev = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(ev, dict) or not _strings(ev.get("builders")) or not _strings(ev.get("ids")) \
                or not isinstance(ev.get("revisions"), list) \
                or not all(_strings(r) and len(r) == 2 for r in ev["revisions"]):
            continue
        yield ev["builders"], ev["ids"], [tuple(r) for r in ev["revisions"]]
