"""One registration run: export inputs, check the GPU, run the worker, load the results.

A :class:`RegistrationJob` is a small state machine driven by :meth:`RegistrationJob.poll` on the
main thread (from a Qt timer in Slicer, or :meth:`RegistrationJob.wait` when blocking).  MRML is
touched only in :meth:`start` (export) and when the worker has finished (loading), never from a
thread.  Output nodes are created only when the results are complete, so a failed or cancelled
run leaves the scene as it was; the temporary folder is removed in every case.
"""
from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional

from .devices import PROBE_CODE, GpuInfo, cached_gpu_info, choose_device, remember_gpu_info
from .i18n import tr as _
from .inputs import ExportedInputs, export_inputs
from .outputs import read_outputs, store_outputs
from .process import WorkerProcess
from .request import RegistrationRequest
from .settings import Device
from .summary import describe, engine_warnings
from .warm import WarmWorker
from .worker import EXIT_BAD_INPUT, EXIT_CANCELLED, WorkerLauncher, parse_event, register_arguments

#: Share of the progress bar for the stages around the worker's own progress.
EXPORT_SHARE = 0.05
LOAD_SHARE = 0.05

#: Load the results as soon as the worker prints "done" (its output folder is complete then) instead of at
#: its exit: Python's teardown after PyTorch took about a second (docs/BENCHMARKS.md).  Not on Windows, where
#: the temporary folder, the worker's working directory, cannot be removed while it runs.
LOAD_ON_DONE = os.name != "nt"

#: Worker output lines kept for error messages.
LOG_LINES = 200


class JobState(enum.Enum):
    CHECKING_DEVICE = "checking-device"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class Progress:
    """``fraction`` is of the whole job, in [0, 1]; ``stage`` is the engine's or one of ours."""

    stage: str
    fraction: float
    message: str = ""


@dataclass
class RegistrationResult:
    transform_node: object
    warped_node: object
    summary: dict
    elapsed: float
    messages: List[str] = field(default_factory=list)

    @property
    def device(self) -> str:
        return str(self.summary.get("device", ""))

    def describe(self) -> str:
        return describe(self.summary, self.elapsed)


class RegistrationCancelled(RuntimeError):
    """The run was cancelled; nothing was added to the scene."""


class RegistrationFailed(RuntimeError):
    """The worker failed; ``details`` holds its last output lines for an error dialog."""

    def __init__(self, message: str, returncode: Optional[int] = None, details: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.details = details


class RegistrationJob:
    """Handle of a running registration; see the module docstring."""

    def __init__(
        self,
        request: RegistrationRequest,
        launcher: Optional[WorkerLauncher] = None,
        on_progress: Optional[Callable[[Progress], None]] = None,
        on_finished: Optional[Callable[["RegistrationJob"], None]] = None,
        probe_gpu: bool = True,
        keep_files: bool = False,
        terminate_grace: float = 5.0,
        warm_worker: Optional[WarmWorker] = None,
    ) -> None:
        self.request = request
        self.launcher = launcher or WorkerLauncher()
        self.on_progress = on_progress
        self.on_finished = on_finished
        self.probe_gpu = probe_gpu
        self.keep_files = keep_files
        self.terminate_grace = terminate_grace
        self.warm_worker = warm_worker  # runs the registration when given and free; else a process of its own
        self.state: Optional[JobState] = None
        self.result: Optional[RegistrationResult] = None
        self.error: Optional[BaseException] = None
        self.messages: List[str] = []
        self.log: Deque[str] = collections.deque(maxlen=LOG_LINES)
        self.folder: Optional[str] = None
        self.device: str = request.settings.device
        self.driver = None  # what polls the job in the application (a QtTimerDriver), if anything
        self._exported: Optional[ExportedInputs] = None
        self._process: Optional[WorkerProcess] = None
        self._probe_output: List[str] = []
        self._final_event: Optional[dict] = None
        self._started_at = 0.0
        self._last_fraction = 0.0
        self._timed_out: Optional[float] = None

    # -- public ------------------------------------------------------------------------------
    def start(self) -> "RegistrationJob":
        """Validate and export the inputs (raises on bad input), then start the first process."""
        if self.state is not None:
            raise RuntimeError("This registration job was already started.")
        self.request.validate()
        self._started_at = time.monotonic()
        self._report("export", 0.0, _("Writing the input volumes"))
        self.folder = tempfile.mkdtemp(prefix="LearnGNSlicer-", dir=_temporary_root())
        try:
            self._exported = export_inputs(self.request, self.folder)
            self.messages += self._exported.warnings
            known = cached_gpu_info(self.launcher.executable())
            if self.request.settings.device == Device.CPU.value or not self.probe_gpu:
                self._start_worker(None)
            elif known is not None:
                self._start_worker(known)
            else:
                self._start_probe()
        except BaseException:
            self._remove_folder()
            raise
        return self

    @property
    def finished(self) -> bool:
        return self.state is not None and self.state.finished

    def poll(self) -> bool:
        """Advance the job without blocking; True while it is still going."""
        if self.state is None:
            raise RuntimeError("Start the registration job before polling it.")
        if self.finished:
            return False
        try:
            self._process.poll()  # calls _on_line / _on_*_exit
        except Exception as error:  # a bug in our own handling: end the run cleanly
            logging.exception("LearnGNSlicer: handling the worker's output failed")
            self._process.kill()
            self._finish(JobState.FAILED, error=error)
        return not self.finished

    def cancel(self) -> None:
        """Stop the run; the job ends as CANCELLED once the process has exited."""
        if self.state in (JobState.CHECKING_DEVICE, JobState.RUNNING):
            self.state = JobState.CANCELLING
            self._report("cancelling", self._last_fraction, _("Cancelling"))
            self._process.cancel()

    def wait(self, timeout: Optional[float] = None, between_polls: Optional[Callable[[], None]] = None) -> RegistrationResult:
        """Block until finished; return the result or raise the failure / cancellation.

        After ``timeout`` seconds the run is cancelled and ``TimeoutError`` raised.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline and self._timed_out is None:
                self._timed_out = timeout
                self.cancel()
            if between_polls is not None:
                between_polls()
            time.sleep(0.05)
        if self.state == JobState.SUCCEEDED:
            return self.result
        if self._timed_out is not None and self.state == JobState.CANCELLED:
            raise TimeoutError(_("The registration did not finish within {timeout:g} s and was stopped.").format(timeout=self._timed_out))
        raise self.error if self.error is not None else RegistrationFailed(_("The registration did not finish."))

    # -- steps -------------------------------------------------------------------------------
    def _report(self, stage: str, fraction: float, message: str) -> None:
        self._last_fraction = max(0.0, min(1.0, fraction))
        if self.on_progress is not None:
            try:
                self.on_progress(Progress(stage, self._last_fraction, message))
            except Exception:
                logging.exception("LearnGNSlicer: progress callback failed")

    def _start_probe(self) -> None:
        self.state = JobState.CHECKING_DEVICE
        self._report("device", EXPORT_SHARE / 2, _("Checking the GPU"))
        argv = [self.launcher.executable(), "-c", PROBE_CODE]
        self._process = WorkerProcess(argv, env=self.launcher.environment(), on_line=self._on_probe_line,
                                      on_exit=self._on_probe_exit, terminate_grace=self.terminate_grace).start()

    def _on_probe_line(self, stream: str, text: str) -> None:
        if stream == "stdout":
            self._probe_output.append(text)
        else:
            self.log.append(text)

    def _on_probe_exit(self, returncode: int) -> None:
        if self.state == JobState.CANCELLING:
            self._finish(JobState.CANCELLED, error=RegistrationCancelled(_("The registration was cancelled.")))
            return
        info = GpuInfo.from_probe_output("\n".join(self._probe_output))
        remember_gpu_info(self._process.argv[0], info)
        self._start_worker(info)

    def _start_worker(self, gpu: Optional[GpuInfo]) -> None:
        settings = self.request.settings
        decision = choose_device(settings.device, gpu, self._exported.fixed_voxels)
        self.device = decision.device
        if decision.message:
            self.messages.append(decision.message)
            logging.warning("LearnGNSlicer: %s", decision.message)
        options = dataclasses.replace(settings, device=decision.device).cli_arguments()
        paths = self._exported.paths
        arguments = register_arguments(
            paths["fixed"], paths["moving"], os.path.join(self.folder, "output"), options,
            fixed_mask=paths.get("fixed_mask"), moving_mask=paths.get("moving_mask"),
            fixed_segmentation=paths.get("fixed_segmentation"), moving_segmentation=paths.get("moving_segmentation"),
        )
        self.state = JobState.RUNNING
        self._report("start", EXPORT_SHARE, decision.message or _("Starting the registration"))
        if self.warm_worker is not None and not self.warm_worker.busy:
            self._process = self.warm_worker.submit(arguments, self.folder, self._on_worker_line, self._on_worker_exit)
            return
        self._process = WorkerProcess(self.launcher.argv(arguments), env=self.launcher.environment(), cwd=self.folder,
                                      on_line=self._on_worker_line, on_exit=self._on_worker_exit,
                                      terminate_grace=self.terminate_grace).start()

    def _on_worker_line(self, stream: str, text: str) -> None:
        event = parse_event(text) if stream == "stdout" else None
        if event is None:
            self.log.append(text)
            logging.debug("learngn: %s", text)
            return
        kind = event.get("event")
        if kind == "progress" and self.state == JobState.RUNNING:
            fraction = _fraction(event.get("fraction"))
            self._report(str(event.get("stage", "")), EXPORT_SHARE + (1 - EXPORT_SHARE - LOAD_SHARE) * fraction,
                         str(event.get("message", "")))
        elif kind in ("done", "error"):
            self._final_event = event
            if kind == "done" and self.state == JobState.RUNNING and LOAD_ON_DONE:
                self._load_results(0)

    def _on_worker_exit(self, returncode: int) -> None:
        if self.finished:  # loaded when the worker said "done"
            return
        if self.state == JobState.CANCELLING:
            self._finish(JobState.CANCELLED, error=RegistrationCancelled(_("The registration was cancelled.")))
            return
        event = self._final_event or {}
        if returncode != 0 or event.get("event") == "error":
            self._finish(JobState.FAILED, error=self._failure(returncode, event))
            return
        self._load_results(returncode)

    def _load_results(self, returncode: int) -> None:
        """Read the worker's output folder and create the nodes (the job succeeds or fails here)."""
        event = self._final_event or {}
        self._report("load", 1 - LOAD_SHARE, _("Loading the results"))
        try:
            summary = event.get("summary") if isinstance(event.get("summary"), dict) else None
            outputs = read_outputs(os.path.join(self.folder, "output"), self._exported.fixed_grid, summary)
            transform, warped = store_outputs(self.request, outputs, self._exported.fixed_grid)
        except Exception as error:
            logging.exception("LearnGNSlicer: loading the registration results failed")
            self._finish(JobState.FAILED, error=RegistrationFailed(
                _("Loading the registration results failed: {error}").format(error=error), returncode, self._details()))
            return
        self.messages += engine_warnings(outputs.summary)
        self.result = RegistrationResult(transform, warped, outputs.summary, time.monotonic() - self._started_at, list(self.messages))
        self._finish(JobState.SUCCEEDED)

    def _failure(self, returncode: int, event: dict) -> RegistrationFailed:
        message = str(event.get("message") or "").strip()
        if not message:
            errors = [line for line in self.log if line.strip()]
            message = errors[-1] if errors else _("no error message")
        if returncode == EXIT_BAD_INPUT:
            text = _("The registration engine rejected the input: {message}").format(message=message)
        elif returncode == EXIT_CANCELLED:
            text = _("The registration worker was interrupted: {message}").format(message=message)
        elif returncode < 0:
            text = _("The registration worker was stopped by signal {signal}: {message}").format(signal=-returncode, message=message)
        else:
            text = _("The registration failed (exit code {code}): {message}").format(code=returncode, message=message)
        return RegistrationFailed(text, returncode, self._details())

    def _details(self) -> str:
        return "\n".join(self.log)

    def _finish(self, state: JobState, error: Optional[BaseException] = None) -> None:
        self.state = state
        self.error = error
        self._remove_folder()
        if state == JobState.SUCCEEDED:
            self._report("done", 1.0, self.result.describe())
        elif state == JobState.CANCELLED:
            self._report("cancelled", self._last_fraction, _("Cancelled"))
        else:
            self._report("failed", self._last_fraction, str(error))
        if self.on_finished is not None:
            try:
                self.on_finished(self)
            except Exception:
                logging.exception("LearnGNSlicer: finished callback failed")

    def _remove_folder(self) -> None:
        if self.folder and not self.keep_files:
            shutil.rmtree(self.folder, ignore_errors=True)


def _fraction(value) -> float:
    try:
        return max(0.0, min(1.0, float(value)))
    except (TypeError, ValueError):
        return 0.0


def _temporary_root() -> Optional[str]:
    """Slicer's temporary folder inside the application, else the system's."""
    try:
        import slicer

        return slicer.app.temporaryPath
    except (ImportError, AttributeError):
        return None
