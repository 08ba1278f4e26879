"""How progress reaches the user: a bar on a terminal, stage lines in logs, JSON lines for programs.

``--progress bar`` draws a bar on stderr when stderr is a terminal and otherwise prints one line per
stage (cluster logs stay readable); ``--progress jsonl`` prints the events of docs/ENGINE_API.md on
stdout, one JSON object per line, flushed; ``--progress none`` is quiet.  Notes (pair started,
skipped, ...) go to stderr in every mode but ``none`` so stdout stays machine-readable.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from typing import Any, Dict, Optional, TextIO

from ..io import json_safe
from ..progress import ProgressEvent

MODES = ("bar", "jsonl", "none")


def emit_json(payload: Dict[str, Any], stream: Optional[TextIO] = None) -> None:
    """One strict-JSON object on one line, flushed at once (the reader is often a pipe)."""
    stream = stream or sys.stdout
    stream.write(json.dumps(json_safe(payload), allow_nan=False) + "\n")
    stream.flush()


class Reporter:
    """Quiet reporter (``--progress none``) and the interface of the others."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self.stream = stream or sys.stderr
        self.label: Optional[str] = None  # a batch sets the pair id here

    def progress(self, event: ProgressEvent) -> None:
        """An engine (or reading/writing) progress event."""

    def note(self, text: str) -> None:
        """A human-readable remark that is not progress."""

    def done(self, payload: Dict[str, Any]) -> None:
        """The command succeeded; ``payload`` is the contract's done event without the event key."""

    def close(self) -> None:
        """Leave the terminal clean (end the bar's line)."""

    def _prefix(self) -> str:
        return f"[{self.label}] " if self.label else ""


class StageLines(Reporter):
    """One line per stage: for logs and pipes, where a redrawn bar would be noise.

    The quick first stage (reading and checking inputs) gets no line, so input that is rejected
    there shows as the error line alone.
    """

    SILENT_STAGES = ("prepare",)

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        super().__init__(stream)
        self._last: Optional[str] = None

    def progress(self, event: ProgressEvent) -> None:
        key = f"{self.label}/{event.stage}"
        if key != self._last and event.stage not in self.SILENT_STAGES:
            self._last = key
            self._write(f"learngn: {self._prefix()}[{100 * event.fraction:3.0f}%] {event.stage}: {event.message}")

    def note(self, text: str) -> None:
        self._write(f"learngn: {self._prefix()}{text}")

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


class ProgressBar(StageLines):
    """A bar redrawn in place on a terminal, at most ten times a second."""

    WIDTH = 24
    INTERVAL_S = 0.1

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        super().__init__(stream)
        self._drawn = False
        self._last_draw = 0.0

    def progress(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if now - self._last_draw < self.INTERVAL_S and event.fraction < 1.0:
            return
        self._last_draw = now
        filled = int(round(self.WIDTH * min(max(event.fraction, 0.0), 1.0)))
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        text = f"{self._prefix()}{event.stage:<12} |{bar}| {100 * event.fraction:3.0f}% {event.message}"
        columns = shutil.get_terminal_size((80, 24)).columns
        self.stream.write("\r" + text[: columns - 1].ljust(columns - 1))
        self.stream.flush()
        self._drawn = True

    def note(self, text: str) -> None:
        self.close()
        super().note(text)

    def close(self) -> None:
        """Erase the bar: what follows (summary, error) starts on a clean line."""
        if self._drawn:
            columns = shutil.get_terminal_size((80, 24)).columns
            self.stream.write("\r" + " " * (columns - 1) + "\r")
            self.stream.flush()
            self._drawn = False


class JsonLines(Reporter):
    """The machine-readable stream of docs/ENGINE_API.md (the Slicer module's worker protocol)."""

    def __init__(self, out: Optional[TextIO] = None, stream: Optional[TextIO] = None) -> None:
        super().__init__(stream)
        self.out = out or sys.stdout

    def progress(self, event: ProgressEvent) -> None:
        payload: Dict[str, Any] = {"event": "progress", "stage": event.stage, "fraction": event.fraction,
                                   "message": event.message}
        if self.label:
            payload["id"] = self.label
        emit_json(payload, self.out)

    def note(self, text: str) -> None:
        self.stream.write(f"learngn: {self._prefix()}{text}\n")
        self.stream.flush()

    def done(self, payload: Dict[str, Any]) -> None:
        emit_json({"event": "done", **payload}, self.out)


def make_reporter(mode: str) -> Reporter:
    """The reporter for ``--progress MODE``."""
    if mode == "jsonl":
        return JsonLines()
    if mode == "none":
        return Reporter()
    return ProgressBar() if sys.stderr.isatty() else StageLines()
