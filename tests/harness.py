"""The integration-test harness: real daemons, a private bus, real git.

Everything a test starts is its own: directories under tmp_path, a private
dbus-daemon with a system-bus-like configuration (never the machine's
/etc, /var or system bus), one NOTIFY_SOCKET per daemon process, and git
repositories isolated from the machine's and the user's git
configuration.  Nothing waits by sleeping: every wait polls for the event
it is about, with a deadline, and a timeout names what was awaited.

The pieces live in the support package (tests/support/, shared with bench/
and the demo); this module names them all, for tests that `import harness`
(conftest.py wraps them as fixtures):

    wait_for(predicate, timeout=, what=)    poll until PREDICATE() is true   (support.wait)
    PrivateBus(tmpdir)                      a dbus-daemon; .address, .env    (support.bus)
    Monitor                                 dbus-monitor, collecting signals (support.bus)
    NotifyReader(path)                      a NOTIFY_SOCKET, collecting messages (support.notify)
    GitRepo / make_repo(path)               bare repository + work clone     (support.git)
    Daemons(tmp_path, bus)                  start/stop the project's programs (support.daemons)

Timeouts can be stretched on a slow machine with
BUILDUNITS_TEST_TIMEOUT_SCALE (a factor, default 1).
"""

# Modules that tests reach through harness (harness.subprocess.run, ...).
import shutil  # noqa: F401
import subprocess  # noqa: F401

from support import BIN_DIR, LIB_DIR, PYTHON, REPO_ROOT  # noqa: F401  (puts lib/ on sys.path)
from support.bus import (  # noqa: F401
    DEFAULT_MATCH, NO_BUS, PROJECT_POLICY, SYSTEM_CONF, Monitor, PrivateBus, Signal, stand_in_policy,
    system_like_config)
from support.daemons import PROGRAMS, DaemonProcess, Daemons, build_is_finished  # noqa: F401
from support.git import GitRepo, git, git_env, make_repo  # noqa: F401
from support.notify import NotifyReader  # noqa: F401
from support.procs import (  # noqa: F401
    OWN_PROCS as _HARNESS_PROCS, become_subreaper, children_of, kill_group as _kill_group,
    kill_tree, own_pids as _other_harness_pids, short_dir, terminate as _terminate)
from support.wait import POLL_INTERVAL, TIMEOUT_SCALE, WaitTimeout, scaled, wait_for  # noqa: F401

from buildunits import records, results  # noqa: F401,E402
from buildunits.spool import Spool  # noqa: F401,E402
from buildunits.state import State  # noqa: F401,E402
