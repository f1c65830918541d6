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

    While a build runs, the log page of its running step follows the log:
    every LOG_FOLLOW_SEC the logs of the running steps are looked at (one
    lstat each) and the page of each that grew is written again; no other
    page is.  The timer runs only while a build runs.

    --rebuild renders everything from state, including finished builds'
    pages, and exits (with a progress bar on a terminal).  A running
    htmlgen notices and takes up from the result.

FILES
    SPOOL/hints/             wake-up hints from runners
    STATE/builds/            what it renders
    SITE/index.html          the waterfall
    SITE/api/                the JSON files (docs/site.md)
    SITE/.buildunits-site.json  what it remembers between updates
    SITE/**/.NAME.tmp-*      a page being written; swept at startup and daily
                             once older than fsutil.TMP_SWEEP_AGE_SEC

SIGNALS
    SIGHUP re-reads the configuration (titles, builders) and re-renders the
    waterfall; SIGTERM stops.
"""

import sys
import time

from gi.repository import GLib

from . import config, daemon, fsutil, log
from .spool import Spool
from .state import State

LOG_FOLLOW_SEC = 2      # how often a running step's log page is brought up to date
# How often, besides at startup, the site is swept of the temporary files a
# crashed htmlgen left (each older than fsutil.TMP_SWEEP_AGE_SEC): a walk of
# the whole site, so not at every rescan.
SITE_SWEEP_INTERVAL_SEC = 86400


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

    def startup(self):
        self._sweep_site()

    def _sweep_site(self):
        """Remove the temporary files (fsutil.tmp_name) that writers of the
        site which crashed left in it; htmlgen, the site's one writer, does
        it (the scheduler's unit is not given the site directory)."""
        self._swept = time.monotonic()
        for p in fsutil.sweep_stale_tmp_tree(self.dirs.site):
            log.notice("removed %s, abandoned by a writer that crashed" % p)

    def site(self):
        if self._site is None:
            from .site import Site
            self._site = Site(self.dirs.site, self.state, self.spool, self.cfg)
            self._site.source.fed = self.events
        return self._site

    def spool_event(self, path, present):
        """A hint, or a request queued or gone: the queue's index learns it
        (sitesource.py), and a pass follows."""
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

    def work(self):
        touched = self.spool.take_hints()
        if self._full:
            self._full = False
            self.site().rebuild(progress=lambda done, total: self.keepalive())
        else:
            self.site().update(touched)
        self._renders += 1
        for b, n in touched:
            self.bus.emit("SiteUpdated", b, n)
        if self._follow_source is None and self.site().follow_logs() is not None:
            self._follow_source = GLib.timeout_add_seconds(LOG_FOLLOW_SEC, self._follow)

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
        return "site %s; %d updates" % (self.dirs.site, self._renders)


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
