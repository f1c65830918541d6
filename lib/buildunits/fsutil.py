"""Durable file writes: the one place that knows how to make a write stick.

write_atomic() is temp file + fsync + rename + fsync of the directory.
The rename is the commit point: before it, readers see the old file (or
none); after it, the new one, even across a crash or power loss.  A crash
before the rename leaves at most a hidden temporary file (".NAME.tmp-*")
beside the target; sweep_stale_tmp() removes those once they are older
than TMP_SWEEP_AGE_SEC.
"""

import hashlib
import os
import shutil
import re
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


def stamp(path, follow_symlinks=True):
    """What tells one version of the file PATH from another (inode, mtime,
    size), or None if there is none."""
    try:
        st = os.stat(path, follow_symlinks=follow_symlinks)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


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


def sweep_stale_tmp(directory, now=None, age=TMP_SWEEP_AGE_SEC, dry_run=False, everything=None, dead=False):
    """Remove abandoned temporary files in DIRECTORY; return their paths.
    EVERYTHING: every file is temporary (default: when DIRECTORY is a tmp/).
    A hidden temporary directory (tmp_name()'s, a directory written whole
    before its rename: sitefiles.SiteFiles.begin_dir) goes with what it
    holds.  DEAD: also, whatever their age, the hidden temporary names
    whose writer (the PID in the name) is no process now: for the one
    writer of a tree (htmlgen, holding its lock), whose earlier instance
    and children are gone."""
    if everything is None:
        everything = os.path.basename(directory) == "tmp"
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
        hidden = e.name.startswith(".") and TMP_MARK in e.name
        if not everything and not hidden:
            continue
        try:
            if now - e.stat(follow_symlinks=False).st_mtime < age and not (dead and hidden and _writer_gone(e.name)):
                continue
            is_dir = e.is_dir(follow_symlinks=False)
        except FileNotFoundError:
            continue
        swept.append(e.path)
        if not dry_run:
            if is_dir and hidden:
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                _unlink_quietly(e.path)
    return swept


def _writer_gone(name):
    """Whether the writer of the temporary NAME (tmp_name()'s: .BASE.tmp-PID-HEX)
    is no process now."""
    pid = name.rpartition(TMP_MARK)[2].partition("-")[0]
    if not pid.isdigit() or not 0 < int(pid) < 2 ** 31 or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def stale_tmp(paths, now=None, age=TMP_SWEEP_AGE_SEC):
    """Those of PATHS (files listed already) that are hidden temporary
    files (tmp_name()'s) older than AGE: what sweep_stale_tmp() would
    remove from their directories, without listing them again."""
    now = time.time() if now is None else now
    out = []
    for p in paths:
        name = os.path.basename(p)
        if not (name.startswith(".") and TMP_MARK in name):
            continue
        try:
            if now - os.lstat(p).st_mtime >= age:
                out.append(p)
        except FileNotFoundError:
            continue
    return out


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def sweep_stale_tmp_tree(top, now=None, age=TMP_SWEEP_AGE_SEC, dry_run=False, dead=False):
    """sweep_stale_tmp() in TOP and every directory below it (not through
    symbolic links); return the paths removed."""
    swept = []
    for d, dirs, _names in os.walk(top):
        got = sweep_stale_tmp(d, now=now, age=age, dry_run=dry_run, everything=False, dead=dead)
        swept += got
        gone = {os.path.basename(p) for p in got}
        dirs[:] = [n for n in dirs if n not in gone]
    return swept


def move_aside(path, directory, prefix, reason):
    """Move the broken file PATH to DIRECTORY/PREFIX.NAME (NAME: its own)
    with REASON in a .reason file beside it (the reason first); return
    where it went, or None if PATH was gone.  Never deletes anything: a
    name taken already gets a random suffix.  A NAME that is not UTF-8, or
    too long to carry a prefix and a suffix, is shortened to something
    printable plus a digest."""
    base = os.path.basename(path)
    raw = os.fsencode(base)
    printable = raw.decode("utf-8", "replace")
    if printable != base or len(raw) > 160:
        digest = hashlib.sha256(raw).hexdigest()[:12]
        base = "%s-%s" % (re.sub(r"[^A-Za-z0-9._-]", "_", printable)[:100], digest)
    name = "%s.%s" % (prefix, base)
    dest = os.path.join(directory, name)
    if os.path.lexists(dest):
        dest = "%s.%s" % (dest, secrets.token_hex(3))
    makedirs(directory)
    # The reason first: a crash between the two leaves a reason for a file
    # still in place, and the next read moves it again.
    shown = os.fsencode(path).decode("utf-8", "replace")
    write_atomic(dest + ".reason", "%s\nfrom: %s\nwhen: %s\n" % (reason, shown, time.strftime("%Y-%m-%d %H:%M:%S %z")))
    try:
        os.rename(path, dest)
    except FileNotFoundError:
        _unlink_quietly(dest + ".reason")
        return None
    fsync_dir_after_commit(directory)
    return dest


def read_aside(directory):
    """[(name, first line of its reason)] of the files move_aside() put in DIRECTORY."""
    out = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return out
    for n in names:
        if n.endswith(".reason") or n.startswith("."):
            continue
        try:
            with open(os.path.join(directory, n + ".reason"), encoding="utf-8", errors="replace") as f:
                reason = f.readline().strip()
        except FileNotFoundError:
            reason = "(no reason recorded)"
        out.append((n, reason))
    return out


def flock_held(path):
    """True if some process holds a flock(2) on the file PATH now, as
    /proc/locks says (read only: nothing is locked to find out)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    token = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    try:
        with open("/proc/locks") as f:
            for line in f:
                if token in line.split():
                    return True
    except OSError:
        pass
    return False
