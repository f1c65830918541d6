"""buildrecord.py: the build record's decisions, without a runner."""

import doctest

import pytest

from buildunits import buildrecord, changes, config, results

CHECKOUT = None     # the implicit checkout step has no config.Step


def step(**kw):
    return config.Step(name="test", command="make test", **kw)


class Planned:
    def __init__(self, name, command, description="", spec=None):
        self.name, self.command, self.description, self.spec = name, command, description, spec


def test_doctests():
    assert doctest.testmod(buildrecord).failed == 0


def test_new_record_is_running_with_every_step_pending_and_no_secret():
    req = {"id": "R1", "builder": "hello", "repository": "https://u:TOKEN@example.org/r.git",
           "branch": "main", "revision": "a" * 40, "reason": "change aaaa on main",
           "changes": [{"id": "c%d" % i, "revision": "%040x" % i, "message": "x" * 100000}
                       for i in range(changes.MAX_DETAILED + 5)]}
    plan = [Planned("checkout", "git ...", "fetch"), Planned("test", "make test", "run the tests", step())]
    rec = buildrecord.new_record(req, "hello", 7, "w1", plan, now=1000.0)
    assert (rec["builder"], rec["number"], rec["worker"], rec["request_id"]) == ("hello", 7, "w1", "R1")
    assert (rec["state"], rec["result"], rec["started"], rec["finished"]) == ("running", None, 1000.0, None)
    assert (rec["branch"], rec["revision"]) == ("main", "a" * 40)
    assert [(s["name"], s["state"], s["command"], s["description"]) for s in rec["steps"]] == [
        ("checkout", "pending", "git ...", "fetch"), ("test", "pending", "make test", "run the tests")]
    assert "TOKEN" not in repr(rec)
    carried = rec["request"]["changes"]       # bounded as a request is (changes.py)
    assert all(len(c.get("message", "")) < changes.MAX_MESSAGE_CHARS + 100 for c in carried)
    assert [c.get("details_omitted") is True for c in carried] == [True] * 5 + [False] * changes.MAX_DETAILED
    assert req["repository"].startswith("https://u:TOKEN@")   # the request itself is not changed


@pytest.mark.parametrize("code, cancelled, timed_out, result, summary", [
    (0, None, None, results.SUCCESS, ""),
    (1, None, None, results.FAILURE, "exit status 1"),
    (255, None, None, results.FAILURE, "exit status 255"),
    (-9, None, None, results.FAILURE, "killed by signal 9"),
    (-15, None, "timed out after 1min", results.FAILURE, "timed out after 1min"),
    (0, None, "timed out: no output for 5s", results.FAILURE, "timed out: no output for 5s"),
    (-15, "cancelled by alice", None, results.CANCELLED, "cancelled by alice"),
    (0, "cancelled by alice", "timed out after 1s", results.CANCELLED, "cancelled by alice"),
])
def test_step_ended(code, cancelled, timed_out, result, summary):
    out = buildrecord.step_ended(code, cancelled, timed_out)
    assert (out["result"], out["summary"]) == (result, summary)
    assert out.get("timed_out", False) == bool(timed_out and not cancelled)


@pytest.mark.parametrize("spec, result, contribution, halts", [
    (CHECKOUT, results.SUCCESS, results.SUCCESS, False),
    (CHECKOUT, results.FAILURE, results.FAILURE, True),
    (step(), results.FAILURE, results.FAILURE, False),
    (step(halt_on_failure=True), results.FAILURE, results.FAILURE, True),
    (step(flunk_on_failure=False), results.FAILURE, results.SUCCESS, False),
    (step(flunk_on_failure=False, warn_on_failure=True), results.FAILURE, results.WARNINGS, False),
    (step(flunk_on_failure=True, warn_on_failure=True), results.FAILURE, results.FAILURE, False),
    (step(halt_on_failure=True), results.CANCELLED, results.CANCELLED, True),
    (step(halt_on_failure=True), results.SUCCESS, results.SUCCESS, False),
])
def test_contribution_and_halting(spec, result, contribution, halts):
    assert buildrecord.contribution(spec, result) == contribution
    assert buildrecord.halts(spec, result) is halts


@pytest.mark.parametrize("spec, halted, cancelled, runs", [
    (step(), False, None, True),
    (step(), True, None, False),
    (step(always_run=True), True, None, True),
    (step(always_run=True), False, "cancelled by bob", False),
    (CHECKOUT, True, None, False),
])
def test_which_steps_run(spec, halted, cancelled, runs):
    assert buildrecord.runs(spec, halted, cancelled) is runs


@pytest.mark.parametrize("contributions, cancelled, result", [
    ([], None, results.SUCCESS),
    ([results.SUCCESS, results.WARNINGS], None, results.WARNINGS),
    ([results.WARNINGS, results.FAILURE, results.SUCCESS], None, results.FAILURE),
    ([results.FAILURE, results.EXCEPTION], None, results.EXCEPTION),
    ([results.SUCCESS], "cancelled by carol", results.CANCELLED),
])
def test_the_build_result_is_the_worst_contribution(contributions, cancelled, result):
    rec = buildrecord.finished({"state": "running", "reason": ""}, contributions, cancelled, now=9.0)
    assert (rec["state"], rec["result"], rec["finished"]) == ("finished", result, 9.0)
    assert rec["reason"] == (cancelled or "")


def test_step_exception():
    srec = {"state": "running", "result": None}
    assert buildrecord.step_exception(srec, "cannot start: No such file", 3.0) is srec
    assert srec == {"state": "finished", "result": results.EXCEPTION, "finished": 3.0,
                    "summary": "cannot start: No such file"}


def test_interrupted_keeps_what_ended_and_skips_what_never_started():
    rec = {"state": "running", "steps": [
        {"state": "finished", "result": results.FAILURE}, {"state": "running"}, {"state": "pending"},
        "not a step"]}
    buildrecord.interrupted(rec, "cancelled by dave", results.CANCELLED, now=5.0, summary="cancelled")
    assert (rec["state"], rec["result"], rec["reason"], rec["finished"]) == (
        "finished", results.CANCELLED, "cancelled by dave", 5.0)
    assert rec["steps"][0] == {"state": "finished", "result": results.FAILURE}
    assert rec["steps"][1] == {"state": "finished", "result": results.CANCELLED, "finished": 5.0,
                               "summary": "cancelled"}
    assert rec["steps"][2] == {"state": "finished", "result": results.SKIPPED}


def test_interrupted_with_the_defaults_fsck_uses():
    rec = buildrecord.interrupted({"state": "running", "steps": [{"state": "running"}]}, "lost")
    assert (rec["result"], rec["steps"][0]["summary"], rec["finished"]) == (results.RETRY, "interrupted", 0.0)


MiB = 1 << 20


@pytest.mark.parametrize("measured, verdict", [
    ([], None),
    ([("big", 60 * MiB, 100 * MiB)], "big"),
    ([("big", 50 * MiB, 100 * MiB)], "big"),            # half the room is enough
    ([("small", 10 * MiB, 100 * MiB)], None),           # someone else filled it
    ([("late", 0, 0), ("big", 80 * MiB, 100 * MiB)], "big"),   # the next step started on a full disk
    ([("late", 0, -1), ("small", 1, 100 * MiB)], None),  # unknown room, and little written
    ([("late", 0, 0)], None),                            # full before it started: not its doing
])
def test_filled_by_step(measured, verdict):
    why = buildrecord.filled_by_step(measured)
    if verdict is None:
        assert why is None
    else:
        assert why.startswith("the disk filled up during step %s (ENOSPC)" % verdict)
        assert "MiB" in why
