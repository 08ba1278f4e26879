"""Scriptable registration, without the widget: blocking :meth:`RegistrationLogic.register` and
non-blocking :meth:`RegistrationLogic.start`.

``LearnGNSlicerLogic`` in ``LearnGNSlicer.py`` adds Slicer's parameter node to this class; the
logic itself needs MRML only, so it runs (and is tested) headless.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

from .job import Progress, RegistrationJob, RegistrationResult
from .process import QtTimerDriver
from .request import RegistrationRequest
from .settings import DEFAULT_PRESET, Device, Prealign, RegistrationSettings
from .warm import WarmWorker, warm_worker_enabled
from .worker import WorkerLauncher


def _qt_available() -> bool:
    try:
        import qt  # noqa: F401
        import slicer

        return hasattr(slicer, "app")
    except ImportError:
        return False


class RegistrationLogic:
    """Registers a moving volume to a fixed one with the LearnGN engine in a worker process."""

    def __init__(self, launcher: Optional[WorkerLauncher] = None, probe_gpu: bool = True,
                 warm_worker: Optional[bool] = None) -> None:
        """``warm_worker``: keep one worker process up between runs (None: the setting, see
        :func:`LearnGNSlicerLib.warm.warm_worker_enabled`; on unless turned off)."""
        self.launcher = launcher or WorkerLauncher()
        self.probe_gpu = probe_gpu
        self.warm_worker = warm_worker_enabled() if warm_worker is None else warm_worker
        self._warm: Optional[WarmWorker] = None

    def worker(self) -> Optional[WarmWorker]:
        """The warm worker (started at its first request) when the setting is on, else None."""
        if not self.warm_worker:
            return None
        if self._warm is None:
            self._warm = WarmWorker(self.launcher)
        return self._warm

    def prepare_worker(self) -> None:
        """Start the warm worker ahead of the first request (the module calls this when it is opened);
        nothing happens when the setting is off or the worker is already up."""
        worker = self.worker()
        if worker is not None:
            worker.prestart()

    def stop_worker(self) -> None:
        """Let the warm worker exit (a later run starts a new one)."""
        if self._warm is not None:
            self._warm.stop()

    def start(
        self,
        fixed,
        moving,
        *,
        fixed_mask=None,
        moving_mask=None,
        fixed_segmentation=None,
        moving_segmentation=None,
        preset: str = DEFAULT_PRESET,
        device: Union[str, Device] = Device.AUTO,
        iterations: Optional[int] = None,
        grid_stride: Optional[int] = None,
        regularisation: Optional[float] = None,
        prealign: Union[str, Prealign, None] = None,
        output_transform=None,
        output_volume=None,
        on_progress: Optional[Callable[[Progress], None]] = None,
        on_finished: Optional[Callable[[RegistrationJob], None]] = None,
        use_timer: Optional[bool] = None,
        keep_files: bool = False,
    ) -> RegistrationJob:
        """Start a registration and return its handle at once.

        Bad inputs raise ``ValueError`` here.  Inside Slicer a Qt timer follows the worker
        (``use_timer`` defaults to True there), so the GUI stays responsive and ``on_finished``
        is called when it ends; otherwise drive the handle with ``poll()`` or ``wait()``.
        ``None`` settings take the preset's values.  Given output nodes are overwritten, missing
        ones are created when the results arrive.
        """
        settings = RegistrationSettings(
            preset=preset, device=device, iterations=iterations, grid_stride=grid_stride,
            regularisation=regularisation, prealign=prealign,
        )
        request = RegistrationRequest(
            fixed=fixed, moving=moving, settings=settings,
            fixed_mask=fixed_mask, moving_mask=moving_mask,
            fixed_segmentation=fixed_segmentation, moving_segmentation=moving_segmentation,
            output_transform=output_transform, output_volume=output_volume,
        )
        job = RegistrationJob(request, self.launcher, on_progress=on_progress, on_finished=on_finished,
                              probe_gpu=self.probe_gpu, keep_files=keep_files, warm_worker=self.worker())
        job.start()
        if use_timer if use_timer is not None else _qt_available():
            job.driver = QtTimerDriver(job.poll)
        return job

    def register(self, fixed, moving, *, timeout: Optional[float] = None,
                 between_polls: Optional[Callable[[], None]] = None, **options) -> RegistrationResult:
        """Register and wait: returns the result (nodes, summary) or raises.

        Takes the keyword arguments of :meth:`start`.  Raises ``ValueError`` for bad input,
        ``RegistrationFailed`` when the engine fails, ``TimeoutError`` after ``timeout`` seconds.
        """
        job = self.start(fixed, moving, use_timer=False, **options)
        return job.wait(timeout=timeout, between_polls=between_polls)
