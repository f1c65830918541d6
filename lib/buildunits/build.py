"""One build being run: its steps in order, each through the executor, and
its record brought up to date as each starts and ends.

The runner claims a request, takes the build's number, writes its
pointer and the first record (every step pending), and hands the rest
to a Build: run() starts the first step that is to run; each step's end
(reported by the executor, with what it used) is recorded, and the next
one started, until none is left and the runner commits the result
(Runner._finish).  A step that ends badly halts the build unless HaltOnFailure= is off; a
halted or cancelled build skips the steps after it (a halted one runs
those with AlwaysRun=).  A step that cannot start (its log cannot be
created, the command cannot be run) is an exception.

Each transition is a line in the build's progress file (state.py), not
a rewrite of build.json.  Whatever the runner cannot write (full disk,
I/O error) it is told about (Runner._stuck): the build stops there, and
the runner recovers it from the spool and the records as after a crash.

What a step's end means is decided in buildrecord.py; how it is run and
stopped in executor.py; its plan, environment and time limits in step.py.
"""

import os
import time

from gi.repository import GLib

from . import buildrecord, checkout, executor as executormod, log, redact, results
from . import spool as spoolmod
from . import step as stepmod
from .state import NotLinked


class Build:
    """Build REC of BUILDER (config.Builder) on RUNNER, with the steps of
    PLAN (step.Planned), in WORKDIR, its processes tagged with TOKEN."""

    def __init__(self, runner, rec, plan, builder, workdir, token, grace):
        self.runner = runner       # the daemon: its state, spool, bus, notifier, executor
        self.rec, self.steps, self.builder = rec, plan, builder
        self.workdir, self.token, self.grace = workdir, token, grace
        self.contrib = []          # what each step that ended did to the result
        self.halted = False
        self.cancelled = None      # why the build is being cancelled
        self.space = []            # (step index, start time, free bytes then)
        self._handle = None        # the running step (executor)
        self._watch = None         # its time limits (step.Watch)
        self._timed_out = None
        self._logfd = None
        self._artifacts = None     # artifacts.Collector, once a step has Artifacts=

    def run(self):
        self._next(0)

    def cancel(self, reason):
        """Stop the build for REASON: the running step is stopped (and
        recorded as cancelled when it ends), the rest are skipped."""
        self.cancelled = reason
        if self._handle is not None:
            self._note("\nbuildunits: build %s; stopping the step's processes\n" % reason)
            self._handle.stop(self.grace)

    def drop(self):
        """Give up on the build (the runner cannot record it): kill the
        running step, record nothing more."""
        if self._handle is not None:
            self._handle.kill()
        self._release()

    def halt(self):
        """Stop the running step, without the main loop (the runner is
        shutting down); record nothing more."""
        if self._handle is not None:
            self._handle.halt(self.grace)
        self._release()

    def _release(self):
        if self._watch is not None:
            self._watch.cancel()
        if self._logfd is not None:
            try:
                os.close(self._logfd)
            except OSError:
                pass
        self._handle = self._watch = self._logfd = None

    def measured(self):
        """(name, bytes written, bytes free at its start) of the last two
        steps started, newest first, for buildrecord.filled_by_step: the
        step that ran, and the one that may have started on a full disk."""
        rec, out = self.rec, []
        for i, started, free in reversed(self.space[-2:]):
            st, written = self.steps[i], 0
            if free > 0:
                try:
                    written += os.stat(self.runner.state.log_path(rec["builder"], rec["number"],
                                                                  st.index, st.name)).st_size
                except OSError:
                    pass
                written += stepmod.written_since(self.workdir, started)
            out.append((st.name, written, free))
        return out

    # -------------------------------------------------------------- steps
    def _next(self, i):
        rec = self.rec
        while i < len(self.steps):
            st = self.steps[i]
            if not buildrecord.runs(st.spec, self.halted, self.cancelled):
                rec["steps"][i].update(state="finished", result=results.SKIPPED)
                self._progress(i)
                i += 1
                continue
            free = stepmod.free_bytes(self.runner.state.build_dir(rec["builder"], rec["number"]))
            self.space.append((i, time.time(), free))
            if self._launch(i):
                return
            i += 1
        self.runner._finish()

    def _launch(self, i):
        """Start step I; False if it could not start (recorded as exception)."""
        if self.steps[i].spec is not None and self.steps[i].spec.trigger:
            return self._trigger(i)
        r, rec, st = self.runner, self.rec, self.steps[i]
        srec = rec["steps"][i]
        logname = r.state.log_name(st.index, st.name)
        logpath = r.state.log_path(rec["builder"], rec["number"], st.index, st.name)
        srec.update(state="running", started=time.time(), log=logname)
        cwd = stepmod.working_directory(st, self.workdir)
        try:
            # A new file, never what is there: an earlier step (same user)
            # may have planted a file or a link at this name.
            fd = r.state.create_log(rec["builder"], rec["number"], logname)
        except FileExistsError:
            srec["log"] = None
            return self._step_exception(i, "cannot create the log %s: a file or link is already there "
                                        "(made by an earlier step?); it is left as it is" % logpath)
        except NotLinked as e:
            srec["log"] = None
            return self._step_exception(i, "cannot create the log %s: %s" % (logpath, e))
        except OSError as e:
            return self._step_exception(i, "cannot create the log %s: %s" % (logpath, e.strerror))
        spec = executormod.StepSpec(rec["builder"], rec["number"], st.name, self.token,
                                    unit=stepmod.unit(self.builder, st), credentials=st.credentials,
                                    shared=stepmod.shared(self.builder))
        env = stepmod.environment(os.environ, self.builder, st, rec, self.workdir, r.worker)
        try:
            self._handle = r.executor.start(spec, st.argv, env, cwd, fd, lambda code: self._exited(code, i))
        except OSError as e:
            os.write(fd, ("buildunits: cannot start the step in %s: %s\n" % (cwd, e.strerror)).encode())
            os.close(fd)
            return self._step_exception(i, "cannot start: %s" % e.strerror)
        self._logfd = fd
        self._timed_out = None
        self._watch = stepmod.Watch(st, fd, self._timeout)
        self._progress(i)
        r.spool.hint(rec["builder"], rec["number"])
        r.bus.emit("StepStarted", rec["builder"], rec["number"], st.name)
        log.info("%s #%d: step %s started" % (rec["builder"], rec["number"], st.name),
                 builder=rec["builder"], build=rec["number"], step=st.name)
        r.notifier.status(r.status_text())
        return True

    # ----------------------------------------------------------- Trigger=
    def _trigger(self, i):
        """Step I has Trigger=: it queues a build of each builder named, on
        this build's branch and revision, with its properties and this
        build as their upstream; with Wait=yes it ends when they have,
        with the worst of their results.  Requests go into the spool as
        the scheduler's do (each rename its commit point); their ids are
        in the step's record.  A crash after the delivery and before the
        record reaches the disk queues them again when the build is
        retried: at least once, never lost."""
        r, rec, st = self.runner, self.rec, self.steps[i]
        srec = rec["steps"][i]
        srec.update(state="running", started=time.time())
        req = rec.get("request") if isinstance(rec.get("request"), dict) else {}
        props = req.get("properties") if isinstance(req.get("properties"), dict) else {}
        fields = []
        for name in st.spec.trigger:
            b = r.cfg.builders.get(name)
            if b is None:
                return self._step_exception(i, "Trigger=: no builder %r in the configuration" % name)
            fields.append({"builder": name, "repository": redact.url(b.repository), "branch": rec.get("branch") or "",
                           "revision": rec.get("revision") or "", "changes": [], "properties": dict(props),
                           "reason": "triggered by %s #%d (step %s)" % (rec["builder"], rec["number"], st.name),
                           "upstream": {"builder": rec["builder"], "number": rec["number"], "step": st.name}})
        try:
            rids = r.spool.deliver_many("requests", "request", fields)
        except spoolmod.Undelivered as e:
            return self._step_exception(i, "cannot queue the builds it triggers: %s" % e)
        except OSError as e:
            return self._step_exception(i, "cannot queue the builds it triggers: %s" % e.strerror)
        srec["triggered"] = [{"builder": f["builder"], "request": rid, "number": None, "result": None}
                             for f, rid in zip(fields, rids)]
        # (BuildRequested is the scheduler's signal: the runners and htmlgen
        # see these requests arrive in requests/new/, as they watch it.)
        self._progress(i)
        r.bus.emit("StepStarted", rec["builder"], rec["number"], st.name)
        what = ", ".join("%s (%s)" % (t["builder"], t["request"]) for t in srec["triggered"])
        log.info("%s #%d: step %s triggered %s" % (rec["builder"], rec["number"], st.name, what),
                 builder=rec["builder"], build=rec["number"], step=st.name)
        if not st.spec.wait:
            self._trigger_done(i, results.SUCCESS, "triggered " + ", ".join(st.spec.trigger))
            return True
        self._handle = TriggerWait(self, i)
        return True

    def build_finished(self, builder, number):
        """A BuildFinished signal: a build this one waits for may have ended."""
        if isinstance(self._handle, TriggerWait):
            self._handle.look(builder, number)

    def _trigger_done(self, i, result, summary):
        rec, st = self.rec, self.steps[i]
        srec = rec["steps"][i]
        self._handle = None
        srec.update(state="finished", finished=time.time(), result=result, summary=summary)
        if self.runner.stopping:
            return
        # The downstream builds' warnings are the step's; the rest as a command's.
        self.contrib.append(result if result == results.WARNINGS else buildrecord.contribution(st.spec, result))
        if buildrecord.halts(st.spec, result):
            self.halted = True
        self._progress(i)
        log.info("%s #%d: step %s finished: %s (%s)" % (rec["builder"], rec["number"], st.name, result, summary),
                 builder=rec["builder"], build=rec["number"], step=st.name, result=result)
        self.runner.bus.emit("StepFinished", rec["builder"], rec["number"], st.name, result)
        self._next(i + 1)

    # ---------------------------------------------------------- artifacts
    def _collector(self):
        if self._artifacts is None:
            from .artifacts import Collector
            rec = self.rec
            self._artifacts = Collector(self.workdir, os.path.join(
                self.runner.state.build_dir(rec["builder"], rec["number"]), "artifacts"),
                self.builder.max_artifact_size)
        return self._artifacts

    def finish_artifacts(self):
        """The builder's Artifacts=, after the last step, and what was kept
        and refused into the record, which is about to be final."""
        if self.builder.artifacts and not self.cancelled:
            for line in self._collector().collect(self.builder.artifacts, ""):
                log.info("%s #%d: %s" % (self.rec["builder"], self.rec["number"], line.strip()),
                         builder=self.rec["builder"], build=self.rec["number"])
        if self._artifacts is not None:
            if self._artifacts.kept:
                self.rec["artifacts"] = list(self._artifacts.kept)
            if self._artifacts.refused:
                self.rec["artifacts_refused"] = list(self._artifacts.refused)

    def _step_exception(self, i, why):
        rec, name = self.rec, self.steps[i].name
        buildrecord.step_exception(rec["steps"][i], why, time.time())
        self.halted = True
        self.contrib.append(results.EXCEPTION)
        rec["reason"] = "step %s: %s" % (name, why)
        log.error("%s #%d: step %s: %s" % (rec["builder"], rec["number"], name, why),
                  builder=rec["builder"], build=rec["number"], step=name, result=results.EXCEPTION)
        self._progress(i, "reason")
        return False

    def _progress(self, i, *build_keys):
        """Record step I's state (and the build's BUILD_KEYS) in the
        build's progress file: one line, whatever the size of the build.
        Not fsync'd: a crash leaves what recovery records as interrupted."""
        rec = self.rec
        self.runner.state.append_progress(rec["builder"], rec["number"], i, rec["steps"][i],
                                          {k: rec.get(k) for k in build_keys})

    def _timeout(self, why):
        """The step exceeded TimeoutSec= or TimeoutIdleSec= (step.Watch)."""
        if self._handle is None or self._timed_out:
            return
        self._timed_out = why
        self._note("\nbuildunits: %s; stopping the step's processes\n" % why)
        self._handle.stop(self.grace)

    def _note(self, text):
        """A line of the runner's own in the running step's log."""
        if self._logfd is None:
            return          # a Trigger= step has none
        try:
            os.write(self._logfd, text.encode())
        except OSError:
            pass

    def _exited(self, code, i):
        # A main-loop callback: an exception here would be printed and lost,
        # and the build would hang as "running".  Say it, and let the
        # runner recover the build.
        try:
            self._step_exited(code, i)
        except Exception as e:
            self.runner._stuck("%s #%d: cannot record the end of a step: %s"
                               % (self.rec["builder"], self.rec["number"], e), e)

    def _step_exited(self, code, i):
        usage = getattr(self._handle, "usage", None)    # the executor's measures (executor.py)
        st = self.steps[i]
        if st.spec is not None and st.spec.artifacts and not self.runner.stopping:
            # Nothing of the step runs now: what it left is what it made.
            self._note("".join(self._collector().collect(st.spec.artifacts, st.name)))
        self._release()
        rec, st = self.rec, self.steps[i]
        srec = rec["steps"][i]
        srec.update(state="finished", finished=time.time(), exit_status=code)
        if usage:
            srec["usage"] = dict(usage)
        if st.name == "checkout" and code == 0 and not rec.get("revision"):
            rec["revision"] = checkout.head(self.workdir)   # a forced build of a branch tip
        if self.runner.stopping:
            return   # the runner's shutdown() records the build
        srec.update(buildrecord.step_ended(code, self.cancelled, self._timed_out))
        self.contrib.append(buildrecord.contribution(st.spec, srec["result"]))
        if buildrecord.halts(st.spec, srec["result"]):
            self.halted = True
        self._progress(i, *(("revision",) if st.name == "checkout" else ()))
        log.info("%s #%d: step %s finished: %s%s" % (rec["builder"], rec["number"], st.name, srec["result"],
                                                     " (%s)" % srec["summary"] if srec["summary"] else ""),
                 builder=rec["builder"], build=rec["number"], step=st.name, result=srec["result"])
        if srec["result"] != results.SUCCESS:
            self._log_tail(srec)
        self.runner.bus.emit("StepFinished", rec["builder"], rec["number"], st.name, srec["result"])
        self._next(i + 1)

    def _log_tail(self, srec):
        rec, state = self.rec, self.runner.state
        fd = state.open_log(rec["builder"], rec["number"], srec["log"]) if srec.get("log") else None
        for line in stepmod.log_tail(fd) if fd is not None else ():
            log.info("%s #%d: %s| %s" % (rec["builder"], rec["number"], srec["name"], line[:200]),
                     builder=rec["builder"], build=rec["number"], step=srec["name"])


class TriggerWait:
    """A Trigger= step with Wait=yes, waiting for the builds it queued:
    the running step's handle (stop, kill, halt), looked at on each
    BuildFinished signal and every POLL_SEC.  Each request is followed
    through the spool: queued, claimed (the claiming worker's record
    names its build number), then gone, when its build record says how
    it ended (cancelled while queued: cancelled)."""

    POLL_SEC = 1.0

    def __init__(self, build, i):
        self.build, self.i = build, i
        self.srec = build.rec["steps"][i]
        self.started = time.monotonic()
        spec = build.steps[i].spec
        self.timeout = spec.timeout
        self._timer = GLib.timeout_add(int(self.POLL_SEC * 1000), self._tick)
        self.look()

    def _tick(self):
        if self._timer is None:
            return False
        if time.monotonic() - self.started > self.timeout:
            from .step import _span
            self._end(results.FAILURE, "timed out after %s waiting for %s" % (_span(self.timeout), self._waiting()))
            return False
        self.look()
        return self._timer is not None

    def _waiting(self):
        return ", ".join(t["builder"] for t in self.srec["triggered"] if t["result"] is None)

    def look(self, builder=None, number=None):
        r = self.build.runner
        changed = False
        claimed = None
        for t in self.srec["triggered"]:
            if t["result"] is not None:
                continue
            if builder is not None and (t["builder"] != builder or t["number"] not in (None, number)):
                continue
            rid = t["request"]
            if r.spool.queued("requests", rid):
                continue            # queued
            if r.spool.was_cancelled(rid):
                t["result"] = results.CANCELLED
                changed = True
                continue
            if t["number"] is None:
                claimed = r.spool.all_claimed() if claimed is None else claimed
                for worker, ids in claimed.items():
                    if rid in ids:
                        try:
                            ptr = r.state.read_worker(worker)
                        except Exception:
                            ptr = None
                        if ptr and ptr.get("request") == rid:
                            t["number"] = ptr.get("number")
                            changed = True
            rec = self._find(t)
            if rec is not None and rec.get("state") == "finished":
                t["number"], t["result"] = rec["number"], rec.get("result")
                changed = True
        if changed:
            self.build._progress(self.i)
        if all(t["result"] is not None for t in self.srec["triggered"]):
            got = [t["result"] for t in self.srec["triggered"]]
            self._end(results.worst(got), "; ".join("%s #%s %s" % (t["builder"], t["number"] or "-", t["result"])
                                                   for t in self.srec["triggered"]))

    def _find(self, t):
        """T's build record: by its number once known, else among the
        builder's recent builds, by the request it ran."""
        st = self.build.runner.state
        numbers = [t["number"]] if t["number"] else st.recent_numbers(t["builder"], 20)
        for n in reversed(numbers):
            try:
                rec = st.read_build(t["builder"], n)
            except Exception:
                continue
            if rec and rec.get("request_id") == t["request"]:
                return rec
        return None

    def _end(self, result, summary):
        self._cancel()
        self.build._trigger_done(self.i, result, summary)

    def _cancel(self):
        if self._timer is not None:
            GLib.source_remove(self._timer)
            self._timer = None

    # The executor handle's calls, for the build's cancel, drop and halt.
    def stop(self, grace):
        self._end(results.CANCELLED, "stopped while waiting for %s" % self._waiting())

    def kill(self):
        self._cancel()

    def halt(self, grace):
        self._cancel()
