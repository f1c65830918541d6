"""Sitesource: what the static site reads of the state and the spool.

The builders (configured, or in the history), the numbers a builder took
since the site last looked, build records, and the queued requests.  New
numbers are found through the counter hint builds/B/next.json and a probe
for the directory after it (the counter is written after the number is
taken), never by listing a builder's directory, but after a long absence
or when the counter lies (then once per lie): what an update reads stays
the same whatever the length of the history.  A record that cannot be
read is not shown, and logged once.

The queued requests come from a queueindex.QueueIndex: how many there are
per builder from the file names, and only the first few per builder are
read (each once: a queued request never changes).  htmlgen keeps the
index up to date from its inotify events and signals (fed), so a pass
reads nothing of the queue but the records it shows for the first time;
the index is made again from a listing at each full pass (start, rescan,
new configuration; rescan()), and at every pass when nothing feeds it
(--rebuild, or in process).  A count may include a request that left
the queue a moment ago (its inotify event comes about half a second
late, and wakes another pass) or one whose record is broken, which the
runner that reaches it moves to corrupt/.
"""

import os

from . import log, queueindex
from .siteviews import safe_name, sort_time

MAX_CATCHUP = 10000                  # more new numbers than this at once: list the directory instead


class Source:
    """The site's view of STATE and SPOOL."""

    def __init__(self, state, spool):
        self.state = state
        self.spool = spool
        self._warned = set()     # unreadable build records already logged
        self._builders = set()   # the builders with a history, as last listed
        self._builders_stamp = None
        self.queue = queueindex.QueueIndex()
        self.fed = False         # the owner feeds self.queue from events (htmlgen)
        self._shown = {}         # id -> record of the queued requests shown (read once)

    def builder_names(self, configured, full=True):
        """The builders: CONFIGURED (names), or in the history.  Unless
        FULL, the history's are listed again only if its directory changed."""
        stamp = self.state.builders_stamp()
        if full or stamp != self._builders_stamp or stamp is None:
            self._builders = set(self.state.builders())
            self._builders_stamp = stamp
        names = set(configured) | self._builders
        return sorted(n for n in names if safe_name(n))

    def catch_up(self, b, hint=0, full=True):
        """The numbers of B (a siteindex.Builder) taken since it was last
        caught up, now counted in b.known and b.unfinal; HINT a number
        somebody said exists.  Unless FULL (or HINT), a counter that did
        not change since the last look (one lstat) means nothing new: a
        number taken by a runner that crashed before writing the counter
        is found by the next full pass (the rescan)."""
        stamp = self.state.counter_stamp(b.name)
        if not full and not hint and stamp is not None and stamp == b.counter_stamp:
            return []
        b.counter_stamp = stamp
        latest = b.known
        nxt = self.state.read_counter(b.name)
        if nxt is not None:
            latest = max(latest, nxt - 1)
        if hint > latest and os.path.isdir(self.state.build_dir(b.name, hint)):
            latest = hint
        if latest - b.known > MAX_CATCHUP and b.listed_for != (nxt, hint):
            # A long absence, or a counter that lies (once per lie): ask the directory.
            b.listed_for = (nxt, hint)
            new = [n for n in self.state.build_numbers(b.name) if n > b.known]
        elif latest - b.known > MAX_CATCHUP:
            new = []
        else:
            # The counter is written after the number is taken: look one further.
            while os.path.isdir(self.state.build_dir(b.name, latest + 1)):
                latest += 1
            new = list(range(b.known + 1, latest + 1))
        if new:
            b.known = max(b.known, new[-1])
            b.unfinal.update(new)
        return new

    def read(self, builder, number):
        """The build record, or None (a gap, or unreadable: logged once)."""
        try:
            rec = self.state.read_build(builder, number)
        except (OSError, ValueError) as e:
            if (builder, number) not in self._warned:
                self._warned.add((builder, number))
                log.warning("%s #%d: build record unreadable, not shown: %s" % (builder, number, e),
                            builder=builder, build=number)
            return None
        if not isinstance(rec, dict):
            return None
        rec = dict(rec, builder=builder, number=number)  # the directory names the build
        # The janitor's markers beside the record (keep.json, pruned.json;
        # buildunits-state(5)) and the notifier's mark (notifier/B@N.json),
        # for the build's page: never in a record.
        for key, reader in (("_keep", self.state.read_keep), ("_pruned", self.state.read_pruned),
                            ("_undelivered", self.state.read_undelivered)):
            try:
                extra = reader(builder, number)
            except (OSError, ValueError):
                extra = None
            if extra is not None:
                rec[key] = extra
        return rec

    def stream(self, name, numbers):
        """(start time, name, number, record or None, stamp) of each build
        of NAME among NUMBERS, read lazily, for a merge by start time."""
        when = 0.0
        for n in numbers:
            stamp = self.state.build_stamp(name, n)
            rec = self.read(name, n) if stamp else None
            if rec is not None:
                when = max(when, sort_time(rec))
            yield when, name, n, rec, stamp

    def rescan(self):
        """List the queue again at the next queued()."""
        self.queue.built = False

    def queued(self, shown):
        """{builder: (how many are queued, [the first SHOWN requests])},
        oldest first, from the index (see the module's docstring)."""
        if not (self.fed and self.queue.built):
            self.queue.rebuild(self.spool.pending("requests"))
        self._shown.update(self.queue.resolve_untagged(lambda rid: self.spool.read("requests", rid)))
        out, kept = {}, {}
        for b in self.queue.builders():
            reqs = []
            ids = self.queue.ids(b)
            while len(reqs) < min(shown, len(ids)):
                rid = ids[len(reqs)]
                req = self._shown.get(rid) or self.spool.read("requests", rid)
                if isinstance(req, dict) and req.get("builder") == b:
                    kept[rid] = req
                    reqs.append(req)
                else:
                    self.queue.discard(rid)   # gone, or broken (read() moved it to corrupt/)
            if ids:
                out[b] = (len(ids), reqs)
        self._shown = kept
        return out
