"""All-or-nothing output folders: write into a hidden sibling, rename into place at the end.

A failed or cancelled run leaves nothing behind (not even the parent folders it created), and an
existing folder is only replaced with ``--overwrite``, and then only once the new results are complete.
"""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

from ..errors import InputError


def check_output_folder(path: Path, overwrite: bool) -> None:
    """Refuse to touch an existing non-empty folder (or a file) unless ``overwrite``, and fail early
    (before a long registration) when the folder could not be created."""
    if not path.exists():
        ancestor = next(p for p in Path(os.path.abspath(path)).parents if p.exists())
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise InputError(f"cannot create the output folder {str(path)!r}: {str(ancestor)!r} is not a writable "
                             "folder; choose another path with -o")
        return
    if not path.is_dir():
        raise InputError(f"the output {str(path)!r} exists and is not a folder; choose another path with -o")
    if not overwrite and any(path.iterdir()):
        raise InputError(f"the output folder {str(path)!r} already exists and is not empty; choose another "
                         "folder with -o, or pass --overwrite to replace it")


def _sibling(path: Path, tag: str) -> Path:
    """A new, empty, hidden folder beside ``path`` (created with the user's default permissions)."""
    while True:
        candidate = path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


def _make_parents(folder: Path) -> List[Path]:
    """Create ``folder`` and its missing parents; return those created, deepest first."""
    missing = []
    for candidate in [folder, *folder.parents]:
        if candidate.exists():
            break
        missing.append(candidate)
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _commit(staging: Path, path: Path, overwrite: bool) -> None:
    check_output_folder(path, overwrite)  # again: something may have appeared while we were running
    if not path.exists():
        os.replace(staging, path)
        return
    old = _sibling(path, "old")
    old.rmdir()
    os.replace(path, old)
    try:
        os.replace(staging, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_folder(path: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder to write into; it becomes ``path`` when the block ends without error."""
    path = Path(os.path.abspath(path))
    check_output_folder(path, overwrite)
    created = _make_parents(path.parent)
    staging = _sibling(path, "partial")
    try:
        yield staging
        _commit(staging, path, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
        raise
