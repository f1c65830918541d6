"""buildunits-timer: periodic and nightly builds, a builder's OnCalendar= timer.

NAME
    buildunits-timer - periodic and nightly builds: a builder's
    OnCalendar= timer, its units and its generator

SYNOPSIS
    buildunits-timer-BUILDER.timer
    buildunits-timer@BUILDER.service
    PREFIX/lib/systemd/system-generators/buildunits-generator NORMAL-DIR [EARLY-DIR LATE-DIR]
    buildunits timer BUILDER

DESCRIPTION
    A builder with OnCalendar= (buildunits.builder(5); the expressions of
    systemd.time(7)) is built when its timer elapses.  The elapse is
    always the same command, `buildunits timer BUILDER`: for each branch
    the timer builds, it commits a force record to the scheduler's inbox,
    exactly as `buildunits force` does without the bus, with the reason
    "timer OnCalendar=EXPR"; with OnlyIfChanged=yes it first skips each
    branch whose head is unchanged.  Who runs that command when is one of
    two things.

    Under systemd: a timer unit per builder,
    buildunits-timer-BUILDER.timer (BUILDER escaped as systemd-escape
    does), written by buildunits-generator from the builders of
    /etc/buildunits/builders at boot and at every `systemctl
    daemon-reload` (edit a builder, then reload, as for fstab), with the
    builder's OnCalendar= and Persistent= as its own and AccuracySec=1s.
    It is wanted by buildunits.target and part of it (stopped with it), and
    starts buildunits-timer@BUILDER.service, a oneshot of the installed
    template unit, which runs the command as the buildunits user with the
    daemons' hardening.  `systemctl list-timers` shows the timers, and
    systemd keeps the persistent ones' stamps in /var/lib/systemd/timers/.
    A builder with problems gets no timer; each problem goes to the
    kernel log (the journal).

    Without systemd (plain processes: the tests, `make demo-local`):
    buildunits-scheduler runs the timers itself.  It computes each next
    elapse with the same rules (calendar.py, checked against
    `systemd-analyze calendar`) and runs the same command as its child
    when it comes.  With Persistent=yes it keeps the last elapse in
    STATE/timers/BUILDER.json, and a timer that elapsed while the
    scheduler was not running elapses once, at its start, as systemd's
    do.  The scheduler knows it runs under systemd by $INVOCATION_ID (set
    for every service systemd starts) with /run/systemd/system present;
    it then runs no timer and warns of a builder whose timer unit the
    generator has not written yet.

BRANCHES
    A timer builds each entry of Branches= that is a plain name (no *, ?
    or [), or, when every entry is a glob, the builder's default branch
    (as `buildunits force`); a builder without Repository= gets one build.
    With OnlyIfChanged=yes a branch is built only when its head, read from
    the repository as the poller reads it, differs from the revision of
    the builder's last build of that branch and of every build of it still
    queued (a request, or a force record not yet taken); a branch the
    repository does not have is not built.  A head that cannot be read is
    built anyway, with the error in the journal: better a build too many
    than a nightly lost.

FILES
    STATE/timers/BUILDER.json    the last elapse of a persistent timer, without systemd
    /run/systemd/generator/      where the generator writes the timers
    /var/lib/systemd/timers/     systemd's stamps of the persistent timers
"""

import os
import subprocess
import sys
import time

from . import calendar, control, git, records, redact
from .executor_unit import unit_escape

TIMER_USER = "timer"
SOURCE = "timer"
# The installed template of the service a timer starts (units/).
SERVICE_TEMPLATE = "buildunits-timer@.service"
GENERATOR_DIR = "/run/systemd/generator"
RECENT_BUILDS = 100      # builds of a builder read for its last one of a branch


def timer_unit(builder):
    """buildunits-timer-BUILDER.timer, BUILDER escaped (executor_unit.unit_escape)."""
    return "buildunits-timer-%s.timer" % unit_escape(builder)


def service_unit(builder):
    return "buildunits-timer@%s.service" % unit_escape(builder)


def reason(b):
    return "timer OnCalendar=%s" % ", ".join(b.on_calendar)


def under_systemd(environ=None):
    """True when this process is a service systemd started (its timers are then systemd's)."""
    env = os.environ if environ is None else environ
    return bool(env.get("INVOCATION_ID")) and os.path.isdir("/run/systemd/system")


def branches(b):
    """The branches B's timer builds ("" : the scheduler's default; see the docstring)."""
    if not b.repository:
        return [""]
    plain = [g for g in b.branches if g and not any(ch in g for ch in "*?[")]
    return list(dict.fromkeys(plain)) or [""]


def _default_branch(b):
    from .scheduler import default_branch      # GLib is only needed there
    return default_branch(b)


# ---------------------------------------------------------------- elapse
def elapse(spool, state, cfg, name, read_heads=None):
    """What BUILDER NAME's timer does when it elapses: a force record per
    branch (control.force; each its own commit point), or none for a
    branch OnlyIfChanged= finds unchanged.  Returns lines for the journal.
    Raises control.Refused for a builder that is not configured.
    READ_HEADS(repository) -> {branch: revision} (git.heads by default)."""
    b = cfg.builders.get(name)
    if b is None:
        raise control.Refused("no builder %r (builders: %s)" % (name, ", ".join(sorted(cfg.builders)) or "none"))
    why = reason(b)
    lines = []
    heads = None
    for branch in branches(b):
        revision = ""
        if b.only_if_changed and b.repository:
            shown = branch or _default_branch(b)
            if heads is None:
                try:
                    heads = (read_heads or git.heads)(b.repository)
                except (git.GitError, OSError) as e:
                    heads = {}
                    lines.append("%s: cannot read the heads of %s (%s); building anyway"
                                 % (name, redact.url(b.repository), redact.text(str(e))))
            head = heads.get(shown)
            if head is not None and git.valid_revision(head):
                seen = seen_revisions(spool, state, name, shown)
                if head in seen:
                    lines.append("%s: %s is at %s, built or queued already; no timed build (OnlyIfChanged=yes)"
                                 % (name, shown, head[:12]))
                    continue
                revision, branch = head, shown
            elif heads:
                lines.append("%s: no branch %s in %s: nothing changed; no timed build (OnlyIfChanged=yes)"
                             % (name, shown, redact.url(b.repository)))
                continue
        fid, notes = control.force(spool, cfg, name, branch, revision, why, {}, TIMER_USER, source=SOURCE)
        lines.extend("%s: %s" % (name, n) for n in notes)
        lines.append("%s: timed build of %s%s queued (%s; %s)" % (
            name, branch or "its default branch", (" at " + revision[:12]) if revision else "", fid, why))
    return lines


def seen_revisions(spool, state, name, branch):
    """The revisions of BRANCH that builder NAME has built last or has
    queued: its newest build of the branch (among its RECENT_BUILDS
    newest), its requests waiting or claimed, its force records not yet
    taken.  What OnlyIfChanged= compares a head with."""
    seen = set()
    for n in reversed(state.recent_numbers(name, RECENT_BUILDS)):
        try:
            rec = state.read_build(name, n)
        except (records.RecordError, OSError):
            continue
        if rec and rec.get("branch") == branch and git.valid_revision(rec.get("revision")):
            seen.add(rec["revision"])
            break
    queued = [spool.read("requests", rid) for rid in spool.pending("requests")
              if spool_builder(rid) in (name, None)]
    for worker, rids in spool.all_claimed().items():
        queued += [spool.read_claimed(worker, rid) for rid in rids if spool_builder(rid) in (name, None)]
    queued += [spool.read("changes", cid) for cid in spool.pending("changes")]
    for rec in queued:
        if isinstance(rec, dict) and rec.get("builder") == name and rec.get("branch") == branch \
                and git.valid_revision(rec.get("revision")):
            seen.add(rec["revision"])
    return seen


def spool_builder(rid):
    from .spool import builder_of
    return builder_of(rid)


# ------------------------------------------------------------- generator
def _unit_value(text):
    """TEXT for a unit file's value: specifiers (%) doubled, no line breaks."""
    return text.replace("%", "%%").replace("\n", " ").replace("\\", "\\\\")


def generate(cfg):
    """{relative path: text} of the units buildunits-generator writes for
    CFG's builders with OnCalendar=: each timer, and its link in
    buildunits.target.wants/ (so starting or enabling the target starts
    it; PartOf= stops it with the target)."""
    out = {}
    for b in sorted(cfg.builders.values(), key=lambda b: b.name):
        if not b.on_calendar:
            continue
        unit = timer_unit(b.name)
        lines = ["# Written by buildunits-generator from %s:" % _unit_value(b.path),
                 "# edit the builder and run `systemctl daemon-reload`.",
                 "[Unit]",
                 "Description=buildunits timer of builder %s" % b.name,
                 "Documentation=man:buildunits-timer(8) man:buildunits.builder(5)",
                 "SourcePath=%s" % _unit_value(b.path),
                 "PartOf=buildunits.target",
                 "",
                 "[Timer]"]
        lines += ["OnCalendar=%s" % _unit_value(e) for e in b.on_calendar]
        lines += ["Persistent=%s" % ("yes" if b.persistent else "no"),
                  # systemd's default, 1min, would let `*:*:0/5` elapse once a minute.
                  "AccuracySec=1s",
                  "Unit=%s" % service_unit(b.name),
                  ""]
        out[unit] = "\n".join(lines)
        out[os.path.join("buildunits.target.wants", unit)] = ("link", os.path.join("..", unit))
    return out


def write_generated(directory, files):
    """Write generate()'s FILES under DIRECTORY (a generator's output
    directory, which systemd empties before each run)."""
    for rel, content in files.items():
        path = os.path.join(directory, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(content, tuple):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            os.symlink(content[1], path)
        else:
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(content)
            os.rename(tmp, path)


def generator_main(argv, config_dir=None):
    """buildunits-generator NORMAL-DIR [EARLY-DIR LATE-DIR] (systemd.generator(7)).

    A configuration with problems: the builders read without problems
    still get their timers, and each problem is written to the kernel log
    (the journal); the exit status is 0 either way, as a generator's
    failure would only hide the timers that are fine."""
    from . import config, paths
    if not argv:
        print("usage: buildunits-generator NORMAL-DIR [EARLY-DIR LATE-DIR]", file=sys.stderr)
        return 2
    directory = config_dir or os.environ.get("BUILDUNITS_CONFIG_DIR") or paths.DEFAULTS["config"]
    try:
        cfg = config.load(directory)
    except config.ConfigError as e:
        for p in e.problems:
            _kmsg("buildunits-generator: %s" % p)
        cfg = e.partial
        if cfg is None:
            return 0
    write_generated(argv[0], generate(cfg))
    return 0


def _kmsg(line):
    """A generator's stderr may go nowhere; /dev/kmsg reaches the journal."""
    print(line, file=sys.stderr)
    try:
        with open("/dev/kmsg", "w") as f:
            f.write("<4>%s\n" % line)
    except OSError:
        pass


# -------------------------------------------------------------- plain mode
class PlainTimers:
    """The scheduler's own OnCalendar= timers, without systemd.

    Every dependency is handed in: STATE (the timer records), CLOCK() the
    time now, ARM(seconds, callback) a one-shot timer with .remove(),
    SPAWN(builder, done) runs `buildunits timer BUILDER` and calls
    DONE(ok) when it ends, LOG(level, text).  So the tests drive it with
    their own clock and no sleep.

    Each builder's next elapse is computed from its base: the last elapse
    (Persistent=yes: its state record, as systemd's stamp), else when this
    scheduler first saw the builder's timer.  An elapse already past when
    it is computed (the scheduler was down) fires at once, once; then the
    base is that elapse's time, now."""

    def __init__(self, state, clock, arm, spawn, log):
        self.state, self.clock, self.arm, self.spawn, self.log = state, clock, arm, spawn, log
        self._timers = {}      # builder -> (key, base)
        self._armed = None
        self.running = set()   # builders whose elapse command runs
        self.fired = []        # (builder, time) of each elapse, for status and tests

    def update(self, cfg):
        """Take CFG's builders with OnCalendar= (at start and after a reload)
        and arm the next elapse.  A builder whose expressions and
        Persistent= are unchanged keeps its base."""
        now = self.clock()
        new = {}
        self.cfg = cfg
        for b in cfg.builders.values():
            if not b.on_calendar:
                continue
            key = (tuple(b.on_calendar), b.persistent)
            old = self._timers.get(b.name)
            if old is not None and old[0] == key:
                new[b.name] = old
                continue
            base = now
            if b.persistent:
                last = self._last(b.name)
                if last is not None:
                    base = min(last, now)
            new[b.name] = (key, base)
        self._timers = new
        self.check(now)

    def _last(self, name):
        try:
            rec = self.state.read_timer(name)
        except records.RecordError as e:
            self.state.quarantine(e.path, e.reason)
            self.log("error", "%s; the timer of %s goes on without it" % (e, name))
            return None
        except OSError as e:
            self.log("error", "cannot read the timer record of %s: %s" % (name, e))
            return None
        last = rec.get("last") if rec else None
        return float(last) if isinstance(last, (int, float)) and not isinstance(last, bool) else None

    def next_elapse(self, name):
        """The next elapse of builder NAME's timer, or None."""
        key, base = self._timers[name]
        nexts = []
        for expr in key[0]:
            try:
                t = calendar.parse(expr).next_after(base)
            except calendar.CalendarError as e:
                self.log("error", "%s: OnCalendar=%s: %s" % (name, expr, e))
                continue
            if t is not None:
                nexts.append(t)
        return min(nexts) if nexts else None

    def check(self, now=None):
        """Fire every timer due at NOW (default CLOCK()) and arm the next."""
        now = self.clock() if now is None else now
        soonest = None
        for name in sorted(self._timers):
            t = self.next_elapse(name)
            if t is None:
                continue
            if t <= now:
                self._fire(name, now)
                t = self.next_elapse(name)
                if t is None:
                    continue
            soonest = t if soonest is None else min(soonest, t)
        if self._armed is not None:
            self._armed.remove()
            self._armed = None
        if soonest is not None:
            # Armed on the monotonic clock; check() compares with the wall
            # clock again when it fires (and at every scheduler pass), so a
            # wall clock set back or forward costs at most one re-arm.
            self._armed = self.arm(max(0.0, soonest - now), self._on_timer)
        return soonest

    def _on_timer(self):
        self._armed = None
        self.check()
        return False

    def _fire(self, name, now):
        key, _base = self._timers[name]
        self._timers[name] = (key, now)
        self.fired.append((name, now))
        if name in self.running:
            self.log("warning", "%s: timer elapsed while its previous elapse still runs; skipped" % name)
            return
        self.running.add(name)
        self.log("info", "%s: timer elapsed (OnCalendar=%s)" % (name, ", ".join(key[0])))
        persistent = key[1]

        def done(ok):
            self.running.discard(name)
            if ok and persistent:
                # After the force records are committed: a crash before
                # this write makes the elapse again at the next start
                # (twice, never lost).  See buildunits-state(5), "timer".
                try:
                    self.state.write_timer(name, {"builder": name, "last": now, "calendar": list(key[0])})
                except OSError as e:
                    self.log("error", "%s: cannot write its timer record: %s" % (name, e))
            elif not ok:
                self.log("error", "%s: the timed build could not be queued (see above); "
                                  "it is tried again at the next elapse" % name)
        self.spawn(name, done)


def spawn_elapse(dirs, builder, done, watch):
    """Run `buildunits timer BUILDER` as a child with DIRS; WATCH(pid,
    callback(status)) calls back when it ends (GLib.child_watch_add).
    Its output goes to the scheduler's (the journal)."""
    from . import paths
    argv = [sys.executable, paths.program("buildunits"), "--config-dir", dirs.config, "--spool-dir", dirs.spool,
            "--state-dir", dirs.state, "timer", "--", builder]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, close_fds=True)

    def ended(status):
        proc.returncode = status          # reaped by the watch; Popen must not wait for it
        done(status == 0)
    watch(proc.pid, ended)
    return proc


def describe(b, now=None):
    """One line for checkconfig: B's timer and its next elapse."""
    now = time.time() if now is None else now
    nexts = []
    for expr in b.on_calendar:
        t = calendar.parse(expr).next_after(now)
        if t is not None:
            nexts.append(t)
    nxt = time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(min(nexts))) if nexts else "never"
    return "timer OnCalendar=%s%s%s, next elapse %s" % (
        ", ".join(b.on_calendar), " Persistent=yes" if b.persistent else "",
        " OnlyIfChanged=yes" if b.only_if_changed else "", nxt)
