"""Dependent and triggered builds through the real daemons (plain
processes, a private bus, real git): After= with AfterResult=, and a
Trigger= step with and without Wait=yes.  What a user checks: which
builds ran, on which revision, with which properties, and that each
names its upstream."""

import json
import os

import pytest

from harness import wait_for
from buildunits import config

REPO_BUILDER = """
[Builder]
Repository={repo}
PollIntervalSec=0
{extra}
[Step s]
Command={command}
"""


def builder(daemons, name, repo, command="true", extra=""):
    daemons.write_builder(name, REPO_BUILDER.format(repo=repo.bare, extra=extra, command=command))


def start(daemons, runners=("w1",)):
    daemons.start("htmlgen")
    daemons.start("scheduler")
    for w in runners:
        daemons.start("runner", w)


def test_after_builds_the_downstream_on_the_upstreams_revision_when_it_succeeds(daemons, git_repo):
    sha = git_repo.commit({"f": "1"}, "one")
    builder(daemons, "up", git_repo, command="test -z \"$FAIL\"")
    builder(daemons, "down", git_repo, extra="After=up\n")
    builder(daemons, "strict", git_repo, extra="After=up\nAfterResult=failure\n")
    start(daemons)
    assert daemons.cli("force", "up", "--revision", sha, "--reason", "go").returncode == 0
    assert daemons.wait_build_finished("up", 1)["result"] == "success"
    d = daemons.wait_build_finished("down", 1)
    assert d["result"] == "success" and d["revision"] == sha
    assert d["upstream"] == {"builder": "up", "number": 1}
    assert d["request"]["reason"] == "after up #1 (success)"
    # AfterResult=failure: not after a success.
    assert daemons.builds("strict") == []
    assert "not built after up #1, which ended success" in daemons.log("scheduler")
    # A restart does not start it again (the key is consumed).
    daemons.restart("scheduler")
    daemons.cli("force", "up", "--revision", sha)
    daemons.wait_build_finished("up", 2)
    daemons.wait_build_finished("down", 2)
    assert daemons.builds("down") == [1, 2]


def test_the_upstreams_finished_page_links_to_its_downstream_build_with_its_result(daemons, git_repo):
    """U #1's page is written once, when it finishes; D #1, which After=
    starts later, is listed on it (and in its JSON) with its result."""
    sha = git_repo.commit({"f": "1"}, "one")
    builder(daemons, "up", git_repo)
    builder(daemons, "down", git_repo, command="exit 3", extra="After=up\n")
    start(daemons)
    assert daemons.cli("force", "up", "--revision", sha).returncode == 0
    daemons.wait_build_finished("up", 1)
    assert daemons.wait_build_finished("down", 1)["result"] == "failure"
    site = daemons.site_dir
    page = os.path.join(site, "builders", "up", "1", "index.html")

    def listed():
        with open(page, encoding="utf-8") as f:
            return '<dt>downstream</dt><dd><a href="../../../builders/down/1/index.html">down #1</a> failure</dd>' \
                in f.read()
    wait_for(lambda: os.path.exists(page) and listed(), what="up #1's page listing down #1 and its result")
    want = [{"builder": "down", "number": 1, "html": "builders/down/1/index.html", "status": "failure",
             "removed": False}]
    # The JSON file is written right after the page.
    wait_for(lambda: json.load(open(os.path.join(site, "api", "builders", "up", "builds", "1.json")))[
        "downstream"] == want, what="up #1's JSON listing down #1 and its result")


def test_a_trigger_step_queues_builds_and_with_wait_takes_the_worst(daemons, git_repo):
    sha = git_repo.commit({"f": "1"}, "one")
    builder(daemons, "ok", git_repo)
    builder(daemons, "bad", git_repo, command="exit 1")
    daemons.write_builder("deploy", """
[Builder]
Repository={repo}
PollIntervalSec=0

[Step fire]
Trigger=ok

[Step gate]
Trigger=ok bad
Wait=yes
HaltOnFailure=yes

[Step after]
Command=echo never
""".format(repo=git_repo.bare))
    start(daemons, runners=("w1", "w2"))
    assert daemons.cli("force", "deploy", "--revision", sha).returncode == 0
    b = daemons.wait_build_finished("deploy", 1, timeout=90)
    steps = {s["name"]: s for s in b["steps"]}
    assert steps["fire"]["result"] == "success" and [t["builder"] for t in steps["fire"]["triggered"]] == ["ok"]
    gate = steps["gate"]
    assert gate["result"] == "failure", gate
    assert sorted((t["builder"], t["result"]) for t in gate["triggered"]) == [("bad", "failure"), ("ok", "success")]
    assert steps["after"]["result"] == "skipped" and b["result"] == "failure"
    for t in gate["triggered"]:
        down = daemons.read_build(t["builder"], t["number"])
        assert down["upstream"] == {"builder": "deploy", "number": 1}
        assert down["revision"] == sha and down["request_id"] == t["request"]
    assert sorted(daemons.builds("ok")) == [1, 2]
    # A link both ways on the pages and in the JSON.
    daemons.wait_site_finished("deploy", 1)
    ok = [t for t in gate["triggered"] if t["builder"] == "ok"][0]
    site = daemons.site_dir
    wait_for(lambda: os.path.exists(os.path.join(site, "builders", "ok", str(ok["number"]), ".final")),
             what="the downstream's final page")
    wait_for(lambda: os.path.exists(os.path.join(site, "builders", "deploy", "1", ".final")),
             what="the upstream's final page")
    down = open(os.path.join(site, "builders", "ok", str(ok["number"]), "index.html")).read()
    assert 'started by <a href="../../../builders/deploy/1/index.html">deploy #1</a>' in down
    up = open(os.path.join(site, "builders", "deploy", "1", "index.html")).read()
    assert 'href="../../../builders/ok/%d/index.html">ok #%d</a>' % (ok["number"], ok["number"]) in up
    doc = json.load(open(os.path.join(site, "api", "builders", "deploy", "builds", "1.json")))
    assert {(t["builder"], t["number"]) for t in doc["triggered"]} >= {("ok", ok["number"])}


def test_a_cycle_is_an_error_naming_the_builders(tmp_path):
    d = tmp_path / "etc"
    (d / "builders").mkdir(parents=True)
    (d / "builders" / "a.builder").write_text("[Builder]\n[Step s]\nCommand=true\n")
    (d / "builders" / "b.builder").write_text("[Builder]\nAfter=a\n[Step s]\nCommand=true\n")
    (d / "builders" / "c.builder").write_text("[Builder]\nAfter=a\n[Step t]\nTrigger=a\n")
    (d / "builders" / "x.builder").write_text("[Builder]\nAfter=nobody\n[Step s]\nCommand=true\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(str(d))
    text = "\n".join(map(str, e.value.problems))
    assert "builds start each other in a cycle (After=, Trigger=): a -> c -> a" in text, text
    assert "a -> b" not in text
    assert "x.builder" in text and "After=: no builder 'nobody'" in text


def test_a_step_with_trigger_and_command_is_an_error(tmp_path):
    d = tmp_path / "etc"
    (d / "builders").mkdir(parents=True)
    (d / "builders" / "a.builder").write_text("[Builder]\n[Step s]\nCommand=true\nTrigger=a2\n")
    (d / "builders" / "a2.builder").write_text("[Builder]\n[Step s]\nCommand=true\n")
    with pytest.raises(config.ConfigError, match="either runs Command= or triggers builds"):
        config.load(str(d))
