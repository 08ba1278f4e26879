"""``learngn demo``: register built-in sample data and check the result against the known truth.

A generated CT-like phantom and a copy deformed by a known smooth field (``learngn.phantom``), so a
new user sees the whole pipeline and its accuracy in seconds, without any data of their own.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
import SimpleITK as sitk

from ..io import write_displacement, write_image
from ..phantom import Motion, sample_pair
from ..progress import ProgressEvent
from ..register import RegistrationResult
from .cancel import CancelOnSignal
from .options import add_output_options, add_settings_options, output_options, registration_options
from .pipeline import Inputs, describe, number, register_and_write
from .progress import make_reporter
from .staging import check_output_folder

DEFAULT_OUTDIR = "learngn-demo"
#: Sample grid: a 288 x 252 x 288 mm field of view at 4.5 mm, deformed by up to 12 mm and moved as between two
#: scans (8 degrees, 6% larger, shifted by 21 mm), so that the images differ visibly before registration.
SIZE = (64, 56, 64)
SPACING_MM = 4.5
MAX_DISPLACEMENT_MM = 12.0
MOTION = Motion(translation_mm=(12.0, -9.0, 15.0), rotation_deg=8.0, scale=1.06)
INPUT_FILES = {"fixed": "fixed.nii.gz", "moving": "moving.nii.gz", "fixed_segmentation": "fixed_labels.nii.gz",
               "moving_segmentation": "moving_labels.nii.gz"}
TRUTH_FILE = "true_displacement.nii.gz"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help="register built-in sample data and compare with the true deformation",
        description="Generate a phantom CT pair with a known deformation, register it and write the files of "
                    f"'learngn register' plus the inputs ({', '.join(INPUT_FILES.values())}) and the true field "
                    f"({TRUTH_FILE}). Prints the error of the recovered field inside the body.")
    parser.add_argument("--seed", type=int, default=0, help="another seed gives another deformation (default 0)")
    add_settings_options(parser)
    add_output_options(parser, output_default=DEFAULT_OUTDIR)
    return parser


def field_error(recovered: sitk.Image, truth: sitk.Image, body: sitk.Image) -> Dict[str, float]:
    """Distance (mm) between recovered and true displacement at the voxels inside the body (labels > 0)."""
    inside = sitk.GetArrayViewFromImage(body) > 0
    true = sitk.GetArrayFromImage(truth)[inside]
    error = np.linalg.norm(sitk.GetArrayFromImage(recovered)[inside] - true, axis=-1)
    magnitude = np.linalg.norm(true, axis=-1)
    return {"mean_error_mm": float(error.mean()), "p95_error_mm": float(np.percentile(error, 95)),
            "max_error_mm": float(error.max()), "mean_true_displacement_mm": float(magnitude.mean()),
            "max_true_displacement_mm": float(magnitude.max())}


def run(args: argparse.Namespace) -> int:
    registration = registration_options(args)
    output = output_options(args)
    outdir = Path(args.output).resolve()
    check_output_folder(outdir, output.overwrite)
    reporter = make_reporter(args.progress)
    try:
        with CancelOnSignal() as cancel:
            reporter.progress(ProgressEvent("prepare", 0.0, "generating the sample pair (phantom CT, known field)"))
            started = time.perf_counter()
            fixed, moving, fixed_labels, moving_labels, truth = sample_pair(SIZE, SPACING_MM, MAX_DISPLACEMENT_MM,
                                                                            seed=args.seed, motion=MOTION)
            timings = {"generate": time.perf_counter() - started}
            images = {"fixed": fixed, "moving": moving, "fixed_segmentation": fixed_labels,
                      "moving_segmentation": moving_labels}
            inputs = Inputs(images, paths={role: str(outdir / name) for role, name in INPUT_FILES.items()})

            def write_truth(result: RegistrationResult, folder: Path) -> Dict[str, Any]:
                for role, name in INPUT_FILES.items():
                    write_image(images[role], folder / name)
                write_displacement(truth, folder / TRUTH_FILE)
                return {"demo": {"seed": args.seed, "true_displacement": TRUTH_FILE,
                                 **field_error(result.displacement, truth, fixed_labels)}}

            summary = register_and_write(inputs, outdir, registration, output, reporter, cancel,
                                         args.command_line, timings, extra=write_truth)
    finally:
        reporter.close()
    reporter.done({"outdir": summary["outdir"], "summary": summary})
    if args.progress != "jsonl":
        demo = summary["demo"]
        print("\n".join(describe(summary)))
        print(f"recovered vs true field inside the body: mean error {number(demo['mean_error_mm'], '.2f')} mm "
              f"(95th percentile {number(demo['p95_error_mm'], '.2f')} mm) for a true displacement of "
              f"{number(demo['mean_true_displacement_mm'], '.2f')} mm on average, "
              f"{number(demo['max_true_displacement_mm'], '.1f')} mm at most")
        print(f"next: learngn register {outdir / INPUT_FILES['fixed']} {outdir / INPUT_FILES['moving']} -o OUTDIR")
    return 0
