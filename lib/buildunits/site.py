"""Site: render the static pages (waterfall, builds, logs) from state.

Pure rendering, no event loop: htmlgen.py owns the loop and calls
update() with the builds its hints name, and rebuild() at start and on its
rescan timer.  Output layout, with relative links only, so it reads the
same through any web server or from file://:

    index.html                            the waterfall
    builders/BUILDER/NUMBER/index.html    a build
    builders/BUILDER/NUMBER/NN-STEP.html  a step's log, its first lines
    builders/BUILDER/NUMBER/NN-STEP.txt   the whole log, a hard link to
                                          state's NN-STEP.log (a copy when
                                          the site is on another filesystem)
    builders/BUILDER/NUMBER/.final        FINAL_MARK: these pages are done

Every file is replaced atomically (temp + rename), so a web server never
serves half a page; without fsync, since the site is derived data that a
rebuild recreates.

Pages of finished builds never change: they are written once, then .final
is written, and later passes skip the build (unless forced, or unless
.final holds another FINAL_MARK: bump it when a template change must reach
old pages).  A crash before .final costs a second rendering, nothing else.
Running builds are rendered again on each update, log pages only when
their log or step changed.  So an update costs the builds it touches plus
one waterfall (cfg.waterfall_depth builds per builder), never the history.

Log pages show at most MAX_LOG_LINES lines or MAX_LOG_BYTES bytes, read
line by line as the page is written, so memory does not grow with a log.
"""

import errno
import json
import os
import re
import time
from urllib.parse import quote

from . import fsutil, log, templates

FINAL_MARK = "buildunits-site 1\n"
MAX_LOG_LINES = 5000
MAX_LOG_BYTES = 2 * 1024 * 1024
MAX_LINE_BYTES = 64 * 1024      # a longer line is shown cut
MAX_CHANGES_SHOWN = 5           # per build on the waterfall
MAX_QUEUED_SHOWN = 5            # per builder on the waterfall
REFRESH_SEC = 60                # pages that change: waterfall, running builds
_COPY_CHUNK = 1024 * 1024


class Site:
    """The pages under SITE_DIR, rendered from STATE, SPOOL and CFG."""

    def __init__(self, site_dir, state, spool, cfg):
        self.root = site_dir
        self.state = state
        self.spool = spool
        self.cfg = cfg           # htmlgen replaces it on reload
        self._final = set()      # (builder, number) known to carry .final
        self._records = {}       # (builder, number) -> finished record (never changes)
        self._log_memo = {}      # log page path -> what it was rendered from
        self._warned = set()     # unreadable build records already logged

    # ------------------------------------------------------------------ API
    def update(self, touched, force=False):
        """Render the builds in TOUCHED ((builder, number) pairs), any build
        on the waterfall not yet final, and the waterfall.  Returns the
        number of files written."""
        todo = {}  # (builder, number) -> record, or None to read it
        for builder, number in touched:
            if _safe_name(builder) and isinstance(number, int):
                todo[(builder, number)] = None
                self._records.pop((builder, number), None)
        window = self._window()
        # A lost hint must not leave a waterfall link dangling: heal it here.
        for builder, builds in window.items():
            for rec in builds:
                if not self._is_final(builder, rec["number"]):
                    todo[(builder, rec["number"])] = rec
        written = 0
        for (builder, number), rec in sorted(todo.items(), key=lambda kv: kv[0]):
            written += self._render_build(builder, number, rec, force=force)
        return written + self._render_waterfall(window)

    def rebuild(self, progress=None, force=False):
        """Render every build in state that is not final, then the
        waterfall; FORCE renders final ones too.  PROGRESS(done, total) is
        called after each build.  Returns the number of files written."""
        if force:
            self._final.clear()
            self._records.clear()
            self._log_memo.clear()
        builds = [(b, n) for b in self.state.builders() if _safe_name(b)
                  for n in self.state.build_numbers(b)]
        total = len(builds) + 1
        written = 0
        for done, (builder, number) in enumerate(builds, 1):
            written += self._render_build(builder, number, force=force)
            if progress:
                progress(done, total)
        written += self._render_waterfall(self._window())
        if progress:
            progress(total, total)
        return written

    # ---------------------------------------------------------------- paths
    def build_dir(self, builder, number):
        return os.path.join(self.root, "builders", builder, str(number))

    def _is_final(self, builder, number):
        if (builder, number) in self._final:
            return True
        try:
            with open(os.path.join(self.build_dir(builder, number), ".final"), encoding="utf-8") as f:
                final = f.read() == FINAL_MARK
        except (OSError, ValueError):
            final = False
        if final:
            self._final.add((builder, number))
        return final

    # ---------------------------------------------------------------- reads
    def _record(self, builder, number):
        """The build record, or None (a gap, or unreadable: logged once)."""
        rec = self._records.get((builder, number))
        if rec is not None:
            return rec
        try:
            rec = self.state.read_build(builder, number)
        except (OSError, ValueError) as e:
            if (builder, number) not in self._warned:
                self._warned.add((builder, number))
                log.warning("%s #%d: build record unreadable, not shown: %s" % (builder, number, e),
                            builder=builder, build=number)
            return None
        if rec is None or not isinstance(rec, dict):
            return None
        rec = dict(rec, builder=builder, number=number)  # the directory names the build
        if rec.get("state") == "finished":
            self._records[(builder, number)] = rec
        return rec

    def _window(self):
        """{builder: [record, ...]} newest first: what the waterfall shows."""
        depth = max(1, int(self.cfg.waterfall_depth))
        names = set(self.cfg.builders) | {b for b in self.state.builders() if _safe_name(b)}
        window, keep = {}, set()
        for name in sorted(names):
            builds = []
            for number in reversed(self.state.build_numbers(name)[-depth:]):
                rec = self._record(name, number)
                if rec is not None:
                    builds.append(rec)
                    keep.add((name, number))
            window[name] = builds
        # Finished records are cached only while the waterfall shows them.
        for key in set(self._records) - keep:
            del self._records[key]
        return window

    def _queued(self):
        """{builder: [request, ...]} oldest first, from the spool."""
        out = {}
        for rid in self.spool.pending("requests"):
            req = self.spool.read("requests", rid)
            if isinstance(req, dict) and isinstance(req.get("builder"), str):
                out.setdefault(req["builder"], []).append(req)
        return out

    # -------------------------------------------------------------- writing
    def _render_build(self, builder, number, rec=None, force=False):
        """Write one build's pages; the number of files written."""
        if not force and self._is_final(builder, number):
            return 0
        rec = rec or self._record(builder, number)
        if rec is None:
            return 0
        bdir = self.build_dir(builder, number)
        os.makedirs(bdir, exist_ok=True)
        view = build_view(rec, dir_href="")
        running = view["state"] != "finished"
        written = 0
        for step in view["steps"]:
            if step["log_page"]:
                written += self._render_log(builder, number, view, step, force)
        page = templates.render("build.html", title="%s #%d" % (builder, number), root="../../../",
                                refresh=REFRESH_SEC if running else 0, site_title=self.cfg.title,
                                build=view)
        fsutil.write_atomic(os.path.join(bdir, "index.html"), page, durable=False)
        written += 1
        if not running:
            fsutil.write_atomic(os.path.join(bdir, ".final"), FINAL_MARK, durable=False)
            self._final.add((builder, number))
            for key in [k for k in self._log_memo if k.startswith(bdir + os.sep)]:
                del self._log_memo[key]
        return written

    def _render_log(self, builder, number, build, step, force):
        """Write a step's raw log link and log page; the files written."""
        bdir = self.build_dir(builder, number)
        src = os.path.join(self.state.build_dir(builder, number), step["log"])
        raw = os.path.join(bdir, step["log_raw"])
        page = os.path.join(bdir, step["log_page"])
        written = int(_link_or_copy(src, raw))
        step = dict(step, log_raw=step["log_raw"] if os.path.exists(raw) else "")
        try:
            st = os.stat(src)
            source = (st.st_size, st.st_mtime_ns)
        except OSError:
            source = None
        memo = (source, json.dumps(step, sort_keys=True, default=str), self.cfg.title)
        if not force and self._log_memo.get(page) == memo and os.path.exists(page):
            return written
        excerpt = LogExcerpt(src)
        pieces = templates.generate("log.html", title="%s #%d %s" % (builder, number, step["name"]),
                                    root="../../../", refresh=0, site_title=self.cfg.title,
                                    build=build, step=step, log=excerpt,
                                    max_lines=MAX_LOG_LINES, max_bytes=MAX_LOG_BYTES)
        _write_pieces(page, pieces)
        self._log_memo[page] = memo
        return written + 1

    def _render_waterfall(self, window):
        queued = self._queued()
        names = sorted(set(window) | set(queued))
        rows = []
        for name in names:
            for rec in window.get(name, []):
                rows.append((_sort_time(rec), name, rec["number"], rec))
        rows.sort(key=lambda r: r[:3], reverse=True)
        columns = [builder_column(name, self.cfg.builders.get(name), window.get(name, []),
                                  queued.get(name, [])) for name in names]
        index = {name: i for i, name in enumerate(names)}
        out_rows, last_day = [], None
        for started, name, number, rec in rows:
            cells = [None] * len(names)
            build = build_view(rec, dir_href="builders/%s/%d/" % (quote(name), number))
            cells[index[name]] = build
            day = time.strftime("%Y-%m-%d", time.localtime(started)) if started else ""
            out_rows.append({"day": day if day != last_day else "", "started": started or None,
                             "changes": build["changes"][:MAX_CHANGES_SHOWN],
                             "more_changes": max(0, len(build["changes"]) - MAX_CHANGES_SHOWN),
                             "build": build, "cells": cells})
            last_day = day
        page = templates.render("waterfall.html", title=self.cfg.title, root="", refresh=REFRESH_SEC,
                                site_title=self.cfg.title, columns=columns, rows=out_rows,
                                any_queued=any(c["queued"] for c in columns),
                                max_queued=MAX_QUEUED_SHOWN, generated=time.time(),
                                zone=time.strftime("%z"))
        os.makedirs(self.root, exist_ok=True)
        fsutil.write_atomic(os.path.join(self.root, "index.html"), page, durable=False)
        return 1


# -------------------------------------------------------------- view models
# Records come from every past version and may lack keys or carry unknown
# ones; the templates use StrictUndefined, so these functions turn a record
# into a view with every key a template reads, whatever the record held.

def build_view(rec, dir_href):
    """What the pages show of a build record; links relative to DIR_HREF."""
    request = _dict(rec.get("request"))
    steps = [step_view(i, s, dir_href) for i, s in enumerate(_list(rec.get("steps")), 1)
             if isinstance(s, dict)]
    state = _str(rec.get("state")) or "running"
    current = [s["name"] for s in steps if s["state"] == "running"]
    return {
        "builder": rec["builder"], "number": rec["number"], "state": state,
        "status": status(state, rec.get("result")),
        "href": dir_href + "index.html",
        "started": _num(rec.get("started")), "finished": _num(rec.get("finished")),
        "duration": _duration(rec.get("started"), rec.get("finished")),
        "worker": _str(rec.get("worker")), "reason": _str(rec.get("reason")),
        "request_reason": _str(request.get("reason")), "queued": _num(request.get("queued")),
        "repository": _str(rec.get("repository") or request.get("repository")),
        "branch": _str(rec.get("branch") or request.get("branch")),
        "revision": _str(rec.get("revision") or request.get("revision")),
        "properties": _pairs(request.get("properties")), "force": _pairs(request.get("force")),
        "changes": [change_view(c) for c in _list(request.get("changes")) if isinstance(c, dict)],
        "steps": steps, "current_step": current[0] if current else "",
    }


def step_view(index, step, dir_href):
    state = _str(step.get("state")) or "pending"
    logname = step.get("log")
    ok = isinstance(logname, str) and _safe_name(logname) and logname.endswith(".log")
    stem = logname[:-len(".log")] if ok else ""
    return {
        "index": index, "name": _str(step.get("name")) or "step %d" % index,
        "description": _str(step.get("description")), "command": _str(step.get("command")),
        "state": state, "status": status(state, step.get("result")),
        "started": _num(step.get("started")), "finished": _num(step.get("finished")),
        "duration": _duration(step.get("started"), step.get("finished")),
        "summary": _str(step.get("summary")),
        "exit_status": step.get("exit_status") if isinstance(step.get("exit_status"), int) else None,
        "log": logname if ok else "",
        "log_page": stem + ".html" if ok else "", "log_raw": stem + ".txt" if ok else "",
        "log_href": dir_href + quote(stem) + ".html" if ok else "",
    }


def change_view(c):
    files = [f for f in _list(c.get("files")) if isinstance(f, str)]
    return {"revision": _str(c.get("revision")), "author": _str(c.get("author")),
            "when": _num(c.get("when")), "branch": _str(c.get("branch")),
            "repository": _str(c.get("repository")), "message": _str(c.get("message")),
            "files": files}


def request_view(req):
    changes = [change_view(c) for c in _list(req.get("changes")) if isinstance(c, dict)]
    return {"revision": _str(req.get("revision")), "branch": _str(req.get("branch")),
            "reason": _str(req.get("reason")), "queued": _num(req.get("queued")),
            "changes": changes}


def builder_column(name, builder, builds, queued):
    """A waterfall column head: the builder, its last result, what it does now."""
    last = next((b for b in builds if b.get("state") == "finished"), None)
    running = [b["number"] for b in builds if b.get("state") != "finished"]
    return {
        "name": name, "description": builder.description if builder else "",
        "configured": builder is not None,
        "last": status("finished", last.get("result")) if last else "",
        "last_href": "builders/%s/%d/index.html" % (quote(name), last["number"]) if last else "",
        "last_number": last["number"] if last else 0,
        "running": sorted(running, reverse=True),
        "queued": [request_view(r) for r in queued],
    }


def status(state, result):
    """The word a box shows: the result, or what the build or step is doing."""
    if isinstance(result, str) and result:
        return result
    if state == "finished":
        return "exception"  # finished without a result: a record from a crash
    return state if state in ("running", "pending") else "running"


def _sort_time(rec):
    for key in ("started", "finished"):
        if _num(rec.get(key)):
            return rec[key]
    return _num(_dict(rec.get("request")).get("queued")) or 0.0


def _duration(start, end):
    start, end = _num(start), _num(end)
    return end - start if start is not None and end is not None else None


def _pairs(d):
    """[(key, text)] of a dict of properties, sorted; values shown as JSON
    unless they are strings."""
    if not isinstance(d, dict):
        return []
    return sorted((str(k), v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True))
                  for k, v in d.items())


def _str(v):
    return v if isinstance(v, str) else ("" if v is None else str(v))


def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _list(v):
    return v if isinstance(v, list) else []


def _dict(v):
    return v if isinstance(v, dict) else {}


def _safe_name(name):
    """A builder or file name usable as one path component of the site."""
    return (isinstance(name, str) and name and not name.startswith(".") and "/" not in name
            and "\0" not in name)


# --------------------------------------------------------------------- logs

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class LogExcerpt:
    """The first lines of a log file, read only as they are iterated.

    Iterating yields (line number, text).  Afterwards, `shown` is the
    number of lines yielded and `truncated` says whether the file holds
    more.  A missing file yields nothing (`missing` is true).
    """

    def __init__(self, path, max_lines=MAX_LOG_LINES, max_bytes=MAX_LOG_BYTES):
        self.path = path
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.shown = 0
        self.truncated = False
        try:
            self.size = os.path.getsize(path)
            self.missing = False
        except OSError:
            self.size = 0
            self.missing = True

    def __iter__(self):
        try:
            f = open(self.path, "rb")
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
                    rest = f.readline(_COPY_CHUNK)
                    consumed += len(rest)
                    if not rest or rest.endswith(b"\n"):
                        break
                self.shown += 1
                yield self.shown, _clean(line, cut and len(line) == MAX_LINE_BYTES)
            self.truncated = bool(f.read(1))


def _clean(line, cut):
    text = line.decode("utf-8", errors="replace").rstrip("\n").rstrip("\r")
    # Colour codes are noise in a page; other control characters are not
    # allowed in HTML text, so they show as U+FFFD.
    text = _CONTROL.sub("\ufffd", _ANSI.sub("", text))
    return text + " [line cut]" if cut else text


# ------------------------------------------------------------------- files

def _write_pieces(path, pieces):
    """Replace PATH atomically with the str PIECES, written as they come."""
    tmp = fsutil.tmp_name(path)
    try:
        with open(tmp, "x", encoding="utf-8", buffering=256 * 1024) as f:
            for piece in pieces:
                f.write(piece)
        os.rename(tmp, path)  # commit point
    except BaseException:
        fsutil._unlink_quietly(tmp)
        raise


def _link_or_copy(src, dst):
    """Make DST the raw log SRC: a hard link, or a chunked copy across
    filesystems.  True if DST was (re)written."""
    try:
        s = os.stat(src)
    except FileNotFoundError:
        return False
    try:
        d = os.stat(dst)
        if (d.st_dev, d.st_ino) == (s.st_dev, s.st_ino):
            return False  # the link: it grows with the log by itself
        if (d.st_size, d.st_mtime_ns) == (s.st_size, s.st_mtime_ns):
            return False  # a copy that is current
    except FileNotFoundError:
        pass
    tmp = fsutil.tmp_name(dst)
    try:
        try:
            os.link(src, tmp)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.EACCES):
                raise
            _copy(src, tmp)
        # Replace, never unlink first: a reader sees the old file or the new.
        os.rename(tmp, dst)
    except BaseException:
        fsutil._unlink_quietly(tmp)
        raise
    return True


def _copy(src, dst):
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        while True:
            chunk = fi.read(_COPY_CHUNK)
            if not chunk:
                break
            fo.write(chunk)
        st = os.fstat(fi.fileno())
    # The source's times, so the next pass can tell the copy is current.
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
