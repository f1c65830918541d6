"""Timer: a GLib timer for any number of seconds.

GLib's timeouts count milliseconds in 32 bits (about 49.7 days); a longer
one overflows.  Every timer whose delay comes from the configuration or a
computation is a Timer, which arms at most a day at a time and re-arms
until its real deadline (docs/design.md, "Timers of any length").
"""

import math
import time

from gi.repository import GLib

# GLib's timeouts take a guint of milliseconds, at most about 49.7 days (and
# timeout_add_seconds a guint of seconds); a longer one overflows.  Timer arms
# at most this long at a time and re-arms until its real deadline.
TIMER_MAX_ARM_SEC = 86400.0


class Timer:
    """A GLib timer for any number of seconds: call CALLBACK(*ARGS) once
    SECONDS have passed on the monotonic clock, and again every SECONDS for
    as long as it returns true (as GLib.timeout_add does).

    The GLib timer under it is armed for at most TIMER_MAX_ARM_SEC (or
    MAX_ARM_SEC) at a time and re-armed until the deadline, so a time-out of 60 days (or
    a thousand years) waits that long instead of overflowing.  A deadline
    that is not finite (infinity, NaN) never fires.  remove() cancels it."""

    def __init__(self, seconds, callback, *args, max_arm_sec=None):
        self.seconds = seconds
        self._callback = callback
        self._args = args
        self._max_arm = max_arm_sec or TIMER_MAX_ARM_SEC
        self._source = None
        self._removed = False
        self.arms = 0          # how many GLib timers were armed (for tests)
        self._start()

    def _start(self):
        s = float(self.seconds)
        self._deadline = math.inf if math.isnan(s) else time.monotonic() + max(0.0, s)
        self._arm()

    def _arm(self):
        left = self._deadline - time.monotonic()
        if left == math.inf:
            return
        # One millisecond more: GLib measures from the start of this main
        # loop iteration, so it may still fire a little early; _fire checks.
        self._source = GLib.timeout_add(int(min(self._max_arm, max(0.0, left)) * 1000) + 1, self._fire)
        self.arms += 1

    def _fire(self):
        self._source = None
        if time.monotonic() < self._deadline:
            self._arm()
        elif self._callback(*self._args) and not self._removed:
            self._start()
        return False

    def remove(self):
        self._removed = True
        if self._source is not None:
            GLib.source_remove(self._source)
            self._source = None


def remove_source(src):
    """Remove a GLib source id or a Timer."""
    if isinstance(src, Timer):
        src.remove()
    else:
        GLib.source_remove(src)
