"""What a build records stays bounded, and a step costs the same at any
length of build.

- A push of many commits with huge messages makes a request and a build
  record of bounded size: every change's id and revision, details for the
  newest ones, capped messages and file lists, counts of what was dropped.
- Step transitions are appended to progress.jsonl; build.json is written
  when the build starts and when it ends, never in between, and every
  reader (the site, status) still follows the steps.
"""

import json
import os
import time

from buildunits import changes, records
from harness import wait_for


def big_change(i, message_chars=1 << 20, files=500):
    return {"id": "1700000000000000000.1.%d.aaaaaa" % i, "source": "poller", "repository": "/r.git",
            "branch": "main", "revision": "%040x" % (i + 1), "author": "A U Thor <a@example.org>",
            "when": 1700000000.0 + i, "queued": 1700000000.0 + i,
            "message": "commit %d\n\n" % i + "x" * message_chars,
            "files": ["f%d-%d.c" % (i, j) for j in range(files)]}


def test_bound_changes_keeps_every_id_and_revision_and_says_what_it_dropped():
    cs = [big_change(i) for i in range(150)]
    out, omitted = changes.bound_changes(cs)
    assert [c["id"] for c in out] == [c["id"] for c in cs]
    assert [c["revision"] for c in out] == [c["revision"] for c in cs]
    assert omitted == 150 - changes.MAX_DETAILED
    for c in out[:omitted]:
        assert c["details_omitted"] is True and "message" not in c and "files" not in c
    for c, orig in zip(out[omitted:], cs[omitted:]):
        assert c["author"] == orig["author"]
        assert c["message"].startswith(orig["message"][:changes.MAX_MESSAGE_CHARS])
        assert c["message_omitted"] == len(orig["message"]) - changes.MAX_MESSAGE_CHARS
        assert c["message"].endswith("[... %d more characters not kept]" % c["message_omitted"])
        assert c["files"] == orig["files"][:changes.MAX_FILES] and c["files_omitted"] == 500 - changes.MAX_FILES
    assert len(records.encode("request", {"changes": out})) < 1 << 20
    # Bounding what is bounded changes nothing (a runner bounds requests again).
    again, omitted2 = changes.bound_changes(out)
    assert again == out and omitted2 == omitted
    req = {"id": "r", "changes": out, "changes_omitted": omitted}
    assert changes.bound_request(req) is req
    # Small changes are carried as they are.
    small = [dict(big_change(i, message_chars=10, files=2)) for i in range(3)]
    assert changes.bound_changes(small) == (small, 0)


def test_a_push_of_huge_commits_makes_a_bounded_build_record(daemons):
    repo = "/srv/git/big.git"
    daemons.write_builder("big", "[Builder]\nRepository=%s\nCheckout=no\nPollIntervalSec=0\nTreeStableSec=1s\n"
                          "[Step s]\nCommand=:\n" % repo)
    daemons.spool.ensure()
    ids = []
    for i in range(40):
        c = big_change(i, message_chars=200 * 1024, files=300)
        c.update(repository=repo, queued=time.time())
        ids.append(daemons.spool.deliver("changes", "change", {k: v for k, v in c.items() if k != "id"}))
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.start("htmlgen")
    b = daemons.wait_build_finished("big", 1)
    assert b["result"] == "success"
    assert os.path.getsize(daemons.state.build_path("big", 1)) < 1 << 20
    carried = b["request"]["changes"]
    assert [c["id"] for c in carried] == ids, "every change's id is carried, in order"
    assert b["request"]["changes_omitted"] == 40 - changes.MAX_DETAILED
    newest = carried[-1]
    assert newest["message"].startswith("commit 39\n") and newest["message_omitted"] > 0
    assert len(newest["files"]) == changes.MAX_FILES and newest["files_omitted"] == 200
    assert daemons.builds("big") == [1]
    daemons.wait_site_finished("big", 1)
    with open(os.path.join(daemons.site_dir, "builders", "big", "1", "index.html"), encoding="utf-8") as f:
        page = f.read()
    assert "and 200 more" in page and "not kept: a build keeps" in page
    assert "[... %d more characters not kept]" % newest["message_omitted"] in page
    assert os.path.getsize(os.path.join(daemons.site_dir, "builders", "big", "1", "index.html")) < 1 << 20


def _site_build(daemons, builder, number):
    path = os.path.join(daemons.site_dir, "api", "builders", builder, "builds", "%d.json" % number)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def test_steps_are_appended_not_rewritten_and_readers_follow_them(daemons, tmp_path):
    flag = tmp_path / "go"
    steps = "".join("[Step s%d]\nCommand=:\n" % i for i in range(50))
    daemons.write_builder("long", "[Builder]\nPollIntervalSec=0\n%s[Step wait]\nCommand=while [ ! -e %s ]; do "
                          "sleep 0.05; done\n" % (steps, flag))
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.start("htmlgen")
    daemons.cli("force", "long", check=True)
    path = daemons.state.build_path("long", 1)
    first = wait_for(lambda: os.path.exists(path) and os.stat(path), what="the build to start")
    wait_for(lambda: (daemons.read_build("long", 1) or {}).get("steps", [{}])[-1].get("state") == "running",
             what="the last step to run", describe=daemons._describe_builds)
    now = os.stat(path)
    assert (now.st_ino, now.st_mtime_ns, now.st_size) == (first.st_ino, first.st_mtime_ns, first.st_size), \
        "build.json was rewritten while the build ran"
    rec = daemons.read_build("long", 1)
    assert [s["result"] for s in rec["steps"][:50]] == ["success"] * 50
    # The site follows the steps as they progress ...
    wait_for(lambda: ((_site_build(daemons, "long", 1) or {}).get("steps") or [{}])[-1].get("state") == "running",
             what="the site to show the last step running")
    assert [s["state"] for s in _site_build(daemons, "long", 1)["steps"][:50]] == ["finished"] * 50
    # ... and so does `buildunits status`.
    st = json.loads(daemons.cli("status", "--json", check=True).stdout)
    assert [r.get("step") for r in st["running"]] == ["wait"]
    flag.write_text("")
    b = daemons.wait_build_finished("long", 1)
    assert b["result"] == "success" and len(b["steps"]) == 51
    # The final record is complete by itself, and the progress file is gone.
    whole = records.read(path, "build")
    assert [s["result"] for s in whole["steps"]] == ["success"] * 51
    # (Removed right after the commit point, so a moment after it.)
    wait_for(lambda: not os.path.exists(daemons.state.progress_path("long", 1)), what="the progress file to go")
    wait_for(lambda: (_site_build(daemons, "long", 1) or {}).get("state") == "finished", what="the site")


def test_a_runner_killed_mid_build_is_recovered_from_its_progress(daemons, tmp_path):
    flag = tmp_path / "go"
    daemons.write_builder("two", "[Builder]\nPollIntervalSec=0\n[Step one]\nCommand=echo one\n"
                          "[Step two]\nCommand=test -e %s || sleep 300\n" % flag)
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.cli("force", "two", check=True)
    wait_for(lambda: (daemons.read_build("two", 1) or {}).get("steps", [{}, {}])[1].get("state") == "running",
             what="step two to run")
    daemons.kill("runner@w1")
    flag.write_text("")
    daemons.start("runner", "w1")
    b1 = daemons.read_build("two", 1)
    assert b1["result"] == "retry"
    assert [(s["state"], s["result"]) for s in b1["steps"]] == [("finished", "success"), ("finished", "retry")]
    assert daemons.wait_build_finished("two", 2)["result"] == "success"
