"""The warm worker (on by default, started when the module opens): one process serves successive registrations, a cancelled run keeps it, a
crashed or killed one is reported and replaced at the next run, and it exits on request."""
import os
import signal
import sys
import time

import numpy as np
import pytest

from LearnGNSlicerLib.job import JobState, RegistrationCancelled, RegistrationFailed
from LearnGNSlicerLib.logic import RegistrationLogic
from LearnGNSlicerLib.warm import ENVIRONMENT_VARIABLE, warm_worker_enabled
from LearnGNSlicerLib.worker import WorkerLauncher
from slicer_test_helpers import MODULE_DIR, add_volume, blob, fake_launcher, ijk_to_ras

SHAPE = (20, 24, 28)
GRID = ijk_to_ras(spacing=(1.0, 1.0, 1.0), origin=(-14.0, -12.0, -10.0))


@pytest.fixture
def volumes(scene):
    return (add_volume(scene, blob(SHAPE, center=(10, 12, 14)), GRID, "fixed"),
            add_volume(scene, blob(SHAPE, center=(10, 12, 18)), GRID, "moving"))


@pytest.fixture
def warm_logic():
    created = []

    def make(launcher):
        logic = RegistrationLogic(launcher=launcher, probe_gpu=False, warm_worker=True)
        created.append(logic)
        return logic

    yield make
    for logic in created:
        logic.stop_worker()


def wait_until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_setting_is_on_unless_turned_off(monkeypatch):
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)
    assert warm_worker_enabled() and RegistrationLogic(probe_gpu=False).worker() is not None
    for off in ("0", "off", "False"):
        monkeypatch.setenv(ENVIRONMENT_VARIABLE, off)
        assert not warm_worker_enabled() and RegistrationLogic(probe_gpu=False).worker() is None
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "1")
    assert warm_worker_enabled()


def test_prepared_worker_serves_the_first_run(scene, volumes, warm_logic):
    logic = warm_logic(fake_launcher(FAKE_LEARNGN_SHIFT_LPS="-4,0,0"))
    logic.prepare_worker()
    pid = logic.worker().pid
    assert logic.worker().running and pid is not None and _alive(pid)
    logic.prepare_worker()  # a second call (the module entered again) starts nothing
    wait_until(lambda: logic.worker().poll() or logic.worker().ready)
    result = logic.register(*volumes, timeout=60)
    assert result.warped_node is not None
    assert logic.worker().pid == pid and logic.worker().starts == 1


def test_prepare_does_nothing_when_the_setting_is_off(monkeypatch):
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "0")
    logic = RegistrationLogic(launcher=fake_launcher(), probe_gpu=False)
    logic.prepare_worker()
    assert logic.worker() is None


def test_one_process_serves_successive_registrations(scene, volumes, warm_logic):
    logic = warm_logic(fake_launcher(FAKE_LEARNGN_SHIFT_LPS="-4,0,0"))
    first = logic.register(*volumes, timeout=60)
    pid = logic.worker().pid
    second = logic.register(*volumes, timeout=60)
    assert logic.worker().pid == pid and logic.worker().starts == 1
    for result in (first, second):
        assert result.transform_node is not None and result.warped_node is not None


def test_cancel_stops_the_run_and_keeps_the_process(scene, volumes, warm_logic):
    logic = warm_logic(fake_launcher(FAKE_LEARNGN_DELAY="0.5"))
    stages = []
    job = logic.start(*volumes, use_timer=False, on_progress=lambda p: stages.append(p.stage))
    while job.poll() and "prealign" not in stages:
        time.sleep(0.02)
    count = scene.GetNumberOfNodes()
    job.cancel()
    with pytest.raises(RegistrationCancelled):
        job.wait(timeout=30)
    assert job.state == JobState.CANCELLED and scene.GetNumberOfNodes() == count
    pid = logic.worker().pid
    assert logic.worker().running
    logic.register(*volumes, timeout=60)
    assert logic.worker().pid == pid and logic.worker().starts == 1


def test_a_crash_is_reported_and_the_next_run_starts_a_new_process(scene, volumes, warm_logic):
    logic = warm_logic(fake_launcher(FAKE_LEARNGN_DELAY="0.5"))
    stages = []
    job = logic.start(*volumes, use_timer=False, on_progress=lambda p: stages.append(p.stage))
    while job.poll() and "prealign" not in stages:
        time.sleep(0.02)
    count = scene.GetNumberOfNodes()
    os.kill(logic.worker().pid, signal.SIGKILL)
    with pytest.raises(RegistrationFailed, match="signal 9"):
        job.wait(timeout=30)
    assert scene.GetNumberOfNodes() == count
    result = logic.register(*volumes, timeout=60)
    assert result.warped_node is not None and logic.worker().starts == 2
    # killed between runs (e.g. by the system): the next run notices and starts another
    os.kill(logic.worker().pid, signal.SIGKILL)
    time.sleep(0.5)
    assert logic.register(*volumes, timeout=60).warped_node is not None
    assert logic.worker().starts == 3


def test_stop_lets_the_process_exit(scene, volumes, warm_logic):
    logic = warm_logic(fake_launcher())
    logic.register(*volumes, timeout=60)
    pid = logic.worker().pid
    logic.stop_worker()
    assert not logic.worker().running
    wait_until(lambda: not _alive(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie that was not reaped yet counts as gone
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isfile(os.path.join(MODULE_DIR, "learngn", "__main__.py")),
                    reason="the engine's command line is not there")
def test_the_real_engine_serves_two_runs_from_one_process(scene, warm_logic):
    k, j, i = np.indices((24, 28, 32)).astype(np.float32)
    def volume(name, shift):
        array = 100.0 / (1.0 + np.exp(((i - 16 - shift) / 8) ** 2 + ((j - 14) / 7) ** 2 + ((k - 12) / 6) ** 2 - 1))
        return add_volume(scene, array.astype(np.float32), ijk_to_ras(spacing=(3.0, 3.0, 3.0)), name)
    fixed, moving = volume("fixed", 0.0), volume("moving", 1.5)
    logic = warm_logic(WorkerLauncher(python=sys.executable))
    for _ in range(2):
        result = logic.register(fixed, moving, device="cpu", iterations=1, timeout=600)
        assert result.warped_node is not None
    assert logic.worker().starts == 1
    timings = result.summary["timings_s"]  # the second run's process-age timing counts from its request
    assert timings["since_process_start"] < timings["wall"] + 1.0, str(timings)
