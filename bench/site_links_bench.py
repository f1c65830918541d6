#!/usr/bin/python3
"""site_links_bench: what one downstream build adds to the site's passes.

    /usr/bin/python3 bench/site_links_bench.py      (RUNS=N builds per kind, default 200)

A downstream build (After=, or a Trigger= step) makes the site write its
upstream's page again: when it starts, and when it ends (site.py, links
between builds).  Measured here with the site's engine (site.Site, as
htmlgen runs it) over builders up, down and solo, up with 200 finished
builds rendered: RUNS builds of solo (naming no upstream) and of down
(naming a different finished build of up each: each a first link),
alternating, each a pass when it starts (running) and one when it
finishes.  Figures: the CPU of this process (time.process_time) per
build (its two passes), median and mean, the files the passes wrote,
and the CPU inside the linking itself (Site._link, which writes the
upstream's .links and page): what a downstream build adds.
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


def measure(tmp):
    """RUNS builds of solo (naming no upstream) and of down (naming a
    different build of up each), alternating in one site: CPU per build
    (its two passes) of each, the CPU inside the linking itself
    (Site._link, which writes the linked pages), and the files written."""
    st, sp = State(os.path.join(tmp, "state")), Spool(os.path.join(tmp, "spool"))
    st.ensure()
    sp.ensure()
    cfg = make_cfg(_Path(tmp), names=("up", "down", "solo"))
    for i in range(UPSTREAMS):
        make_build(st, "up", started=T0 + i)
    s = site.Site(os.path.join(tmp, "site"), st, sp, cfg, workers=1)
    s.rebuild(force=True)
    linking = [0.0]
    real = s._link

    def timed(b, n, view):
        t = time.process_time()
        try:
            return real(b, n, view)
        finally:
            linking[0] += time.process_time() - t
    s._link = timed
    cpu = {"solo": [], "down": []}
    files = dict.fromkeys(cpu, 0)
    for i in range(RUNS):
        for name in ("solo", "down"):
            extra = {"upstream": {"builder": "up", "number": i % UPSTREAMS + 1}} if name == "down" else None
            n = make_build(st, name, started=T0 + 1000 + i, running_step=("test", "x\n"), extra=extra)
            t = time.process_time()
            files[name] += s.update([(name, n)])
            took = time.process_time() - t
            finish(st, name, n, at=T0 + 1000 + i + 1)     # the runner's write: not measured
            t = time.process_time()
            files[name] += s.update([(name, n)])
            cpu[name].append(took + time.process_time() - t)
    return cpu, files, linking[0]


class _Path(str):
    def __truediv__(self, other):
        return os.path.join(self, other)


def main():
    with tempfile.TemporaryDirectory(prefix="buildunits-links-") as tmp:
        cpu, files, linking = measure(tmp)
    for name, what in (("solo", "no upstream named"), ("down", "downstream, upstream named")):
        print("%-26s median %6.2f ms  mean %6.2f ms  files written per build %.1f" % (
            what, statistics.median(cpu[name]) * 1e3, statistics.mean(cpu[name]) * 1e3, files[name] / RUNS))
    print("linking (Site._link: the upstream's .links and page, twice), per downstream build: %.2f ms"
          % (linking / RUNS * 1e3))
    print("difference of the medians: %.2f ms"
          % ((statistics.median(cpu["down"]) - statistics.median(cpu["solo"])) * 1e3))


if __name__ == "__main__":
    main()
