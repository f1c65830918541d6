"""buildunits-htmlgen: keep the static site up to date.

NAME
    buildunits-htmlgen - the static HTML generator

DESCRIPTION
    Renders the waterfall, the console, a page per builder, build and step
    log, Atom feeds, SVG badges and JSON files (docs/site.md describes
    them; site.py renders them) into the site directory (default
    STATE/site), as plain files any web server, or a browser on file://,
    can show.  Every file is written to a temporary name and renamed into
    place, so a reader never sees half a page.

    It re-renders what changed when a runner says so: a D-Bus signal from
    a runner, or a hint file SPOOL/hints/BUILDER@NUMBER (inotify), both
    hints only; what is queued it keeps in memory, per builder, from the
    requests' file names, inotify on SPOOL/requests/new and the
    BuildRequested signal, and it reads only the few requests a page
    shows (sitesource.py); each update also finds new builds through the builders'
    counters and looks at the running ones, so a lost hint costs nothing.
    An update costs the same whatever the length of the history: pages
    that show only finished builds are written once, and the rest show a
    bounded number of recent builds.  At startup it takes up from
    SITE/.buildunits-site.json (a site without it is rendered whole once),
    and on the rescan timer it brings the head pages up to date.

    A site it does not know (a first start, or its INDEX lost) with a long
    history (HEADS_FIRST_MIN_BUILDS builds or more) it serves heads first: the head pages and the builds they show are written, then
    READY=1, and a child process renders the whole site (in parallel, a
    worker per CPU; sitefill.py), skipping the builds whose pages a
    previous run finished; STATUS= and the journal say how far it is.
    Meanwhile updates go on for the head pages, and the links from them to
    older pages lead to pages being written.  Once the child wrote
    SITE/.buildunits-site.json, htmlgen takes up from it.  A crash of
    either, at any point, leaves no INDEX: the next start serves the heads
    and fills in again what is missing.  A new configuration starts the
    fill again.

    While a build runs, the log page of its running step follows the log:
    every LOG_FOLLOW_SEC the logs of the running steps are looked at (one
    lstat each) and the page of each that grew is written again; no other
    page is.  The timer runs only while a build runs.

    --rebuild renders everything from state, including finished builds'
    pages, and exits (with a progress bar on a terminal).  A running
    htmlgen notices and takes up from the result.

FILES
    SPOOL/hints/             wake-up hints from runners, from the janitor
                             (a build removed: its pages go, docs/site.md)
                             and from the notifier (a message given up on);
                             hints/.taken-B@N: taken by a pass, dropped once
                             its INDEX is written (a crash: taken again)
    STATE/builds/            what it renders
    SITE/index.html          the waterfall
    SITE/api/                the JSON files (docs/site.md)
    SITE/.buildunits-site.json  what it remembers between updates
    SITE/.buildunits-final   what every build's .final mark is a hard link to
    SITE/**/.NAME.tmp-*      a page being written; swept at startup and daily
                             once older than fsutil.TMP_SWEEP_AGE_SEC

SIGNALS
    SIGHUP re-reads the configuration (titles, builders) and re-renders the
    waterfall; SIGTERM stops.
"""

import gc
import os
import signal
import sys
import time

from gi.repository import GLib

from . import config, daemon, fsutil, log, sitefill
from .spool import HINT_TAKEN, Spool
from .state import State

LOG_FOLLOW_SEC = 2      # how often a running step's log page is brought up to date
# How often, besides at startup, the site is swept of the temporary files a
# crashed htmlgen left (each older than fsutil.TMP_SWEEP_AGE_SEC): a walk of
# the whole site, so not at every rescan.
SITE_SWEEP_INTERVAL_SEC = 86400
# A site without INDEX whose history is this long or longer is served
# heads first, and rendered whole in the background (DESCRIPTION); a
# shorter one is rendered whole before READY=1 (a few seconds at most).
HEADS_FIRST_MIN_BUILDS = 500


class HTMLGen(daemon.Daemon):
    role = "HTMLGen"
    program = "buildunits-htmlgen"
    # Off the build path: gather a burst of step events into one render.
    wake_holdoff_ms = 200
    watch_queues = ("hints", "requests")
    subscriptions = (("Runner", "BuildStarted"), ("Runner", "StepStarted"), ("Runner", "StepFinished"),
                     ("Runner", "BuildFinished"), ("Scheduler", "BuildRequested"))

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._site = None
        self._full = True
        self._renders = 0
        self._follow_source = None
        self._follow_error = None
        self._swept = None
        self._fill = None        # the child rendering the whole site: {"pid", "fd", "lines", ...}
        self._fill_due = None    # GLib source that starts it
        self.fills = 0           # fills finished

    def startup(self):
        self._children_leave_the_lock()
        self._sweep_site()

    def _children_leave_the_lock(self):
        """The fill and the workers of a full rendering (sitefill) close
        the instance lock: one that outlived this process for a moment
        must not keep the next start out."""
        sock = getattr(self, "_lock_sock", None)
        sitefill.close_in_child[:] = [fd for fd in (getattr(self, "_lock_fd", None),
                                                    sock.fileno() if sock is not None else None)
                                      if fd is not None]

    def _sweep_site(self):
        """Remove the temporary files (fsutil.tmp_name) that writers of the
        site which crashed left in it; htmlgen, the site's one writer, does
        it (the scheduler's unit is not given the site directory)."""
        self._swept = time.monotonic()
        self._swept_once = getattr(self, "_swept_once", False)
        # At the start, what a writer that is gone left (an earlier
        # instance, its fill or workers: none runs while this one holds
        # the lock) goes whatever its age; later only the old.
        for p in fsutil.sweep_stale_tmp_tree(self.dirs.site, dead=not self._swept_once):
            log.notice("removed %s, abandoned by a writer that crashed" % p)
        self._swept_once = True

    def site(self):
        if self._site is None:
            from .site import Site
            self._site = Site(self.dirs.site, self.state, self.spool, self.cfg)
            self._site.source.fed = self.events
            self._site.heads_first = HEADS_FIRST_MIN_BUILDS
        return self._site

    def spool_event(self, path, present):
        """A hint, or a request queued or gone: the queue's index learns it
        (sitesource.py), and a pass follows."""
        if os.path.basename(path).startswith(HINT_TAKEN):
            return          # a hint taken, or dropped: this process's own doing
        name = self.spool.entry_name("requests", path)
        if name is not None and self._site is not None:
            if present:
                self._site.source.queue.add(name)
            else:
                self._site.source.queue.discard(name)
        self.wake()

    def signal_BuildRequested(self, rid, builder, branch, revision):
        if self._site is not None:
            self._site.source.queue.add(rid)
        self.wake()

    def on_config(self, old, new):
        self._site = None
        self._full = True
        self._stop_fill()   # it renders with the old configuration; the next pass starts another

    def work(self):
        # The hints are dropped after the pass, whose INDEX is its commit
        # point: a crash before that takes them again at the next start.
        # (Taken and dropped first, a removal the janitor hinted would be
        # lost with the pass: its hint is the site's only word of it.)
        touched, taken = self.spool.claim_hints()
        if self._full:
            self._full = False
            self.site().rebuild(progress=lambda done, total: self.keepalive(), touched=touched)
            # What a full pass leaves in memory (the cards, the pieces of
            # pages, the templates) lives long: out of the collector's
            # sight, a pass at 1000 builders costs a quarter less.
            gc.collect()
            gc.freeze()
        else:
            self.site().update(touched)
        self.spool.drop_hints(taken)
        self._renders += 1
        for b, n in touched:
            self.bus.emit("SiteUpdated", b, n)
        if self._follow_source is None and self.site().follow_logs() is not None:
            self._follow_source = GLib.timeout_add_seconds(LOG_FOLLOW_SEC, self._follow)
        if self.site().needs_fill and self._fill is None and self._fill_due is None:
            # From the main loop, so after READY=1 on a first start.
            self._fill_due = GLib.idle_add(self._start_fill)

    # ------------------------------------------------- the background fill
    def _start_fill(self):
        """Fork the child that renders the whole site (see DESCRIPTION)."""
        self._fill_due = None
        if self.stopping or self._fill is not None or not self.site().needs_fill:
            return False
        from .site import Site
        dirs, cfg, state, spool = self.dirs, self.cfg, self.state, self.spool
        self._children_leave_the_lock()

        def fill(report):
            shown = [None]

            def progress(done, total):
                if total and done * 100 // total != shown[0]:
                    shown[0] = done * 100 // total
                    report("= %d %d" % (done, total))
            Site(dirs.site, state, spool, cfg).rebuild(progress=progress)
        pid, fd = sitefill.fork(fill)
        os.set_blocking(fd, False)
        f = self._fill = {"pid": pid, "fd": fd, "lines": sitefill.Lines(), "started": time.monotonic(),
                          "logged": -1}
        f["io"] = GLib.io_add_watch(fd, GLib.PRIORITY_DEFAULT, GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR,
                                    self._fill_report)
        f["watch"] = GLib.child_watch_add(GLib.PRIORITY_DEFAULT, pid, self._fill_done)
        log.notice("site %s: no index to take up from; rendering it whole in the background (process %d)"
                   % (self.dirs.site, pid))
        self.notifier.status(self.status_text())
        return False

    def _fill_report(self, fd, _cond):
        f = self._fill
        if f is None or f["fd"] != fd:
            return False
        more = f["lines"].feed(fd)
        at = f["lines"].at
        if at is not None:
            tenth = at[0] * 10 // max(1, at[1])
            if tenth != f["logged"]:
                f["logged"] = tenth
                log.info("site: filled in %d of %d builds" % at)
            self.notifier.status(self.status_text())
        if not more:
            f["io"] = None
        return more

    def _fill_done(self, pid, status):
        f = self._fill
        if f is None or f["pid"] != pid:
            return
        self._fill = None
        if f["io"] is not None:
            GLib.source_remove(f["io"])
            f["lines"].feed(f["fd"])
        os.close(f["fd"])
        if status == 0:
            self.fills += 1
            at = f["lines"].at
            log.notice("site %s rendered whole in %.1fs (%d builds); taking up from its index"
                       % (self.dirs.site, time.monotonic() - f["started"], at[1] - 1 if at else 0))
            self._full = True
            self.wake()
        else:
            # Its builds with a .final are done; the next one renders the rest.
            log.error("site: the process rendering it whole failed (%s); trying again"
                      % sitefill.describe_status(status))
            self.retry_later()
        self.notifier.status(self.status_text())

    def _stop_fill(self):
        if self._fill_due is not None:
            GLib.source_remove(self._fill_due)
            self._fill_due = None
        f, self._fill = self._fill, None
        if f is None:
            return
        for source in (f["io"], f["watch"]):
            if source is not None:
                GLib.source_remove(source)
        try:
            os.kill(f["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(f["pid"], 0)   # its workers stop by themselves (sitefill)
        except ChildProcessError:
            pass
        os.close(f["fd"])

    def filling(self):
        """True while the site is being rendered whole in the background."""
        return self._fill is not None or self._fill_due is not None

    def shutdown(self):
        self._stop_fill()
        return True

    def _follow(self):
        """The log-follow timer: on while a build runs (see DESCRIPTION)."""
        if self.stopping:
            self._follow_source = None
            return False
        try:
            following = self.site().follow_logs() is not None
        except Exception as e:
            # A full disk: said once; the next update (wake, rescan) retries.
            if str(e) != self._follow_error:
                self._follow_error = str(e)
                log.warning("cannot bring a running step's log page up to date: %s" % e)
            following = True
        else:
            self._follow_error = None
        if not following:
            self._follow_source = None
        return following

    def _rescan(self):
        self._full = True
        if self._swept is None or time.monotonic() - self._swept >= SITE_SWEEP_INTERVAL_SEC:
            self._sweep_site()
        return super()._rescan()

    def status_text(self):
        text = "site %s; %d updates" % (self.dirs.site, self._renders)
        if self.filling():
            at = self._fill["lines"].at if self._fill else None
            text += "; filling in the site's history" + (": %d of %d builds" % at if at else "")
        return text


def _extra(parser):
    parser.add_argument("--rebuild", action="store_true",
                        help="render every page from state (also finished builds) and exit")


def rebuild(dirs):
    """--rebuild: render everything and exit 0 (1 on a bad configuration)."""
    try:
        cfg = config.load(dirs.config)
    except config.ConfigError as e:
        for p in e.problems:
            print(str(p), file=sys.stderr)
        return 1
    from .site import Site
    site = Site(dirs.site, State(dirs.state), Spool(dirs.spool), cfg)
    tty = sys.stderr.isatty()
    shown = [None]

    def progress(done, total):
        # Redrawn when the bar or the count in thousands moves: 100k builds
        # do not make 100k writes to the terminal.
        if tty:
            width = 40
            fill = int(width * done / total) if total else width
            if (fill, done // 1000) != shown[0] or done == total:
                shown[0] = (fill, done // 1000)
                sys.stderr.write("\r[%s%s] %d/%d builds" % ("#" * fill, "." * (width - fill), done, total))
                sys.stderr.flush()

    site.rebuild(progress=progress, force=True)
    if tty:
        sys.stderr.write("\n")
    print("site written to %s/index.html" % dirs.site)
    return 0


def main(argv):
    if "--rebuild" in argv:
        from . import paths
        parser = daemon.argument_parser(HTMLGen.program, "Render the static site.")
        _extra(parser)
        args = parser.parse_args(argv)
        log.setup(HTMLGen.program)
        return rebuild(paths.from_args(args))
    return daemon.main(HTMLGen, argv, "Keep the static site up to date.", extra_args=_extra)
