"""The accuracy benchmark on real scans: ``learngn evaluate --suite brain|ct|abdomen``.

Three suites, every method (the project's presets and the installed peers) on the same pairs, scored by
the same code (:mod:`learngn.training.evaluation`):

* ``brain``: the 15 labelled brain MRIs of ``brain_mindboggle`` (different people, each in its own native
  space).  People 1-10 form the tuning split (settings are chosen there), people 11-15 the reporting split
  (they choose nothing).  Pairs are consecutive people of a split, cyclically (1<-2, 2<-3, ... 10<-1).
  Dice and HD95 over the labels present in both maps with at least 100 voxels.
* ``ct``: each real CT of ``ct/`` is the moving image; the fixed image is the same CT resampled through a
  known smooth random displacement (several seeds), so the true field is exact.  Mean and 95th percentile
  of the error of the recovered field inside the body of the fixed image.
* ``abdomen``: the Learn2Reg abdomen validation label maps with CT-like images synthesised from them.

Peers without an affine stage of their own (ConvexAdam) get ANTs' affine first where the suite's images
are not pre-aligned, as a user of that peer would do.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError
from ..geometry import working_grid
from ..phantom import random_smooth_displacement, warp_image
from ..quality import jacobian_statistics
from ..sampling import resample
from .data import Case, Dataset, Pair, labels_folder
from .evaluation import (EvalCase, evaluate, markdown_summary, parse_method, run_method, runnable_methods,
                         write_csv)

SUITES = ("brain", "ct", "abdomen")
SPLITS = ("tuning", "reporting")

#: People of brain_mindboggle whose pairs choose settings, and people who only report.
BRAIN_SPLITS: Dict[str, Tuple[int, ...]] = {"tuning": tuple(range(1, 11)), "reporting": tuple(range(11, 16))}
BRAIN_FOLDER = "brain_mindboggle"
BRAIN_IMAGE = "t1weighted_brain.nii.gz"
BRAIN_LABELS = "labels.DKT31.manual+aseg.nii.gz"
#: Tuning people whose pairs (both ways) monitor a training run; the other tuning people train.  The
#: reporting people are never read by training.
BRAIN_TRAINING_MONITOR: Tuple[int, int] = (9, 10)
#: Labels smaller than this (voxels, in either map of a pair) are left out of the brain Dice.
BRAIN_MIN_LABEL_VOXELS = 100

#: The real CTs, and the isotropic spacing each is resampled to first (so the slow peers fit the time;
#: None keeps the scan's own grid).  Seeds of the known fields: tuning uses the first, reporting the rest.
CT_SCANS: Dict[str, Optional[float]] = {"thorax_ct.nii.gz": 2.0, "abdomen_pelvis_ct_3mm.nii.gz": None}
CT_SEEDS: Dict[str, Tuple[int, ...]] = {"tuning": (1,), "reporting": (2, 3)}
CT_MAX_DISPLACEMENT_MM = 12.0
#: Hounsfield units above which a voxel counts as body (air and lung below).
CT_BODY_HU = -500.0

#: Abdomen validation cases; the tuning split uses pairs among the first three.
ABDOMEN_CASES: Dict[str, Tuple[str, ...]] = {"tuning": ("0001", "0004", "0007"),
                                             "reporting": ("0001", "0004", "0007", "0010", "0023")}
ABDOMEN_MAX_PAIRS = 4


@dataclass
class SuiteResult:
    name: str
    rows: List[Dict[str, object]]
    markdown: str
    notes: List[str]


def brain_dataset(root: Path, split: str) -> Dataset:
    """The brain cases of a split, with cyclic pairs of consecutive people."""
    people = BRAIN_SPLITS[split]
    cases = {}
    for person in people:
        folder = Path(root) / BRAIN_FOLDER / f"OASIS-TRT-20-{person}"
        if not (folder / BRAIN_IMAGE).exists():
            raise InputError(f"brain case {folder} is missing; --data must point at the folder holding "
                             f"{BRAIN_FOLDER}/")
        name = f"brain{person:02d}"
        cases[name] = Case(name, folder / BRAIN_LABELS, folder / BRAIN_IMAGE)
    names = list(cases)
    pairs = [Pair(names[i], names[(i + 1) % len(names)]) for i in range(len(names))]
    return Dataset(cases, [], pairs)


def brain_training_dataset(root: Path) -> Dataset:
    """The tuning people as a training set: all but :data:`BRAIN_TRAINING_MONITOR` train, those two monitor."""
    tuning = brain_dataset(root, "tuning")
    first, second = (f"brain{person:02d}" for person in BRAIN_TRAINING_MONITOR)
    training = [name for name in tuning.cases if name not in (first, second)]
    dataset = Dataset(tuning.cases, training, [Pair(first, second), Pair(second, first)])
    dataset.check_disjoint()
    return dataset


# -- real CT with known deformations ----------------------------------------------------------------------

@dataclass
class KnownDeformation:
    """A real CT (moving) and the same CT resampled through ``truth`` (fixed): ``fixed(x) = moving(x + t(x))``."""

    name: str
    fixed: sitk.Image
    moving: sitk.Image
    truth: sitk.Image
    body: np.ndarray        # (z, y, x) bool, on the fixed grid


def body_mask(ct: sitk.Image) -> np.ndarray:
    """The patient's body: voxels above -500 HU, the largest connected part, holes (lungs) filled per slice."""
    inside = sitk.GetArrayFromImage(ct) > CT_BODY_HU
    labelled, count = ndimage.label(inside)
    if count == 0:
        raise InputError("the CT has no voxel above -500 HU: is it in Hounsfield units?")
    sizes = ndimage.sum(inside, labelled, range(1, count + 1))
    body = labelled == (int(np.argmax(sizes)) + 1)
    return np.stack([ndimage.binary_fill_holes(z_slice) for z_slice in body])


def known_deformation(path: Path, spacing: Optional[float], seed: int,
                      max_mm: float = CT_MAX_DISPLACEMENT_MM) -> KnownDeformation:
    """One known-deformation pair from a real CT (see :class:`KnownDeformation`)."""
    ct = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
    if spacing is not None:
        ct = resample(ct, working_grid(ct, spacing), None, sitk.sitkLinear, -1024.0)
    truth = random_smooth_displacement(ct, max_mm, seed=seed)
    fixed = warp_image(ct, truth, default_value=-1024.0)
    return KnownDeformation(f"{path.name.split('.')[0]} seed {seed}", fixed, ct, truth, body_mask(fixed))


def field_error(field: Optional[sitk.Image], truth: sitk.Image, mask: np.ndarray) -> Dict[str, float]:
    """Mean and 95th percentile (mm) of ``|field - truth|`` inside ``mask``; ``field`` None is the identity."""
    expected = sitk.GetArrayViewFromImage(truth)[mask]
    if field is None:
        found = np.zeros_like(expected)
    else:
        on_truth = resample(field, truth, None, sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
        found = sitk.GetArrayViewFromImage(on_truth)[mask]
    error = np.linalg.norm(found - expected, axis=1)
    return {"error_mean": float(error.mean()), "error_p95": float(np.percentile(error, 95))}


def ct_suite(root: Path, methods: Sequence[str], split: str, device: str, log: Callable[[str], None],
             csv_path: Optional[Path] = None) -> SuiteResult:
    """Every method on every known-deformation pair of the split's seeds (rows written to ``csv_path`` as
    they come)."""
    notes: List[str] = [f"fixed = the CT resampled through a known smooth random field (maximum "
                        f"{CT_MAX_DISPLACEMENT_MM:g} mm, seeds {', '.join(map(str, CT_SEEDS[split]))}); "
                        f"error inside the body (> {CT_BODY_HU:g} HU, holes filled)"]
    notes += [f"{scan} resampled to {spacing:g} mm isotropic first" for scan, spacing in CT_SCANS.items() if spacing]
    parsed, skipped = runnable_methods([parse_method(m) for m in methods])
    notes += skipped
    rows: List[Dict[str, object]] = []
    for scan, spacing in CT_SCANS.items():
        path = Path(root) / "ct" / scan
        if not path.exists():
            raise InputError(f"real CT {path} is missing; --data must point at the folder holding ct/")
        for seed in CT_SEEDS[split]:
            pair = known_deformation(path, spacing, seed)
            fixed, moving = EvalCase(pair.fixed, None), EvalCase(pair.moving, None)
            for method in parsed:
                row: Dict[str, object] = {"fixed": pair.name, "moving": scan, "method": method.label,
                                          "spec": method.spec}
                try:
                    field, seconds, jacobian = run_method(method, fixed, moving, "affine", device)
                    row.update(seconds=seconds, status="ok", **field_error(field, pair.truth, pair.body))
                    if field is not None:
                        row.update(jacobian or jacobian_statistics(field, pair.body))
                    else:
                        row.update(negative_jacobian_percent=0.0, log_jacobian_std=0.0)
                except InputError:
                    raise
                except Exception as error:  # a peer that crashes is reported, not fatal
                    row.update(seconds=float("nan"), status=f"failed: {type(error).__name__}: {error}")
                    notes.append(f"{method.label} failed on {pair.name}: {error}")
                rows.append(row)
                if csv_path is not None:
                    write_csv(csv_path, rows)
                log(f"{pair.name}: {method.label}: error {row.get('error_mean', float('nan')):.2f} mm, "
                    f"{row.get('seconds', float('nan')):.1f} s")
    return SuiteResult("ct", rows, markdown_summary(rows, [], {}, notes, f"Real CT, known deformations ({split})"),
                       notes)


# -- the suites together ----------------------------------------------------------------------------------

def run_suites(root: Path, suites: Sequence[str], methods: Sequence[str], output: Path, *, split: str,
               device: str = "cpu", max_pairs: Optional[int] = None, progress: bool = True,
               log: Callable[[str], None] = lambda s: None) -> List[SuiteResult]:
    """Run the named suites, writing each one's results under ``output/<suite>/`` and ``output/accuracy.md``."""
    unknown = [s for s in suites if s not in SUITES]
    if unknown or split not in SPLITS:
        raise InputError(f"unknown suite(s) {', '.join(unknown) or split!r}; suites: {', '.join(SUITES)}, "
                         f"splits: {', '.join(SPLITS)}")
    output = Path(output)
    results = []
    for suite in suites:
        started = time.perf_counter()
        folder = output / suite
        if suite in ("brain", "abdomen"):
            if suite == "brain":
                dataset = brain_dataset(root, split)
                pairs = dataset.validation_pairs[:max_pairs] if max_pairs else dataset.validation_pairs
                options = dict(min_label_voxels=BRAIN_MIN_LABEL_VOXELS,
                               title=f"Brain MRI, different people, not pre-aligned ({split})")
            else:
                dataset = labels_folder(Path(root) / "abdomen_ctct_labels", list(ABDOMEN_CASES[split]))
                pairs = dataset.validation_pairs[: max_pairs or ABDOMEN_MAX_PAIRS]
                options = dict(images="synthetic-ct", title=f"Abdomen, synthetic CT of real anatomy ({split})")
            result = evaluate(dataset, methods, folder, pairs=pairs, prealign="affine", device=device,
                              progress=progress, log=log, **options)
            results.append(SuiteResult(suite, result.rows, result.files["markdown"].read_text(encoding="utf-8"),
                                       result.notes))
        else:
            folder.mkdir(parents=True, exist_ok=True)
            result_ct = ct_suite(root, methods, split, device, log, folder / "results.csv")
            (folder / "summary.md").write_text(result_ct.markdown, encoding="utf-8")
            results.append(result_ct)
        log(f"suite {suite} took {time.perf_counter() - started:.0f} s")
    text = "\n".join(r.markdown for r in results)
    (output / "accuracy.md").write_text(text, encoding="utf-8")
    return results
