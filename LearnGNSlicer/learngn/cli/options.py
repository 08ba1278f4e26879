"""Command-line options shared by several subcommands, defined once and turned into engine arguments.

``add_settings_options`` (preset, device, advanced settings, ``--set``) and ``add_output_options``
(-o, --overwrite, --field-format, --progress, --no-report) are used by register, batch and demo;
``registration_options(args)`` validates them before any image is read, so a typo fails at once.
"""
from __future__ import annotations

import argparse
import re
import sys
import typing
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Collection, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

from ..device import resolve_device, unusable_gpu
from ..errors import InputError
from ..models import read_card
from ..settings import RegistrationSettings, get_preset, list_presets
from ..solver import resolve_backend
from .progress import MODES

DEFAULT_PRESET = "generic"
#: Displacement field files on request (transform.h5 always holds the result): the field on the full fixed
#: grid, or ``control-grid``: the whole displacement at Gauss-Newton's control points, uncompressed float32
#: NRRD, exact under linear interpolation (what the Slicer module reads).
CONTROL_GRID_FIELD = "displacement_control_grid.nrrd"
FIELD_FORMATS = {"none": (), "nifti": ("displacement.nii.gz",), "nrrd": ("displacement.nrrd",),
                 "both": ("displacement.nii.gz", "displacement.nrrd"), "control-grid": (CONTROL_GRID_FIELD,)}
_DEVICE = re.compile(r"^(auto|cpu|gpu|cuda(:\d+)?)$", re.IGNORECASE)
#: Settings with a fixed set of values, checked before any image is read (also when given with --set).
CHOICES = {"prealign": ("affine", "com", "none"), "solver": ("auto", "torch", "cupy"),
           "intensity_normalisation": ("auto", "ct", "mr")}


@dataclass(frozen=True)
class _Setting:
    """A dedicated option for one RegistrationSettings field."""

    flags: Tuple[str, ...]
    name: str
    type: Callable[[str], Any]
    metavar: Optional[str]
    help: str
    choices: Optional[Sequence[str]] = None


SETTING_OPTIONS = (
    _Setting(("--iterations",), "iterations", int, "N", "Gauss-Newton iterations per level"),
    _Setting(("--grid-stride",), "grid_stride", int, "N",
             "control-point spacing in working voxels, 1-16 (larger: smoother and faster)"),
    _Setting(("--regularisation", "--regularization"), "regularisation", float, "X",
             "multiplies the regularisation weights: higher is smoother"),
    _Setting(("--prealign",), "prealign", str, None, "pre-alignment before the deformable stage",
             CHOICES["prealign"]),
    _Setting(("--levels",), "levels", int, "N", "resolution levels, 1-4"),
    _Setting(("--working-spacing",), "working_spacing", float, "MM",
             "isotropic spacing of the working grid in mm (default: from the voxel budget)"),
    _Setting(("--solver",), "solver", str, None, "linear solver (cupy needs a CUDA GPU)", CHOICES["solver"]),
)


SEGMENTATIONS = ("fixed_segmentation", "moving_segmentation")


@dataclass
class RegistrationOptions:
    """What the shared options ask of the engine, validated; ``settings`` is the preset with the overrides,
    ``notes`` what the user was warned about before the work (kept in the summary's warnings)."""

    preset: str
    device: str
    overrides: Dict[str, Any] = field(default_factory=dict)
    settings: Optional[RegistrationSettings] = None
    notes: List[str] = field(default_factory=list)


@dataclass
class OutputOptions:
    overwrite: bool = False
    field_files: Tuple[str, ...] = ()
    report: bool = True
    compress: bool = True


# -- argument types ---------------------------------------------------------------------------------------

def device_type(text: str) -> str:
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use auto, cpu, cuda or cuda:N")
    return text.lower()


def assignment_type(text: str) -> Tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r} (for example --set momentum=0.7)")
    return name.strip(), value.strip()


def _convert(name: str, text: str) -> Any:
    """``text`` as the type of the RegistrationSettings field ``name`` (unknown names pass through)."""
    hints = typing.get_type_hints(RegistrationSettings)
    if name not in hints:
        return text  # RegistrationSettings.replace names the valid fields
    kind = hints[name]
    args = typing.get_args(kind)
    if type(None) in args:
        if text.lower() in ("none", "null", ""):
            return None
        kind = next(a for a in args if a is not type(None))
    if typing.get_origin(kind) is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise InputError(f"--set {name}={text}: {name} must be {getattr(kind, '__name__', kind)}") from None


# -- option groups ----------------------------------------------------------------------------------------

class _ListPresets(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print_presets()
        parser.exit(0)


def print_presets(stream: Optional[TextIO] = None) -> None:
    stream = stream or sys.stdout
    presets = list_presets()
    width = max(len(name) for name in presets)
    for name, description in presets.items():
        stream.write(f"{name:<{width}}  {description}\n")


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    """--preset, --list-presets, --device, the advanced settings and --set NAME=VALUE."""
    group = parser.add_argument_group("registration settings (default: the preset's)")
    group.add_argument("--preset", default=DEFAULT_PRESET, choices=list(list_presets()),
                       help=f"named settings (default {DEFAULT_PRESET}); see 'learngn presets'")
    group.add_argument("--list-presets", action=_ListPresets, help="print the presets with descriptions and exit")
    group.add_argument("--device", default="auto", type=device_type,
                       help="auto (a CUDA GPU when usable), cpu, cuda or cuda:N (default auto)")
    for option in SETTING_OPTIONS:
        group.add_argument(*option.flags, dest=f"setting_{option.name}", type=option.type, metavar=option.metavar,
                           choices=option.choices, default=None, help=option.help)
    names = ", ".join(f.name for f in fields(RegistrationSettings))
    group.add_argument("--set", dest="settings", action="append", type=assignment_type, default=[],
                       metavar="NAME=VALUE", help=f"any other setting, repeatable; names: {names}")


def add_output_options(parser: argparse.ArgumentParser, *, output_default: Optional[str] = None,
                       output_help: str = "output folder") -> None:
    """-o, --overwrite, --field-format, --no-report and --progress."""
    group = parser.add_argument_group("output")
    if output_default is None:
        group.add_argument("-o", "--output", required=True, metavar="OUTDIR", help=output_help)
    else:
        group.add_argument("-o", "--output", default=output_default, metavar="OUTDIR",
                           help=f"{output_help} (default {output_default})")
    group.add_argument("--overwrite", action="store_true",
                       help="replace existing results (they are replaced only once the new ones are complete)")
    group.add_argument("--field-format", choices=list(FIELD_FORMATS), default="none",
                       help="a displacement field file beside transform.h5: none (default), the field on the "
                            "fixed grid as displacement.nii.gz (nifti), displacement.nrrd (nrrd, header states "
                            f"the convention for 3D Slicer) or both, or {CONTROL_GRID_FIELD} (control-grid: "
                            "the field at the registration's control points, exact under linear interpolation)")
    group.add_argument("--uncompressed", dest="compress", action="store_false",
                       help="write images without compression (warped.nii instead of warped.nii.gz): larger "
                            "files, written and read faster (the Slicer module's worker uses it)")
    group.add_argument("--no-report", dest="report", action="store_false", help="do not draw report.png")
    group.add_argument("--progress", choices=MODES, default="bar",
                       help="bar: a bar on a terminal, stage lines otherwise (default); jsonl: JSON events on "
                            "stdout; none: quiet")


# -- turning parsed options into engine arguments -------------------------------------------------------------

def settings_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """RegistrationSettings fields given on the command line (dedicated options, then --set)."""
    overrides: Dict[str, Any] = {}
    for option in SETTING_OPTIONS:
        value = getattr(args, f"setting_{option.name}", None)
        if value is not None:
            overrides[option.name] = value
    known = [f.name for f in fields(RegistrationSettings)]
    for name, text in getattr(args, "settings", []):
        if name not in known:
            raise InputError(f"--set {name}={text}: there is no setting {name!r}; --set takes {', '.join(known)}")
        value = _convert(name, text)
        if name in overrides and overrides[name] != value:
            raise InputError(f"setting {name} is given twice with different values ({overrides[name]!r} and "
                             f"{value!r}); give it once")
        overrides[name] = value
    return overrides


def registration_options(args: argparse.Namespace) -> RegistrationOptions:
    """The validated preset, device and overrides: bad settings fail here, before any image is read.  A GPU
    request that cannot be honoured is reported now (a warning line) and the CPU is used."""
    options = RegistrationOptions(args.preset, args.device, settings_overrides(args))
    with in_cli_terms():
        options.settings = settings = get_preset(options.preset).settings.replace(**options.overrides)
        for name, allowed in CHOICES.items():
            if getattr(settings, name) not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, not {getattr(settings, name)!r}")
        if settings.model:
            read_card(settings.model)  # a missing model fails now, not after the pre-alignment
    gpu_problem = unusable_gpu(options.device)
    if gpu_problem:
        warnings.warn(f"--device {options.device}: {gpu_problem}", RuntimeWarning, stacklevel=2)
        options.notes.append(f"--device {options.device}: {gpu_problem}")
        options.device = "cpu"
    if settings.solver == "cupy":
        try:
            resolve_backend("cupy", resolve_device(options.device))
        except ValueError as error:
            raise InputError(f"--solver cupy: {error}") from None
    return options


def check_segmentations(options: RegistrationOptions, given: Collection[str],
                        name_of: Callable[[str], str] = lambda name: "--" + name.replace("_", "-")) -> None:
    """Settings that compare segmentations (distance-map features) need both; ``name_of`` says how the user
    gives one (a flag, a CSV column).  Checked before any image is read."""
    settings = options.settings or get_preset(options.preset).settings.replace(**options.overrides)
    missing = [name for name in SEGMENTATIONS if name not in given]
    if "sdm" not in settings.features or not missing:
        return
    what = (f"the preset {options.preset!r}" if "sdm" in get_preset(options.preset).settings.features
            else "the features setting 'sdm'")
    raise InputError(f"{what} compares segmentations of both images (label maps, e.g. TotalSegmentator output), "
                     f"and {' and '.join(name_of(n) for n in missing)} {'is' if len(missing) == 1 else 'are'} "
                     f"missing: give {' and '.join(name_of(n) for n in SEGMENTATIONS)}, or choose a preset that "
                     f"uses the images alone, such as --preset {DEFAULT_PRESET}")


# -- engine messages in the command line's words ----------------------------------------------------------

def cli_name(name: str) -> str:
    """The command-line way to give a registration keyword: its option, or ``--set NAME``."""
    from .pipeline import OPTIONAL_INPUTS  # the input files (pipeline imports this module)

    for option in SETTING_OPTIONS:
        if option.name == name:
            return option.flags[0]
    if name in OPTIONAL_INPUTS:
        return "--" + name.replace("_", "-")
    return f"--set {name}"


def _keyword_pattern() -> "re.Pattern[str]":
    """Keywords in engine messages: ``name=value`` for every setting and input, and bare names that cannot be
    English words (those with an underscore)."""
    from .pipeline import OPTIONAL_INPUTS

    names = sorted({f.name for f in fields(RegistrationSettings)} | set(OPTIONAL_INPUTS), key=len, reverse=True)
    return re.compile(r"(?<![\w./-])(?P<name>" + "|".join(names) + r")(?:=(?P<value>[^\s,;)]+))?(?![\w./=-])")


def cli_terms(message: str) -> str:
    """An engine message with its Python keywords replaced by command-line options (``iterations=0`` ->
    ``--iterations 0``, ``fixed_segmentation`` -> ``--fixed-segmentation``)."""
    def replace(match: "re.Match[str]") -> str:
        name, value = match.group("name"), match.group("value")
        if value is None:
            return cli_name(name) if "_" in name else name
        flag = cli_name(name)
        return f"{flag}={value}" if flag.startswith("--set ") else f"{flag} {value}"

    return _keyword_pattern().sub(replace, message)


@contextmanager
def in_cli_terms() -> Iterator[None]:
    """Re-raise the engine's InputErrors inside the block with command-line options instead of keywords (the
    error keeps its type and attributes: only its message changes)."""
    try:
        yield
    except InputError as error:
        error.args = (cli_terms(str(error)), *error.args[1:])
        raise


def output_options(args: argparse.Namespace) -> OutputOptions:
    return OutputOptions(overwrite=args.overwrite, field_files=FIELD_FORMATS[args.field_format], report=args.report,
                         compress=args.compress)

