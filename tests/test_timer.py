"""timer.Timer: GLib timers for any number of seconds.

GLib's timeouts take a 32-bit count of milliseconds (about 49.7 days);
Timer arms at most TIMER_MAX_ARM_SEC at a time and re-arms until the real
deadline.  These tests shrink that clamp so that re-arming shows in a
fraction of a second.
"""

import math
import time

from gi.repository import GLib

import harness
from buildunits import daemon, timer


def run_loop(until, timeout=10.0):
    """Run a GLib main loop until UNTIL() is true (checked as it runs), with a deadline."""
    loop = GLib.MainLoop()
    deadline = time.monotonic() + harness.scaled(timeout)

    def check():
        if until() or time.monotonic() >= deadline:
            loop.quit()
            return False
        return True
    GLib.timeout_add(5, check)
    loop.run()
    assert until(), "the main loop's deadline passed first"


def test_a_clamped_timer_rearms_until_its_deadline_rather_than_firing_early():
    fired = []
    start = time.monotonic()
    t = timer.Timer(0.3, lambda tag: fired.append((tag, time.monotonic())), "x", max_arm_sec=0.05)
    run_loop(lambda: fired)
    assert [tag for tag, _ in fired] == ["x"]
    assert fired[0][1] - start >= 0.3
    # Every GLib timer under it was at most 50ms: it took six at least.
    assert t.arms >= 6


def test_a_repeating_timer_runs_again_while_the_callback_says_so():
    fired = []

    def cb():
        fired.append(time.monotonic())
        return len(fired) < 3
    start = time.monotonic()
    timer.Timer(0.1, cb, max_arm_sec=0.03)
    run_loop(lambda: len(fired) >= 3)
    assert fired[0] - start >= 0.1
    assert all(b - a >= 0.1 for a, b in zip(fired, fired[1:]))
    # Done: nothing more after it returned False.
    n = len(fired)
    later = []
    timer.Timer(0.3, lambda: later.append(1))
    run_loop(lambda: later)
    assert len(fired) == n == 3


def test_removed_timers_never_fire_even_from_their_own_callback():
    fired, other = [], []
    t = timer.Timer(0.05, lambda: fired.append(1) or t.remove() or True)
    removed = timer.Timer(0.05, lambda: other.append(1))
    removed.remove()
    done = []
    timer.Timer(0.3, lambda: done.append(1))
    run_loop(lambda: done)
    assert fired == [1] and other == []


def test_spans_beyond_glibs_32_bit_milliseconds_arm_without_overflow():
    # 60 days, a thousand years and infinity: none overflows, none fires now.
    fired = []
    timers = [timer.Timer(s, lambda: fired.append(s)) for s in (60 * 86400, 1000 * 31557600, 1e300, math.inf)]
    done = []
    timer.Timer(0.05, lambda: done.append(1))
    run_loop(lambda: done)
    assert fired == []
    for t in timers:
        t.remove()


def test_the_daemons_name_for_it_is_the_same_class():
    assert daemon.Timer is timer.Timer and daemon.remove_source is timer.remove_source
