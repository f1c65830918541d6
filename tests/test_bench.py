"""The benchmarks still run against the code they measure.

`make bench` is not part of `make check`, so a change of an interface a
bench drives in process (the runner's _start, the scheduler's pass, the
site's update) would otherwise be found only by the next person who runs
it, with a traceback instead of a table.  These run the in-process parts
of the scale benches at their smallest, and check that each measured
what it says (a claim claimed, every builder requested, a page written):
never a figure's value.
"""

import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)


def test_scale_queue_claims_and_htmlgen_pass(tmp_path):
    import scale_queue
    first, each, cpu = scale_queue.claim_times(str(tmp_path / "claim"), 6)   # asserts 6 claims
    assert first > 0 and each > 0 and cpu >= 0
    passes = scale_queue.htmlgen_pass(str(tmp_path / "site"), 6)
    assert set(passes) == {"as the daemon", "listing"} and all(v > 0 for v in passes.values())


def test_scale_scheduler_one_change(tmp_path):
    import scale_scheduler
    got = scale_scheduler.measure(3, 1, str(tmp_path))       # asserts 3 requests per change
    assert got["renames"] >= 3 and got["runs"] == 1


def test_scale_site_builders(tmp_path, monkeypatch):
    import scale_site
    monkeypatch.setattr(scale_site, "RUNS", 1)
    monkeypatch.setattr(scale_site, "CACHE", str(tmp_path / "cache"))
    got = scale_site.measure_builders(3, str(tmp_path))
    assert got and all(len(v) == 1 for v in got.values()), got
    assert os.path.exists(tmp_path / "site-3" / "index.html")
