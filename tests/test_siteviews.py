"""Tests for siteviews.py: a record is reshaped once, and the build summary
and the site-build file (docs/site.md) are projections of that view.

In-process and pure: records are dicts, no state directory, no clock.
"""

import doctest
import json

from buildunits import siteindex, siteviews
from buildunits.siteviews import build_json, build_view, card

T0 = 1600000000.0


def record(**extra):
    change = {"revision": "a" * 40, "author": "A U Thor <a@example.org>", "when": T0 - 60,
              "branch": "main", "repository": "https://u:tok@host/r.git",
              "message": "\nfix the frobnicator\n\nlong story", "files": ["a.c", 3, "b.c"]}
    rec = {"builder": "my builder", "number": 7, "state": "finished", "result": "failure",
           "started": T0, "finished": T0 + 100, "worker": "w1", "reason": "",
           "repository": "https://u:tok@host/r.git", "branch": "main", "revision": "a" * 40,
           "request": {"reason": "1 change on main", "queued": T0 - 1, "force": None,
                       "properties": {"owner": "ci", "n": [1, 2]},
                       "changes": [dict(change, revision="%040x" % i) for i in range(7)] + ["junk"]},
           "steps": ["junk", {"name": "compile", "state": "finished", "result": "failure",
                              "started": T0 + 1, "finished": T0 + 42, "log": "02-compile.log",
                              "command": "make", "exit_status": 2, "summary": "exit status 2"},
                     {"name": "test", "state": "pending", "log": "../../etc/passwd"}]}
    rec.update(extra)
    return rec


def test_the_doctests():
    assert doctest.testmod(siteviews).failed == 0


def test_card_and_build_json_take_their_keys_from_the_one_view():
    view = build_view(record())
    c, doc = card(view), build_json(view)
    assert tuple(c) == siteviews.SUMMARY_KEYS
    assert list(doc) == ["format", "version", *siteviews.SUMMARY_KEYS, "repository", "properties", "force",
                         "rebuild_of", "upstream", "triggered", "collapsed", "artifacts", "artifacts_refused",
                         "kept", "logs_removed", "artifacts_removed", "rebuild_of_removed", "downstream",
                         "rebuilds", "undelivered"]
    for key in siteviews.SUMMARY_KEYS:
        if key not in ("changes", "steps"):
            assert c[key] == doc[key] == view[key], key
    assert [tuple(s) for s in c["steps"]] == [siteviews.STEP_KEYS] * 2
    assert [tuple(s) for s in doc["steps"]] == [siteviews.BUILD_STEP_KEYS] * 2
    assert [s["command"] for s in doc["steps"]] == ["make", ""]
    assert [s["exit_status"] for s in doc["steps"]] == [2, None]


def test_a_summary_shows_five_changes_the_build_file_all_without_page_only_keys():
    view = build_view(record())
    c, doc = card(view), build_json(view)
    assert c["changes_count"] == 7 and len(view["changes"]) == 7
    assert [tuple(ch) for ch in c["changes"]] == [siteviews.CHANGE_SUMMARY_KEYS] * siteviews.MAX_CHANGES_SHOWN
    assert [tuple(ch) for ch in doc["changes"]] == [siteviews.BUILD_CHANGE_KEYS] * 7
    assert c["changes"][0]["subject"] == doc["changes"][0]["subject"] == "fix the frobnicator"
    assert doc["changes"][0]["files"] == ["a.c", "b.c"]
    assert view["changes"][0]["files_omitted"] == 0 and view["changes"][0]["details_omitted"] is False


def test_paths_are_quoted_from_the_top_and_only_runner_log_names_are_links():
    view = build_view(record())
    assert view["html"] == "builders/my%20builder/7/index.html"
    assert view["json"] == "api/builders/my%20builder/builds/7.json"
    compile_, test = view["steps"]
    assert compile_["index"] == 2  # counted among the record's steps, junk included
    assert compile_["log"] == {"html": "builders/my%20builder/7/02-compile.html",
                               "raw": "builders/my%20builder/7/02-compile.txt"}
    assert (compile_["log_file"], compile_["log_page"], compile_["log_raw"]) == \
        ("02-compile.log", "02-compile.html", "02-compile.txt")
    assert test["log"] is None and test["log_page"] == "" and test["status"] == "pending"


def test_force_properties_and_credentials():
    doc = build_json(build_view(record()))
    assert doc["force"] is None
    assert doc["properties"] == {"n": "[1, 2]", "owner": "ci"}
    assert doc["repository"] == "https://u:***@host/r.git"
    assert doc["changes"][0]["repository"] == "https://u:***@host/r.git"
    req = dict(record()["request"], force="f-123")
    assert build_json(build_view(record(request=req)))["force"] == "f-123"
    req = dict(record()["request"], force={"by": "me"})
    view = build_view(record(request=req))
    assert view["force"] == [("by", "me")] and build_json(view)["force"] == {"by": "me"}


def test_a_record_of_any_shape_gives_every_key():
    view = build_view({"builder": "b", "number": 1, "steps": "no", "request": [], "started": float("nan")})
    c, doc = card(view), build_json(view)
    assert (c["state"], c["status"], c["result"], c["started"], c["duration"]) == \
        ("running", "running", None, None, None)
    assert c["changes"] == [] and c["steps"] == [] and doc["properties"] == {}
    assert card(build_view({"builder": "b", "number": 2, "state": "finished"}))["status"] == "exception"
    json.dumps(doc, allow_nan=False)


def test_text_xml_cannot_carry_is_replaced():
    view = build_view(record(worker="w\x01\ud800", reason="x\x7f"))
    assert view["worker"] == "w\ufffd\ufffd" and view["reason"] == "x\ufffd"
    assert siteviews.text(None) == "" and siteviews.text(3) == "3"


def test_names_and_log_stems():
    assert siteviews.safe_name("hello") and siteviews.safe_name("odd name#1%")
    assert not any(siteviews.safe_name(n) for n in ("", ".hidden", "a/b", "x\x01", "\udcff", None))
    assert siteviews.log_stem("01-compile.log") == "01-compile"
    assert siteviews.log_stem("index.log") == siteviews.log_stem("../01-x.log") == ""


def test_builder_documents_and_the_time_passed_in():
    b = siteindex.Builder("my builder")
    b.known, b.pages, b.skipped = 120, 2, [[1, 1]]
    b.last = {"number": 119, "status": "success", "finished": T0}
    b.cards = {120: card(build_view({"builder": "my builder", "number": 120, "started": T0}))}
    col = siteviews.column(b, None, (1, [{"revision": "r", "changes": [{"message": "m"}]}]))
    assert col["configured"] is False and col["description"] == ""
    assert col["last"]["html"] == "builders/my%20builder/119/index.html"
    assert col["running"] == [{"number": 120, "html": "builders/my%20builder/120/index.html", "current_step": "",
                               "locks": []}]
    entry = siteviews.builder_json(col)
    assert entry["queued"] == 1 and "queued" in entry
    top = siteviews.builders_doc("CI", [col], now=T0 + 5)
    assert (top["format"], top["generated"], top["builders"]) == ("site-builders", T0 + 5, [entry])
    one = siteviews.builder_doc(b, col, siteindex.HISTORY_PAGE)
    assert one["history"] == {"page_size": 50, "pages": 2, "skipped": [[1, 1]],
                              "html": "builders/my%20builder/history/{page}.html",
                              "json": "api/builders/my%20builder/history/{page}.json"}
    hist = siteviews.history_doc(b, 2, 51, 100, list(b.cards.values()))
    assert hist["final"] is False and hist["html"] == "builders/my%20builder/history/2.html"


def test_order_of_cards():
    a = card(build_view({"builder": "a", "number": 1, "started": T0}))
    b = card(build_view({"builder": "b", "number": 1, "request": {"queued": T0 - 5}}))
    assert sorted([a, b], key=siteviews.card_order) == [b, a]
    assert siteviews.card_time(b) == T0 - 5
    assert siteviews.sort_time({"finished": T0}) == T0 and siteviews.sort_time({}) == 0.0
