"""One module knows each layout: spool.py the spool's, state.py the state's.

- No other module of lib/buildunits joins a spool or state path (a grep
  of the source: OFFENDERS names the forms it looks for, each with a line
  that once was in the code).
- spool.LAYOUT and state.LAYOUT are what ensure() makes and what the
  tmpfiles.d file lists, with its modes.
- What the tables say is swept and pruned is: temp files in cancel/,
  cancelled requests after CANCELLED_KEEP_SEC counted from the cancel,
  the site's temp files (htmlgen).
- A state record that cannot be read is quarantined, never deleted or
  overwritten, by State.quarantine and by each daemon that reads one.
"""

import os
import re
import subprocess
import types

import pytest

from buildunits import config, fsutil, paths, poller, runner, scheduler, spool as spoolmod, state as statemod
from buildunits.bus import NoBus
from support.inprocess import RecordingNotifier
from buildunits.spool import Spool
from buildunits.state import State

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, "lib", "buildunits")
OWNERS = ("spool.py", "state.py")

# (pattern, what it is, a line once in the code that it catches)
OFFENDERS = (
    # (The site's own files have a path() of their own: sitefiles.py owns that layout.)
    (r"\b(spool|state|sp|st)\.path\(", "a Spool's or State's path() called",
     'self.spool.corrupt(self.spool.path("changes", "new", cid), "changes", why)'),
    (r"os\.path\.join\(\s*(self\.)?(dirs\.(spool|state)|(spool|state|sp|st)\.root)\b",
     "a path joined onto the spool or state directory",
     'path = os.path.join(dirs.state, "locks", "buildunits-runner@%s.lock" % worker)'),
    (r"os\.path\.join\(\s*(self\.)?(spool|state|sp|st)\.\w+\(",
     "a path joined onto one a Spool or State gave",
     'logpath = os.path.join(self.state.build_dir(rec["builder"], rec["number"]), logname)'),
    (r"(self\.)?(spool|state|sp|st)\.\w*(path|dir)\([^()]*\)\s*\[",
     "a path a Spool or State gave sliced into another",
     'src = git.source(repo, self.state.poller_path(repo)[:-5] + ".git", sorted(moved))'),
    (r"(dirs\.(spool|state)|(spool|state|sp|st)\.root)\s*\+",
     "a path glued onto the spool or state directory", 'lock = dirs.state + "/locks/x.lock"'),
)


def offences(lib=LIB):
    """[(file, line number, what)] of every join of a spool or state path
    outside spool.py and state.py."""
    out = []
    for name in sorted(os.listdir(lib)):
        if not name.endswith(".py") or name in OWNERS:
            continue
        with open(os.path.join(lib, name), encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                code = line.split("#", 1)[0]
                for pattern, what, _example in OFFENDERS:
                    if re.search(pattern, code):
                        out.append((name, i, what))
    return out


def test_no_module_but_spool_and_state_joins_their_paths():
    assert offences() == []


@pytest.mark.parametrize("pattern,what,example", OFFENDERS, ids=[o[1] for o in OFFENDERS])
def test_the_check_catches_what_was_in_the_code(pattern, what, example, tmp_path):
    (tmp_path / "offender.py").write_text("def f():\n    %s\n" % example)
    (tmp_path / "spool.py").write_text(example + "\n")      # the owners may
    assert offences(str(tmp_path)) == [("offender.py", 2, what)]


# ---------------------------------------------------------------- tables
def test_ensure_makes_every_row_of_the_layouts(tmp_path):
    sp, st = Spool(str(tmp_path / "spool")), State(str(tmp_path / "state"))
    sp.ensure()
    st.ensure()
    assert sp.missing() == [] and st.missing() == []
    made = sorted(os.path.relpath(d, sp.root) for d, _, _ in os.walk(sp.root) if d != sp.root)
    assert made == sorted(d.path for d in spoolmod.LAYOUT)
    assert sorted(os.listdir(st.root)) == sorted(d for d, _h, _s in statemod.LAYOUT)


def test_tmpfiles_lists_every_row_of_the_spool_with_its_mode_and_group():
    rows = {}
    with open(os.path.join(ROOT, "units", "tmpfiles.d", "buildunits.conf")) as f:
        for line in f:
            if line.startswith("d "):
                _d, path, mode, _user, group, _age = line.split()
                rows[path] = (int(mode, 8), group)
    top = "/var/spool/buildunits"
    assert rows.pop(top) == (0o755, "buildunits")
    assert rows == {os.path.join(top, d.path): (d.mode, d.group) for d in spoolmod.LAYOUT}


# ------------------------------------------------------- sweep and prune
def _age(path, seconds):
    t = os.stat(path).st_mtime - seconds
    os.utime(path, (t, t))


def test_abandoned_temp_files_in_cancel_are_swept_and_records_kept(tmp_path):
    sp = Spool(str(tmp_path / "spool"))
    sp.ensure()
    sp.request_cancel("hello", 3, "root")
    old, young = sp.path("cancel", ".hello@4.tmp-1-aa"), sp.path("cancel", ".hello@5.tmp-1-bb")
    for p in (old, young):
        open(p, "w").close()
    _age(old, fsutil.TMP_SWEEP_AGE_SEC + 10)
    _age(sp.path("cancel", "hello@3"), fsutil.TMP_SWEEP_AGE_SEC + 10)
    assert sp.sweep(dry_run=True) == [old] and os.path.exists(old)
    assert sp.sweep() == [old]
    assert sorted(os.listdir(sp.path("cancel"))) == [".hello@5.tmp-1-bb", "hello@3"]


def test_cancelled_requests_are_pruned_after_their_age_counted_from_the_cancel(tmp_path):
    sp = Spool(str(tmp_path / "spool"))
    sp.ensure()
    rid = sp.deliver("requests", "request", {"builder": "hello"})
    _age(sp.path("requests", "new", rid), spoolmod.CANCELLED_KEEP_SEC + 10)   # queued long ago
    assert sp.cancel_queued(rid)
    assert sp.prune() == [] and sp.cancelled() == [rid]                     # cancelled just now
    _age(sp.path("requests", "cancelled", rid), spoolmod.CANCELLED_KEEP_SEC + 10)
    assert sp.sweep() == []                                                 # not a temp file
    assert sp.prune(dry_run=True) == [sp.path("requests", "cancelled", rid)] and sp.cancelled() == [rid]
    assert sp.prune() == [sp.path("requests", "cancelled", rid)] and sp.cancelled() == []


def test_the_schedulers_sweep_prunes_and_says_so(tmp_path, monkeypatch):
    s = _daemon(scheduler.Scheduler, tmp_path)
    rid = s.spool.deliver("requests", "request", {"builder": "hello"})
    s.spool.cancel_queued(rid)
    _age(s.spool.path("requests", "cancelled", rid), spoolmod.CANCELLED_KEEP_SEC + 10)
    lines = []
    monkeypatch.setattr(scheduler.log, "info", lambda text, **kw: lines.append(text))
    s.sweep()
    assert s.spool.cancelled() == []
    assert lines == ["pruned %s, a request cancelled more than 7 days ago" % s.spool.path("requests", "cancelled", rid)]


def test_htmlgen_sweeps_the_sites_abandoned_temp_files_at_startup(tmp_path):
    from buildunits import htmlgen
    h = _daemon(htmlgen.HTMLGen, tmp_path)
    deep = os.path.join(h.dirs.site, "builders", "hello", "1")
    os.makedirs(deep)
    # A writer that is gone: a child of ours, reaped.
    child = subprocess.Popen(["true"])
    child.wait()
    alive, dead = os.getppid(), child.pid
    names = (".index.html.tmp-%d-ab" % alive, ".log.html.tmp-%d-cd" % alive, ".raw.txt.tmp-%d-ef" % dead,
             "index.html")
    old, young, orphan, page = (os.path.join(deep, n) for n in names)
    for p in (old, young, orphan, page):
        open(p, "w").close()
    _age(old, fsutil.TMP_SWEEP_AGE_SEC + 10)
    _age(page, fsutil.TMP_SWEEP_AGE_SEC + 10)
    h.startup()
    # At the start: the old, and a young one whose writer is gone (no
    # writer of the site runs while htmlgen holds its lock); the page and a
    # live writer's young file stay.
    assert sorted(os.listdir(deep)) == [".log.html.tmp-%d-cd" % alive, "index.html"]


# ------------------------------------------------------------ quarantine
CONFIG = "[Builder]\nRepository=%s\nPollIntervalSec=1h\n[Step s]\nCommand=true\n"


def _daemon(cls, root, repository="/srv/git/hello.git", args=None):
    d = paths.Dirs(config=str(root / "config"), spool=str(root / "spool"), state=str(root / "state"),
                   site=str(root / "site"))
    os.makedirs(os.path.join(d.config, "builders"), exist_ok=True)
    with open(os.path.join(d.config, "builders", "hello.builder"), "w") as f:
        f.write(CONFIG % repository)
    obj = cls(d, config.load(d.config), NoBus(), RecordingNotifier(), args)
    obj.spool.ensure()
    obj.state.ensure()
    obj.quarantined = []
    obj.state.on_corrupt = lambda path, dest, reason: obj.quarantined.append((path, dest, reason))
    return obj


def _plant(path, data=b'{"format": "poll'):
    with open(path, "wb") as f:
        f.write(data)
    return data


def _check_quarantined(d, path, data, prefix):
    [(p, dest, reason)] = d.quarantined
    assert p == path
    assert os.path.basename(dest) == prefix + "." + os.path.basename(path)
    with open(dest, "rb") as f:
        assert f.read() == data                               # kept as it was
    assert d.state.quarantined() == [(os.path.basename(dest), reason)] and "truncated" in reason


def test_quarantine_keeps_every_version_and_never_moves_history(tmp_path):
    st = State(str(tmp_path / "state"))
    st.ensure()
    for i in range(2):
        _plant(st.scheduler_path("hello"), b"version %d" % i)
        assert st.quarantine(st.scheduler_path("hello"), "torn %d" % i)
    assert [r for _n, r in st.quarantined()] == ["torn 0", "torn 1"]
    assert st.quarantine(st.scheduler_path("hello"), "gone") is None      # nothing there any more
    n = st.allocate_number("hello")
    _plant(st.build_path("hello", n))
    assert st.quarantine(st.build_path("hello", n), "torn") is None
    assert os.path.exists(st.build_path("hello", n))


def test_the_poller_quarantines_its_record_and_treats_the_repository_as_new(tmp_path):
    repo = str(tmp_path / "hello.git")
    subprocess.run(["git", "init", "--quiet", "--bare", repo], check=True)
    p = _daemon(poller.Poller, tmp_path, repository=repo)
    path = p.state.poller_path(repo)
    data = _plant(path)
    p.poll(repo)
    _check_quarantined(p, path, data, "poller")
    assert p.state.read_poller(repo)["refs"] == {}              # a first poll was recorded


def test_the_scheduler_quarantines_its_memory_and_starts_it_afresh(tmp_path):
    s = _daemon(scheduler.Scheduler, tmp_path)
    path = s.state.scheduler_path("hello")
    data = _plant(path)
    s.startup()
    assert s.memory("hello") is not None and not os.path.exists(path)
    _check_quarantined(s, path, data, "scheduler")


def test_the_runner_quarantines_its_pointer_and_ignores_it(tmp_path):
    r = _daemon(runner.Runner, tmp_path, args=types.SimpleNamespace(worker="w1"))
    path = r.state.worker_path("w1")
    data = _plant(path)
    r.startup()
    _check_quarantined(r, path, data, "workers")
    assert r.state.read_worker("w1") is None
