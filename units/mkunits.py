#!/usr/bin/python3
"""Write the installable unit files: units/*.service.in, *.socket.in, *.timer.in and *.target.in
under their final names (without .in), with @BINDIR@ replaced, and the
drop-in directories (units/NAME.d/*.conf) beside them, with the shared
hardening (units/hardening.conf) as NAME.service.d/10-hardening.conf of
every service, so OUTDIR is a unit directory as it will be installed
(`systemd-analyze verify` reads the drop-ins from beside the unit it
checks); and buildunits-generator, the systemd generator of the builders'
timers, which `make install` puts in system-generators/.

    mkunits.py BINDIR OUTDIR
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
HARDENING = "hardening.conf"
GENERATOR = "buildunits-generator"


def render(text, bindir):
    return text.replace("@BINDIR@", bindir)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    bindir, out = argv
    os.makedirs(out, exist_ok=True)
    for name in sorted(os.listdir(HERE)):
        src = os.path.join(HERE, name)
        if name.endswith((".service.in", ".socket.in", ".target.in", ".timer.in")):
            with open(src) as f:
                write(os.path.join(out, name[:-len(".in")]), render(f.read(), bindir))
            if name.endswith(".service.in"):
                dropins = os.path.join(out, name[:-len(".in")] + ".d")
                os.makedirs(dropins, exist_ok=True)
                with open(os.path.join(HERE, HARDENING)) as f:
                    write(os.path.join(dropins, "10-hardening.conf"), render(f.read(), bindir))
        elif name == GENERATOR + ".in":
            # Not a unit: installed in system-generators/ (Makefile).
            path = os.path.join(out, GENERATOR)
            with open(src) as f:
                write(path, render(f.read(), bindir))
            os.chmod(path, 0o755)
        elif name.endswith((".service.d", ".target.d")) and os.path.isdir(src):
            os.makedirs(os.path.join(out, name), exist_ok=True)
            for conf in sorted(os.listdir(src)):
                if conf.endswith(".conf"):
                    with open(os.path.join(src, conf)) as f:
                        write(os.path.join(out, name, conf), render(f.read(), bindir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
