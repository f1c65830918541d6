#!/usr/bin/python3
"""mkman: render one of our Markdown reference pages as a man(7) page.

Usage: mkman.py PAGE.md > PAGE.N

The pages in docs/ are the one source of the manual: read as Markdown on
a forge, and converted by this script for man.  It accepts only the
restricted Markdown those pages use, and stops with FILE:LINE on anything
else, so a page that renders well in one form cannot silently lose text in
the other:

    # NAME(N)                   first line: the title (.TH)
    ## SECTION, ### Subsection  .SH, .SS
    plain lines                 a paragraph (.PP); a blank line ends it
    - item                      a bullet (.IP); continued by lines indented 2
    **Term** or `term`          a definition (.TP): a term line, then its
        indented text           text indented 4 spaces, one paragraph
    ```                         a literal block (.RS/.nf ... .fi/.RE)

Inline: **bold** and `code` become bold, *italic* and _italic_ italic;
\\X is a literal X.  Nesting fonts is not supported.  Links, tables and
HTML are not supported.
"""

import re
import sys

INLINE = re.compile(r"""
    (?P<tick>`+)(?P<code>.+?)(?P=tick)
  | \*\*(?P<bold>[^*]+?)\*\*
  | (?<![\w*\\])\*(?P<em1>[^*\s](?:[^*]*?[^*\s])?)\*(?![\w*])
  | (?<![\w\\])_(?P<em2>[^_\s](?:[^_]*?[^_\s])?)_(?!\w)
  | \\(?P<esc>[][\\`*_{}()#+.!<>|-])
""", re.X)
TITLE = re.compile(r"^# (?P<name>[A-Za-z0-9._-]+)\((?P<section>[0-9][a-z]*)\)$")
TERM = re.compile(r"^(\*\*[^*]+\*\*|`[^`]+`)")


class Error(Exception):
    pass


def escape(text):
    """TEXT with roff's special characters made literal (mid-line)."""
    return text.replace("\\", "\\e").replace("-", "\\-")


def line(text):
    """A roff text line: a leading dot or apostrophe would be a request."""
    return "\\&" + text if text[:1] in (".", "'") else text


def inline(text, where):
    out, pos = [], 0
    for m in INLINE.finditer(text):
        out.append(_plain(text[pos:m.start()], where))
        if m.group("code") is not None:
            out.append("\\fB%s\\fR" % escape(m.group("code").strip()))
        elif m.group("bold") is not None:
            out.append("\\fB%s\\fR" % escape(m.group("bold").replace("`", "")))
        elif m.group("esc") is not None:
            out.append(escape(m.group("esc")))
        else:
            out.append("\\fI%s\\fR" % escape(m.group("em1") or m.group("em2")))
        pos = m.end()
    out.append(_plain(text[pos:], where))
    return line("".join(out))


def _plain(text, where):
    for bad, what in (("`", "unbalanced `"), (r"\*\*", "unbalanced **"), (r"\]\(", "a link"),
                      (r"<[A-Za-z/!?]", "HTML (put it in `code`)")):
        if re.search(bad, text):
            raise Error("%s: %s is not supported: %r" % (where, what, text))
    return escape(text)


def convert(text, path="-", footer="buildunits"):
    """The roff for the Markdown TEXT read from PATH."""
    src = text.splitlines()
    m = TITLE.match(src[0]) if src else None
    if not m:
        raise Error("%s:1: the first line must be '# NAME(SECTION)'" % path)
    out = ['.TH "%s" "%s" "" "%s"' % (m.group("name").upper(), m.group("section"), footer),
           ".nh", ".ad l"]  # paths and key names read badly hyphenated or stretched
    i, n = 1, len(src)

    def where():
        return "%s:%d" % (path, i + 1)

    while i < n:
        s = src[i]
        if not s.strip():
            i += 1
        elif s.startswith("```"):
            if not out[-1].startswith((".SH", ".SS")):
                out.append(".PP")
            out += [".RS 4", ".nf"]
            i += 1
            while i < n and not src[i].startswith("```"):
                out.append(line(escape(src[i].rstrip())))
                i += 1
            if i == n:
                raise Error("%s: unterminated ``` block" % where())
            out += [".fi", ".RE"]
            i += 1
        elif s.startswith("### "):
            out.append(".SS " + inline(s[4:].strip(), where()))
            i += 1
        elif s.startswith("## "):
            out.append(".SH " + inline(s[3:].strip(), where()))
            i += 1
        elif s.startswith("#"):
            raise Error("%s: only '## ' and '### ' headings are supported" % where())
        elif s.startswith("- "):
            out += [".IP \\(bu 2", inline(s[2:].strip(), where())]
            i += 1
            while i < n and src[i].startswith("  ") and src[i].strip():
                out.append(inline(src[i].strip(), where()))
                i += 1
        elif TERM.match(s) and i + 1 < n and src[i + 1].startswith("    "):
            out += [".TP", inline(s.strip(), where())]
            i += 1
            while i < n and src[i].startswith("    ") and src[i].strip():
                out.append(inline(src[i].strip(), where()))
                i += 1
        elif s[0].isspace():
            raise Error("%s: indented line outside a list item or definition" % where())
        elif s.lstrip().startswith("|"):
            raise Error("%s: tables are not supported (use a ``` block)" % where())
        else:
            if not out[-1].startswith((".SH", ".SS")):
                out.append(".PP")
            while i < n and src[i].strip() and not src[i][0].isspace() \
                    and not src[i].startswith(("#", "```", "- ")):
                out.append(inline(src[i].strip(), where()))
                i += 1
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) != 1:
        print("usage: mkman.py PAGE.md > PAGE.N", file=sys.stderr)
        return 2
    try:
        with open(argv[0], encoding="utf-8") as f:
            text = f.read()
        sys.stdout.write(convert(text, argv[0]))
    except (OSError, Error) as e:
        print("mkman: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
