"""What the tests, the benchmarks and the demo share.

    wait        wait_for(predicate, timeout=, what=): poll until true, with a deadline
    procs       process trees: kill_tree, the child subreaper, short socket dirs
    bus         PrivateBus (a dbus-daemon of its own), Monitor (its signals)
    notify      NotifyReader: a NOTIFY_SOCKET collecting sd_notify messages
    git         git isolated from the machine's configuration; GitRepo, make_repo
    daemons     Daemons: the project's programs against one test's directories
    inprocess   a daemon object in the test's process: RecordingNotifier, dirs, capture_log
    container   a booted Debian tree with systemd as PID 1 (the system tests, make demo)

Importing the package puts this checkout's lib/ first on sys.path.
wait, procs, git and container use the standard library only; bus and
daemons need the project's dependencies (gi, the buildunits package).
tests/harness.py names all of it, for the tests that `import harness`.
"""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB_DIR = os.path.join(REPO_ROOT, "lib")
BIN_DIR = os.path.join(REPO_ROOT, "bin")
# Debian's Python, where python3-pydbus & co. live.
PYTHON = "/usr/bin/python3"

if LIB_DIR not in sys.path:
    sys.path.insert(0, LIB_DIR)
