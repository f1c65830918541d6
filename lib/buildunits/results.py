"""The result words, shared by records, pages, logs and scripts.

Buildbot's seven, in the order of how bad they are when combined: the
result of a build is the worst of what its steps contributed.

>>> worst(["success", "warnings", "skipped"])
'warnings'
"""

SUCCESS = "success"
WARNINGS = "warnings"
FAILURE = "failure"
SKIPPED = "skipped"
EXCEPTION = "exception"
RETRY = "retry"
CANCELLED = "cancelled"

# Also a build state, never a final result.
RUNNING = "running"
QUEUED = "queued"

RESULTS = (SUCCESS, WARNINGS, FAILURE, SKIPPED, EXCEPTION, RETRY, CANCELLED)

_RANK = {SKIPPED: 0, SUCCESS: 1, WARNINGS: 2, FAILURE: 3, EXCEPTION: 4, RETRY: 5, CANCELLED: 6}


def worst(results, default=SUCCESS):
    """The combined result of RESULTS (an iterable of result words)."""
    best = None
    for r in results:
        if best is None or _RANK[r] > _RANK[best]:
            best = r
    return default if best is None else best


def is_result(word):
    return word in _RANK
