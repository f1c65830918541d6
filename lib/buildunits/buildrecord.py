"""The build record's decisions, as pure functions.

What a new build record holds, what a step's end means (its result and
summary, what it does to the build's result, whether the build halts),
the build's result, a build finished as interrupted, and the verdict
that a step filled the disk itself.  The runner (which runs builds) and
`buildunits fsck --repair` (which finds one that nobody runs) both end a
build that cannot go on; they share the one definition of "finished as
interrupted" here, so the record both write is the same.

Nothing here does I/O or reads the clock: the caller passes NOW (and
what it measured), and writes the record.  A step's plan (PLAN below) is
anything with `name`, `command`, `description` and `spec` (the
config.Step, or None for the implicit checkout step).
"""

from . import changes, redact, results


def new_record(req, builder, number, worker, plan, now):
    """The first record of build BUILDER #NUMBER of request REQ on WORKER:
    running, every step of PLAN pending.

    >>> class P: name, command, description, spec = "test", "make", "", None
    >>> r = new_record({"id": "R", "branch": "main"}, "hello", 4, "w1", [P], 10.0)
    >>> r["state"], r["branch"], [s["state"] for s in r["steps"]]
    ('running', 'main', ['pending'])
    """
    req = redact.record(req)   # a request from an older release may hold the real URL
    # A request from an older scheduler may carry its changes whole.
    req = changes.bound_request(req)
    out = {"builder": builder, "number": number, "request_id": req.get("id"), "request": req,
           "worker": worker, "state": "running", "result": None, "reason": "",
           "started": now, "finished": None, "repository": req.get("repository", ""),
           "branch": req.get("branch", ""), "revision": req.get("revision", ""),
           "steps": [{"name": s.name, "description": s.description, "command": s.command,
                      "state": "pending", "result": None, "started": None, "finished": None,
                      "log": None, "exit_status": None, "summary": "", "timed_out": False}
                     for s in plan]}
    up = req.get("upstream")
    if isinstance(up, dict) and isinstance(up.get("builder"), str) and isinstance(up.get("number"), int):
        # The build that started this one (After=, Trigger=), for the pages.
        out["upstream"] = {"builder": up["builder"], "number": up["number"]}
    return out


def step_ended(code, cancelled=None, timed_out=None):
    """The fields of a step's record for its end: exit status CODE
    (-SIGNAL if killed), stopped for CANCELLED or TIMED_OUT (reasons).

    >>> step_ended(2)["summary"], step_ended(-9)["summary"], step_ended(0)["result"]
    ('exit status 2', 'killed by signal 9', 'success')
    >>> step_ended(-15, timed_out="timed out after 1min")["timed_out"]
    True
    """
    if cancelled:
        return {"result": results.CANCELLED, "summary": cancelled}
    if timed_out:
        return {"result": results.FAILURE, "timed_out": True, "summary": timed_out}
    if code == 0:
        return {"result": results.SUCCESS, "summary": ""}
    return {"result": results.FAILURE,
            "summary": ("killed by signal %d" % -code) if code < 0 else "exit status %d" % code}


def contribution(spec, result):
    """What a step's RESULT does to the build's result (SPEC: its
    config.Step; None, the checkout, flunks the build)."""
    if result in (results.SUCCESS, results.CANCELLED):
        return result
    if spec is None or spec.flunk_on_failure:
        return results.FAILURE
    if spec.warn_on_failure:
        return results.WARNINGS
    return results.SUCCESS


def halts(spec, result):
    """True if a step ending with RESULT stops the steps after it (but
    those with AlwaysRun=)."""
    return result != results.SUCCESS and (spec is None or spec.halt_on_failure)


def runs(spec, halted, cancelled):
    """True if a step is to run, given that the build was HALTED or
    CANCELLED before it; False: it is skipped."""
    return not cancelled and not (halted and not (spec and spec.always_run))


def step_exception(srec, why, now):
    """SREC (a step's record) ended as an exception, for WHY: the step
    could not be run.  Changed in place and returned."""
    srec.update(state="finished", result=results.EXCEPTION, finished=now, summary=why)
    return srec


def finished(rec, contributions, cancelled, now):
    """REC made final: its result the worst of the steps' CONTRIBUTIONS,
    or cancelled (CANCELLED is then the reason).

    >>> finished({"state": "running"}, ["success", "warnings"], None, 5.0)["result"]
    'warnings'
    """
    rec.update(state="finished", result=results.worst(contributions), finished=now)
    if cancelled:
        rec.update(result=results.CANCELLED, reason=cancelled)
    return rec


def interrupted(rec, reason, result=results.RETRY, now=0.0, summary="interrupted"):
    """REC (a running build record, changed in place and returned) made
    final with RESULT and REASON: the running step gets RESULT and
    SUMMARY, steps that never started are skipped.

    >>> rec = {"state": "running", "steps": [{"state": "finished", "result": "success"},
    ...        {"state": "running"}, {"state": "pending"}]}
    >>> r = interrupted(rec, "runner stopped", now=7.0)
    >>> r["state"], r["result"], [s["result"] for s in r["steps"]]
    ('finished', 'retry', ['success', 'retry', 'skipped'])
    """
    for s in rec.get("steps", []):
        if not isinstance(s, dict):
            continue
        if s.get("state") == "running":
            s.update(state="finished", result=result, finished=now, summary=summary)
        elif s.get("state") == "pending":
            s.update(state="finished", result=results.SKIPPED)
    rec.update(state="finished", result=result, reason=reason, finished=now)
    return rec


def filled_by_step(measured):
    """Why the build itself filled the disk, or None if it did not.

    MEASURED: (step name, bytes it wrote, bytes free when it started), for
    the last steps that started, newest first.  Asked when a write of the
    build's record failed with ENOSPC.  "The step filled it", rather than
    "it was full already", when a step that started with room (FREE > 0)
    wrote at least half of it itself.  A disk full before the step started,
    or filled by someone else while it wrote little, is not the build's
    doing: the build is then interrupted and retried.

    >>> filled_by_step([("big", 600, 1000)])
    'the disk filled up during step big (ENOSPC): it wrote 600 bytes where 1000 bytes were free when it started'
    >>> filled_by_step([("next", 0, 0), ("small", 10, 1000)]) is None
    True
    """
    for name, written, free in measured:
        if free <= 0:
            continue       # started on a full disk: not its doing
        if written * 2 >= free:
            return ("the disk filled up during step %s (ENOSPC): it wrote %s where %s were free when "
                    "it started" % (name, size(written), size(free)))
    return None


def size(n):
    """N bytes for people.

    >>> size(512), size(1536), size(3 << 30)
    ('512 bytes', '1.5 KiB', '3.0 GiB')
    """
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return "%d %s" % (n, unit) if unit == "bytes" else "%.1f %s" % (n, unit)
        n /= 1024.0
