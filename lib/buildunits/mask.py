"""buildunits-mask -- ARGV...: run a command, with its credentials masked in its output.

NAME
    buildunits-mask - run a build step with the values of its credentials masked in its output

SYNOPSIS
    buildunits-mask -- ARGV...

DESCRIPTION
    The runner runs a step that has credentials (Credential= in
    buildunits.builder(5)) through this program.  It reads every regular
    file in the directory $CREDENTIALS_DIRECTORY (which systemd, or the
    runner in plain-process mode, has filled with the step's credentials),
    runs ARGV with the same environment and standard input, its standard
    output and standard error into one pipe, and copies that pipe to its
    own standard output with every occurrence of each value replaced by
    `***`.  The command never has this program's own standard output: the
    only way its output reaches the log is through the pipe.

    What is masked, for each credential file:
    - its value, less one trailing newline (a file written by `echo`
      ends with one, and the newline printed after the value is kept);
    - each line of a value of several lines (a key printed line by line);
    - wherever it is in the output: across the command's writes (a value
      printed in two pieces is still masked), in binary output, and
      overlapping another value (both are masked as one `***`; of two
      values one of which begins the other, the longer is masked).
    Values shorter than 4 bytes are not masked: they would turn up in
    ordinary output everywhere and mangle it, and a value that short is
    no secret anyway.  Values longer than 64 KiB are masked only line by
    line: the filter holds back at most as many bytes as the longest value
    is long, to see whether they are its beginning.

    What cannot be masked: a value printed transformed (base64 or URL
    encoded, hashed, reversed, in other letter case); printed with other
    characters between its parts (a terminal's escape sequences, `set -x`
    quoting); printed in pieces more than a second apart (after a second
    of silence the filter writes out what it holds, so that a progress
    line or a prompt is not held back forever); and whatever a process of
    the step writes to a file or a socket other than its standard output
    and error.  Masking guards against accidents, not against a step that
    sets out to reveal a secret: such a step can read the file and print
    it disguised.

    The output is streamed: memory stays flat whatever the size of the
    output, and a write of the command is passed on at once unless its
    end could be the beginning of a value.  When the command has exited,
    what is left in the pipe is passed on and the program exits; a
    process the command left running and still holding the pipe gets
    EPIPE afterwards.

    SIGTERM, SIGINT and SIGHUP are passed on to the command.  The program
    exits with the command's exit status; when the command was killed by
    a signal, it kills itself with the same signal (with no core dump), so
    whoever waits for it sees what it would have seen without the filter.

    It imports only the standard library's basics, to start fast.

EXIT STATUS
    The command's; 126 if ARGV cannot be run, 127 if it is not found; 2 on
    bad usage.

ENVIRONMENT
    CREDENTIALS_DIRECTORY   the directory of the credentials; unset or
                            empty: nothing is masked (said once on the
                            output)
"""

import errno
import os
import re
import select
import signal
import sys

REPLACEMENT = b"***"
MIN_LENGTH = 4                 # shorter values are not masked
MAX_LENGTH = 64 * 1024         # longer values are masked line by line only
IDLE_MS = 1000                 # held-back bytes are written after this silence
CHUNK = 64 * 1024
DRAIN_AFTER_EXIT = 1024 * 1024  # what is still read once the command has exited
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def values_of(secret):
    """The byte strings masked for the credential SECRET (bytes): the
    value less one trailing newline (the newline stays in the output),
    and each line of a value of several lines.

    >>> sorted(values_of(b"s3cr3t\\n"))
    [b's3cr3t']
    >>> sorted(values_of(b"line one\\r\\nline two\\n"))
    [b'line one', b'line one\\r\\nline two', b'line two']
    >>> values_of(b"abc\\n")
    set()
    """
    if secret.endswith(b"\n"):
        secret = secret[:-1]
    out = {secret}
    lines = secret.splitlines()
    if len(lines) > 1:
        out.update(line.rstrip(b"\r") for line in lines)
    return {v for v in out if MIN_LENGTH <= len(v) <= MAX_LENGTH}


def read_values(directory):
    """Every value to mask, from the regular files in DIRECTORY."""
    values = set()
    for name in sorted(os.listdir(directory)):
        try:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue              # a link, or gone
        with open(fd, "rb") as f:
            if (os.fstat(fd).st_mode & 0o170000) == 0o100000:
                values |= values_of(f.read())
    return values


class Masker:
    """Masks VALUES in a stream given in pieces: feed() returns what can be
    written now, flush() the rest.  It holds back only the end of what it
    was fed that could begin a value (fewer bytes than the longest value).

    >>> m = Masker([b"secret"])
    >>> m.feed(b"a sec"), m.feed(b"ret b"), m.flush()
    (b'a ', b'*** b', b'')
    >>> Masker([b"abcd", b"cdef"]).feed(b"xabcdefx")
    b'x***x'
    >>> m = Masker([b"pass", b"password"])
    >>> m.feed(b"password passw"), m.flush()
    (b'*** ', b'***w')
    """

    def __init__(self, values):
        self.values = sorted({bytes(v) for v in values if v}, key=len, reverse=True)
        self.longest = len(self.values[0]) if self.values else 0
        # Longest first: at each position the alternation takes the first
        # that matches, so the longest value there.
        self._re = re.compile(b"|".join(re.escape(v) for v in self.values)) if self.values else None
        self.pending = b""
        self._masked = 0     # leading bytes of PENDING in a run already written as ***

    def feed(self, data):
        return self._cut(self.pending + data, final=False)

    def flush(self):
        return self._cut(self.pending, final=True)

    def _cut(self, buf, final):
        if self._re is None:
            self.pending = b""
            return buf
        hold = len(buf) if final else self._hold_start(buf)
        out = []
        done = run_end = self._masked      # BUF[:done] is accounted for; the run so far ends at RUN_END
        m = self._re.search(buf)
        while m is not None and m.start() < hold:
            start, end = m.span()
            if start < run_end:            # overlaps the run: it grows
                run_end = max(run_end, end)
            else:
                out += (buf[done:start], REPLACEMENT)
                run_end = end
            done = run_end
            m = self._re.search(buf, start + 1)
        if run_end > hold:                 # the run goes on into what is held back
            self._masked = run_end - hold
        else:
            out.append(buf[done:hold])
            self._masked = 0
        self.pending = buf[hold:]
        return b"".join(out)

    def _hold_start(self, buf):
        """Where the shortest end of BUF that begins a value starts (len(BUF): none)."""
        n = len(buf)
        best = n
        for v in self.values:
            first = v[:1]
            i = buf.find(first, max(0, n - len(v) + 1))
            while i != -1 and i < best:
                if buf.startswith(v[:n - i], i):
                    best = i
                    break
                i = buf.find(first, i + 1)
        return best


class _Output:
    """Writes to descriptor FD; after a failed write (a full disk, a closed
    pipe) the rest is dropped, so that the command is never blocked."""

    def __init__(self, fd):
        self.fd = fd
        self.broken = False

    def __call__(self, data):
        view = memoryview(data)
        while view and not self.broken:
            try:
                view = view[os.write(self.fd, view):]
            except OSError:
                self.broken = True


def _pump(rfd, wake, pid, masker, out):
    """Copy RFD through MASKER to OUT until it ends, or the command (PID)
    has exited and what it left in the pipe is read; the command's wait
    status when it is known by then, else None."""
    poller = select.poll()
    poller.register(rfd, select.POLLIN)
    poller.register(wake, select.POLLIN)
    status, after_exit = None, 0
    while True:
        if status is not None:
            timeout = 0
        else:
            timeout = IDLE_MS if masker.pending else None
        ready = dict(poller.poll(timeout))
        if wake in ready:
            try:
                while os.read(wake, 512):
                    pass
            except BlockingIOError:
                pass
            if status is None:
                done, st = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = st
        if rfd in ready:
            data = os.read(rfd, CHUNK)
            if not data:
                break
            out(masker.feed(data))
            if status is not None:
                after_exit += len(data)
                if after_exit > DRAIN_AFTER_EXIT:
                    break
        elif not ready:
            if status is not None:
                break
            out(masker.flush())       # idle: write out what was held back
    out(masker.flush())
    return status


def _die_by(sig):
    """End this process with signal SIG, as the command ended (no core
    dump: this process holds the values); 128+SIG if it does not end."""
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    except (ImportError, ValueError, OSError):
        pass
    try:
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    except (OSError, ValueError):
        pass
    sys.stdout.flush()
    os.kill(os.getpid(), sig)
    return 128 + sig


def run(argv, environ=os.environ, out_fd=1):
    """Run ARGV with its output masked onto OUT_FD; its exit status (or
    -SIGNAL: the caller ends itself with it)."""
    out = _Output(out_fd)
    directory = environ.get("CREDENTIALS_DIRECTORY", "")
    values = set()
    if directory:
        try:
            values = read_values(directory)
        except OSError as e:
            out(("buildunits-mask: cannot read %s: %s; nothing is masked\n" % (directory, e.strerror)).encode())
    else:
        out(b"buildunits-mask: $CREDENTIALS_DIRECTORY is not set; nothing is masked\n")
    masker = Masker(values)

    pid, pending = None, []

    def forward(sig, _frame):
        if pid is None:
            pending.append(sig)
        else:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    old = {s: signal.signal(s, forward) for s in FORWARDED}
    old[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda _s, _f: None)
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    rfd, wfd = os.pipe()
    try:
        try:
            pid = os.posix_spawnp(argv[0], argv, dict(environ), file_actions=[
                (os.POSIX_SPAWN_DUP2, wfd, 1), (os.POSIX_SPAWN_DUP2, wfd, 2)],
                setsigdef=FORWARDED + (signal.SIGCHLD, signal.SIGPIPE))
        except OSError as e:
            out(("buildunits-mask: cannot run %s: %s\n" % (argv[0], e.strerror)).encode())
            return 127 if e.errno == errno.ENOENT else 126
        finally:
            os.close(wfd)
        for sig in pending:
            forward(sig, None)
        status = _pump(rfd, wake_r, pid, masker, out)
        if status is None:
            status = os.waitpid(pid, 0)[1]
    finally:
        os.close(rfd)
        signal.set_wakeup_fd(old_wakeup)
        for s, h in old.items():
            signal.signal(s, h)
        os.close(wake_r)
        os.close(wake_w)
    return os.waitstatus_to_exitcode(status)


def main(args):
    if args[:1] == ["--"]:
        args = args[1:]
    elif args[:1] and args[0].startswith("-"):
        args = []
    if not args:
        print("usage: buildunits-mask -- ARGV...", file=sys.stderr)
        return 2
    code = run(args)
    if code < 0:
        return _die_by(-code)
    return code
