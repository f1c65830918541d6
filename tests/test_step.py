"""step.py: a build's plan, a step's environment, and its time limits."""

import os
import time

from gi.repository import GLib

from buildunits import config, step


def builder(**kw):
    kw.setdefault("steps", [config.Step(name="build", command="make"),
                            config.Step(name="test", command="make test", description="tests",
                                        working_directory="src", environment={"V": "step"})])
    return config.Builder(name="hello", path="/dev/null", environment={"V": "builder", "W": "builder"}, **kw)


REC = {"builder": "hello", "number": 4, "revision": "a" * 40, "branch": "main",
       "repository": "https://u:***@example.org/r.git"}


def test_plan_puts_checkout_first_when_there_is_a_repository():
    plan = step.plan(builder(repository="https://u:T@example.org/r.git"), {"branch": "dev", "revision": ""})
    assert [(s.index, s.name) for s in plan] == [(1, "checkout"), (2, "build"), (3, "test")]
    assert plan[0].spec is None and "refs/heads/dev" in plan[0].command and "u:T@" not in plan[0].command
    assert plan[2].description == "tests" and plan[2].argv == ["/bin/sh", "-c", "make test"]
    assert [s.name for s in step.plan(builder(), {})] == ["build", "test"]
    assert [s.name for s in step.plan(builder(repository="x", checkout=False), {})] == ["build", "test"]


def test_environment():
    b = builder(repository="https://u:T@example.org/r.git")
    st = step.plan(b, {})[2]
    base = {"PATH": "/bin", "NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "1", "V": "runner"}
    env = step.environment(base, b, st, REC, "/w/hello", "w1")
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env and env["PATH"] == "/bin"
    assert (env["V"], env["W"]) == ("step", "builder")
    assert env["BUILDUNITS_REPOSITORY"] == "https://u:T@example.org/r.git"   # the real one, from the config
    assert (env["BUILDUNITS_BUILD"], env["BUILDUNITS_STEP"], env["BUILDUNITS_WORKER"]) == ("4", "test", "w1")
    assert step.working_directory(st, "/w/hello") == "/w/hello/src"
    assert step.working_directory(step.plan(b, {})[1], "/w/hello") == "/w/hello"


def test_the_build_properties_are_in_the_environment_and_nothing_else_of_them():
    b = builder()
    b.environment["BUILDUNITS_PROPERTY_color"] = "from Environment="
    st = step.plan(b, {})[0]
    rec = dict(REC, request={"properties": {"color": "blue", "nl": "a\nb", "a-b": "c", "n": 1, "z": "a\0b"}})
    env = step.environment({"PATH": "/bin"}, b, st, rec, "/w/hello", "w1")
    props = {k: v for k, v in env.items() if k.startswith("BUILDUNITS_PROPERTY_")}
    # A name that cannot be a variable's, or a value that is not text an
    # environment can hold (a record written by hand), is left out.
    assert props == {"BUILDUNITS_PROPERTY_color": "blue", "BUILDUNITS_PROPERTY_nl": "a\nb"}
    for old in (REC, dict(REC, request=None), dict(REC, request={"properties": ["x"]})):
        env = step.environment({}, builder(), st, old, "/w/hello", "w1")
        assert not [k for k in env if k.startswith("BUILDUNITS_PROPERTY_")]


def spin(seconds, until):
    ctx = GLib.MainContext.default()
    deadline = time.monotonic() + seconds
    while not until() and time.monotonic() < deadline:
        ctx.iteration(False) or time.sleep(0.01)


def test_watch_idle_timeout_and_output_that_resets_it(tmp_path):
    fd = os.open(str(tmp_path / "log"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fired = []
        w = step.Watch(step.Planned(1, "t", "true", config.Step(name="t", command="true", timeout_idle=0.6)),
                       fd, fired.append)
        start = time.monotonic()
        while time.monotonic() - start < 1.0:         # output keeps it alive
            os.write(fd, b"x")
            spin(0.1, lambda: fired)
        assert fired == []
        spin(5, lambda: fired)
        assert fired == ["timed out: no output for 600ms"]
        w.cancel()
    finally:
        os.close(fd)


def test_watch_timeout_fires_once_and_cancel_stops_it(tmp_path):
    fd = os.open(str(tmp_path / "log"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fired = []
        step.Watch(step.Planned(1, "t", "true", config.Step(name="t", command="true", timeout=0.2)),
                   fd, fired.append)
        spin(1, lambda: False)
        assert fired == ["timed out after 200ms"]
        quiet = []
        w = step.Watch(step.Planned(1, "t", "true", config.Step(name="t", command="true", timeout=0.2,
                                                                timeout_idle=0.2)), fd, quiet.append)
        w.cancel()
        spin(0.6, lambda: False)
        assert quiet == []
    finally:
        os.close(fd)
