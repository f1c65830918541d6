"""Open files under a root without following a symbolic link.

A build step runs as the same user as the daemons and can plant a link
anywhere in the state tree; state.py reaches builds/B/N/FILE through these,
with O_NOFOLLOW at every component below the root (docs/design.md,
"Nothing under builds/ is followed through a symbolic link").

Symbolic links are never records.  A build step runs as the same user
and can write here, so whatever it plants is hostile: the readers of the
builds tree (build_numbers, builders, read_build, open_log) walk it with
O_NOFOLLOW at every step below builds/, so a link to a directory or a file
elsewhere is neither followed nor shown (fsck reports it), and the runner
creates each step log with O_EXCL, never writing through what is there.
"""

import errno
import os
import stat


class NotLinked(ValueError):
    """A symbolic link (or a non-directory) where the state tree must have
    a directory or a file of its own: not followed."""

    def __init__(self, path, link):
        self.path = path
        self.reason = "a symbolic link, not followed" if link else "not a directory"
        super().__init__("%s: %s" % (path, self.reason))


def open_dir(root, parts):
    """A descriptor of the directory ROOT/PARTS, reached without following
    a symbolic link below ROOT (NotLinked if there is one, or a file where
    a directory should be)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    link = stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode)
                    raise NotLinked(os.path.join(root, *parts[:i + 1]), link)
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(root, parts, flags=os.O_RDONLY, mode=0o644):
    """os.open of ROOT/PARTS, following no symbolic link below ROOT
    (NotLinked if there is one, or a file where a directory should be).
    Never blocks on a FIFO."""
    dfd = open_dir(root, parts[:-1])
    try:
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dfd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotLinked(os.path.join(root, *parts), True)
        raise
    finally:
        os.close(dfd)


def walk(top, depth, enter=None, _level=0):
    """(path, lstat mode, level) of each entry of TOP and of its
    directories down to level DEPTH, sorted by name; a symbolic link is
    listed, never entered, nor is a directory for which ENTER(path,
    level) is false.  The type comes from the directory listing
    (d_type) where the filesystem gives it, so a tree of 100k builds is
    listed without an lstat per file."""
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError:
        return
    for e in entries:
        try:
            mode = _mode(e)
        except OSError:
            continue
        yield e.path, mode, _level
        if stat.S_ISDIR(mode) and _level < depth and (enter is None or enter(e.path, _level)):
            yield from walk(e.path, depth, enter, _level + 1)


def _mode(e):
    """The file type of the DirEntry E as a mode (S_IFMT bits only, unless
    the listing does not tell, when it is E's lstat mode)."""
    if e.is_symlink():
        return stat.S_IFLNK
    if e.is_dir(follow_symlinks=False):
        return stat.S_IFDIR
    if e.is_file(follow_symlinks=False):
        return stat.S_IFREG
    return e.stat(follow_symlinks=False).st_mode
