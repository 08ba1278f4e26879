"""Time of the learned predictors: the Gauss-Newton terms at inference and one training step.

The predictors' 3D convolutions have 2 to 8 channels; their speed on the CPU depends on whether the
feature channels are batched and on whether oneDNN is on.  This measures, in the same run, the engine's
path (channels batched up to ``CHANNEL_BATCH_VOXELS``) one channel per call and batched, with oneDNN on
and off, at inference (the terms of one GN iteration on a whole working grid) and in training (forward and
backward through unrolled GN on a crop), and prints the ratios against the one-channel, oneDNN-off
baseline.

    python benchmarks/benchmark_predictors.py --threads 1
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LearnGNSlicer"))

from learngn import gauss_newton as gn  # noqa: E402
from learngn.settings import RegistrationSettings  # noqa: E402
from learngn.predictors import GaussNewtonPredictors  # noqa: E402


def perturbed_predictors() -> GaussNewtonPredictors:
    """Predictors with non-zero branches (as after training), so every convolution runs."""
    torch.manual_seed(0)
    model = GaussNewtonPredictors()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return model


def seconds(run: Callable[[], None], repeats: int) -> float:
    run()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - started) / repeats


def inference(model, shape: Tuple[int, ...], channels: int) -> Callable[[], None]:
    generator = torch.Generator().manual_seed(1)
    warped = torch.rand(1, channels, *shape, generator=generator)
    fixed = torch.rand(1, channels, *shape, generator=generator)

    def run() -> None:
        with torch.no_grad():
            gn.gauss_newton_terms(warped, fixed, None, model, 2)
    return run


def training_step(model, crop: int, channels: int) -> Callable[[], None]:
    generator = torch.Generator().manual_seed(2)
    fixed = torch.rand(1, channels, crop, crop, crop, generator=generator)
    moving = torch.rand(1, channels, crop, crop, crop, generator=generator)
    config = RegistrationSettings(iterations=5, grid_stride=2, lambda_start=0.02, lambda_end=0.004)

    def run() -> None:
        model.zero_grad()
        displacement = gn.gauss_newton(fixed, moving, config, predictors=model)
        ((gn.warp(moving, displacement) - fixed) ** 2).mean().backward()
    return run


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--channels", type=int, default=13, help="feature channels (13 organ distance maps)")
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 53, 85),
                        help="working grid at inference (a 192x160x256 scan at 6 mm)")
    parser.add_argument("--crop", type=int, default=32, help="training crop, voxels per side")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="TF32 acceleration")
    model = perturbed_predictors()
    batched = gn.CHANNEL_BATCH_VOXELS
    cases = [("inference: GN terms of one iteration", inference(model, tuple(args.shape), args.channels)),
             ("training: one step, 5 unrolled iterations", training_step(model, args.crop, args.channels))]
    print(f"{args.channels} channels, grid {tuple(args.shape)}, crop {args.crop}^3, {args.threads} thread(s), "
          f"torch {torch.__version__}\n")
    print("| workload | channels per call | oneDNN | time (s) | ratio to 1 channel, oneDNN off |")
    print("|---|---|---|---|---|")
    try:
        for name, run in cases:
            baseline = None
            for per_call, batch_voxels in (("1", 1), ("batched", batched)):
                gn.CHANNEL_BATCH_VOXELS = batch_voxels
                for onednn in (False, True):
                    with torch.backends.mkldnn.flags(enabled=onednn):
                        elapsed = seconds(run, args.repeats)
                    baseline = baseline or elapsed
                    print(f"| {name} | {per_call} | {'on' if onednn else 'off'} | {elapsed:.3f} | "
                          f"{elapsed / baseline:.2f} |")
    finally:
        gn.CHANNEL_BATCH_VOXELS = batched
    return 0


if __name__ == "__main__":
    sys.exit(main())
