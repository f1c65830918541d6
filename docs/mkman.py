#!/usr/bin/python3
"""mkman: render one of our Markdown reference pages as a man(7) page, or
the manual in a program's module docstring.

Usage: mkman.py PAGE.md > PAGE.N
       mkman.py --docstring N MODULE.py [--see-also "PAGE(N) ..."] > PAGE.N

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

With --docstring, the page is the docstring of MODULE.py, as the daemons'
and the command's manuals are written (read with ast: nothing is
imported), in the layout they share:

    PROGRAM ARGS: summary       first line: its command line, for SYNOPSIS
    SECTION                     an upper-case line at column 0: .SH
        text                    the section's text, indented 4:
        - item                    a bullet, continued by lines indented 2
        TERM  text                a definition (FILES, commands): a word,
              more text           two or more spaces, its text; continued
                                  by indented lines, up to a blank line
        prose:                    a paragraph; lines indented further
            literal               than it are a literal block
                                  (SYNOPSIS is literal as a whole)

`code` becomes bold.  The page has NAME first (required), then SYNOPSIS
(made from the first line, with [DIRECTORY OPTIONS], if the docstring
has none), the docstring's other sections, DIRECTORY OPTIONS from the
docstring of paths.py beside MODULE.py (its first line's summary, then
the rest), and SEE ALSO (the --see-also
pages, less this one).
"""

import ast
import os
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


# ------------------------------------------------------------ docstrings

HEADING = re.compile(r"^[A-Z][A-Z ]*[A-Z]$")
# A definition's term: one word, not ending a sentence, then 2+ spaces.
DEFINITION = re.compile(r"^(?P<term>\S*[^\s.,;:])  +(?P<text>\S.*)$")
COMMAND = re.compile(r"^(?P<command>[a-z][a-z0-9-]*(?: [^:]*)?): \S")


def code(text, where):
    """TEXT (one paragraph, joined) with `code` in bold, as a roff line."""
    parts = text.split("`")
    if len(parts) % 2 == 0:
        raise Error("%s: unbalanced `" % where)
    return line("".join(escape(p) if i % 2 == 0 else "\\fB%s\\fR" % escape(p)
                        for i, p in enumerate(parts)))


def _indent(s):
    return len(s) - len(s.lstrip(" "))


def _literal(lines, i, out):
    """Lines from I on indented more than 0 (and blank lines inside them)."""
    start = i
    while i < len(lines) and (_indent(lines[i][1]) > 0 or not lines[i][1].strip() and i + 1 < len(lines)
                              and _indent(lines[i + 1][1]) > 0):
        i += 1
    body = [t for _, t in lines[start:i]]
    cut = min(_indent(t) for t in body if t.strip())
    out += [".RS 4", ".nf"] + [line(escape(t[cut:].rstrip())) for t in body] + [".fi", ".RE"]
    return i


def render_body(lines, where):
    """The roff of a section's LINES ((number, text), dedented to column 0)."""
    out, i, n = [], 0, len(lines)
    while i < n:
        num, s = lines[i]
        here = "%s:%d" % (where, num)
        if not s.strip():
            i += 1
        elif _indent(s) > 0:
            i = _literal(lines, i, out)
        elif s.startswith("- "):
            text = [s[2:]]
            i += 1
            while i < n and _indent(lines[i][1]) >= 2 and lines[i][1].strip():
                text.append(lines[i][1].strip())
                i += 1
            out += [".IP \\(bu 2", code(" ".join(text), here)]
        elif DEFINITION.match(s):
            while i < n and DEFINITION.match(lines[i][1]):
                m = DEFINITION.match(lines[i][1])
                text = [m.group("text")]
                i += 1
                while i < n and _indent(lines[i][1]) > 0 and lines[i][1].strip():
                    text.append(lines[i][1].strip())
                    i += 1
                out += [".TP", "\\fB%s\\fR" % escape(m.group("term").strip("`")),
                        code(" ".join(text), "%s:%d" % (where, num))]
                while i < n and not lines[i][1].strip() and i + 1 < n and DEFINITION.match(lines[i + 1][1]):
                    i += 1          # a blank line between two definitions
        else:
            text = []
            while i < n and lines[i][1].strip() and _indent(lines[i][1]) == 0:
                text.append(lines[i][1].strip())
                i += 1
            out += [".PP", code(" ".join(text), here)]
    return out


def sections(doc, where):
    """([(number, first line)], {HEADING: [(number, text dedented 4)]}) of DOC."""
    src = doc.expandtabs().splitlines()
    heads, current = {}, None
    for num, s in enumerate(src[1:], 2):
        if HEADING.match(s):
            current = heads.setdefault(s, [])
        elif not s.strip():
            if current is not None:
                current.append((num, ""))
        elif current is None or _indent(s) < 4:
            raise Error("%s:%d: text outside a section (sections are upper-case lines at column 0, "
                        "their text indented 4): %r" % (where, num, s))
        else:
            current.append((num, s[4:]))
    return src[0], heads


def docstring_page(doc, section, where, options_doc=None, see_also=()):
    """The roff for the manual in the module docstring DOC."""
    first, heads = sections(doc, where)
    if "NAME" not in heads:
        raise Error("%s: no NAME section" % where)
    name = next(t for _, t in heads["NAME"] if t.strip()).split()[0]
    out = ['.TH "%s" "%s" "" "buildunits"' % (name.upper(), section), ".nh", ".ad l",
           ".SH NAME", code(" ".join(t.strip() for _, t in heads.pop("NAME") if t.strip()), where)]
    out.append(".SH SYNOPSIS")
    if "SYNOPSIS" in heads:
        body = [t for _, t in heads.pop("SYNOPSIS")]
        while body and not body[-1].strip():
            body.pop()
        out += [".nf"] + [line(escape(t.rstrip())) for t in body if t.strip() or out[-1] != ".nf"] + [".fi"]
    else:
        m = COMMAND.match(first)
        if not m or not m.group("command").startswith(name):
            raise Error("%s:1: the first line must be '%s [ARGS]: summary'" % (where, name))
        args = m.group("command")[len(name):].split()
        out.append(" ".join(["\\fB%s\\fR" % escape(name), "[\\fIDIRECTORY OPTIONS\\fR]"] +
                            ["\\fI%s\\fR" % escape(a) for a in args]))
    for head, body in heads.items():
        out.append(".SH " + head)
        out += render_body(body, where)
    if options_doc and any("DIRECTORY OPTIONS" in t for t in out):    # a program that takes them
        out.append(".SH DIRECTORY OPTIONS")
        opts = options_doc.expandtabs().splitlines()
        summary = opts[0].partition(": ")[2]     # "paths: the four directories ..."
        if summary:
            out += [".PP", code(summary[:1].upper() + summary[1:], where + " (options)")]
        out += render_body([(n, t) for n, t in enumerate(opts[1:], 2)], where + " (options)")
    others = [p for p in see_also if not p.startswith(name + "(")]
    if others:
        out += [".SH SEE ALSO", ",\n".join("\\fB%s\\fR(%s)" % (escape(p.split("(")[0]), p.split("(")[1].rstrip(")"))
                                          for p in others)]
    return "\n".join(out) + "\n"


def module_docstring(path):
    with open(path, encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read(), path))
    if not doc:
        raise Error("%s: no module docstring" % path)
    return doc


def main(argv):
    if argv[:1] == ["--docstring"]:
        args = argv[1:]
        see_also = []
        if "--see-also" in args:
            k = args.index("--see-also")
            see_also = args[k + 1].split() if k + 1 < len(args) else []
            del args[k:k + 2]
        if len(args) != 2 or not re.match(r"^[0-9][a-z]*$", args[0]):
            print('usage: mkman.py --docstring N MODULE.py [--see-also "PAGE(N) ..."] > PAGE.N', file=sys.stderr)
            return 2
        section, path = args
        try:
            options = os.path.join(os.path.dirname(path), "paths.py")
            sys.stdout.write(docstring_page(module_docstring(path), section, path,
                                            module_docstring(options) if os.path.exists(options) else None,
                                            see_also))
        except (OSError, SyntaxError, Error) as e:
            print("mkman: %s" % e, file=sys.stderr)
            return 1
        return 0
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
