"""buildunits: continuous integration as a handful of small Unix services.

For pip users.  The Makefile's `install` target is the reference install
(it also installs units and the D-Bus policy); on Debian the runtime
dependencies are packages (see README.md).  With pip, PyGObject must be
built: on bookworm that means PyGObject>=3.50,<3.51 and the -dev packages.
"""

import glob
import re

from setuptools import setup

with open("lib/buildunits/__init__.py") as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

setup(
    name="buildunits",
    version=VERSION,
    description="Continuous integration as small Unix services under systemd",
    license="MIT",
    package_dir={"": "lib"},
    packages=["buildunits"],
    scripts=sorted(glob.glob("bin/buildunits*")),
    data_files=[
        ("share/buildunits/templates", sorted(glob.glob("share/templates/*"))),
        ("share/buildunits/examples", ["share/examples/post-receive"]),
        ("share/dbus-1/system.d", ["units/dbus/org.buildunits.conf"]),
    ],
    python_requires=">=3.9",
    install_requires=["pydbus", "PyGObject", "sdnotify", "jinja2", "watchdog"],
    extras_require={"journal": ["systemd-python"], "test": ["pytest"]},
)
