"""Retention under a real systemd: the shipped janitor unit removes builds.

The operator sets KeepBuilds= on a builder, pins one build with
`buildunits keep`, and runs the daily pass now (`systemctl start
buildunits-janitor.service`, what buildunits-janitor.timer starts).  The
pass runs as the unit ships it (user buildunits, no network, private
users, Nice=19), among the files the runners and the steps' own user
made (artifacts, logs, keep.json written by root); it must remove exactly
what the rules say, leave the site consistent (the removed build's pages
and artifacts gone, its number never reused), and say what it did in the
journal and in `buildunits status`.
"""

import container as ct
from test_systemd import CI

KEEP2 = """\
[Builder]
Description=Keep the two newest builds
Repository=/srv/git/hello.git
Branches=main
PollIntervalSec=1
TreeStableSec=0
KeepBuilds=2
Artifacts=out.txt

[Step make]
Command=sh -c 'make > out.txt'
"""

SITE = "/var/lib/buildunits/site/builders/keep2"


def test_the_janitor_unit_removes_what_keepbuilds_says_and_the_site_follows(make_container):
    ci = CI(make_container())
    ci.setup({"keep2": KEEP2})
    for k in range(1, 5):
        ci.commit("change %d" % k)
        assert ci.wait_finished("keep2", k, timeout=90)["result"] == "success"
    ct._wait(lambda: ci.sh("test -e %s/4/artifacts/out.txt" % SITE, check=False).returncode == 0,
             60, "keep2 #4's artifact on the site")
    assert ci.sh("buildunits keep keep2 1 --reason 'the first release'").returncode == 0

    ci.sh("systemctl start buildunits-janitor.service", timeout=120)
    shown = ci.sh("systemctl show -P Result -P User buildunits-janitor.service").stdout.split()
    assert shown == ["success", "buildunits"], shown
    journal = ci.journal("-u", "buildunits-janitor.service")
    assert "keep2 #2: removed (KeepBuilds=2)" in journal, journal
    # #1 is pinned, #3 and #4 are the two newest: only #2 goes, whole.
    assert ci.numbers("keep2") == [1, 3, 4]
    assert ".removing" not in ci.sh("ls -A /var/lib/buildunits/builds/keep2").stdout

    # The site follows: #2's pages and artifact go, the others stay.
    ct._wait(lambda: ci.sh("test -e %s/2" % SITE, check=False).returncode != 0, 60,
             "keep2 #2's pages to leave the site")
    for n in (1, 3, 4):
        assert ci.sh("test -s %s/%d/index.html" % (SITE, n), check=False).returncode == 0, n
    page = ci.sh("cat %s/1/index.html" % SITE).stdout
    assert "the first release" in page

    # A new build gets #5, never #2 again.
    ci.commit("change 5")
    assert ci.wait_finished("keep2", 5, timeout=90)["result"] == "success"
    assert ci.build("keep2", 2) is None

    status = ci.sh("buildunits status").stdout
    assert "disk (measured by the janitor" in status and "keep2" in status, status
    fsck = ci.sh("buildunits fsck", check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
