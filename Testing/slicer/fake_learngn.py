"""A stand-in for ``python -m learngn register`` that follows docs/ENGINE_API.md's contract.

It "registers" by a constant displacement taken from the environment, so tests know the exact
answer, and records what it received (geometry, masks, labels) in summary.json.

Environment: FAKE_LEARNGN_SHIFT_LPS="x,y,z" (mm, default 0,0,0), FAKE_LEARNGN_MODE = ok | fail |
bad-input | slow | no-output, FAKE_LEARNGN_DELAY (seconds per progress step, default 0).
"""
import argparse
import json
import os
import signal
import sys
import time

import numpy as np
import SimpleITK as sitk

STAGES = ["prepare", "prealign", "features", "gauss-newton", "output"]


def emit(event: dict) -> None:
    print(json.dumps(event), flush=True)


def describe(image: sitk.Image) -> dict:
    return {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()), "origin": list(image.GetOrigin()),
            "direction": list(image.GetDirection())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="learngn")
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register")
    reg.add_argument("fixed")
    reg.add_argument("moving")
    reg.add_argument("-o", "--outdir", required=True)
    for flag in ("--fixed-mask", "--moving-mask", "--fixed-segmentation", "--moving-segmentation", "--initial-transform"):
        reg.add_argument(flag)
    reg.add_argument("--preset", default="generic")
    reg.add_argument("--device", default="auto")
    reg.add_argument("--iterations", type=int)
    reg.add_argument("--grid-stride", type=int)
    reg.add_argument("--regularisation", type=float)
    reg.add_argument("--prealign")
    reg.add_argument("--progress", default="bar")
    reg.add_argument("--overwrite", action="store_true")
    reg.add_argument("--no-report", action="store_true")
    reg.add_argument("--field-format", default="none")
    reg.add_argument("--uncompressed", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))

    mode = os.environ.get("FAKE_LEARNGN_MODE", "ok")
    delay = float(os.environ.get("FAKE_LEARNGN_DELAY", "0"))
    print("fake learngn starting", file=sys.stderr, flush=True)
    if mode == "bad-input":
        emit({"event": "error", "message": "The fixed image is empty; choose another image."})
        return 2
    for index, stage in enumerate(STAGES):
        emit({"event": "progress", "stage": stage, "fraction": index / len(STAGES), "message": stage})
        time.sleep(delay if mode != "slow" else max(delay, 5.0))
        if mode == "fail" and stage == "features":
            print("Traceback (most recent call last):\nRuntimeError: simulated engine crash", file=sys.stderr, flush=True)
            return 1

    fixed = sitk.ReadImage(args.fixed)
    moving = sitk.ReadImage(args.moving, sitk.sitkFloat32)
    shift = np.array([float(v) for v in os.environ.get("FAKE_LEARNGN_SHIFT_LPS", "0,0,0").split(",")])
    # like the engine: the field on a coarser "working grid" over the fixed one (here every 2nd voxel)
    working = sitk.Image([(n + 1) // 2 + 1 for n in fixed.GetSize()], sitk.sitkVectorFloat32, 3)
    working.SetOrigin(fixed.GetOrigin())
    working.SetDirection(fixed.GetDirection())
    working.SetSpacing([2.0 * s for s in fixed.GetSpacing()])
    field = np.zeros((*sitk.GetArrayViewFromImage(working).shape[:3], 3), np.float32) + shift.astype(np.float32)
    displacement = sitk.GetImageFromArray(field, isVector=True)
    displacement.CopyInformation(working)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(displacement, sitk.sitkVectorFloat64))
    warped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)

    received = {"fixed": describe(fixed), "moving": describe(moving), "device": args.device, "preset": args.preset,
                "iterations": args.iterations, "grid_stride": args.grid_stride, "regularisation": args.regularisation,
                "prealign": args.prealign}
    for key in ("fixed_mask", "moving_mask", "fixed_segmentation", "moving_segmentation"):
        path = getattr(args, key)
        if path:
            image = sitk.ReadImage(path)
            values = sitk.GetArrayFromImage(image)
            received[key] = {**describe(image), "labels": sorted(int(v) for v in np.unique(values)),
                             "voxels": {str(int(v)): int((values == v).sum()) for v in np.unique(values)}}
    summary = {"device": "cpu" if args.device == "auto" else args.device,
               "metrics": {"negative_jacobian_percent": 0.0, "similarity_before": 0.25, "similarity_after": 0.75},
               "timings": {"prepare": 0.1, "gauss-newton": 0.2}, "received": received}
    if mode != "no-output":
        os.makedirs(args.outdir, exist_ok=True)
        sitk.WriteImage(warped, os.path.join(args.outdir, "warped.nii" if args.uncompressed else "warped.nii.gz"))
        if args.field_format == "control-grid":
            sitk.WriteImage(displacement, os.path.join(args.outdir, "displacement_control_grid.nrrd"))
        sitk.WriteTransform(transform, os.path.join(args.outdir, "transform.h5"))
        with open(os.path.join(args.outdir, "summary.json"), "w") as file:
            json.dump(summary, file)
    emit({"event": "progress", "stage": "output", "fraction": 1.0, "message": "done"})
    emit({"event": "done", "outdir": args.outdir, "summary": summary})
    time.sleep(float(os.environ.get("FAKE_LEARNGN_EXIT_DELAY", "0")))  # a slow interpreter teardown
    return 0


if __name__ == "__main__":
    sys.exit(main())
