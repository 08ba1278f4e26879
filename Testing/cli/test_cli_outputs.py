"""What ``learngn register`` writes by default and on request: one compact transform file that maps points
like the full-grid field, the control-grid field for the Slicer module (uncompressed float32 NRRD), the
warped image in the moving image's pixel type, and timings that say what they cover."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from cli_helpers import QUICK, learngn

#: The compact transform must map every fixed voxel like the full-grid field within this distance (mm).
EXACT_MM = 0.05


def field_of(transform: sitk.Transform, reference: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(), reference.GetSpacing(),
        reference.GetDirection()))


def test_default_is_one_compact_transform_that_maps_like_the_full_grid_field(images, registered):
    """transform.h5: the affine and the field on the control grid (a composite), far smaller than the
    full-grid field of displacement.nii.gz (asked for here) and mapping every fixed voxel like it."""
    outdir, _ = registered
    fixed = sitk.ReadImage(str(images["fixed"]))
    transform = sitk.ReadTransform(str(outdir / "transform.h5"))
    parts = [transform.GetNthTransform(i) for i in range(transform.GetNumberOfTransforms())]
    assert [part.GetName() for part in parts] == ["AffineTransform", "DisplacementFieldTransform"]
    control = sitk.DisplacementFieldTransform(parts[1]).GetDisplacementField()
    summary = json.loads((outdir / "summary.json").read_text())
    stride = summary["settings"]["grid_stride"]
    assert control.GetSpacing()[0] == pytest.approx(stride * summary["metrics"]["working_spacing_mm"])
    full = sitk.ReadImage(str(outdir / "displacement.nii.gz"))
    assert full.GetPixelID() == sitk.sitkVectorFloat32
    difference = np.linalg.norm(field_of(transform, fixed) - sitk.GetArrayFromImage(full), axis=-1)
    assert difference.max() < EXACT_MM, difference.max()


def test_one_transform_file_by_default_and_timings_that_say_what_they_cover(images, tmp_path):
    outdir = tmp_path / "out"
    run = learngn("register", images["fixed"], images["moving"], "-o", outdir, "--iterations", "2", "--progress",
                  "none")
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in outdir.iterdir()) == ["report.png", "summary.json", "transform.h5", "warped.nii.gz"]
    summary = json.loads((outdir / "summary.json").read_text())
    timings, cover = summary["timings_s"], summary["timings_cover"]
    assert set(timings) == set(cover), (sorted(timings), sorted(cover))
    assert "register()" in cover["total"] and "Python" in cover["wall"]
    assert timings["since_process_start"] >= timings["wall"] >= timings["total"]
    assert "since the command started" in run.stdout and "register()" in run.stdout


def test_slicer_handover_is_uncompressed_float32_on_the_control_grid(images, tmp_path):
    """--field-format control-grid --uncompressed: what the Slicer module's worker asks for."""
    outdir = tmp_path / "out"
    run = learngn("register", images["fixed"], images["moving"], "-o", outdir, "--field-format", "control-grid",
                  "--uncompressed", *QUICK)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in outdir.iterdir()) == ["displacement_control_grid.nrrd", "summary.json",
                                                         "transform.h5", "warped.nii"]
    path = outdir / "displacement_control_grid.nrrd"
    header = path.read_bytes()[:1000].decode("latin-1")
    assert "encoding: raw" in header and "type: float" in header, header
    field = sitk.ReadImage(str(path))
    assert field.GetMetaData("displacement field type") == "resampling"
    summary = json.loads((outdir / "summary.json").read_text())
    stride = summary["settings"]["grid_stride"]
    assert field.GetSpacing()[0] == pytest.approx(stride * summary["metrics"]["working_spacing_mm"])
    fixed = sitk.ReadImage(str(images["fixed"]))
    interpolated = field_of(sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64)), fixed)
    written = field_of(sitk.ReadTransform(str(outdir / "transform.h5")), fixed)
    assert np.abs(interpolated - written).max() < EXACT_MM
    assert summary["outputs"]["warped"] == "warped.nii"


def test_warped_image_keeps_an_integer_pixel_type(images, tmp_path):
    """A CT in int16 gives an int16 warped image: half the bytes of float32, rounded to the nearest unit."""
    folder = tmp_path / "int16"
    folder.mkdir()
    paths = {}
    for role in ("fixed", "moving"):
        paths[role] = folder / f"{role}.nii.gz"
        sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(images[role])), sitk.sitkInt16), str(paths[role]))
    outdir = tmp_path / "out"
    run = learngn("register", paths["fixed"], paths["moving"], "-o", outdir, *QUICK)
    assert run.returncode == 0, run.stderr
    warped = sitk.ReadImage(str(outdir / "warped.nii.gz"))
    assert warped.GetPixelID() == sitk.sitkInt16
    moving = sitk.ReadImage(str(paths["moving"]))
    expected = sitk.Resample(moving, warped, sitk.ReadTransform(str(outdir / "transform.h5")), sitk.sitkLinear,
                             float(sitk.GetArrayViewFromImage(moving).min()), sitk.sitkFloat32)
    assert np.abs(sitk.GetArrayFromImage(warped) - sitk.GetArrayFromImage(expected)).max() <= 0.51
