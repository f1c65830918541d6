#!/usr/bin/python3
"""make demo: buildunits under a real systemd, on the built-in example.

    demo.py            the real thing: boots a Debian container with systemd
                       (systemd-nspawn; the image is built once and cached),
                       installs buildunits with `make install`, starts
                       buildunits.target with two runners on the example
                       repository (share/examples/hello), makes a passing
                       and a failing commit, waits for both builds, copies
                       the site out to demo-output/site, prints its address
                       and the journal lines of the two builds, and halts
                       the container.  Needs root (containers).
    demo.py --local    the four daemons as plain processes from bin/, with a
                       private D-Bus bus, everything under demo-output/.

BUILDUNITS_DEMO_OUT moves demo-output/ elsewhere.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "lib"))

from buildunits import records  # noqa: E402

OUT = os.environ.get("BUILDUNITS_DEMO_OUT") or os.path.join(ROOT, "demo-output")
PY = sys.executable
TIMEOUT = 120


def say(msg):
    print("demo: " + msg, flush=True)


def git(*args, cwd=None):
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="Demo Developer",
               GIT_AUTHOR_EMAIL="dev@example.org", GIT_COMMITTER_NAME="Demo Developer",
               GIT_COMMITTER_EMAIL="dev@example.org")
    subprocess.run(["git"] + list(args), cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def private_bus(d):
    """A private system-like bus with buildunits' policy; (process, address) or (None, None)."""
    if not shutil.which("dbus-daemon"):
        return None, None
    sock = os.path.join(d, "bus.sock")
    policy = os.path.join(d, "policy.d")
    os.makedirs(policy)
    shutil.copy(os.path.join(ROOT, "units", "dbus", "org.buildunits.conf"), policy)
    conf = os.path.join(d, "bus.conf")
    with open(conf, "w") as f:
        f.write("""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path=%s</listen>
<auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><deny own="*"/><deny send_type="method_call"/>
<allow send_type="signal"/><allow send_requested_reply="true" send_type="method_return"/>
<allow send_requested_reply="true" send_type="error"/><allow receive_type="method_call"/>
<allow receive_type="method_return"/><allow receive_type="error"/><allow receive_type="signal"/>
<allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
<allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
</policy>
<policy user="%s"><allow own_prefix="org.buildunits"/><allow send_destination_prefix="org.buildunits"/></policy>
<includedir>%s</includedir></busconfig>
""" % (sock, _username(), policy))
    p = subprocess.Popen(["dbus-daemon", "--config-file=" + conf, "--nofork", "--print-address"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    addr = p.stdout.readline().decode().strip()
    return p, addr


def _username():
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name


def wait_build(state, builder, number):
    path = os.path.join(state, "builds", builder, str(number), "build.json")
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            rec = records.read(path, "build")
            if rec.get("state") == "finished":
                return rec
        except (OSError, records.RecordError):
            pass
        time.sleep(0.1)
    raise SystemExit("demo: build %s #%d did not finish within %ds; see %s/*.log" % (builder, number, TIMEOUT, OUT))


def container_demo():
    """The real thing, in a container; see the module docstring."""
    start = time.monotonic()
    sys.path.insert(0, os.path.join(ROOT, "tests", "system"))
    import container as ct
    if os.geteuid() != 0:
        raise SystemExit("demo: booting a container needs root; run `sudo make demo`, or "
                         "`make demo-local` for the daemons as plain processes")
    ct.ensure_tools(say=say)
    ct.cleanup_leftovers(say=say)
    image = ct.Image()
    image.ensure(say=say)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    c = ct.Container(image, ct.unique_name("buildunits-demo"), binds=[(ROOT, "/src")], rw_binds=[(OUT, "/out")])
    say("booting container %s" % c.name)
    c.boot()
    try:
        say("installing buildunits (make install PREFIX=/usr)")
        ct.install_project(c)
        sh = lambda script, **kw: c.run(["sh", "-c", script], **kw)  # noqa: E731
        say("creating the example repository /srv/git/hello.git")
        wc = "/var/lib/buildunits-dev/hello"
        sh("mkdir -p /srv/git %s && cp -r /src/share/examples/hello/. %s && "
           "chown -R buildunits:buildunits /srv/git %s" % (wc, wc, wc))
        sh("git init -q --bare -b main /srv/git/hello.git && cd %s && git init -q -b main . && "
           "git config user.name 'Demo Developer' && git config user.email dev@example.org && "
           "git add Makefile hello.sh && git commit -q -m 'hello: the program' && "
           "git add test.sh && git commit -q -m 'hello: a test' && git push -q /srv/git/hello.git main" % wc,
           user="buildunits")
        with open(os.path.join(ROOT, "share", "examples", "hello.builder")) as f:
            c.write_file("/etc/buildunits/builders/hello.builder", f.read().replace("@REPOSITORY@", "/srv/git/hello.git"))
        c.write_file("/etc/buildunits/buildunits.conf", "[Site]\nTitle=buildunits demo\n")
        say("systemctl enable --now buildunits.target buildunits-runner@1 buildunits-runner@2")
        sh("systemctl enable -q --now buildunits.target buildunits-runner@1 buildunits-runner@2")
        ct._wait(lambda: sh("ls /var/lib/buildunits/poller/*.json", check=False).returncode == 0, 60,
                 "the poller's first poll")
        results = []
        for number, (what, text, message) in enumerate((
                ("a change that passes", "# greet politely\n", "hello: a comment on politeness"),
                ("a change that breaks the test", '#!/bin/sh\necho "Goodbye, world!"\n', "hello: say goodbye instead")),
                start=1):
            say("committing " + what)
            redirect = ">>" if number == 1 else ">"
            sh("cd %s && printf '%%s' '%s' %s hello.sh && git commit -q -am '%s' && git push -q /srv/git/hello.git main"
               % (wc, text.replace("'", "'\\''"), redirect, message), user="buildunits")
            path = "/var/lib/buildunits/builds/hello/%d/build.json" % number

            def finished():
                p = sh("cat %s" % path, check=False)
                try:
                    rec = json.loads(p.stdout) if p.returncode == 0 else None
                except ValueError:
                    return None
                return rec if rec and rec.get("state") == "finished" else None
            b = ct._wait(finished, TIMEOUT, "build hello #%d" % number)
            say("build hello #%d: %s" % (number, b["result"]))
            results.append(b["result"])
        ct._wait(lambda: site_shows(sh("cat /var/lib/buildunits/site/api/builders.json", check=False).stdout,
                                    "hello", 2), 30, "the site to show build 2")
        sh("cp -r /var/lib/buildunits/site /out/site")
        # The runner logs "build finished" after the build's record, and
        # journald reads the daemons' messages in its own time: wait for the
        # last line of each build before printing the journal.
        wanted = ["hello #%d: build finished: %s" % (n, r) for n, r in enumerate(results, start=1)]
        journal = ct._wait(
            lambda: (lambda j: j if all(w in j for w in wanted) else None)(
                c.journal("-o", "short", "-u", "buildunits-*", "BUILDUNITS_BUILDER=hello")),
            30, "the journal to show both builds finished")
        status = sh("systemctl status --no-pager --lines=0 buildunits-scheduler", check=False).stdout
    finally:
        say("halting the container")
        c.stop()
    print()
    print(journal.rstrip())
    print()
    print(status.rstrip())
    print()
    say("done in %.1fs; the waterfall: file://%s/site/index.html" % (time.monotonic() - start, OUT))
    return 0 if results == ["success", "failure"] else 1


def main():
    if "--local" not in sys.argv[1:]:
        return container_demo()
    start = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    repo, wc = os.path.join(OUT, "hello.git"), os.path.join(OUT, "hello")
    cfg, spool, state, site = (os.path.join(OUT, d) for d in ("config", "spool", "state", "site"))
    say("creating the example repository %s" % repo)
    git("init", "--quiet", "--bare", "--initial-branch=main", repo)
    shutil.copytree(os.path.join(ROOT, "share", "examples", "hello"), wc)
    git("init", "--quiet", "--initial-branch=main", cwd=wc)
    git("add", "Makefile", "hello.sh", cwd=wc)
    git("commit", "--quiet", "-m", "hello: the program", cwd=wc)
    git("add", "test.sh", cwd=wc)
    git("commit", "--quiet", "-m", "hello: a test", cwd=wc)
    git("push", "--quiet", repo, "main", cwd=wc)
    os.makedirs(os.path.join(cfg, "builders"))
    with open(os.path.join(ROOT, "share", "examples", "hello.builder")) as f:
        text = f.read().replace("@REPOSITORY@", repo)
    with open(os.path.join(cfg, "builders", "hello.builder"), "w") as f:
        f.write(text)
    with open(os.path.join(cfg, "buildunits.conf"), "w") as f:
        f.write("[Site]\nTitle=buildunits demo\n")

    bus, addr = private_bus(OUT)
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=addr or "unix:path=/nonexistent")
    for k in ("NOTIFY_SOCKET", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES"):
        env.pop(k, None)   # the example's own make must not think it is a sub-make of ours
    say("private D-Bus system bus at %s" % addr if addr else "no dbus-daemon: running without a bus")
    dirs = ["--config-dir", cfg, "--spool-dir", spool, "--state-dir", state, "--site-dir", site]
    procs = []
    monitor = None
    if addr and shutil.which("dbus-monitor"):
        monitor = subprocess.Popen(["dbus-monitor", "--address", addr,
                                    "type='signal',path_namespace='/org/buildunits'"],
                                   stdout=open(os.path.join(OUT, "signals.txt"), "w"), stderr=subprocess.DEVNULL)
    try:
        for prog, extra in (("poller", []), ("scheduler", []), ("runner", ["worker1"]), ("runner", ["worker2"]),
                            ("htmlgen", [])):
            logf = open(os.path.join(OUT, "%s%s.log" % (prog, ("-" + extra[0]) if extra else "")), "w")
            procs.append(subprocess.Popen([PY, os.path.join(ROOT, "bin", "buildunits-" + prog)] + dirs + extra,
                                          env=env, stdout=logf, stderr=subprocess.STDOUT))
            say("started buildunits-%s %s" % (prog, " ".join(extra)))
        # The poller records the heads on its first poll; commits after that are built.
        wait_file(os.path.join(state, "poller"), ".json")
        b1 = commit_and_wait(wc, repo, state, 1, "a change that passes", "a",
                             "# greet politely\n", "hello: a comment on politeness")
        b2 = commit_and_wait(wc, repo, state, 2, "a change that breaks the test", "w",
                             '#!/bin/sh\necho "Goodbye, world!"\n', "hello: say goodbye instead")
        wait_page(site, b2)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        if monitor:
            monitor.terminate()
        if bus:
            bus.terminate()
    print()
    for name in sorted(os.listdir(OUT)):
        if name.startswith("runner") and name.endswith(".log"):
            with open(os.path.join(OUT, name)) as f:
                for line in f:
                    if "hello #" in line:
                        print("  " + line.rstrip())
    print()
    say("done in %.1fs; the waterfall: file://%s/index.html" % (time.monotonic() - start, site))
    return 0 if (b1["result"], b2["result"]) == ("success", "failure") else 1


def commit_and_wait(wc, repo, state, number, what, mode, text, message):
    """Edit hello.sh (MODE "a" appends, "w" replaces), commit, push, and wait for build NUMBER."""
    say("committing " + what)
    with open(os.path.join(wc, "hello.sh"), mode) as f:
        f.write(text)
    git("commit", "--quiet", "-am", message, cwd=wc)
    git("push", "--quiet", repo, "main", cwd=wc)
    b = wait_build(state, "hello", number)
    say("build hello #%d: %s" % (number, b["result"]))
    return b


def wait_file(d, suffix):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if os.path.isdir(d) and any(n.endswith(suffix) for n in os.listdir(d)):
            return
        time.sleep(0.05)
    raise SystemExit("demo: the poller did not start; see %s/poller.log" % OUT)


def site_shows(text, builder, number):
    """Whether api/builders.json (TEXT) shows BUILDER #NUMBER finished.  The
    generator writes that file last, so the pages of that update are all in
    place (docs/site.md)."""
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    return any(b.get("name") == builder and (b.get("last") or {}).get("number", 0) >= number
               for b in doc.get("builders", []))


def wait_page(site, build):
    path = os.path.join(site, "api", "builders.json")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open(path, encoding="utf-8") as f:
                if site_shows(f.read(), build["builder"], build["number"]):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("demo: the site does not show build %s #%d; see %s/htmlgen.log"
                     % (build["builder"], build["number"], OUT))


if __name__ == "__main__":
    sys.exit(main())
