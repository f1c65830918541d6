"""Waiting for an event: poll for it, with a deadline, never a fixed sleep.

One wait_for for the tests, the benchmarks and the demo.  Timeouts can be
stretched on a slow machine with BUILDUNITS_TEST_TIMEOUT_SCALE (a factor,
default 1).
"""

import os
import time

TIMEOUT_SCALE = float(os.environ.get("BUILDUNITS_TEST_TIMEOUT_SCALE", "1") or 1)
POLL_INTERVAL = 0.02


def scaled(timeout):
    return timeout * TIMEOUT_SCALE


class WaitTimeout(AssertionError):
    """A wait_for() deadline passed; the message names what was awaited."""


def wait_for(predicate, timeout=10.0, what=None, interval=POLL_INTERVAL, describe=None):
    """Poll PREDICATE() until it returns something true; return that value.

    Raises WaitTimeout naming WHAT (default: the predicate's name) after
    TIMEOUT seconds (times BUILDUNITS_TEST_TIMEOUT_SCALE).  DESCRIBE, a
    callable returning text, adds what was seen instead to the message.
    """
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            # One last look: the event may have come during the final interval.
            value = predicate()
            if value:
                return value
            msg = "timed out after %.1fs waiting for %s" % (
                timeout, what or getattr(predicate, "__name__", repr(predicate)))
            if describe is not None:
                try:
                    msg += "\n" + describe()
                except Exception as e:  # the description must not hide the timeout
                    msg += "\n(describe failed: %s)" % e
            raise WaitTimeout(msg)
        time.sleep(interval)
