"""Artifacts=: what a build keeps of its work directory (artifacts.py),
against a hostile work directory, and through the real daemons."""

import hashlib
import json
import os

import pytest

from harness import wait_for

from buildunits import artifacts, config


def tree(root, files):
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


@pytest.fixture
def work(tmp_path):
    w = tmp_path / "work"
    w.mkdir()
    return w


def collect(work, tmp_path, patterns, limit=1 << 30):
    c = artifacts.Collector(str(work), str(tmp_path / "artifacts"), limit)
    notes = c.collect(patterns, "package")
    return c, notes


def test_matching_files_are_copied_with_their_size_and_sha256(work, tmp_path):
    tree(work, {"dist/a-1.tar.gz": b"A" * 5000, "dist/b-1.tar.gz": b"B", "dist/c.zip": b"C",
                "build/report.html": b"<p>ok</p>", "dist/.hidden.tar.gz": b"H"})
    c, notes = collect(work, tmp_path, ["dist/*.tar.gz", "build/report.html", "nothing/*"])
    assert [a["name"] for a in c.kept] == ["dist/a-1.tar.gz", "dist/b-1.tar.gz", "build/report.html"]
    a = c.kept[0]
    assert a["size"] == 5000 and a["sha256"] == hashlib.sha256(b"A" * 5000).hexdigest() and a["step"] == "package"
    assert (tmp_path / "artifacts" / "dist" / "a-1.tar.gz").read_bytes() == b"A" * 5000
    assert any("Artifacts=nothing/*: no file matches" in n for n in notes)
    # The copy is the build's own: changing the work directory's file does not change it.
    (work / "dist" / "a-1.tar.gz").write_bytes(b"changed")
    assert (tmp_path / "artifacts" / "dist" / "a-1.tar.gz").read_bytes() == b"A" * 5000
    assert os.stat(work / "dist" / "b-1.tar.gz").st_ino != os.stat(tmp_path / "artifacts" / "dist" / "b-1.tar.gz").st_ino


def test_what_leads_outside_is_refused_with_the_reason(work, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root's")
    outside = tmp_path / "outside"
    (outside / "x").mkdir(parents=True)
    (outside / "x" / "f").write_text("outside")
    tree(work, {"dist/inside.txt": b"in"})
    os.symlink(str(secret), str(work / "dist" / "escape.txt"))
    os.symlink("inside.txt", str(work / "dist" / "alias.txt"))
    os.symlink(str(outside / "x"), str(work / "linkdir"))
    os.mkfifo(str(work / "dist" / "pipe.txt"))
    c, notes = collect(work, tmp_path, ["dist/*.txt", "linkdir/*", "../secret", "/etc/passwd"])
    assert sorted(a["name"] for a in c.kept) == ["dist/alias.txt", "dist/inside.txt"]
    why = {r["name"]: r["reason"] for r in c.refused}
    assert why["dist/escape.txt"] == "a symbolic link that points outside the work directory"
    assert why["dist/pipe.txt"] == "not a regular file"
    assert "no '', '.' or '..'" in why["../secret"] and "not a path relative" in why["/etc/passwd"]
    assert not (tmp_path / "artifacts" / "linkdir").exists()       # a link to a directory is not entered
    assert "secret" not in "".join(p.read_text() for p in (tmp_path / "artifacts").rglob("*") if p.is_file())


def test_max_artifact_size_bounds_the_build(work, tmp_path):
    tree(work, {"a.bin": b"a" * 600, "b.bin": b"b" * 600, "c.bin": b"c" * 100})
    c, notes = collect(work, tmp_path, ["*.bin"], limit=1000)
    assert [a["name"] for a in c.kept] == ["a.bin", "c.bin"]
    assert c.refused[0]["name"] == "b.bin" and "over MaxArtifactSize=" in c.refused[0]["reason"]
    assert not (tmp_path / "artifacts" / "b.bin").exists()


def test_hostile_names_are_kept_as_they_are_and_shown_on_one_line(work, tmp_path):
    name = "evil\nname <script>.txt"
    (work / name).write_text("x")
    c, notes = collect(work, tmp_path, ["*.txt"])
    assert [a["name"] for a in c.kept] == [name]
    assert all(n.count("\n") == 1 for n in notes) and "evil?name <script>.txt" in "".join(notes)


@pytest.mark.parametrize("value, says", [("../x", "no '', '.' or '..'"), ("/abs", "not a path relative")])
def test_a_bad_pattern_is_a_configuration_error(tmp_path, value, says):
    d = tmp_path / "etc"
    (d / "builders").mkdir(parents=True)
    (d / "builders" / "b.builder").write_text("[Builder]\nArtifacts=%s\n[Step s]\nCommand=true\n" % value)
    with pytest.raises(config.ConfigError) as e:
        config.load(str(d))
    assert "b.builder:2" in str(e.value) and says in str(e.value)


BUILDER = """
[Builder]
Repository={repo}
PollIntervalSec=0
Artifacts=dist/*.tar.gz
MaxArtifactSize=10M

[Step make]
Command=mkdir -p dist build && echo release > dist/hello-1.tar.gz && echo report > build/report.html && ln -s /etc/passwd dist/evil.tar.gz
Artifacts=build/report.html
"""


def test_a_builds_artifacts_are_in_its_record_and_its_directory(daemons, git_repo):
    sha = git_repo.commit({"f": "1"}, "one")
    daemons.write_builder("pkg", BUILDER.format(repo=git_repo.bare))
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.start("htmlgen")
    assert daemons.cli("force", "pkg", "--revision", sha).returncode == 0
    b = daemons.wait_build_finished("pkg", 1)
    assert b["result"] == "success"
    kept = {a["name"]: a for a in b["artifacts"]}
    assert sorted(kept) == ["build/report.html", "dist/hello-1.tar.gz"]
    assert kept["build/report.html"]["step"] == "make" and kept["dist/hello-1.tar.gz"]["step"] == ""
    path = os.path.join(daemons.state_dir, "builds", "pkg", "1", "artifacts", "dist", "hello-1.tar.gz")
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == kept["dist/hello-1.tar.gz"]["sha256"]
    assert b["artifacts_refused"] == [{"name": "dist/evil.tar.gz", "step": "",
                                       "reason": "a symbolic link that points outside the work directory"}]
    assert "artifact build/report.html kept" in daemons.step_log("pkg", 1, "make")
    json.dumps(b)
    # The site: the page lists them, its links and builders/pkg/latest/ lead to the files.
    daemons.wait_site_finished("pkg", 1)
    site = daemons.site_dir
    wait_for(lambda: os.path.exists(os.path.join(site, "builders", "pkg", "1", ".final")), what="the final page")
    page = open(os.path.join(site, "builders", "pkg", "1", "index.html"), encoding="utf-8").read()
    assert 'href="artifacts/dist/hello-1.tar.gz"' in page and kept["dist/hello-1.tar.gz"]["sha256"] in page
    assert "not kept: a symbolic link that points outside the work directory" in page
    with open(os.path.join(site, "builders", "pkg", "1", "artifacts", "dist", "hello-1.tar.gz"), "rb") as f:
        assert f.read() == b"release\n"
    with open(os.path.join(site, "builders", "pkg", "latest", "build", "report.html"), "rb") as f:
        assert f.read() == b"report\n"
    doc = json.load(open(os.path.join(site, "api", "builders", "pkg", "builds", "1.json")))
    assert {a["name"]: a["href"] for a in doc["artifacts"]}["dist/hello-1.tar.gz"] == \
        "builders/pkg/1/artifacts/dist/hello-1.tar.gz"
