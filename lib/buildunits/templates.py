"""Templates: the one module that knows jinja2 and where the templates live.

The templates directory is, in this order:

    $BUILDUNITS_TEMPLATES_DIR                    if set (operators, tests)
    <package>/../../share/templates              a source checkout
    <package>/../../../../share/buildunits/templates
                                                 an install: the package sits in
                                                 PREFIX/lib/buildunits/python/buildunits/
    sys.prefix/share/buildunits/templates        a pip install (setup.py's data_files)

Every template is autoescaped, whatever its name: the pages show commit
messages, author names and build logs, which are text from strangers.
Undefined names are errors (StrictUndefined), so a typo in a template
fails the render instead of printing an empty string.

    >>> render("base.html", title="t", site_title="CI", root="", refresh=0)[:15]
    '<!DOCTYPE html>'
"""

import functools
import os
import sys
import time

import jinja2
import markupsafe

from . import config, results

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT = os.path.normpath(os.path.join(_PACKAGE, "..", "..", "share", "templates"))
_INSTALLED = os.path.normpath(os.path.join(_PACKAGE, "..", "..", "..", "..",
                                           "share", "buildunits", "templates"))

_environments = {}  # directory -> jinja2.Environment
_default = [None, None]  # [$BUILDUNITS_TEMPLATES_DIR, the directory it gave]


def templates_dir(environ=None):
    """The templates directory (see the module docstring)."""
    env = os.environ if environ is None else environ
    if env.get("BUILDUNITS_TEMPLATES_DIR"):
        return env["BUILDUNITS_TEMPLATES_DIR"]
    for d in (_CHECKOUT, _INSTALLED, os.path.join(sys.prefix, "share", "buildunits", "templates")):
        if os.path.isdir(d):
            return d
    raise FileNotFoundError("no templates directory: set BUILDUNITS_TEMPLATES_DIR, or install "
                            "them in %s" % _INSTALLED)


def environment(directory=None):
    """The jinja2 Environment for DIRECTORY (default templates_dir()), made once."""
    if not directory:
        # Looked up once (a page is many renders), unless the variable changes.
        key = os.environ.get("BUILDUNITS_TEMPLATES_DIR")
        if _default[0] != key or _default[1] is None:
            _default[:] = [key, templates_dir()]
        directory = _default[1]
    e = _environments.get(directory)
    if e is None:
        e = jinja2.Environment(
            loader=jinja2.FileSystemLoader(directory),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            # Each template is compiled once per process and never looked
            # at again: a page would otherwise stat every template it uses
            # (18 a build in a full rendering).  The templates change with
            # the package, whose upgrade restarts the daemons.
            auto_reload=False,
        )
        e.filters.update(FILTERS)
        _environments[directory] = e
    return e


def render(name, **context):
    """The page NAME rendered with CONTEXT, as one str."""
    return environment().get_template(name).render(**context)


def fragment(name, **context):
    """NAME rendered with CONTEXT as markup a page can include as it is
    (it was escaped when it was rendered): for pieces that are rendered
    once and shown on many pages.

    >>> fragment("macros.html") == ""
    True
    """
    return markupsafe.Markup(environment().get_template(name).render(**context).strip())


def part(name, **context):
    """NAME rendered with CONTEXT as markup, as it is (not stripped): a
    part of a page (a column's cell, a row) rendered once and spliced
    into the page, which then reads as if it had rendered it itself."""
    return markupsafe.Markup(environment().get_template(name).render(**context))


def generate(name, **context):
    """The page NAME rendered with CONTEXT, as an iterator of str pieces.

    For pages too big to hold at once (logs): the template pulls from
    iterators in CONTEXT only as the caller pulls from this one.
    """
    return environment().get_template(name).generate(**context)


# ------------------------------------------------------------------ filters
# A page shows the same few hundred times again and again (its builds' and
# rows' times); localtime() costs a look at the zone's rules each time
# (without TZ, glibc checks /etc/localtime on every call: most of what a
# waterfall page's rows cost).  A time's local text is kept, by the time,
# until the host's offset from UTC changes (forget_times, which the
# site's heads call at each pass).
_TIMES = 8192
_zone = [None]


def forget_times(zone):
    """Forget the local texts of times if ZONE (time.strftime("%z") now) is
    not the zone they were made in."""
    if _zone[0] != zone:
        _zone[0] = zone
        for f in (timestamp, clock, isotime, day, time_tag):
            f.cache_clear()


@functools.lru_cache(maxsize=_TIMES)
def time_tag(t, fmt="timestamp"):
    """The markup of macros.html's when(T, FMT), as a filter: a page's rows
    call it a hundred times, and a macro's call costs ten times a
    function's.  The same bytes as the macro's.

    >>> time_tag(None)
    Markup('')
    """
    if t is None:
        return markupsafe.Markup("")
    return markupsafe.Markup('<time datetime="%s" title="%s">%s</time>') % (
        isotime(t), timestamp(t), timestamp(t) if fmt == "timestamp" else clock(t))


@functools.lru_cache(maxsize=_TIMES)
def day(t):
    """The local date of T, for a waterfall's day rows."""
    return time.strftime("%Y-%m-%d", time.localtime(t))


@functools.lru_cache(maxsize=_TIMES)
def timestamp(t):
    """Local time of the Unix time T, to the second; "" for None.

    >>> timestamp(None)
    ''
    """
    if t is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


@functools.lru_cache(maxsize=_TIMES)
def clock(t):
    """Local time of day of T (the date is shown elsewhere); "" for None."""
    if t is None:
        return ""
    return time.strftime("%H:%M:%S", time.localtime(t))


@functools.lru_cache(maxsize=_TIMES)
def isotime(t):
    """T as ISO 8601 with its UTC offset, for <time datetime=...>; "" for None."""
    if t is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def rfc3339(t):
    """T in UTC as RFC 3339 (Atom's dates); "" for None.

    >>> rfc3339(0)
    '1970-01-01T00:00:00Z'
    """
    if t is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def timespan(seconds):
    """A duration in short human form ("41s", "2min 5s"); "" for None.

    >>> timespan(41), timespan(125), timespan(None)
    ('41s', '2min 5s', '')
    """
    if seconds is None:
        return ""
    return config.format_timespan(max(0.0, seconds))


def firstline(text):
    """The first non-empty line of TEXT, stripped.

    >>> firstline("\\n  fix the frobnicator\\n\\nlong story")
    'fix the frobnicator'
    """
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def shortrev(rev, n=8):
    """An abbreviated revision, as git log --oneline shows it.

    >>> shortrev("3f2c9a1b7e0d4c5a")
    '3f2c9a1b'
    """
    return (rev or "")[:n]


def who(author):
    """The name of "Name <mail>", or the address when there is no name.

    >>> who("A U Thor <a@example.org>"), who("<a@example.org>")
    ('A U Thor', 'a@example.org')
    """
    author = author or ""
    name, lt, rest = author.partition("<")
    if lt and name.strip():
        return name.strip()
    return rest.rstrip(">").strip() if lt else author.strip()


_STATUS_WORDS = set(results.RESULTS) | {results.RUNNING, results.QUEUED, "pending"}


def status_class(word):
    """The CSS class of a status word; words from newer releases look neutral.

    >>> status_class("failure"), status_class("frobnicated")
    ('r-failure', 'r-other')
    """
    return "r-" + (word if word in _STATUS_WORDS else "other")


FILTERS = {
    "status_class": status_class,
    "timestamp": timestamp,
    "clock": clock,
    "isotime": isotime,
    "time_tag": time_tag,
    "rfc3339": rfc3339,
    "timespan": timespan,
    "firstline": firstline,
    "shortrev": shortrev,
    "who": who,
}
