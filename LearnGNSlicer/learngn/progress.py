"""Progress reporting and cancellation: one object the pipeline calls, whatever the front end."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

from .errors import RegistrationCancelled

#: Stages in order, with the share of the overall progress bar each one takes.
STAGES: Dict[str, float] = {"prepare": 0.05, "prealign": 0.15, "features": 0.15, "gauss-newton": 0.55, "output": 0.10}


@dataclass(frozen=True)
class ProgressEvent:
    stage: str
    fraction: float   # overall progress in [0, 1]
    message: str


class ProgressTracker:
    """Turns stage/sub-step reports into overall fractions, times the stages and checks for cancel."""

    def __init__(self, callback: Optional[Callable[[ProgressEvent], None]] = None,
                 cancel: Optional[Callable[[], bool]] = None) -> None:
        self._callback = callback
        self._cancel = cancel
        self.timings: Dict[str, float] = {}
        self._stage: Optional[str] = None
        self._stage_start = 0.0

    def _offset(self, stage: str) -> float:
        total = 0.0
        for name, share in STAGES.items():
            if name == stage:
                return total
            total += share
        raise KeyError(stage)

    def cancel_requested(self) -> bool:
        """Whether the caller asked to cancel (for loops in libraries that cannot raise through)."""
        return self._cancel is not None and bool(self._cancel())

    def check_cancel(self) -> None:
        if self.cancel_requested():
            raise RegistrationCancelled("registration cancelled by the caller")

    def start(self, stage: str, message: str) -> None:
        self.finish()
        self._stage, self._stage_start = stage, time.perf_counter()
        self.update(0.0, message)

    def update(self, within_stage: float, message: str) -> None:
        """Report progress inside the current stage and honour a pending cancel."""
        self.check_cancel()
        if self._callback is not None and self._stage is not None:
            fraction = self._offset(self._stage) + STAGES[self._stage] * min(max(within_stage, 0.0), 1.0)
            self._callback(ProgressEvent(self._stage, round(fraction, 4), message))

    def finish(self) -> None:
        if self._stage is not None:
            self.timings[self._stage] = self.timings.get(self._stage, 0.0) + time.perf_counter() - self._stage_start
            self._stage = None
