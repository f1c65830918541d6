"""buildunits: the operator's command.

NAME
    buildunits - check the configuration, force and rebuild builds, hand
    in changes, show status, check the spool and state

SYNOPSIS
    buildunits [DIRECTORY OPTIONS] checkconfig
    buildunits [DIRECTORY OPTIONS] force BUILDER [--branch B] [--revision R] [--reason TEXT]
                                                 [--property NAME=VALUE]...
    buildunits [DIRECTORY OPTIONS] rebuild BUILDER NUMBER [--reason TEXT]
    buildunits [DIRECTORY OPTIONS] cancel BUILDER NUMBER | cancel --request ID
    buildunits [DIRECTORY OPTIONS] sendchange --repository R --branch B --revision SHA
                                              [--author A] [--message M] [--file F]... [--when EPOCH]
    buildunits [DIRECTORY OPTIONS] status [--json]
    buildunits [DIRECTORY OPTIONS] fsck [--repair] [--deep]
    buildunits [DIRECTORY OPTIONS] timer BUILDER
    buildunits [DIRECTORY OPTIONS] janitor [--dry-run] [--measure]
    buildunits [DIRECTORY OPTIONS] keep BUILDER NUMBER [--reason TEXT] | keep --unkeep BUILDER NUMBER

DESCRIPTION
    checkconfig  parse the configuration without side effects; problems
                 are printed as FILE:LINE: [Section] Key=: message, and
                 warnings (unknown keys and sections) after them.
    force        queue a build of BUILDER now (the scheduler turns it into
                 a request; without --revision the branch's tip is built).
                 Each --property NAME=VALUE is a property of the build,
                 in the environment of each of its steps as
                 BUILDUNITS_PROPERTY_NAME (see buildunits.builder(5)); a
                 NAME is [A-Za-z_][A-Za-z0-9_]{0,63}, a VALUE any text
                 without NUL of at most 4096 bytes, and a build has at
                 most 64 properties of 16384 bytes together (otherwise
                 exit status 2).  --priority N gives the build its own
                 priority, -1000 to 1000, instead of the builder's
                 Priority= (a higher one starts first).
    rebuild      queue build NUMBER of BUILDER again: the same revision
                 (the one it checked out), branch, changes and
                 properties, as a forced build whose record and page say
                 "rebuild of #NUMBER" (and --reason, if given).  A NUMBER
                 that holds no build is an error naming it (exit status
                 1).
    cancel       cancel the running build BUILDER #NUMBER, or a queued
                 request (its id is in `buildunits status`).
                 force, rebuild and cancel ask the scheduler over D-Bus when
                 it is on the bus (the D-Bus policy says who may), and
                 otherwise write to the spool (its permissions say who may).
                 Without the bus, force and rebuild check BUILDER against
                 the configuration on disk; if that has problems they warn
                 and still queue the force (the daemons run the last
                 configuration they accepted, and the scheduler checks the
                 builder again).
    sendchange   hand one commit in directly, as a git post-receive hook
                 does (share/examples/post-receive).  With a local
                 repository, the author, message, date and files missing
                 from the command line are read from git.
    status       the queue, the running builds, each builder's last
                 build, and each polled repository: a repository that
                 cannot be polled is shown with the reason until it can,
                 and the commits the poller skipped because they cannot
                 be parsed are listed; --json for scripts.  Of a long
                 queue the oldest 20 requests are shown and the rest
                 counted by builder (in the JSON: queued_count,
                 queued_by_builder), from the queue's file names alone.
                 Each lock of Locks= is shown with the builds holding it.
                 The notifier's outbox is shown when it holds messages:
                 how many wait, and the oldest's age and last error.
    fsck         check the spool and state invariants and say what would
                 be repaired; --repair does it.  By default the build
                 history is checked for its structure: every builder's
                 and build's directory entries (names, links, stray and
                 stale files), the next-number hint, that every build
                 number holds a build.json, and, read in full, the newest
                 100 builds of each builder and every build with a
                 progress file (running, or interrupted); older records
                 are not opened, so a long history is checked in seconds.
                 --deep also reads and validates every build record, as
                 after a disk error or a restore from backup: a torn or
                 unreadable old build.json, or one recorded as running
                 with no progress file, is found only with --deep.
    timer        what BUILDER's OnCalendar= timer does when it elapses:
                 queue a build of each branch it builds through the spool
                 (as force does without the bus), with the reason "timer
                 OnCalendar=...", skipping with OnlyIfChanged=yes a branch
                 whose head is built or queued already
                 (buildunits.builder(5)).  systemd's timer units run it
                 (buildunits-timer@BUILDER.service), and so does the
                 scheduler without systemd; run by hand, it tries the
                 timer now.

    janitor      apply the retention keys (KeepBuilds=, KeepDays=,
                 KeepLogDays=, KeepArtifactDays=; buildunits.builder(5),
                 RETENTION): remove the builds, logs and artifacts they
                 no longer keep, never a builder's newest build, a
                 running or a pinned one; finish a removal a crash
                 stopped; prune requests cancelled more than 7 days ago;
                 measure what the history takes on disk (for status) and
                 tell the site what went.  One line per thing done.  A
                 build is removed whole or not at all: renamed to
                 builds/BUILDER/.removing-NUMBER (the commit point), then
                 deleted.  --dry-run says what it would remove and
                 changes nothing; --measure measures the disk usage
                 afresh (otherwise kept up to date from what each pass
                 adds and removes).  buildunits-janitor.timer runs it
                 daily; by hand, run it as the buildunits user (sudo -u
                 buildunits buildunits janitor, or systemctl start
                 buildunits-janitor), whose files it replaces.  Exit
                 status 1 if another pass is running, or the
                 configuration has a problem (then nothing is removed:
                 a builder's own keys could not be read).  A builder
                 with history and no file any more follows [Defaults].
    keep         pin build NUMBER of BUILDER: the janitor never removes
                 it, nor its logs and artifacts; its page says "kept",
                 by whom and when (a keep.json beside its record,
                 buildunits-state(5)).  --unkeep unpins it.  A NUMBER
                 that holds no build is an error (exit status 1).

REVISIONS
    A revision is a full commit id: 40 lowercase hex digits (64 in a
    SHA-256 repository).  force --revision refuses anything else (exit
    status 2).  sendchange takes 4 to 64 hex digits in either case: an
    abbreviated id is resolved to the full one in a local repository, and
    refused for a remote one (exit status 2).  Of a Mercurial repository
    (Type=hg) a revision is a full changeset id (40 lowercase hex digits,
    $HG_NODE in a changegroup hook), of a Subversion one (Type=svn) a
    revision number ($REV in a post-commit hook); sendchange reads the
    details of a local hg changeset with hg, and takes an svn revision's
    from its options.

EXIT STATUS
    0 success; 1 a problem was found (checkconfig, fsck) or the command
    failed; 2 bad usage.
"""

import argparse
import getpass
import json
import math
import os
import re
import sys
import time

from . import __version__, config, control, fsck, git, paths, properties as propsmod, redact, vcs
from .status import gather_status
from .spool import Spool
from .state import State


def _err(msg):
    print("buildunits: %s" % msg, file=sys.stderr)


# ------------------------------------------------------------ checkconfig
def _print_problems(e, warnings=False):
    """The problems of ConfigError E on stderr, a line each, and its
    warnings with WARNINGS (a misspelt key is often why a needed one is
    missing)."""
    for p in e.problems:
        print(str(p), file=sys.stderr)
    for w in e.warnings if warnings else ():
        print("warning: %s" % w, file=sys.stderr)


def cmd_checkconfig(dirs, args):
    try:
        cfg = config.load(dirs.config)
    except config.ConfigError as e:
        _print_problems(e, warnings=True)
        print("%s: %d problem%s" % (dirs.config, len(e.problems), "" if len(e.problems) == 1 else "s"),
              file=sys.stderr)
        return 1
    for w in cfg.warnings:
        print("warning: %s" % w, file=sys.stderr)
    bad_timers = 0
    for b in cfg.builders.values():
        print("%s: %s%s; %d step%s" % (b.name, redact.url(b.repository) or "no repository",
                                      (" [%s]" % " ".join(b.branches)) if b.repository else "",
                                      len(b.steps), "" if len(b.steps) == 1 else "s"))
        if b.on_calendar and _timer_line(b):
            bad_timers += 1
    if bad_timers:
        return 1
    print("%s: configuration OK, %d builder%s" % (dirs.config, len(cfg.builders),
                                                  "" if len(cfg.builders) == 1 else "s"))
    return 0


def _timer_line(b):
    """Print B's timer and its next elapse; True (and the error) if it
    cannot be computed (a local time zone that cannot be read)."""
    from . import calendar, periodic
    try:
        print("%s: %s" % (b.name, periodic.describe(b)))
    except calendar.CalendarError as e:
        print("%s: [Builder] OnCalendar=: %s" % (b.path, e), file=sys.stderr)
        return True
    return False


# ------------------------------------------------------------------ timer
def cmd_timer(dirs, args):
    from . import periodic
    sp = Spool(dirs.spool)
    sp.ensure()
    try:
        lines = periodic.elapse(sp, State(dirs.state), _config_for_force(dirs), args.builder)
    except control.Refused as e:
        _err(str(e))
        return 1
    for line in lines:
        print(line)
    return 0


# ---------------------------------------------------------------- janitor
def cmd_janitor(dirs, args):
    from . import janitor
    try:
        cfg = config.load(dirs.config)
    except config.ConfigError as e:
        # Removing is for good: a builder whose file has a problem would
        # be judged by [Defaults], not by its own keys.  Nothing is removed.
        _print_problems(e)
        _err("the configuration in %s has %d problem%s (run `buildunits checkconfig`); nothing removed"
             % (dirs.config, len(e.problems), "" if len(e.problems) == 1 else "s"))
        return 1
    sp = Spool(dirs.spool)
    try:
        rep = janitor.run(State(dirs.state), sp, cfg, dry_run=args.dry_run, measure=args.measure,
                          site=janitor.SiteHints(sp), say=print)
    except janitor.Busy as e:
        _err(str(e))
        return 1
    removed = sum(len(v) for v in rep.removed.values())
    print("janitor: %s %d build%s, the logs of %d and the artifacts of %d%s; %d record%s read" % (
        "would remove" if rep.dry_run else "removed", removed, "" if removed == 1 else "s",
        sum(len(v) for v in rep.logs.values()), sum(len(v) for v in rep.artifacts.values()),
        "" if rep.dry_run else " (%s freed)" % _bytes(rep.freed), rep.records_read,
        "" if rep.records_read == 1 else "s"))
    return 0


def cmd_keep(dirs, args):
    from . import janitor
    if not 1 <= args.number < 2 ** 32:
        _err("keep %s: %d is not a build number (1 to %d)" % (args.builder, args.number, 2 ** 32 - 1))
        return 2
    if not config.NAME_RE.fullmatch(args.builder):
        _err("keep: %r is not a builder's name" % args.builder)
        return 2
    try:
        print(janitor.keep(State(dirs.state), args.builder, args.number, _user(), args.reason, unkeep=args.unkeep))
    except LookupError as e:
        _err(str(e))
        return 1
    Spool(dirs.spool).hint(args.builder, args.number)     # its page says so (htmlgen)
    return 0


def _bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else "%.1f %s" % (n, unit)
        n /= 1024.0


# ------------------------------------------------------------------ force
def _bus():
    # GLib and pydbus cost more to import than the rest of the CLI together;
    # only force, rebuild and cancel talk to the bus.
    from . import bus
    return bus


def cmd_force(dirs, args):
    # Usage first (exit status 2); control.force checks again what it must.
    if args.revision and not git.valid_revision(args.revision):
        _err("--revision must be %s, not %r" % (git.REVISION_RULE, args.revision))
        return 2
    props = {}
    for p in args.property:
        k, eq, v = p.partition("=")
        if not eq or not k:
            _err("--property wants NAME=VALUE, not %r" % p)
            return 2
        props[k] = v
    problems = propsmod.check(props)
    if problems:
        _err("--property: %s" % "; ".join(problems))
        return 2
    if args.priority is not None and not -1000 <= args.priority <= 1000:
        _err("--priority must be a whole number from -1000 to 1000, not %d" % args.priority)
        return 2
    busmod = _bus()
    try:
        if args.priority is None:
            fid = busmod.call("Scheduler", "Force", args.builder, args.branch, args.revision, args.reason, props)
        else:
            fid = busmod.call("Scheduler", "ForcePriority", args.builder, args.branch, args.revision, args.reason,
                              props, args.priority)
        print("forced build of %s queued (%s)" % (args.builder, fid))
        return 0
    except busmod.Refused as e:
        _err("force refused: %s" % e)
        return 1
    except busmod.Unreachable:
        pass   # no scheduler on the bus: hand it in through the spool
    sp = Spool(dirs.spool)
    sp.ensure()
    try:
        fid, notes = control.force(sp, _config_for_force(dirs), args.builder, args.branch, args.revision,
                                   args.reason, props, _user(), priority=args.priority)
    except control.Refused as e:
        _err(str(e))
        return 1
    for n in notes:
        print("note: %s" % n, file=sys.stderr)
    print("forced build of %s queued (%s; the scheduler is not on the bus: it takes it from the spool)"
          % (args.builder, fid))
    return 0


def _config_for_force(dirs):
    try:
        return config.load(dirs.config)
    except config.ConfigError as e:
        # The daemons keep running the last configuration they accepted; a
        # broken file on disk does not stop a force of a builder it names.
        # The scheduler checks the builder again when it takes the record.
        print("warning: the configuration in %s has %d problem%s (run `buildunits checkconfig`); the "
              "daemons run the last one they accepted" % (dirs.config, len(e.problems),
                                                          "" if len(e.problems) == 1 else "s"),
              file=sys.stderr)
        return e.partial


def cmd_rebuild(dirs, args):
    if not 1 <= args.number < 2 ** 32:
        _err("rebuild %s: %d is not a build number (1 to %d)" % (args.builder, args.number, 2 ** 32 - 1))
        return 2
    busmod = _bus()
    try:
        fid = busmod.call("Scheduler", "Rebuild", args.builder, args.number, args.reason)
        print("rebuild of %s #%d queued (%s)" % (args.builder, args.number, fid))
        return 0
    except busmod.Refused as e:
        _err("rebuild refused: %s" % e)
        return 1
    except busmod.Unreachable:
        pass   # no scheduler on the bus: hand it in through the spool
    sp = Spool(dirs.spool)
    sp.ensure()
    try:
        fid, notes = control.rebuild(sp, State(dirs.state), _config_for_force(dirs), args.builder, args.number,
                                     args.reason, _user())
    except control.Refused as e:
        _err(str(e))
        return 1
    for n in notes:
        print("note: %s" % n, file=sys.stderr)
    print("rebuild of %s #%d queued (%s; the scheduler is not on the bus: it takes it from the spool)"
          % (args.builder, args.number, fid))
    return 0


def cmd_cancel(dirs, args):
    if bool(args.request) == bool(args.builder):
        _err("cancel wants BUILDER NUMBER, or --request ID")
        return 2
    if args.builder and args.number is None:
        _err("cancel %s: which build? give its NUMBER" % args.builder)
        return 2
    busmod = _bus()
    try:
        print(busmod.call("Scheduler", "Cancel", args.builder or "", args.number or 0, args.request or ""))
        return 0
    except busmod.Refused as e:
        _err("cancel refused: %s" % e)
        return 1
    except busmod.Unreachable:
        pass
    sp = Spool(dirs.spool)
    try:
        if args.request:
            print(control.cancel_request(sp, args.request))
        else:
            print(control.cancel_build(sp, State(dirs.state), args.builder, args.number, _user()))
    except control.Refused as e:
        _err(str(e))
        return 1
    return 0


def _user():
    try:
        return getpass.getuser()
    except Exception:
        return "uid %d" % os.getuid()


# ------------------------------------------------------------- sendchange
def cmd_sendchange(dirs, args):
    repo = config.normalize_repository(args.repository)
    kind = vcs.kind(args.repository)
    if kind != "git":
        # hg and svn: the full revision, as the hook has it ($HG_NODE, $REV).
        if not vcs.valid_revision(args.revision, kind):
            _err("--revision must be %s, not %r" % (vcs.revision_rule(kind), args.revision))
            return 2
    elif not re.fullmatch(r"[0-9a-fA-F]{4,64}", args.revision):
        _err("--revision must be a commit id (hex), not %r" % args.revision)
        return 2
    revision = args.revision.lower()
    if kind == "git" and not git.valid_id(revision):
        # An abbreviated id: the full one is what is built and recorded.
        if not git.is_local(repo):
            _err("--revision %s is abbreviated; with a remote repository give %s" % (args.revision, git.REVISION_RULE))
            return 2
        try:
            revision = git.resolve(git.git_dir_for(repo), args.revision)
        except git.GitError as e:
            _err("cannot resolve --revision %s in %s: %s" % (args.revision, repo, e))
            return 1
    try:
        fields = control.change("sendchange", repo, args.branch, revision, args.author, args.message, args.file,
                                args.when)
    except git.GitError as e:
        _err("cannot read %s in %s: %s" % (revision, repo, e))
        return 1
    branch = fields["branch"]
    sp = Spool(dirs.spool)
    sp.ensure()
    cid = sp.deliver("changes", "change", fields)
    print("change %s on %s queued (%s)" % (fields["revision"][:12], branch, cid))
    return 0


# ----------------------------------------------------------------- status
def _ago(t):
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not t:
        return ""
    return config.format_timespan(max(0, time.time() - t)) + " ago"


def cmd_status(dirs, args):
    cfg = None
    try:
        cfg = config.load(dirs.config)
    except config.ConfigError:
        print("warning: the configuration has problems; run `buildunits checkconfig`", file=sys.stderr)
    s = gather_status(dirs, cfg)
    if args.json:
        json.dump(s, sys.stdout, indent=1, sort_keys=True)
        print()
        return 0
    print("changes waiting for the scheduler: %d" % len(s["changes"]))
    for c in s["changes"]:
        what = ("force %s" % c["builder"]) if c["kind"] == "force" else "%s %s" % (c["branch"], (c["revision"] or "")[:12])
        print("  %s  (%s)" % (what, _ago(c["queued"])))
    total = s.get("queued_count", len(s["queued"]))
    print("queued builds: %d" % total)
    for q in s["queued"]:
        print("  %-20s %s  (%s)" % (q["builder"], q["reason"], _ago(q["queued"])))
    if total > len(s["queued"]):
        counts = sorted((s.get("queued_by_builder") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
        print("  ... and %d more; by builder: %s" % (total - len(s["queued"]), ", ".join(
            "%s %d" % (b or "(untagged)", n) for b, n in counts[:10]) + (", ..." if len(counts) > 10 else "")))
    print("running builds: %d" % len(s["running"]))
    for r in s["running"]:
        if "number" in r:
            print("  %-20s #%d on %s%s  (started %s)%s" % (
                r["builder"], r["number"], r["worker"], ", step " + r["step"] if r.get("step") else "",
                _ago(r.get("started")), "" if r["alive"] else "  [runner not running]"))
        else:
            print("  request %s claimed by %s%s" % (r["request"], r["worker"], "" if r["alive"] else " [runner not running]"))
    if s.get("locks"):
        print("locks:")
    for lk in s.get("locks") or []:
        who = ", ".join("%s #%s on %s" % (_line(h["builder"]), h["number"] if h["number"] is not None else "?",
                                          _line(h["worker"])) for h in lk["held"])
        print("  %-20s %d of %d held%s" % (lk["lock"], len(lk["held"]), lk["slots"], ": " + who if who else ""))
    ob = s.get("outbox") or {}
    if ob.get("waiting"):
        o = ob.get("oldest") or {}
        print("outbox: %d message%s waiting; the oldest (%s to %s) queued %s%s" % (
            ob["waiting"], "" if ob["waiting"] == 1 else "s", _line(o.get("channel") or "?"),
            _line(o.get("destination") or "?"), _ago(o.get("queued")),
            ", %d attempts, last error: %s" % (o["attempts"], _line(o["last_error"])) if o.get("last_error") else ""))
    print("builders:")
    for name, b in s["builders"].items():
        last = b["last"]
        lasts = ("#%d %s (%s)" % (last["number"], last["result"], _ago(last["finished"]))) if last else "no builds yet"
        print("  %-20s %s%s" % (name, lasts, "" if b["configured"] else "  [not configured]"))
    disk = s.get("disk")
    if disk:
        print("disk (measured by the janitor %s):" % _ago(disk["measured"]))
        for name, u in sorted(disk["builders"].items()):
            print("  %-20s %d build%s: state %s, logs %s, artifacts %s" % (
                name, u["builds"], "" if u["builds"] == 1 else "s", _bytes(u["state_bytes"]), _bytes(u["logs_bytes"]),
                _bytes(u["artifacts_bytes"])))
    else:
        print("disk: not measured yet (`buildunits janitor` measures it)")
    if s["repositories"]:
        print("repositories:")
    for r in s["repositories"]:
        if r["problem"]:
            print("  %s  CANNOT BE POLLED (since %s): %s" % (_line(r["repository"]), _ago(r["problem"]["since"]),
                                                         _line(r["problem"]["text"])))
        else:
            print("  %s  %s" % (_line(r["repository"]), ("polled " + _ago(r["polled"])) if r["polled"]
                                else "not polled yet"))
        for k in r["skipped"]:
            print("    commit %s on %s skipped, cannot be parsed (%s): %s"
                  % (k["revision"][:12], _line(k["branch"]), _ago(k["when"]), _line(k["reason"])))
    return 0


def _line(text):
    """TEXT on one line of the terminal: control characters shown as "?"."""
    return "".join(ch if ch >= " " and ch != "\x7f" else "?" for ch in text)


# ------------------------------------------------------------------- fsck
def cmd_fsck(dirs, args):
    """Check the spool and state (fsck.py); list (or with --repair, make) repairs."""
    findings = fsck.run(dirs, repair=args.repair, deep=args.deep)
    for kind, text in findings:
        print("%s: %s" % (kind, text))
    todo = [f for f in findings if f[0] == "would repair"]
    if not findings:
        print("fsck: %s and %s are consistent" % (dirs.spool, dirs.state))
    elif todo:
        print("fsck: %d thing%s to repair; run `buildunits fsck --repair`" % (len(todo), "" if len(todo) == 1 else "s"))
    return 1 if todo else 0


# ------------------------------------------------------------------- main
def _epoch(text):
    """--when: seconds since the epoch, a finite number (inf, nan and 1e400
    cannot be written in a record)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number of seconds since the epoch: %r" % text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError("%r is not a finite number of seconds since the epoch" % text)
    return value


def parser():
    p = argparse.ArgumentParser(prog="buildunits", description="Operate buildunits.")
    paths.add_arguments(p)
    p.add_argument("--version", action="version", version="%(prog)s " + __version__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    sub.add_parser("checkconfig", help="check the configuration")
    f = sub.add_parser("force", help="queue a build now")
    f.add_argument("builder")
    f.add_argument("--branch", default="")
    f.add_argument("--revision", default="")
    f.add_argument("--reason", default="")
    f.add_argument("--property", action="append", default=[], metavar="NAME=VALUE")
    f.add_argument("--priority", type=int, metavar="N",
                   help="this build's priority, -1000 to 1000, instead of the builder's Priority=")
    r = sub.add_parser("rebuild", help="queue an earlier build again")
    r.add_argument("builder")
    r.add_argument("number", type=int)
    r.add_argument("--reason", default="")
    c = sub.add_parser("cancel", help="cancel a running build or a queued request")
    c.add_argument("builder", nargs="?")
    c.add_argument("number", nargs="?", type=int)
    c.add_argument("--request", metavar="ID")
    s = sub.add_parser("sendchange", help="hand in a change (for a git hook)")
    s.add_argument("--repository", required=True)
    s.add_argument("--branch", required=True)
    s.add_argument("--revision", required=True)
    s.add_argument("--author")
    s.add_argument("--message")
    s.add_argument("--file", action="append")
    s.add_argument("--when", type=_epoch)
    st = sub.add_parser("status", help="show the queue, running builds and last results")
    st.add_argument("--json", action="store_true")
    k = sub.add_parser("fsck", help="check the spool and state")
    k.add_argument("--repair", action="store_true")
    k.add_argument("--deep", action="store_true", help="read every build record, not only the newest")
    t = sub.add_parser("timer", help="do what a builder's OnCalendar= timer does when it elapses")
    t.add_argument("builder")
    j = sub.add_parser("janitor", help="remove what the retention keys no longer keep")
    j.add_argument("--dry-run", action="store_true", help="say what would be removed, change nothing")
    j.add_argument("--measure", action="store_true", help="measure the disk usage afresh")
    kp = sub.add_parser("keep", help="pin a build: the janitor never removes it")
    kp.add_argument("builder")
    kp.add_argument("number", type=int)
    kp.add_argument("--unkeep", action="store_true", help="unpin it")
    kp.add_argument("--reason", default="")
    return p


COMMANDS = {"checkconfig": cmd_checkconfig, "force": cmd_force, "rebuild": cmd_rebuild, "cancel": cmd_cancel,
            "sendchange": cmd_sendchange,
            "status": cmd_status, "fsck": cmd_fsck, "timer": cmd_timer, "janitor": cmd_janitor, "keep": cmd_keep}


def main(argv):
    args = parser().parse_args(argv)
    dirs = paths.from_args(args)
    try:
        return COMMANDS[args.command](dirs, args)
    except OSError as e:
        # os.write and os.fsync errors carry no file name: name the place.
        where = e.filename or (dirs.spool if args.command in ("force", "rebuild", "sendchange", "cancel", "timer")
                               else dirs.state)
        _err("cannot store in %s: %s" % (where, e.strerror or e))
        return 1
    except KeyboardInterrupt:
        return 130
