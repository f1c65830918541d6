"""Bad input: property-based tests of every reader of files people can write.

The configuration parser (config.parse_unit_file, config.load), the record
decoder (records.decode) and the spool readers (Spool.pending, Spool.read,
and what reads them: the scheduler, the runner, `buildunits status` and
`fsck`) are fed arbitrary and mutated text and bytes.  The properties:

- no crash: a reader returns a value or raises its own documented error
  (ConfigError, RecordError), never anything else;
- no hang: every example runs under an alarm (HANG_SEC);
- each bad file is rejected with a message naming it (FILE or FILE:LINE);
- a bad spool file is moved to corrupt/ with a .reason beside it, the
  bytes kept as they were, and on_corrupt (the daemons' journal line) told.

Examples per property: BUILDUNITS_FUZZ_EXAMPLES (default DEFAULT_EXAMPLES,
so that the file runs in well under a minute in `make check`); `make
torture` sets 10000.  The property tests are marked `torture` so that
`make torture` (pytest -m torture) selects them; `make check` runs every
test, and so runs them with the default count.

Bugs found here have tests of their own below: each pins one input that
once broke a reader (all fixed), so it stays fixed.
"""

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import types

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import harness
from buildunits import cli, config, paths, records, runner, scheduler, spool as spoolmod
from buildunits.bus import NoBus
from buildunits.spool import Spool

DEFAULT_EXAMPLES = 120
EXAMPLES = int(os.environ.get("BUILDUNITS_FUZZ_EXAMPLES") or DEFAULT_EXAMPLES)
HANG_SEC = 20

fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
# Tests that start processes or touch many files per example run fewer.
fuzz_slow = settings(fuzz, max_examples=max(10, EXAMPLES // 4))


class Hang(AssertionError):
    pass


@contextlib.contextmanager
def no_hang(what, sec=HANG_SEC):
    """Fail (instead of hanging) if the block runs longer than SEC."""
    def alarm(signum, frame):
        raise Hang("%s did not return within %ds" % (what, sec))
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, sec)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def scratch(tmp_path):
    """A directory emptied before each example (fixtures are not reset
    between the examples of one Hypothesis test)."""
    d = str(tmp_path / "scratch")

    def fresh():
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d
    return fresh


# ====================================================================
# strategies

def _mutations():
    """A list of edits to apply to some bytes (see mutate())."""
    byte = st.integers(0, 255)
    special = st.sampled_from([b"[", b"]", b"=", b"\\", b"\n", b"#", b";", b"\"", b"'", b"{", b"}", b",",
                               b":", b"\x00", b"\xff", b"\xc3", b" ", b"\t", b"\r", b"\\\n", b"[Step ",
                               b"NaN", b"1e999", b"-", b".", b"0", b"9" * 30])
    op = st.one_of(
        st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 20)),
        st.tuples(st.just("insert"), st.floats(0, 1), st.one_of(special, st.binary(min_size=1, max_size=8))),
        st.tuples(st.just("replace"), st.floats(0, 1), byte),
        st.tuples(st.just("truncate"), st.floats(0, 1)),
        st.tuples(st.just("dupline"), st.floats(0, 1)),
        st.tuples(st.just("swaplines"), st.floats(0, 1), st.floats(0, 1)),
    )
    return st.lists(op, min_size=1, max_size=6)


def mutate(data, ops):
    """Apply OPS (from _mutations()) to DATA (bytes)."""
    for o in ops:
        kind, where = o[0], o[1]
        i = int(where * len(data))
        if kind == "delete":
            data = data[:i] + data[i + o[2]:]
        elif kind == "insert":
            data = data[:i] + o[2] + data[i:]
        elif kind == "replace" and data:
            i = min(i, len(data) - 1)
            data = data[:i] + bytes([o[2]]) + data[i + 1:]
        elif kind == "truncate":
            data = data[:i]
        elif kind in ("dupline", "swaplines"):
            lines = data.split(b"\n")
            k = min(int(where * len(lines)), len(lines) - 1)
            if kind == "dupline":
                lines.insert(k, lines[k])
            else:
                m = min(int(o[2] * len(lines)), len(lines) - 1)
                lines[k], lines[m] = lines[m], lines[k]
            data = b"\n".join(lines)
    return data


VALID_BUILDER = b"""\
[Builder]
Description=Build and test hello
Repository=/srv/git/hello.git
Branches=main release-*
PollIntervalSec=1min 30s
TreeStableSec=0
Workers=w1 w2
Environment=A=1 "B=two words"

# a comment
; another
[Step compile]
Command=make \\
   -j4
HaltOnFailure=yes
TimeoutSec=infinity

[Step test]
Command=make test
WorkingDirectory=sub
TimeoutIdleSec=10min
WarnOnFailure=yes
FlunkOnFailure=no
AlwaysRun=true
Environment=
"""

VALID_GLOBAL = b"""\
[Site]
Title=My builds
WaterfallDepth=30

[Defaults]
PollIntervalSec=5min
TreeStableSec=10s

[Daemons]
RescanIntervalSec=1min
"""

VALID_DROPIN = b"""\
[Builder]
Branches=
Branches=main
[Step lint]
Command=flake8
"""

_KEYS = sorted(set(config.BUILDER_KEYS) | set(config.STEP_KEYS)
               | {k for s in config.GLOBAL_KEYS.values() for k in s}) + ["Bogus", "command", "1x"]
_SECTIONS = ["Builder", "Step a", "Step checkout", "Step", "Step b c", "Site", "Defaults", "Daemons",
             "", " Builder ", "Step \u00e9"]
_VALUES = ["", "yes", "no", "maybe", "0", "1", "90", "1h 30min", "infinity", "-1", "1e5", "5 parsecs",
           "A=1", "A", "\"A=1", "'", "*", "main release-*", "/srv/git/hello.git", "make", "\\"]


def _unit_line():
    return st.one_of(
        st.builds(lambda s: "[%s]" % s, st.one_of(st.sampled_from(_SECTIONS), st.text(max_size=10))),
        st.builds(lambda k, v: "%s=%s" % (k, v), st.sampled_from(_KEYS),
                  st.one_of(st.sampled_from(_VALUES), st.text(max_size=20))),
        st.sampled_from(["", "#c", ";c", "  ", "\\", "a\\", "[", "]", "=", "=x", "Key", "[Step x"]),
        st.text(max_size=30),
    )


unit_text = st.builds(lambda lines, end: "\n".join(lines) + end,
                      st.lists(_unit_line(), max_size=25), st.sampled_from(["", "\n", "\r\n", "\\"]))


def _mutated(base):
    return st.builds(mutate, st.just(base), _mutations())


config_bytes = st.one_of(
    st.binary(max_size=300),
    unit_text.map(lambda t: t.encode("utf-8")),
    _mutated(VALID_BUILDER), _mutated(VALID_GLOBAL), _mutated(VALID_DROPIN),
    st.just(VALID_BUILDER),
)

# JSON values (no NaN or infinities: they are not JSON; see the xfail test).
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(json_scalars,
                           lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                  st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                           max_leaves=12)


def _record_bytes(formats):
    """JSON text that is often, not always, a record of one of FORMATS."""
    fmt = st.one_of(st.sampled_from(list(formats) + sorted(records.FORMATS)), json_values)
    version = st.one_of(st.integers(-2, 5), json_values)
    head = st.fixed_dictionaries({}, optional={"format": fmt, "version": version})
    return st.builds(lambda h, rest, ind: json.dumps(dict(rest, **h), indent=ind).encode("utf-8"),
                     head, st.dictionaries(st.text(max_size=8), json_values, max_size=5),
                     st.sampled_from([None, 1]))


def _valid_record(fmt):
    return st.builds(lambda fields: records.encode(fmt, fields),
                     st.dictionaries(st.text(max_size=8), json_values, max_size=6))


def record_bytes(formats):
    return st.one_of(st.binary(max_size=200), _record_bytes(formats),
                     st.sampled_from(formats).flatmap(_valid_record),
                     st.sampled_from(formats).flatmap(lambda f: _valid_record(f).flatmap(_mutated)))


# ====================================================================
# the configuration

PATH = "/etc/buildunits/builders/fuzz.builder"


@pytest.mark.torture
@fuzz
@given(text=st.one_of(unit_text, st.text(max_size=400)))
def test_parse_unit_file_returns_sections_and_problems_naming_the_file(text):
    with no_hang("parse_unit_file"):
        sections, problems = config.parse_unit_file(PATH, text)
    nlines = max(1, len(text.splitlines()))
    for p in problems:
        assert p.path == PATH and str(p).startswith(PATH)
        assert 0 <= p.line <= nlines
    for name, assignments, (hpath, line) in sections:
        assert isinstance(name, str) and hpath == PATH and 1 <= line <= nlines
        for a in assignments:
            assert a.path == PATH and 1 <= a.line <= nlines and a.section == name
            assert a.key and a.key[0].isalpha() and a.value == a.value.strip()


@pytest.mark.torture
@fuzz
@given(data=config_bytes)
def test_parse_unit_file_reads_any_bytes(data, scratch):
    p = os.path.join(scratch(), "x.builder")
    with open(p, "wb") as f:
        f.write(data)
    with no_hang("parse_unit_file"):
        sections, problems = config.parse_unit_file(p)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        assert sections == [] and len(problems) == 1 and "UTF-8" in problems[0].message
    for pr in problems:
        assert pr.path == p


CONFIG_FILES = ["builders/a.builder", "builders/b.builder", "builders/a.builder.d/10-x.conf",
                "buildunits.conf", "buildunits.conf.d/50-x.conf", "builders/a.builder.d/20-y.conf"]


def _check_loaded(cfg):
    """What an accepted configuration promises its users."""
    for name, b in cfg.builders.items():
        assert config.NAME_RE.match(name) and b.name == name
        assert b.steps and b.workers and math.isfinite(b.tree_stable)
        assert len({s.name for s in b.steps}) == len(b.steps)
        for s in b.steps:
            assert s.command and config.NAME_RE.match(s.name) and s.name not in config.RESERVED_STEPS
            assert s.timeout > 0 and s.timeout_idle > 0
        assert all(isinstance(x, str) and x for x in b.branches + b.workers)
    assert isinstance(cfg.title, str) and isinstance(cfg.waterfall_depth, int)
    assert cfg.rescan_interval >= 0


@pytest.mark.torture
@fuzz
@given(files=st.dictionaries(st.sampled_from(CONFIG_FILES), config_bytes, min_size=1))
def test_load_accepts_a_configuration_or_names_every_bad_file(files, scratch):
    d = scratch()
    for rel, data in files.items():
        p = os.path.join(d, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    written = {os.path.join(d, rel) for rel in files}
    try:
        with no_hang("config.load"):
            cfg = config.load(d)
    except config.ConfigError as e:
        assert e.problems
        for p in e.problems:
            # Each problem names a file that was written (a builder-level
            # problem names the .builder file, whose drop-ins were read).
            assert p.path in written, (p.path, sorted(written))
            assert str(p).startswith(p.path + (":%d" % p.line if p.line else ""))
            assert str(p) in str(e)
        return
    _check_loaded(cfg)
    for w in cfg.warnings:
        assert w.path in written or w.path.startswith(d)


@pytest.mark.torture
@fuzz
@given(name=st.text(min_size=1, max_size=70).filter(lambda n: "/" not in n and "\x00" not in n
                                                      and len(n.encode()) < 200),
       data=st.one_of(st.just(VALID_BUILDER), config_bytes))
def test_load_with_any_builder_file_name(name, data, scratch):
    d = scratch()
    os.makedirs(os.path.join(d, "builders"))
    p = os.path.join(d, "builders", name)
    if name in (".", ".."):
        return
    with open(p, "wb") as f:
        f.write(data)
    try:
        cfg = config.load(d)
    except config.ConfigError as e:
        assert all(pr.path == p for pr in e.problems), e.problems
        return
    _check_loaded(cfg)
    if cfg.builders:
        assert list(cfg.builders) == [name[:-len(".builder")]]


# ====================================================================
# records

RPATH = "/var/spool/buildunits/changes/new/x"


def _check_decoded(data, formats):
    """decode() DATA: a record of FORMATS or a RecordError naming RPATH."""
    try:
        with no_hang("records.decode"):
            rec = records.decode(data, RPATH, formats)
    except records.RecordError as e:
        assert e.path == RPATH and str(e) == "%s: %s" % (RPATH, e.reason) and e.reason
        return None
    assert isinstance(rec, dict) and rec["format"] in formats
    assert isinstance(rec["version"], int) and not isinstance(rec["version"], bool) and rec["version"] >= 1
    return rec


@pytest.mark.torture
@fuzz
@given(formats=st.lists(st.sampled_from(sorted(records.FORMATS)), min_size=1, max_size=3, unique=True),
       data=st.data())
def test_decode_returns_a_record_or_a_recorderror_naming_the_file(formats, data):
    blob = data.draw(record_bytes(formats))
    rec = _check_decoded(blob, tuple(formats))
    if rec is not None:
        assert rec == json.loads(blob.decode("utf-8"))


@pytest.mark.torture
@fuzz
@given(fmt=st.sampled_from(sorted(records.FORMATS)),
       fields=st.dictionaries(st.text(max_size=8), json_values, max_size=6), data=st.data())
def test_every_proper_prefix_of_a_record_is_rejected_as_torn(fmt, fields, data):
    blob = records.encode(fmt, fields)
    full = records.decode(blob, RPATH, fmt)
    expect = {"format": fmt, "version": records.FORMATS[fmt]}
    expect.update({k: v for k, v in fields.items() if k not in ("format", "version")})
    assert full == expect
    end = len(blob.rstrip(b"\n"))       # the "}" is the end marker; the newline is not needed
    cut = data.draw(st.integers(0, end - 1), label="cut")
    with pytest.raises(records.RecordError) as e:
        records.decode(blob[:cut], RPATH, fmt)
    assert "truncated" in e.value.reason or (cut <= 1 and "empty" in e.value.reason), (
        cut, blob[:cut][-20:], e.value.reason)




# ====================================================================
# the spool

def _spool(root):
    sp = Spool(os.path.join(root, "spool"))
    sp.ensure()
    sp.seen = []
    sp.on_corrupt = lambda path, dest, reason: sp.seen.append((path, dest, reason))
    return sp


def _corrupt_entries(sp):
    return sorted(n for n in os.listdir(sp.path("corrupt")) if not n.endswith(".reason"))


def _check_moved_to_corrupt(sp, queue, path, content):
    """PATH is gone, kept byte for byte in corrupt/ with its reason, and
    on_corrupt was told (the daemons' journal line names the file)."""
    assert not os.path.lexists(path)
    [(told_path, dest, reason)] = [s for s in sp.seen if s[0] == path]
    assert os.path.dirname(dest) == sp.path("corrupt")
    assert os.path.basename(dest).startswith(queue + "." + os.path.basename(path))
    if content is not None:
        with open(dest, "rb") as f:
            assert f.read() == content
    with open(dest + ".reason", encoding="utf-8", newline="") as f:
        text = f.read()
    assert text.startswith(reason + "\nfrom: %s\nwhen: " % path) and reason


@pytest.mark.torture
@fuzz
@given(queue=st.sampled_from(spoolmod.QUEUES), data=st.data())
def test_spool_read_returns_a_record_or_moves_the_file_to_corrupt(queue, data, scratch):
    formats = spoolmod.QUEUE_FORMATS[queue]
    content = data.draw(record_bytes(formats), label="content")
    sp = _spool(scratch())
    rid = spoolmod.new_id()
    path = sp.path(queue, "new", rid)
    with open(path, "wb") as f:
        f.write(content)
    with no_hang("Spool.pending/read"):
        assert sp.pending(queue) == [rid]
        rec = sp.read(queue, rid)
    if rec is None:
        _check_moved_to_corrupt(sp, queue, path, content)
        assert sp.corrupted() == [("%s.%s" % (queue, rid), sp.seen[0][2])]
        assert sp.pending(queue) == []
    else:
        assert rec["format"] in formats and sp.seen == [] and _corrupt_entries(sp) == []
        assert sp.pending(queue) == [rid]
    assert sp.read(queue, rid) == rec     # the same answer again (or gone: None)


# Names up to 100 bytes of UTF-8.  Longer names and names that are not
# UTF-8 break pending(): see the xfail tests below.
spool_names = st.one_of(
    st.text(min_size=1, max_size=40),
    st.builds(lambda: spoolmod.new_id()),
    st.builds(lambda n: "." + n, st.text(max_size=20)),
    st.builds(lambda a, b, c, d: "%s.%s.%s.%s" % (a, b, c, d), st.text(max_size=5), st.text(max_size=5),
              st.text(max_size=5), st.text(max_size=5)),
).filter(lambda n: "/" not in n and "\x00" not in n and n not in (".", "..") and len(n.encode()) <= 100)


@pytest.mark.torture
@fuzz
@given(queue=st.sampled_from(spoolmod.QUEUES), names=st.lists(spool_names, min_size=1, max_size=6, unique=True),
       kinds=st.lists(st.sampled_from(["file", "dir", "symlink", "empty"]), min_size=6, max_size=6))
def test_spool_pending_lists_ids_and_moves_stray_names_to_corrupt(queue, names, kinds, scratch):
    sp = _spool(scratch())
    d = sp.path(queue, "new")
    for n, kind in zip(names, kinds):
        p = os.path.join(d, n)
        if kind == "dir":
            os.mkdir(p)
        elif kind == "symlink":      # (a dangling one: see the xfail test below)
            target = os.path.join(os.path.dirname(sp.root), "target-" + str(len(os.listdir(sp.root))))
            with open(target, "wb") as f:
                f.write(b"not a record")
            os.symlink(target, p)
        else:
            with open(p, "wb") as f:
                f.write(b"" if kind == "empty" else records.encode(spoolmod.QUEUE_FORMATS[queue][0], {}))
    with no_hang("Spool.pending"):
        ids = sp.pending(queue)
    assert ids == sorted(n for n in names if spoolmod.valid_id(n))
    for n in names:
        p = os.path.join(d, n)
        if spoolmod.valid_id(n) or n.startswith("."):
            assert os.path.lexists(p), "%r was moved though it is an id or hidden" % n
        else:
            _check_moved_to_corrupt(sp, queue, p, None)
            assert sp.seen[[s[0] for s in sp.seen].index(p)][2] == "file name is not a spool id"
    for rid in ids:                 # a directory or a dangling link named like an id
        rec = sp.read(queue, rid)
        p = os.path.join(d, rid)
        if rec is None:
            _check_moved_to_corrupt(sp, queue, p, None)


@pytest.mark.torture
@fuzz
@given(entries=st.lists(st.tuples(st.text(min_size=1, max_size=12).filter(lambda s: "/" not in s and "\x00" not in s),
                                  st.integers(-3, 10 ** 6), record_bytes(("cancel",))),
                        max_size=4))
def test_cancel_requests_read_or_move_to_corrupt(entries, scratch):
    sp = _spool(scratch())
    for b, n, content in entries:
        name = "%s@%d" % (b, n)
        if name.startswith(".") or len(name.encode()) > 100:
            continue
        with open(sp.path("cancel", name), "wb") as f:
            f.write(content)
    with no_hang("Spool.cancel_requests"):
        out = sp.cancel_requests()
    for (b, n), rec in out.items():
        assert rec["format"] == "cancel" and os.path.exists(sp.path("cancel", "%s@%d" % (b, n)))
    for path, dest, reason in sp.seen:
        _check_moved_to_corrupt(sp, "cancel", path, None)


# ------------------------------------------------------------------------
# What reads the spool: the scheduler, the runner, `status` and `fsck`,
# in process, on well-formed records whose fields hold anything.

FIELD_VALUES = st.one_of(json_values, st.sampled_from(["/srv/git/hello.git", "main", "topic", "b", "w",
                                                       "a" * 40, 1.0e9, 0, -1, None, [], {}]))
CHANGE_KEYS = ["id", "repository", "branch", "revision", "queued", "author", "message", "files", "when",
               "builder", "reason", "user", "properties", "source"]
REQUEST_KEYS = ["id", "builder", "repository", "branch", "revision", "reason", "changes", "force",
                "properties", "queued"]


def _fields(keys, typical):
    """A dict with some of KEYS, each from TYPICAL (well typed) or anything;
    "id" always there (None: the file's name, as Spool.deliver does)."""
    return st.fixed_dictionaries({"id": st.one_of(st.none(), st.none(), FIELD_VALUES)},
                                 optional={k: st.one_of(st.just(typical.get(k)), FIELD_VALUES)
                                           for k in keys if k != "id"})


TYPICAL_CHANGE = {"id": None, "repository": "/srv/git/hello.git", "branch": "main", "revision": "a" * 40,
                  "queued": 1.0e9, "author": "A <a@b>", "message": "m", "files": ["f"], "when": 1.0e9,
                  "builder": "b", "reason": "r", "user": "root", "properties": {}, "source": "sendchange"}
TYPICAL_REQUEST = {"id": None, "builder": "b", "repository": "", "branch": "main", "revision": "",
                   "reason": "r", "changes": [], "force": "x", "properties": {}, "queued": 1.0e9}

FUZZ_CONFIG = {
    "b": "[Builder]\nRepository=/srv/git/hello.git\nTreeStableSec=0\n[Step s]\nCommand=true\n",
    "w": "[Builder]\nRepository=/srv/git/hello.git\nBranches=main\nTreeStableSec=1h\n[Step s]\nCommand=true\n",
}


class _Notifier:
    watchdog_sec = None

    def status(self, text):
        pass

    ready = reloading = reloaded = stopping = watchdog = status


def _dirs(root):
    d = paths.Dirs(config=os.path.join(root, "config"), spool=os.path.join(root, "spool"),
                   state=os.path.join(root, "state"), site=os.path.join(root, "site"))
    os.makedirs(os.path.join(d.config, "builders"))
    for name, text in FUZZ_CONFIG.items():
        with open(os.path.join(d.config, "builders", name + ".builder"), "w") as f:
            f.write(text)
    return d


def _daemon(cls, root, args=None):
    d = _dirs(root)
    cfg = config.load(d.config)
    obj = cls(d, cfg, NoBus(), _Notifier(), args)
    obj.spool.ensure()
    obj.state.ensure()
    obj.corrupt_lines = []
    obj.spool.on_corrupt = lambda path, dest, reason: obj.corrupt_lines.append((path, dest, reason))
    return obj


def _drop(sp, queue, fmt, fields, rid=None, where="new"):
    rid = rid or spoolmod.new_id()
    rec = dict(fields)
    if rec.get("id", 0) is None:
        rec["id"] = rid
    d = sp.path(queue, where)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, rid), "wb") as f:
        f.write(records.encode(fmt, rec))
    return rid


def run_scheduler(root, changes, requests=()):
    """A Scheduler in process over CHANGES [(fmt, fields)] queued and
    REQUESTS (fields) waiting: startup() and work(), as after a restart."""
    s = _daemon(scheduler.Scheduler, root)
    cids = [_drop(s.spool, "changes", fmt, f) for fmt, f in changes]
    for f in requests:
        _drop(s.spool, "requests", "request", f)
    with no_hang("the scheduler"):
        s.startup()
        s.work()
        s.work()
    return s, cids


class _RecordingRunner(runner.Runner):
    """The runner, except that a claimed build is not run: its first
    record is made and encoded (what _start writes), then the claim is
    finished."""

    def _start(self, rid, req, b, extra=()):
        rec = self._new_record(req, b.name, 1, [])
        records.encode("build", rec)
        self.started.append(rid)
        self.spool.finish(self.worker, rid)


def run_runner(root, queued=(), claimed=()):
    r = _daemon(_RecordingRunner, root, types.SimpleNamespace(worker="w1"))
    r.started = []
    for f in queued:
        _drop(r.spool, "requests", "request", f)
    for f in claimed:
        _drop(r.spool, "requests", "request", f, where=os.path.join("active", "w1"))
    with no_hang("the runner"):
        r.startup()
        for _ in range(len(queued) + len(claimed) + 1):     # one build per pass
            r.work()
    return r


def _after_the_daemon(d, queue):
    """Every file left in QUEUE/new is a readable record; every file moved
    to corrupt/ was announced with its reason."""
    for rid in os.listdir(d.spool.path(queue, "new")):
        records.read(d.spool.path(queue, "new", rid), spoolmod.QUEUE_FORMATS[queue])
    moved = _corrupt_entries(d.spool)
    assert len(moved) == len(d.corrupt_lines)
    for path, dest, reason in d.corrupt_lines:
        assert os.path.exists(dest) and os.path.exists(dest + ".reason") and reason


@pytest.mark.torture
@fuzz_slow
@given(changes=st.lists(st.one_of(st.tuples(st.just("change"), _fields(CHANGE_KEYS, TYPICAL_CHANGE)),
                                  st.tuples(st.just("force"), _fields(CHANGE_KEYS, TYPICAL_CHANGE))),
                        min_size=1, max_size=4))
def test_scheduler_takes_any_well_formed_change_or_moves_it_to_corrupt(changes, scratch):
    """Changes with any fields: taken, or moved to corrupt/ with a reason."""
    s, cids = run_scheduler(scratch(), changes)
    _after_the_daemon(s, "changes")
    for cid in s.spool.pending("changes"):
        rec = s.spool.read("changes", cid)
        # Only changes waiting for w's tree-stable window stay queued.
        assert rec["format"] == "change" and rec.get("branch") == "main", rec
    for rid in s.spool.pending("requests"):
        records.encode("request", s.spool.read("requests", rid))




@pytest.mark.torture
@fuzz_slow
@given(queued=st.lists(_fields(REQUEST_KEYS, TYPICAL_REQUEST), max_size=3),
       claimed=st.lists(_fields(REQUEST_KEYS, TYPICAL_REQUEST), max_size=2))
def test_runner_and_scheduler_start_over_any_well_formed_request(queued, claimed, scratch):
    root = scratch()
    r = run_runner(root, queued, claimed)
    _after_the_daemon(r, "requests")
    # Every request for a builder this worker runs was run (or, if its
    # revision is not a commit id, moved to corrupt/); the others wait.
    for rid in r.spool.pending("requests"):
        req = r.spool.read("requests", rid)
        b = req.get("builder")
        assert not (isinstance(b, str) and b in r.cfg.builders), req
    shutil.rmtree(os.path.join(root, "config"))
    shutil.rmtree(r.spool.path("corrupt"))     # the runner's, checked above
    s, _ = run_scheduler(root, [])
    _after_the_daemon(s, "requests")




@pytest.mark.torture
@fuzz_slow
@given(changes=st.lists(_fields(CHANGE_KEYS, TYPICAL_CHANGE), max_size=3),
       requests=st.lists(_fields(REQUEST_KEYS, TYPICAL_REQUEST), max_size=3))
def test_status_and_fsck_read_any_well_formed_spool(changes, requests, scratch, capsys):
    root = scratch()
    d = _dirs(root)
    sp = Spool(d.spool)
    sp.ensure()
    for f in changes:
        _drop(sp, "changes", "change", f)
    for f in requests:
        _drop(sp, "requests", "request", f)
    argv = ["--config-dir", d.config, "--spool-dir", d.spool, "--state-dir", d.state, "--site-dir", d.site]
    with no_hang("buildunits status/fsck"):
        assert cli.main(argv + ["status", "--json"]) == 0
        assert cli.main(argv + ["status"]) == 0
        assert cli.main(argv + ["fsck"]) in (0, 1)
    capsys.readouterr()




# ====================================================================
# Inputs that once broke a reader: one test each.

def test_decode_deeply_nested_json_is_a_recorderror():
    data = b'{"format": "change", "version": 1, "x": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    _check_decoded(data, ("change",))
    _check_decoded(b"[" * 100000, ("change",))


def test_decode_huge_integer_is_a_recorderror():
    _check_decoded(b'{"format": "change", "version": 1, "when": ' + b"1" * 5000 + b"}", ("change",))


def test_decode_rejects_nan_and_infinity():
    for token in (b"NaN", b"Infinity", b"-Infinity"):
        data = b'{"format": "change", "version": 1, "when": %s}' % token
        assert _check_decoded(data, ("change",)) is None, token


def test_scheduler_change_with_nan_does_not_block_the_queue(tmp_path):
    s = _daemon(scheduler.Scheduler, str(tmp_path))
    bad = s.spool.path("changes", "new", spoolmod.new_id())
    with open(bad, "wb") as f:
        f.write(b'{"format": "change", "version": 1, "repository": "/srv/git/hello.git", "branch": "topic",'
                b' "revision": "' + b"b" * 40 + b'", "when": NaN, "id": "x"}\n')
    good = s.spool.deliver("changes", "change", dict(TYPICAL_CHANGE, revision="c" * 40, branch="topic"))
    with no_hang("the scheduler"):
        s.startup()
        try:
            s.work()
        except ValueError:
            pass
        s.work()
    assert good not in s.spool.pending("changes"), "the good change behind the bad one was not taken"


def test_spool_read_of_a_fifo_does_not_hang(tmp_path):
    sp = _spool(str(tmp_path))
    rid = spoolmod.new_id()
    os.mkfifo(sp.path("changes", "new", rid))
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from buildunits.spool import Spool\n"
            "print(Spool(%r).read('changes', %r))\n" % (harness.LIB_DIR, sp.root, rid))
    try:
        p = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=5, text=True)
    except subprocess.TimeoutExpired:
        pytest.fail("Spool.read of a FIFO in changes/new hung (a reader must not block on an open)")
    assert p.returncode == 0, p.stderr
    assert not os.path.lexists(sp.path("changes", "new", rid)), "the FIFO should be moved to corrupt/"


def test_spool_read_of_a_dangling_symlink_moves_it_to_corrupt(tmp_path):
    sp = _spool(str(tmp_path))
    rid = spoolmod.new_id()
    os.symlink("/nonexistent/target", sp.path("changes", "new", rid))
    assert sp.pending("changes") == [rid]
    assert sp.read("changes", rid) is None
    _check_moved_to_corrupt(sp, "changes", sp.path("changes", "new", rid), None)


def test_spool_pending_with_a_name_that_is_not_utf8(tmp_path):
    sp = _spool(str(tmp_path))
    good = spoolmod.new_id()
    open(sp.path("changes", "new", good), "wb").write(records.encode("change", {}))
    open(os.path.join(os.fsencode(sp.path("changes", "new")), b"stray\xff"), "wb").write(b"x")
    assert sp.pending("changes") == [good]
    assert len(sp.seen) == 1 and _corrupt_entries(sp) and not os.path.lexists(sp.seen[0][0])


def test_spool_pending_with_a_long_stray_name(tmp_path):
    sp = _spool(str(tmp_path))
    good = spoolmod.new_id()
    open(sp.path("changes", "new", good), "wb").write(records.encode("change", {}))
    stray = "x" * 240
    open(sp.path("changes", "new", stray), "wb").write(b"x")
    assert sp.pending("changes") == [good]
    assert not os.path.lexists(sp.path("changes", "new", stray)) and len(sp.seen) == 1


@pytest.mark.parametrize("ident", ["missing", [1], {"a": 1}])
def test_scheduler_change_without_id(tmp_path, ident):
    fields = dict(TYPICAL_CHANGE, branch="topic")
    if ident == "missing":
        del fields["id"]
    else:
        fields["id"] = ident
    s = _daemon(scheduler.Scheduler, str(tmp_path))
    _drop(s.spool, "changes", "change", fields)
    good = s.spool.deliver("changes", "change", dict(TYPICAL_CHANGE, revision="c" * 40, branch="topic"))
    with no_hang("the scheduler"):
        s.startup()
        s.work()
    assert good not in s.spool.pending("changes")
    _after_the_daemon(s, "changes")


@pytest.mark.parametrize("queued", ["yesterday", None, [1]])
def test_scheduler_change_with_a_non_numeric_queued_time(tmp_path, queued):
    """Such a change is not left in changes/new/ forever (its tree-stable
    window could never be measured): it goes to corrupt/, saying why."""
    s = _daemon(scheduler.Scheduler, str(tmp_path))
    cid = _drop(s.spool, "changes", "change", dict(TYPICAL_CHANGE, queued=queued))
    with no_hang("the scheduler"):
        s.startup()
        s.work()
    _after_the_daemon(s, "changes")
    assert cid not in s.spool.pending("changes")
    [(name, reason)] = s.spool.corrupted()
    assert name == "changes." + cid and "queued" in reason, (name, reason)
    assert not s.spool.pending("requests")


@pytest.mark.parametrize("who", ["scheduler", "runner"])
def test_scheduler_and_runner_on_a_request_with_an_unhashable_builder(tmp_path, who):
    bad = dict(TYPICAL_REQUEST, builder=["b"])
    good = dict(TYPICAL_REQUEST)
    if who == "scheduler":
        s, _ = run_scheduler(str(tmp_path), [], [bad])
        _after_the_daemon(s, "requests")
    else:
        r = run_runner(str(tmp_path), [bad, good])
        assert len(r.started) == 1, "the good request behind the bad one was not run"


@pytest.mark.parametrize("changes", [5, [{"id": ["x"]}], [{"id": {"a": 1}}]])
def test_scheduler_on_a_request_whose_changes_are_not_a_list(tmp_path, changes):
    s, _ = run_scheduler(str(tmp_path), [], [dict(TYPICAL_REQUEST, changes=changes)])
    _after_the_daemon(s, "requests")


@pytest.mark.parametrize("queue,fields", [("requests", dict(TYPICAL_REQUEST, queued="yesterday")),
                                          ("changes", dict(TYPICAL_CHANGE, revision=12345))])
def test_status_with_ill_typed_fields(tmp_path, capsys, queue, fields):
    d = _dirs(str(tmp_path))
    sp = Spool(d.spool)
    sp.ensure()
    _drop(sp, queue, spoolmod.QUEUE_FORMATS[queue][0], fields)
    argv = ["--config-dir", d.config, "--spool-dir", d.spool, "--state-dir", d.state, "status"]
    assert cli.main(argv) == 0


def test_scheduler_moves_a_deeply_nested_change_aside_and_goes_on(daemons):
    """The real daemon, with a change file it cannot parse before a good one."""
    daemons.write_builder("b", "[Builder]\nRepository=/srv/git/hello.git\n[Step s]\nCommand=true\n")
    daemons.start("scheduler", bus=False)
    bad = daemons.spool.path("changes", "new", spoolmod.new_id())
    with open(bad, "wb") as f:
        f.write(b'{"a":' + b"[" * 50000)
    good = daemons.spool.deliver("changes", "change", dict(TYPICAL_CHANGE, id=None, revision="d" * 40))
    harness.wait_for(lambda: not daemons.spool.pending("changes"), timeout=20,
                     what="both changes taken", describe=lambda: daemons.log("scheduler"))
    assert bad in daemons.log("scheduler")
    assert [n for n, _r in daemons.spool.corrupted()] == ["changes." + os.path.basename(bad)]
    assert good and len(daemons.spool.pending("requests")) == 1
    daemons.restart("scheduler")
