"""What is queued in requests/new, per builder, oldest first, from file names.

A request's id names its builder (spool.builder_of), so the index is made
from a listing of the queue (Spool.pending: names only, no record opened)
and kept up to date from the inotify events and BuildRequested signals
the daemons get anyway (add() and discard()), without reading the queue
again: a runner picks the oldest request of the builders it runs with
oldest(), a claim costs a comparison per builder it runs and no listing,
and a request for a builder it does not run costs it the parsing of one
name.  htmlgen counts and shows the first few per builder from it
(sitesource.py).

The index is a hint, never the truth: the spool is.  A claim that loses
the race (the request is gone: another runner, a cancel) drops the
entry; a lost event (a full inotify queue, a daemon that was not
watching yet) is repaired by the next rebuild() from a listing, which
the daemons do at start and every RescanIntervalSec=.  An entry for a
file that is gone costs one failed rename, a request it misses waits
for the rescan.

An id without a tag (a request queued by an earlier release, or put back
by hand) is unresolved() until its owner has read the record and called
resolve(): once per id for the index's life, kept across rebuilds.

>>> q = QueueIndex()
>>> q.rebuild(["1.1.1.aaaaaaxb", "3.1.1.aaaaaaxa", "2.1.1.aaaaaa"])
>>> q.oldest(["a", "b"]), q.unresolved()
('1.1.1.aaaaaaxb', ['2.1.1.aaaaaa'])
>>> q.resolve("2.1.1.aaaaaa", "a"); q.discard("1.1.1.aaaaaaxb")
>>> q.oldest(["a", "b"]), q.count("a"), q.ids("a")
('2.1.1.aaaaaa', 2, ['2.1.1.aaaaaa', '3.1.1.aaaaaaxa'])
"""

import bisect

from . import spool as spoolmod


class QueueIndex:
    """The queued requests' ids by builder, each list oldest first."""

    def __init__(self):
        self._ids = {}          # builder -> its ids, sorted (ids sort by time)
        self._builder = {}      # id -> builder, for every id in self._ids
        self._untagged = {}     # id without a tag -> its record's builder ("": none runnable; None: unread)
        self._prio = {}         # id -> its own priority (a forced build's), for the ids that have one
        self._own = {}          # builder -> [(-priority, id)] of those, sorted
        self.built = False      # rebuild() done: False makes its owner list the queue

    def rebuild(self, names):
        """Start again from NAMES, the listing of requests/new, oldest first."""
        known = self._untagged
        self._ids, self._builder, self._untagged, self._prio, self._own = {}, {}, {}, {}, {}
        for n in names:
            self._enter(n, known)
        self.built = True

    def add(self, name):
        """NAME (a valid id) appeared in requests/new."""
        if name not in self._builder and name not in self._untagged and spoolmod.valid_id(name):
            self._enter(name, {})

    def _enter(self, name, known):
        b = spoolmod.builder_of(name)
        if b is None:
            b = self._untagged[name] = known.get(name)
            if not b:
                return
        ids = self._ids.setdefault(b, [])
        if not ids or ids[-1] < name:
            ids.append(name)          # the usual case: the newest request
        else:
            bisect.insort(ids, name)  # handed back, or found late
        self._builder[name] = b
        p = spoolmod.priority_of(name)
        if p is not None:
            self._prio[name] = p
            bisect.insort(self._own.setdefault(b, []), (-p, name))

    def discard(self, name):
        """NAME left requests/new (claimed, cancelled, moved to corrupt/)."""
        self._untagged.pop(name, None)
        b = self._builder.pop(name, None)
        if b is None:
            return
        ids = self._ids[b]
        i = bisect.bisect_left(ids, name)
        if i < len(ids) and ids[i] == name:
            del ids[i]
        if not ids:
            del self._ids[b]
        p = self._prio.pop(name, None)
        if p is not None:
            own = self._own[b]
            own.remove((-p, name))
            if not own:
                del self._own[b]

    def unresolved(self):
        """The ids without a tag whose records have not been read yet."""
        return [n for n, b in self._untagged.items() if b is None]

    def resolve(self, name, builder):
        """The record of the untagged NAME is for BUILDER (a string; None:
        the record is gone or broken)."""
        if builder is None:
            self.discard(name)
        elif name in self._untagged and self._untagged[name] is None:
            self._enter(name, {name: builder or ""})

    def resolve_untagged(self, read):
        """Read the records of the unresolved ids with READ(id) (a record or
        None) and resolve them; {id: record}."""
        out = {}
        for rid in self.unresolved():
            req = out[rid] = read(rid)
            name = req.get("builder") if isinstance(req, dict) else None
            self.resolve(rid, None if req is None else name if isinstance(name, str) else "")
        return out

    def builders(self):
        """The builders with requests queued."""
        return list(self._ids)

    def ids(self, builder):
        """BUILDER's queued ids, oldest first (the index's own list: do not change it)."""
        return self._ids.get(builder, [])

    def builder(self, name):
        """The builder of the indexed id NAME, or None."""
        return self._builder.get(name)

    def count(self, builder):
        return len(self._ids.get(builder, ()))

    def oldest(self, builders):
        """The oldest id queued for any of BUILDERS, or None."""
        heads = [ids[0] for ids in map(self._ids.get, builders) if ids]
        return min(heads) if heads else None

    def pick(self, builders, priority=None):
        """The id to build next for any of BUILDERS, or None: the highest
        priority first (a request's own, from its id, else its builder's,
        PRIORITY(builder), 0 without it), the oldest among equals.  A
        comparison or two per builder: the heads of its lists.

        >>> q = QueueIndex()
        >>> q.rebuild(["1.1.1.aaaaaaxa", "2.1.1.aaaaaaxb", "3.1.1.aaaaaaxaZp5", "4.1.1.aaaaaaxbZn1"])
        >>> q.pick(["a", "b"]), q.pick(["a", "b"], {"b": 9}.get), q.pick(["b"], lambda b: -2)
        ('3.1.1.aaaaaaxaZp5', '2.1.1.aaaaaaxb', '4.1.1.aaaaaaxbZn1')
        """
        best = None         # (-priority, id)
        for b in builders:
            ids = self._ids.get(b)
            if not ids:
                continue
            own = self._own.get(b)
            if own:
                if best is None or own[0] < best:
                    best = own[0]
                plain = next((i for i in ids if i not in self._prio), None)
            else:
                plain = ids[0]
            if plain is not None:
                cand = (-((priority(b) if priority else None) or 0), plain)
                if best is None or cand < best:
                    best = cand
        return best[1] if best else None
