"""fsutil: atomic replacement and the sweep of abandoned temporary files."""

import os
import time

import pytest

from buildunits import fsutil


def test_write_atomic_creates_and_replaces_leaving_no_temp_file(tmp_path):
    p = tmp_path / "f.json"
    fsutil.write_atomic(str(p), b"one\n")
    assert p.read_bytes() == b"one\n"
    fsutil.write_atomic(str(p), "two é\n")  # str is written as UTF-8
    assert p.read_bytes() == "two é\n".encode("utf-8")
    fsutil.write_atomic(str(p), b"three\n", durable=False)
    assert p.read_bytes() == b"three\n"
    assert sorted(os.listdir(tmp_path)) == ["f.json"]


def test_write_atomic_mode(tmp_path):
    p = tmp_path / "secret"
    old = os.umask(0)
    try:
        fsutil.write_atomic(str(p), b"x", mode=0o600)
    finally:
        os.umask(old)
    assert os.stat(p).st_mode & 0o777 == 0o600


def test_write_atomic_replaces_the_inode_not_the_contents(tmp_path):
    # A reader holding the old file keeps reading the old, whole contents.
    p = tmp_path / "f"
    fsutil.write_atomic(str(p), b"old contents\n")
    with open(p, "rb") as reader:
        fsutil.write_atomic(str(p), b"new\n")
        assert reader.read() == b"old contents\n"
    assert p.read_bytes() == b"new\n"


def test_write_atomic_failure_leaves_target_and_no_temp_file(tmp_path):
    p = tmp_path / "f"
    fsutil.write_atomic(str(p), b"kept\n")
    os.mkdir(tmp_path / "dir")
    with pytest.raises(OSError):
        fsutil.write_atomic(str(tmp_path / "dir"), b"cannot replace a directory")
    assert p.read_bytes() == b"kept\n"
    assert sorted(os.listdir(tmp_path)) == ["dir", "f"]


def test_a_writer_slower_than_the_limit_gives_up_and_commits_nothing(tmp_path, monkeypatch):
    """A write that took longer than TMP_WRITER_MAX_SEC (a hung disk, a
    stopped process) could find its temporary file swept: it must not
    rename it, and says so."""
    p = tmp_path / "f"
    fsutil.write_atomic(str(p), b"kept\n")
    clock = iter([0.0, fsutil.TMP_WRITER_MAX_SEC + 1.0])
    monkeypatch.setattr(fsutil.time, "monotonic", lambda: next(clock))
    with pytest.raises(fsutil.WriterTooSlow, match="took longer than %d" % fsutil.TMP_WRITER_MAX_SEC):
        fsutil.write_atomic(str(p), b"too late\n")
    assert p.read_bytes() == b"kept\n"
    assert os.listdir(tmp_path) == ["f"]


def test_write_new_refuses_an_existing_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"first")
    with pytest.raises(FileExistsError):
        fsutil.write_new(str(p), b"second")
    assert p.read_bytes() == b"first"


def test_tmp_name_is_hidden_unique_and_beside(tmp_path):
    target = str(tmp_path / "build.json")
    a, b = fsutil.tmp_name(target), fsutil.tmp_name(target)
    assert a != b
    assert os.path.dirname(a) == str(tmp_path)
    assert os.path.basename(a).startswith(".build.json" + fsutil.TMP_MARK)


def test_makedirs_creates_levels_and_is_idempotent(tmp_path):
    d = tmp_path / "a" / "b" / "c"
    fsutil.makedirs(str(d))
    assert d.is_dir()
    fsutil.makedirs(str(d))
    assert d.is_dir()


def _age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_sweep_removes_only_old_temp_files(tmp_path):
    target = str(tmp_path / "state.json")
    old_tmp = fsutil.tmp_name(target)
    fresh_tmp = fsutil.tmp_name(target)
    for p in (old_tmp, fresh_tmp, target):
        with open(p, "wb") as f:
            f.write(b"x")
    old_plain = tmp_path / "old-but-not-temporary"
    old_plain.write_bytes(b"keep me")
    _age(old_tmp, fsutil.TMP_SWEEP_AGE_SEC + 60)
    _age(str(old_plain), fsutil.TMP_SWEEP_AGE_SEC + 60)
    _age(target, fsutil.TMP_SWEEP_AGE_SEC + 60)
    # Just under the age: a writer may still be working on it.
    _age(fresh_tmp, fsutil.TMP_SWEEP_AGE_SEC - 60)

    assert fsutil.sweep_stale_tmp(str(tmp_path), dry_run=True) == [old_tmp]
    assert os.path.exists(old_tmp)
    assert fsutil.sweep_stale_tmp(str(tmp_path)) == [old_tmp]
    assert not os.path.exists(old_tmp)
    assert os.path.exists(fresh_tmp) and os.path.exists(target) and old_plain.exists()


def test_sweep_of_a_tmp_directory_takes_any_old_name(tmp_path):
    # The spool's tmp/ directories hold plain ids, not ".NAME.tmp-" names.
    d = tmp_path / "tmp"
    d.mkdir()
    (d / "old").write_bytes(b"")
    (d / "new").write_bytes(b"")
    _age(str(d / "old"), fsutil.TMP_SWEEP_AGE_SEC + 1)
    assert fsutil.sweep_stale_tmp(str(d)) == [str(d / "old")]
    assert os.listdir(d) == ["new"]


def test_sweep_with_explicit_now_and_age(tmp_path):
    p = fsutil.tmp_name(str(tmp_path / "x"))
    open(p, "wb").close()
    mtime = os.stat(p).st_mtime
    assert fsutil.sweep_stale_tmp(str(tmp_path), now=mtime + 9, age=10) == []
    assert fsutil.sweep_stale_tmp(str(tmp_path), now=mtime + 11, age=10) == [p]


def test_sweep_of_missing_directory_is_empty(tmp_path):
    assert fsutil.sweep_stale_tmp(str(tmp_path / "nope")) == []


def test_paired_constants():
    # A writer gives up long before the sweeper could take its file.
    assert fsutil.TMP_WRITER_MAX_SEC < fsutil.TMP_SWEEP_AGE_SEC
