"""Fixtures of the command-line tests: small generated images on disk and one shared registration.

Images are the engine's phantom at 48 x 40 x 48 voxels of 5 mm (a run takes a few seconds on a CPU);
the moving image is also shifted by 8/-6/5 mm, so the pre-alignment and the physical-space handling
are part of what the tests check.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
import SimpleITK as sitk

from cli_helpers import SHIFT_MM, learngn


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Dict[str, Path]:
    """fixed, moving (shifted), their label maps, and the true field, as NIfTI files."""
    from learngn.phantom import sample_pair

    folder = tmp_path_factory.mktemp("images")
    fixed, moving, fixed_labels, moving_labels, truth = sample_pair(size=(48, 40, 48), spacing=5.0, max_mm=12.0)
    for image in (moving, moving_labels):
        image.SetOrigin([o + s for o, s in zip(image.GetOrigin(), SHIFT_MM)])
    files = {"fixed": fixed, "moving": moving, "fixed_labels": fixed_labels, "moving_labels": moving_labels,
             "truth": truth}
    paths = {}
    for name, image in files.items():
        paths[name] = folder / f"{name}.nii.gz"
        sitk.WriteImage(image, str(paths[name]))
    return paths


@pytest.fixture(scope="session")
def registered(images, tmp_path_factory):
    """One full ``learngn register`` run (segmentations, JSON progress), shared by the output checks."""
    outdir = tmp_path_factory.mktemp("register") / "result"
    run = learngn("register", images["fixed"], images["moving"], "-o", outdir,
                  "--fixed-segmentation", images["fixed_labels"], "--moving-segmentation", images["moving_labels"],
                  "--device", "cpu", "--progress", "jsonl", "--field-format", "nifti")
    assert run.returncode == 0, run.stderr
    return outdir, run
