"""A dependency-free text progress bar (one line, redrawn) for training and evaluation."""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class ProgressBar:
    def __init__(self, total: int, label: str = "", stream: Optional[TextIO] = None, width: int = 28,
                 enabled: bool = True) -> None:
        self.total, self.label, self.width, self.enabled = max(total, 1), label, width, enabled
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.done = 0

    def update(self, done: int, status: str = "") -> None:
        self.done = done
        if not self.enabled:
            return
        fraction = min(done / self.total, 1.0)
        filled = int(round(self.width * fraction))
        elapsed = time.perf_counter() - self.start
        eta = elapsed / fraction - elapsed if fraction > 0 else float("nan")
        eta_text = f"{eta / 60:4.1f} min left" if eta == eta else "  ?  min left"
        line = f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} {status} | {eta_text}"
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
