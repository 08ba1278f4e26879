"""Headless tests of the Slicer module against the real MRML libraries (PyPI ``slicer-core``).

``importorskip`` only guards machines without slicer-core; in CI it is installed and these run.
"""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MODULE_DIR = os.path.join(REPO, "LearnGNSlicer")
for path in (HERE, MODULE_DIR):
    if path not in sys.path:
        sys.path.insert(0, path)

slicer = pytest.importorskip("slicer", reason="slicer-core (the MRML libraries) is not installed")


@pytest.fixture
def scene():
    """A fresh MRML scene, also set as ``slicer.mrmlScene`` for ``slicer.util``."""
    new_scene = slicer.vtkMRMLScene()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = new_scene
    yield new_scene
    new_scene.Clear(1)
    slicer.mrmlScene = previous


@pytest.fixture(autouse=True)
def one_process_per_run(monkeypatch):
    """The module's default is the warm worker; these tests follow one worker process per run unless they
    ask for the warm worker (``warm_worker=True``), so that no process outlives its test."""
    from LearnGNSlicerLib.warm import ENVIRONMENT_VARIABLE

    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "0")


@pytest.fixture(scope="session", autouse=True)
def segmentation_converters():
    """Slicer's Segmentations module registers these rules at startup; slicer-core does not."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.GetConverterRules() is None or len(factory.GetConverterRules()) == 0:
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
