"""The build record's decisions, as pure functions.

The runner (which runs builds) and `buildunits fsck --repair` (which
finds one that nobody runs) both end a build that cannot go on; they
share this one definition of "finished as interrupted", so the record
both write is the same.  Nothing here does I/O or reads the clock: the
caller passes NOW and writes the record.
"""

from . import results


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
