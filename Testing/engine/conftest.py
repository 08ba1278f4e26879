"""Fixtures of the engine tests: small generated images, and registrations shared by several tests.

Registrations are the slow part of this suite (tens of seconds each on a slow CPU), so the one that
several tests inspect runs once per session here.  Everything is generated and seeded, except the
real-CT test, which uses the shared data folder (``data_dir``, skipped when absent).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List

import pytest
import SimpleITK as sitk

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from engine_helpers import image_state, make_phantom  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def torch_threads():
    """One intra-op thread unless LEARNGN_TEST_THREADS says otherwise.

    On a small, shared CPU (2 cores and other jobs), PyTorch's thread pool makes these small problems
    several times slower (measured: a 64x56x64 registration 17 s with 2 threads, 3.7 s with 1), so the
    suite's run time would depend on the machine's load.  Results do not depend on the thread count.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("LEARNGN_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def small_phantom():
    """(image, labels) of a 48x40x48 phantom at 6 mm (288 x 240 x 288 mm field of view)."""
    return make_phantom()


@pytest.fixture(scope="session")
def tiny_pair():
    """A quick fixed/moving pair (32x28x32 at 9 mm, float HU, not label-like) for input-handling tests."""
    fixed, _ = make_phantom(size=(32, 28, 32), spacing=9.0, seed=3)
    moving, _ = make_phantom(size=(32, 28, 32), spacing=9.0, seed=4)
    return fixed, moving


@dataclass
class RecordedRegistration:
    """A registration run once per session, with what the tests of it need."""

    result: Any
    events: List[Any] = field(default_factory=list)
    inputs_before: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    inputs: Dict[str, sitk.Image] = field(default_factory=dict)


@pytest.fixture(scope="session")
def phantom_registration(phantom_pair):
    """The generic preset (affine pre-alignment, MIND, classic GN) on the 12 mm phantom pair.

    The images handed in are private copies, so the inputs-not-modified test can compare them with the
    snapshots taken before the call without other tests' use of ``phantom_pair`` getting in the way.
    """
    import learngn

    fixed, moving = phantom_pair[0], phantom_pair[1]
    fixed_in, moving_in = sitk.Image(fixed), sitk.Image(moving)
    before = {"fixed": image_state(fixed_in), "moving": image_state(moving_in)}
    events: List[Any] = []
    result = learngn.register(fixed_in, moving_in, progress=events.append)
    return RecordedRegistration(result=result, events=events, inputs_before=before,
                                inputs={"fixed": fixed_in, "moving": moving_in})
