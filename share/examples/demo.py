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
                       build and keeps a tarball (Artifacts=), shown with
                       its link on the site and builders/package/latest/;
                       and a second repository, not polled, is
                       pushed to and announced to buildunits-webhook
                       (socket-activated, HMAC-signed, as a forge's hook
                       would), which builds it (site #1).
                       The failing build is notified (hello.builder's
                       [Notify]): its mail waits in the outbox while the
                       demo's SMTP server (aiosmtpd, a transient unit) is
                       not up yet (the line of `buildunits status`), then
                       arrives, and the demo prints its headers and first
                       lines (the whole of it in demo-output/mail/); its
                       ExecNotify= command runs in a transient unit,
                       buildunits-notify-hello-2-0.service, as
                       buildunits-build (its journal).  The failing build
                       is pinned with `buildunits keep`, which its page
                       says.  Needs root.
    demo.py --local    the daemons (and the notifier) as plain processes from
                       bin/, with a private D-Bus bus, everything under
                       demo-output/; after the two commits, the passing
                       revision is forced again with a property (build #3).
                       The mail, the artifacts and the pin as above; the
                       ExecNotify= command, without systemd, is the
                       notifier's child (a drop-in sends its output to
                       demo-output/notified.txt).

BUILDUNITS_DEMO_OUT moves demo-output/ elsewhere.
"""

import email
import email.policy
import hashlib
import html
import json
import os
import re
import shlex
import shutil
import signal
import socket
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
EXAMPLES = os.path.join(ROOT, "share", "examples")
SMTP_PORT = 2525                    # the container's mail server
MAILDIR = "/var/tmp/demo-mail"      # ... and where it keeps what it receives
KEEP_REASON = "the failure the mail was about"
MAIL_LINES = 20                     # of the mail's body shown


def say(msg):
    print("demo: " + msg, flush=True)


def example(name, repository=None):
    """The text of share/examples/NAME, its @REPOSITORY@ filled in."""
    with open(os.path.join(EXAMPLES, name)) as f:
        text = f.read()
    return text.replace("@REPOSITORY@", repository) if repository else text


def site_conf(smtp_port):
    """The demo's buildunits.conf: the site's title, and the mail of
    hello's [Notify] sent by SMTP to the demo's own server."""
    return ("[Site]\nTitle=buildunits demo\n\n"
            "[Notify]\nSMTPServer=127.0.0.1\nSMTPPort=%d\nMailFrom=ci@example.org\n"
            "# The demo starts its mail server once the mail waits: tried again soon.\n"
            "RetrySec=1s\nRetryMaxSec=1s\n" % smtp_port)


def smtp_argv(python, port, maildir):
    """A real SMTP server (Debian's python3-aiosmtpd), keeping each mail it
    receives in the Maildir MAILDIR."""
    return [python, "-m", "aiosmtpd", "-n", "-l", "127.0.0.1:%d" % port, "-c", "aiosmtpd.handlers.Mailbox", maildir]


def outbox_line(status):
    """The outbox's line of `buildunits status` (STATUS) once it holds one
    message, tried and deferred (the mail; the ExecNotify= command's is
    sent meanwhile), else None."""
    return next((line for line in status.splitlines()
                 if line.startswith("outbox: 1 message waiting;") and "last error:" in line), None)


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
        c.write_file("/etc/buildunits/builders/hello.builder", example("hello.builder", "/srv/git/hello.git"))
        c.write_file("/etc/buildunits/builders/package.builder", example("package.builder", "/srv/git/hello.git"))
        c.write_file("/etc/buildunits/buildunits.conf", site_conf(SMTP_PORT))
        # The site repository: its pushes are announced by a hook, not polled.
        sh("install -d -o buildunits -g buildunits %s-site" % wc)
        sh("git init -q --bare -b main /srv/git/site.git && cd %s-site && git init -q -b main . && "
           "git config user.name 'Demo Developer' && git config user.email dev@example.org && "
           "echo '<h1>hello</h1>' > index.html && git add index.html && git commit -q -m 'site: a page' && "
           "git push -q /srv/git/site.git main" % wc, user="buildunits")
        c.write_file("/etc/buildunits/builders/site.builder", example("site.builder", "/srv/git/site.git"))
        # The generic hook's secret, a credential only root can read.
        sh("install -d -m 0700 /etc/buildunits/credentials && "
           "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /etc/buildunits/credentials/webhook-generic && "
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
            b = wait_for(lambda: finished_in(sh, "hello", number), TIMEOUT, what="build hello #%d" % number,
                         interval=0.1)
            say("build hello #%d: %s" % (number, b["result"]))
            results.append(b["result"])
        # The failure is notified (hello.builder's [Notify]): the demo's mail
        # server is not up yet, so the mail waits in the outbox, tried again
        # and again; the ExecNotify= command runs meanwhile.
        say("the mail server is not up yet: the mail of hello #2 waits in the outbox")
        line = wait_for(lambda: outbox_line(sh("buildunits status", check=False).stdout), 60,
                        what="the mail of hello #2 to be deferred, alone in the outbox", interval=0.1)
        say("$ buildunits status | grep outbox\n  " + line)
        say("$ buildunits keep hello 2 --reason '%s'" % KEEP_REASON)
        say(sh("buildunits keep hello 2 --reason %s" % shlex.quote(KEEP_REASON)).stdout.strip())
        say("starting the mail server (aiosmtpd on 127.0.0.1:%d, a transient unit, demo-smtp.service)" % SMTP_PORT)
        sh("systemd-run -q --unit=demo-smtp -- " + " ".join(shlex.quote(a) for a in
                                                             smtp_argv("python3", SMTP_PORT, MAILDIR)))
        b = wait_for(lambda: finished_in(sh, "package", 1), TIMEOUT, what="build package #1", interval=0.1)
        say("build package #%d: %s (%s)" % (1, b["result"], b["request"]["reason"]))
        package_ok = b["result"] == "success"
        say("a push to /srv/git/site.git, announced to the webhook receiver (POST /generic, signed)")
        rev = sh("cd %s-site && echo '<p>more</p>' >> index.html && git commit -q -am 'site: more' && "
                 "git push -q /srv/git/site.git main && git rev-parse HEAD" % wc, user="buildunits").stdout.strip()
        answer = sh(WEBHOOK_POST % rev, check=False)
        say("the webhook answered: %s" % answer.stdout.strip().splitlines()[0] if answer.stdout.strip()
            else "the webhook did not answer: %s" % answer.stderr.strip())
        b = wait_for(lambda: finished_in(sh, "site", 1), TIMEOUT, what="build site #1", interval=0.1)
        say("build site #1: %s (%s)" % (b["result"], b["request"]["changes"][0]["source"]))
        webhook_ok = b["result"] == "success"
        wait_for(lambda: sh("ls %s/new | grep -q ." % MAILDIR, check=False).returncode == 0, 60,
                 what="the mail of hello #2 at the SMTP server", interval=0.1)
        say("the mail of hello #2 arrived")
        exec_journal = wait_for(
            lambda: (lambda j: j if "ExecNotify: hello #2" in j else None)(
                c.journal("-o", "cat", "-u", "buildunits-notify-*")),
            30, what="the ExecNotify= command's line in the journal", interval=0.1)
        # The pages: hello #2 with its pin, package #1 with its artifact.
        wait_for(lambda: site_shows(sh("cat /var/lib/buildunits/site/api/builders.json", check=False).stdout,
                                    "hello", 2) and
                 site_shows(sh("cat /var/lib/buildunits/site/api/builders.json", check=False).stdout, "package", 1)
                 and kept_line(sh("cat /var/lib/buildunits/site/builders/hello/2/index.html", check=False).stdout),
                 30, what="the site to show builds hello #2 (kept) and package #1", interval=0.1)
        sh("cp -r /var/lib/buildunits/site /out/site && cp -r %s /out/mail" % MAILDIR)
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
        # ExecNotify= in a transient unit of its own, as buildunits-build.
        status += "\n$ journalctl -o cat -u 'buildunits-notify-*'\n" + exec_journal
    finally:
        say("halting the container")
        c.stop()
    print()
    print(journal.rstrip())
    print()
    print(status.rstrip())
    print()
    site = os.path.join(OUT, "site")
    shown = show_results(os.path.join(OUT, "mail"), site, 1)
    say("done in %.1fs; the waterfall: file://%s/index.html" % (time.monotonic() - start, site))
    return 0 if results == ["success", "failure"] and webhook_ok and package_ok and shown else 1


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


# ------------------------------------------------- what the user looks at
def show_results(maildir, site, package):
    """Print the mail the SMTP server kept in MAILDIR, the artifacts of
    package #PACKAGE on the SITE with builders/package/latest, and the pin
    on hello #2's page; whether all three are there (and the site's copy
    of each artifact is the one its record describes)."""
    ok = True
    print("The mail, as the SMTP server received it (%s/new/):" % maildir)
    msgs = read_mails(maildir)
    for msg in msgs:
        for h in ("From", "To", "Subject", "X-Buildunits-Builder", "X-Buildunits-Build", "X-Buildunits-Result"):
            print("  %s: %s" % (h, msg[h]))
        print()
        body = msg.get_content().splitlines()
        for line in body[:MAIL_LINES]:
            print(("  " + line).rstrip())
        if len(body) > MAIL_LINES:
            print("  ...")
    ok = ok and bool(msgs)
    print()
    print("The artifacts of package #%d (Artifacts=), on the site:" % package)
    try:
        with open(os.path.join(site, "api", "builders", "package", "builds", "%d.json" % package)) as f:
            arts = json.load(f).get("artifacts") or []
    except (OSError, ValueError) as e:
        print("  none: %s" % e)
        arts = []
    for a in arts:
        path = os.path.join(site, *a["href"].split("/"))
        same = sha256_of(path) == a["sha256"]
        print("  %s  %d bytes  sha256 %s%s" % (a["name"], a["size"], a["sha256"],
                                              "" if same else "  [the site's copy differs]"))
        print("  file://%s" % path)
        ok = ok and same
    latest = os.path.join(site, "builders", "package", "latest")
    try:
        print("  builders/package/latest -> %s (the newest successful build's):" % os.readlink(latest))
        for a in arts:
            print("  file://%s/%s" % (latest, a["name"]))
    except OSError as e:
        print("  no builders/package/latest: %s" % e)
        ok = False
    ok = ok and bool(arts)
    print()
    page = os.path.join(site, "builders", "hello", "2", "index.html")
    kept = kept_line(_read(page))
    print("The page of hello #2 (file://%s):" % page)
    print("  kept: %s" % kept if kept else "  not kept")
    print()
    return ok and bool(kept)


def read_mails(maildir):
    """The mails in MAILDIR/new, oldest first."""
    out = []
    d = os.path.join(maildir, "new")
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        with open(os.path.join(d, name), "rb") as f:
            out.append(email.message_from_binary_file(f, policy=email.policy.default))
    return out


def sha256_of(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def kept_line(page):
    """The text of the "kept" line of a build's PAGE (its HTML), or None."""
    m = re.search(r"<dt>kept</dt><dd>(.*?)</dd>", page, re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]*>", "", m.group(1))).split()) if m else None


# ------------------------------------------------------------- --local
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_demo():
    """The daemons as plain processes; see the module docstring."""
    start = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    repo, wc = os.path.join(OUT, "hello.git"), os.path.join(OUT, "hello")
    cfg, spool, state, site = (os.path.join(OUT, d) for d in ("config", "spool", "state", "site"))
    maildir, notified = os.path.join(OUT, "mail"), os.path.join(OUT, "notified.txt")
    say("creating the example repository %s" % repo)
    r = make_repo(repo, work=wc, user="Demo Developer", email="dev@example.org")
    shutil.copytree(os.path.join(EXAMPLES, "hello"), wc, dirs_exist_ok=True)
    r.git("add", "Makefile", "hello.sh")
    r.git("commit", "--quiet", "-m", "hello: the program")
    r.git("add", "test.sh")
    r.git("commit", "--quiet", "-m", "hello: a test")
    r.push("main")
    os.makedirs(os.path.join(cfg, "builders", "hello.builder.d"))
    for name in ("hello.builder", "package.builder"):
        with open(os.path.join(cfg, "builders", name), "w") as f:
            f.write(example(name, repo))
    # Without systemd, the ExecNotify= command is the notifier's child,
    # whose output nobody reads: the same command, its output to a file.
    command = next(line.split("=", 1)[1] for line in example("hello.builder").splitlines()
                   if line.startswith("ExecNotify="))
    with open(os.path.join(cfg, "builders", "hello.builder.d", "60-local.conf"), "w") as f:
        f.write("[Notify]\nExecNotify=\nExecNotify=%s >> %s\n" % (command, shlex.quote(notified)))
    smtp_port = free_port()
    with open(os.path.join(cfg, "buildunits.conf"), "w") as f:
        f.write(site_conf(smtp_port))

    bus = private_bus(OUT)
    addr = bus.address if bus else None
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=addr or NO_BUS)
    for k in ("NOTIFY_SOCKET", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES"):
        env.pop(k, None)   # the example's own make must not think it is a sub-make of ours
    say("private D-Bus system bus at %s" % addr if addr else "no dbus-daemon: running without a bus")
    dirs = ["--config-dir", cfg, "--spool-dir", spool, "--state-dir", state, "--site-dir", site]
    cli = [PY, os.path.join(ROOT, "bin", "buildunits")] + dirs
    procs = []
    monitor = smtp = None
    if addr and shutil.which("dbus-monitor"):
        monitor = subprocess.Popen(["dbus-monitor", "--address", addr,
                                    "type='signal',path_namespace='/org/buildunits'"],
                                   stdout=open(os.path.join(OUT, "signals.txt"), "w"), stderr=subprocess.DEVNULL)
    try:
        for prog, extra in (("poller", []), ("scheduler", []), ("runner", ["worker1"]), ("runner", ["worker2"]),
                            ("htmlgen", []), ("notifier", [])):
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
        say("the mail server is not up yet: the mail of hello #2 waits in the outbox")
        line = wait_for(lambda: outbox_line(subprocess.run(cli + ["status"], env=env, stdout=subprocess.PIPE,
                                                           text=True).stdout),
                        60, what="the mail of hello #2 to be deferred, alone in the outbox (see %s/notifier.log)" % OUT)
        say("$ buildunits status | grep outbox\n  " + line)
        say("$ buildunits keep hello 2 --reason '%s'" % KEEP_REASON)
        say(subprocess.run(cli + ["keep", "hello", "2", "--reason", KEEP_REASON], env=env, check=True,
                           stdout=subprocess.PIPE, text=True).stdout.strip())
        say("starting the mail server (aiosmtpd on 127.0.0.1:%d)" % smtp_port)
        smtp = subprocess.Popen(smtp_argv(PY, smtp_port, maildir), stdout=open(os.path.join(OUT, "smtp.log"), "w"),
                                stderr=subprocess.STDOUT)
        # An operator builds the good revision again, with a property (in
        # every step's environment as BUILDUNITS_PROPERTY_release, and on
        # the build's page).
        force = cli + ["force", "hello", "--revision", b1["revision"], "--reason", "the last good one",
                       "--property", "release=1.0"]
        say("$ buildunits force hello --revision %s --reason 'the last good one' --property release=1.0"
            % b1["revision"][:12])
        subprocess.run(force, env=env, check=True, stdout=subprocess.DEVNULL)
        b3 = wait_for(lambda: finished_build(state, "hello", 3), TIMEOUT,
                      what="build hello #3 to finish (see %s/*.log)" % OUT)
        say("build hello #3: %s (forced, properties %s)" % (b3["result"], b3["request"]["properties"]))
        packages = [wait_for(lambda: finished_build(state, "package", n), TIMEOUT,
                             what="build package #%d to finish (see %s/*.log)" % (n, OUT)) for n in (1, 2)]
        for n, p in enumerate(packages, start=1):
            say("build package #%d: %s (%s)" % (n, p["result"], p["request"]["reason"]))
        wait_for(lambda: read_mails(maildir), 60, what="the mail of hello #2 at the SMTP server (see %s/smtp.log)"
                 % OUT)
        say("the mail of hello #2 arrived")
        wait_for(lambda: site_shows(_read(os.path.join(site, "api", "builders.json")), "hello", 3)
                 and site_shows(_read(os.path.join(site, "api", "builders.json")), "package", 2)
                 and kept_line(_read(os.path.join(site, "builders", "hello", "2", "index.html"))), 30,
                 what="the site to show builds hello #3, package #2 and the pin of hello #2 (see %s/htmlgen.log)"
                 % OUT)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        if smtp:
            smtp.terminate()
        for p in procs + ([smtp] if smtp else []):
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
    print("ExecNotify=, the notifier's child without systemd (%s):" % notified)
    for line in _read(notified).splitlines():
        print("  " + line)
    print()
    shown = show_results(maildir, site, 2)
    say("done in %.1fs; the waterfall: file://%s/index.html" % (time.monotonic() - start, site))
    results = (b1["result"], b2["result"], b3["result"]) + tuple(p["result"] for p in packages)
    return 0 if results == ("success", "failure", "success", "success", "success") and shown \
        and "ExecNotify: hello #2 failure" in _read(notified) else 1


def main():
    return local_demo() if "--local" in sys.argv[1:] else container_demo()


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
