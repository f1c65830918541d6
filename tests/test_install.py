"""`make install` gives working programs: the installed layout finds its
library and templates, and ships the man pages, policy and example hook;
the installed units get their shared hardening from the installed drop-in."""

import os
import re
import shutil
import subprocess
import zipfile

import pytest

import harness

ROOT = harness.REPO_ROOT


def test_make_install_into_destdir(tmp_path):
    dest = tmp_path / "dest"
    p = subprocess.run(["make", "-s", "install", "DESTDIR=%s" % dest, "PREFIX=/usr/local", "PYTHON=" + harness.PYTHON],
                       cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.returncode == 0, p.stdout
    prefix = dest / "usr" / "local"
    for prog in ("buildunits", "buildunits-poller", "buildunits-scheduler", "buildunits-runner",
                 "buildunits-htmlgen", "buildunits-mask", "buildunits-webhook"):
        assert os.access(prefix / "bin" / prog, os.X_OK), prog
    mandir = prefix / "share" / "man"
    for page in ("man1/buildunits.1", "man1/buildunits-mask.1", "man5/buildunits.builder.5", "man5/buildunits-state.5",
                 "man8/buildunits-poller.8", "man8/buildunits-scheduler.8", "man8/buildunits-runner.8",
                 "man8/buildunits-htmlgen.8", "man8/buildunits-webhook.8"):
        assert (mandir / page).exists(), page
    assert (prefix / "share" / "buildunits" / "examples" / "post-receive").exists()
    assert "MIT License" in (prefix / "share" / "doc" / "buildunits" / "LICENSE").read_text()
    assert (dest / "usr" / "share" / "dbus-1" / "system.d" / "org.buildunits.conf").exists()
    unitdir = prefix / "lib" / "systemd" / "system"
    for unit in ("buildunits-poller", "buildunits-scheduler", "buildunits-htmlgen", "buildunits-runner@",
                 "buildunits-launcher", "buildunits-webhook"):
        assert (unitdir / (unit + ".service.d") / "10-hardening.conf").exists(), unit
    # Not the prefix drop-in: it would reach the build steps' units too.
    assert not (unitdir / "buildunits-.service.d").exists()
    assert not [n for n in os.listdir(unitdir) if n.endswith(".in")]

    # Every installed unit points at installed pages, its own first.
    for unit in sorted(os.listdir(unitdir)):
        if unit.endswith((".service", ".target")):
            text = (unitdir / unit).read_text()
            pages = re.findall(r"man:([\w.-]+)\(([0-9])\)", "".join(re.findall(r"^Documentation=(.*)$", text, re.M)))
            assert pages, unit
            own = unit.split("@")[0].split(".")[0]
            assert pages[0] == (own, "8" if unit.endswith(".service") else "1"), (unit, pages)
            for name, section in pages:
                assert (mandir / ("man" + section) / ("%s.%s" % (name, section))).exists(), (unit, name)

    # As systemd combines them on that root (/usr/local/lib/systemd/system is
    # on its unit path): a runner instance too gets the shared drop-in.
    for unit in ("buildunits-poller.service", "buildunits-runner@1.service"):
        out = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", "--root=%s" % dest,
                              unit], env=dict(os.environ, LC_ALL="C.UTF-8", SYSTEMD_UTF8="1"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
        assert re.search(r"^\u2713 ProtectSystem= .*strict", out, re.M), out
        assert re.search(r"^\u2713 NoNewPrivileges=", out, re.M), out

    # The installed programs run from their own tree, not from the checkout.
    cfg, state = tmp_path / "cfg", tmp_path / "state"
    (cfg / "builders").mkdir(parents=True)
    (cfg / "builders" / "solo.builder").write_text("[Step hi]\nCommand=echo hi\n")
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    dirs = ["--config-dir", str(cfg), "--spool-dir", str(tmp_path / "spool"), "--state-dir", str(state)]
    out = subprocess.run([str(prefix / "bin" / "buildunits")] + dirs + ["checkconfig"], env=env, cwd="/",
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert out.returncode == 0 and "configuration OK, 1 builder" in out.stdout, out.stdout
    out = subprocess.run([str(prefix / "bin" / "buildunits-htmlgen")] + dirs + ["--rebuild"], env=env, cwd="/",
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert out.returncode == 0, out.stdout
    assert "solo" in (state / "site" / "index.html").read_text()
    # No module came from the checkout.
    installed_lib = prefix / "lib" / "buildunits" / "python" / "buildunits"
    assert (installed_lib / "runner.py").exists()
    # The installed library finds the installed buildunits-mask, which masks.
    out = subprocess.run([harness.PYTHON, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                          "from buildunits import paths; print(paths.program('buildunits-mask'))",
                          str(installed_lib.parent)], env=env, cwd="/", stdout=subprocess.PIPE, text=True)
    assert out.stdout.strip() == str(prefix / "bin" / "buildunits-mask")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "token").write_text("s3cr3t-value\n")
    out = subprocess.run([str(prefix / "bin" / "buildunits-mask"), "--", "echo", "a s3cr3t-value b"],
                         env=dict(env, CREDENTIALS_DIRECTORY=str(tmp_path / "creds")), cwd="/",
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert (out.returncode, out.stdout) == (0, "a *** b\n")


def test_pip_builds_a_wheel_with_the_license_and_the_programs(tmp_path):
    """pyproject.toml: what `pip install .` would install (built from a copy,
    so the checkout gets no build/ or egg-info)."""
    if subprocess.run([harness.PYTHON, "-c", "import setuptools, wheel, pip"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
        pytest.skip("pip, setuptools or wheel missing for %s" % harness.PYTHON)
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "demo-output", "__pycache__",
                                                             "*.egg-info", ".pytest_cache", ".hypothesis"))
    p = subprocess.run([harness.PYTHON, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path / "whl"), str(src)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    assert p.returncode == 0, p.stdout
    from buildunits import __version__
    (wheel,) = os.listdir(tmp_path / "whl")
    assert wheel == "buildunits-%s-py3-none-any.whl" % __version__
    names = zipfile.ZipFile(tmp_path / "whl" / wheel).namelist()
    info = "buildunits-%s.dist-info/" % __version__
    assert info + "LICENSE" in names
    meta = zipfile.ZipFile(tmp_path / "whl" / wheel).read(info + "METADATA").decode()
    assert "\nLicense: MIT\n" in meta and "\nRequires-Dist: pydbus\n" in meta
    for prog in ("buildunits", "buildunits-poller", "buildunits-scheduler", "buildunits-runner",
                 "buildunits-htmlgen", "buildunits-mask"):
        assert "buildunits-%s.data/scripts/%s" % (__version__, prog) in names
    assert "buildunits/runner.py" in names and "buildunits/__init__.py" in names
