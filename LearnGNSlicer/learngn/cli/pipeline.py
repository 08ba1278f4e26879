"""One registration from inputs to a complete output folder: the work register, batch and demo share.

Order matters for the user: the output folder is checked before anything is read, inputs are read
before the (long) registration, and results are written into a staging folder that only becomes the
output folder once everything, ``summary.json`` last, is on disk.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import SimpleITK as sitk

from ..sampling import resample, shrunk_grid
from ..io import (image_info, in_pixel_type, read_image, read_transform, write_displacement, write_image, write_json,
                  write_transform)
from ..progress import ProgressEvent
from ..register import RegistrationResult, register
from ..report import write_report
from .cancel import CancelOnSignal
from .options import CONTROL_GRID_FIELD, OutputOptions, RegistrationOptions, in_cli_terms
from .progress import Reporter
from .provenance import KEY_ENTRY, result_key
from .staging import check_output_folder, staged_folder

WARPED_FILE = "warped.nii.gz"
TRANSFORM_FILE = "transform.h5"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.png"

#: Timings measured after the engine's stages (listed after them in the summary).
AFTER_REGISTRATION = ("write", "report", "wall", "since_process_start")
#: What each timing covers, written beside them in the summary (``timings_cover``).
TIMINGS_COVER = {
    "read": "reading the input files",
    "generate": "generating the sample pair (demo)",
    "prepare": "register(): checking the inputs, intensity windows",
    "prealign": "register(): centre of mass and affine pre-alignment",
    "features": "register(): features on the working grid",
    "gauss-newton": "register(): Gauss-Newton iterations",
    "output": "register(): composing the result, warping the moving image once, quality figures",
    "total": "register() from start to return (the sum of its stages)",
    "write": "writing the warped image, transform and field files",
    "report": "drawing report.png",
    "wall": "this command's work, from reading the inputs to writing summary.json (without starting Python "
            "and importing the engine)",
    "since_process_start": "from the start of the process (in a warm worker: of the request) to writing "
                           "summary.json (what a user waits for, less the exit)",
}
#: The report is drawn from the scans shrunk to at most this many voxels along each axis.
REPORT_MAX_AXIS = 192

#: Adds files to the staging folder and returns entries for the summary (the demo writes the truth).
Extra = Callable[[RegistrationResult, Path], Dict[str, Any]]


@dataclass
class InputPaths:
    """Files of one registration; the optional field names are also batch's CSV columns and, with
    dashes, register's options (--fixed-mask ...)."""

    fixed: str
    moving: str
    fixed_mask: Optional[str] = None
    moving_mask: Optional[str] = None
    fixed_segmentation: Optional[str] = None
    moving_segmentation: Optional[str] = None
    initial_transform: Optional[str] = None

    def given(self) -> Dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    def resolved(self) -> Dict[str, str]:
        """The given paths, absolute (as the summary records them)."""
        return {role: str(Path(p).resolve()) for role, p in self.given().items()}


#: The optional inputs, in order (masks, segmentations, initial transform).
OPTIONAL_INPUTS = tuple(f.name for f in fields(InputPaths) if f.name not in ("fixed", "moving"))


@dataclass
class Inputs:
    """Inputs in memory: images by role (fixed, moving, masks, segmentations) and the initial transform."""

    images: Dict[str, sitk.Image]
    initial_transform: Optional[sitk.Transform] = None
    paths: Dict[str, str] = field(default_factory=dict)


def _label(role: str) -> str:
    """"fixed_mask" -> "fixed mask", "fixed" -> "fixed image": the words the engine's messages use."""
    return role.replace("_", " ") + (" image" if role in ("fixed", "moving") else "")


def read_inputs(paths: InputPaths, reporter: Reporter, cancel: CancelOnSignal) -> Inputs:
    inputs = Inputs(images={}, paths=paths.resolved())
    for role, path in paths.given().items():
        cancel.check()
        reporter.progress(ProgressEvent("prepare", 0.0, f"reading the {_label(role)} {path}"))
        if role == "initial_transform":
            inputs.initial_transform = read_transform(path)
        else:
            inputs.images[role] = read_image(path, _label(role))
    return inputs


def file_name(name: str, output: OutputOptions) -> str:
    """``name`` as written with ``output``'s options: ``.nii`` instead of ``.nii.gz`` when uncompressed."""
    return name[:-len(".gz")] if not output.compress and name.endswith(".nii.gz") else name


def _write_files(result: RegistrationResult, moving: sitk.Image, folder: Path, output: OutputOptions,
                 reporter: Reporter, cancel: CancelOnSignal) -> None:
    """The warped image (in the moving image's pixel type), the transform and the field file(s) asked for."""
    def field_writer(name: str) -> Callable[[Path], None]:
        if name == CONTROL_GRID_FIELD:
            return lambda path: write_displacement(result.compact.composed_on_control_grid(), path, compress=False)
        return lambda path: write_displacement(result.displacement, path, output.compress)

    writers: List[Tuple[str, Callable[[Path], None]]] = [
        (file_name(WARPED_FILE, output),
         lambda path: write_image(in_pixel_type(result.warped, moving), path, output.compress)),
        (TRANSFORM_FILE, lambda path: write_transform(result.transform(), path)),
        *[(file_name(name, output), field_writer(name)) for name in output.field_files]]
    for index, (name, write) in enumerate(writers):
        cancel.check()
        reporter.progress(ProgressEvent("output", round(0.96 + 0.03 * index / len(writers), 4), f"writing {name}"))
        write(folder / name)


def _draw_report(result: RegistrationResult, inputs: Inputs, folder: Path) -> None:
    """report.png, drawn from the scans shrunk to at most REPORT_MAX_AXIS voxels per axis: the moving image
    resampled onto that grid once, before and through the result, and the field on it."""
    fixed, moving = inputs.images["fixed"], inputs.images["moving"]
    background = float(sitk.GetArrayViewFromImage(moving).min())
    small = shrunk_grid(fixed, REPORT_MAX_AXIS)
    metrics = result.metrics
    title = (f"NCC {number(metrics.get('ncc_before'))} -> {number(metrics.get('ncc_after'))}   "
             f"negative Jacobian {number(metrics.get('negative_jacobian_percent'), '.2f')}%   "
             f"preset {result.preset}   {result.device}   register() {result.timings['total']:.1f} s")
    write_report(folder / REPORT_FILE, resample(fixed, small), resample(moving, small, None, default_value=background),
                 resample(moving, small, result.transform(), default_value=background), result.compact.dense(small),
                 title, warnings=result.warnings)


def _summary(result: RegistrationResult, inputs: Inputs, outdir: Path, output: OutputOptions,
             timings: Dict[str, float], command: List[str]) -> Dict[str, Any]:
    summary = result.to_summary()
    ordered = {**{k: v for k, v in timings.items() if k not in AFTER_REGISTRATION}, **result.timings,
               **{k: timings[k] for k in AFTER_REGISTRATION if k in timings}}
    summary["timings_s"] = {k: round(v, 4) for k, v in ordered.items()}
    summary["timings_cover"] = {k: TIMINGS_COVER[k] for k in ordered if k in TIMINGS_COVER}
    described: Dict[str, Any] = {}
    for role, image in inputs.images.items():
        described[role] = {"path": inputs.paths.get(role), **image_info(image)}
    if inputs.initial_transform is not None:
        described["initial_transform"] = {"path": inputs.paths.get("initial_transform"),
                                          "type": inputs.initial_transform.GetName()}
    summary["inputs"] = described
    summary["outputs"] = {"warped": file_name(WARPED_FILE, output), "transform": TRANSFORM_FILE,
                          "displacement": [file_name(name, output) for name in output.field_files],
                          "report": REPORT_FILE if output.report else None, "summary": SUMMARY_FILE}
    summary["outdir"] = str(outdir)
    summary["command"] = command
    summary["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return summary


def register_and_write(inputs: Inputs, outdir: Path, registration: RegistrationOptions, output: OutputOptions,
                       reporter: Reporter, cancel: CancelOnSignal, command: List[str],
                       timings: Optional[Dict[str, float]] = None, extra: Optional[Extra] = None) -> Dict[str, Any]:
    """Register images already in memory and write the complete output folder; returns the summary."""
    outdir = Path(outdir).resolve()
    timings = dict(timings or {})  # what came before: reading (or generating) the inputs
    before = sum(timings.values())
    started = time.perf_counter()
    images = inputs.images
    with in_cli_terms():
        result = register(images["fixed"], images["moving"], preset=registration.preset, device=registration.device,
                          fixed_mask=images.get("fixed_mask"), moving_mask=images.get("moving_mask"),
                          fixed_segmentation=images.get("fixed_segmentation"),
                          moving_segmentation=images.get("moving_segmentation"),
                          initial_transform=inputs.initial_transform, progress=reporter.progress, cancel=cancel,
                          **registration.overrides)
    with staged_folder(outdir, output.overwrite) as folder:
        writing = time.perf_counter()
        _write_files(result, images["moving"], folder, output, reporter, cancel)
        extras = extra(result, folder) if extra is not None else {}
        timings["write"] = time.perf_counter() - writing
        if output.report:
            cancel.check()
            reporter.progress(ProgressEvent("output", 0.99, f"drawing {REPORT_FILE}"))
            drawing = time.perf_counter()
            _draw_report(result, inputs, folder)
            timings["report"] = time.perf_counter() - drawing
        timings["wall"] = before + time.perf_counter() - started
        age = seconds_since_process_start()
        if age is not None:
            timings["since_process_start"] = age
        summary = _summary(result, inputs, outdir, output, timings, command)
        summary[KEY_ENTRY] = result_key(registration.preset, result.settings, inputs.paths, output)
        summary["warnings"] = [*registration.notes, *summary.get("warnings", [])]
        summary.update(extras)
        cancel.check()
        write_json(summary, folder / SUMMARY_FILE)
    reporter.progress(ProgressEvent("output", 1.0, f"results written to {outdir}"))
    return summary


def run_pair(paths: InputPaths, outdir: Path, registration: RegistrationOptions, output: OutputOptions,
             reporter: Reporter, cancel: CancelOnSignal, command: List[str]) -> Dict[str, Any]:
    """Read the files of one pair, register, write: what ``learngn register`` does for one pair."""
    check_output_folder(Path(outdir), output.overwrite)  # fail before the long work, not after
    started = time.perf_counter()
    inputs = read_inputs(paths, reporter, cancel)
    timings = {"read": time.perf_counter() - started}
    return register_and_write(inputs, outdir, registration, output, reporter, cancel, command, timings)


#: ``time.monotonic()`` when a long-lived process (the Slicer module's warm worker) took the current request;
#: ``since_process_start`` then counts from there.
REQUEST_STARTED: Optional[float] = None


def seconds_since_process_start() -> Optional[float]:
    """Seconds since this process started (Python's start and imports included), or since REQUEST_STARTED
    when a warm worker set it, or None where the system does not say (read from /proc on Linux)."""
    if REQUEST_STARTED is not None:
        return time.monotonic() - REQUEST_STARTED
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            started_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])  # field 22: start time
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def number(value: Any, spec: str = ".3f") -> str:
    """A metric for people: formatted, or n/a when missing or not a number (NaN, None)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return format(value, spec) if value == value else "n/a"


def describe(summary: Dict[str, Any]) -> List[str]:
    """A few lines for people: quality before/after, folding, time, where the files are."""
    metrics = summary.get("metrics", {})
    line = (f"NCC {number(metrics.get('ncc_before'))} -> {number(metrics.get('ncc_after'))}, "
            f"negative Jacobian {number(metrics.get('negative_jacobian_percent'), '.2f')}%")
    if "dice_after" in metrics:
        line += f", mean Dice {number(metrics.get('dice_before'))} -> {number(metrics.get('dice_after'))}"
    timings = summary.get("timings_s", {})
    outputs = summary.get("outputs", {})
    names = [outputs.get("warped"), outputs.get("transform"), *outputs.get("displacement", []),
             outputs.get("report"), outputs.get("summary")]
    started = (f"{number(timings.get('since_process_start'), '.1f')} s since the command started, "
               if "since_process_start" in timings else "")
    return [line,
            f"{started}{number(timings.get('wall'), '.1f')} s from reading the inputs to the results "
            f"(register() {number(timings.get('total'), '.1f')} s) on {summary.get('device')}, "
            f"preset {summary.get('preset')}",
            f"wrote {summary.get('outdir')}: {', '.join(n for n in names if n)}"]
