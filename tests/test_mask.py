"""mask.py and bin/buildunits-mask: a step's output with its credentials'
values masked.

The Masker in process, fed in every way a stream can be cut; then the
program itself, as a real process over a real credentials directory:
exit statuses and signals passed through, SIGTERM forwarded, binary and
huge output (its memory flat), the idle flush, a command that leaves a
process holding the pipe.  Waits are for output or an exit, never a sleep.
"""

import contextlib
import os
import random
import resource
import select
import signal
import subprocess
import sys
import time

import pytest

import harness
from buildunits import mask

MASK = os.path.join(harness.BIN_DIR, "buildunits-mask")
SECRET = b"S3cr3t-t0ken-value"


def masked_whole(values, data):
    m = mask.Masker(values)
    return m.feed(data) + m.flush()


def masked_in_pieces(values, data, cuts):
    m = mask.Masker(values)
    out, last = [], 0
    for c in sorted(cuts) + [len(data)]:
        out.append(m.feed(data[last:c]))
        last = c
    return b"".join(out) + m.flush()


# ------------------------------------------------------------ the Masker
@pytest.mark.parametrize("values, data, shown", [
    ([SECRET], b"token: " + SECRET + b"\n", b"token: ***\n"),
    ([SECRET], b"no secret here\n", b"no secret here\n"),
    ([SECRET], SECRET + SECRET, b"******"),                   # back to back: two
    ([b"abcd", b"cdef"], b"-abcdef-", b"-***-"),               # overlapping: one run
    ([b"abcd", b"bc"], b"abcd bc", b"*** ***"),               # one inside the other
    ([b"pass", b"password"], b"password pass passw", b"*** *** ***w"),   # the longer wins
    ([b"aaaa"], b"aaaaaaaaaa", b"***"),                        # overlapping itself
    ([b"\x00\xff\x00\xfe"], b"\x01\x00\xff\x00\xfe\x02", b"\x01***\x02"),    # binary
    ([], b"anything", b"anything"),
])
def test_masked_whole_and_cut_at_every_point(values, data, shown):
    assert masked_whole(values, data) == shown
    for i in range(len(data) + 1):
        assert masked_in_pieces(values, data, [i]) == shown, i
        for j in range(i, len(data) + 1):
            assert masked_in_pieces(values, data, [i, j]) == shown, (i, j)


def test_random_streams_cut_anywhere_mask_as_the_whole_does():
    rng = random.Random(11)
    values = [b"tok3n-ABCDEF", b"tok3n-AB", b"EFtok", b"x9x9x9x9"]
    alphabet = b"tok3n-ABCDEFx9 \n\x00"
    for _ in range(300):
        parts = [rng.choice(values) if rng.random() < 0.3 else bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
                 for _ in range(rng.randint(1, 12))]
        data = b"".join(parts)
        whole = masked_whole(values, data)
        cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 8)))
        assert masked_in_pieces(values, data, cuts) == whole, (data, cuts)
        for v in values:
            assert v not in whole, (data, whole)


def test_only_what_could_begin_a_value_is_held_back():
    m = mask.Masker([SECRET])
    assert m.feed(b"line one\n") == b"line one\n"
    assert m.feed(b"then S3cr") == b"then "
    assert m.pending == b"S3cr"
    assert m.feed(b"eam") == b"S3cream"       # not a value after all
    assert m.pending == b""


def test_the_values_of_a_credential_file():
    assert mask.values_of(b"abc") == set()                       # too short to mask
    assert mask.values_of(b"abcd\n") == {b"abcd"}
    key = b"-----BEGIN KEY-----\nAAAABBBB\n-----END KEY-----\n"
    assert {b"AAAABBBB", key[:-1]} <= mask.values_of(key)
    assert mask.values_of(b"x" * (mask.MAX_LENGTH + 1)) == set()


# ------------------------------------------------------------ the program
@pytest.fixture
def creds(tmp_path):
    d = tmp_path / "credentials"
    d.mkdir()
    (d / "token").write_bytes(SECRET + b"\n")
    (d / "tiny").write_bytes(b"ab\n")            # never masked: "ab" is everywhere
    (d / "binary").write_bytes(b"\x00\x01\x02\xff\xfe\xfd")
    os.symlink("/etc/hostname", str(d / "link"))   # not a regular file: not read
    return str(d)


def run_mask(creds, script, **kw):
    env = dict(os.environ, CREDENTIALS_DIRECTORY=creds)
    return subprocess.run([MASK, "--", "/bin/sh", "-c", script], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=harness.scaled(60), **kw)


def test_the_output_is_masked_in_one_stream_and_the_status_passed_on(creds):
    p = run_mask(creds, 'cat "$CREDENTIALS_DIRECTORY/token"; printf %s S3cr; printf "%s\\n" 3t-t0ken-value; '
                        'echo "to stderr $(cat "$CREDENTIALS_DIRECTORY/token")" >&2; printf "ab\\000\\001\\002\\377'
                        '\\376\\375cd\\n"; exit 42')
    assert p.returncode == 42
    assert p.stdout == b"***\n***\nto stderr ***\nab***cd\n"
    assert p.stderr == b""


def test_the_command_never_has_the_real_stdout(creds):
    p = run_mask(creds, "readlink /proc/self/fd/1 /proc/self/fd/2")
    one, two = p.stdout.decode().split()
    assert one == two and one.startswith("pipe:")


def test_stdin_and_the_environment_reach_the_command(creds):
    env = dict(os.environ, CREDENTIALS_DIRECTORY=creds, OTHER="kept")
    p = subprocess.run([MASK, "--", "/bin/sh", "-c", 'cat; echo "$CREDENTIALS_DIRECTORY $OTHER"'], env=env,
                       input=b"from stdin " + SECRET + b"\n", stdout=subprocess.PIPE, timeout=harness.scaled(60))
    assert p.stdout == b"from stdin ***\n" + creds.encode() + b" kept\n"


def _cores_allowed():
    resource.setrlimit(resource.RLIMIT_CORE, (resource.getrlimit(resource.RLIMIT_CORE)[1],) * 2)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV, signal.SIGPIPE])
def test_a_command_killed_by_a_signal_kills_the_filter_with_it(creds, tmp_path, sig):
    # The filter may dump core as far as its limits go; the shell may not.
    p = subprocess.run([MASK, "--", "/bin/sh", "-c", "ulimit -S -c 0; echo before; kill -%d $$" % sig],
                       cwd=str(tmp_path), preexec_fn=_cores_allowed, env=dict(os.environ, CREDENTIALS_DIRECTORY=creds),
                       stdout=subprocess.PIPE, timeout=harness.scaled(60))
    assert p.returncode == -sig
    assert p.stdout == b"before\n"
    assert not [n for n in os.listdir(str(tmp_path)) if n.startswith("core")]


def test_the_command_gets_default_signal_dispositions(creds):
    # Python ignores SIGPIPE; the command must not inherit that.
    p = run_mask(creds, "grep SigIgn /proc/self/status")
    ignored = int(p.stdout.split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))


def _read_until(stream, wanted, timeout=30.0):
    """Bytes read from STREAM until WANTED is among them (a deadline, no sleep)."""
    got, deadline = b"", time.monotonic() + harness.scaled(timeout)
    while wanted not in got:
        left = deadline - time.monotonic()
        assert left > 0, "never came: %r (got %r)" % (wanted, got)
        if select.select([stream], [], [], left)[0]:
            chunk = os.read(stream.fileno(), 4096)
            assert chunk, "EOF before %r (got %r)" % (wanted, got)
            got += chunk
    return got


CHILD = r"""
import os, signal, sys
def term(sig, frame):
    os.write(1, b"got TERM, token %s\n" % open(os.environ["CREDENTIALS_DIRECTORY"] + "/token", "rb").read().strip())
    sys.exit(7)
signal.signal(signal.SIGTERM, term)
os.write(1, b"ready\n")
while True:
    signal.pause()
"""


@contextlib.contextmanager
def started(creds, argv, **kw):
    """The filter running ARGV, its output a pipe; killed at the end."""
    p = subprocess.Popen([MASK, "--"] + argv, env=dict(os.environ, CREDENTIALS_DIRECTORY=creds),
                         stdout=subprocess.PIPE, **kw)
    try:
        yield p
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def test_sigterm_is_forwarded_to_the_command(creds):
    with started(creds, [sys.executable, "-c", CHILD]) as p:
        assert _read_until(p.stdout, b"ready\n") == b"ready\n"
        p.send_signal(signal.SIGTERM)          # to the filter alone, not its group
        assert p.wait(timeout=harness.scaled(30)) == 7
        assert p.stdout.read() == b"got TERM, token ***\n"


def test_held_back_bytes_are_written_when_the_command_falls_silent(creds):
    with started(creds, ["/bin/sh", "-c", "printf 'half: S3cr3t'; read x; echo; echo $x"], stdin=subprocess.PIPE) as p:
        begun = time.monotonic()
        assert _read_until(p.stdout, b"half: S3cr3t") == b"half: S3cr3t"
        assert time.monotonic() - begun >= mask.IDLE_MS / 1000.0 * 0.9
        p.stdin.write(SECRET + b"\n")
        p.stdin.close()
        assert p.wait(timeout=harness.scaled(30)) == 0
        assert p.stdout.read() == b"\n***\n"


def test_the_filter_ends_with_its_command_not_with_what_it_left_holding_the_pipe(creds):
    out = b""
    try:
        with started(creds, ["/bin/sh", "-c", "sleep 300 & echo $!; echo done"]) as p:
            assert p.wait(timeout=harness.scaled(30)) == 0
            out = p.stdout.read()
    finally:
        for word in out.split()[:1]:
            try:
                os.kill(int(word), signal.SIGKILL)
                os.waitpid(int(word), 0)
            except (ProcessLookupError, ChildProcessError, ValueError):
                pass
    assert out.split()[1:] == [b"done"]


MEASURED = r"""
import resource, subprocess, sys
with open(sys.argv[2], "wb") as out:
    code = subprocess.call(sys.argv[1:2] + ["--", "/bin/sh", "-c", sys.argv[3]], stdout=out)
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_fifty_megabytes_go_through_in_flat_memory(creds, tmp_path):
    size = 50 * 1000 * 1000
    out = tmp_path / "out"
    script = "head -c %d /dev/zero | tr '\\000' x; cat \"$CREDENTIALS_DIRECTORY/token\"" % size
    p = subprocess.run([harness.PYTHON, "-c", MEASURED, MASK, str(out), script], stdout=subprocess.PIPE,
                       env=dict(os.environ, CREDENTIALS_DIRECTORY=creds), text=True, timeout=harness.scaled(120))
    code, maxrss_kib = map(int, p.stdout.split())
    assert code == 0
    assert os.path.getsize(str(out)) == size + len(b"***\n")
    with open(str(out), "rb") as f:
        f.seek(size - 2)
        assert f.read() == b"xx***\n"
    assert maxrss_kib < 40 * 1024, "the filter (or its command) grew to %d KiB" % maxrss_kib


def test_without_a_credentials_directory_nothing_is_masked_and_it_says_so():
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    p = subprocess.run([MASK, "--", "echo", "plain"], env=env, stdout=subprocess.PIPE, timeout=harness.scaled(60))
    assert p.returncode == 0
    assert p.stdout == b"buildunits-mask: $CREDENTIALS_DIRECTORY is not set; nothing is masked\nplain\n"


def test_a_command_that_cannot_run_and_bad_usage(creds):
    p = subprocess.run([MASK, "--", "/nonexistent/prog"], env=dict(os.environ, CREDENTIALS_DIRECTORY=creds),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=harness.scaled(60))
    assert p.returncode == 127 and b"cannot run /nonexistent/prog" in p.stdout
    p = subprocess.run([MASK], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=harness.scaled(60))
    assert p.returncode == 2 and p.stderr.startswith(b"usage: buildunits-mask -- ARGV")


def test_it_starts_without_the_heavy_imports():
    p = subprocess.run([harness.PYTHON, "-X", "importtime", MASK, "--", "true"], stderr=subprocess.PIPE,
                       text=True, env=dict(os.environ, CREDENTIALS_DIRECTORY="/nonexistent"), timeout=60)
    imported = {line.split("|")[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    assert "buildunits.mask" in imported
    assert not imported & {"gi", "jinja2", "subprocess", "json", "buildunits.config", "pydbus"}, sorted(imported)
