"""launcher.py: what buildunits-launcher refuses, and the unit it asks for.

The launcher's checks and the properties it builds are tested here on
their own, and its protocol over a real SOCK_SEQPACKET socket with a
real server process.  systemd cannot run in process: the server is given
a recorder in its place (RecordingSystemd, a stand-in that says so), and
the real calls are the system tier's (tests/system/test_boundary.py).
"""

import json
import os
import pwd
import secrets
import shutil
import socket
import tempfile
import threading

import pytest

from buildunits import config, executor_unit, launcher, paths

TOKEN = secrets.token_hex(16)
# A user with a group of the same name, as buildunits-build has, on any Debian.
STEP_USER = "daemon"
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")


@pytest.fixture
def dirs(tmp_path):
    d = paths.Dirs(config=str(tmp_path / "etc"), spool=str(tmp_path / "spool"), state=str(tmp_path / "state"),
                   site=str(tmp_path / "state" / "site"))
    os.makedirs(os.path.join(d.config, "builders"))
    os.makedirs(os.path.join(d.state, "work", "w1", "hello"))
    return d


def start_request(dirs, **over):
    work = os.path.join(dirs.state, "work", "w1", "hello")
    req = {"v": 1, "op": "start", "builder": "hello", "number": 42, "step": "test", "token": TOKEN,
           "worker": "w1", "argv": ["/bin/sh", "-c", "make test"], "env": {"PATH": "/usr/bin"},
           "cwd": work, "grace": 5, "directives": [], "credentials": []}
    req.update(over)
    return req


@pytest.mark.parametrize("field, value, says", [
    ("builder", "../etc", "builder: '../etc' is not a builder name"),
    ("builder", "ok\n", "is not a builder name"),
    ("step", "a/b", "step: 'a/b' is not a step name"),
    ("number", 0, "number: 0 is out of range"),
    ("number", True, "number: missing or not a int"),
    ("number", 2 ** 32, "out of range"),
    ("token", "xyz", "token: not 16 to 64 hex digits"),
    ("worker", "", "worker: '' is not a worker name"),
    ("cwd", "/etc", "cwd: /etc is not inside the work directory"),
    ("cwd", "relative", "not a normalized absolute path"),
    ("argv", [], "argv: empty"),
    ("argv", ["/bin/sh", "a\0b"], "argv: not a string without NUL"),
    ("env", {"A=B": "x"}, "env: 'A=B' is not a variable name"),
    ("grace", 0, "grace: not a number of seconds"),
    ("grace", float("inf"), "grace: not a number of seconds"),
    ("directives", [["User", "root"]], "directives: User= is not a directive a builder may set"),
    ("directives", [["KillMode", "none"]], "directives: KillMode= is not a directive a builder may set"),
    ("directives", [["ReadWritePaths", "/"]], "directives: ReadWritePaths=/: "),
    ("directives", [["LimitNOFILE", "lots"]], "directives: LimitNOFILE=lots: "),
    ("credentials", ["../shadow"], "credentials: '../shadow' is not a credential name"),
])
def test_start_requests_are_refused_by_field(dirs, field, value, says):
    with pytest.raises(launcher.Refused) as e:
        launcher.check_start(start_request(dirs, **{field: value}), dirs)
    assert says in str(e.value)


def test_cwd_under_the_work_directory_but_escaping_it_is_refused(dirs):
    work = os.path.join(dirs.state, "work", "w1", "hello")
    with pytest.raises(launcher.Refused, match="cwd"):
        launcher.check_start(start_request(dirs, cwd=work + "/../other"), dirs)
    assert launcher.check_start(start_request(dirs, cwd=work + "/sub"), dirs)["cwd"] == work + "/sub"


def test_a_work_directory_that_is_a_link_is_refused(dirs, tmp_path):
    os.makedirs(os.path.join(dirs.state, "work", "w2"))
    os.symlink("/etc", os.path.join(dirs.state, "work", "w2", "hello"))
    with pytest.raises(launcher.Refused, match="symbolic link"):
        launcher.check_start(start_request(dirs, worker="w2", cwd=os.path.join(dirs.state, "work", "w2", "hello")),
                             dirs)


def test_the_unit_name_is_the_launchers_not_the_callers(dirs):
    job = launcher.check_start(start_request(dirs, unit_name="ssh.service"), dirs)
    assert job["unit"] == "buildunits-build-hello-42-test.service"


def props(dirs, cfg=None, **over):
    job = launcher.check_start(start_request(dirs, **over), dirs)
    cfg = cfg or config.Config(directory=dirs.config)
    return [(k, v.unpack()) for k, v in launcher.properties(job, dirs, cfg)]


def last(plist, name):
    return [v for k, v in plist if k == name][-1]


def test_the_fixed_part_comes_last_and_cannot_be_undone(dirs):
    p = props(dirs, env={"PATH": "/usr/bin", "BUILDUNITS_BUILD_TOKEN": "forged"})
    assert last(p, "User") == last(p, "Group") == "buildunits-build"
    assert last(p, "NoNewPrivileges") is True
    assert last(p, "CapabilityBoundingSet") == last(p, "AmbientCapabilities") == 0
    assert last(p, "RemoveIPC") is True and last(p, "KeyringMode") == "private"
    assert last(p, "KillMode") == "control-group"
    assert last(p, "RemainAfterExit") is True
    assert last(p, "Before") == ["buildunits-runner@w1.service"]
    assert last(p, "TimeoutStopUSec") == 5000000
    assert last(p, "StandardOutputFileDescriptor") == last(p, "StandardErrorFileDescriptor") == 0
    work = os.path.join(dirs.state, "work", "w1", "hello")
    assert last(p, "TemporaryFileSystem") == [(dirs.state, "mode=0755")]
    assert last(p, "BindPaths") == [(work, work, False, launcher.MS_REC)]
    assert last(p, "ReadWritePaths") == [work]
    # The configuration and the spool are hidden; the site is under the state.
    assert last(p, "InaccessiblePaths") == ["-" + dirs.config, "-" + dirs.spool]
    assert "BUILDUNITS_BUILD_TOKEN=%s" % TOKEN in last(p, "Environment")
    assert "HOME=/tmp" in last(p, "Environment")
    assert all(last(p, name) is True for name in launcher.ON_BY_DEFAULT)
    assert last(p, "ExecStart") == [("/bin/sh", ["/bin/sh", "-c", "make test"], False)]
    names = [k for k, _ in p]
    # Every fixed property comes after the last of the overridable defaults.
    assert names.index("Type") > max(i for i, k in enumerate(names) if k in ("ProtectHome",) + launcher.ON_BY_DEFAULT)
    assert last(p, "PrivateTmp") is True and last(p, "ProtectSystem") == "strict"


def test_a_builders_settings_come_between_the_defaults_and_the_fixed_part(dirs):
    p = props(dirs, directives=[["ProtectHome", "tmpfs"], ["LimitNOFILE", "64"], ["PrivateNetwork", "yes"],
                                ["ProtectClock", "no"],
                          ["ReadWritePaths", "/srv/cache"]])
    assert last(p, "ProtectHome") == "tmpfs"
    assert last(p, "LimitNOFILE") == last(p, "LimitNOFILESoft") == 64
    assert last(p, "PrivateNetwork") is True
    assert last(p, "ProtectClock") is False       # a default, turned off again
    work = os.path.join(dirs.state, "work", "w1", "hello")
    assert [v for k, v in p if k == "ReadWritePaths"] == [["/srv/cache"], [work]]


def test_a_site_outside_the_state_is_hidden_too(dirs):
    d = paths.Dirs(config=dirs.config, spool=dirs.spool, state=dirs.state, site="/srv/www/ci")
    job = launcher.check_start(start_request(dirs), d)
    p = [(k, v.unpack()) for k, v in launcher.properties(job, d, config.Config(directory=dirs.config))]
    assert "-/srv/www/ci" in last(p, "InaccessiblePaths")


BUILDER = """\
[Builder]
Credential=token
[Step test]
Command=make test
Credential=deploy
[Step other]
Command=true
"""


def test_credentials_only_those_the_builder_names(dirs):
    with open(os.path.join(dirs.config, "builders", "hello.builder"), "w") as f:
        f.write(BUILDER)
    cfg = config.load(dirs.config)
    ok = launcher.check_start(start_request(dirs, credentials=["token", "deploy"]), dirs)
    launcher.check_credentials(ok["spec"], cfg)
    for step, creds, says in (("other", ["deploy"], "deploy not named by builder hello"),
                              ("test", ["ssh-host-key"], "ssh-host-key not named")):
        job = launcher.check_start(start_request(dirs, step=step, credentials=creds), dirs)
        with pytest.raises(launcher.Refused, match=says):
            launcher.check_credentials(job["spec"], cfg)
    job = launcher.check_start(start_request(dirs, builder="ghost", credentials=["token"],
                                             cwd=os.path.join(dirs.state, "work", "w1", "ghost")), dirs)
    with pytest.raises(launcher.Refused, match="builder ghost is not configured"):
        launcher.check_credentials(job["spec"], cfg)


def test_credentials_are_loaded_by_systemd_from_the_configured_directory(dirs, tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "deploy.cred").write_text("encrypted")
    cfg = config.Config(directory=dirs.config, credentials_directory=str(creds))
    p = props(dirs, cfg, credentials=["token", "deploy"])
    assert last(p, "LoadCredential") == [("token", str(creds / "token"))]
    assert last(p, "LoadCredentialEncrypted") == [("deploy", str(creds / "deploy.cred"))]


# ------------------------------------------------------------ protocol

class RecordingSystemd:
    """A stand-in for systemd (which cannot run in process): records calls.

    For ExecNotify= units (started with no descriptor) it also stands in
    for the unit: it runs the unit's ExecStart= at once, as this test's
    user and with the unit's Environment= but in no boundary, and keeps
    the unit "loaded", ended with the command's exit status, until it is
    released; self.units holds the loaded ones ({name: properties}), which
    a test may fill to leave a unit from an earlier attempt."""

    def __init__(self):
        self.calls = []
        self.units = {}

    def manager_property(self, prop):
        return "252"

    def start(self, unit, props, fd=None):
        props = {k: v.unpack() for k, v in props}
        self.calls.append(("start", unit, os.fstat(fd).st_ino if fd is not None else None, props["User"]))
        if fd is None:
            import subprocess
            _path, argv, _ignore = props["ExecStart"][0]
            env = dict(e.split("=", 1) for e in props["Environment"])
            code = subprocess.run(argv, env=env, cwd=props["WorkingDirectory"]).returncode
            self.units[unit] = {"ActiveState": "active" if code == 0 else "failed",
                                "SubState": "exited" if code == 0 else "failed", "Job": (0, "/"),
                                "ExecMainCode": 1, "ExecMainStatus": code, "Result": "success" if code == 0 else
                                "exit-code", "ExecStart": [(argv[0], argv, False, 0, 0, 0, 0, 0, 0, 0)]}

    def loaded(self, unit):
        u = self.units.get(unit)
        return None if u is None else {k: u[k] for k in executor_unit.STATE}

    def get(self, unit, interface, prop):
        return self.units.get(unit, {}).get(prop)

    def get_some(self, unit, interface, names):
        # A unit not loaded reads as systemd's stub: inactive, never ran.
        u = self.units.get(unit) or {"ActiveState": "inactive", "SubState": "dead", "Job": (0, "/"),
                                     "ExecMainCode": 0, "ExecMainStatus": 0}
        if callable(u.get("ActiveState")):
            u = dict(u, ActiveState=u["ActiveState"]())
        return {n: u[n] for n in names if n in u}

    def kill(self, unit, sig):
        self.calls.append(("kill", unit, int(sig)))

    def release(self, unit):
        self.calls.append(("release", unit))
        self.units.pop(unit, None)


@pytest.fixture
def sockdir():
    """A directory others may enter (pytest's own are private to us)."""
    d = tempfile.mkdtemp(prefix="buildunits-launcher-test-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d)


@pytest.fixture
def server(dirs, sockdir):
    path = os.path.join(sockdir, "launcher.sock")
    sd = RecordingSystemd()
    lau = launcher.Launcher(dirs, sd, clients={os.getuid()}, user=STEP_USER)
    listener = launcher.listening_socket(path)
    t = threading.Thread(target=lau.serve, args=(listener, 30), daemon=True)
    t.start()
    yield executor_unit.LauncherClient(path), sd, path
    listener.close()


@needs_root
def test_the_work_directory_is_given_to_the_step_user(dirs):
    work = os.path.join(dirs.state, "work", "w1", "hello")
    os.chmod(work, 0o755)
    launcher.give_work_dir(dirs.state, "w1", "hello", STEP_USER)
    st = os.stat(work)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (pwd.getpwnam(STEP_USER).pw_uid,
                                                          pwd.getpwnam(STEP_USER).pw_gid, 0o770)


@needs_root
def test_no_chown_under_a_state_directory_whose_parent_others_may_change(dirs, tmp_path):
    os.chmod(str(tmp_path), 0o777)
    try:
        with pytest.raises(launcher.Refused, match="is not root's alone"):
            launcher.give_work_dir(dirs.state, "w1", "hello", STEP_USER)
    finally:
        os.chmod(str(tmp_path), 0o700)
    assert os.stat(os.path.join(dirs.state, "work", "w1", "hello")).st_uid == 0


@needs_root
def test_a_work_directory_a_local_step_filled_is_emptied_once(dirs):
    work = os.path.join(dirs.state, "work", "w1", "hello")
    os.makedirs(os.path.join(work, ".git", "objects"))
    open(os.path.join(work, "built.o"), "w").close()
    os.symlink("/etc", os.path.join(work, "link"))
    executor_unit.adopt_work_dir(work, STEP_USER)
    assert os.listdir(work) == [] and os.path.isdir("/etc")
    launcher.give_work_dir(dirs.state, "w1", "hello", STEP_USER)
    os.mkdir(os.path.join(work, "checkout"))           # the step's, now
    executor_unit.adopt_work_dir(work, STEP_USER)
    assert os.listdir(work) == ["checkout"]


@needs_root
@pytest.mark.parametrize("swap", ["work", "work/w1", "work/w1/hello"])
def test_a_link_anywhere_on_the_way_leads_no_chown_elsewhere(dirs, tmp_path, swap):
    victim = tmp_path / "victim"
    (victim / "w1" / "hello").mkdir(parents=True)
    target = {"work": victim, "work/w1": victim / "w1", "work/w1/hello": victim / "w1" / "hello"}[swap]
    shutil.rmtree(os.path.join(dirs.state, swap))
    os.symlink(str(target), os.path.join(dirs.state, swap))
    with pytest.raises(launcher.Refused, match="cannot be opened as a directory"):
        launcher.give_work_dir(dirs.state, "w1", "hello", STEP_USER)
    assert os.stat(str(victim / "w1" / "hello")).st_uid == 0


@needs_root
def test_probe_start_kill_release_over_the_socket(server, dirs, tmp_path):
    client, sd, _ = server
    assert client.request("probe")["systemd"] == "252"
    log = tmp_path / "step.log"
    fd = os.open(str(log), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        req = start_request(dirs)
        del req["v"], req["op"]
        assert client.request("start", req, fd=fd)["unit"] == "buildunits-build-hello-42-test.service"
    finally:
        os.close(fd)
    client.request("kill", {"unit": "buildunits-build-hello-42-test.service", "signal": "SIGTERM"})
    client.request("release", {"unit": "buildunits-build-hello-42-test.service"})
    assert sd.calls == [("start", "buildunits-build-hello-42-test.service", os.stat(str(log)).st_ino,
                         STEP_USER),
                        ("kill", "buildunits-build-hello-42-test.service", 15),
                        ("release", "buildunits-build-hello-42-test.service")]


@pytest.mark.parametrize("op, fields, says", [
    ("kill", {"unit": "ssh.service", "signal": "SIGTERM"}, "'ssh.service' is not a build step's unit"),
    ("kill", {"unit": "buildunits-build-x.service", "signal": "SIGSTOP"}, "signal: one of SIGTERM SIGKILL"),
    ("release", {"unit": "buildunits-build-x.service/../../ssh.service"}, "is not a build step's unit"),
    ("reboot", {}, "op: 'reboot' is not an operation"),
    ("start", {}, "exactly one descriptor"),
])
def test_refusals_come_back_with_the_reason(server, op, fields, says):
    client, sd, _ = server
    with pytest.raises(OSError) as e:
        client.request(op, fields)
    assert says in str(e.value)
    assert sd.calls == []


def test_garbage_gets_an_answer_and_the_launcher_goes_on(server):
    client, sd, path = server
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(path)
        s.sendall(b"\xff not json")
        assert json.loads(s.recv(65536)) == {"ok": False, "error": "not a JSON message"}
        s.sendall(json.dumps({"v": 2, "op": "probe"}).encode())
        assert "not a version 1 request" in json.loads(s.recv(65536))["error"]
    assert client.request("probe")["ok"] is True


def test_another_user_is_turned_away(server):
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another user")
    _, sd, path = server
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chmod(path, 0o777)       # the socket's mode lets anyone in: only the peer check is left
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:        # pragma: no cover - the child
        try:
            os.close(r)
            os.setuid(nobody)
            try:
                executor_unit.LauncherClient(path).request("probe")
                os.write(w, b"answered")
            except OSError as e:
                os.write(w, str(e).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        said = f.read()
    os.waitpid(pid, 0)
    assert "uid %d may not use the launcher" % nobody in said
    assert sd.calls == []


# ------------------------------------------------------------- sandboxes

def sandbox_request(**over):
    req = {"builder": "hello", "worker": "w1", "grace": 5, "directives": [], "credentials": []}
    req.update(over)
    return req


@pytest.mark.parametrize("field, value, says", [
    ("builder", "../etc", "builder: '../etc' is not a builder name"),
    ("worker", "a b", "worker: 'a b' is not a worker name"),
    ("grace", -1, "grace: not a number of seconds"),
    ("directives", [["ExecStart", "/bin/evil"]], "directives: ExecStart= is not a directive a builder may set"),
    ("directives", [["User", "root"]], "directives: User= is not a directive a builder may set"),
    ("credentials", ["../shadow"], "credentials: '../shadow' is not a credential name"),
])
def test_sandbox_requests_are_refused_by_field(dirs, field, value, says):
    with pytest.raises(launcher.Refused) as e:
        launcher.check_sandbox(sandbox_request(**{field: value}), dirs)
    assert says in str(e.value)


def test_a_sandbox_is_the_same_boundary_with_buildunits_sandbox_as_its_process(dirs):
    job = launcher.check_sandbox(sandbox_request(directives=[["LimitNOFILE", "64"], ["PrivateNetwork", "yes"]]),
                                 dirs)
    assert job["unit"] == "buildunits-build-hello-sandbox-w1.service"
    p = [(k, v.unpack()) for k, v in launcher.sandbox_properties(job, dirs, config.Config(directory=dirs.config),
                                                                  "/usr/bin/buildunits-sandbox")]
    step = props(dirs)
    # Every fixed property of a step's unit that is not about its command
    # is the sandbox's too, with the same value.
    own = {"ExecStart", "WorkingDirectory", "Environment", "StandardInput", "StandardOutputFileDescriptor",
           "StandardErrorFileDescriptor", "RemainAfterExit", "Description"}
    for name in {k for k, _ in step} - own:
        assert last(p, name) == last(step, name), name
    assert last(p, "ExecStart") == [("/usr/bin/buildunits-sandbox", ["/usr/bin/buildunits-sandbox", "--clean",
                                                                   "/tmp", "--clean", "/var/tmp"], False)]
    assert last(p, "StandardInputFileDescriptor") == 0
    assert last(p, "StandardOutput") == last(p, "StandardError") == "journal"
    assert last(p, "CollectMode") == "inactive-or-failed"
    assert "RemainAfterExit" not in dict(p)
    assert last(p, "PrivateNetwork") is True
    # The rlimits are set for each step by the sandbox, not on its unit.
    assert "LimitNOFILE" not in dict(p)


def test_a_sandbox_gets_only_the_credentials_its_builder_names(dirs):
    with open(os.path.join(dirs.config, "builders", "hello.builder"), "w") as f:
        f.write(BUILDER)
    cfg = config.load(dirs.config)
    launcher.check_credentials(launcher.check_sandbox(sandbox_request(credentials=["token"]), dirs)["spec"], cfg)
    # "deploy" is one step's own: a step with it runs in a unit of its own.
    job = launcher.check_sandbox(sandbox_request(credentials=["token", "deploy"]), dirs)
    with pytest.raises(launcher.Refused, match="deploy not named by builder hello"):
        launcher.check_credentials(job["spec"], cfg)


def test_sandbox_over_the_socket(server, dirs):
    client, sd, _ = server
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        reply = client.request("sandbox", sandbox_request(), fd=theirs.fileno())
        assert reply["unit"] == "buildunits-build-hello-sandbox-w1.service"
        assert sd.calls == [("start", "buildunits-build-hello-sandbox-w1.service", os.fstat(theirs.fileno()).st_ino,
                             STEP_USER)]
    with pytest.raises(OSError, match="exactly one descriptor"):
        client.request("sandbox", sandbox_request())


def test_the_sandbox_program_is_beside_the_launcher():
    assert launcher.sandbox_program_beside("/usr/bin/buildunits-launcher") == "/usr/bin/buildunits-sandbox"


# -------------------------------------------------- ExecNotify= commands

NOTIFYING = """\
[Builder]
[Step test]
Command=make test
[Notify]
ExecNotify=echo first
ExecNotify=echo "$BUILDUNITS_BRANCH" > %(out)s
"""
SITE = "[Notify]\nExecNotify=echo site\nExecNotify=echo first\nTimeoutSec=7s\n"


def digest(command):
    import hashlib
    return hashlib.sha256(command.encode()).hexdigest()


@pytest.fixture
def notifying(dirs, tmp_path):
    """The builder hello with two ExecNotify= commands, the site with one more."""
    out = tmp_path / "out"
    with open(os.path.join(dirs.config, "builders", "hello.builder"), "w") as f:
        f.write(NOTIFYING % {"out": out})
    with open(os.path.join(dirs.config, "buildunits.conf"), "w") as f:
        f.write(SITE)
    return config.load(dirs.config), 'echo "$BUILDUNITS_BRANCH" > %s' % out, out


def notify_request(command_, **over):
    """A notify request for COMMAND_, its facts those of the request's build."""
    req = {"builder": "hello", "number": 42, "digest": digest(command_)}
    req.update(over)
    req.setdefault("environment", {"BUILDUNITS_BUILDER": req["builder"], "BUILDUNITS_NUMBER": str(req["number"]),
                                   "BUILDUNITS_RESULT": "failure", "BUILDUNITS_BRANCH": "main; rm -rf /"})
    return req


def test_the_command_is_the_configurations_found_by_its_digest(notifying):
    cfg, command, _ = notifying
    # The request's own command, argv or unit are not looked at.
    job = launcher.check_notify(notify_request(command, command="rm -rf /", argv=["/bin/evil"],
                                               unit="ssh.service"), cfg)
    assert job["argv"] == ["/bin/sh", "-c", command]
    assert job["unit"] == "buildunits-notify-hello-42-1.service"
    # K: the builder's commands, then the site's, each once.
    assert launcher.check_notify(notify_request("echo first"), cfg)["unit"] == "buildunits-notify-hello-42-0.service"
    assert launcher.check_notify(notify_request("echo site"), cfg)["unit"] == "buildunits-notify-hello-42-2.service"
    assert job["timeout"] == 7.0


@pytest.mark.parametrize("field, value, says", [
    ("builder", "../etc", "builder: '../etc' is not a builder name"),
    ("builder", "ghost", "builder: ghost is not configured"),
    ("number", 0, "number: 0 is out of range"),
    ("number", "42", "number: missing or not a int"),
    ("digest", "abc", "digest: not the 64 hex digits"),
    ("digest", digest("rm -rf /"), "digest: no ExecNotify= command of builder hello"),
    ("environment", {"LD_PRELOAD": "/tmp/x.so"}, "environment: 'LD_PRELOAD' is not one of the facts"),
    ("environment", {"BUILDUNITS_BRANCH": "a\nb"}, "environment: BUILDUNITS_BRANCH is not one line"),
    ("environment", {"BUILDUNITS_BRANCH": "x" * 5000}, "is not one line of at most 4096"),
    ("environment", {"BUILDUNITS_REASON": 3}, "BUILDUNITS_REASON is not one line"),
    ("environment", {"BUILDUNITS_BUILDER": "other"}, "are not the request's build"),
    ("environment", {"BUILDUNITS_NUMBER": "7"}, "are not the request's build"),
])
def test_notify_requests_are_refused_by_field(notifying, field, value, says):
    cfg, command, _ = notifying
    with pytest.raises(launcher.Refused) as e:
        launcher.check_notify(notify_request(command, **{field: value}), cfg)
    assert says in str(e.value)


def test_an_exec_notify_unit_is_a_build_steps_boundary_without_a_work_directory(dirs, notifying):
    cfg, command, _ = notifying
    job = launcher.check_notify(notify_request(command), cfg)
    p = [(k, v.unpack()) for k, v in launcher.notify_properties(job, dirs)]
    step = props(dirs)
    # Every fixed property of a step's unit that is not about its command
    # or its work directory is the ExecNotify= unit's too, with the same value.
    own = {"ExecStart", "WorkingDirectory", "Environment", "StandardInput", "StandardOutputFileDescriptor",
           "StandardErrorFileDescriptor", "Description", "Before", "BindPaths", "ReadWritePaths",
           "TimeoutStopUSec"}
    for name in {k for k, _ in step} - own:
        assert last(p, name) == last(step, name), name
    assert last(p, "User") == "buildunits-build" and last(p, "ProtectSystem") == "strict"
    assert last(p, "InaccessiblePaths") == ["-" + dirs.config, "-" + dirs.spool]
    assert last(p, "TemporaryFileSystem") == [(dirs.state, "mode=0755")]
    assert "BindPaths" not in dict(p) and "ReadWritePaths" not in dict(p)
    assert last(p, "ExecStart") == [("/bin/sh", ["/bin/sh", "-c", command], False)]
    assert last(p, "Before") == ["buildunits-notifier.service"]
    assert last(p, "RuntimeMaxUSec") == 7000000 and last(p, "RemainAfterExit") is True
    assert last(p, "StandardOutput") == last(p, "StandardError") == "journal"
    env = dict(e.split("=", 1) for e in last(p, "Environment"))
    assert env == {"BUILDUNITS_BUILDER": "hello", "BUILDUNITS_NUMBER": "42", "BUILDUNITS_RESULT": "failure",
                   "BUILDUNITS_BRANCH": "main; rm -rf /", "PATH": launcher.NOTIFY_PATH, "LANG": "C.UTF-8",
                   "HOME": "/tmp"}


def test_notify_over_the_socket_runs_the_configured_command(server, notifying):
    client, sd, _ = server
    cfg, command, out = notifying
    reply = client.request("notify", notify_request(command))
    assert reply["unit"] == "buildunits-notify-hello-42-1.service" and reply["started"] is True
    assert sd.calls == [("start", "buildunits-notify-hello-42-1.service", None, STEP_USER)]
    assert out.read_text() == "main; rm -rf /\n"
    with pytest.raises(OSError, match="no descriptor comes with it"):
        r, w = os.pipe()
        try:
            client.request("notify", notify_request(command), fd=w)
        finally:
            os.close(r)
            os.close(w)
    with pytest.raises(OSError, match="digest: no ExecNotify= command"):
        client.request("notify", notify_request("id > /tmp/owned"))


def test_the_notifier_waits_for_its_unit_and_releases_it(server, notifying, dirs):
    """channels.ExecUnits, the notifier's side, against the launcher."""
    from buildunits import channels
    client, sd, _ = server
    cfg, command, out = notifying
    units = channels.ExecUnits(client, sd, poll_max=0.01)
    msg = {"channel": "exec", "builder": "hello", "number": 42, "command": command,
           "environment": notify_request(command)["environment"]}
    units.run(msg, cfg)
    assert out.read_text() == "main; rm -rf /\n"
    assert [c[0] for c in sd.calls] == ["start", "release"] and sd.units == {}
    # A command that fails is deferred, its unit released too.
    with open(os.path.join(dirs.config, "builders", "hello.builder"), "w") as f:
        f.write(NOTIFYING % {"out": "/nonexistent/dir/out"})
    failing = config.load(dirs.config)
    with pytest.raises(channels.Deferred, match=r"exited with status 2 in its unit \(its output: journalctl -u "
                                                r"buildunits-notify-hello-42-1.service\)"):
        units.run(dict(msg, command='echo "$BUILDUNITS_BRANCH" > /nonexistent/dir/out'), failing)
    assert sd.units == {}
    # A command no longer configured is not asked for: given up at once.
    with pytest.raises(channels.Refused, match="no longer an ExecNotify= command"):
        units.run(dict(msg, command="echo gone"), cfg)


def test_a_notifier_killed_while_its_unit_ran_finds_it_again(server, notifying):
    """The unit left by a killed notifier: still running, the redelivery
    waits for it (one run); ended, the command runs again (two runs)."""
    from buildunits import channels
    client, sd, _ = server
    cfg, command, out = notifying
    unit = "buildunits-notify-hello-42-1.service"
    polls = []

    def state():
        polls.append(1)
        return "active" if len(polls) < 3 else "failed"
    sd.units[unit] = {"ActiveState": state, "SubState": "running", "Job": (0, "/"), "ExecMainCode": 1,
                      "ExecMainStatus": 0, "Result": "success",
                      "ExecStart": [("/bin/sh", ["/bin/sh", "-c", command], False, 0, 0, 0, 0, 0, 0, 0)]}
    units = channels.ExecUnits(client, sd, poll_max=0.01)
    msg = {"channel": "exec", "builder": "hello", "number": 42, "command": command,
           "environment": notify_request(command)["environment"]}
    assert client.request("notify", notify_request(command))["started"] is False
    units.run(msg, cfg)
    assert [c[0] for c in sd.calls] == ["release"] and not out.exists()       # waited for, not run again
    # Running another command (the configuration changed): refused, deferred.
    sd.units[unit] = {"ActiveState": "active", "SubState": "running", "Job": (0, "/"),
                      "ExecStart": [("/bin/sh", ["/bin/sh", "-c", "echo old"], False, 0, 0, 0, 0, 0, 0, 0)]}
    with pytest.raises(channels.Deferred, match="still runs another command"):
        units.run(msg, cfg)
    # Ended, how unread: released, and run again.
    sd.units[unit].update(ActiveState="failed", SubState="failed")
    sd.calls.clear()
    units.run(msg, cfg)
    assert [c[0] for c in sd.calls] == ["release", "start", "release"]
    assert out.read_text() == "main; rm -rf /\n"


def test_only_notify_and_step_units_may_be_killed_or_released(server):
    client, sd, _ = server
    client.request("release", {"unit": "buildunits-notify-hello-42-0.service"})
    for unit in ("buildunits-notifier.service", "buildunits-notify-x.service/../../ssh.service"):
        with pytest.raises(OSError, match="is not a build step's unit, nor an ExecNotify= command's"):
            client.request("kill", {"unit": unit, "signal": "SIGKILL"})
    assert sd.calls == [("release", "buildunits-notify-hello-42-0.service")]
