"""Credentials: names and sources, a local step's private copies, and a
real build in plain-process mode whose step prints its credential in
every way masking must catch: the log on disk, the site made from it,
the state and the journal's lines show `***`, never the secret.

The runner runs in process, as in test_runner.py (whose functions these
tests use), so they too refuse to run beside other children of the test
process.
"""

import os
import signal
import stat
import types

import pytest

from buildunits import config, credentials, executor, proctree, runner, site
from buildunits.bus import NoBus
from support.inprocess import RecordingNotifier, capture_log, dirs as make_dirs, write_builders
from test_runner import finished, request, spin

SECRET = "Zq8-s3cr3t-deploy-t0ken"


# --------------------------------------------------------- the module
def test_the_source_is_the_encrypted_file_when_there_is_one(tmp_path):
    d = str(tmp_path)
    assert credentials.credential_source(d, "key") == ("LoadCredential", os.path.join(d, "key"))
    (tmp_path / "key.cred").write_bytes(b"encrypted")
    assert credentials.credential_source(d, "key") == ("LoadCredentialEncrypted", os.path.join(d, "key.cred"))
    with pytest.raises(ValueError):
        credentials.credential_source(d, "../key")


def test_private_copies_only_the_named_and_goes_away(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("alpha\n")
    (src / "b").write_text("beta\n")
    priv = credentials.Private(str(src), "w1", parent=str(tmp_path / "run"))
    os.mkdir(str(tmp_path / "run"))
    path = priv.make(["a", "a"])
    assert os.listdir(path) == ["a"] and open(os.path.join(path, "a")).read() == "alpha\n"
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
    assert stat.S_IMODE(os.stat(os.path.join(path, "a")).st_mode) == 0o400
    assert priv.make(["b"]) == path and os.listdir(path) == ["b"]     # what was there is gone first
    priv.remove()
    assert not os.path.exists(path)
    priv.remove()                                                      # and again: nothing to do


@pytest.mark.parametrize("setup, message", [
    (lambda src: None, "credential gone: no file {src}/gone"),
    (lambda src: os.symlink("/etc/hostname", os.path.join(src, "gone")), "credential gone: cannot open {src}/gone"),
    (lambda src: os.mkdir(os.path.join(src, "gone")), "credential gone: {src}/gone is not a regular file"),
    (lambda src: open(os.path.join(src, "gone.cred"), "w").close(),
     "credential gone: {src}/gone.cred is encrypted, and only systemd can decrypt it"),
])
def test_a_credential_that_cannot_be_read_is_said_with_its_file(tmp_path, setup, message):
    src = str(tmp_path)
    setup(src)
    priv = credentials.Private(src, parent=str(tmp_path))
    with pytest.raises(credentials.CredentialError) as e:
        priv.make(["gone"])
    assert e.value.strerror.startswith(message.format(src=src)), e.value.strerror
    assert isinstance(e.value, OSError) and not os.path.exists(priv.path)


def test_the_runtime_directory_is_systemds_then_the_users_then_tmp(tmp_path):
    assert credentials.runtime_directory({"RUNTIME_DIRECTORY": str(tmp_path), "XDG_RUNTIME_DIR": "/"}) == str(tmp_path)
    assert credentials.runtime_directory({"XDG_RUNTIME_DIR": str(tmp_path)}) == str(tmp_path)
    assert credentials.runtime_directory({"XDG_RUNTIME_DIR": "relative"}).startswith("/")


# ---------------------------------------------------- a real build
BUILDER = """\
[Builder]
PollIntervalSec=0
Credential=token

[Step show]
Command=cat "$CREDENTIALS_DIRECTORY/token"; printf '%s' Zq8-s3cr; printf '%s\\n' 3t-deploy-t0ken; \
 echo "err $(cat "$CREDENTIALS_DIRECTORY/token")" >&2; ls "$CREDENTIALS_DIRECTORY"; \
 echo "dir $CREDENTIALS_DIRECTORY" > "$BUILDUNITS_WORKDIR/dir"; exit 1
FlunkOnFailure=no

[Step missing]
Command=echo never
Credential=nosuch
"""


@pytest.fixture
def build_env(tmp_path, monkeypatch):
    proctree.reap()
    if proctree.descendants(os.getpid()):
        pytest.skip("the test process has other children, which stopping a step's tree would kill")
    d = make_dirs(tmp_path)
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "token").write_text(SECRET + "\n")
    (tmp_path / "run").mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/the/runners/own")     # not the step's
    write_builders(d, {"secret": BUILDER})
    with open(os.path.join(d.config, "buildunits.conf"), "w") as f:
        f.write("[Daemons]\nExecutor=local\nCredentialsDirectory=%s\n" % creds)
    made = []

    def make():
        r = runner.Runner(d, config.load(d.config), NoBus(), RecordingNotifier(), types.SimpleNamespace(worker="w1"))
        r.spool.ensure()
        r.state.ensure()
        made.append(r)
        return r
    yield types.SimpleNamespace(dirs=d, make=make, run=str(tmp_path / "run"), journal=capture_log(monkeypatch))
    for r in made:
        if r.build is not None:
            r._run.drop()
        r.stopping = True
    proctree.kill_tree(None, signal.SIGKILL)
    proctree.reap()


def _files(top):
    for d, _dirs, files in os.walk(top):
        for n in files:
            with open(os.path.join(d, n), "rb") as f:
                yield os.path.join(d, n), f.read()


def test_a_step_reads_its_credential_and_nothing_shows_it(build_env):
    r = build_env.make()
    assert isinstance(r.executor, executor.LocalExecutor)
    r.startup()
    request(r, "secret")
    r.work()
    spin(lambda: finished(r, "secret", 1))
    rec = finished(r, "secret", 1)
    show, missing = rec["steps"]
    assert (show["result"], show["exit_status"]) == ("failure", 1)     # the filter passed the status on
    with open(r.state.build_file("secret", 1, show["log"]), "rb") as f:
        log = f.read()
    assert log == b"***\n***\nerr ***\ntoken\n"
    with open(os.path.join(r.state.work_dir("w1", "secret"), "dir")) as f:
        assert f.read() == "dir %s/buildunits-credentials-%d-w1\n" % (build_env.run, os.getuid())
    # The step's private copies are gone with it, outside the work directory.
    assert os.listdir(build_env.run) == []
    # A credential with no file: the step is an exception before it runs.
    assert missing["result"] == "exception" and not missing.get("exit_status")
    creds = os.path.join(os.path.dirname(build_env.dirs.config), "credentials")
    assert "credential nosuch: no file %s/nosuch" % creds in rec["reason"]

    site.Site(build_env.dirs.site, r.state, r.spool, r.cfg).rebuild()
    pages = dict(_files(build_env.dirs.site))
    assert any(b"***" in text for path, text in pages.items() if path.endswith(".html") and "show" in path)
    for path, text in list(pages.items()) + list(_files(build_env.dirs.state)) + list(_files(build_env.dirs.spool)):
        assert SECRET.encode() not in text, path
        assert b"s3cr3t" not in text, path
    journal = "\n".join(build_env.journal())
    assert "show| err ***" in journal and SECRET not in journal


def test_a_crashed_runners_copies_are_removed_at_the_next_start(build_env):
    r = build_env.make()
    leftover = r.executor.credentials.path
    os.mkdir(leftover, 0o700)
    with open(os.path.join(leftover, "token"), "w") as f:
        f.write(SECRET)
    os.chmod(leftover, 0o500)
    r.startup()
    assert not os.path.exists(leftover)
