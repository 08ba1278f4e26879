"""The worker hands its result over as small, uncompressed files, and the transform node built from them maps
points like the engine's transform file (the real worker, on an oblique, anisotropic fixed volume)."""
import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from LearnGNSlicerLib.logic import RegistrationLogic
from LearnGNSlicerLib.worker import DISPLACEMENT_FILE, WARPED_FILE, WorkerLauncher, register_arguments
from slicer_test_helpers import MODULE_DIR, add_volume, ijk_to_ras, rotation
from test_slicer_engine_cli import phantom

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(MODULE_DIR, "learngn", "__main__.py")),
                                reason="the engine's command line (learngn/__main__.py) is not written yet")

#: The node must map every point like transform.h5 within this distance (mm).
EXACT_MM = 0.05
LPS_FROM_RAS = np.array([-1.0, -1.0, 1.0])


def test_worker_is_asked_for_uncompressed_control_grid_files():
    arguments = register_arguments("f.nrrd", "m.nrrd", "out")
    at = arguments.index("--field-format")
    assert arguments[at + 1] == "control-grid" and "--uncompressed" in arguments
    assert WARPED_FILE == "warped.nii" and DISPLACEMENT_FILE.endswith(".nrrd")


def test_transform_node_maps_points_like_the_engines_transform_file(scene):
    directions = rotation(2, 20.0) @ rotation(0, -10.0)
    fixed = add_volume(scene, phantom(), ijk_to_ras(spacing=(1.6, 1.6, 2.5), origin=(-40.0, -38.0, -50.0),
                                                    directions=directions), "fixed")
    moving = add_volume(scene, phantom(shift_mm=(6.0, -4.0, 2.0)),
                        ijk_to_ras(spacing=(2.0, 2.0, 2.0), origin=(-48.0, -44.0, -40.0)), "moving")
    logic = RegistrationLogic(launcher=WorkerLauncher(python=sys.executable), probe_gpu=False)
    job = logic.start(fixed, moving, device="cpu", iterations=3, use_timer=False, keep_files=True)
    try:
        result = job.wait(timeout=600)
        output = os.path.join(job.folder, "output")
        header = open(os.path.join(output, DISPLACEMENT_FILE), "rb").read(1000).decode("latin-1")
        assert "encoding: raw" in header and "type: float" in header, header
        field = sitk.ReadImage(os.path.join(output, DISPLACEMENT_FILE))
        stride = result.summary["settings"]["grid_stride"]
        assert field.GetSpacing()[0] == pytest.approx(stride * result.summary["metrics"]["working_spacing_mm"])
        engine = sitk.ReadTransform(os.path.join(output, "transform.h5"))
    finally:
        import shutil

        shutil.rmtree(job.folder, ignore_errors=True)
    from_parent = result.transform_node.GetTransformFromParent()
    rng = np.random.default_rng(0)
    size = np.array(fixed.GetImageData().GetDimensions()) - 1
    matrix = ijk_to_ras(spacing=(1.6, 1.6, 2.5), origin=(-40.0, -38.0, -50.0), directions=directions)
    largest, errors = 0.0, []
    for ijk in rng.uniform(0.0, 1.0, (300, 3)) * size:
        ras = (matrix @ np.array([*ijk, 1.0]))[:3]
        expected = np.array(engine.TransformPoint(tuple(ras * LPS_FROM_RAS))) * LPS_FROM_RAS
        moved = np.array(from_parent.TransformPoint(tuple(ras)))
        errors.append(np.linalg.norm(moved - expected))
        largest = max(largest, np.linalg.norm(expected - ras))
    assert largest > 3.0  # the pre-alignment's shift is part of what is compared
    assert max(errors) < EXACT_MM, max(errors)
