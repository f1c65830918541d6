"""Properties and rebuilds end to end: real daemons (plain processes), a
private bus, a real git repository, the site.

A forced build's properties reach every step's environment as
BUILDUNITS_PROPERTY_NAME, and a hostile value stays data whether the
command quotes it or not; `buildunits rebuild` builds the same revision
with the same properties, and its record, page and JSON say what it
rebuilds.
"""

import json
import os
import re

MAKEFILE = "all:\n\t@echo compiled\n"

BUILDER = """
[Builder]
Repository={repo}
Branches=main
PollIntervalSec=1h

[Step show]
Command=env -0 > {out}/env.$BUILDUNITS_BUILD; \\
 printf '%s' "$BUILDUNITS_PROPERTY_cmd" > {out}/quoted.$BUILDUNITS_BUILD; \\
 echo unquoted $BUILDUNITS_PROPERTY_cmd ${{BUILDUNITS_PROPERTY_semi}} $BUILDUNITS_PROPERTY_tick > {out}/unquoted.$BUILDUNITS_BUILD

[Step again]
Command=printf '%s' "$BUILDUNITS_PROPERTY_nl" > {out}/nl.$BUILDUNITS_BUILD
"""


def hostile(tmp_path):
    """Values that would run commands if they were ever shell syntax: each
    would make a file of its own in TMP_PATH."""
    p = lambda n: os.path.join(str(tmp_path), "pwned-%s" % n)  # noqa: E731
    return {"cmd": "$(touch %s)" % p("cmd"), "semi": "; touch %s; rm -rf %s" % (p("semi"), p("out")),
            "tick": "`touch %s`" % p("tick"), "nl": "x\ntouch %s\n" % p("nl"),
            "quote": "'\"; touch %s; '\"" % p("quote"), "html": "<b>bold</b> & <script>x</script>",
            "plain": "blue"}


def step_env(out, number):
    with open(os.path.join(out, "env.%d" % number), "rb") as f:
        pairs = [e.decode().split("=", 1) for e in f.read().split(b"\0") if e]
    return {k[len("BUILDUNITS_PROPERTY_"):]: v for k, v in pairs if k.startswith("BUILDUNITS_PROPERTY_")}


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_properties_reach_the_steps_as_data_and_a_rebuild_builds_the_same(daemons, git_repo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    sha1 = git_repo.commit({"Makefile": MAKEFILE}, "first")
    daemons.write_builder("props", BUILDER.format(repo=git_repo.bare, out=out))
    for name in ("scheduler", "htmlgen"):
        daemons.start(name)
    daemons.start("runner", "w1")
    props = hostile(tmp_path)
    args = sum((["--property", "%s=%s" % kv] for kv in props.items()), [])
    r = daemons.cli("force", "props", "--reason", "try", *args, check=True)
    assert "not on the bus" not in r.stdout       # over D-Bus, the Force method
    b1 = daemons.wait_build_finished("props", 1)
    assert b1["result"] == "success", b1
    assert b1["revision"] == sha1 and b1["request"]["properties"] == props

    # Every step had them, byte for byte, and no value ran as a command.
    assert step_env(out, 1) == props
    assert read(out / "quoted.1") == props["cmd"]
    assert read(out / "nl.1") == props["nl"]
    # Unquoted, the shell splits the value into words, and runs none of it.
    assert read(out / "unquoted.1").split() == ["unquoted"] + props["cmd"].split() + props["semi"].split() \
        + props["tick"].split()
    assert not [n for n in os.listdir(tmp_path) if n.startswith("pwned-")]

    # A new commit on the branch; the rebuild builds #1's revision, not the tip.
    sha2 = git_repo.commit({"Makefile": MAKEFILE + "# two\n"}, "second")
    r = daemons.cli("rebuild", "props", "1", check=True)
    assert "rebuild of props #1 queued" in r.stdout and "not on the bus" not in r.stdout
    b2 = daemons.wait_build_finished("props", 2)
    assert b2["result"] == "success" and b2["revision"] == sha1 != sha2
    assert b2["request"]["rebuild_of"] == 1 and b2["request"]["properties"] == props
    assert b2["request"]["reason"] == "rebuild of #1 by root"
    assert step_env(out, 2) == props and read(out / "nl.2") == props["nl"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith("pwned-")]

    # The page says what it rebuilds, with a link; values are escaped.
    daemons.wait_site_finished("props", 2)
    site = daemons.site_dir
    page2 = read(os.path.join(site, "builders", "props", "2", "index.html"))
    m = re.search(r'rebuild of <a href="([^"]*)">#1</a>', page2)
    assert m, page2
    target = os.path.normpath(os.path.join(site, "builders", "props", "2", m.group(1)))
    assert target == os.path.join(site, "builders", "props", "1", "index.html") and os.path.exists(target)
    assert "&lt;script&gt;x&lt;/script&gt;" in page2 and "<script>x" not in page2
    assert "rebuild of" not in read(os.path.join(site, "builders", "props", "1", "index.html"))
    j2 = json.loads(read(os.path.join(site, "api", "builders", "props", "builds", "2.json")))
    j1 = json.loads(read(os.path.join(site, "api", "builders", "props", "builds", "1.json")))
    assert (j2["rebuild_of"], j2["properties"], j2["revision"]) == (1, props, sha1)
    assert j1["rebuild_of"] is None and j1["properties"] == props


def test_rebuild_through_the_spool_when_no_scheduler_is_on_the_bus(daemons, git_repo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    sha1 = git_repo.commit({"Makefile": MAKEFILE}, "first")
    daemons.write_builder("props", BUILDER.format(repo=git_repo.bare, out=out))
    daemons.start("scheduler", bus=False)
    daemons.start("runner", "w1", bus=False)
    daemons.cli("force", "props", "--property", "plain=blue", bus=False, check=True)
    assert daemons.wait_build_finished("props", 1)["result"] == "success"
    missing = daemons.cli("rebuild", "props", "5", bus=False)
    assert missing.returncode == 1 and "props #5 does not exist" in missing.stderr
    r = daemons.cli("rebuild", "props", "1", "--reason", "flaky", bus=False, check=True)
    assert "the scheduler is not on the bus" in r.stdout
    b2 = daemons.wait_build_finished("props", 2)
    assert (b2["revision"], b2["request"]["rebuild_of"], b2["request"]["properties"]) == (sha1, 1, {"plain": "blue"})
    assert b2["request"]["reason"].startswith("rebuild of #1 by ") and b2["request"]["reason"].endswith(": flaky")
    assert step_env(out, 2) == {"plain": "blue"}
