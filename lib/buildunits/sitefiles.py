"""Sitefiles: how the static site's files are written.

Every file of the site is replaced atomically, written to a hidden
temporary name (fsutil.tmp_name: .NAME.tmp-PID-RANDOM) and renamed into
place, so a web server never serves half a page; without fsync, since the
site is derived data that a rebuild recreates (a crash costs a second
rendering of what was being written).  A raw log is a hard link to the
state's log, or a copy across filesystems, made from the descriptor the
reader opened (never through a link planted at its name); a copy of a
log that grew gets only the new bytes appended (_append).

A directory made whole (a finished build's, the first time: Site.
_render_build) is written in a fresh hidden directory instead
(begin_dir(): fsutil.tmp_name's .NAME.tmp-PID-RANDOM, no other writer
knows it, no link leads into it), with plain writes and links, no
temporary name and rename per file, and renamed into place once
(commit_dir(), its commit point): a reader finds no directory, or the
directory with every one of its pages whole.  A crash leaves the hidden
directory, which htmlgen's sweep removes with the other temporary files
(fsutil.sweep_stale_tmp), and no .final: the build is rendered again.

SiteFiles counts what it writes: Site.update() returns that count.
"""

import errno
import json
import os
import stat
import time
from urllib.parse import unquote

from . import fsutil, templates

_COPY_CHUNK = 1024 * 1024
MARK_FILE = ".buildunits-final"      # in the site's top: the file every build's .final is a link to
_CHECK_BYTES = 4096                  # of a copy's tail, compared with the log before appending


class SiteFiles:
    """The files under ROOT, and how many this pass wrote (count)."""

    def __init__(self, root):
        self.root = root
        self.count = 0
        self._dirs = set()       # directories known to exist
        self._mark = None        # the text MARK_FILE was found or made to hold
        self._fresh = set()      # hidden directories begun (begin_dir) and not yet committed

    def forget_dirs(self):
        self._dirs = set()

    def path(self, rel):
        """The file at REL, a path from the top as links spell it (quoted)."""
        return os.path.join(self.root, *(unquote(part) for part in rel.split("/")))

    def mkdir(self, d):
        if d not in self._dirs:
            os.makedirs(d, exist_ok=True)
            self._dirs.add(d)

    def remove(self, path):
        """Remove the file or directory tree PATH of the site (a removed
        build's pages), following no link; counted if it was there."""
        import shutil
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                shutil.rmtree(path)
                self._dirs = {d for d in self._dirs if d != path and not d.startswith(path + os.sep)}
            else:
                os.unlink(path)
        except FileNotFoundError:
            return
        self.count += 1

    def begin_dir(self, d):
        """A fresh hidden directory beside D, to be D once commit_dir()
        renames it: what is written in it is written plainly."""
        self.mkdir(os.path.dirname(d))
        tmp = fsutil.tmp_name(d)
        os.mkdir(tmp)
        self._fresh.add(tmp)
        self._dirs.add(tmp)
        return tmp

    def commit_dir(self, tmp, d):
        """Rename the directory TMP (begin_dir) to D: the commit point of
        every file in it.  False if D exists already (another writer made
        it meanwhile): TMP is removed, and the caller writes in D."""
        self._fresh.discard(tmp)
        self._dirs.discard(tmp)
        try:
            os.rename(tmp, d)      # commit point
        except OSError as e:
            self.abandon_dir(tmp)
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                return False
            raise
        self._dirs.add(d)
        return True

    def abandon_dir(self, tmp):
        import shutil
        self._fresh.discard(tmp)
        self._dirs.discard(tmp)
        shutil.rmtree(tmp, ignore_errors=True)

    def in_fresh(self, path):
        """Whether PATH is in a directory begun by begin_dir and not committed."""
        return bool(self._fresh) and os.path.dirname(path) in self._fresh

    def write(self, path, data):
        if self.in_fresh(path):
            _write_plain(path, data.encode("utf-8") if isinstance(data, str) else data)
            self.count += 1
            return
        self.mkdir(os.path.dirname(path))
        try:
            fsutil.write_atomic(path, data, durable=False)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)  # removed under us
            fsutil.write_atomic(path, data, durable=False)
        self.count += 1

    def write_page(self, rel, template, **context):
        """TEMPLATE rendered with CONTEXT (which names the site_title) at REL."""
        context.setdefault("feed", "")
        context.setdefault("generated", time.time())
        context.setdefault("zone", time.strftime("%z"))
        self.write(self.path(rel), templates.render(template, **context))

    def write_json(self, rel, doc, builds=None, key="builds"):
        """DOC as JSON, ASCII so that lone surrogates from records stay
        representable; BUILDS (texts of JSON objects) as its last key, KEY."""
        text = json.dumps(doc, ensure_ascii=True, separators=(",", ":"))
        if builds is not None:
            text = '%s,"%s":[%s]}' % (text[:-1], key, ",".join(builds))
        self.write(self.path(rel), text + "\n")

    def write_pieces(self, path, pieces):
        """Replace PATH atomically with the str PIECES, written as they come."""
        if self.in_fresh(path):
            with open(os.open(path, _PLAIN, 0o644), "w", encoding="utf-8", buffering=256 * 1024) as f:
                for piece in pieces:
                    f.write(piece)
            self.count += 1
            return
        tmp = fsutil.tmp_name(path)
        try:
            with open(tmp, "x", encoding="utf-8", buffering=256 * 1024) as f:
                for piece in pieces:
                    f.write(piece)
            os.rename(tmp, path)  # commit point
        except BaseException:
            fsutil._unlink_quietly(tmp)
            raise
        self.count += 1

    def prepare_mark(self, text):
        """MARK_FILE made to hold TEXT now, before worker processes fork:
        each would otherwise find it missing and make its own, and the
        .final files would be links to several files (all holding TEXT)."""
        shared = os.path.join(self.root, MARK_FILE)
        try:
            with open(shared, encoding="utf-8") as f:
                held = f.read()
        except (OSError, ValueError):
            held = None
        if held != text:
            self.mkdir(self.root)
            fsutil.write_atomic(shared, text, durable=False)
        self._mark = text

    def mark(self, path, text):
        """Make PATH a file holding TEXT (a build's .final): a hard link to
        the site's one MARK_FILE, made when it does not hold TEXT.  A link
        costs a directory entry where a new file costs an inode, which some
        filesystems make as dear as the page it marks (0.8 ms of kernel
        time here: a seventh of a build's files).  Replaced by rename, as
        every file of the site; MARK_FILE too, so that the links made to an
        older one (another TEXT, or one with as many links as its
        filesystem allows) keep what they held.  Where links fail, a file."""
        shared = os.path.join(self.root, MARK_FILE)
        direct = self._mark == text and not os.path.lexists(path)
        if direct:
            # PATH is new (a .final after its directory was committed): a
            # link is made whole or not at all, no temporary name needed.
            try:
                os.link(shared, path, follow_symlinks=False)
                return
            except OSError:
                pass           # full, gone, or made meanwhile: as below
        for attempt in (1, 2):
            if self._mark != text or attempt == 2:
                try:
                    with open(shared, encoding="utf-8") as f:
                        held = f.read()
                except (OSError, ValueError):
                    held = None
                if held != text or attempt == 2:
                    self.mkdir(self.root)
                    fsutil.write_atomic(shared, text, durable=False)
                self._mark = text
            tmp = fsutil.tmp_name(path)
            try:
                os.link(shared, tmp, follow_symlinks=False)
            except OSError as e:
                if e.errno in (errno.EMLINK, errno.ENOENT) and attempt == 1:
                    continue   # full, or removed under us: a new one
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EACCES, errno.EMLINK,
                                   errno.ENOENT):
                    raise
                break
            try:
                os.rename(tmp, path)  # commit point
            except BaseException:
                fsutil._unlink_quietly(tmp)
                raise
            return
        fsutil.write_atomic(path, text, durable=False)

    def link_or_copy(self, src, dst, fd):
        """Make DST the raw log SRC, open as FD; counted if it was (re)written."""
        self.count += int(link_or_copy(src, dst, fd, fresh=self.in_fresh(dst)))


_PLAIN = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _write_plain(path, data):
    """Write DATA (bytes) to the new file PATH, in a directory begun by
    begin_dir (its rename is the commit point: no temporary name here)."""
    fd = os.open(path, _PLAIN, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def link_or_copy(src, dst, fd, fresh=False):
    """Make DST the raw log SRC, open as FD (a regular file reached without
    a link): a hard link, or a chunked copy across filesystems.  True if
    DST was (re)written.  What is linked is checked to be FD's file, never
    what a link at SRC's name points to.  FRESH: DST is new, in a
    directory not committed yet (SiteFiles.begin_dir): made in place."""
    s = os.fstat(fd)
    if fresh:
        try:
            os.link(src, dst, follow_symlinks=False)
            if os.path.samestat(os.lstat(dst), s):
                return True
            os.unlink(dst)      # SRC was replaced since FD was opened
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.EACCES,
                               errno.ENOENT):
                raise
        _copy(fd, dst)
        return True
    try:
        d = os.stat(dst)
        if (d.st_dev, d.st_ino) == (s.st_dev, s.st_ino):
            return False  # the link: it grows with the log by itself
        if (d.st_size, d.st_mtime_ns) == (s.st_size, s.st_mtime_ns):
            return False  # a copy that is current
        if _append(fd, dst, d, s):
            return True
    except FileNotFoundError:
        pass
    tmp = fsutil.tmp_name(dst)
    try:
        try:
            os.link(src, tmp, follow_symlinks=False)
            if not os.path.samestat(os.lstat(tmp), s):
                # SRC was replaced since FD was opened (by a link, perhaps).
                os.unlink(tmp)
                _copy(fd, tmp)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.EACCES,
                               errno.ENOENT):
                raise
            _copy(fd, tmp)
        # Replace, never unlink first: a reader sees the old file or the new.
        os.rename(tmp, dst)
    except BaseException:
        fsutil._unlink_quietly(tmp)
        raise
    return True


def _append(fd, dst, d, s):
    """Bring the copy DST (stat D) of a log that grew (FD, stat S) up to
    date by appending the bytes past its end; False if it is not a prefix
    of the log (the log was replaced or cut: copy it whole).  A log only
    grows while its step runs, so a running step's log is copied once in
    all, a piece per pass, never again whole on every pass (a copy per
    second would still write the log again and again: 100 MB x its
    duration).  A reader sees a prefix of the log, as it would through a
    link; a crash mid-append leaves a longer prefix, which the next pass
    goes on from.  The tail of the copy is checked against the log at
    that offset, so a copy that is not of this log is never appended to."""
    if not (stat.S_ISREG(d.st_mode) and 0 < d.st_size < s.st_size and d.st_nlink == 1):
        return False
    check = min(d.st_size, _CHECK_BYTES)
    with open(os.open(dst, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC), "r+b") as fo:
        if not os.path.samestat(os.fstat(fo.fileno()), d):
            return False
        fo.seek(d.st_size - check)
        if fo.read(check) != os.pread(fd, check, d.st_size - check):
            return False
        _pump(fd, d.st_size, fo)
    os.utime(dst, ns=(s.st_atime_ns, os.fstat(fd).st_mtime_ns))
    return True


def _pump(fd, offset, fo):
    """Write FD's bytes from OFFSET to its end into FO."""
    while True:
        chunk = os.pread(fd, _COPY_CHUNK, offset)
        if not chunk:
            return
        fo.write(chunk)
        offset += len(chunk)


def _copy(fd, dst):
    with open(dst, "xb") as fo:
        _pump(fd, 0, fo)
    st = os.fstat(fd)
    # The source's times, so the next pass can tell the copy is current.
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


stamp = fsutil.stamp   # what tells one version of a file from another, or None
