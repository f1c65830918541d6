"""Tests with a real browser: generated sites loaded in headless Chromium.

Each site is written with the project's own writers (config.load on builder
files, State.allocate_number / write_build and logs at State.log_path,
Spool.deliver for queued requests) and rendered by Site.rebuild().  The
pages are then loaded in Chromium (browser.py) and checked in the DOM as it
stands after the pages' scripts ran:

  - the crawl from index.html: every relative link and resource resolves
    to a file of the site, and nothing points outside it;
  - the waterfall's build and step boxes, their result words and links;
  - a hostile corpus in every field a page shows: no script runs on any
    page, and the payloads show as text;
  - screenshots kept as test artifacts ($BUILDUNITS_ARTIFACTS, else
    build/test-artifacts/browser/ in the checkout).

The crawl follows links rather than listing pages, so pages the renderer
adds (builder pages, console, feeds) are checked without changing this file.
"""

import html.parser
import json
import os
import re
import zlib
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree

import pytest

import browser
from buildunits import config, results, site
from buildunits.spool import Spool
from buildunits.state import State

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.path.join(os.environ.get("BUILDUNITS_ARTIFACTS")
                         or os.path.join(REPO_ROOT, "build", "test-artifacts"), "browser")
T0 = 1700000000.0
REV = "3f2c9a1b7e0d4c5a6b7c8d9e0f1a2b3c4d5e6f7a"
PAGE_SUFFIXES = (".html", ".htm", ".xhtml", ".svg", ".xml", ".atom")  # what a browser may run script in


# ----------------------------------------------------------------- the DOM

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
        "track", "wbr"}


class Node:
    """An element of a dumped DOM: tag, attrs (a dict), children (Nodes and str)."""

    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def text(self):
        """The text of the element, scripts and styles left out."""
        if self.tag in ("script", "style"):
            return ""
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def words(self):
        """The text with a space at every element boundary, squashed: what
        reads as separate words on the page, "running" and "step: compile"
        in two spans included."""
        if self.tag in ("script", "style"):
            return ""
        return " ".join("".join(c if isinstance(c, str) else " %s " % c.words()
                                for c in self.children).split())

    def raw_text(self):
        return "".join(c if isinstance(c, str) else c.raw_text() for c in self.children)

    def classes(self):
        return self.attrs.get("class", "").split()

    def ancestors(self):
        n = self.parent
        while n is not None:
            yield n
            n = n.parent

    def __repr__(self):
        return "<%s %s>" % (self.tag, " ".join("%s=%r" % kv for kv in self.attrs.items()))


class _TreeBuilder(html.parser.HTMLParser):
    # Chromium serializes a DOM with every non-void element closed and text
    # escaped (outside script and style), so a stack is enough.
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: (v if v is not None else "") for k, v in attrs}, self.stack[-1])
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(dom):
    b = _TreeBuilder()
    b.feed(dom)
    b.close()
    return b.root


def title_of(tree):
    t = next((n for n in tree.iter() if n.tag == "title"), None)
    return t.raw_text() if t else None


class Rendered:
    """A rendered site and the DOMs of its pages, each loaded once."""

    def __init__(self, root, **facts):
        self.root = os.path.realpath(root)
        self.facts = facts
        self._doms = {}

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def doms(self, paths):
        missing = [p for p in paths if p not in self._doms]
        if missing:
            self._doms.update(browser.dump_doms(missing))
        return {p: self._doms[p] for p in paths}

    def tree(self, path):
        return parse(self.doms([path])[path])

    def files(self, suffixes=PAGE_SUFFIXES):
        out = []
        for d, _, names in os.walk(self.root):
            out += [os.path.join(d, n) for n in names if n.endswith(suffixes)]
        return sorted(out)


# ------------------------------------------------------------ site writers

def write_config(d, title, builders):
    """A configuration directory with buildunits.conf and one .builder per
    {name: description}; loaded back with config.load."""
    os.makedirs(os.path.join(d, "builders"), exist_ok=True)
    with open(os.path.join(d, "buildunits.conf"), "w", encoding="utf-8") as f:
        f.write("[Site]\nTitle=%s\n" % title)
    for name, description in builders.items():
        with open(os.path.join(d, "builders", name + ".builder"), "w", encoding="utf-8") as f:
            f.write("[Builder]\nDescription=%s\nRepository=/srv/git/%s.git\n\n"
                    "[Step compile]\nCommand=make\n\n[Step test]\nCommand=make test\n" % (description, name))
    return config.load(d)


def a_change(message, author="A U Thor <a@example.org>", branch="main", revision=REV, when=T0 - 60,
             files=("hello.c", "Makefile")):
    return {"format": "change", "version": 1, "id": "1700000000000000000.1.1.abcdef", "queued": when,
            "source": "poller", "repository": "/srv/git/hello.git", "branch": branch,
            "revision": revision, "author": author, "when": when, "message": message, "files": list(files)}


def add_build(st, builder, steps, started=T0, changes=(), reason="1 change on main", properties=None,
              worker="worker1", branch="main", revision=REV, build_reason="", force=None):
    """Write one build of BUILDER through State.  STEPS: dicts with name,
    result (None: running; "pending": not started), and optionally log
    (bytes), log_as (the step name its file is named after, if not the
    step's), summary, description, command.  The build is
    running if a step is; its result is the worst finished step's."""
    n = st.allocate_number(builder)
    recs, t = [], started
    for i, s in enumerate(steps, 1):
        state = "pending" if s.get("result") == "pending" else ("running" if s.get("result") is None
                                                               else "finished")
        logname = None
        if "log" in s:
            log_as = s.get("log_as", s["name"])
            logname = st.log_name(i, log_as)
            with open(st.log_path(builder, n, i, log_as), "wb") as f:
                f.write(s["log"])
        took = s.get("took", 7.0)
        recs.append({"name": s["name"], "description": s.get("description", ""),
                     "command": s.get("command", "make " + s["name"]), "state": state,
                     "result": s["result"] if state == "finished" else None,
                     "started": t if state != "pending" else None,
                     "finished": t + took if state == "finished" else None,
                     "log": logname, "exit_status": None if state != "finished" else
                     (0 if s["result"] == "success" else 2),
                     "summary": s.get("summary", ""), "timed_out": False})
        t += took
    running = any(r["state"] == "running" for r in recs)
    result = results.worst(r["result"] for r in recs if r["state"] == "finished")
    request = {"id": "1700000000000000000.1.%d.abcdef" % n, "queued": started - 5, "builder": builder,
               "repository": "/srv/git/%s.git" % builder, "branch": branch, "revision": revision,
               "reason": reason, "changes": list(changes), "force": force,
               "properties": properties or {}}
    st.write_build({"builder": builder, "number": n, "request_id": request["id"], "request": request,
                    "worker": worker, "state": "running" if running else "finished",
                    "result": None if running else result, "reason": build_reason,
                    "started": started, "finished": None if running else t,
                    "repository": request["repository"], "branch": branch, "revision": revision,
                    "steps": recs})
    return n


def render(tmp, cfg):
    st, sp = State(os.path.join(tmp, "state")), Spool(os.path.join(tmp, "spool"))
    st.ensure()
    sp.ensure()
    return st, sp, site.Site(os.path.join(tmp, "site"), st, sp, cfg)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Two builders: hello (a pass, a failure, a running build, one queued)
    and docs (warnings)."""
    tmp = str(tmp_path_factory.mktemp("plain"))
    cfg = write_config(os.path.join(tmp, "config"), "Plain CI",
                       {"hello": "Build and test hello", "docs": "Build the manual"})
    st, sp, s = render(tmp, cfg)
    ok = [{"name": "checkout", "result": "success", "log": b"cloning into hello\n"},
          {"name": "compile", "result": "success", "log": b"cc -o hello hello.c\n", "took": 41},
          {"name": "test", "result": "success", "log": b"ok 1 - greets\nok 2 - exits 0\n"}]
    add_build(st, "hello", ok, started=T0, changes=[a_change("Greet the world\n\nA long story.")])
    bad = [dict(ok[0]), dict(ok[1]),
           {"name": "test", "result": "failure", "summary": "exit status 2",
            "log": b"".join(b"ok %d\n" % i for i in range(1, 40)) + b"not ok 40 - says goodbye\n"}]
    add_build(st, "hello", bad, started=T0 + 600,
              changes=[a_change("Say goodbye instead", author="B Developer <b@example.org>",
                                revision="c82cf660" + "0" * 32)])
    add_build(st, "hello", [dict(ok[0]), {"name": "compile", "result": None, "log": b"cc -c hello.c\n"},
                            {"name": "test", "result": "pending"}],
              started=T0 + 1200, changes=[a_change("Wave politely", revision="445cf58f" + "0" * 32)])
    add_build(st, "docs", [{"name": "manual", "result": "warnings", "summary": "3 warnings",
                            "log": b"warning: a\nwarning: b\nwarning: c\n"}], started=T0 + 900,
              reason="forced by alice", force="1700000000000000000.1.9.f0f0f0")
    sp.deliver("requests", "request", {"builder": "hello", "repository": "/srv/git/hello.git",
                                       "branch": "main", "revision": "9d8e7f60" + "0" * 32,
                                       "reason": "1 change on main", "changes": [], "force": None,
                                       "properties": {}})
    s.rebuild()
    return Rendered(os.path.join(tmp, "site"),
                    builds={("hello", 1): "success", ("hello", 2): "failure", ("hello", 3): "running",
                            ("docs", 1): "warnings"})


# ------------------------------------------------------------------ the crawl

URL_ATTRS = ("href", "src", "srcset", "poster", "data", "action", "formaction", "cite", "background",
             "xlink:href", "manifest", "ping")
_CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)|@import\s+['"]([^'"]+)""", re.I)
_ABSOLUTE = re.compile(r"""https?://|["'(]//[\w-]""", re.I)   # in a script: a URL, not a // comment


def urls_of(el):
    """(where, URL) of every URL in element EL: attributes, inline CSS, a
    meta refresh's target."""
    for attr in URL_ATTRS:
        v = el.attrs.get(attr)
        if v is None:
            continue
        if attr == "srcset":
            for part in v.split(","):
                if part.strip():
                    yield attr, part.split()[0]
        else:
            yield attr, v
    for m in _CSS_URL.finditer(el.attrs.get("style", "")):
        yield "style", m.group(1) or m.group(2)
    if el.tag == "style":
        for m in _CSS_URL.finditer(el.raw_text()):
            yield "<style>", m.group(1) or m.group(2)
    if el.tag == "meta" and el.attrs.get("http-equiv", "").lower() == "refresh":
        target = el.attrs.get("content", "").partition(";")[2].strip()
        if target:
            yield "refresh", re.sub(r"(?i)^url\s*=\s*", "", target).strip("'\"")


def crawl(rendered):
    """Load index.html and every page it links to, transitively, in
    Chromium.  Returns ({page: tree}, [problem, ...])."""
    root = rendered.root
    start = rendered.path("index.html")
    pages, problems, fragments = {}, [], []
    seen, frontier = {start}, [start]
    while frontier:
        doms = rendered.doms(frontier)
        nxt = []
        for page in frontier:
            tree = pages[page] = parse(doms[page])
            rel = os.path.relpath(page, root)
            for el in tree.iter():
                if el.tag == "base":
                    problems.append("%s: a <base> element changes every link: %r" % (rel, el))
                if el.tag == "script" and _ABSOLUTE.search(el.raw_text()):
                    problems.append("%s: a script names an absolute URL" % rel)
                for where, url in urls_of(el):
                    target, problem = resolve(root, page, url)
                    if problem:
                        problems.append("%s: <%s %s=%r>: %s" % (rel, el.tag, where, url[:200], problem))
                        continue
                    if target is None:
                        continue
                    frag = urlsplit(url.strip()).fragment
                    if frag:
                        fragments.append((rel, url, target, unquote(frag)))
                    if target.endswith((".html", ".htm")) and target not in seen:
                        seen.add(target)
                        nxt.append(target)
        frontier = nxt
    for rel, url, target, frag in fragments:
        ids = {n.attrs.get("id") for n in pages[target].iter()} | \
              {n.attrs.get("name") for n in pages[target].iter() if n.tag == "a"}
        if frag not in ids:
            problems.append("%s: link %r: no element with id %r in %s"
                            % (rel, url[:200], frag, os.path.relpath(target, root)))
    return pages, problems


def resolve(root, page, url):
    """(target file or None, problem or None) of URL found in PAGE."""
    u = url.strip()
    try:
        parts = urlsplit(u)
    except ValueError as e:
        return None, "not a URL (%s)" % e
    scheme = parts.scheme.lower()
    if scheme in ("http", "https") or parts.netloc or u.startswith("//"):
        return None, "absolute URL: the site must work offline and copied elsewhere"
    if scheme in ("data", "mailto"):
        return None, None
    if scheme:
        return None, "%s: URL" % scheme
    if not parts.path:
        return page, None           # "#frag" or "": this page
    if parts.path.startswith("/"):
        return None, "root-relative URL: breaks from file:// and under a prefix"
    target = os.path.normpath(os.path.join(os.path.dirname(page), unquote(parts.path)))
    if target != root and not target.startswith(root + os.sep):
        return None, "leaves the site directory"
    if os.path.isdir(target):
        return None, "a directory: from file:// that is a listing, not a page"
    if not os.path.isfile(target):
        return None, "no such file %s" % os.path.relpath(target, root)
    return target, None


def test_crawl_plain_site_every_link_resolves_and_nothing_is_external(plain):
    pages, problems = crawl(plain)
    assert not problems, "\n".join(problems[:40])
    rel = {os.path.relpath(p, plain.root) for p in pages}
    # The crawl got everywhere the waterfall leads: builds, and their logs.
    for b, n in plain.facts["builds"]:
        assert "builders/%s/%d/index.html" % (b, n) in rel, sorted(rel)
    assert "builders/hello/2/03-test.html" in rel, sorted(rel)
    # No page is an orphan: everything written can be reached by following links.
    orphans = [os.path.relpath(p, plain.root) for p in plain.files((".html",)) if p not in pages]
    assert not orphans, "pages no link leads to: %s" % orphans
    # And every page has the same way back to the top.
    for p, tree in pages.items():
        assert title_of(tree), p


# ------------------------------------------------------------ the waterfall

def boxes(tree):
    return [n for n in tree.iter() if "box" in n.classes()]


def links_to(el, page, target):
    """The <a> elements in or around EL whose href resolves to TARGET."""
    cands = [n for n in el.iter() if n.tag == "a"] + [n for n in el.ancestors() if n.tag == "a"]
    if el.tag == "a":
        cands.append(el)
    out = []
    for a in cands:
        href = a.attrs.get("href", "")
        if href and not urlsplit(href).scheme:
            p = os.path.normpath(os.path.join(os.path.dirname(page), unquote(urlsplit(href).path)))
            if p == target:
                out.append(a)
    return out


def test_waterfall_shows_build_and_step_boxes_with_words_and_links(plain):
    index = plain.path("index.html")
    tree = plain.tree(index)
    all_boxes = boxes(tree)
    assert all_boxes, "no elements of class box on the waterfall"

    def box_for(target, *words):
        hits = [b for b in all_boxes if links_to(b, index, target)
                and all(w in b.words() for w in words)]
        assert hits, "no box linking to %s showing %s; boxes: %s" % (
            os.path.relpath(target, plain.root), words, [b.words()[:80] for b in all_boxes])
        return hits[0]

    elements = list(tree.iter())
    pos = {}
    for (b, n), word in plain.facts["builds"].items():
        box_for(plain.path("builders", b, str(n), "index.html"), "#%d" % n, word)
        # The last such box: the build's row, below any summary at the top.
        pos[(b, n)] = max(elements.index(x) for x in all_boxes
                          if links_to(x, index, plain.path("builders", b, str(n), "index.html")))
    # Time flows down: hello's newest build is above its older ones.
    assert pos[("hello", 3)] < pos[("hello", 2)] < pos[("hello", 1)]

    # A box per step that ran, with its name, result word and summary,
    # linking to its log page, which exists.
    for n, steps in ((1, [("01-checkout", "checkout", "success"), ("02-compile", "compile", "success"),
                          ("03-test", "test", "success")]),
                     (2, [("03-test", "test", "failure", "exit status 2")]),
                     (3, [("01-checkout", "checkout", "success"), ("02-compile", "compile", "running")])):
        for stem, name, *words in steps:
            target = plain.path("builders", "hello", str(n), stem + ".html")
            assert os.path.isfile(target), target
            box_for(target, name, *words)
    box_for(plain.path("builders", "docs", "1", "01-manual.html"), "manual", "warnings", "3 warnings")
    # The running build says which step it is in; the queued request shows.
    running = box_for(plain.path("builders", "hello", "3", "index.html"), "running")
    assert "compile" in running.words() or "compile" in running.parent.words()
    assert "queued" in tree.words()
    # Colours come with words: every box says a result or state in text.
    words = {"success", "warnings", "failure", "skipped", "exception", "retry", "cancelled", "running",
             "queued", "pending"}
    for b in all_boxes:
        assert words & set(b.words().split()), "a box without a word: %r" % b.words()


def test_build_and_log_pages_link_back_and_to_raw_logs(plain):
    build = plain.path("builders", "hello", "2", "index.html")
    tree = plain.tree(build)
    text = tree.words()
    for expected in ("hello", "#2", "failure", "Say goodbye instead", "B Developer", "exit status 2"):
        assert expected in text, expected
    assert links_to(tree, build, plain.path("index.html")), "no link back to the waterfall"
    log = plain.path("builders", "hello", "2", "03-test.html")
    assert links_to(tree, build, log)
    log_tree = plain.tree(log)
    assert "not ok 40 - says goodbye" in log_tree.text()
    assert links_to(log_tree, log, plain.path("builders", "hello", "2", "03-test.txt")), "no raw log link"
    assert links_to(log_tree, log, build), "no link back to the build"


# ---------------------------------------------------------------- screenshots

def _png_varies(path):
    """True if the PNG's pixels are not all one colour (a blank page)."""
    data = open(path, "rb").read()
    pos, idat = 8, b""
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(idat))) > 8


def test_screenshots_of_waterfall_build_and_log_pages(plain):
    os.makedirs(ARTIFACTS, exist_ok=True)
    for name, page in (("waterfall", "index.html"), ("build", "builders/hello/2/index.html"),
                       ("log", "builders/hello/2/03-test.html")):
        out = os.path.join(ARTIFACTS, name + ".png")
        if os.path.exists(out):
            os.unlink(out)
        browser.screenshot(plain.path(page), out, size=(1280, 900))
        assert os.path.getsize(out) > 0
        with open(out, "rb") as f:
            assert f.read(8) == browser.PNG_SIGNATURE, out
        assert browser.png_size(out) == (1280, 900), out
        assert _png_varies(out), "%s is blank" % out


# -------------------------------------------------------------- hostile input

def mark(key):
    """JavaScript that marks the DOM as run by payload KEY.  The attribute
    name is built at run time, so the escaped payload text never contains
    it: finding "data-pwned" in a DOM means a script ran."""
    return "document.documentElement.setAttribute('data-pw'+'ned-%s',1)" % key


# (key, payload, context of the control page that shows it runs unescaped,
# whether it surely runs by itself: False for those that need a click, a
# hover or focus (autofocus fires only sometimes in headless Chromium);
# script_traces() finds those in the DOM instead)
CORPUS = [
    ("script", "<script>%s</script>" % mark("script"), "text", True),
    ("img-dq", '"><img src=x onerror=%s>' % mark("img-dq"), "attr-dq", True),
    ("img-sq", "'><img src=x onerror=%s>" % mark("img-sq"), "attr-sq", True),
    ("focus-dq", '" autofocus tabindex=0 onfocus=%s x="' % mark("focus-dq"), "attr-dq", False),
    ("focus-sq", "' autofocus tabindex=0 onfocus=%s x='" % mark("focus-sq"), "attr-sq", False),
    ("hover", "' onmouseover=%s x='" % mark("hover"), "attr-sq", False),
    ("js-url", "javascript:%s" % mark("js-url"), "href", False),
    ("textarea", "</textarea><script>%s</script>" % mark("textarea"), "textarea", True),
    ("title", "</title><script>%s</script>" % mark("title"), "title", True),
    ("svg", "<svg onload=%s>" % mark("svg"), "text", True),
    ("svg-script", "<svg><script>%s</script></svg>" % mark("svg-script"), "text", True),
    ("iframe", '<iframe srcdoc="<script>top.%s</script>"></iframe>' % mark("iframe"), "text", True),
    ("details", "<details open ontoggle=%s>x</details>" % mark("details"), "text", True),
    ("doc-title", "<script>document.title='PW'+'NED'</script>", "text", True),
    ("comment", "--><script>%s</script><!--" % mark("comment"), "comment", True),
    ("base", '<base href="//evil.example/">', "text", False),
    ("refresh", '<meta http-equiv="refresh" content="0;url=javascript:%s">' % mark("refresh"), "text", False),
    ("entity", "&lt;script&gt;%s&lt;/script&gt; &amp;amp;" % mark("entity"), "text", False),
    ("template", "{{ 7*7 }}{% raw %}${7*7}", "text", False),
]
CONTROL_PAGE = {
    "text": "<div>{}</div>", "attr-dq": '<div title="{}">x</div>', "attr-sq": "<div title='{}'>x</div>",
    "href": '<a href="{}">x</a>', "textarea": "<textarea>{}</textarea>", "title": "<title>{}</title>",
    "comment": "<!-- {} -->",
}
PWNED = re.compile(r"data-pwned|PWNED")
LONG = "L" * 100_000
CONTROLS = "ansi \x1b[31mred\x1b[0m \x1b]0;set-title\x07 nul \x00 bell \x07 del \x7f cr \r end"
HOSTILE_BUILDER = "x\"'><svg onload=%s>" % mark("builder-name")   # a legal directory name
SITE_TITLE = "CI </title><script>%s</script> & co" % mark("site-title")
LOG_END = "END OF THE HOSTILE LOG"


def hostile_log():
    lines = [p.encode() for _, p, _, _ in CORPUS]
    lines += [b"\xff\xfe invalid \xc3\x28 utf-8 \xed\xa0\x80 surrogate \xf0\x28\x8c\x28",
              CONTROLS.encode(),
              b"\x1b[1;32m<script>" + mark("ansi-log").encode() + b"</script>\x1b[0m",
              b"nul\x00<script>" + mark("nul-log").encode() + b"</script>",
              ("<script>%s</script>" % mark("long-start") + LONG + "<script>%s</script>" % mark("long-end")).encode(),
              b"windows line\r",
              LOG_END.encode()]
    return b"\n".join(lines) + b"\n"


def _file_name_part(name):
    """NAME if it can be part of a file name (as a hostile step name in a
    record can), else "step"."""
    return name if "/" not in name and "\0" not in name and len(name.encode()) < 200 else "step"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Every payload in every field a page shows: commit messages, authors,
    branches, revisions, reasons, properties, step names, descriptions,
    commands and summaries, log lines, a queued request, the site title, a
    builder's description and (from state) a builder's name."""
    tmp = str(tmp_path_factory.mktemp("hostile"))
    # Configuration is trusted, but it is text on the pages all the same.
    cfg = write_config(os.path.join(tmp, "config"), SITE_TITLE,
                       {"hello": "'><img src=x onerror=%s>" % mark("description")})
    st, sp, s = render(tmp, cfg)
    payloads = [p for _, p, _, _ in CORPUS]
    for i in range(0, len(payloads), 5):
        group = payloads[i:i + 5]
        changes = [a_change(p + "\n\n" + p + "\n" + CONTROLS, author="%s <%s@example.org>" % (p, p),
                            branch=p, revision=p, files=[p, "a.c"]) for p in group]
        changes.append(a_change(LONG + "<script>%s</script>" % mark("long-message"),
                                author=CONTROLS, branch="main"))
        steps = []
        for j, p in enumerate(group, 1):
            steps.append({"name": p, "result": ("success", "failure", "warnings")[j % 3], "summary": p,
                          "description": p, "command": p, "log": hostile_log(),
                          "log_as": _file_name_part(p)})
        add_build(st, "hello", steps, started=T0 + 100 * i, changes=changes, reason=group[0],
                  properties={p: p for p in group}, worker=group[-1], branch=group[1 % len(group)],
                  revision=group[0], build_reason=group[-1], force={"user": group[0], "reason": group[-1]})
    add_build(st, "hello", [{"name": "checkout", "result": "success", "log": b"ok\n"},
                            {"name": payloads[0], "result": None, "log": hostile_log(),
                             "log_as": _file_name_part(payloads[0]), "summary": payloads[1]},
                            {"name": payloads[2], "result": "pending"}],
              started=T0 + 5000, changes=[a_change(payloads[3], author=payloads[4])])
    add_build(st, HOSTILE_BUILDER, [{"name": "build", "result": "failure", "log": hostile_log(),
                                     "summary": payloads[5]}], started=T0 + 4000,
              changes=[a_change(payloads[6])])
    for p in payloads[:3]:
        sp.deliver("requests", "request", {"builder": "hello", "repository": p, "branch": p, "revision": p,
                                           "reason": p, "changes": [a_change(p)], "force": None,
                                           "properties": {p: p}})
    s.rebuild()
    return Rendered(os.path.join(tmp, "site"))


def script_traces(tree, rel):
    """What in the DOM TREE of page REL shows a payload became markup."""
    found = []
    for el in tree.iter():
        for name, value in el.attrs.items():
            if name.startswith("on") and ("'+'" in value or "pw" in value.lower()):
                found.append("%s: an injected event handler: <%s %s=%r>" % (rel, el.tag, name, value[:120]))
            if name == "srcdoc":
                found.append("%s: an injected srcdoc: %r" % (rel, el))
            if name in URL_ATTRS and re.match(r"(?i)\s*(javascript|vbscript|data\s*:\s*text/html)", value):
                found.append("%s: a script URL: <%s %s=%r>" % (rel, el.tag, name, value[:120]))
        if el.tag == "script" and "'+'" in el.raw_text():
            found.append("%s: an injected script: %r" % (rel, el.raw_text()[:120]))
        if el.tag == "base":
            found.append("%s: an injected <base>: %r" % (rel, el))
        if el.tag == "meta" and "javascript" in el.attrs.get("content", "").lower():
            found.append("%s: an injected meta refresh: %r" % (rel, el))
    return found


def test_the_dom_is_taken_after_dialogs_and_timers_and_a_missing_page_is_named(tmp_path):
    """What tests/browser.py promises: a dialog a payload opens is accepted
    and cannot stall the test, a timer within the virtual-time budget runs
    (a second, which costs no second), and a page that is not there is a
    BrowserError naming it, not an empty DOM."""
    page = tmp_path / "dialogs.html"
    page.write_text("<!DOCTYPE html><html><head><title>d</title></head><body><p id=p>before</p><script>"
                    "alert('a'); confirm('b');"
                    "setTimeout(function(){ document.getElementById('p').textContent = 'after' }, 1000);"
                    "</script></body></html>", encoding="utf-8")
    missing = tmp_path / "missing.html"
    doms = browser.dump_doms([str(page)])
    assert '<p id="p">after</p>' in doms[str(page)]
    assert doms[str(page)].startswith("<!DOCTYPE html>")
    with pytest.raises(browser.BrowserError, match=re.escape(missing.name)):
        browser.dump_dom(str(missing))


def test_corpus_payloads_run_when_not_escaped(tmp_path):
    """The control: each payload put raw into the context it attacks marks
    the DOM in Chromium (so the hostile test below can see a script run),
    or is found by script_traces()."""
    paths = {}
    for key, payload, ctx, _ in CORPUS:
        piece = CONTROL_PAGE[ctx].format(payload)
        head, body = (piece, "") if ctx == "title" else ("<title>control</title>", piece)
        p = tmp_path / ("%s.html" % key)
        p.write_text("<!DOCTYPE html><html><head><meta charset=utf-8>%s</head><body>%s</body></html>"
                     % (head, body), encoding="utf-8")
        paths[key] = str(p)
    doms = browser.dump_doms(paths.values())
    missed = []
    for key, _, _, runs in CORPUS:
        dom = doms[paths[key]]
        if runs and not PWNED.search(dom):
            missed.append("%s did not run" % key)
        if not runs and not script_traces(parse(dom), key) and key not in ("entity", "template"):
            missed.append("%s left no trace" % key)
    assert not missed, missed


def test_hostile_input_runs_no_script_on_any_page(hostile):
    pages = hostile.files()
    assert len(pages) >= 20, pages
    doms = hostile.doms(pages)
    ran, traces = [], []
    for p, dom in doms.items():
        rel = os.path.relpath(p, hostile.root)
        marks = sorted(set(re.findall(r"data-pwned[\w-]*|PWNED", dom)))
        if marks:
            ran.append("%s: %s" % (rel, ", ".join(marks)))
        traces += script_traces(parse(dom), rel)
    assert not ran, "scripts ran (page: the payloads' marks):\n" + "\n".join(ran[:40])
    assert not traces, "\n".join(traces[:40])


def test_hostile_site_links_still_resolve(hostile):
    _, problems = crawl(hostile)
    assert not problems, "\n".join(problems[:40])


def test_hostile_text_shows_as_text(hostile):
    index = hostile.path("index.html")
    assert SITE_TITLE in title_of(hostile.tree(index))
    build = hostile.path("builders", HOSTILE_BUILDER, "1", "index.html")
    assert HOSTILE_BUILDER in title_of(hostile.tree(build))
    trees = {p: parse(d) for p, d in hostile.doms(hostile.files((".html",))).items()}
    texts = "\n".join(t.text() for t in trees.values())
    missing = [key for key, payload, _, _ in CORPUS if payload not in texts]
    assert not missing, "payloads not shown as text anywhere: %s" % missing
    # A log page gets past the long line, the invalid UTF-8 and the NULs.
    logs = [t for p, t in trees.items() if "<script>" in t.text() and LOG_END in t.text()]
    assert logs, "no log page shows the end of the hostile log"


def test_hostile_machine_readable_files_are_well_formed(hostile):
    files = hostile.files((".json", ".svg", ".xml", ".atom"))
    # docs/site.md promises each of them; a missing one is a failure, not a skip.
    expected = [hostile.path("api", "builders.json"), hostile.path("atom.xml"),
                hostile.path("builders", HOSTILE_BUILDER, "badge.svg"),
                hostile.path("builders", HOSTILE_BUILDER, "atom.xml"),
                hostile.path("api", "builders", HOSTILE_BUILDER, "builds", "1.json")]
    missing = [os.path.relpath(p, hostile.root) for p in expected if p not in files]
    assert not missing, "the site lacks %s" % ", ".join(missing)
    bad = []
    for p in files:
        try:
            if p.endswith(".json"):
                with open(p, encoding="utf-8") as f:
                    json.load(f)
            else:
                ElementTree.parse(p)
        except (ValueError, ElementTree.ParseError) as e:
            bad.append("%s: %s" % (os.path.relpath(p, hostile.root), e))
    assert not bad, "\n".join(bad)


def test_screenshot_of_the_hostile_waterfall(hostile):
    out = browser.screenshot(hostile.path("index.html"), os.path.join(ARTIFACTS, "hostile-waterfall.png"))
    assert browser.png_size(out) == (1280, 900)
