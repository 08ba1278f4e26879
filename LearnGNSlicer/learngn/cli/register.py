"""``learngn register FIXED MOVING -o OUTDIR``: one pair, the Slicer module's worker (docs/ENGINE_API.md)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..io import SUPPORTED_IMAGES, SUPPORTED_TRANSFORMS
from .cancel import CancelOnSignal
from .options import add_output_options, add_settings_options, check_segmentations, output_options, \
    registration_options
from .pipeline import OPTIONAL_INPUTS, InputPaths, describe, run_pair
from .progress import make_reporter

OPTIONAL_HELP = {
    "fixed_mask": "label image on the fixed grid; nonzero = where the images are compared",
    "moving_mask": "label image on the moving grid; nonzero = where the images are compared",
    "fixed_segmentation": "label map (integers) of the fixed image: Dice in the summary, distance-map features",
    "moving_segmentation": "label map (integers) of the moving image",
    "initial_transform": f"starting transform, fixed -> moving physical points; {SUPPORTED_TRANSFORMS}",
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "register", help="register one moving image to a fixed image",
        description="Register MOVING to FIXED and write warped.nii.gz, transform.h5 (ITK, fixed -> moving), "
                    "displacement.nii.gz (LPS mm, x_moving = x_fixed + d(x_fixed)), summary.json and "
                    f"report.png into OUTDIR. Images: {SUPPORTED_IMAGES}.",
        epilog="Exit codes: 0 done, 1 failed, 2 bad input, 130 cancelled (SIGINT/SIGTERM; nothing is written).")
    parser.add_argument("fixed", metavar="FIXED", help="fixed image (the results are on its grid)")
    parser.add_argument("moving", metavar="MOVING", help="moving image (the one that is warped)")
    inputs = parser.add_argument_group("optional inputs")
    for name in OPTIONAL_INPUTS:
        inputs.add_argument("--" + name.replace("_", "-"), dest=name, metavar="FILE", help=OPTIONAL_HELP[name])
    add_settings_options(parser)
    add_output_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    registration = registration_options(args)
    output = output_options(args)
    paths = InputPaths(args.fixed, args.moving, **{name: getattr(args, name) for name in OPTIONAL_INPUTS})
    check_segmentations(registration, paths.given())
    reporter = make_reporter(args.progress)
    try:
        with CancelOnSignal() as cancel:
            summary = run_pair(paths, Path(args.output), registration, output, reporter, cancel, args.command_line)
    finally:
        reporter.close()
    reporter.done({"outdir": summary["outdir"], "summary": summary})
    if args.progress != "jsonl":
        print("\n".join(describe(summary)))
    return 0
