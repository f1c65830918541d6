"""The >>> examples in the modules' docstrings are tests too: they run here,
so `make check` fails when an example stops being true."""

import contextlib
import doctest
import importlib
import io

import pytest

import harness  # noqa: F401  (puts lib/ on sys.path)

MODULES = ("config", "unitfile", "results", "templates", "bus", "buildrecord", "executor_unit", "proctree", "queueindex", "spool",
           "unitprops", "credentials", "mask", "checkout", "notifyrules", "janitor")


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_in_the_docstrings_hold(name):
    module = importlib.import_module("buildunits." + name)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted, "buildunits.%s has no >>> examples left to run" % name
    assert not failed, out.getvalue()
