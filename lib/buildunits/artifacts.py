"""What a build made and keeps: Artifacts= files copied out of the work directory.

After a step with Artifacts= (and after the last step, for the
builder's Artifacts=), the files of the work directory that match its
patterns are copied into the build's directory, builds/B/N/artifacts/,
under the same relative names, and each is listed in the build record
with its size and SHA-256.  The work directory is the steps', and
hostile: nothing it holds may lead a copy elsewhere or make one
unbounded.

- A pattern is a relative path of shell globs, one per component
  (fnmatch: `*` does not cross a "/"); "..", an absolute path or an
  empty component is refused, with the reason, and matches nothing.
- Each directory on the way is opened without following a link
  (O_NOFOLLOW, from the work directory's own descriptor), so a directory
  that is a symbolic link is not entered: what it points to may be
  outside.  A file that is a symbolic link is copied only if what it
  points to, resolved, is a regular file inside the work directory;
  else it is refused ("points outside the work directory").  Only
  regular files are copied (no FIFOs, devices or sockets), each opened
  with O_NOFOLLOW|O_NONBLOCK and checked again by fstat.
- The copies are the build's own: a reflink (FICLONE) where the file
  system allows, else a copy.  Never a hard link: the work directory's
  files stay writable by the next build's steps, and a hard link would
  let them rewrite history.
- MaxArtifactSize= bounds the build's artifacts together: a file that
  would go over it is refused ("over MaxArtifactSize="), the ones before
  it are kept.  A name is at most 1024 bytes and a build keeps at most
  MAX_FILES files.
- Each copy is written as a hidden temporary file in artifacts/, then
  renamed into its name: a crash leaves a hidden .tmp-* file, or whole
  files the record does not list yet; the record (written at the end of
  the build, the commit point of its result) lists only whole ones.

By the time this runs, nothing of the step runs any more (its processes
end with it: executor.py), so nothing changes the files under it.
"""

import errno
import fcntl
import fnmatch
import hashlib
import os
import stat

MAX_FILES = 1000
MAX_NAME = 1024
CHUNK = 1 << 20
_FICLONE = 0x40049409       # linux/fs.h


def pattern_problem(pattern):
    """Why PATTERN cannot be an Artifacts= pattern, or ""."""
    if not pattern or pattern.startswith("/"):
        return "%r is not a path relative to the work directory" % pattern
    parts = pattern.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "%r: every component must be a name or a glob (no '', '.' or '..')" % pattern
    return ""


class Collector:
    """The artifacts of one build: copied from WORKDIR into DEST (the
    build's artifacts/ directory), at most LIMIT bytes together."""

    def __init__(self, workdir, dest, limit):
        self.workdir = workdir
        self.dest = dest
        self.limit = limit
        self.total = 0
        self.kept = []          # [{"name", "size", "sha256", "step"}]
        self.refused = []       # [{"name", "reason", "step"}]

    def collect(self, patterns, step):
        """Copy what PATTERNS match, after STEP; return the lines to say in
        its log (what was kept and what refused, and why)."""
        notes = []
        for pat in patterns:
            why = pattern_problem(pat)
            if why:
                self._refuse(pat, why, step, notes)
                continue
            found = self._match(pat.split("/"))
            if not found:
                notes.append("buildunits: Artifacts=%s: no file matches\n" % pat)
            for rel in found:
                if any(a["name"] == rel for a in self.kept):
                    continue
                self._copy(rel, step, notes)
        return notes

    # ------------------------------------------------------------ matching
    def _match(self, parts):
        """The relative names of the entries PARTS (globs) match, sorted,
        walking from the work directory without following links."""
        out = []
        try:
            top = os.open(self.workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return out
        self._walk(top, "", parts, out)
        return sorted(out)

    def _walk(self, dfd, prefix, parts, out):
        try:
            try:
                names = sorted(os.listdir(dfd))
            except OSError:
                return
            head, rest = parts[0], parts[1:]
            for name in names:
                if name.startswith(".") and not head.startswith("."):
                    continue            # as a shell's glob: * does not match a dot file
                if not fnmatch.fnmatchcase(name, head):
                    continue
                rel = prefix + name
                if not rest:
                    out.append(rel)
                    continue
                try:
                    sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                except OSError:
                    continue            # not a directory, or a link to one: not entered
                self._walk(sub, rel + "/", rest, out)
        finally:
            os.close(dfd)

    # ------------------------------------------------------------- copying
    def _refuse(self, name, why, step, notes):
        self.refused.append({"name": name, "reason": why, "step": step})
        notes.append("buildunits: artifact %s not kept: %s\n" % (_shown(name), why))

    def _open_source(self, rel):
        """A descriptor of the regular file REL of the work directory, or
        (None, why)."""
        path = os.path.join(self.workdir, rel)
        try:
            st = os.lstat(path)
        except OSError as e:
            return None, e.strerror
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(path)
            root = os.path.realpath(self.workdir)
            if os.path.commonpath([real, root]) != root:
                return None, "a symbolic link that points outside the work directory"
            path = real
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            return None, e.strerror
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None, "not a regular file"
        return fd, None

    def _copy(self, rel, step, notes):
        if len(self.kept) >= MAX_FILES:
            return self._refuse(rel, "over %d files" % MAX_FILES, step, notes)
        if len(rel.encode("utf-8", "surrogateescape")) > MAX_NAME:
            return self._refuse(rel, "a name over %d bytes" % MAX_NAME, step, notes)
        src, why = self._open_source(rel)
        if src is None:
            return self._refuse(rel, why, step, notes)
        try:
            size = os.fstat(src).st_size
            if self.total + size > self.limit:
                return self._refuse(rel, "over MaxArtifactSize= (%d bytes kept, this one %d)"
                                    % (self.total, size), step, notes)
            target = os.path.join(self.dest, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = os.path.join(os.path.dirname(target), ".tmp-%d-%s" % (os.getpid(), os.path.basename(target)[:64]))
            try:
                digest, size = _copy_fd(src, tmp, self.limit - self.total)
                os.rename(tmp, target)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except _TooBig:
            return self._refuse(rel, "over MaxArtifactSize= (it grew while copied)", step, notes)
        except OSError as e:
            return self._refuse(rel, "cannot copy it: %s" % e.strerror, step, notes)
        finally:
            os.close(src)
        self.total += size
        self.kept.append({"name": rel, "size": size, "sha256": digest, "step": step})
        notes.append("buildunits: artifact %s kept (%d bytes, sha256 %s)\n" % (_shown(rel), size, digest))
        return None


class _TooBig(Exception):
    pass


def _copy_fd(src, path, budget):
    """Copy SRC into the new file PATH (a reflink where possible):
    (sha256 hex, size).  _TooBig past BUDGET bytes."""
    h = hashlib.sha256()
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    size = 0
    try:
        cloned = False
        try:
            fcntl.ioctl(out, _FICLONE, src)
            cloned = True
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EBADF, errno.EPERM):
                raise
        os.lseek(src, 0, os.SEEK_SET)
        while True:
            data = os.read(src, CHUNK)
            if not data:
                break
            size += len(data)
            if size > budget:
                raise _TooBig()
            h.update(data)
            if not cloned:
                view = memoryview(data)
                while view:
                    view = view[os.write(out, view):]
        os.fsync(out)
    finally:
        os.close(out)
    return h.hexdigest(), size


def _shown(name):
    """NAME for a log line: one line, control characters as "?"."""
    return "".join(c if c.isprintable() else "?" for c in name)
