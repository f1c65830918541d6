# buildunits
#
#   make demo     buildunits.target under systemd (a container) on a built-in example
#   make check    install what the tests need (Debian packages), run every test
#                 (the docstrings' >>> examples too: tests/test_doctests.py)
#   make install  install programs, library, templates, units, man pages (DESTDIR, PREFIX)
#   make bench    benchmarks against Buildbot (QUICK=1: short), then bench-boundary,
#                 the webhook's latency, a notification's cost and bench-scale
#   make bench-boundary  build steps as transient units or not, under systemd (root)
#   make bench-scale     one event's cost at 10 to 1000 builders, 10k queued, 500 repositories
#                        (buildunits, and Buildbot where it has the axis); a janitor pass over 100k builds
#   make torture  long fault-injection and fuzzing runs (N=kills)

# Debian's Python, where python3-pydbus & co. live (a python3 earlier on
# PATH may be another build that cannot see them).
PYTHON ?= /usr/bin/python3
PREFIX ?= /usr/local
DESTDIR ?=
PYTEST_ARGS ?=
BUILDDIR ?= build

BINDIR = $(PREFIX)/bin
LIBDIR = $(PREFIX)/lib/buildunits/python
SHAREDIR = $(PREFIX)/share/buildunits
MANDIR = $(PREFIX)/share/man
DOCDIR = $(PREFIX)/share/doc/buildunits
UNITDIR = $(PREFIX)/lib/systemd/system
GENERATORDIR = $(PREFIX)/lib/systemd/system-generators
SYSUSERSDIR = $(PREFIX)/lib/sysusers.d
TMPFILESDIR = $(PREFIX)/lib/tmpfiles.d

DEB_PACKAGES = python3 python3-pydbus python3-gi python3-sdnotify python3-watchdog \
	python3-jinja2 python3-pytest python3-systemd python3-hypothesis dbus-daemon dbus-bin git make \
	mercurial subversion strace systemd chromium python3-aiosmtpd

.PHONY: all deps check test demo demo-local bench bench-boundary bench-scale torture install man units clean

all:
	@echo "targets: demo check install man clean"

# Installs only what is missing; quick when nothing is.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "deps: installing $$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "deps: run as root, or install: $$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: all Debian packages present"; fi

check: deps
	$(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

test: check

# Benchmarks, side by side with Buildbot (installed from PyPI into bench's own
# directory).  QUICK=1 for a short run.  Never fails on time.
bench: deps
	QUICK=$(QUICK) $(PYTHON) bench/run.py
	QUICK=$(QUICK) $(PYTHON) bench/boundary_bench.py
	QUICK=$(QUICK) $(PYTHON) bench/webhook_bench.py
	QUICK=$(QUICK) $(PYTHON) bench/notify_bench.py
	$(MAKE) -s bench-scale QUICK=$(QUICK)

# How one event's cost grows with builders, queue depth, repositories and
# history: each bench/scale_*.py prints its table and writes
# build/bench/scale_*.json; bench/janitor_bench.py, a janitor pass over
# 100k builds (build/bench/janitor.json).  Buildbot's (scale_buildbot.py) runs last, so its
# table has beside it the figures buildunits' benches just wrote.
bench-scale: deps
	for b in $(filter-out bench/scale_buildbot.py,$(sort $(wildcard bench/scale_*.py))) bench/janitor_bench.py \
			bench/scale_buildbot.py; do \
		QUICK=$(QUICK) $(PYTHON) $$b || exit 1; done

# What the boundary costs: a no-op build with its steps as transient units
# and as the runner's children, under systemd in a container.  Needs root;
# says why and exits 0 where containers cannot run.
bench-boundary: deps
	QUICK=$(QUICK) $(PYTHON) bench/boundary_bench.py

# The long crash and bad-input runs (make check runs short versions).
N ?= 1000
torture: deps
	BUILDUNITS_TORTURE_KILLS=$(N) BUILDUNITS_FUZZ_EXAMPLES=10000 $(PYTHON) -m pytest -q -p no:cacheprovider \
		-m torture tests

# The real thing: buildunits.target under systemd in a container (root).
demo: deps
	$(PYTHON) share/examples/demo.py

# The daemons as plain processes, no container.
demo-local: deps
	$(PYTHON) share/examples/demo.py --local

# Section 5 from docs/*.5.md; the daemons' (8) and the commands' (1) pages
# from their module docstrings, which are their manuals.
DAEMONS = poller scheduler runner htmlgen launcher sandbox webhook notifier
SEE_ALSO = buildunits(1) $(patsubst %,buildunits-%(8),$(DAEMONS)) buildunits-timer(8) buildunits-janitor(8) \
	buildunits.builder(5) \
	buildunits-state(5)

man:
	mkdir -p $(BUILDDIR)/man/man1 $(BUILDDIR)/man/man5 $(BUILDDIR)/man/man8
	for f in docs/*.5.md; do \
		b=$$(basename $$f .md); $(PYTHON) docs/mkman.py $$f > $(BUILDDIR)/man/man5/$$b || exit 1; \
	done
	for d in $(DAEMONS); do \
		$(PYTHON) docs/mkman.py --docstring 8 lib/buildunits/$$d.py --see-also "$(SEE_ALSO)" \
			> $(BUILDDIR)/man/man8/buildunits-$$d.8 || exit 1; \
	done
	# The janitor's units (retention): janitor.py's docstring.
	$(PYTHON) docs/mkman.py --docstring 8 lib/buildunits/janitor.py \
		--see-also "$(SEE_ALSO) systemd.timer(5)" > $(BUILDDIR)/man/man8/buildunits-janitor.8
	# The timers' units and generator: periodic.py's docstring.
	$(PYTHON) docs/mkman.py --docstring 8 lib/buildunits/periodic.py \
		--see-also "$(SEE_ALSO) systemd.timer(5) systemd.time(7)" > $(BUILDDIR)/man/man8/buildunits-timer.8
	$(PYTHON) docs/mkman.py --docstring 1 lib/buildunits/cli.py --see-also "$(SEE_ALSO)" \
		> $(BUILDDIR)/man/man1/buildunits.1
	$(PYTHON) docs/mkman.py --docstring 1 lib/buildunits/mask.py \
		--see-also "buildunits.builder(5) buildunits-runner(8) systemd.exec(5)" > $(BUILDDIR)/man/man1/buildunits-mask.1

# units/*.in with @BINDIR@ filled in, and the drop-in directories (the
# shared hardening of units/hardening.conf in each service's), as they are installed.
units:
	rm -rf $(BUILDDIR)/units
	$(PYTHON) units/mkunits.py $(BINDIR) $(BUILDDIR)/units

install: man units
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR)/buildunits $(DESTDIR)$(SHAREDIR)/templates \
		$(DESTDIR)$(SHAREDIR)/examples $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 \
		$(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(DOCDIR) $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) $(DESTDIR)/usr/share/dbus-1/system.d \
		$(DESTDIR)$(GENERATORDIR)
	install -m 0755 bin/* $(DESTDIR)$(BINDIR)/
	install -m 0644 lib/buildunits/*.py $(DESTDIR)$(LIBDIR)/buildunits/
	# Byte-compiled now: the daemons run with a read-only /usr (ProtectSystem=strict).
	$(PYTHON) -m compileall -q -d $(LIBDIR)/buildunits $(DESTDIR)$(LIBDIR)/buildunits
	install -m 0644 share/templates/* $(DESTDIR)$(SHAREDIR)/templates/
	install -m 0755 share/examples/post-receive $(DESTDIR)$(SHAREDIR)/examples/
	install -m 0644 LICENSE $(DESTDIR)$(DOCDIR)/
	install -m 0644 $(BUILDDIR)/man/man1/*.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 $(BUILDDIR)/man/man5/*.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 $(BUILDDIR)/man/man8/*.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 $(BUILDDIR)/units/*.service $(BUILDDIR)/units/*.socket $(BUILDDIR)/units/*.timer \
		$(BUILDDIR)/units/*.target $(DESTDIR)$(UNITDIR)/
	# The shared hardening was once the prefix drop-in buildunits-.service.d/,
	# which would reach the build steps' units: gone on upgrade.
	rm -f $(DESTDIR)$(UNITDIR)/buildunits-.service.d/10-hardening.conf
	rmdir $(DESTDIR)$(UNITDIR)/buildunits-.service.d 2>/dev/null || true
	for d in $(BUILDDIR)/units/*.d; do \
		install -d $(DESTDIR)$(UNITDIR)/$${d##*/} && install -m 0644 $$d/*.conf $(DESTDIR)$(UNITDIR)/$${d##*/}/ || exit 1; \
	done
	# The builders' OnCalendar= timers, made at boot and at daemon-reload.
	install -m 0755 $(BUILDDIR)/units/buildunits-generator $(DESTDIR)$(GENERATORDIR)/
	install -m 0644 units/sysusers.d/buildunits.conf $(DESTDIR)$(SYSUSERSDIR)/
	install -m 0644 units/tmpfiles.d/buildunits.conf $(DESTDIR)$(TMPFILESDIR)/
	# dbus-daemon reads policies from /usr/share (or /etc) whatever the PREFIX.
	install -m 0644 units/dbus/org.buildunits.conf $(DESTDIR)/usr/share/dbus-1/system.d/

clean:
	rm -rf build demo-output .pytest_cache tests/__pycache__ lib/buildunits/__pycache__
