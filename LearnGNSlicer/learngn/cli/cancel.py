"""SIGINT/SIGTERM as a polite cancel request the engine honours at its next progress step.

The first signal sets a flag that the engine's ``cancel`` callback reads (it then raises
``RegistrationCancelled`` and the staging folder is removed); a second signal interrupts at once.
"""
from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any, Dict, Optional

from ..errors import RegistrationCancelled

SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None)


class CancelOnSignal:
    """Context manager; the instance is the ``cancel`` callable passed to ``learngn.register``."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    def check(self) -> None:
        """Raise if a cancel was requested (between the engine's own checks: reading, writing)."""
        if self.requested:
            raise RegistrationCancelled("cancelled by a signal")

    def _handle(self, number: int, frame: Optional[FrameType]) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        sys.stderr.write(f"\nlearngn: {signal.Signals(number).name} received, cancelling "
                         "(send it again to stop at once)\n")
        sys.stderr.flush()

    def __enter__(self) -> "CancelOnSignal":
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
