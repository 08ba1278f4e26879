"""End to end with the real worker: ``python -m learngn register`` (docs/ENGINE_API.md).

Skipped only while the engine's command line does not exist yet (learngn/__main__.py).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from LearnGNSlicerLib.geometry import sample_in_world, voxels, world_grid
from LearnGNSlicerLib.job import JobState, RegistrationCancelled
from LearnGNSlicerLib.logic import RegistrationLogic
from LearnGNSlicerLib.metrics import normalized_cross_correlation
from LearnGNSlicerLib.worker import WorkerLauncher
from slicer_test_helpers import MODULE_DIR, add_linear_transform, add_volume, assert_unchanged, ijk_to_ras, snapshot, translation

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(MODULE_DIR, "learngn", "__main__.py")),
                                reason="the engine's command line (learngn/__main__.py) is not written yet")

STAGES = ["prepare", "prealign", "features", "gauss-newton", "output"]
SHAPE = (40, 44, 48)


def phantom(shift_mm=(0.0, 0.0, 0.0), spacing=2.0):
    """Two overlapping ellipsoids and a bar, smooth edges, on a 2 mm grid; ``shift_mm`` in RAS (i, j, k axes)."""
    k, j, i = np.indices(SHAPE).astype(float) * spacing
    i, j, k = i - shift_mm[0], j - shift_mm[1], k - shift_mm[2]
    centre = np.array(SHAPE[::-1]) * spacing / 2
    body = ((i - centre[0]) / 30) ** 2 + ((j - centre[1]) / 26) ** 2 + ((k - centre[2]) / 22) ** 2
    organ = ((i - centre[0] - 8) / 10) ** 2 + ((j - centre[1] + 4) / 8) ** 2 + ((k - centre[2]) / 9) ** 2
    bar = np.abs(i - centre[0] + 12) < 3
    def inside(r2):  # smooth 1 inside, 0 outside
        return 1 / (1 + np.exp(np.clip((r2 - 1) * 12, -50, 50)))

    image = 100 * inside(body) + 80 * inside(organ) + 40 * bar * (body < 1)
    return image.astype(np.float32)


@pytest.fixture
def pair(scene):
    matrix = ijk_to_ras(spacing=(2.0, 2.0, 2.0), origin=(-48.0, -44.0, -40.0))
    fixed = add_volume(scene, phantom(), matrix, "fixed")
    moving = add_volume(scene, phantom(shift_mm=(6.0, -4.0, 2.0)), matrix, "moving")
    return fixed, moving


def logic():
    return RegistrationLogic(launcher=WorkerLauncher(python=sys.executable), probe_gpu=False)


def test_cli_help_lists_the_contract_options():
    env = dict(os.environ, PYTHONPATH=MODULE_DIR)
    output = subprocess.run([sys.executable, "-m", "learngn", "register", "--help"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert output.returncode == 0, output.stderr
    for option in ("--fixed-mask", "--moving-segmentation", "--preset", "--device", "--iterations", "--grid-stride",
                   "--regularisation", "--prealign", "--progress", "--overwrite"):
        assert option in output.stdout


def test_real_registration_improves_alignment_and_matches_the_transform(scene, pair):
    fixed, moving = pair
    before = [snapshot(fixed), snapshot(moving)]
    progress = []

    result = logic().register(fixed, moving, device="cpu", on_progress=progress.append, timeout=600)

    grid = world_grid(fixed)[0]
    fixed_voxels = voxels(fixed)
    warped_voxels = voxels(result.warped_node)
    ncc_before = normalized_cross_correlation(fixed_voxels, sample_in_world(moving, grid))
    ncc_after = normalized_cross_correlation(fixed_voxels, warped_voxels)
    assert ncc_after > ncc_before + 0.05, (ncc_before, ncc_after)

    # The transform node resamples the moving volume like the engine's warped output did.
    moving_copy = add_volume(scene, voxels(moving), world_grid(moving)[0].ijk_to_ras, "moving copy")
    moving_copy.SetAndObserveTransformNodeID(result.transform_node.GetID())
    through_transform = sample_in_world(moving_copy, grid)
    inside = fixed_voxels > 5
    assert normalized_cross_correlation(through_transform, warped_voxels, inside) > 0.99

    seen = [p.stage for p in progress if p.stage in STAGES]
    assert list(dict.fromkeys(seen)) == [s for s in STAGES if s in seen] and "gauss-newton" in seen
    assert [p.fraction for p in progress] == sorted(p.fraction for p in progress)
    assert result.device.startswith("cpu")
    for state, node in zip(before, pair):
        assert_unchanged(state, node)


def test_real_registration_respects_a_parent_transform_on_moving(scene, pair):
    fixed, moving = pair
    # Undo most of the phantom shift with a parent transform: the registration starts nearly aligned.
    moving.SetAndObserveTransformNodeID(add_linear_transform(scene, translation(-6.0, 4.0, -2.0)).GetID())
    grid = world_grid(fixed)[0]
    ncc_start = normalized_cross_correlation(voxels(fixed), sample_in_world(moving, grid))

    result = logic().register(fixed, moving, device="cpu", timeout=600)

    assert ncc_start > 0.98  # the parent transform was applied when judging the start...
    assert normalized_cross_correlation(voxels(fixed), voxels(result.warped_node)) > ncc_start - 0.01  # ...and by the engine


def test_real_worker_cancel_leaves_the_scene_unchanged(scene, pair):
    count = scene.GetNumberOfNodes()
    stages = []
    job = logic().start(*pair, device="cpu", iterations=100, use_timer=False, on_progress=lambda p: stages.append(p.stage))
    while job.poll() and not any(s in STAGES for s in stages):
        pass
    job.cancel()
    with pytest.raises(RegistrationCancelled):
        job.wait(timeout=60)
    assert job.state == JobState.CANCELLED
    assert scene.GetNumberOfNodes() == count
    assert not os.path.exists(job.folder)


def test_unknown_preset_is_reported_as_bad_input(scene, pair):
    from LearnGNSlicerLib.job import RegistrationFailed

    with pytest.raises(RegistrationFailed) as failure:
        logic().register(*pair, device="cpu", preset="no-such-preset", timeout=300)
    assert failure.value.returncode == 2
    assert "no-such-preset" in str(failure.value)
