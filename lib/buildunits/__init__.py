"""buildunits: continuous integration as a handful of small Unix services.

A change poller notices commits, a scheduler turns them into build
requests, worker runners run the build steps, and a static HTML generator
draws the waterfall.  They coordinate through files in a spool directory
(see spool.py) and D-Bus signals (see bus.py), and keep all state as plain,
versioned files (see state.py and records.py).
"""

__version__ = "0.2.0.dev0"
