"""Training and evaluation data: cases (label map, optional image), pairs, and loading onto the working grid.

Two ways to name data:

* a Learn2Reg ``dataset.json`` (keys ``training`` with ``{"image", "label"}`` entries and
  ``registration_val`` / ``registration_test`` with ``{"fixed", "moving"}`` entries, paths relative to the
  file's folder; a ``label``-only entry is allowed, for label maps without images);
* a folder of label maps (``label_0001.nii.gz`` ...), with the validation cases named explicitly.

Cases that take part in a validation pair are never used for training.  Loading puts a case on the
working grid exactly like :func:`learngn.register` does (isotropic grid over the fixed voxel centres,
nearest-neighbour labels), so a model trained here sees the features the product computes.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..features import signed_distance_maps
from ..geometry import working_grid
from ..sampling import resample

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_CASE_NUMBER = re.compile(r"(\d+)(?:_\d{4})?(?:\.nii\.gz|\.nii|\.nrrd|\.nhdr|\.mha|\.mhd)$")


@dataclass(frozen=True)
class Case:
    """One subject: a label map and, when there is one, the image it segments."""

    name: str
    label: Path
    image: Optional[Path] = None


@dataclass(frozen=True)
class Pair:
    fixed: str
    moving: str


@dataclass
class Dataset:
    cases: Dict[str, Case]
    training: List[str]
    validation_pairs: List[Pair]
    label_names: Dict[int, str] = field(default_factory=dict)

    @property
    def validation_cases(self) -> List[str]:
        return sorted({c for p in self.validation_pairs for c in (p.fixed, p.moving)})

    def check_disjoint(self) -> None:
        leaked = sorted(set(self.training) & set(self.validation_cases))
        if leaked:
            raise InputError(f"validation case(s) {', '.join(leaked)} are also in the training set")


def case_name(path: str) -> str:
    """``.../AbdomenCTCT_0001_0000.nii.gz`` and ``label_0001.nii.gz`` both give ``0001``."""
    match = _CASE_NUMBER.search(Path(path).name)
    if match:
        return match.group(1)
    name = Path(path).name
    for suffix in LABEL_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_dataset_json(path: Path) -> Dataset:
    """Parse a Learn2Reg ``dataset.json``; validation cases are removed from the training list."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the dataset description {path}: {error}") from None
    root = path.parent
    if "training" not in spec:
        raise InputError(f"{path} has no 'training' list; it does not follow the Learn2Reg dataset.json layout")

    def resolve(entry: Optional[str]) -> Optional[Path]:
        return None if not entry else (root / entry).resolve()

    cases: Dict[str, Case] = {}
    by_image: Dict[str, str] = {}
    for entry in spec["training"]:
        if "label" not in entry:
            continue  # images without labels cannot supervise training
        image = resolve(entry.get("image"))
        name = case_name(entry.get("image") or entry["label"])
        cases[name] = Case(name, resolve(entry["label"]), image)
        if image is not None:
            by_image[str(image)] = name
    pairs: List[Pair] = []
    for entry in spec.get("registration_val", []):
        names = []
        for key in ("fixed", "moving"):
            resolved = str(resolve(entry[key]))
            names.append(by_image.get(resolved, case_name(entry[key])))
        if all(n in cases for n in names):
            pairs.append(Pair(*names))
    validation = {c for p in pairs for c in (p.fixed, p.moving)}
    training = sorted(n for n in cases if n not in validation)
    labels = {int(k): str(v) for k, v in spec.get("labels", {}).items() if str(k).lstrip("-").isdigit()}
    dataset = Dataset(cases, training, pairs, labels)
    dataset.check_disjoint()
    return dataset


def labels_folder(folder: Path, validation_cases: Sequence[str], pattern: str = "*") -> Dataset:
    """Every label map in ``folder``; pairs are all pairs among ``validation_cases`` (first one fixed)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"label folder {folder} does not exist")
    files = sorted(p for p in folder.glob(pattern) if p.name.endswith(LABEL_SUFFIXES))
    if not files:
        raise InputError(f"no label maps ({', '.join(LABEL_SUFFIXES)}) in {folder}")
    cases = {case_name(str(p)): Case(case_name(str(p)), p) for p in files}
    missing = [c for c in validation_cases if c not in cases]
    if missing:
        raise InputError(f"validation case(s) {', '.join(missing)} not found in {folder}")
    pairs = [Pair(a, b) for a, b in itertools.combinations(list(validation_cases), 2)]
    training = sorted(n for n in cases if n not in set(validation_cases))
    dataset = Dataset(cases, training, pairs)
    dataset.check_disjoint()
    return dataset


def open_dataset(dataset_json: Optional[str] = None, labels_dir: Optional[str] = None,
                 validation_cases: Sequence[str] = (), brain_data: Optional[str] = None) -> Dataset:
    if sum(bool(source) for source in (dataset_json, labels_dir, brain_data)) != 1:
        raise InputError("give one source of training data: a dataset.json (--dataset), a folder of label maps "
                         "(--labels-dir) or the folder holding brain_mindboggle/ (--brain-data)")
    if brain_data:
        from .accuracy import brain_training_dataset  # the benchmark owns the brain split

        return brain_training_dataset(Path(brain_data))
    if dataset_json:
        return read_dataset_json(Path(dataset_json))
    return labels_folder(Path(labels_dir), list(validation_cases))


@dataclass
class CaseData:
    """A case on the working grid: integer labels, distance maps of every label, the image if any."""

    name: str
    grid: sitk.Image
    labels: np.ndarray               # (z, y, x) int32
    sdm: Optional[np.ndarray]        # (n_labels, z, y, x) float32, channel i = label_values[i]
    image: Optional[np.ndarray]      # (z, y, x) float32, original intensities (HU for CT)

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.labels.shape)  # type: ignore[return-value]


def read_image(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"cannot read {path}: {str(error).strip().splitlines()[-1]}") from None


def load_case(case: Case, spacing: float, label_values: Sequence[int], *, with_sdm: bool = True,
              with_image: bool = True, sdm_clip_mm: float = 40.0) -> CaseData:
    """Resample one case onto its isotropic working grid (as register() does) and precompute its SDMs."""
    label_image = read_image(case.label)
    grid = working_grid(label_image, spacing)
    labels = sitk.GetArrayFromImage(resample(label_image, grid, None, sitk.sitkNearestNeighbor,
                                             pixel_type=sitk.sitkInt32)).astype(np.int32)
    sdm = signed_distance_maps(labels, list(label_values), spacing, sdm_clip_mm) if with_sdm else None
    image = None
    if with_image and case.image is not None:
        image_sitk = read_image(case.image)
        image = sitk.GetArrayFromImage(resample(image_sitk, grid, None, sitk.sitkLinear,
                                                default_value=float(sitk.GetArrayViewFromImage(image_sitk).min())))
        image = image.astype(np.float32)
    return CaseData(case.name, grid, labels, sdm, image)


def label_values_of(dataset: Dataset, names: Sequence[str]) -> List[int]:
    """Non-zero labels found in the given cases (read at their own resolution)."""
    values: set = set()
    for name in names:
        array = sitk.GetArrayViewFromImage(read_image(dataset.cases[name].label))
        values.update(int(v) for v in np.unique(array) if v != 0)
    return sorted(values)
