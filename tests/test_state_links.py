"""Symbolic links in the state tree are never records.

A build step runs as the same user as the runner and can write into the
state directory; what it plants there (a link to a directory or a file
elsewhere) must not be rendered, copied into the site or written through.
These tests plant real links and check what a user would: the pages and
every file of the site, the target files, `buildunits fsck`'s output.
"""

import os

import harness
from buildunits import cli, records, site
from buildunits.spool import Spool
from buildunits.state import State
from test_site import make_build, make_cfg

SECRET = "TOP-SECRET-7d1f0c"


def _env(tmp_path):
    st = State(str(tmp_path / "state"))
    st.ensure()
    sp = Spool(str(tmp_path / "spool"))
    sp.ensure()
    cfg = make_cfg(tmp_path, names=("hello",))
    return st, sp, cfg, site.Site(str(tmp_path / "site"), st, sp, cfg)


def _elsewhere(tmp_path):
    """A build made in another state tree, whose log holds the secret: the
    target of the links planted below."""
    other = State(str(tmp_path / "elsewhere"))
    other.ensure()
    n = make_build(other, "hello", steps=(("compile", "success", "%s in a log elsewhere\n" % SECRET),))
    return other, n


def _site_text(root):
    """Every byte of every file under ROOT, as text."""
    out = []
    for d, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                out.append(fh.read().decode("utf-8", "replace"))
    return "\n".join(out)


def _fsck(tmp_path, capsys):
    argv = ["--config-dir", str(tmp_path / "etc"), "--spool-dir", str(tmp_path / "spool"),
            "--state-dir", str(tmp_path / "state"), "--site-dir", str(tmp_path / "site")]
    code = cli.main(argv + ["fsck"])
    return code, capsys.readouterr().out


def test_a_linked_build_directory_is_not_rendered_and_fsck_names_it(tmp_path, capsys):
    st, sp, cfg, s = _env(tmp_path)
    other, n = _elsewhere(tmp_path)
    make_build(st, "hello")                                        # #1, a real build
    link = st.build_dir("hello", 2)
    os.symlink(other.build_dir("hello", n), link)                  # #2, a link to a build elsewhere
    assert make_build(st, "hello") == 3                            # #3: the counter passes #2
    os.symlink(other.builder_dir("hello"), st.builder_dir("linked"))  # a whole builder elsewhere

    s.rebuild()
    s.update([("hello", 2), ("linked", 1)])
    root = tmp_path / "site"
    assert (root / "builders" / "hello" / "1" / "index.html").exists()
    assert not (root / "builders" / "hello" / "2").exists()
    assert not (root / "builders" / "linked").exists()
    assert SECRET not in _site_text(root)
    assert "linked" not in (root / "builders.html").read_text()
    assert st.builders() == ["hello"] and st.build_numbers("hello") == [1, 3]

    code, out = _fsck(tmp_path, capsys)
    lines = out.splitlines()
    assert any(str(link) in l and "symbolic link" in l and l.startswith("note:") for l in lines), out
    assert any(st.builder_dir("linked") in l and "symbolic link" in l for l in lines), out
    assert os.path.islink(link), "fsck keeps what it notes"


def test_a_log_linked_to_a_secret_file_is_not_copied_into_the_site(tmp_path, capsys):
    st, sp, cfg, s = _env(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("%s in a file outside the state\n" % SECRET)
    n = make_build(st, "hello", steps=(("checkout", "success", "cloning\n"), ("compile", "success", None)))
    rec = st.read_build("hello", n)
    rec["steps"][1]["log"] = st.log_name(2, "compile")
    records.write(st.build_path("hello", n), "build", rec)   # finished: write_build would refuse
    log = st.log_path("hello", n, 2, "compile")
    os.symlink(str(secret), log)
    os.mkfifo(st.log_path("hello", n, 3, "fifo"))            # never opened, never blocks

    s.rebuild()
    root = tmp_path / "site"
    bdir = root / "builders" / "hello" / str(n)
    assert (bdir / "01-checkout.txt").read_text() == "cloning\n"
    assert not (bdir / "02-compile.txt").exists()
    assert SECRET not in _site_text(root)
    assert "compile" in (bdir / "index.html").read_text()

    code, out = _fsck(tmp_path, capsys)
    assert any(log in l and "symbolic link" in l for l in out.splitlines()), out
    assert any(st.log_path("hello", n, 3, "fifo") in l and "not a regular file" in l
               for l in out.splitlines()), out
    assert secret.read_text().startswith(SECRET)


def test_a_build_record_under_a_linked_directory_is_refused(tmp_path):
    st, sp, cfg, s = _env(tmp_path)
    other, n = _elsewhere(tmp_path)
    st.allocate_number("hello")
    os.rmdir(st.build_dir("hello", 1))
    os.symlink(other.build_dir("hello", n), st.build_dir("hello", 1))
    try:
        st.read_build("hello", 1)
    except ValueError as e:
        assert "symbolic link" in str(e)
    else:
        raise AssertionError("a record read through a link")
    assert st.open_log("hello", 1, other.log_name(1, "compile")) is None


def test_a_link_planted_at_a_step_log_is_not_written_through(daemons, tmp_path):
    """An earlier step plants $STATE/builds/B/N/02-next.log, a link to a
    file of the same user; the runner must not truncate or write it."""
    target = tmp_path / "bashrc"
    target.write_text("precious settings\n")
    daemons.write_builder("plant", """
        [Builder]
        PollIntervalSec=0

        [Step plant]
        Command=state="$BUILDUNITS_WORKDIR/../../.."; ln -s {target} "$state/builds/$BUILDUNITS_BUILDER/$BUILDUNITS_BUILD/02-next.log"

        [Step next]
        Command=echo WRITTEN THROUGH
        """.format(target=target))
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.cli("force", "plant", check=True)
    b = daemons.wait_build_finished("plant", 1)
    assert target.read_text() == "precious settings\n"
    plant, nxt = b["steps"]
    assert plant["result"] == "success", plant
    assert nxt["result"] == "exception" and "02-next.log" in nxt["summary"], nxt
    assert b["result"] == "exception" and "02-next.log" in b["reason"]
    assert os.path.islink(os.path.join(daemons.state.build_dir("plant", 1), "02-next.log"))
