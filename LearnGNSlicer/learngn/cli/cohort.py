"""A cohort for ``learngn batch``: pairs read from a CSV file, and the share of them one shard runs.

Columns: ``fixed``, ``moving`` (required), ``id``, ``fixed_mask``, ``moving_mask``, ``fixed_segmentation``,
``moving_segmentation``, ``initial_transform`` (optional; empty cells mean none).  Relative paths are
relative to the CSV file's folder.  Without an ``id`` column a pair is named after its row: pair0001, ...
"""
from __future__ import annotations

import argparse
import csv
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import InputError
from .pipeline import OPTIONAL_INPUTS, InputPaths

REQUIRED_COLUMNS = ("fixed", "moving")
COLUMNS = ("id", *REQUIRED_COLUMNS, *OPTIONAL_INPUTS)
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class Pair:
    row: int          # line number in the CSV file (the header is line 1), for messages
    id: str
    paths: InputPaths


def _resolve(cell: Optional[str], folder: Path) -> Optional[str]:
    text = (cell or "").strip()
    if not text:
        return None
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else folder / path)


def _header(fieldnames: Optional[Sequence[str]], csv_path: Path) -> Dict[str, str]:
    """Normalised column name -> the name as written; checks the required ones are there."""
    names = {name.strip().lower(): name for name in fieldnames or [] if name is not None}
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise InputError(f"{csv_path} has no column {' or '.join(missing)} (found: {', '.join(names) or 'no header'}); "
                         f"the first line must name the columns, e.g. 'id,fixed,moving'. Known columns: "
                         f"{', '.join(COLUMNS)}")
    unknown = sorted(set(names) - set(COLUMNS))
    if unknown:
        warnings.warn(f"{csv_path}: ignoring unknown column(s) {', '.join(unknown)}; known columns: "
                      f"{', '.join(COLUMNS)}", UserWarning, stacklevel=3)
    return names


def read_pairs(csv_path: Path) -> List[Pair]:
    """Every pair of the CSV file, checked for structure (files are checked when each pair runs)."""
    if not csv_path.is_file():
        raise InputError(f"the pairs file {str(csv_path)!r} does not exist; give a CSV file with columns "
                         "fixed,moving (and optionally id, masks, segmentations)")
    folder = csv_path.resolve().parent
    try:
        pairs = _parse(csv_path, folder)
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read {csv_path} as a CSV text file ({error}); give a comma-separated file with "
                         "a header line such as 'id,fixed,moving'") from None
    if not pairs:
        raise InputError(f"{csv_path} lists no pairs; add one line per pair below the header")
    seen: Dict[str, int] = {}
    for pair in pairs:
        if pair.id in seen:
            raise InputError(f"{csv_path}: id {pair.id!r} is used on lines {seen[pair.id]} and {pair.row}; ids "
                             "name the output folders and must be unique")
        seen[pair.id] = pair.row
    return pairs


def _parse(csv_path: Path, folder: Path) -> List[Pair]:
    pairs: List[Pair] = []
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        names = _header(reader.fieldnames, csv_path)
        for record in reader:
            cells = {column: (record.get(name) or "").strip() for column, name in names.items()}
            if not any(cells.values()):
                continue
            row = reader.line_num
            for column in REQUIRED_COLUMNS:
                if not cells.get(column):
                    raise InputError(f"{csv_path} line {row}: the {column} cell is empty; every pair needs a "
                                     "fixed and a moving image")
            pair_id = cells.get("id") or f"pair{len(pairs) + 1:04d}"
            if not _SAFE_ID.match(pair_id) or pair_id in (".", ".."):
                raise InputError(f"{csv_path} line {row}: id {pair_id!r} cannot be a folder name; use letters, "
                                 "digits and . _ + - only")
            paths = InputPaths(**{c: _resolve(cells.get(c), folder) for c in ("fixed", "moving", *OPTIONAL_INPUTS)})
            pairs.append(Pair(row, pair_id, paths))
    return pairs


def shard_type(text: str) -> Tuple[int, int]:
    """``I/N`` with 1 <= I <= N (1-based, like most array job indices)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise argparse.ArgumentTypeError(f"expected I/N with 1 <= I <= N (1-based), got {text!r}; e.g. "
                                         "--shard ${SLURM_ARRAY_TASK_ID}/10 with --array=1-10")
    return int(match.group(1)), int(match.group(2))


def select_shard(pairs: Sequence[Pair], shard: Tuple[int, int]) -> List[Pair]:
    """Round robin by position: shard I of N takes pairs I, I+N, I+2N, ... (1-based positions)."""
    index, count = shard
    return [pair for position, pair in enumerate(pairs) if position % count == index - 1]
