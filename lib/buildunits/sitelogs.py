"""Sitelogs: a step's log page, and following the log of a running step.

A log page (builders/B/N/NN-STEP.html) shows the first lines of the
step's log with an anchor per line, at most MAX_LOG_LINES lines or
MAX_LOG_BYTES bytes, read line by line as the page is written, so memory
does not grow with a log; beside it NN-STEP.txt is the whole log (a hard
link to the state's, or a copy).  Colour codes and terminal titles are
removed, other control characters and bytes that are not UTF-8 show as
U+FFFD, and a longer line than MAX_LINE_BYTES is cut.

A step can plant a link at a log's name: only a regular file of the
build's own directory, reached without a link (State.open_log), is shown,
linked or copied.

LogPages remembers what each page was rendered from (the log's size and
time, the step, the title), so a page is written again only when one of
them changed: follow() looks at each running step's log (one lstat) and
writes the pages of those that grew, and nothing else.
"""

import json
import os
import re
import stat
from urllib.parse import quote

import markupsafe

from . import templates
from .siteviews import build_view, log_stem

MAX_LOG_LINES = 5000
MAX_LOG_BYTES = 2 * 1024 * 1024
MAX_LINE_BYTES = 64 * 1024           # a longer line is shown cut
_SKIP_CHUNK = 1024 * 1024
_UNREAD = object()


class LogPages:
    """The log pages of the site written through FILES (a SiteFiles), from STATE."""

    def __init__(self, files, state):
        self.files = files
        self.state = state
        self._memo = {}          # log page path -> what it was rendered from

    def render(self, bdir, build, step, title, force):
        """Write STEP's raw log and log page in BDIR, the site's directory
        of BUILD (a siteviews.build_view), if they changed."""
        name, n = build["builder"], build["number"]
        src = self.state.build_file(name, n, step["log_file"])
        raw = os.path.join(bdir, step["log_raw"])
        page = os.path.join(bdir, step["log_page"])
        fd = self.state.open_log(name, n, step["log_file"])
        try:
            if fd is not None:
                self.files.link_or_copy(src, raw, fd)
            step = dict(step, log_raw=step["log_raw"] if os.path.exists(raw) else "")
            if fd is not None:
                st = os.fstat(fd)
                source = (st.st_size, st.st_mtime_ns)
            else:
                source = None
            memo = (source, json.dumps(step, sort_keys=True, default=str), title)
            if not force and self._memo.get(page) == memo and os.path.exists(page):
                return
            excerpt = LogExcerpt(src, fd=fd)
            context = dict(title="%s #%d %s" % (name, n, step["name"]), root="../../../", refresh=0,
                           site_title=title, builder_html="builders/%s/index.html" % quote(name, safe=""),
                           build=build, step=step, log=excerpt, max_lines=MAX_LOG_LINES, max_bytes=MAX_LOG_BYTES)
            if excerpt.size < MAX_LINE_BYTES:
                # A short log: its page is small, made as one string and
                # written at once (a piece per write costs more than it).
                self.files.write(page, templates.render("log.html", **context))
            else:
                self.files.write_pieces(page, templates.generate("log.html", **context))
        finally:
            if fd is not None:
                os.close(fd)
        self._memo[page] = memo

    def follow(self, running, title):
        """Write again the pages of the logs of running steps that changed
        since their page was written.  RUNNING: (the site's directory of a
        build, its record) of each running build."""
        for bdir, rec in running:
            grew = self._grew(bdir, rec)
            if grew:
                view = build_view(rec)
                for step in view["steps"]:
                    if step["log_page"] in grew:
                        self.render(bdir, view, step, title, force=False)

    def _grew(self, bdir, rec):
        """The log pages of the running steps of REC whose log changed since
        their page in BDIR was written: one lstat per running step."""
        grew = set()
        for s in rec.get("steps") if isinstance(rec.get("steps"), list) else []:
            stem = log_stem(s.get("log")) if isinstance(s, dict) and s.get("state") == "running" else ""
            if not stem:
                continue
            try:
                st = os.lstat(self.state.build_file(rec["builder"], rec["number"], stem + ".log"))
                source = (st.st_size, st.st_mtime_ns)
            except OSError:
                source = None
            memo = self._memo.get(os.path.join(bdir, stem + ".html"))
            if memo is None or memo[0] != source:
                grew.add(stem + ".html")
        return grew

    def forget(self, bdir):
        """The pages of BDIR are final: nothing to remember of them."""
        for key in [k for k in self._memo if k.startswith(bdir + os.sep)]:
            del self._memo[key]

    def forget_all(self):
        self._memo = {}


_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")   # _CONTROL's, \r and escape included


class LogExcerpt:
    """The first lines of a log file, read only as they are iterated.

    Iterating yields (line number, text).  Afterwards, `shown` is the
    number of lines yielded and `truncated` says whether the file holds
    more.  A missing file yields nothing (`missing` is true).
    """

    def __init__(self, path, max_lines=MAX_LOG_LINES, max_bytes=MAX_LOG_BYTES, fd=_UNREAD):
        # FD: the log, opened by the caller (None: there is none to show);
        # else PATH is opened, but never through a symbolic link.
        self.path = path
        self.fd = fd
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.shown = 0
        self.truncated = False
        try:
            if fd is None:
                raise FileNotFoundError(path)
            st = os.lstat(path) if fd is _UNREAD else os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FileNotFoundError(path)
            self.size = st.st_size
            self.missing = False
        except OSError:
            self.size = 0
            self.missing = True

    def __iter__(self):
        try:
            if self.missing:
                raise FileNotFoundError(self.path)
            if self.fd is _UNREAD:
                f = open(os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC), "rb")
            else:
                f = open(os.dup(self.fd), "rb")
                f.seek(0)
        except OSError:
            self.missing = True
            return
        with f:
            consumed = 0
            while self.shown < self.max_lines and consumed < self.max_bytes:
                line = f.readline(MAX_LINE_BYTES)
                if not line:
                    return
                consumed += len(line)
                cut = not line.endswith(b"\n")
                # Skip the rest of an overlong line without holding it.
                while cut and consumed < self.max_bytes:
                    rest = f.readline(_SKIP_CHUNK)
                    consumed += len(rest)
                    if not rest or rest.endswith(b"\n"):
                        break
                self.shown += 1
                yield self.shown, _clean(line, cut and len(line) == MAX_LINE_BYTES)
            self.truncated = bool(f.read(1))

    def _whole(self):
        """The lines of a short plain log, read and cleaned at once, or
        None when the log is not one (then line by line, __iter__).
        Short: under MAX_LINE_BYTES in all, so no line is cut and no
        limit reached; plain: no byte _clean() would change (a control
        character, an escape, a carriage return), so that what is left to
        do is the decoding, which a newline never falls inside of, and the
        escaping, which is character by character: done on the whole log
        they give what they give line by line."""
        if self.missing or self.fd is _UNREAD or self.max_lines < 1 or self.max_bytes < MAX_LINE_BYTES:
            return None
        try:
            data = os.pread(self.fd, MAX_LINE_BYTES, 0)
        except OSError:
            return None
        if len(data) >= MAX_LINE_BYTES or _CONTROL_BYTES.search(data):
            return None
        if not data:
            return []
        lines = str(markupsafe.escape(data.decode("utf-8", errors="replace"))).split("\n")
        if data.endswith(b"\n"):
            lines.pop()
        if len(lines) > self.max_lines:
            return None
        self.shown = len(lines)
        self.truncated = False
        return lines

    def html(self, batch=256):
        """The lines as HTML, each with its anchor, in pieces of BATCH
        lines: made here, not in the template, since a log has thousands
        of lines and a template pays per piece.  The text is escaped; the
        rest is numbers."""
        whole = self._whole()
        if whole is not None:
            for i in range(0, len(whole), batch):
                yield markupsafe.Markup("".join(
                    '<a class="ln" id="L%d" href="#L%d">%d</a>%s\n' % (n, n, n, text)
                    for n, text in enumerate(whole[i:i + batch], i + 1)))
            return
        out = []
        for n, text in self:
            out.append('<a class="ln" id="L%d" href="#L%d">%d</a>%s\n' % (n, n, n, markupsafe.escape(text)))
            if len(out) >= batch:
                yield markupsafe.Markup("".join(out))
                out = []
        if out:
            yield markupsafe.Markup("".join(out))


def _clean(line, cut):
    text = line.decode("utf-8", errors="replace").rstrip("\n").rstrip("\r")
    # Colour codes and terminal titles are noise in a page; other control
    # characters are not allowed in HTML text, so they show as U+FFFD.
    text = _CONTROL.sub("\ufffd", _ANSI.sub("", text))
    return text + " [line cut]" if cut else text
