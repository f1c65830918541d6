"""Where buildunits keeps things: the four directories every program takes.

Each has a command-line option, an environment variable, and a default:

    --config-dir  BUILDUNITS_CONFIG_DIR  /etc/buildunits
    --spool-dir   BUILDUNITS_SPOOL_DIR   /var/spool/buildunits
    --state-dir   BUILDUNITS_STATE_DIR   /var/lib/buildunits
    --site-dir    BUILDUNITS_SITE_DIR    STATE_DIR/site

The option wins over the variable, which wins over the default.  The site
defaults to a directory inside the state directory, so a test or demo that
moves the state moves the site with it.

Also where buildunits' own programs are (program()): beside the library,
as a checkout, `make install` and pip lay them out.
"""

import os
import sys
from dataclasses import dataclass

DEFAULTS = {
    "config": "/etc/buildunits",
    "spool": "/var/spool/buildunits",
    "state": "/var/lib/buildunits",
}


@dataclass(frozen=True)
class Dirs:
    config: str
    spool: str
    state: str
    site: str


def add_arguments(parser):
    """Add the four directory options to an argparse PARSER."""
    g = parser.add_argument_group("directories")
    g.add_argument("--config-dir", metavar="DIR",
                   help="configuration (env BUILDUNITS_CONFIG_DIR, default /etc/buildunits)")
    g.add_argument("--spool-dir", metavar="DIR",
                   help="spool (env BUILDUNITS_SPOOL_DIR, default /var/spool/buildunits)")
    g.add_argument("--state-dir", metavar="DIR",
                   help="state and history (env BUILDUNITS_STATE_DIR, default /var/lib/buildunits)")
    g.add_argument("--site-dir", metavar="DIR",
                   help="static site output (env BUILDUNITS_SITE_DIR, default STATE_DIR/site)")


def from_args(args, environ=None):
    """The Dirs named by parsed ARGS, the environment and the defaults."""
    env = os.environ if environ is None else environ

    def pick(name):
        v = getattr(args, name + "_dir", None) or env.get("BUILDUNITS_%s_DIR" % name.upper())
        return os.path.abspath(v) if v else None

    config = pick("config") or DEFAULTS["config"]
    spool = pick("spool") or DEFAULTS["spool"]
    state = pick("state") or DEFAULTS["state"]
    site = pick("site") or os.path.join(state, "site")
    return Dirs(config=config, spool=spool, state=state, site=site)


_LIB = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def program(name):
    """The path of buildunits' program NAME: bin/ of the checkout, PREFIX/bin
    of `make install` (the library in PREFIX/lib/buildunits/python), the
    scripts of pip's installation; else NAME itself, for PATH to find."""
    for d in (os.path.join(_LIB, "..", "bin"), os.path.join(_LIB, "..", "..", "..", "bin"),
              os.path.join(sys.prefix, "bin")):
        path = os.path.normpath(os.path.join(d, name))
        if os.access(path, os.X_OK) and os.path.isfile(path):
            return path
    return name
