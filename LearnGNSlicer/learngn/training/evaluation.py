"""``evaluate``: score registration methods over pairs with labels and/or landmarks.

Each learned or classic method runs through :func:`learngn.register` (the product path); peers run
through their adapters.  Every method's field is scored by the same code on the fixed image's grid:
Dice and HD95 per label, landmark TRE, % negative Jacobian determinant, std of log |J|, wall time.
Writes ``results.csv`` (one row per pair and method), ``summary.md`` and ``boxplot.png``.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError
from ..geometry import compose_to_field, displacement_transform, working_grid
from ..quality import dice_per_label, jacobian_statistics
from ..sampling import resample
from .data import Dataset, Pair, read_image
from .peers import PEERS, ants_affine
from .progressbar import ProgressBar
from .synthesis import case_seed, synthetic_ct_image

IMAGE_SOURCES = ("dataset", "synthetic-ct")
#: Above this many labels the summary leaves out the per-label table (results.csv keeps every label).
MAX_LABEL_COLUMNS = 20


@dataclass(frozen=True)
class Method:
    """``learngn:PRESET[:k=v,...]`` (the preset as shipped), ``gn:PRESET`` (the same settings without the
    learned model: untrained GN), ``identity`` (no registration) or a peer name (convexadam, ants, elastix)."""

    spec: str
    kind: str
    preset: Optional[str] = None
    overrides: Tuple[Tuple[str, object], ...] = ()

    @property
    def label(self) -> str:
        overrides = ", ".join(f"{k}={v}" for k, v in self.overrides)
        if self.kind == "learngn":
            return self.preset + (f" ({overrides})" if overrides else "")
        if self.kind == "gn":
            return f"untrained GN ({self.preset} settings{', ' + overrides if overrides else ''})"
        if self.kind == "identity":
            return "initial (no registration)"
        return PEERS[self.kind].name


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def parse_method(spec: str) -> Method:
    parts = spec.split(":")
    kind = parts[0].lower()
    if kind in ("identity", "initial"):
        return Method(spec, "identity")
    if kind in PEERS:
        return Method(spec, kind)
    if kind not in ("learngn", "gn") or len(parts) < 2 or not parts[1]:
        raise InputError(f"unknown method {spec!r}; use learngn:PRESET, gn:PRESET, identity, "
                         f"or a peer ({', '.join(PEERS)})")
    overrides = []
    if len(parts) > 2 and parts[2]:
        for item in parts[2].replace(";", ",").split(","):
            key, _, value = item.partition("=")
            overrides.append((key.strip(), _value(value.strip())))
    return Method(spec, kind, parts[1], tuple(overrides))


# -- metrics ----------------------------------------------------------------------------------------------

def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(a: np.ndarray, b: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """95th percentile of the symmetric surface distances (mm) between two binary masks; nan if one is empty."""
    if not a.any() or not b.any():
        return float("nan")
    both = a | b
    coords = np.nonzero(both)
    margin = 2
    box = tuple(slice(max(0, int(c.min()) - margin), int(c.max()) + margin + 1) for c in coords)
    a, b = a[box], b[box]
    surface_a, surface_b = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing_zyx)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing_zyx)
    distances = np.concatenate([to_b[surface_a], to_a[surface_b]])
    return float(np.percentile(distances, 95))


def read_landmarks(path: Path) -> np.ndarray:
    """Points (N, 3) in LPS mm from a CSV with x,y,z columns (a header line and extra columns are allowed)."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            values = line.replace(";", ",").replace("\t", ",").split(",")
            try:
                rows.append([float(v) for v in values[:3]])
            except ValueError:
                continue  # header
    if not rows:
        raise InputError(f"no x,y,z landmarks in {path}")
    return np.array(rows)


def target_registration_error(field: sitk.Image, fixed_points: np.ndarray, moving_points: np.ndarray) -> np.ndarray:
    transform = displacement_transform(field)
    mapped = np.array([transform.TransformPoint([float(c) for c in p]) for p in fixed_points])
    return np.linalg.norm(mapped - moving_points, axis=1)


def score(field: Optional[sitk.Image], fixed_labels: Optional[sitk.Image], moving_labels: Optional[sitk.Image],
          labels: Sequence[int], landmarks: Optional[Tuple[np.ndarray, np.ndarray]], reference: sitk.Image,
          jacobian: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """Every figure of one registration result (``field`` None = identity)."""
    out: Dict[str, float] = {}
    transform = displacement_transform(field) if field is not None else None
    if fixed_labels is not None and moving_labels is not None:
        f = sitk.GetArrayFromImage(fixed_labels)
        m = sitk.GetArrayFromImage(resample(moving_labels, fixed_labels, transform, sitk.sitkNearestNeighbor,
                                            pixel_type=sitk.sitkInt32))
        dice = dice_per_label(f, m, labels)
        spacing = fixed_labels.GetSpacing()[::-1]
        for label in labels:
            out[f"dice_{label}"] = dice.get(label, float("nan"))
            out[f"hd95_{label}"] = hd95(f == label, m == label, spacing)
        out["dice"] = float(np.nanmean([out[f"dice_{label}"] for label in labels]))
        out["hd95"] = float(np.nanmean([out[f"hd95_{label}"] for label in labels]))
    if landmarks is not None:
        if field is None:
            errors = np.linalg.norm(landmarks[0] - landmarks[1], axis=1)
        else:
            errors = target_registration_error(field, *landmarks)
        out["tre"] = float(np.mean(errors))
    if field is not None:
        out.update(jacobian or jacobian_statistics(field))
    else:
        out.update({"negative_jacobian_percent": 0.0, "log_jacobian_std": 0.0})
    return out


# -- the evaluation ---------------------------------------------------------------------------------------

@dataclass
class EvalCase:
    image: sitk.Image
    labels: Optional[sitk.Image]
    landmarks: Optional[np.ndarray] = None


@dataclass
class EvaluationResult:
    rows: List[Dict[str, object]]
    notes: List[str]
    files: Dict[str, Path] = field(default_factory=dict)


def load_eval_case(dataset: Dataset, name: str, images: str, landmarks_dir: Optional[Path],
                   spacing: Optional[float] = None) -> EvalCase:
    """One case's image, labels and landmarks; with ``spacing``, image and labels on an isotropic grid of
    that spacing (every method then sees, and is scored on, the same coarser data)."""
    case = dataset.cases[name]
    labels = read_image(case.label) if case.label else None
    image = None
    if images == "dataset":
        if case.image is None:
            raise InputError(f"case {name} has no image; use --images synthetic-ct for label maps alone")
        image = read_image(case.image)
    if spacing is not None:
        grid = working_grid(labels if labels is not None else image, float(spacing))
        if labels is not None:
            labels = resample(labels, grid, None, sitk.sitkNearestNeighbor, pixel_type=sitk.sitkInt32)
        if image is not None:
            image = resample(image, grid, None, sitk.sitkLinear, float(np.min(sitk.GetArrayViewFromImage(image))))
    if images == "synthetic-ct":
        if labels is None:
            raise InputError(f"case {name} has no label map to synthesise an image from")
        image = synthetic_ct_image(labels, seed=case_seed(name), mode="ct")
    points = None
    if landmarks_dir is not None:
        candidates = [p for p in Path(landmarks_dir).glob(f"*{name}*.csv")]
        if candidates:
            points = read_landmarks(sorted(candidates)[0])
    if labels is not None:
        labels = sitk.Cast(labels, sitk.sitkInt32)
    return EvalCase(image, labels, points)


def run_method(method: Method, fixed: EvalCase, moving: EvalCase, prealign: str, device: str
               ) -> Tuple[Optional[sitk.Image], float, Dict[str, float]]:
    """The method's field on the fixed grid, its wall time (s) and the Jacobian figures register() computed."""
    if method.kind == "identity":
        return None, 0.0, {}
    started = time.perf_counter()
    if method.kind in ("learngn", "gn"):
        from ..register import register

        overrides = dict(method.overrides)
        overrides.setdefault("prealign", prealign)
        if method.kind == "gn":
            overrides["model"] = None
        result = register(fixed.image, moving.image, preset=method.preset, device=device,
                          fixed_segmentation=fixed.labels, moving_segmentation=moving.labels, **overrides)
        seconds = time.perf_counter() - started
        jacobian = {k: result.metrics[k] for k in ("negative_jacobian_percent", "log_jacobian_std")}
        return result.displacement, seconds, jacobian
    peer = PEERS[method.kind]
    if prealign != "none" and not peer.has_affine:
        field_image = peer_after_affine(peer, fixed, moving)
    else:
        field_image = peer.run(fixed.image, moving.image, fixed.labels, moving.labels)
    return field_image, time.perf_counter() - started, {}


def peer_after_affine(peer, fixed: EvalCase, moving: EvalCase) -> sitk.Image:
    """A peer without an affine stage of its own run on the moving image after ANTs' affine registration
    (what such a peer's users do), the two composed into one field on the fixed grid."""
    if not PEERS["ants"].available():
        raise RuntimeError(f"{peer.name} needs an affine pre-alignment here, and it comes from ANTs: pip install antspyx")
    affine = ants_affine(fixed.image, moving.image)
    background = float(np.min(sitk.GetArrayViewFromImage(moving.image)))
    aligned = resample(moving.image, fixed.image, affine, sitk.sitkLinear, background)
    deformable = peer.run(fixed.image, aligned, None, None)
    return compose_to_field([affine, displacement_transform(deformable)], fixed.image)


def runnable_methods(methods: Sequence[Method]) -> Tuple[List[Method], List[str]]:
    """The methods that can run here, and a note for each peer left out because it is not installed."""
    runnable, skipped = [], []
    for method in methods:
        if method.kind in PEERS and not PEERS[method.kind].available():
            skipped.append(PEERS[method.kind].missing_note())
        else:
            runnable.append(method)
    return runnable, skipped


def evaluate(dataset: Dataset, methods: Sequence[str], output: Path, *, pairs: Optional[Sequence[Pair]] = None,
             images: str = "dataset", prealign: str = "none", device: str = "cpu",
             landmarks_dir: Optional[Path] = None, labels: Optional[Sequence[int]] = None,
             label_names: Optional[Dict[int, str]] = None, progress: bool = True, title: str = "",
             log: Callable[[str], None] = lambda s: None, spacing: Optional[float] = None,
             min_label_voxels: int = 0) -> EvaluationResult:
    """Run every method on every pair and write results.csv, summary.md and boxplot.png to ``output``.

    With ``min_label_voxels``, each pair is scored on the labels that have at least that many voxels in
    both of its maps (label sets differ between people); otherwise on ``labels`` (all labels found)."""
    if spacing is not None and not spacing > 0:
        raise InputError(f"the evaluation spacing must be a positive number of mm, not {spacing!r}")
    if images not in IMAGE_SOURCES:
        raise InputError(f"unknown image source {images!r}; use {' or '.join(IMAGE_SOURCES)}")
    parsed = [parse_method(m) for m in methods]
    pairs = list(pairs if pairs is not None else dataset.validation_pairs)
    if not pairs:
        raise InputError("no pairs to evaluate: the dataset has no validation pairs")
    notes = [f"every case was resampled to {spacing:g} mm isotropic before registration and scoring"] if spacing else []
    runnable, skipped = runnable_methods(parsed)
    for note in skipped:
        notes.append(note)
        log(note)
    names = sorted({c for p in pairs for c in (p.fixed, p.moving)})
    cases = {n: load_eval_case(dataset, n, images, landmarks_dir, spacing) for n in names}
    if labels is None:
        values = set()
        for case in cases.values():
            if case.labels is not None:
                values.update(int(v) for v in np.unique(sitk.GetArrayViewFromImage(case.labels)) if v != 0)
        labels = sorted(values)
    rows: List[Dict[str, object]] = []
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    files = {"csv": output / "results.csv", "markdown": output / "summary.md", "png": output / "boxplot.png"}
    bar = ProgressBar(len(pairs) * len(runnable), "evaluate", enabled=progress)
    for pair in pairs:
        fixed, moving = cases[pair.fixed], cases[pair.moving]
        pair_labels = shared_labels(fixed.labels, moving.labels, min_label_voxels) if min_label_voxels else labels
        landmarks = (fixed.landmarks, moving.landmarks) if fixed.landmarks is not None and moving.landmarks is not None else None
        for method in runnable:
            try:
                field_image, seconds, jacobian = run_method(method, fixed, moving, prealign, device)
                figures = score(field_image, fixed.labels, moving.labels, pair_labels, landmarks, fixed.image, jacobian)
                status = "ok"
            except InputError:
                raise
            except Exception as error:  # a peer that crashes is reported, not fatal
                figures, seconds, status = {}, float("nan"), f"failed: {type(error).__name__}: {error}"
                notes.append(f"{method.label} failed on {pair.fixed}<-{pair.moving}: {error}")
                log(notes[-1])
            rows.append({"fixed": pair.fixed, "moving": pair.moving, "method": method.label, "spec": method.spec,
                         "seconds": seconds, "status": status, **figures})
            write_csv(files["csv"], rows)  # after every result: a long benchmark that is stopped keeps what it did
            done = len(rows)
            bar.update(done, f"{method.label[:28]} Dice {figures.get('dice', float('nan')):.3f}")
    bar.close()
    files["markdown"].write_text(markdown_summary(rows, labels, label_names or dataset.label_names, notes, title),
                                 encoding="utf-8")
    boxplot(files["png"], rows, title)
    return EvaluationResult(rows, notes, files)


def shared_labels(fixed: Optional[sitk.Image], moving: Optional[sitk.Image], min_voxels: int) -> List[int]:
    """Non-zero labels with at least ``min_voxels`` voxels in both label maps."""
    if fixed is None or moving is None:
        return []
    found = []
    for image in (fixed, moving):
        values, counts = np.unique(sitk.GetArrayViewFromImage(image), return_counts=True)
        found.append({int(v) for v, c in zip(values, counts) if v != 0 and c >= min_voxels})
    return sorted(found[0] & found[1])


def write_csv(path: Path, rows: List[Dict[str, object]]) -> None:
    keys: List[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _methods_in_order(rows: List[Dict[str, object]]) -> List[str]:
    seen: List[str] = []
    for row in rows:
        if row["method"] not in seen:
            seen.append(str(row["method"]))
    return seen


def _stat(rows, method, key) -> Tuple[float, float, int]:
    values = [float(r[key]) for r in rows if r["method"] == method and key in r and np.isfinite(float(r[key]))]
    if not values:
        return float("nan"), float("nan"), 0
    return float(np.mean(values)), float(np.std(values)), len(values)


def markdown_summary(rows, labels, label_names, notes, title="") -> str:
    methods = _methods_in_order(rows)
    has = {k: any(k in r for r in rows) for k in ("dice", "hd95", "tre", "error_mean")}
    header = ["method", "pairs"]
    if has["dice"]:
        header += ["Dice (mean ± sd)", "HD95 mm"]
    if has["tre"]:
        header += ["TRE mm"]
    if has["error_mean"]:
        header += ["error mm (mean)", "error mm (95th pct)"]
    header += ["% neg. Jacobian", "std log J", "time s"]
    lines = [f"## {title}" if title else "## Evaluation", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for method in methods:
        ok = [r for r in rows if r["method"] == method and r["status"] == "ok"]
        cells = [method, str(len(ok))]
        if has["dice"]:
            m, s, _ = _stat(ok, method, "dice")
            cells.append(f"{100 * m:.1f} ± {100 * s:.1f}")
            cells.append(f"{_stat(ok, method, 'hd95')[0]:.1f}")
        if has["tre"]:
            cells.append(f"{_stat(ok, method, 'tre')[0]:.2f}")
        if has["error_mean"]:
            cells += [f"{_stat(ok, method, key)[0]:.2f}" for key in ("error_mean", "error_p95")]
        cells.append(f"{_stat(ok, method, 'negative_jacobian_percent')[0]:.3f}")
        cells.append(f"{_stat(ok, method, 'log_jacobian_std')[0]:.3f}")
        cells.append(f"{_stat(ok, method, 'seconds')[0]:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    if has["dice"] and 0 < len(labels) <= MAX_LABEL_COLUMNS:
        lines += ["", "Mean Dice (%) per label:", "", "| method | " + " | ".join(
            str(label_names.get(int(l), l)) for l in labels) + " |", "|---|" + "---|" * len(labels)]
        for method in methods:
            ok = [r for r in rows if r["method"] == method and r["status"] == "ok"]
            cells = [f"{100 * _stat(ok, method, f'dice_{l}')[0]:.1f}" for l in labels]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def boxplot(path: Path, rows: List[Dict[str, object]], title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = _methods_in_order(rows)
    keys = [k for k in ("dice", "hd95", "tre", "error_mean") if any(k in r for r in rows)] or ["negative_jacobian_percent"]
    figure, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4.0), squeeze=False)
    names = {"dice": "mean Dice per pair", "hd95": "mean HD95 per pair (mm)", "tre": "mean TRE per pair (mm)",
             "error_mean": "mean field error per pair (mm)",
             "negative_jacobian_percent": "% negative Jacobian"}
    for axis, key in zip(axes[0], keys):
        data = [[float(r[key]) for r in rows if r["method"] == m and key in r and np.isfinite(float(r[key]))]
                for m in methods]
        axis.boxplot([d if d else [np.nan] for d in data])
        axis.set_xticks(range(1, len(methods) + 1))
        axis.set_xticklabels([m if len(m) < 24 else m[:22] + "…" for m in methods], rotation=30, ha="right", fontsize=7)
        axis.set_title(names[key], fontsize=9)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
