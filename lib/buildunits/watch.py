"""inotify wake-ups: the only module that imports watchdog.

Watches directories (not recursively) and calls a function, from the
watcher's own thread, with the path and True when an entry is created or
moved in, False when one is deleted or moved out (watchdog reports a move
out of the watched directories as a deletion, about half a second late).
Daemons pass a function that schedules work on their main loop
(GLib.idle_add), so no daemon code runs on the watcher thread.  An event
is a hint: daemons rescan on start and on a timer too, so a missed event
costs latency only.
"""

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

# How often the observer's threads wake to check whether they should stop.
# Events are delivered at once regardless; this only bounds shutdown time
# of the (daemon) threads, which a stopping process does not wait for.
_OBSERVER_TIMEOUT = 30


class _Handler(FileSystemEventHandler):
    def __init__(self, callback):
        self._callback = callback

    def on_created(self, event):
        self._callback(event.src_path, True)

    def on_deleted(self, event):
        self._callback(event.src_path, False)

    def on_moved(self, event):
        self._callback(event.src_path, False)
        self._callback(event.dest_path, True)


class Watcher:
    def __init__(self, directories, callback):
        self._observer = Observer(timeout=_OBSERVER_TIMEOUT)
        self._observer.daemon = True
        handler = _Handler(callback)
        self._watches = []
        for d in directories:
            self._watches.append(self._observer.schedule(handler, d, recursive=False))
        self._observer.start()

    def stop(self):
        self._observer.stop()
