"""The worker-process runner on a tiny fake worker: progress lines, polling, cancel, kill."""
import os
import sys
import time

import pytest

from LearnGNSlicerLib.process import WorkerProcess
from LearnGNSlicerLib.worker import parse_event
from slicer_test_helpers import FAKE_WORKER


def run_fake(*args, grace=5.0):
    lines, exits = [], []
    process = WorkerProcess([sys.executable, FAKE_WORKER, *args], on_line=lambda s, t: lines.append((s, t)),
                            on_exit=exits.append, terminate_grace=grace)
    return process, lines, exits


def events(lines):
    return [parse_event(text) for stream, text in lines if stream == "stdout" and parse_event(text)]


def test_progress_lines_arrive_in_order_and_exit_is_reported_once():
    process, lines, exits = run_fake("--steps", "4", "--stderr", "a warning", "--garbage")
    returncode = process.start().wait(timeout=30)

    progress = [e for e in events(lines) if e["event"] == "progress"]
    assert returncode == 0 and exits == [0]
    assert [e["fraction"] for e in progress] == [0.25, 0.5, 0.75, 1.0]
    assert events(lines)[-1]["event"] == "done"
    assert ("stderr", "a warning") in lines
    assert ("stdout", "plain log line, not JSON") in lines  # non-JSON output is passed on, not lost
    assert process.poll() is False  # finished stays finished


def test_poll_never_blocks_while_the_worker_sleeps():
    process, lines, exits = run_fake("--steps", "2", "--delay", "1.0")
    process.start()
    started = time.monotonic()
    calls = 0
    while process.poll():  # what a Qt timer does, tick by tick
        calls += 1
        assert time.monotonic() - started < 20
        time.sleep(0.01)
    assert calls > 20  # many quick polls during the 2 s of work, none of them waiting for output
    assert exits == [0]


def test_nonzero_exit_code_is_reported():
    process, lines, exits = run_fake("--steps", "1", "--exit", "3")
    assert process.start().wait(timeout=30) == 3 and exits == [3]


def test_cancel_terminates_a_running_worker_quickly():
    process, lines, exits = run_fake("--steps", "100", "--delay", "0.2")
    process.start()
    while not events(lines):
        process.poll()
        time.sleep(0.01)
    started = time.monotonic()
    process.cancel()
    returncode = process.wait(timeout=30)

    assert time.monotonic() - started < 4
    assert process.cancel_requested
    assert returncode != 0 and len(events(lines)) < 100


@pytest.mark.skipif(os.name == "nt", reason="SIGTERM cannot be ignored on Windows; taskkill is used there")
def test_worker_ignoring_terminate_is_killed_after_the_grace_period():
    process, lines, exits = run_fake("--steps", "100", "--delay", "0.2", "--ignore-term", grace=1.0)
    process.start()
    time.sleep(0.5)
    started = time.monotonic()
    process.cancel()
    returncode = process.wait(timeout=30)

    assert 0.9 < time.monotonic() - started < 6
    assert returncode == -9  # SIGKILL


@pytest.mark.skipif(os.name == "nt", reason="process groups are POSIX; Windows uses taskkill /T")
def test_cancel_also_stops_what_the_worker_started(tmp_path):
    """PythonSlicer is a launcher: the real interpreter is its child, which must die too."""
    pid_file = tmp_path / "grandchild.pid"
    process, lines, exits = run_fake("--steps", "100", "--delay", "0.2", "--grandchild", str(pid_file))
    process.start()
    while not pid_file.exists() or not pid_file.read_text():
        process.poll()
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())

    process.cancel()
    process.wait(timeout=30)

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(grandchild):
        time.sleep(0.05)
    assert not _alive(grandchild)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as dead
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return True


def test_wait_timeout_stops_the_worker_and_raises():
    process, lines, exits = run_fake("--steps", "100", "--delay", "0.2")
    process.start()
    with pytest.raises(TimeoutError, match="did not finish within"):
        process.wait(timeout=0.5)
    assert process.finished


def test_polling_before_start_is_an_error():
    process, _, _ = run_fake()
    with pytest.raises(RuntimeError, match="Start the worker process"):
        process.poll()


@pytest.mark.parametrize("line, expected", [
    ('{"event": "progress", "stage": "features", "fraction": 0.3, "message": ""}', "progress"),
    ('  {"event": "done", "outdir": "x", "summary": {}}  ', "done"),
    ("Traceback (most recent call last):", None),
    ('{"no_event_key": 1}', None),
    ("{broken", None),
])
def test_parse_event(line, expected):
    event = parse_event(line)
    assert (event["event"] if event else None) == expected
