"""periodic.py: a builder's OnCalendar= timer, its elapse and its units.

- PlainTimers, the scheduler's own timers without systemd, driven by a
  clock the test sets: no sleep, the arm and spawn it is handed record
  what the scheduler's GLib timer and child would do.
- elapse() (`buildunits timer`) against real git repositories: what it
  queues, and what OnlyIfChanged=yes skips.
- the generator's units for a few builders, checked with `systemd-analyze
  verify` beside the installed template.
- the real scheduler, as a plain process, queueing a timed build when
  the timer elapses, and catching up a persistent one at its start.
"""

import datetime
import os
import shutil
import subprocess
import time

import pytest

import harness
from support.wait import wait_for
from buildunits import config, periodic, spool as spoolmod, state as statemod

T0 = datetime.datetime(2026, 6, 10, 12, 0, 0, tzinfo=datetime.timezone.utc).timestamp()   # a Wednesday


def write(d, name, text):
    os.makedirs(os.path.join(d, "builders"), exist_ok=True)
    with open(os.path.join(d, "builders", name + ".builder"), "w") as f:
        f.write(text)


def builder_text(on_calendar=("*:*:0/5",), persistent=False, only_if_changed=False, repository="", branches="*"):
    lines = ["[Builder]"]
    if repository:
        lines += ["Repository=" + repository, "Branches=" + branches]
    lines += ["OnCalendar=" + e for e in on_calendar]
    lines += ["Persistent=%s" % ("yes" if persistent else "no"),
              "OnlyIfChanged=%s" % ("yes" if only_if_changed else "no"), "[Step s]", "Command=true", ""]
    return "\n".join(lines)


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


class Armed:
    """What PlainTimers armed: the scheduler's daemon.Timer, recorded."""

    def __init__(self, log, seconds, callback):
        self.seconds, self.callback, self.removed = seconds, callback, False
        log.append(self)

    def remove(self):
        self.removed = True


class Harness:
    """A PlainTimers over a real state directory, its clock, arms and spawns."""

    def __init__(self, tmp_path, builders, now=T0):
        self.dir = str(tmp_path / "config")
        for name, text in builders.items():
            write(self.dir, name, text)
        self.state = statemod.State(str(tmp_path / "state"))
        self.state.ensure()
        self.clock = Clock(now)
        self.armed, self.spawned, self.logged = [], [], []
        self.timers = self.make()

    def make(self):
        return periodic.PlainTimers(self.state, clock=self.clock, arm=lambda s, cb: Armed(self.armed, s, cb),
                                    spawn=lambda name, done: self.spawned.append((name, done)),
                                    log=lambda level, text: self.logged.append((level, text)))

    def load(self):
        self.timers.update(config.load(self.dir))

    def live(self):
        """The timer armed now (the others were removed)."""
        live = [a for a in self.armed if not a.removed]
        assert len(live) <= 1
        return live[0] if live else None

    def advance_to_armed(self):
        """Let the clock run to where the live timer fires, and fire it."""
        a = self.live()
        self.clock.t += a.seconds
        a.removed = True
        a.callback()

    def finish(self, ok=True):
        """The spawned `buildunits timer` processes end."""
        spawned, self.spawned = self.spawned, []
        for _name, done in spawned:
            done(ok)
        return [name for name, _ in spawned]


def test_a_timer_fires_at_each_elapse_and_not_before(tmp_path):
    h = Harness(tmp_path, {"b": builder_text(["*:*:0/5"])}, now=T0 + 1)
    h.load()
    assert h.spawned == [] and h.live().seconds == 4
    h.advance_to_armed()
    assert h.finish() == ["b"] and h.clock.t == T0 + 5
    assert h.live().seconds == 5
    # A wake a little early (a monotonic timer against a wall clock) does nothing but re-arm.
    h.clock.t += 2
    h.timers.check()
    assert h.spawned == [] and h.live().seconds == 3
    h.advance_to_armed()
    assert h.finish() == ["b"]
    assert [t for _n, t in h.timers.fired] == [T0 + 5, T0 + 10]


def test_the_soonest_of_several_builders_and_expressions_is_armed(tmp_path):
    h = Harness(tmp_path, {"nightly": builder_text(["02:00 UTC"]),
                           "often": builder_text(["*:0/30 UTC", "*:10 UTC"])})
    h.load()
    assert h.live().seconds == 10 * 60          # 12:10, before 12:30 and before 02:00
    h.advance_to_armed()
    assert h.finish() == ["often"]
    assert h.live().seconds == 20 * 60


def test_a_persistent_timer_missed_while_down_fires_once_at_start(tmp_path):
    h = Harness(tmp_path, {"b": builder_text(["*-*-* 02:00:00 UTC"], persistent=True)})
    # Last elapsed three nights ago; the scheduler was down since.
    h.state.write_timer("b", {"builder": "b", "last": T0 - 3 * 86400, "calendar": ["02:00"]})
    h.load()
    assert h.finish() == ["b"], "one catch-up elapse, not three"
    rec = h.state.read_timer("b")
    assert rec["last"] == T0 and rec["calendar"] == ["*-*-* 02:00:00 UTC"]
    assert h.live().seconds == 14 * 3600         # then tomorrow at 02:00


def test_a_timer_without_persistent_does_not_catch_up(tmp_path):
    h = Harness(tmp_path, {"b": builder_text(["02:00 UTC"], persistent=False)})
    h.state.write_timer("b", {"builder": "b", "last": T0 - 3 * 86400})
    h.load()
    assert h.spawned == []
    assert h.live().seconds == 14 * 3600


def test_a_persistent_timer_never_elapsed_waits_for_its_first_elapse(tmp_path):
    # As systemd: no stamp yet, nothing to catch up.
    h = Harness(tmp_path, {"b": builder_text(["02:00 UTC"], persistent=True)})
    h.load()
    assert h.spawned == [] and h.state.read_timer("b") is None


def test_the_record_is_written_only_once_the_build_is_queued(tmp_path):
    h = Harness(tmp_path, {"b": builder_text(["*:*:0/5"], persistent=True)}, now=T0 + 1)
    h.load()
    h.advance_to_armed()
    assert h.state.read_timer("b") is None, "not before the force record is committed"
    h.finish(ok=False)
    assert h.state.read_timer("b") is None
    assert any(level == "error" and "could not be queued" in text for level, text in h.logged)
    h.advance_to_armed()
    h.finish(ok=True)
    assert h.state.read_timer("b")["last"] == T0 + 10


def test_a_crash_before_the_record_makes_the_elapse_again_at_the_next_start(tmp_path):
    h = Harness(tmp_path, {"b": builder_text(["*:0/10 UTC"], persistent=True)})
    h.state.write_timer("b", {"builder": "b", "last": T0})
    h.load()
    assert h.finish() == []                      # 12:00 was the last; next 12:10
    h.advance_to_armed()
    assert [n for n, _ in h.spawned] == ["b"]    # ... and the scheduler dies before the child ends
    h.clock.t += 3600
    h.spawned = []
    h.timers = h.make()                          # restarted an hour later
    h.load()
    assert h.finish() == ["b"], "twice rather than never"


def test_a_reload_keeps_a_timer_unless_its_expressions_changed(tmp_path):
    h = Harness(tmp_path, {"b": builder_text(["*:0/10 UTC"])}, now=T0 + 60)
    h.load()
    assert h.live().seconds == 9 * 60
    h.clock.t += 120
    h.load()                                     # same expressions: same elapse
    assert h.live().seconds == 7 * 60 and h.spawned == []
    write(h.dir, "b", builder_text(["*:0/5 UTC"]))
    h.load()
    assert h.live().seconds == 2 * 60
    write(h.dir, "b", builder_text([]))
    h.load()
    assert h.live() is None


def test_an_elapse_while_the_last_one_runs_is_skipped(tmp_path):
    h = Harness(tmp_path, {"b": builder_text(["*:*:0/5"])}, now=T0 + 1)
    h.load()
    h.advance_to_armed()
    h.advance_to_armed()
    assert [n for n, _ in h.spawned] == ["b"]
    assert any("still runs" in text for _level, text in h.logged)


def test_an_unreadable_record_is_quarantined_and_the_timer_goes_on(tmp_path):
    h = Harness(tmp_path, {"b": builder_text(["02:00 UTC"], persistent=True)})
    with open(h.state.timer_path("b"), "w") as f:
        f.write('{"format": "timer", "version": 1, "last": 1')
    h.load()
    assert not os.path.exists(h.state.timer_path("b"))
    assert [n for n in os.listdir(h.state.path("corrupt")) if n.startswith("timers.b.json")]
    assert h.live().seconds == 14 * 3600


def test_an_expression_that_never_elapses_again_arms_nothing(tmp_path):
    h = Harness(tmp_path, {"b": builder_text(["2026-01-01 00:00 UTC"])})
    h.load()
    assert h.live() is None and h.spawned == []


# ------------------------------------------------------------- elapse()
@pytest.fixture
def repo(git_repo):
    git_repo.commit({"a": "1"})
    return git_repo


def elapse_env(tmp_path, text):
    d = str(tmp_path / "config")
    write(d, "b", text)
    sp = spoolmod.Spool(str(tmp_path / "spool"))
    sp.ensure()
    st = statemod.State(str(tmp_path / "state"))
    st.ensure()
    return sp, st, config.load(d)


def forces(sp):
    return [sp.read("changes", i) for i in sp.pending("changes")]


def test_a_timer_without_only_if_changed_builds_each_plain_branch_every_time(tmp_path, repo):
    sp, st, cfg = elapse_env(tmp_path, builder_text(["daily"], repository=repo.bare, branches="main release/* dev"))
    periodic.elapse(sp, st, cfg, "b")
    periodic.elapse(sp, st, cfg, "b")
    got = [(f["branch"], f["revision"], f["reason"], f["user"], f["source"]) for f in forces(sp)]
    assert got == [("main", "", "timer OnCalendar=daily", "timer", "timer"),
                   ("dev", "", "timer OnCalendar=daily", "timer", "timer")] * 2


def test_a_builder_of_globs_or_no_repository_gets_one_build_of_its_default(tmp_path, repo):
    sp, st, cfg = elapse_env(tmp_path, builder_text(["daily"], repository=repo.bare, branches="*"))
    periodic.elapse(sp, st, cfg, "b")
    assert [f["branch"] for f in forces(sp)] == [""]     # the scheduler's default_branch
    sp2, st2, cfg2 = elapse_env(tmp_path / "2", builder_text(["daily"]))
    periodic.elapse(sp2, st2, cfg2, "b")
    assert [(f["branch"], f["revision"]) for f in forces(sp2)] == [("", "")]


def test_only_if_changed_builds_a_head_once(tmp_path, repo):
    sp, st, cfg = elapse_env(tmp_path, builder_text(["daily"], only_if_changed=True, repository=repo.bare,
                                                    branches="main"))
    lines = periodic.elapse(sp, st, cfg, "b")
    head = repo.head()
    assert [(f["branch"], f["revision"]) for f in forces(sp)] == [("main", head)]
    assert "timed build of main at %s queued" % head[:12] in lines[-1]
    # Still waiting in the inbox: the same head is not queued again.
    lines = periodic.elapse(sp, st, cfg, "b")
    assert len(forces(sp)) == 1 and "built or queued already" in lines[-1]
    # Built (the force taken, a build record of it) : still nothing new.
    for i in sp.pending("changes"):
        sp.remove("changes", i)
    record_build(st, "b", "main", head)
    assert periodic.elapse(sp, st, cfg, "b")[-1].endswith("no timed build (OnlyIfChanged=yes)")
    assert forces(sp) == []
    # A new commit: built.
    repo.commit({"a": "2"})
    periodic.elapse(sp, st, cfg, "b")
    assert [f["revision"] for f in forces(sp)] == [repo.head()] != [head]


def test_only_if_changed_compares_each_branch_with_its_own_last_build(tmp_path, repo):
    repo.git("checkout", "-q", "-b", "dev")
    repo.commit({"d": "1"}, branch="dev")
    sp, st, cfg = elapse_env(tmp_path, builder_text(["daily"], only_if_changed=True, repository=repo.bare,
                                                    branches="main dev gone release/*"))
    record_build(st, "b", "main", repo.head("main"))
    record_build(st, "b", "dev", repo.head("main"))      # dev's last build was of another commit
    lines = periodic.elapse(sp, st, cfg, "b")
    assert [(f["branch"], f["revision"]) for f in forces(sp)] == [("dev", repo.head("dev"))]
    assert any("no branch gone" in line for line in lines)


def test_a_head_that_cannot_be_read_is_built_anyway(tmp_path):
    sp, st, cfg = elapse_env(tmp_path, builder_text(["daily"], only_if_changed=True,
                                                    repository=str(tmp_path / "missing.git"), branches="main"))
    lines = periodic.elapse(sp, st, cfg, "b")
    assert [(f["branch"], f["revision"]) for f in forces(sp)] == [("main", "")]
    assert "building anyway" in lines[0]


def record_build(st, name, branch, revision):
    n = st.allocate_number(name)
    st.write_build({"builder": name, "number": n, "state": "finished", "result": "success", "branch": branch,
                    "revision": revision, "steps": [], "started": 1.0, "finished": 2.0, "reason": "",
                    "request": {}, "worker": "w"})


def test_the_scheduler_makes_a_timers_force_a_request_with_its_reason(tmp_path, repo):
    import test_scheduler
    s = test_scheduler.make_scheduler(tmp_path, {"b": builder_text(["Mon..Fri 02:00"], only_if_changed=True,
                                                                   repository=repo.bare, branches="main")})
    periodic.elapse(s.spool, s.state, s.cfg, "b")
    s.work()
    reqs = [s.spool.read("requests", r) for r in s.spool.pending("requests")]
    assert [(r["branch"], r["revision"], r["reason"]) for r in reqs] == [
        ("main", repo.head(), "timer OnCalendar=Mon..Fri 02:00")]


def test_the_command_says_what_it_did_and_refuses_an_unknown_builder(daemons, repo):
    daemons.write_builder("b", builder_text(["daily"], only_if_changed=True, repository=repo.bare,
                                            branches="main"))
    p = daemons.cli("timer", "b")
    assert p.returncode == 0 and "timed build of main at %s queued" % repo.head()[:12] in p.stdout
    p = daemons.cli("timer", "b")
    assert p.returncode == 0 and "built or queued already" in p.stdout
    p = daemons.cli("timer", "nope")
    assert p.returncode == 1 and "no builder 'nope'" in p.stderr


def test_checkconfig_shows_each_timer_and_names_a_bad_expression(daemons):
    daemons.write_builder("b", builder_text(["Mon..Fri 02:00 UTC", "weekly"], persistent=True))
    p = daemons.cli("checkconfig")
    assert p.returncode == 0
    assert "b: timer OnCalendar=Mon..Fri 02:00 UTC, weekly Persistent=yes, next elapse " in p.stdout
    daemons.write_builder("b", builder_text(["Mon..Fri 02:00", "Sun 25:00"]))
    p = daemons.cli("checkconfig")
    assert p.returncode == 1
    assert "b.builder:3: [Builder] OnCalendar=: hour '25' is out of range (0..23)" in p.stderr


# ------------------------------------------------------------ generator
def generated(tmp_path, builders):
    d = str(tmp_path / "config")
    for name, text in builders.items():
        write(d, name, text)
    out = tmp_path / "generator"
    assert periodic.generator_main([str(out), str(tmp_path / "early"), str(tmp_path / "late")], config_dir=d) == 0
    return out


def test_the_generator_writes_a_timer_per_builder_with_on_calendar(tmp_path):
    out = generated(tmp_path, {"nightly": builder_text(["02:00"], persistent=True),
                               "my-lib": builder_text(["Mon *-*-* 06:00", "*:0/15"]),
                               "plain": "[Step s]\nCommand=true\n"})
    names = sorted(os.listdir(out))
    assert names == ["buildunits-timer-my\\x2dlib.timer", "buildunits-timer-nightly.timer", "buildunits.target.wants"]
    text = (out / "buildunits-timer-nightly.timer").read_text()
    assert "\n[Timer]\nOnCalendar=02:00\nPersistent=yes\nAccuracySec=1s\nUnit=buildunits-timer@nightly.service\n" \
        in text
    assert "SourcePath=%s\n" % (tmp_path / "config" / "builders" / "nightly.builder") in text
    lib = (out / "buildunits-timer-my\\x2dlib.timer").read_text()
    assert "OnCalendar=Mon *-*-* 06:00\nOnCalendar=*:0/15\nPersistent=no\n" in lib
    assert "Unit=buildunits-timer@my\\x2dlib.service" in lib
    wants = out / "buildunits.target.wants"
    assert sorted(os.listdir(wants)) == names[:2]
    assert os.readlink(wants / "buildunits-timer-nightly.timer") == "../buildunits-timer-nightly.timer"


def test_a_builder_with_problems_gets_no_timer_and_the_others_do(tmp_path):
    out = generated(tmp_path, {"good": builder_text(["daily"]), "bad": builder_text(["Mon..Fry 02:00"])})
    assert sorted(os.listdir(out)) == ["buildunits-timer-good.timer", "buildunits.target.wants"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_generated_units(tmp_path):
    build = tmp_path / "build"
    p = subprocess.run(["make", "-s", "units", "man", "BUILDDIR=%s" % build, "PREFIX=%s" % harness.REPO_ROOT,
                        "PYTHON=" + harness.PYTHON], cwd=harness.REPO_ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    d = tmp_path / "config"
    write(str(d), "nightly", builder_text(["02:00"], persistent=True))
    write(str(d), "my-lib", builder_text(["Mon..Fri *-*-* 06:00 UTC", "*:*:0/5"]))
    # The generator as installed (units/buildunits-generator.in rendered), as systemd runs it.
    out = tmp_path / "gen"
    p = subprocess.run([str(build / "units" / "buildunits-generator"), str(out), str(tmp_path / "e"),
                        str(tmp_path / "l")], env=dict(os.environ, BUILDUNITS_CONFIG_DIR=str(d)),
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    for name in ("buildunits-timer@.service", "buildunits-timer@.service.d", "buildunits.target"):
        src = build / "units" / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, out / name)
    env = dict(os.environ, MANPATH=str(build / "man"))
    for unit in ("buildunits-timer-nightly.timer", "buildunits-timer-my\\x2dlib.timer",
                 "buildunits-timer@nightly.service"):
        p = subprocess.run(["systemd-analyze", "verify", unit], cwd=str(out), env=env, capture_output=True,
                           text=True)
        assert p.returncode == 0 and (p.stdout + p.stderr).strip() == "", p.stdout + p.stderr


# ------------------------------------------------- the scheduler, running
def requests(daemons, name):
    sp = spoolmod.Spool(daemons.spool_dir)
    return [r for r in (sp.read("requests", i) for i in sp.pending("requests")) if r and r["builder"] == name]


def test_the_running_scheduler_queues_a_build_when_the_timer_elapses(daemons):
    daemons.write_builder("tick", builder_text(["*:*:0/2"]))
    daemons.start("scheduler", bus=False)
    got = wait_for(lambda: requests(daemons, "tick"), timeout=15, what="a request from the timer")
    assert got[0]["reason"] == "timer OnCalendar=*:*:0/2" and got[0]["force"]


def test_the_running_scheduler_catches_up_a_persistent_timer_missed_while_down(daemons):
    daemons.write_builder("nightly", builder_text(["*-*-* *:00:00"], persistent=True))
    st = statemod.State(daemons.state_dir)
    st.ensure()
    before = time.time()
    st.write_timer("nightly", {"builder": "nightly", "last": before - 7200})   # two hours ago
    daemons.start("scheduler", bus=False)
    got = wait_for(lambda: requests(daemons, "nightly"), timeout=15, what="the catch-up request")
    assert len(got) == 1 and got[0]["reason"] == "timer OnCalendar=*-*-* *:00:00"
    rec = wait_for(lambda: (st.read_timer("nightly") or {}).get("last", 0) >= before and st.read_timer("nightly"),
                   timeout=15, what="the timer record rewritten")
    assert rec["calendar"] == ["*-*-* *:00:00"]
