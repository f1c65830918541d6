#!/usr/bin/python3
"""Write the installable unit files: units/*.service.in and *.target.in
under their final names (without .in), with @BINDIR@ replaced and the
shared hardening (@HARDENING@: hardening.inc, @STRICT@: strict.inc) pasted
in, so each installed unit is complete on its own and `systemctl cat` shows everything that applies.

    mkunits.py BINDIR OUTDIR
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def render(text, bindir):
    for mark, inc in (("@HARDENING@", "hardening.inc"), ("@STRICT@", "strict.inc")):
        with open(os.path.join(HERE, inc)) as f:
            text = text.replace(mark, f.read().rstrip("\n"))
    return text.replace("@BINDIR@", bindir)


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    bindir, out = argv
    os.makedirs(out, exist_ok=True)
    for name in sorted(os.listdir(HERE)):
        if name.endswith((".service.in", ".target.in")):
            with open(os.path.join(HERE, name)) as f:
                text = render(f.read(), bindir)
            with open(os.path.join(out, name[:-len(".in")]), "w") as f:
                f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
