"""The reference pages say what the code does, and render as man pages.

docs/buildunits.builder.5.md must document every configuration key (as a
"**Key=**" definition under its section, with the default the code has),
and its examples must load without a problem or a warning;
docs/buildunits-state.5.md must document every record format at its
current version.  docs/mkman.py must turn both into roff that groff
(-ww, every warning) and man(1) format without a complaint.  The same
holds for the pages mkman.py --docstring makes from the module docstrings
of the daemons (section 8) and of the command (section 1), and no word of
a docstring is lost on the way.  Nothing is installed: if neither groff
nor man is on the machine, the roff is only checked structurally (it
starts with .TH and has a NAME section).
"""

import collections
import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
BUILDER_PAGE = os.path.join(DOCS, "buildunits.builder.5.md")
STATE_PAGE = os.path.join(DOCS, "buildunits-state.5.md")
PAGES = [BUILDER_PAGE, STATE_PAGE]
LIB = os.path.join(ROOT, "lib", "buildunits")
# (module, section, page): the Makefile's man target makes these.
DOCSTRING_PAGES = [("poller", "8", "buildunits-poller"), ("scheduler", "8", "buildunits-scheduler"),
                   ("runner", "8", "buildunits-runner"), ("htmlgen", "8", "buildunits-htmlgen"),
                   ("notifier", "8", "buildunits-notifier"),
                   ("webhook", "8", "buildunits-webhook"), ("periodic", "8", "buildunits-timer"),
                   ("janitor", "8", "buildunits-janitor"),
                   ("cli", "1", "buildunits"), ("mask", "1", "buildunits-mask")]

if os.path.join(ROOT, "lib") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "lib"))

from buildunits import config, records, unitprops  # noqa: E402


def _load_mkman():
    spec = importlib.util.spec_from_file_location("mkman", os.path.join(DOCS, "mkman.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mkman = _load_mkman()


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _subsections(text):
    """{"### heading": body} of a page."""
    out = {}
    for part in re.split(r"^(?=### )", text, flags=re.M)[1:]:
        head, _, body = part.partition("\n")
        out[head[4:].strip()] = re.split(r"^## ", body, flags=re.M)[0]
    return out


def _terms(body):
    """{term: definition text} of the **Term** definitions in BODY."""
    out = {}
    for m in re.finditer(r"^\*\*([^*]+)\*\*[^\n]*\n((?: {4}[^\n]*\n)+)", body, flags=re.M):
        out[m.group(1)] = " ".join(line.strip() for line in m.group(2).splitlines())
    return out


# ------------------------------------------------------- builder page

def _key_sections():
    sections = {"[Builder] section": (config.BUILDER_KEYS, config.Builder(name="x", path="x")),
                "[Step NAME] section": (config.STEP_KEYS, config.Step(name="x", command="x")),
                "[Notify] section of a builder": (config.NOTIFY_KEYS, config.Builder(name="x", path="x"))}
    cfg = config.Config(directory="x")
    for name, keys in config.GLOBAL_KEYS.items():
        sections["[%s] section" % name] = (keys, cfg)
    return sections


def test_every_config_key_is_documented_in_its_section():
    subs = _subsections(_read(BUILDER_PAGE))
    for heading, (keys, _) in _key_sections().items():
        assert heading in subs, "no '### %s' in %s" % (heading, BUILDER_PAGE)
        documented = {t[:-1] for t in _terms(subs[heading]) if t.endswith("=")}
        missing = set(keys) - documented
        stale = documented - set(keys)
        assert not missing, "%s: undocumented keys %s" % (heading, sorted(missing))
        assert not stale, "%s: documented keys the code does not know %s" % (heading, sorted(stale))


def test_documented_defaults_are_the_code_defaults():
    subs = _subsections(_read(BUILDER_PAGE))
    for heading, (keys, obj) in _key_sections().items():
        terms = _terms(subs[heading])
        for key, (attr, kind) in keys.items():
            text = terms[key + "="]
            actual = getattr(obj, attr)
            m = re.search(r"Default: `([^`]*)`", text)
            if m and m.group(1).endswith("="):
                continue  # "Default: Key= of [Defaults]", checked in [Defaults]
            if m:
                value = m.group(1)
                expected = {"span": config.parse_timespan, "bool": config.parse_boolean,
                            "int": int, "count": int, "str": str, "list": str.split, "executor": str, "path": str,
                            "credentials": str.split, "group": str, "priority": int, "results": str.split,
                            "vcs": str, "size": config._size, "modes": str.split, "addresses": str.split,
                            "urls": str.split, "credential": str, "port": int, "url": str, "forge": str,
                            "address": str, "command": lambda v: [v] if v else [], "keep": config._keep_count,
                            "days": config._days}[kind](value)
            elif re.search(r"Default: (empty|none)", text):
                expected = {"str": "", "group": "", "env": {}, "list": [], "credentials": [], "locks": [],
                            "builders": [], "vcs": "", "calendar": [], "artifacts": [], "addresses": [], "urls": [],
                            "command": [], "credential": "", "url": "", "forge": "", "address": ""}[kind]
            elif re.search(r"Default: no limit", text):
                expected = 0
            else:
                continue  # a required key such as Command=
            assert actual == expected, "%s %s=: documented default %r, code has %r" % (
                heading, key, expected, actual)


def test_required_keys_say_so():
    terms = _terms(_subsections(_read(BUILDER_PAGE))["[Step NAME] section"])
    assert "Required." in terms["Command="]


def test_step_environment_variables_are_documented():
    text = _read(BUILDER_PAGE)
    for var in ("BUILDER", "BUILD", "REVISION", "BRANCH", "REPOSITORY", "WORKDIR", "WORKER", "STEP"):
        assert "**BUILDUNITS_%s**" % var in text


def _example_files(text):
    """{relative path: content} of the ``` blocks starting '# /etc/buildunits/PATH'."""
    out = {}
    for block in re.findall(r"^```\n(.*?)^```", text, flags=re.M | re.S):
        first, _, rest = block.partition("\n")
        m = re.match(r"^# /etc/buildunits/(\S+)$", first)
        if m:
            out[m.group(1)] = rest
    return out


def test_examples_load_cleanly(tmp_path):
    files = _example_files(_read(BUILDER_PAGE))
    assert "builders/hello.builder" in files
    for rel, content in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content, encoding="utf-8")
    cfg = config.load(str(tmp_path))
    assert cfg.warnings == []
    hello = cfg.builders["hello"]
    assert hello.repository == "/srv/git/hello.git"
    assert hello.branches == ["main", "release-*"]
    assert [(s.name, s.command) for s in hello.steps] == [("compile", "make"), ("test", "make test")]
    assert hello.steps[0].halt_on_failure and hello.steps[1].timeout == 600
    assert hello.wants_branch("release-1.0") and not hello.wants_branch("feature")


def test_hello_alone_is_the_documented_example(tmp_path):
    files = _example_files(_read(BUILDER_PAGE))
    (tmp_path / "builders").mkdir()
    (tmp_path / "builders" / "hello.builder").write_text(files["builders/hello.builder"])
    hello = config.load(str(tmp_path)).builders["hello"]
    assert hello.workers == ["*"] and hello.poll_interval == 60 and hello.tree_stable == 0
    assert hello.steps[0].timeout == math.inf and hello.steps[0].timeout_idle == 20 * 60


# --------------------------------------------------------- state page

def test_every_record_format_is_documented_at_its_version():
    subs = _subsections(_read(STATE_PAGE).split("\n## FORMATS\n", 1)[1])
    documented = {h for h in subs if " " not in h}
    assert set(records.FORMATS) <= documented, sorted(set(records.FORMATS) - documented)
    assert documented <= set(records.FORMATS), sorted(documented - set(records.FORMATS))
    for fmt, version in records.FORMATS.items():
        history = re.findall(r"^Versions: (.*)$", subs[fmt], flags=re.M)
        assert history, "%s: no 'Versions:' line" % fmt
        assert re.search(r"\b%d \(buildunits [0-9.]+\)" % version, history[0]), (
            "%s: version %d not in its history %r" % (fmt, version, history[0]))


def test_every_result_word_is_documented():
    from buildunits import results
    terms = _terms(_read(STATE_PAGE).split("\n## RESULTS\n", 1)[1])
    assert set(terms) == set(results.RESULTS)
    # Listed from least to most bad, the order worst() combines them in.
    words = list(terms)
    for less, more in zip(words, words[1:]):
        assert results.worst([less, more]) == results.worst([more, less]) == more


def test_record_example_is_a_valid_record():
    text = _read(STATE_PAGE)
    block = re.search(r'^```\n(\{\n "format": "change",\n "version": 1,\n "id".*?)^```',
                      text, flags=re.M | re.S).group(1)
    rec = records.decode(block.encode("utf-8"), "example", "change")
    assert block.encode("utf-8") == records.encode("change", rec)


# -------------------------------------------------------------- mkman

def test_mkman_escapes_roff():
    roff = mkman.convert("# x(5)\n\n## NAME\n\nx - y\n\n.dot and 'quote and back\\\\slash\n")
    assert "\n\\&.dot and 'quote and back\\eslash\n" in roff
    assert "\nx \\- y\n" in roff


def test_mkman_inline_fonts():
    roff = mkman.convert("# x(5)\n\nA **b** *c* _d_ `e-f` BUILDUNITS_A_B 2 * 3\n")
    assert "A \\fBb\\fR \\fIc\\fR \\fId\\fR \\fBe\\-f\\fR BUILDUNITS_A_B 2 * 3\n" in roff


def test_mkman_blocks():
    roff = mkman.convert("# x(5)\n## S\n- a\n  b\n\n**K=**\n    def\n\n```\n.x\n```\n")
    assert roff.split("\n")[:3] == ['.TH "X" "5" "" "buildunits"', ".nh", ".ad l"]
    assert "\n.SH S\n.IP \\(bu 2\na\nb\n.TP\n\\fBK=\\fR\ndef\n.PP\n.RS 4\n.nf\n\\&.x\n.fi\n.RE\n" in roff


@pytest.mark.parametrize("bad", ["[a](b)", "<b>x</b>", "a `b", "    indented", "| a | b |",
                                 "#### deep", "```\nopen"])
def test_mkman_refuses_what_it_cannot_render(bad):
    with pytest.raises(mkman.Error):
        mkman.convert("# x(5)\n\n" + bad + "\n")


def _roff(page, tmp_path):
    out = tmp_path / (os.path.basename(page)[:-3])
    r = subprocess.run([sys.executable, os.path.join(DOCS, "mkman.py"), page],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    out.write_text(r.stdout, encoding="utf-8")
    return out, r.stdout


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_man_page_renders_without_warnings(page, tmp_path):
    path, roff = _roff(page, tmp_path)
    assert roff.startswith(".TH ")
    assert "\n.SH NAME\n" in roff and "\n.SH SEE ALSO\n" in roff
    text = _formatted(path)
    # Nothing the Markdown defines is lost on the way.
    for term in _terms(_read(page)):
        assert term.replace("\\", "") in text, term


def _formatted(path):
    """The man page PATH as groff formats it, after checking that groff
    (-ww, every warning) and man(1) format it without a complaint; a skip
    when neither is here (only the structure of the roff was checked)."""
    env = dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="80", MANROFFSEQ="")
    text = None
    if shutil.which("groff"):
        r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(path)],
                           capture_output=True, text=True, env=env, check=False)
        assert (r.returncode, r.stderr) == (0, "")
        text = subprocess.run(["groff", "-man", "-Tutf8", "-P-cbou", str(path)], capture_output=True,
                              text=True, env=env, check=True).stdout
    if shutil.which("man"):
        r = subprocess.run(["man", "--warnings", "-l", "-Tutf8", str(path)],
                           capture_output=True, text=True, env=env, check=False)
        assert (r.returncode, r.stderr) == (0, "")
        if text is None:
            text = r.stdout
    if text is None:
        pytest.skip("neither groff nor man here: only the structure of the roff was checked")
    return text


# ------------------------------------------------ mkman --docstring

DOC = """prog ARG: does a thing.

NAME
    prog - does a thing

DESCRIPTION
    A paragraph with `code`
    on two lines; it ends:
        literal  -> kept
    - a bullet
      continued
    Another paragraph.

FILES
    STATE/x.json    what it keeps,
                    over two lines
    SPOOL/y/        its inbox
"""


def test_docstring_page_layout():
    roff = mkman.docstring_page(DOC, "8", "prog.py", see_also=["prog(8)", "other(1)"])
    assert roff.split("\n")[:5] == ['.TH "PROG" "8" "" "buildunits"', ".nh", ".ad l", ".SH NAME",
                                    "prog \\- does a thing"]
    assert "\n.SH SYNOPSIS\n\\fBprog\\fR [\\fIDIRECTORY OPTIONS\\fR] \\fIARG\\fR\n" in roff
    assert ("\n.SH DESCRIPTION\n.PP\nA paragraph with \\fBcode\\fR on two lines; it ends:\n"
            ".RS 4\n.nf\nliteral  \\-> kept\n.fi\n.RE\n.IP \\(bu 2\na bullet continued\n"
            ".PP\nAnother paragraph.\n") in roff
    assert ("\n.SH FILES\n.TP\n\\fBSTATE/x.json\\fR\nwhat it keeps, over two lines\n"
            ".TP\n\\fBSPOOL/y/\\fR\nits inbox\n") in roff
    assert roff.endswith("\n.SH SEE ALSO\n\\fBother\\fR(1)\n")


def test_docstring_page_directory_options_come_from_paths():
    roff = mkman.docstring_page(DOC, "8", "prog.py", options_doc="paths: the four directories.\n\nEach.\n")
    assert "\n.SH DIRECTORY OPTIONS\n.PP\nThe four directories.\n.PP\nEach.\n" in roff


@pytest.mark.parametrize("bad", [DOC.replace("NAME\n    prog - does a thing\n", ""),     # no NAME
                                 DOC.replace("    Another paragraph.", "Another paragraph."),  # not indented
                                 DOC.replace("`code`", "`code"),
                                 DOC.replace("prog ARG: does a thing.", "other: does a thing.")])
def test_docstring_page_refuses_what_it_cannot_place(bad):
    with pytest.raises(mkman.Error):
        mkman.docstring_page(bad, "8", "prog.py")


def _words(text):
    """The words of TEXT as groff -Tutf8 shows them, punctuation kept."""
    for a, b in (("\u2212", "-"), ("\u2010", "-"), ("\u2019", "'"), ("\u2018", "`"), ("`", ""),
                 ("\u201c", '"'), ("\u201d", '"'), ("\u2022", "")):
        text = text.replace(a, b)
    return collections.Counter(text.split())


@pytest.mark.parametrize("module,section,page", DOCSTRING_PAGES, ids=[p[2] for p in DOCSTRING_PAGES])
def test_docstring_man_page_renders_without_warnings(module, section, page, tmp_path):
    source = os.path.join(LIB, module + ".py")
    r = subprocess.run([sys.executable, os.path.join(DOCS, "mkman.py"), "--docstring", section, source,
                        "--see-also", "buildunits(1) buildunits-runner(8) buildunits.builder(5)"],
                       capture_output=True, text=True, check=False)
    assert (r.returncode, r.stderr) == (0, "")
    roff = r.stdout
    path = tmp_path / ("%s.%s" % (page, section))
    path.write_text(roff, encoding="utf-8")
    assert roff.startswith('.TH "%s" "%s" ' % (page.upper(), section))
    heads = re.findall(r"^\.SH (.*)$", roff, re.M)
    assert heads[:3] == ["NAME", "SYNOPSIS", "DESCRIPTION"], heads
    doc = mkman.module_docstring(source)
    assert set(re.findall(r"^([A-Z][A-Z ]*[A-Z])$", doc, re.M)) <= set(heads)
    assert "SEE ALSO" in heads and "\\fB%s\\fR(%s)" % (page.replace("-", "\\-"), section) not in roff
    text = _formatted(path)
    # Every word of the docstring (less its first line, the synopsis's
    # source, the section headings and the bullets' dashes) is on the page.
    body = "\n".join(re.sub(r"^ *- ", "", l) for l in doc.splitlines()[1:]
                     if not re.match(r"^[A-Z][A-Z ]*[A-Z]$", l))
    missing = _words(body) - _words(text)
    assert not missing, sorted(missing)


def test_readme_checkconfig_example_is_what_checkconfig_says(tmp_path):
    """The README's hello.builder, with the change its text describes,
    gives exactly the error lines the README shows."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    example = re.search(r"```ini\n(\[Builder\].*?)```", readme, re.S).group(1)
    change = re.search(r"Had the last line said `(\w+)=([^`]*)`", readme)
    shown = re.search(r"\$ bin/buildunits checkconfig\n((?:    \S.*\n)+)", readme).group(1)
    key, value = change.groups()
    lines = example.splitlines()
    assert lines[-1].startswith(key + "="), lines[-1]
    lines[-1] = "%s=%s" % (key, value)
    conf = tmp_path / "etc"
    (conf / "builders").mkdir(parents=True)
    (conf / "builders" / "hello.builder").write_text("\n".join(lines) + "\n")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "buildunits"), "--config-dir", str(conf),
                        "checkconfig"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.returncode == 1
    expected = [line[4:].replace("/etc/buildunits", str(conf)) for line in shown.splitlines()]
    assert p.stderr.splitlines() == expected, p.stderr


def test_design_maps_every_module():
    """docs/design.md's map names every module of lib/buildunits, and no
    module that is gone."""
    with open(os.path.join(DOCS, "design.md"), encoding="utf-8") as f:
        text = f.read()
    table = text.split("## The modules, one line each", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(\w+\.py)`", table))
    lib = {n for n in os.listdir(os.path.join(ROOT, "lib", "buildunits")) if n.endswith(".py") and n != "__init__.py"}
    assert named == lib, (sorted(lib - named), sorted(named - lib))


def test_every_unit_directive_is_documented_in_sandbox_and_limits():
    """buildunits.builder(5)'s SANDBOX AND LIMITS lists what a builder may
    set (unitprops.KEYS) and, under "Set by buildunits", what it may not
    (unitprops.FIXED), and nothing else."""
    section = _read(BUILDER_PAGE).split("\n## SANDBOX AND LIMITS\n", 1)[1].split("\n## ", 1)[0]
    settable, fixed = section.split("\n### Set by buildunits\n", 1)
    assert set(re.findall(r"\*\*(\w+)=\*\*", settable)) == set(unitprops.KEYS)
    assert set(re.findall(r"\*\*(\w+)=\*\*", fixed)) == set(unitprops.FIXED)
