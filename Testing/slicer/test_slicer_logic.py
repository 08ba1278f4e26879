"""The registration logic without the widget, against a fake engine that follows the CLI contract."""
import os

import numpy as np
import pytest

import slicer
from LearnGNSlicerLib.devices import forget_gpu_info
from LearnGNSlicerLib.geometry import world_grid
from LearnGNSlicerLib.job import JobState, RegistrationCancelled, RegistrationFailed
from LearnGNSlicerLib.logic import RegistrationLogic
from slicer_test_helpers import (
    add_linear_transform, add_volume, assert_unchanged, blob, fake_launcher, ijk_to_ras, snapshot, translation, voxel_ras,
)

SHAPE = (20, 24, 28)
GRID = ijk_to_ras(spacing=(1.0, 1.0, 1.0), origin=(-14.0, -12.0, -10.0))


@pytest.fixture
def volumes(scene):
    fixed = add_volume(scene, blob(SHAPE, center=(10, 12, 14)), GRID, "fixed")   # peak at RAS (0, 0, 0)
    moving = add_volume(scene, blob(SHAPE, center=(10, 12, 18)), GRID, "moving")  # peak at RAS (4, 0, 0)
    return fixed, moving


def logic_for(**environment):
    return RegistrationLogic(launcher=fake_launcher(**environment), probe_gpu=False)


def peak_ras(node):
    array = slicer.util.arrayFromVolume(node)
    k, j, i = np.unravel_index(np.argmax(array), array.shape)
    return voxel_ras(node, (i, j, k))


def test_register_creates_transform_and_warped_volume(scene, volumes):
    fixed, moving = volumes
    before = [snapshot(fixed), snapshot(moving)]
    progress = []

    result = logic_for(FAKE_LEARNGN_SHIFT_LPS="-4,0,0").register(  # +4 mm R: fixed point -> moving point
        fixed, moving, device="cpu", on_progress=progress.append)

    transform, warped = result.transform_node, result.warped_node
    assert transform.GetClassName() == "vtkMRMLTransformNode"
    assert transform.GetName() == "moving to fixed" and warped.GetName() == "moving warped"
    assert transform.GetTransformFromParent().IsA("vtkOrientedGridTransform")
    assert transform.GetNodeReference("spatialRegistrationFixed") is fixed
    assert transform.GetNodeReference("spatialRegistrationMoving") is moving
    assert world_grid(warped)[0].same_as(world_grid(fixed)[0])  # warped lies on the fixed grid
    np.testing.assert_allclose(peak_ras(warped), peak_ras(fixed), atol=1e-6)  # the fake's shift aligned the blobs
    np.testing.assert_allclose(transform.GetTransformFromParent().TransformPoint(0, 0, 0), (4, 0, 0), atol=1e-9)
    for state, node in zip(before, volumes):
        assert_unchanged(state, node)
    assert result.summary["metrics"]["similarity_after"] == 0.75
    assert "Similarity 0.250 -> 0.750" in result.describe()

    stages = [p.stage for p in progress]
    fractions = [p.fraction for p in progress]
    assert ["prepare", "prealign", "features", "gauss-newton", "output"] == [s for s in dict.fromkeys(stages) if s in
                                                                              ("prepare", "prealign", "features", "gauss-newton", "output")]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and stages[-1] == "done"


def test_settings_reach_the_worker(scene, volumes):
    result = logic_for().register(*volumes, preset="abdomen", device="cpu", iterations=7, grid_stride=3,
                                  regularisation=50.0, prealign="com")
    received = result.summary["received"]
    assert (received["preset"], received["device"], received["iterations"], received["grid_stride"],
            received["regularisation"], received["prealign"]) == ("abdomen", "cpu", 7, 3, 50.0, "com")


def test_parent_transform_of_moving_is_respected(scene, volumes):
    fixed, moving = volumes
    moving.SetAndObserveTransformNodeID(add_linear_transform(scene, translation(-4.0, 0.0, 0.0)).GetID())

    result = logic_for().register(fixed, moving, device="cpu")  # identity field

    received_origin = result.summary["received"]["moving"]["origin"]
    np.testing.assert_allclose(received_origin, (-(-14.0 - 4.0), 12.0, -10.0))  # baked into the exported geometry
    np.testing.assert_allclose(peak_ras(result.warped_node), (0.0, 0.0, 0.0), atol=1e-6)  # shifted blob now on the fixed one
    assert moving.GetTransformNodeID() is not None  # the input keeps its parent transform


def test_existing_output_nodes_are_overwritten(scene, volumes):
    transform = scene.AddNewNodeByClass("vtkMRMLTransformNode", "my transform")
    warped = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my warped")
    count = scene.GetNumberOfNodes()

    result = logic_for().register(*volumes, device="cpu", output_transform=transform, output_volume=warped)

    assert result.transform_node is transform and result.warped_node is warped
    assert transform.GetName() == "my transform"
    assert slicer.util.arrayFromVolume(warped).shape == SHAPE
    new_nodes = [scene.GetNthNode(i) for i in range(count, scene.GetNumberOfNodes())]
    assert all(node.IsA("vtkMRMLDisplayNode") for node in new_nodes)  # only the warped volume's display


@pytest.mark.parametrize("mode, message", [
    ("fail", r"exit code 1\): RuntimeError: simulated engine crash"),
    ("bad-input", "rejected the input: The fixed image is empty"),
    ("no-output", "without writing"),
])
def test_failures_leave_the_scene_as_it_was(scene, volumes, mode, message):
    count = scene.GetNumberOfNodes()
    job = logic_for(FAKE_LEARNGN_MODE=mode).start(*volumes, device="cpu", use_timer=False)

    with pytest.raises(RegistrationFailed, match=message) as failure:
        job.wait(timeout=60)

    assert job.state == JobState.FAILED
    assert scene.GetNumberOfNodes() == count
    assert not os.path.exists(job.folder)
    if mode == "fail":
        assert "Traceback" in failure.value.details


def test_cancel_stops_the_worker_and_adds_nothing(scene, volumes):
    count = scene.GetNumberOfNodes()
    finished = []
    job = logic_for(FAKE_LEARNGN_MODE="slow").start(*volumes, device="cpu", use_timer=False, on_finished=finished.append)
    while job.poll() and job._last_fraction <= 0.05:  # until the worker reported progress
        pass

    job.cancel()
    assert job.state == JobState.CANCELLING
    with pytest.raises(RegistrationCancelled):
        job.wait(timeout=30)

    assert job.state == JobState.CANCELLED and finished == [job]
    assert scene.GetNumberOfNodes() == count
    assert not os.path.exists(job.folder)


def test_timeout_cancels_and_raises(scene, volumes):
    count = scene.GetNumberOfNodes()
    with pytest.raises(TimeoutError, match="within 1 s"):
        logic_for(FAKE_LEARNGN_MODE="slow").register(*volumes, device="cpu", timeout=1)
    assert scene.GetNumberOfNodes() == count


@pytest.mark.parametrize("case, message", [
    ("no fixed", "No fixed volume selected"),
    ("same", "are the same volume"),
    ("output is input", "inputs are never overwritten"),
    ("output transform moves input", "would move that input"),
    ("bad device", "Unknown device 'tpu'"),
])
def test_bad_requests_fail_before_anything_runs(scene, volumes, case, message):
    fixed, moving = volumes
    kwargs = {"device": "cpu"}
    if case == "no fixed":
        fixed = None
    elif case == "same":
        moving = fixed
    elif case == "output is input":
        kwargs["output_volume"] = moving
    elif case == "output transform moves input":
        parent = add_linear_transform(scene, translation(1.0))
        moving.SetAndObserveTransformNodeID(parent.GetID())
        kwargs["output_transform"] = parent
    else:
        kwargs["device"] = "tpu"
    count = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match=message):
        logic_for().register(fixed, moving, **kwargs)
    assert scene.GetNumberOfNodes() == count


def segmentation_from(scene, labels: np.ndarray, names, name):
    labelmap = add_volume(scene, labels, GRID, name + " labels", label=True)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node)
    segmentation = node.GetSegmentation()
    for index, segment_name in enumerate(names):
        segmentation.GetSegment(segmentation.GetNthSegmentID(index)).SetName(segment_name)
    scene.RemoveNode(labelmap)
    return node


def test_masks_and_segmentations_are_sent_on_their_volume_grids(scene, volumes):
    fixed, moving = volumes
    mask = np.zeros((10, 12, 14), np.uint8)
    mask[1:9, 1:11, 1:13] = 5
    fixed_mask = add_volume(scene, mask, ijk_to_ras(spacing=(2, 2, 2), origin=(-14, -12, -10)), "mask", label=True)
    fixed_labels = np.zeros(SHAPE, np.uint8)
    fixed_labels[2:6, 2:6, 2:6] = 1    # 64 voxels "liver"
    fixed_labels[10:13, 10:13, 10:13] = 2   # 27 voxels "spleen"
    moving_labels = np.zeros(SHAPE, np.uint8)
    moving_labels[1:3, 1:3, 1:3] = 1  # 8 voxels "spleen"
    moving_labels[5:10, 5:10, 5:10] = 2  # 125 voxels "Liver"
    moving_labels[15:16, 15:16, 15:16] = 3  # "kidney", only in moving
    fixed_seg = segmentation_from(scene, fixed_labels, ["liver", "spleen"], "fixed seg")
    moving_seg = segmentation_from(scene, moving_labels, ["spleen", "Liver", "kidney"], "moving seg")
    count = scene.GetNumberOfNodes()

    result = logic_for().register(fixed, moving, device="cpu", fixed_mask=fixed_mask,
                                  fixed_segmentation=fixed_seg, moving_segmentation=moving_seg)

    received = result.summary["received"]
    assert received["fixed_mask"]["size"] == received["fixed"]["size"] == [28, 24, 20]
    assert received["fixed_mask"]["labels"] == [0, 1]
    assert received["fixed_mask"]["voxels"]["1"] == 16 * 20 * 24
    assert received["fixed_segmentation"]["voxels"] == {"0": 20 * 24 * 28 - 91, "1": 64, "2": 27}
    assert received["moving_segmentation"]["voxels"] == {"0": 20 * 24 * 28 - 133, "1": 125, "2": 8}  # liver=1 on both
    assert any("kidney" in message for message in result.messages)
    created = {scene.GetNthNode(i).GetName() for i in range(count, scene.GetNumberOfNodes())}
    assert not any("temporary" in name for name in created)  # exported label maps were removed


def test_gpu_probe_falls_back_to_cpu_with_a_message(scene, volumes):
    """Uses the real probe (this Python's torch); on a machine with a usable GPU it keeps 'auto'."""
    forget_gpu_info()
    logic = RegistrationLogic(launcher=fake_launcher(), probe_gpu=True)
    result = logic.register(*volumes, device="auto")
    received = result.summary["received"]["device"]
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    if gpu:
        assert received == "auto"
    else:
        assert received == "cpu"
        assert any("No usable GPU" in message for message in result.messages)


def test_results_are_loaded_when_the_worker_says_done_not_at_its_exit(scene, volumes):
    """The output folder is complete once "done" is printed; the worker's exit (Python's teardown after
    PyTorch, about a second) is not waited for."""
    job = logic_for(FAKE_LEARNGN_EXIT_DELAY="20").start(*volumes, use_timer=False)
    result = job.wait(timeout=15)
    assert job.state == JobState.SUCCEEDED and result.warped_node is not None
    assert job._process._process.poll() is None  # the worker is still exiting
    job._process.kill()
