"""A build's properties: name-value pairs handed in with a forced build,
and each step's environment variable BUILDUNITS_PROPERTY_NAME.

A name is [A-Za-z_][A-Za-z0-9_]{0,63} (so it is a shell variable's name
inside BUILDUNITS_PROPERTY_); a value is text of at most MAX_VALUE_BYTES
bytes of UTF-8, without NUL (which no environment can hold); a build has
at most MAX_PROPERTIES of them, of at most MAX_TOTAL_BYTES together
(names and values: what a step's start carries stays well inside the
launcher's message, launcher.MAX_MESSAGE, even with every byte escaped).  check() says what is wrong with
properties handed in (`buildunits force --property`, the scheduler's
Force method); what is already in a record is never refused again:
environment() just leaves out what could not be a variable (a request
queued by a release that did not check).

A value reaches a step only through its environment: nothing of ours
puts it into the command's text, so the shell reads it as data when the
command says "$BUILDUNITS_PROPERTY_NAME" (docs/design.md).

>>> check({"color": "blue", "9lives": "x"})
["property name '9lives' is not [A-Za-z_][A-Za-z0-9_]{0,63}"]
>>> environment({"color": "blue", "a-b": "c", "n": 1})
{'BUILDUNITS_PROPERTY_color': 'blue'}
"""

import re

NAME_RULE = "[A-Za-z_][A-Za-z0-9_]{0,63}"
MAX_VALUE_BYTES = 4096
MAX_PROPERTIES = 64
MAX_TOTAL_BYTES = 16384
PREFIX = "BUILDUNITS_PROPERTY_"

_NAME = re.compile(NAME_RULE)


def valid_name(name):
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def value_problem(value):
    """Why VALUE cannot be a property's value, or None."""
    if not isinstance(value, str):
        return "is not text"
    if "\0" in value:
        return "holds a NUL character"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if size > MAX_VALUE_BYTES:
        return "is %d bytes long, more than %d" % (size, MAX_VALUE_BYTES)
    return None


def check(props):
    """The problems of PROPS ({name: value}), as texts; [] when none."""
    if not isinstance(props, dict):
        return ["properties are not name-value pairs"]
    problems, total = [], 0
    if len(props) > MAX_PROPERTIES:
        problems.append("%d properties, more than %d" % (len(props), MAX_PROPERTIES))
    for name, value in props.items():
        if not valid_name(name):
            problems.append("property name %r is not %s" % (name, NAME_RULE))
            continue
        why = value_problem(value)
        if why:
            problems.append("the value of property %s %s" % (name, why))
        else:
            total += len(name) + len(value.encode("utf-8"))
    if total > MAX_TOTAL_BYTES:
        problems.append("the properties are %d bytes together, more than %d" % (total, MAX_TOTAL_BYTES))
    return problems


def environment(props):
    """{BUILDUNITS_PROPERTY_NAME: value} of the valid properties of PROPS,
    as many as check() lets through: anything else in it (a record written
    by hand, or by a release that did not check) is left out."""
    if not isinstance(props, dict):
        return {}
    env, total = {}, 0
    for k, v in props.items():
        if valid_name(k) and value_problem(v) is None and len(env) < MAX_PROPERTIES:
            total += len(k) + len(v.encode("utf-8"))
            if total > MAX_TOTAL_BYTES:
                break
            env[PREFIX + k] = v
    return env
