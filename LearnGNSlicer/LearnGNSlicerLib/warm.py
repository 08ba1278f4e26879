"""A warm worker: the process that imported PyTorch stays up between registrations while Slicer is open,
so a second Apply pays no process start, import or CUDA initialisation.

:class:`WarmWorker` starts ``LearnGNSlicerLib.warm_worker`` once, sends it one request per registration and
hands each request's output lines to the job that sent it, through a :class:`WarmRun` that the job polls
like a :class:`~LearnGNSlicerLib.process.WorkerProcess`.  Cancelling sends SIGTERM, which cancels the
request and keeps the process; if it does not answer within the grace period it is killed.  A worker that
crashes or is killed ends the run in progress as failed (or cancelled) and is replaced by a new one at the
next request.  It exits with Slicer (its input closes) and on :meth:`WarmWorker.stop`.

Whether the module uses one is a setting (:func:`warm_worker_enabled`): on unless turned off, since a new
process per Apply costs about 2 s of Python and PyTorch start on a 2-core CPU (more with a CUDA context).
The module starts it when it is opened (:meth:`WarmWorker.prestart`), so even the first Apply finds it
ready.  The price is the idle process's memory (PyTorch imported; it frees its caches after every run);
turning the setting off gives a new process per Apply, which holds nothing between runs.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import time
from typing import Optional, Sequence

from .process import DEFAULT_TERMINATE_GRACE, ExitCallback, LineCallback, WorkerProcess
from .warm_worker import READY, REQUEST_FINISHED
from .worker import WorkerLauncher, parse_event

#: Application setting (Slicer's settings) and environment variable that turn the warm worker on.
SETTING_KEY = "LearnGNSlicer/WarmWorker"
ENVIRONMENT_VARIABLE = "LEARNGN_WARM_WORKER"


_OFF = ("0", "false", "no", "off")


def warm_worker_enabled() -> bool:
    """The setting, on unless ``LEARNGN_WARM_WORKER=0`` or ``LearnGNSlicer/WarmWorker`` false in Slicer's
    settings (the environment variable wins where both are set)."""
    variable = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if variable:
        return variable not in _OFF
    try:
        import slicer

        value = slicer.app.settings().value(SETTING_KEY)
    except (ImportError, AttributeError):
        return True
    return value is None or str(value).strip().lower() not in _OFF


class WarmRun:
    """One request to the warm worker, with the interface a job uses of a worker process."""

    def __init__(self, worker: "WarmWorker", argv: Sequence[str], on_line: Optional[LineCallback],
                 on_exit: Optional[ExitCallback]) -> None:
        self.worker, self.argv = worker, list(argv)
        self.on_line, self.on_exit = on_line, on_exit
        self.returncode: Optional[int] = None

    @property
    def finished(self) -> bool:
        return self.returncode is not None

    @property
    def pid(self) -> Optional[int]:
        return self.worker.pid

    def poll(self) -> bool:
        if not self.finished:
            self.worker.poll()
        return not self.finished

    def cancel(self) -> None:
        """Ask the worker to cancel this request (SIGTERM); it is killed if it does not answer in time."""
        if not self.finished:
            self.worker.cancel()

    def kill(self) -> None:
        """Kill the worker; the caller ends its job itself, so no exit is reported for this run."""
        if not self.finished:
            self.returncode = -9
        self.worker.kill()

    def finish(self, returncode: int) -> None:
        if not self.finished:
            self.returncode = returncode
            if self.on_exit is not None:
                self.on_exit(returncode)


class WarmWorker:
    """The module's long-lived worker process; see the module docstring."""

    def __init__(self, launcher: Optional[WorkerLauncher] = None,
                 terminate_grace: float = DEFAULT_TERMINATE_GRACE) -> None:
        self.launcher = launcher or WorkerLauncher()
        self.terminate_grace = terminate_grace
        self.starts = 0
        self._process: Optional[WorkerProcess] = None
        self._run: Optional[WarmRun] = None
        self._ready = False
        atexit.register(self.stop)

    @property
    def running(self) -> bool:
        return self._process is not None and not self._process.finished

    @property
    def ready(self) -> bool:
        """The process is up and has imported the engine (it said so); :meth:`poll` reads what it said."""
        return self.running and self._ready

    @property
    def busy(self) -> bool:
        return self._run is not None and not self._run.finished

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process is not None else None

    def submit(self, arguments: Sequence[str], cwd: Optional[str], on_line: Optional[LineCallback] = None,
               on_exit: Optional[ExitCallback] = None) -> WarmRun:
        """Send one ``learngn register`` request (its arguments); a new process is started when needed."""
        if self.busy:
            raise RuntimeError("The warm worker is busy with another registration.")
        run = WarmRun(self, arguments, on_line, on_exit)
        request = json.dumps({"argv": list(arguments), "cwd": cwd})
        for _ in range(2):
            if not self.running:
                self._start()
            try:
                self._process.send(request)
            except OSError:  # it died since the last run: start another once
                logging.warning("LearnGNSlicer: the warm worker had exited; starting a new one.")
                self.kill()
                continue
            self._run = run  # its lines are delivered by the next poll, after this
            return run
        raise RuntimeError("The warm worker could not be started.")

    def prestart(self) -> None:
        """Start the process now, without a request, so that the next request finds PyTorch imported."""
        if not self.running:
            self._start()

    def _start(self) -> None:
        argv = [self.launcher.executable(), "-m", "LearnGNSlicerLib.warm_worker", self.launcher.module]
        self._process = WorkerProcess(argv, env=self.launcher.environment(), on_line=self._on_line,
                                      on_exit=self._on_exit, terminate_grace=self.terminate_grace,
                                      stdin_pipe=True).start()
        self._ready = False
        self.starts += 1

    def poll(self) -> None:
        if self._process is not None:
            self._process.poll()

    def _on_line(self, stream: str, text: str) -> None:
        event = parse_event(text) if stream == "stdout" else None
        kind = event.get("event") if event else None
        if kind == READY:
            self._ready = True
            return
        if kind == REQUEST_FINISHED:
            self._process.withdraw_cancel()  # the request ended; the process stays
            if self._run is not None:
                self._run.finish(int(event.get("returncode", 1)))
            return
        if self._run is not None and not self._run.finished and self._run.on_line is not None:
            self._run.on_line(stream, text)

    def _on_exit(self, returncode: int) -> None:
        """The process ended (crash, kill, end of input): the run in progress ends with it."""
        if self._run is not None and not self._run.finished:
            logging.warning("LearnGNSlicer: the warm worker exited with code %s during a registration; "
                            "a new one starts with the next.", returncode)
            self._run.finish(returncode if returncode != 0 else 1)

    def cancel(self) -> None:
        if self.running:
            self._process.cancel()

    def kill(self) -> None:
        """End the process now (a later request starts a new one)."""
        if self._process is not None:
            self._process.kill()
            deadline = time.monotonic() + self.terminate_grace
            while self._process.poll() and time.monotonic() < deadline:
                time.sleep(0.02)
            self._process = None

    def stop(self, timeout: float = 5.0) -> None:
        """Let the process exit (its input ends); kill it if it does not within ``timeout`` seconds."""
        if not self.running:
            return
        self._process.close_input()
        deadline = time.monotonic() + timeout
        while self._process.poll() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.running:
            self.kill()
        self._process = None

