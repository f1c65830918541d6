#!/usr/bin/python3
"""site_links_bench: what one downstream build adds to the site's passes.

    /usr/bin/python3 bench/site_links_bench.py      (RUNS=N builds per kind, default 200)

A downstream build (After=, or a Trigger= step) makes the site write its
upstream's page again: when it starts, and when it ends (site.py, links
between builds).  Measured here with the site's engine (site.Site, as
htmlgen runs it) over builders up and down, up with 200 finished builds
rendered: RUNS builds of down, each a pass when it starts (running) and
one when it finishes, either naming no upstream, or naming a different
finished build of up each (each a first link).  Figures: the CPU of this
process (time.process_time) per build (its two passes), median and mean,
and the files the passes wrote; the difference is what the link costs.
Printed, never judged.
"""

import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from buildunits import site  # noqa: E402
from buildunits.spool import Spool  # noqa: E402
from buildunits.state import State  # noqa: E402
from test_site import T0, finish, make_build, make_cfg  # noqa: E402

RUNS = int(os.environ.get("RUNS") or 200)
UPSTREAMS = 200


def measure(tmp, linked):
    st, sp = State(os.path.join(tmp, "state")), Spool(os.path.join(tmp, "spool"))
    st.ensure()
    sp.ensure()
    cfg = make_cfg(_Path(tmp), names=("up", "down"))
    for i in range(UPSTREAMS):
        make_build(st, "up", started=T0 + i)
    s = site.Site(os.path.join(tmp, "site"), st, sp, cfg, workers=1)
    s.rebuild(force=True)
    cpu, files = [], 0
    for i in range(RUNS):
        extra = {"upstream": {"builder": "up", "number": i % UPSTREAMS + 1}} if linked else None
        n = make_build(st, "down", started=T0 + 1000 + i, running_step=("test", "x\n"), extra=extra)
        t = time.process_time()
        files += s.update([("down", n)])
        took = time.process_time() - t
        finish(st, "down", n, at=T0 + 1000 + i + 1)     # the runner's write: not measured
        t = time.process_time()
        files += s.update([("down", n)])
        cpu.append(took + time.process_time() - t)      # both passes
    return cpu, files


class _Path(str):
    def __truediv__(self, other):
        return os.path.join(self, other)


def main():
    out = {}
    for linked in (False, True):
        with tempfile.TemporaryDirectory(prefix="buildunits-links-") as tmp:
            out[linked] = measure(tmp, linked)
    for linked, (cpu, files) in out.items():
        print("%-26s median %6.2f ms  mean %6.2f ms  files written per build %.1f" % (
            "downstream, upstream named" if linked else "no upstream named",
            statistics.median(cpu) * 1e3, statistics.mean(cpu) * 1e3, files / RUNS))
    base, link = out[False][0], out[True][0]
    print("one downstream build adds  median %.2f ms, mean %.2f ms of CPU to the passes of its start and end"
          % ((statistics.median(link) - statistics.median(base)) * 1e3,
             (statistics.mean(link) - statistics.mean(base)) * 1e3))


if __name__ == "__main__":
    main()
