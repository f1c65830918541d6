"""Build numbers: what one is, and how one is taken for good.

Build numbers never repeat, even across crashes: a number is taken by
mkdir(builds/BUILDER/NUMBER), which is atomic and exclusive, and made
durable (fsync of builds/BUILDER/) before it is used.  next.json is only a
hint of where to start trying; if it is lost or behind, the mkdir loop
still skips every number taken.  A crash after the mkdir and before
build.json is written leaves an empty directory: a number used by no build
(a gap, never a repeat), which the pages skip and `buildunits fsck` lists.

A build number is an int with 1 <= N < 2**32 (the D-Bus signals carry it as
uint32), and only its canonical decimal name (no leading zero, ASCII digits)
is a build directory.  next.json is read by State.read_counter() alone: a "next"
that is not such a number (true, 2**40, "7") is treated as missing, and the
directory listed.  State.allocate_number() refuses to go past 2**32 - 1.
"""

import os
import re

from . import fsutil

# Build numbers are carried as D-Bus uint32 ("u" in BuildStarted and the
# others): 1 <= NUMBER < 2**32.  The counter's "next" is held to the same.
MAX_BUILD_NUMBER = 2 ** 32 - 1
_NUMBER_RE = re.compile(r"[1-9][0-9]{0,9}")   # canonical decimal, ASCII digits only


def valid_number(n):
    """True if N is a build number: an int (not a bool), 1 <= N < 2**32."""
    return isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_BUILD_NUMBER


def parse_number(name):
    """The build number a directory or file name NAME spells, or None: only
    canonical decimal (no sign, no leading zero, no other digits than 0-9)."""
    if isinstance(name, str) and _NUMBER_RE.fullmatch(name):
        n = int(name)
        if valid_number(n):
            return n
    return None


class NumbersExhausted(Exception):
    """A builder has used every build number below 2**32."""


def allocate(state, builder):
    """Take the next build number of BUILDER in STATE for good: the first
    free one from the hint (or past the highest build), by mkdir, fsync'd
    before it is returned.  Raises NumbersExhausted past 2**32 - 1."""
    fsutil.makedirs(state.builder_dir(builder))
    n = state.read_counter(builder)
    if n is None:
        nums = state.build_numbers(builder)
        n = (nums[-1] + 1) if nums else 1
    while True:
        if n > MAX_BUILD_NUMBER:
            raise NumbersExhausted("%s has used every build number up to %d (2^32 - 1, the largest "
                                   "D-Bus signals carry); move its history away to start again"
                                   % (builder, MAX_BUILD_NUMBER))
        try:
            os.mkdir(state.build_dir(builder, n))
            break
        except FileExistsError:
            n += 1
    fsutil.fsync_dir(state.builder_dir(builder))  # the number is now taken for good
    state.write_counter(builder, n + 1)
    return n


def recent(state, builder, count):
    """The highest COUNT build numbers of BUILDER, ascending, without
    listing its directory (which grows with history): counted down from
    the next-number hint, and up past it (the hint is written after the
    mkdir, so a crash can leave it behind).  Lists the directory only
    when the hint is missing or unreadable."""
    nxt = state.read_counter(builder)
    if nxt is None:
        return state.build_numbers(builder)[-count:]
    top = nxt - 1
    while top < MAX_BUILD_NUMBER and os.path.isdir(state.build_dir(builder, top + 1)):
        top += 1
    # Twice COUNT candidates: room for the gaps a crash can leave.
    found = [n for n in range(top, max(0, top - 2 * count), -1) if os.path.isdir(state.build_dir(builder, n))]
    return sorted(found[:count])
