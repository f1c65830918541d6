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
                       the container.  The builder also has a nightly
                       timer (OnCalendar=, a drop-in), which it shows in
                       `systemctl list-timers` with the janitor's daily
                       timer (retention); a dependent builder,
                       package (After=hello), builds after the passing
                       build; and a second repository, not polled, is
                       pushed to and announced to buildunits-webhook
                       (socket-activated, HMAC-signed, as a forge's hook
                       would), which builds it (site #1).  Needs root.
    demo.py --local    the four daemons as plain processes from bin/, with a
                       private D-Bus bus, everything under demo-output/;
                       after the two commits, the passing revision is
                       forced again with a property (build #3).

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
sys.path.insert(0, os.path.join(ROOT, "tests"))

# The waits, the private bus, git and the container are the tests' own
# (tests/support/), so the demo does what the tests check.
from support import container as ct  # noqa: E402  (support also puts lib/ on sys.path)
from support.bus import NO_BUS, SYSTEM_CONF, PrivateBus  # noqa: E402
from support.git import make_repo  # noqa: E402
from support.procs import short_dir  # noqa: E402
from support.wait import WaitTimeout, wait_for  # noqa: E402

from buildunits import records  # noqa: E402

OUT = os.environ.get("BUILDUNITS_DEMO_OUT") or os.path.join(ROOT, "demo-output")
PY = sys.executable
TIMEOUT = 120


def say(msg):
    print("demo: " + msg, flush=True)


def private_bus(d):
    """A private system-like bus with buildunits' policy, or None; its
    socket is in D/run, or in /tmp when D is too long for a socket's name."""
    if not (shutil.which("dbus-daemon") and os.path.exists(SYSTEM_CONF)):
        return None
    sockdir, remove = short_dir(d, prefix="bu-demo-")
    bus = PrivateBus(os.path.join(d, "dbus"), sockdir=sockdir).start()
    bus.remove_sockdir = remove
    return bus


def finished_build(state, builder, number):
    """The record of BUILDER #NUMBER if it is finished, else None."""
    try:
        rec = records.read(os.path.join(state, "builds", builder, str(number), "build.json"), "build")
    except (OSError, records.RecordError):
        return None
    return rec if rec.get("state") == "finished" else None


def container_demo():
    """The real thing, in a container; see the module docstring."""
    start = time.monotonic()
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
        with open(os.path.join(ROOT, "share", "examples", "package.builder")) as f:
            c.write_file("/etc/buildunits/builders/package.builder", f.read())
        c.write_file("/etc/buildunits/buildunits.conf", "[Site]\nTitle=buildunits demo\n")
        # The site repository: its pushes are announced by a hook, not polled.
        sh("install -d -o buildunits -g buildunits %s-site" % wc)
        sh("git init -q --bare -b main /srv/git/site.git && cd %s-site && git init -q -b main . && "
           "git config user.name 'Demo Developer' && git config user.email dev@example.org && "
           "echo '<h1>hello</h1>' > index.html && git add index.html && git commit -q -m 'site: a page' && "
           "git push -q /srv/git/site.git main" % wc, user="buildunits")
        with open(os.path.join(ROOT, "share", "examples", "site.builder")) as f:
            c.write_file("/etc/buildunits/builders/site.builder", f.read().replace("@REPOSITORY@", "/srv/git/site.git"))
        # The generic hook's secret, a credential only root can read.
        sh("install -d -m 0700 /etc/buildunits/credentials && "
           "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > /etc/buildunits/credentials/webhook-generic && "
           "chmod 0600 /etc/buildunits/credentials/webhook-generic")
        # A nightly build too, if anything was pushed since the last build: a
        # real timer, which the generator writes at daemon-reload.
        c.write_file("/etc/buildunits/builders/hello.builder.d/50-nightly.conf",
                     "[Builder]\nOnCalendar=*-*-* 02:00:00\nPersistent=yes\nOnlyIfChanged=yes\n")
        say("systemctl daemon-reload; systemctl enable --now buildunits.target buildunits-runner@1 "
            "buildunits-runner@2")
        sh("systemctl daemon-reload && "
           "systemctl enable -q --now buildunits.target buildunits-runner@1 buildunits-runner@2 "
           "buildunits-webhook.socket")
        wait_for(lambda: sh("ls /var/lib/buildunits/poller/*.json", check=False).returncode == 0, 60,
                 what="the poller's first poll", interval=0.1)
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
            b = wait_for(finished, TIMEOUT, what="build hello #%d" % number, interval=0.1)
            say("build hello #%d: %s" % (number, b["result"]))
            results.append(b["result"])
        b = wait_for(lambda: finished_in(sh, "package", 1), TIMEOUT, what="build package #1", interval=0.1)
        say("build package #%d: %s (%s)" % (1, b["result"], b["request"]["reason"]))
        say("a push to /srv/git/site.git, announced to the webhook receiver (POST /generic, signed)")
        rev = sh("cd %s-site && echo '<p>more</p>' >> index.html && git commit -q -am 'site: more' && "
                 "git push -q /srv/git/site.git main && git rev-parse HEAD" % wc, user="buildunits").stdout.strip()
        answer = sh(WEBHOOK_POST % rev, check=False)
        say("the webhook answered: %s" % answer.stdout.strip().splitlines()[0] if answer.stdout.strip()
            else "the webhook did not answer: %s" % answer.stderr.strip())
        b = wait_for(lambda: finished_in(sh, "site", 1), TIMEOUT, what="build site #1", interval=0.1)
        say("build site #1: %s (%s)" % (b["result"], b["request"]["changes"][0]["source"]))
        webhook_ok = b["result"] == "success"
        wait_for(lambda: site_shows(sh("cat /var/lib/buildunits/site/api/builders.json", check=False).stdout,
                                    "hello", 2), 30, what="the site to show build 2", interval=0.1)
        sh("cp -r /var/lib/buildunits/site /out/site")
        # The runner logs "build finished" after the build's record, and
        # journald reads the daemons' messages in its own time: wait for the
        # last line of each build before printing the journal.
        wanted = ["hello #%d: build finished: %s" % (n, r) for n, r in enumerate(results, start=1)]
        journal = wait_for(
            lambda: (lambda j: j if all(w in j for w in wanted) else None)(
                c.journal("-o", "short", "-u", "buildunits-*", "BUILDUNITS_BUILDER=hello")),
            30, what="the journal to show both builds finished", interval=0.1)
        status = sh("systemctl status --no-pager --lines=0 buildunits-scheduler", check=False).stdout
        # The operator's view: queue, running builds, last results, and each
        # polled repository (one that cannot be polled says why).
        status += "\n$ buildunits status\n" + sh("buildunits status", check=False).stdout
        # The nightly timer of hello (OnCalendar= in its drop-in), and the
        # janitor's daily one, which buildunits.target wants.
        status += ("\n$ systemctl list-timers 'buildunits-timer-*' buildunits-janitor.timer\n"
                   + sh("systemctl list-timers --no-pager 'buildunits-timer-*' buildunits-janitor.timer",
                        check=False).stdout)
        # The steps ran in the builder's sandbox, a transient unit started by
        # the launcher, which says which step it ran when.
        status += ("\n$ journalctl -o cat -u 'buildunits-build-hello-*'\n"
                   + c.journal("-o", "cat", "-u", "buildunits-build-hello-*"))
    finally:
        say("halting the container")
        c.stop()
    print()
    print(journal.rstrip())
    print()
    print(status.rstrip())
    print()
    say("done in %.1fs; the waterfall: file://%s/site/index.html" % (time.monotonic() - start, OUT))
    return 0 if results == ["success", "failure"] and webhook_ok else 1


def finished_in(sh, builder, number):
    """The record of BUILDER #NUMBER in the container if it is finished."""
    p = sh("cat /var/lib/buildunits/builds/%s/%d/build.json" % (builder, number), check=False)
    try:
        rec = json.loads(p.stdout) if p.returncode == 0 else None
    except ValueError:
        return None
    return rec if rec and rec.get("state") == "finished" else None


# A push to the site repository announced as a forge's hook would: the
# generic form, signed with HMAC-SHA256 of the secret (as root, who may
# read it).
WEBHOOK_POST = r"""python3 - %s <<'PY'
import hashlib, hmac, http.client, json, sys
secret = open("/etc/buildunits/credentials/webhook-generic", "rb").read().strip()
body = json.dumps({"repository": "/srv/git/site.git", "branch": "main",
                   "commits": [{"revision": sys.argv[1]}]}).encode()
c = http.client.HTTPConnection("127.0.0.1", 8011, timeout=30)
c.request("POST", "/generic", body, {"Content-Type": "application/json", "X-Buildunits-Delivery": "demo-1",
          "X-Buildunits-Signature": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()})
r = c.getresponse()
print(r.status, r.reason, r.read().decode().strip())
PY"""


def main():
    if "--local" not in sys.argv[1:]:
        return container_demo()
    start = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    repo, wc = os.path.join(OUT, "hello.git"), os.path.join(OUT, "hello")
    cfg, spool, state, site = (os.path.join(OUT, d) for d in ("config", "spool", "state", "site"))
    say("creating the example repository %s" % repo)
    r = make_repo(repo, work=wc, user="Demo Developer", email="dev@example.org")
    shutil.copytree(os.path.join(ROOT, "share", "examples", "hello"), wc, dirs_exist_ok=True)
    r.git("add", "Makefile", "hello.sh")
    r.git("commit", "--quiet", "-m", "hello: the program")
    r.git("add", "test.sh")
    r.git("commit", "--quiet", "-m", "hello: a test")
    r.push("main")
    os.makedirs(os.path.join(cfg, "builders"))
    with open(os.path.join(ROOT, "share", "examples", "hello.builder")) as f:
        text = f.read().replace("@REPOSITORY@", repo)
    with open(os.path.join(cfg, "builders", "hello.builder"), "w") as f:
        f.write(text)
    with open(os.path.join(cfg, "buildunits.conf"), "w") as f:
        f.write("[Site]\nTitle=buildunits demo\n")

    bus = private_bus(OUT)
    addr = bus.address if bus else None
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=addr or NO_BUS)
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
        poller = os.path.join(state, "poller")
        wait_for(lambda: os.path.isdir(poller) and any(n.endswith(".json") for n in os.listdir(poller)),
                 TIMEOUT, what="the poller's first poll (see %s/poller.log)" % OUT)
        b1 = commit_and_wait(r, state, 1, "a change that passes", "a",
                             "# greet politely\n", "hello: a comment on politeness")
        b2 = commit_and_wait(r, state, 2, "a change that breaks the test", "w",
                             '#!/bin/sh\necho "Goodbye, world!"\n', "hello: say goodbye instead")
        # An operator builds the good revision again, with a property (in
        # every step's environment as BUILDUNITS_PROPERTY_release, and on
        # the build's page).
        force = [PY, os.path.join(ROOT, "bin", "buildunits")] + dirs + [
            "force", "hello", "--revision", b1["revision"], "--reason", "the last good one",
            "--property", "release=1.0"]
        say("$ buildunits force hello --revision %s --reason 'the last good one' --property release=1.0"
            % b1["revision"][:12])
        subprocess.run(force, env=env, check=True, stdout=subprocess.DEVNULL)
        b3 = wait_for(lambda: finished_build(state, "hello", 3), TIMEOUT,
                      what="build hello #3 to finish (see %s/*.log)" % OUT)
        say("build hello #3: %s (forced, properties %s)" % (b3["result"], b3["request"]["properties"]))
        wait_for(lambda: site_shows(_read(os.path.join(site, "api", "builders.json")), "hello", 3), 30,
                 what="the site to show build hello #3 (see %s/htmlgen.log)" % OUT)
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
            bus.stop()
            if bus.remove_sockdir:
                shutil.rmtree(bus.sockdir, ignore_errors=True)
    print()
    for name in sorted(os.listdir(OUT)):
        if name.startswith("runner") and name.endswith(".log"):
            with open(os.path.join(OUT, name)) as f:
                for line in f:
                    if "hello #" in line:
                        print("  " + line.rstrip())
    print()
    say("done in %.1fs; the waterfall: file://%s/index.html" % (time.monotonic() - start, site))
    return 0 if (b1["result"], b2["result"], b3["result"]) == ("success", "failure", "success") else 1


def commit_and_wait(repo, state, number, what, mode, text, message):
    """Edit hello.sh in REPO's work tree (MODE "a" appends, "w" replaces),
    commit, push, and wait for build NUMBER."""
    say("committing " + what)
    with open(os.path.join(repo.work, "hello.sh"), mode) as f:
        f.write(text)
    repo.git("commit", "--quiet", "-am", message)
    repo.push("main")
    b = wait_for(lambda: finished_build(state, "hello", number), TIMEOUT,
                 what="build hello #%d to finish (see %s/*.log)" % (number, OUT))
    say("build hello #%d: %s" % (number, b["result"]))
    return b


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


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


if __name__ == "__main__":
    try:
        sys.exit(main())
    except WaitTimeout as e:
        raise SystemExit("demo: %s" % e)
