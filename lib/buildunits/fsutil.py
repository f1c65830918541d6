"""Durable file writes: the one place that knows how to make a write stick.

write_atomic() is temp file + fsync + rename + fsync of the directory.
The rename is the commit point: before it, readers see the old file (or
none); after it, the new one, even across a crash or power loss.  A crash
before the rename leaves at most a hidden temporary file (".NAME.tmp-*")
beside the target; sweep_stale_tmp() removes those once they are older
than TMP_SWEEP_AGE_SEC.
"""

import os
import secrets
import time

# The longest a writer may hold a temporary file before it must give up
# rather than commit it.  Must stay well below TMP_SWEEP_AGE_SEC, so that a
# sweep can never remove a file a live writer is about to rename.
TMP_WRITER_MAX_SEC = 3600
# Age after which a temporary file is known to be abandoned by a crashed
# writer.  Must exceed TMP_WRITER_MAX_SEC (see there).
TMP_SWEEP_AGE_SEC = 36 * 3600

TMP_MARK = ".tmp-"


class WriterTooSlow(OSError):
    """A write took longer than TMP_WRITER_MAX_SEC and was abandoned."""


def fsync_dir(path):
    """Make a rename or link inside directory PATH durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Called with (directory, OSError) when the fsync of a directory after a
# commit point fails; daemons set it to log.  See fsync_dir_after_commit.
on_fsync_error = None


def fsync_dir_after_commit(path):
    """fsync_dir() after a rename that was the commit point.

    The rename has happened: every reader sees the new file, and the
    caller must treat the write as done (reporting a failure here would make
    it write again: a duplicate).  Only its survival of a power loss is in
    doubt, which is said through on_fsync_error, not raised."""
    try:
        fsync_dir(path)
    except OSError as e:
        if on_fsync_error is not None:
            on_fsync_error(path, e)


def tmp_name(path):
    """A unique hidden temporary name beside PATH."""
    d, base = os.path.split(path)
    return os.path.join(d, ".%s%s%d-%s" % (base, TMP_MARK, os.getpid(), secrets.token_hex(4)))


def write_new(path, data, mode=0o644, durable=True):
    """Write DATA (bytes) to the new file PATH, which must not exist.

    Used for temporary files before their rename.  Raises
    WriterTooSlow if writing took longer than TMP_WRITER_MAX_SEC (the file
    is removed): its sweeper could be about to delete it.
    """
    start = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(path)
        raise
    os.close(fd)
    if time.monotonic() - start > TMP_WRITER_MAX_SEC:
        _unlink_quietly(path)
        raise WriterTooSlow("writing %s took longer than %ds" % (path, TMP_WRITER_MAX_SEC))


def write_atomic(path, data, mode=0o644, durable=True):
    """Replace PATH with DATA (bytes or str) atomically.

    durable=False skips the fsyncs (still atomic for readers, not across a
    power loss): for derived files that can be regenerated, such as the
    static site.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = tmp_name(path)
    write_new(tmp, data, mode, durable)
    try:
        os.rename(tmp, path)  # commit point
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if durable:
        fsync_dir_after_commit(os.path.dirname(path) or ".")


def makedirs(path, mode=0o755):
    """mkdir -p, making each newly created level durable in its parent."""
    missing = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            continue
        fsync_dir(os.path.dirname(d))


def sweep_stale_tmp(directory, now=None, age=TMP_SWEEP_AGE_SEC, dry_run=False):
    """Remove abandoned temporary files in DIRECTORY; return their paths."""
    now = time.time() if now is None else now
    swept = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return swept
    for e in entries:
        # In a spool tmp/ directory everything is temporary; elsewhere only
        # the hidden names tmp_name() makes (".NAME.tmp-PID-HEX"), so a
        # file whose name merely contains ".tmp-" is never touched.
        if os.path.basename(directory) != "tmp" and not (e.name.startswith(".") and TMP_MARK in e.name):
            continue
        try:
            if now - e.stat(follow_symlinks=False).st_mtime < age:
                continue
        except FileNotFoundError:
            continue
        swept.append(e.path)
        if not dry_run:
            _unlink_quietly(e.path)
    return swept


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
