"""The peer adapters return fields in the engine's convention (LPS mm, fixed -> moving).

Each peer runs only where its package is installed (none is in CI: they are optional and heavy); the
evaluation's numbers beside the learned model are only meaningful if these pass where they ran.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from learngn.phantom import phantom_ct, phantom_geometry, phantom_labels
from learngn.training.peers import PEERS

#: Content of the moving image sits this far (LPS mm) from where it sits in the fixed image.
SHIFT_MM = (8.0, 0.0, -4.0)


@pytest.mark.parametrize("name", sorted(PEERS))
def test_peer_recovers_a_known_translation_in_the_engine_convention(name, tmp_path, monkeypatch):
    if not PEERS[name].available():
        pytest.skip(PEERS[name].missing_note())
    monkeypatch.chdir(tmp_path)  # a peer must leave no files behind in the working directory
    labels = phantom_labels(phantom_geometry((64, 56, 72), 4.0), seed=0)
    fixed = phantom_ct(labels, seed=0, noise_hu=0.0)
    # moving(p) = fixed(p - shift): a fixed point x is found at x + shift in the moving image
    moving = sitk.Resample(fixed, fixed, sitk.TranslationTransform(3, [-s for s in SHIFT_MM]), sitk.sitkLinear, -1000.0)
    field = PEERS[name].run(fixed, moving, None, None)
    assert field.GetSize() == fixed.GetSize() and field.GetNumberOfComponentsPerPixel() == 3
    median = np.median(sitk.GetArrayFromImage(field)[sitk.GetArrayFromImage(labels) > 0], axis=0)
    assert np.allclose(median, SHIFT_MM, atol=1.0), f"{name}: median displacement {median}, expected {SHIFT_MM}"
    assert not list(tmp_path.iterdir()), f"{name} left files in the working directory"
