"""The log page of a running step follows its log (docs/site.md).

htmlgen writes a step's log page at the step's start and end; in between,
while the build runs, the page of a log that grew is written again within
a few seconds, and nothing else is.
"""

import os

from buildunits import site
from buildunits.spool import Spool
from buildunits.state import State
from harness import wait_for
from test_site import Page, files_of, finish, make_build, make_cfg, written_since


def test_follow_logs_writes_only_the_page_of_a_log_that_grew(tmp_path):
    st = State(str(tmp_path / "state"))
    st.ensure()
    sp = Spool(str(tmp_path / "spool"))
    sp.ensure()
    s = site.Site(str(tmp_path / "site"), st, sp, make_cfg(tmp_path))
    assert s.follow_logs() is None                    # not loaded: nothing to follow
    make_build(st, "hello")                           # #1, finished
    n = make_build(st, "hello", running_step=("compile", "cc a.c\n"))
    s.update([("hello", n)])
    root = str(tmp_path / "site")
    before = files_of(root)
    assert s.follow_logs() == 0 and written_since(root, before) == []   # nothing grew
    with open(st.log_path("hello", n, 3, "compile"), "a") as f:
        f.write("cc b.c\n")
    assert s.follow_logs() == 1
    raw = os.path.join("builders", "hello", str(n), "03-compile.txt")   # the hard link grows by itself
    assert os.path.samefile(os.path.join(root, raw), st.log_path("hello", n, 3, "compile"))
    assert [p for p in written_since(root, before) if p != raw] == [
        os.path.join("builders", "hello", str(n), "03-compile.html")]
    assert "cc b.c" in Page(os.path.join(root, "builders", "hello", str(n), "03-compile.html")).all_text
    before = files_of(root)
    assert s.follow_logs() == 0 and written_since(root, before) == []   # and not again
    finish(st, "hello", n)
    s.update([])
    assert s.follow_logs() is None                    # no build runs: the timer stops


def test_the_log_page_of_a_running_step_shows_its_output_before_it_ends(daemons, tmp_path):
    """The step prints a line once its log page is on the site and htmlgen
    has taken every hint (htmlgen is off the bus: hints are its only
    wake-ups), then a second line when the test says so, then waits for
    the test: its lines can reach the page only by following the log.
    (The lines are computed: the page also shows the step's command.)"""
    go, release = tmp_path / "go", tmp_path / "release"
    hints = os.path.join(daemons.spool_dir, "hints")
    page = os.path.join(daemons.site_dir, "builders", "follow", "1", "01-tail.html")
    daemons.write_builder("follow", """
        [Builder]
        PollIntervalSec=0

        [Step tail]
        Command=while [ ! -e {page} ] || [ -n "$(ls -A {hints})" ]; do sleep 0.05; done; echo "first line: $((20 + 22))"; while [ ! -e {go} ]; do sleep 0.05; done; echo "second line: $((30 + 43))"; while [ ! -e {release} ]; do sleep 0.05; done
        TimeoutSec=120s
        """.format(page=page, hints=hints, go=go, release=release))
    daemons.start("scheduler")
    daemons.start("runner", "w1")
    daemons.start("htmlgen", bus=False)
    daemons.cli("force", "follow", check=True)

    def shown(line):
        try:
            return line in Page(page).all_text
        except OSError:
            return False
    try:
        wait_for(lambda: shown("first line: 42"), timeout=30, what="the step's first line on its log page")
        go.write_text("")
        wait_for(lambda: shown("second line: 73"), timeout=30,
                 what="the step's second line on its log page")
        assert daemons.read_build("follow", 1)["state"] == "running"
    finally:
        release.write_text("")
    b = daemons.wait_build_finished("follow", 1)
    assert b["result"] == "success"
