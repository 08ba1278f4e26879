"""A worker process whose output is followed without blocking, and which can be cancelled.

Slicer's Python runs on the GUI thread and holds the GIL, so heavy work runs in a separate process.
:class:`WorkerProcess` starts it in its own process group (session on POSIX), reads its stdout and
stderr on two daemon threads that only push lines into a queue, and hands the lines to callbacks
from :meth:`WorkerProcess.poll`, which the caller runs on the main thread: from a Qt timer in the
application (:class:`QtTimerDriver`) or in a loop (:meth:`WorkerProcess.wait`) in scripts and tests.
Cancelling terminates the whole process group, then kills it if it has not exited after a grace
period; ``PythonSlicer`` is a launcher, so killing only the direct child would leave the real
interpreter running.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import threading
import time
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

STDOUT = "stdout"
STDERR = "stderr"

#: Seconds between a polite terminate request and a forced kill.
DEFAULT_TERMINATE_GRACE = 5.0

#: Seconds to keep reading after the process exited, in case a child it left behind holds the pipes.
DRAIN_AFTER_EXIT = 2.0

LineCallback = Callable[[str, str], None]
ExitCallback = Callable[[int], None]


class WorkerProcess:
    """One child process, followed by polling; see the module docstring.

    ``on_line(stream, text)`` gets each output line (``stream`` is ``"stdout"`` or ``"stderr"``),
    ``on_exit(returncode)`` is called once, after the last line.  Both run inside :meth:`poll`.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        on_line: Optional[LineCallback] = None,
        on_exit: Optional[ExitCallback] = None,
        terminate_grace: float = DEFAULT_TERMINATE_GRACE,
        stdin_pipe: bool = False,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.stdin_pipe = stdin_pipe  # requests can be sent (a warm worker); else stdin is closed
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.on_line = on_line
        self.on_exit = on_exit
        self.terminate_grace = terminate_grace
        self.returncode: Optional[int] = None
        self.cancel_requested = False
        self._process: Optional[subprocess.Popen] = None
        self._lines: "queue.Queue[Tuple[str, Optional[str]]]" = queue.Queue()
        self._kill_deadline: Optional[float] = None
        self._streams_open = 0
        self._exited_at: Optional[float] = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "WorkerProcess":
        if self._process is not None:
            raise RuntimeError("The worker process was already started.")
        self._process = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if self.stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            **_new_process_group_options(),
        )
        for name, stream in ((STDOUT, self._process.stdout), (STDERR, self._process.stderr)):
            reader = threading.Thread(target=self._read, args=(name, stream), name=f"LearnGNSlicer {name} reader", daemon=True)
            reader.start()
            self._streams_open += 1
        logging.debug("Started worker process %s: %s", self._process.pid, " ".join(self.argv))
        return self

    def send(self, line: str) -> None:
        """Write one line to the process's stdin (started with ``stdin_pipe``); raises OSError once it is gone."""
        if self._process is None or self._process.stdin is None:
            raise RuntimeError("The worker process takes no input.")
        self._process.stdin.write((line.rstrip("\n") + "\n").encode("utf-8"))
        self._process.stdin.flush()

    def close_input(self) -> None:
        """Close stdin: a warm worker exits when its input ends."""
        if self._process is not None and self._process.stdin is not None and not self._process.stdin.closed:
            try:
                self._process.stdin.close()
            except OSError:
                pass

    def withdraw_cancel(self) -> None:
        """The process stopped what it was doing and stays up (a warm worker): no forced kill is due."""
        self.cancel_requested = False
        self._kill_deadline = None

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process is not None else None

    @property
    def finished(self) -> bool:
        """True once the exit was reported (all output delivered, ``on_exit`` called)."""
        return self.returncode is not None

    def _read(self, name: str, stream) -> None:
        """Reader thread: decode lines and queue them; touches nothing else."""
        try:
            for raw in iter(stream.readline, b""):
                self._lines.put((name, raw.decode("utf-8", errors="replace").rstrip("\r\n")))
        finally:
            stream.close()
            self._lines.put((name, None))  # end of this stream

    # -- polling -----------------------------------------------------------------------------
    def poll(self) -> bool:
        """Deliver pending output; report the exit once both streams ended and the process exited.

        Returns True while there is more to come, False once finished.  Never blocks.
        """
        if self._process is None:
            raise RuntimeError("Start the worker process before polling it.")
        if self.finished:
            return False
        self._escalate_if_due()
        while True:
            try:
                stream, text = self._lines.get_nowait()
            except queue.Empty:
                break
            if text is None:
                self._streams_open -= 1
            elif self.on_line is not None:
                self.on_line(stream, text)
        if self._process.poll() is None:
            return True
        if self._streams_open > 0:
            self._exited_at = self._exited_at or time.monotonic()
            if time.monotonic() - self._exited_at < DRAIN_AFTER_EXIT:
                return True
            logging.warning("Worker process %s exited but its output stayed open; not reading further.", self.pid)
        self.returncode = self._process.returncode  # the daemon readers end with their streams
        if self.on_exit is not None:
            self.on_exit(self.returncode)
        return False

    def wait(
        self,
        timeout: Optional[float] = None,
        interval: float = 0.05,
        between_polls: Optional[Callable[[], None]] = None,
    ) -> int:
        """Poll until finished (blocking mode); ``between_polls`` may e.g. process GUI events.

        Raises ``TimeoutError`` (after cancelling the process) when ``timeout`` seconds pass.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                self.wait(timeout=self.terminate_grace + 5.0)
                raise TimeoutError(f"The worker process did not finish within {timeout:g} s and was stopped.")
            if between_polls is not None:
                between_polls()
            time.sleep(interval)
        assert self.returncode is not None
        return self.returncode

    # -- stopping ----------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the process group to stop (SIGTERM; on Windows the tree is ended at once);
        :meth:`poll` kills it if it is still running after the grace period."""
        if self._process is None or self.finished:
            return
        self.cancel_requested = True
        if self._kill_deadline is None:
            self._kill_deadline = time.monotonic() + self.terminate_grace
            _signal_group(self._process, force=False)

    def kill(self) -> None:
        """Kill the whole process group now (also children that outlived the leader)."""
        if self._process is not None:
            _signal_group(self._process, force=True)

    def _escalate_if_due(self) -> None:
        if self._kill_deadline is not None and time.monotonic() >= self._kill_deadline:
            self._kill_deadline = float("inf")  # once
            logging.warning("Worker process %s did not stop in %.1f s; killing it.", self.pid, self.terminate_grace)
            self.kill()


def _new_process_group_options() -> Dict[str, object]:
    """Popen options that put the child in a group of its own, with no console window on Windows."""
    if os.name == "nt":
        flags = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        return {"creationflags": flags}
    return {"start_new_session": True}


def _signal_group(process: subprocess.Popen, force: bool) -> None:
    """Signal the process and everything it started."""
    if os.name == "nt":
        # Console control events (CTRL_BREAK) only reach processes sharing a console, which the
        # windowless worker does not have: end the tree at once (the worker writes nothing lasting).
        result = subprocess.run(
            ["taskkill", "/F", "/T", "/PID", str(process.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
        )
        if result.returncode != 0 and process.poll() is None:
            process.kill()
        return
    try:
        os.killpg(process.pid, signal.SIGKILL if force else signal.SIGTERM)
    except ProcessLookupError:
        pass  # the group is gone already
    except PermissionError:
        process.kill() if force else process.terminate()


class QtTimerDriver:
    """Calls ``poll()`` from a ``qt.QTimer`` on the GUI thread until it returns False.

    Only used inside the Slicer application (``qt`` is imported on construction, not at import).
    """

    def __init__(self, poll: Callable[[], bool], interval_ms: int = 100) -> None:
        import qt

        self._poll = poll
        self._timer = qt.QTimer()
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._timer.start()

    @property
    def active(self) -> bool:
        return bool(self._timer.isActive())

    def stop(self) -> None:
        self._timer.stop()

    def _tick(self) -> None:
        try:
            more = self._poll()
        except Exception:
            self._timer.stop()
            logging.exception("LearnGNSlicer: following the worker process failed")
            return
        if not more:
            self._timer.stop()
