"""config: builder files in systemd's unit-file syntax, drop-ins, errors."""

import math
import os
import textwrap

import pytest

from buildunits import config

HELLO = """\
[Builder]
Description=Build and test hello
Repository=/srv/git/hello.git
Branches=main release-*
PollIntervalSec=30
TreeStableSec=0
Workers=*

[Step compile]
Command=make
HaltOnFailure=yes

[Step test]
Command=make test
TimeoutSec=600
"""


class Conf:
    """A configuration directory under tmp_path."""

    def __init__(self, root):
        self.root = str(root)
        os.makedirs(os.path.join(self.root, "builders"), exist_ok=True)

    def write(self, rel, text):
        p = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(textwrap.dedent(text).encode("utf-8") if isinstance(text, str) else text)
        return p

    def builder(self, name, text):
        return self.write("builders/%s.builder" % name, text)

    def dropin(self, name, conf, text):
        return self.write("builders/%s.builder.d/%s" % (name, conf), text)

    def load(self):
        return config.load(self.root)

    def errors(self):
        with pytest.raises(config.ConfigError) as e:
            config.load(self.root)
        return e.value


@pytest.fixture
def conf(tmp_path):
    return Conf(tmp_path / "etc")


def minimal(extra_builder="", extra_step=""):
    return "[Builder]\nRepository=/srv/git/x.git\n%s\n[Step build]\nCommand=make\n%s" % (
        extra_builder, extra_step)


# ------------------------------------------------------------------ hello

def test_hello_example(conf):
    conf.builder("hello", HELLO)
    cfg = conf.load()
    assert list(cfg.builders) == ["hello"]
    assert cfg.warnings == []
    b = cfg.builders["hello"]
    assert b.name == "hello"
    assert b.path == os.path.join(conf.root, "builders", "hello.builder")
    assert b.description == "Build and test hello"
    assert b.repository == "/srv/git/hello.git"
    assert b.branches == ["main", "release-*"]
    assert b.poll_interval == 30.0
    assert b.tree_stable == 0.0
    assert b.workers == ["*"]
    assert b.environment == {}
    assert [s.name for s in b.steps] == ["compile", "test"]
    compile_, test = b.steps
    assert compile_.command == "make" and compile_.halt_on_failure is True
    assert compile_.timeout == math.inf
    assert test.command == "make test" and test.timeout == 600.0
    assert test.halt_on_failure is False and test.flunk_on_failure is True
    assert test.warn_on_failure is False and test.always_run is False
    assert b.wants_branch("main") and b.wants_branch("release-1.2")
    assert not b.wants_branch("feature") and not b.wants_branch("mainline")
    assert b.runs_on("anything")


def test_missing_or_empty_directory_is_an_empty_configuration(tmp_path):
    assert config.load(str(tmp_path / "nope")).builders == {}
    assert config.load(str(tmp_path)).builders == {}


def test_defaults_when_keys_are_absent(conf):
    conf.builder("x", minimal())
    b = conf.load().builders["x"]
    assert b.branches == ["*"] and b.workers == ["*"]
    assert b.poll_interval == 60.0 and b.tree_stable == 0.0
    s = b.steps[0]
    assert s.timeout == math.inf and s.timeout_idle == 20 * 60.0
    assert s.working_directory == "" and s.environment == {}


def test_global_config_sets_site_and_builder_defaults(conf):
    conf.write("buildunits.conf", """\
        [Site]
        Title=Our CI
        WaterfallDepth=20
        [Defaults]
        PollIntervalSec=5min
        TreeStableSec=10s
        [Daemons]
        RescanIntervalSec=1min
        """)
    conf.write("buildunits.conf.d/50-local.conf", "[Site]\nTitle=Local CI\n")
    conf.builder("a", minimal())
    conf.builder("b", minimal("PollIntervalSec=7"))
    cfg = conf.load()
    assert cfg.title == "Local CI" and cfg.waterfall_depth == 20 and cfg.rescan_interval == 60.0
    assert cfg.builders["a"].poll_interval == 300.0 and cfg.builders["a"].tree_stable == 10.0
    assert cfg.builders["b"].poll_interval == 7.0


def test_global_dropins_without_main_file(conf):
    conf.write("buildunits.conf.d/title.conf", "[Site]\nTitle=Only a drop-in\n")
    assert conf.load().title == "Only a drop-in"


def test_builders_for_a_repository(conf, tmp_path):
    repo = tmp_path / "hello.git"
    repo.mkdir()
    conf.builder("a", "[Builder]\nRepository=%s/\n[Step s]\nCommand=true\n" % repo)
    conf.builder("b", "[Builder]\nRepository=file://%s\n[Step s]\nCommand=true\n" % repo)
    conf.builder("c", "[Builder]\nRepository=/elsewhere.git\n[Step s]\nCommand=true\n")
    cfg = conf.load()
    key = config.normalize_repository(str(repo))
    assert sorted(b.name for b in cfg.builders_for(key)) == ["a", "b"]
    assert config.normalize_repository("https://h/x.git/") == "https://h/x.git"


# ---------------------------------------------------------------- drop-ins

def test_dropins_override_in_name_order_and_add_steps(conf):
    conf.builder("hello", HELLO)
    conf.dropin("hello", "20-later.conf", """\
        [Builder]
        Description=from 20
        [Step test]
        TimeoutSec=1h
        """)
    conf.dropin("hello", "10-earlier.conf", """\
        [Builder]
        Description=from 10
        PollIntervalSec=2min
        [Step test]
        TimeoutSec=5min
        Command=make check
        [Step deploy]
        Command=make deploy
        AlwaysRun=yes
        """)
    conf.dropin("hello", "ignored.txt", "[Builder]\nDescription=not a .conf\n")
    conf.dropin("hello", ".hidden.conf", "[Builder]\nDescription=hidden\n")
    b = conf.load().builders["hello"]
    assert b.description == "from 20"
    assert b.poll_interval == 120.0
    assert [s.name for s in b.steps] == ["compile", "test", "deploy"]
    test = b.steps[1]
    assert test.command == "make check" and test.timeout == 3600.0
    assert b.steps[2].command == "make deploy" and b.steps[2].always_run is True


def test_dropin_lists_accumulate_and_reset(conf):
    conf.builder("hello", HELLO)
    conf.dropin("hello", "a.conf", "[Builder]\nBranches=feature-*\n")
    assert conf.load().builders["hello"].branches == ["main", "release-*", "feature-*"]
    conf.dropin("hello", "b.conf", "[Builder]\nBranches=\nBranches=only\n")
    assert conf.load().builders["hello"].branches == ["only"]


def test_dropin_problem_names_the_dropin_file_and_line(conf):
    conf.builder("hello", HELLO)
    p = conf.dropin("hello", "bad.conf", "[Step test]\n\nHaltOnFailure=perhaps\n")
    e = conf.errors()
    assert [str(x) for x in e.problems] == [
        "%s:3: [Step test] HaltOnFailure=: not a boolean: 'perhaps' (use yes or no)" % p]


def test_dropin_directory_without_builder_is_a_warning(conf):
    conf.builder("hello", HELLO)
    conf.dropin("ghost", "a.conf", "[Builder]\nDescription=x\n")
    conf.write("builders/README", "not a builder\n")
    cfg = conf.load()
    msgs = sorted(str(w) for w in cfg.warnings)
    assert any("ghost.builder.d" in m and "does not exist" in m for m in msgs), msgs
    assert any("README" in m and "not NAME.builder" in m for m in msgs), msgs


# ------------------------------------------------------------------ errors

def one_problem(conf):
    e = conf.errors()
    assert len(e.problems) == 1, [str(p) for p in e.problems]
    return e.problems[0]


def test_bad_boolean_names_file_line_and_key(conf):
    p = conf.builder("x", minimal(extra_step="HaltOnFailure=maybe\n"))
    prob = one_problem(conf)
    assert (prob.path, prob.line, prob.section, prob.key) == (p, 6, "Step build", "HaltOnFailure")
    assert str(prob).startswith("%s:6: [Step build] HaltOnFailure=: " % p)
    assert "maybe" in str(prob)


@pytest.mark.parametrize("value", ["10 apples", "soon", "-5", "", "5 min ago", "INFINITY"])
def test_bad_time_span_names_file_line_and_key(conf, value):
    p = conf.builder("x", minimal("TreeStableSec=%s" % value))
    prob = one_problem(conf)
    assert (prob.path, prob.line, prob.key) == (p, 3, "TreeStableSec")
    assert str(prob).startswith("%s:3: [Builder] TreeStableSec=: " % p)


@pytest.mark.parametrize("value", ["1000000y", "584543y", "9" * 400, "1" * 400 + "y"],
                         ids=["1000000y", "584543y", "400 digits", "400 digits y"])
def test_time_spans_beyond_systemds_limit_are_refused_naming_it(conf, value):
    # A number too long for a float would otherwise be infinity: no time-out at all.
    p = conf.builder("x", minimal(extra_step="TimeoutSec=%s\n" % value))
    prob = one_problem(conf)
    assert (prob.path, prob.line, prob.section, prob.key) == (p, 6, "Step build", "TimeoutSec")
    assert "too long: at most 584542 years" in prob.message and "infinity" in prob.message


def test_long_time_spans_up_to_the_limit_are_kept():
    assert config.parse_timespan("60d") == 60 * 86400
    assert config.parse_timespan("584542y") == 584542 * 31557600
    assert config.parse_timespan("infinity") == math.inf
    with pytest.raises(ValueError, match="unknown time unit 'e'"):
        config.parse_timespan("1e400")


@pytest.mark.parametrize("word", ["A\n=1", "A\r=1", "\nA=1", "A B=1", "1A=1", "\u00c4=1"])
def test_environment_names_are_whole_identifiers(word):
    # "$" would match before a final newline: 'A\n' passed as a name.
    with pytest.raises(ValueError, match="not an assignment NAME=VALUE"):
        config.parse_environment("'%s'" % word)
    assert config.parse_environment("A_1=x '_B=y z'") == {"A_1": "x", "_B": "y z"}


@pytest.mark.parametrize("value", ["\u0663", "1\u00b2", "+3"])
def test_whole_numbers_are_ascii_digits(conf, value):
    conf.write("buildunits.conf", "[Site]\nWaterfallDepth=%s\n" % value)
    prob = one_problem(conf)
    assert prob.key == "WaterfallDepth" and "not a whole number" in prob.message


def test_missing_command_names_the_step(conf):
    p = conf.builder("x", "[Builder]\nRepository=/r\n[Step a]\nDescription=no command\n")
    prob = one_problem(conf)
    assert prob.path == p and prob.line in (3, 4) and prob.key == "Command"
    assert str(prob).startswith("%s:%d: [Step a] Command=: missing" % (p, prob.line))


def test_missing_command_in_an_empty_step_names_the_header_line(conf):
    p = conf.builder("x", "[Builder]\nRepository=/r\n\n[Step a]\n\n[Step b]\nCommand=true\n")
    prob = one_problem(conf)
    assert str(prob) == "%s:4: [Step a] Command=: missing; every step needs a Command= (or Trigger=)" % p


def test_line_without_equals(conf):
    p = conf.builder("x", minimal(extra_step="make test\n"))
    prob = one_problem(conf)
    assert (prob.path, prob.line) == (p, 6)
    assert str(prob).startswith("%s:6: [Step build] " % p)
    assert "expected Key=Value" in prob.message and "make test" in prob.message


def test_assignment_outside_section_and_bad_header(conf):
    p = conf.builder("x", "Command=make\n[Builder\n" + minimal())
    e = conf.errors()
    got = [(x.line, x.message) for x in e.problems]
    assert got[0] == (1, "assignment outside of any section")
    assert got[1][0] == 2 and "bad section header" in got[1][1]
    assert all(x.path == p for x in e.problems)


@pytest.mark.parametrize("name", ["../x", "", "a b", "-x", ".x", "x/y", "é"])
def test_bad_step_name(conf, name):
    p = conf.builder("b", minimal() + "[Step %s]\nCommand=true\n" % name)
    prob = one_problem(conf)
    # The [Step] header is line 6; its first key, line 7, is named today.
    assert prob.path == p and prob.line in (6, 7)
    assert str(prob).startswith("%s:%d: [Step" % (p, prob.line))
    assert "step name" in prob.message and repr(name) in prob.message


def test_reserved_step_name_checkout(conf):
    p = conf.builder("b", minimal() + "[Step checkout]\nCommand=git checkout\n")
    prob = one_problem(conf)
    assert prob.path == p and prob.line in (6, 7) and prob.section == "Step checkout"
    assert "reserved" in prob.message


@pytest.mark.parametrize("name", ["a b", "-x", "_x", "x" * 65, "é", "ok\n", "ok\r\n", "\u0661"])
def test_bad_builder_name(conf, name):
    p = conf.builder(name, minimal())
    prob = one_problem(conf)
    assert prob.path == p and repr(name) in prob.message and "builder name" in prob.message


def test_hidden_builder_files_are_ignored(conf):
    conf.builder(".x", "garbage")
    conf.builder("ok", minimal())
    assert list(conf.load().builders) == ["ok"]


def test_unknown_key_and_section_are_warnings(conf):
    p = conf.builder("x", minimal("Colour=blue") + "[Schedule]\nAt=noon\n")
    cfg = conf.load()
    assert "x" in cfg.builders
    w = [str(x) for x in cfg.warnings]
    assert "%s:3: [Builder] Colour=: unknown key, ignored" % p in w
    assert any(s.startswith(("%s:6: [Schedule]" % p, "%s:7: [Schedule]" % p)) and "unknown section" in s for s in w), w


def test_all_problems_are_reported_at_once(conf):
    conf.builder("a", minimal(extra_step="HaltOnFailure=maybe\nTimeoutSec=soon\n"))
    conf.builder("b", "[Builder]\n")
    e = conf.errors()
    assert len(e.problems) == 3
    assert str(e).count("\n") == 2


def test_other_builder_level_errors(conf):
    conf.builder("inf", minimal("TreeStableSec=infinity"))
    conf.builder("noworkers", minimal("Workers="))
    conf.builder("nosteps", "[Builder]\nRepository=/r\n")
    conf.builder("bytes", b"[Builder]\nDescription=\xff\n[Step s]\nCommand=true\n")
    conf.builder("cont", "[Builder]\nDescription=a \\\n")
    msgs = sorted(str(p) for p in conf.errors().problems)
    assert any("inf.builder: [Builder] TreeStableSec=: must be finite" in m for m in msgs), msgs
    assert any("noworkers.builder: [Builder] Workers=: empty" in m for m in msgs), msgs
    assert any("nosteps.builder: builder has no steps" in m for m in msgs), msgs
    assert any("bytes.builder:2: not valid UTF-8" in m for m in msgs), msgs
    assert any("cont.builder:2: file ends inside a continued line" in m for m in msgs), msgs


# ------------------------------------------------------------------ syntax

def test_comments_and_continuation_lines(conf):
    conf.builder("x", """\
        # a comment
        ; another
        [Builder]
        Repository=/r
        Description=one \\
          two \\
        # a comment inside is dropped
          three
        [Step s]
        Command=make \\
            check
        TimeoutSec=1x
        """)
    prob = one_problem(conf)
    assert prob.line == 12 and prob.key == "TimeoutSec"
    conf.builder("x", """\
        [Builder]
        Description=one \\
          two \\
        # a comment inside is dropped
          three
        [Step s]
        Command=make \\
            check
        """)
    b = conf.load().builders["x"]
    assert b.description == "one two three"
    assert b.steps[0].command == "make check"


def test_lists_accumulate_and_reset_on_empty(conf):
    conf.builder("x", minimal("Branches=a b\nBranches=c\nWorkers=w1\nWorkers=\nWorkers=w2 w3"))
    b = conf.load().builders["x"]
    assert b.branches == ["a", "b", "c"]
    assert b.workers == ["w2", "w3"]
    assert b.runs_on("w2") and not b.runs_on("w1")


def test_later_assignment_wins_for_scalars(conf):
    conf.builder("x", minimal("Description=first\nDescription=second"))
    assert conf.load().builders["x"].description == "second"


def test_environment(conf):
    conf.builder("x", minimal('Environment=A=1 "B=two words"\nEnvironment=C=\'x y\' A=3',
                              'Environment=LANG=C\nEnvironment=\nEnvironment=ONLY=1\n'))
    b = conf.load().builders["x"]
    assert b.environment == {"A": "3", "B": "two words", "C": "x y"}
    assert b.steps[0].environment == {"ONLY": "1"}


@pytest.mark.parametrize("value", ["NOEQUALS", "1A=x", '"A=unclosed', "A-B=1"])
def test_bad_environment(conf, value):
    p = conf.builder("x", minimal("Environment=%s" % value))
    prob = one_problem(conf)
    assert (prob.path, prob.line, prob.key) == (p, 3, "Environment")


def test_parse_environment_function():
    assert config.parse_environment('A=1 "B=two words"') == {"A": "1", "B": "two words"}
    assert config.parse_environment("EMPTY= X=a=b") == {"EMPTY": "", "X": "a=b"}
    assert config.parse_environment("") == {}


@pytest.mark.parametrize("text,seconds", [
    ("90s", 90.0), ("10min", 600.0), ("1h 30min", 5400.0), ("600", 600.0), ("infinity", math.inf),
    ("2min30s", 150.0), ("1.5h", 5400.0), ("500ms", 0.5), ("1d", 86400.0), ("5m", 300.0),
    (" 10 min ", 600.0), ("0", 0.0), ("1w 1d", 8 * 86400.0),
])
def test_time_spans(text, seconds):
    assert config.parse_timespan(text) == seconds


@pytest.mark.parametrize("text", ["", "  ", "soon", "-5", "10 apples", "s", "1..5s", "Infinity", "5 m s"])
def test_bad_time_spans(text):
    with pytest.raises(ValueError):
        config.parse_timespan(text)


@pytest.mark.parametrize("text,value", [("yes", True), ("On", True), ("1", True), ("true", True),
                                        ("no", False), ("OFF", False), ("0", False), ("false", False)])
def test_booleans(text, value):
    assert config.parse_boolean(text) is value


def test_format_timespan():
    assert config.format_timespan(41) == "41s"
    assert config.format_timespan(125) == "2min 5s"
    assert config.format_timespan(3780) == "1h 3min"
    assert config.format_timespan(2.5) == "2.5s"
    assert config.format_timespan(math.inf) == "infinity"
    assert config.format_timespan(None) == ""


# ------------------------------------------------------------ credentials
def test_credentials_accumulate_and_each_step_gets_the_builders_and_its_own(conf):
    from buildunits import step as stepmod
    conf.builder("x", minimal("Credential=deploy-key\nCredential=npm_token deploy-key",
                              "Credential=pypi.token\n\n[Step other]\nCommand=true\nCredential=a\nCredential=\n"))
    cfg = conf.load()
    b = cfg.builders["x"]
    assert b.credentials == ["deploy-key", "npm_token", "deploy-key"]
    assert [s.credentials for s in b.steps] == [["pypi.token"], []]
    assert cfg.credentials_directory == "/etc/buildunits/credentials"
    plan = stepmod.plan(b, {"branch": "main", "revision": ""})
    assert [(p.name, p.credentials) for p in plan] == [
        ("checkout", ("deploy-key", "npm_token", "deploy-key")),
        ("build", ("deploy-key", "npm_token", "pypi.token")), ("other", ("deploy-key", "npm_token"))]
    assert plan[1].argv[1:] == ["--", "/bin/sh", "-c", "make"]
    assert os.path.basename(plan[1].argv[0]) == "buildunits-mask" and os.access(plan[1].argv[0], os.X_OK)
    b.credentials = []
    assert stepmod.plan(b, {})[2].argv == ["/bin/sh", "-c", "true"]     # nothing to mask: no filter


@pytest.mark.parametrize("name", ["../etc/shadow", "a/b", ".", "..", ".hidden", "-x", "x" * 65, "star*name", "\u00e9t\u00e9"])
def test_a_bad_credential_name_is_an_error_at_its_line(conf, name):
    p = conf.builder("x", minimal(extra_step="Credential=ok %s\n" % name))
    e = conf.errors()
    [problem] = e.problems
    assert str(problem).startswith("%s:6: [Step build] Credential=: credential name " % p), str(problem)


def test_credentials_directory_is_an_absolute_path(conf):
    conf.builder("x", minimal())
    conf.write("buildunits.conf", "[Daemons]\nCredentialsDirectory=/srv/creds/\n")
    assert conf.load().credentials_directory == "/srv/creds"
    p = conf.write("buildunits.conf", "[Daemons]\nCredentialsDirectory=creds\n")
    [problem] = conf.errors().problems
    assert str(problem) == "%s:2: [Daemons] CredentialsDirectory=: not an absolute path: 'creds'" % p


@pytest.mark.parametrize("assignment, why", [
    ("GITHUB_TOKEN=abc123zz", "its name says so"),
    ("DB_Password=hunter2", "its name says so"),
    ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI", "its name says so"),
    ("MY_API_KEY=10203040", "its name says so"),
    ("PUSH=ghp_16C7e42F292c6912E7710c838347Ae178B4a", "its value has the shape of a known token"),
    ("URL_PART=github_pat_11ABCDEFG0abcdefghijkl", "its value has the shape of a known token"),
    ("GL=glpat-abcdefghij0123456789", "its value has the shape of a known token"),
    ("HOOK=xoxb-123456789012-abcdefghijkl", "its value has the shape of a known token"),
    ("AWS_ID=AKIAIOSFODNN7EXAMPLE", "its value has the shape of a known token"),
    ("SIGNING=dGhpcyBpcyBhIHZlcnkgc2VjcmV0IGtleQ0K8x3q", "its value is a long random-looking string"),
])
def test_a_secret_in_environment_is_a_warning_at_its_line_without_the_value(conf, assignment, why):
    p = conf.builder("x", minimal("Environment=A=1 %s" % assignment))
    cfg = conf.load()
    [w] = [str(x) for x in cfg.warnings]
    key, value = assignment.split("=", 1)
    assert w.startswith("%s:3: [Builder] Environment=: %s looks like a secret (%s)" % (p, key, why)), w
    assert "Credential=" in w and value not in w


@pytest.mark.parametrize("assignment", [
    "PATH=/usr/local/bin:/usr/bin:/bin", "CFLAGS=-O2 -g", "TOKEN_FILE=", "LANG=C.UTF-8",
    "PIN=0123456789abcdef0123456789abcdef01234567",             # a commit id
    "DIR=/var/lib/buildunits/work/some-long-worker-name/builder",
])
def test_ordinary_environment_is_no_warning(conf, assignment):
    conf.builder("x", minimal(extra_step='Environment="%s"\n' % assignment))
    assert conf.load().warnings == []


def test_checkconfig_shows_the_secret_warning(conf, capsys):
    from buildunits import cli
    conf.builder("x", minimal(extra_step="Environment=NPM_TOKEN=npm_abcdef\n"))
    assert cli.main(["--config-dir", conf.root, "--spool-dir", conf.root + "/spool", "--state-dir",
                     conf.root + "/state", "checkconfig"]) == 0
    err = capsys.readouterr().err
    assert "warning: %s:6: [Step build] Environment=: NPM_TOKEN looks like a secret" % os.path.join(
        conf.root, "builders", "x.builder") in err
    assert "npm_abcdef" not in err

# ---------------------------------------------------- systemd directives

def test_systemd_directives_are_kept_checked_and_in_file_order(conf):
    conf.builder("x", """\
        [Step build]
        Command=make
        LimitNOFILE=128
        CPUQuota=50%

        [Builder]
        Repository=/srv/git/x.git
        MemoryMax=2G
        ReadOnlyPaths=/srv/a
        """)
    conf.dropin("x", "50-more.conf", "[Builder]\nReadOnlyPaths=/srv/b\n[Step build]\nPrivateNetwork=on\n")
    b = conf.load().builders["x"]
    assert b.unit == [("MemoryMax", "2147483648"), ("ReadOnlyPaths", "/srv/a"), ("ReadOnlyPaths", "/srv/b")]
    assert b.steps[0].unit == [("LimitNOFILE", "128:128"), ("CPUQuota", "50%"), ("PrivateNetwork", "yes")]


@pytest.mark.parametrize("section, line, key, value, message", [
    ("Builder", 3, "MemoryMax", "lots", "not a size: 'lots'"),
    ("Builder", 3, "ProtectHome", "read-only", "never show more"),
    ("Step build", 6, "LimitNOFILE", "64:32", "the soft limit is above the hard one"),
    ("Step build", 6, "User", "root", "set by buildunits, not by a builder"),
    ("Builder", 3, "ProtectSystem", "no", "always strict"),
])
def test_bad_and_fixed_directives_name_file_line_and_key(conf, section, line, key, value, message):
    assignment = "%s=%s" % (key, value)
    p = conf.builder("x", minimal(assignment if section == "Builder" else "",
                                  assignment if section != "Builder" else ""))
    prob = one_problem(conf)
    assert (prob.path, prob.line, prob.section, prob.key) == (p, line, section, key)
    assert str(prob).startswith("%s:%d: [%s] %s=: " % (p, line, section, key)) and message in str(prob)


# ---------------------------------------------------------- WaterfallGroup=

def test_waterfall_group_names_the_builders_group(conf):
    conf.builder("a", minimal("WaterfallGroup=linux-gcc.12"))
    conf.builder("b", minimal("WaterfallGroup=linux\nWaterfallGroup="))
    conf.builder("c", minimal())
    cfg = conf.load()
    assert [cfg.builders[n].group for n in "abc"] == ["linux-gcc.12", "", ""]


@pytest.mark.parametrize("value", ["a b", "-x", ".hidden", "x/y", "x" * 65, "é", "<b>"])
def test_bad_waterfall_group_names_file_line_and_key(conf, value):
    p = conf.builder("x", minimal("WaterfallGroup=%s" % value))
    prob = one_problem(conf)
    assert (prob.path, prob.line, prob.section, prob.key) == (p, 3, "Builder", "WaterfallGroup")
    assert str(prob).startswith("%s:3: [Builder] WaterfallGroup=: " % p)
    assert repr(value) in prob.message and "group name" in prob.message
