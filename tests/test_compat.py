"""Old state keeps working, and a newer release's state is not destroyed.

- Every tree in tests/data/state-vN/ (written by the code of that version,
  see its README) is read, checked, rendered and built on by this code,
  with no migration step.
- Forward compatibility (what makes a downgrade safe): records with keys
  this code does not know and a higher version are read, and the unknown
  keys are kept when the daemons rewrite them.
"""

import glob
import json
import os
import shutil

import pytest

import harness
from buildunits import records

DATA = os.path.join(harness.REPO_ROOT, "tests", "data")
CORPORA = sorted(glob.glob(os.path.join(DATA, "state-v*")))
EXAMPLE = os.path.join(harness.REPO_ROOT, "share", "examples", "hello")


def load_corpus(corpus, daemons, git_repo):
    shutil.rmtree(daemons.state_dir, ignore_errors=True)
    shutil.rmtree(daemons.spool_dir, ignore_errors=True)
    shutil.copytree(os.path.join(corpus, "state"), daemons.state_dir)
    shutil.copytree(os.path.join(corpus, "spool"), daemons.spool_dir)
    # The configuration is the operator's, not state: point the corpus's
    # builder at a repository of this test.
    with open(os.path.join(corpus, "config", "builders", "hello.builder")) as f:
        text = f.read()
    daemons.write_builder("hello", "\n".join("Repository=" + git_repo.bare if l.startswith("Repository=") else l
                                             for l in text.splitlines()) + "\n")
    files = {}
    for name in ("Makefile", "hello.sh", "test.sh"):
        with open(os.path.join(EXAMPLE, name)) as f:
            files[name] = f.read()
    git_repo.commit(files, "the example project")


def test_there_is_a_corpus_for_every_format_version():
    assert CORPORA, "no tests/data/state-v* trees"
    newest = max(records.FORMATS.values())
    assert os.path.isdir(os.path.join(DATA, "state-v%d" % newest)), \
        "formats are at version %d: add tests/data/state-v%d (see state-v1/README)" % (newest, newest)


@pytest.mark.parametrize("corpus", CORPORA, ids=os.path.basename)
def test_old_state_is_read_rendered_and_built_on(corpus, daemons, git_repo):
    load_corpus(corpus, daemons, git_repo)
    old = {n: daemons.read_build("hello", n) for n in daemons.builds("hello")}
    assert old and all(b and b["state"] == "finished" for b in old.values())
    fsck = daemons.cli("fsck")
    assert fsck.returncode == 0, fsck.stdout

    p = harness.subprocess.run([harness.PYTHON, os.path.join(harness.BIN_DIR, "buildunits-htmlgen"), "--rebuild"]
                               + daemons.dir_args(), env=daemons.env(bus=False), stdout=harness.subprocess.PIPE,
                               stderr=harness.subprocess.STDOUT, text=True)
    assert p.returncode == 0, p.stdout
    for n, b in old.items():
        page = os.path.join(daemons.site_dir, "builders", "hello", str(n), "index.html")
        text = open(page, encoding="utf-8").read()
        assert b["result"] in text and "rebuild of" not in text
        # Keys added since are there, saying what an old record means.
        with open(os.path.join(daemons.site_dir, "api", "builders", "hello", "builds", "%d.json" % n)) as f:
            doc = json.load(f)
        assert "rebuild_of" not in b["request"] and doc["rebuild_of"] is None and doc["properties"] == {}

    # Building goes on: the queued force becomes the next number.
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    nxt = max(old) + 1
    b = daemons.wait_build_finished("hello", nxt)
    assert b["result"] == "success" and "queued by 0." in b["request"]["reason"]
    harness.wait_for(lambda: not daemons.spool.pending("changes"), what="the old queue to drain")
    st = json.loads(daemons.cli("status", "--json", check=True).stdout)
    assert st["builders"]["hello"]["last"]["number"] >= nxt
    for n, b in old.items():
        assert daemons.read_build("hello", n) == b, "an old build record changed"


def _future(path, fmt):
    rec = records.read(path, fmt)
    rec["version"] = rec["version"] + 1
    rec["from_the_future"] = {"note": "written by a newer buildunits"}
    with open(path, "w") as f:
        json.dump(rec, f)
    return rec


def test_newer_records_are_read_and_their_unknown_keys_kept(daemons, git_repo):
    load_corpus(CORPORA[0], daemons, git_repo)
    st = daemons.state
    _future(st.build_path("hello", 1), "build")
    sched = _future(st.scheduler_path("hello"), "scheduler")
    poller_files = glob.glob(os.path.join(daemons.state_dir, "poller", "*.json"))
    for p in poller_files:
        _future(p, "poller")
    # Readers accept them: status, fsck, the site.
    assert daemons.cli("status", "--json", check=True)
    assert daemons.cli("fsck").returncode == 0
    # The scheduler rewrites its memory (folding its journal into the file,
    # at the latest when it starts again): the key survives.
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.wait_build_finished("hello", 3)
    daemons.cli("force", "hello", check=True)
    daemons.wait_build_finished("hello", 4)
    daemons.restart("scheduler")
    rewritten = records.read(st.scheduler_path("hello"), "scheduler")
    assert rewritten["from_the_future"] == sched["from_the_future"]
    assert len(rewritten["consumed"]) > len(sched["consumed"])
    # A build record from the future renders and is not rewritten.
    assert records.read(st.build_path("hello", 1), "build")["from_the_future"]


def test_poller_keeps_unknown_keys_of_its_state(daemons, git_repo):
    git_repo.commit({"README": "x"}, "initial")
    daemons.write_builder("hello", "[Builder]\nRepository=%s\nPollIntervalSec=100ms\n[Step s]\nCommand=true\n"
                          % git_repo.bare)
    daemons.start("poller")
    harness.wait_for(lambda: glob.glob(os.path.join(daemons.state_dir, "poller", "*.json")), what="first poll")
    daemons.stop("poller")
    path = glob.glob(os.path.join(daemons.state_dir, "poller", "*.json"))[0]
    _future(path, "poller")
    daemons.start("poller")
    git_repo.commit({"README": "y"}, "second")
    harness.wait_for(lambda: records.read(path, "poller")["refs"]["main"] == git_repo.head(),
                     what="the poller to record the new head")
    assert records.read(path, "poller")["from_the_future"]
