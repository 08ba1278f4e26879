"""The warm worker's own loop, run as ``<Python> -m LearnGNSlicerLib.warm_worker MODULE``: it imports the
engine's command line once (PyTorch, and a CUDA context on first use), then runs one ``learngn register``
request per line of its stdin, ``{"argv": [...], "cwd": "..."}``, writing the usual JSON progress lines and,
after each request, ``{"event": "request-finished", "returncode": N}``.  It exits when its stdin ends (Slicer
closed, or the module asked it to stop).  SIGTERM during a request cancels that request only.

Nothing here imports Slicer, VTK or Qt: it runs in the worker's interpreter, not in Slicer's.
"""
from __future__ import annotations

import ctypes
import importlib
import json
import os
import sys
import time
import traceback
from typing import Callable, Optional, Sequence, TextIO

READY = "ready"
REQUEST_FINISHED = "request-finished"


def entry_point(module: str) -> Callable[[Sequence[str]], int]:
    """``main(argv)`` of the engine's command line (``learngn.cli``) or of a stand-in module with a ``main``."""
    for name in (f"{module}.cli", module):
        try:
            found = importlib.import_module(name)
        except ImportError:
            continue
        if callable(getattr(found, "main", None)):
            return found.main
    raise ImportError(f"{module} has no main(argv) to run requests with")


def _mark_request_start() -> None:
    """Tell the engine's command line that its process-age timing counts from this request."""
    pipeline = sys.modules.get("learngn.cli.pipeline")
    if pipeline is not None and hasattr(pipeline, "REQUEST_STARTED"):
        pipeline.REQUEST_STARTED = time.monotonic()


def _emit(stream: TextIO, payload: dict) -> None:
    stream.write(json.dumps(payload) + "\n")
    stream.flush()


def serve(module: str = "learngn", requests: Optional[TextIO] = None, out: Optional[TextIO] = None) -> int:
    """Answer requests until the input ends; returns the exit code of the worker itself (0)."""
    requests, out = requests or sys.stdin, out or sys.stdout
    main = entry_point(module)
    _emit(out, {"event": READY, "pid": os.getpid()})
    for line in requests:
        try:
            request = json.loads(line)
            argv = [str(a) for a in request["argv"]]
        except (ValueError, KeyError, TypeError):
            continue
        if request.get("cwd"):
            os.chdir(request["cwd"])
        _mark_request_start()
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except Exception:  # a bug in one request must not take the warm process down
            traceback.print_exc()
            code = 1
        sys.stderr.flush()
        _release_memory()
        _emit(out, {"event": REQUEST_FINISHED, "returncode": int(code or 0)})
    return 0


def _release_memory() -> None:
    """Give back what the finished request held, so that an idle worker keeps little more than its imports:
    PyTorch's cached GPU blocks and the C heap's free pages (glibc).  No ``gc.collect()``: with it the next
    request took about 1.5 s longer on the 2-core CPU (the real-engine warm worker test); why was not traced."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows): the allocator keeps its pages
        pass


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1] if len(sys.argv) > 1 else "learngn"))
