"""Tests for siteindex.py: the site's memory and its decisions, in-process.

Cards are made from small records through siteviews; INDEX is written to
a temporary directory.
"""

import json

import pytest

from buildunits import siteindex, sitepages
from buildunits.siteviews import build_view, card

P = siteindex.HISTORY_PAGE
T0 = 1600000000.0


def card_of(builder, n, state="finished", t=None):
    return card(build_view({"builder": builder, "number": n, "state": state, "result": "success"
                            if state == "finished" else None, "started": T0 + (n if t is None else t)}))


def builder(name, numbers, **attrs):
    b = siteindex.Builder(name)
    b.cards = {n: card_of(name, n) for n in numbers}
    b.known = max(numbers, default=0)
    for k, v in attrs.items():
        setattr(b, k, v)
    return b


def test_full_pages_skip_pages_without_builds():
    b = builder("x", [1, 2, 5 * P + 1, 6 * P])
    assert list(b.full_pages(6)) == [1, 6]
    assert (b.pages, b.skipped) == (6, [[2, 5]])
    b.cards[9 * P] = card_of("x", 9 * P)
    assert list(b.full_pages(9)) == [9]
    assert b.skipped == [[2, 5], [7, 8]]
    assert list(b.full_pages(9)) == []


def test_full_pages_report_each_page_as_counted():
    b = builder("x", [1, P + 1])
    seen = []
    for page in b.full_pages(2):
        seen.append((page, b.pages))
    assert seen == [(1, 1), (2, 2)]


def test_prune_keeps_what_a_page_still_needs():
    b = builder("x", list(range(1, 3 * P + 1)), sealed=3 * P, pages=2)
    b.cards[10] = card_of("x", 10, state="running")
    assert b.head_floor() == 2 * P and b.keep_floor() == 2 * P
    gone = b.prune()
    assert sorted(gone) == [n for n in range(1, 2 * P + 1) if n != 10]
    assert sorted(b.cards) == [10] + list(range(2 * P + 1, 3 * P + 1))


def test_next_seal_waits_for_twice_the_depth_and_for_running_builds():
    a = builder("a", range(1, 4))
    assert siteindex.next_seal([a], 2) is None
    a = builder("a", range(1, 5))
    marks, members, running = siteindex.next_seal([a], 2)
    assert marks == {"a": 2} and [c["number"] for c in members] == [1, 2] and not running
    a.cards[1] = card_of("a", 1, state="running")
    assert siteindex.next_seal([a], 2) is None
    a = builder("a", range(1, 9))
    a.cards[1] = card_of("a", 1, state="running")
    assert siteindex.next_seal([a], 2)[2] == {("a", 1)}


def test_next_seal_takes_a_run_of_numbers_per_builder():
    # b #1 is older than a #2, and b #2 than a #1: both builders seal up to 2.
    a = builder("a", [])
    a.cards = {1: card_of("a", 1, t=3), 2: card_of("a", 2, t=1), 3: card_of("a", 3, t=10)}
    b = builder("b", [])
    b.cards = {1: card_of("b", 1, t=0), 2: card_of("b", 2, t=2), 3: card_of("b", 3, t=11)}
    marks, members, _ = siteindex.next_seal([a, b], 3)
    assert marks == {"a": 2, "b": 2} and len(members) == 4


def test_index_round_trip(tmp_path):
    path = str(tmp_path / siteindex.INDEX)
    b = builder("hello", [], known=120, sealed=100, pages=2, skipped=[[1, 1]], unfinal={119, 120},
                last={"number": 118, "status": "failure", "finished": T0})
    wf_open = {3: {"members": [("hello", 101)], "waiting": {("hello", 101)}}}
    siteindex.save(path, {"hello": b}, 3, wf_open, "mark 1\n")
    builders, wf_pages, got_open, _seals = siteindex.load(path, "mark 1\n")
    assert wf_pages == 3 and got_open == wf_open
    assert builders["hello"].index_entry() == b.index_entry()
    with pytest.raises(ValueError):
        siteindex.load(path, "mark 2\n")


@pytest.mark.parametrize("damage", [
    lambda idx: idx["builders"]["hello"].update(known=-1),
    lambda idx: idx["builders"]["hello"].update(unfinal=[True]),
    lambda idx: idx["waterfall"].pop("open"),
    lambda idx: idx.update(version=2),
    lambda idx: idx.update(history_page=P + 1),
])
def test_a_damaged_or_other_index_is_refused(tmp_path, damage):
    path = str(tmp_path / siteindex.INDEX)
    siteindex.save(path, {"hello": builder("hello", [], known=3)}, 0, {}, "m")
    with open(path) as f:
        idx = json.load(f)
    damage(idx)
    with open(path, "w") as f:
        json.dump(idx, f)
    with pytest.raises(ValueError):
        siteindex.load(path, "m")


def test_names_that_cannot_be_a_path_are_left_out(tmp_path):
    path = str(tmp_path / siteindex.INDEX)
    siteindex.save(path, {"../x": builder("../x", []), "ok": builder("ok", [])}, 0, {}, "m")
    assert list(siteindex.load(path, "m")[0]) == ["ok"]


def test_feed_entries_and_badges_of_sitepages():
    c = card(build_view({"builder": "b", "number": 3, "state": "finished", "result": "failure",
                         "started": T0, "finished": T0 + 61, "revision": "f" * 40,
                         "steps": [{"name": "make", "state": "finished", "result": "failure",
                                    "summary": "exit status 2"}, {"name": "test"}]}))
    assert sitepages.feed_summary(c) == "failure after 1min 1s. Steps: make failure (exit status 2). " \
        "Revision %s." % ("f" * 40)
    assert sitepages.urn("build", "b", 3, T0) == sitepages.urn("build", "b", 3, T0)
    assert sitepages.urn("build", "b", 3, T0) != sitepages.urn("build", "b", 4, T0)
    assert sitepages.text_width("mm") > sitepages.text_width("ii")
