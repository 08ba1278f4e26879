"""One line for the user about a finished registration, from the engine's ``summary.json``.

The summary's layout is the engine's (docs/ENGINE_API.md: metrics, timings, device); missing
entries are left out rather than shown as errors, so an older or newer engine still gets a line.
"""
from __future__ import annotations

from typing import List, Optional

from .i18n import tr as _


def _number(value) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def engine_seconds(summary: dict) -> Optional[float]:
    """The engine's total time: ``timings_s["total"]`` (or ``timings``), else the sum of its stages."""
    timings = summary.get("timings_s") or summary.get("timings") or {}
    total = _number(timings.get("total"))
    if total is not None:
        return total
    stages = [_number(v) for v in timings.values()]
    stages = [v for v in stages if v is not None]
    return sum(stages) if stages else None


def describe(summary: dict, elapsed: Optional[float] = None) -> str:
    """E.g. "Done in 3.1 s from the request to the result (registration 2.4 s) on cuda. ..." (the
    registration's time is the engine's ``register()``, without starting the worker, files and nodes)."""
    parts = []
    seconds = engine_seconds(summary)
    device = summary.get("device") or _("unknown device")
    if elapsed is not None and seconds is not None:
        parts.append(_("Done in {elapsed:.1f} s from the request to the result (registration {engine:.1f} s) on {device}.").format(
            elapsed=elapsed, engine=seconds, device=device))
    elif elapsed is not None or seconds is not None:
        parts.append(_("Done in {seconds:.1f} s on {device}.").format(seconds=elapsed if elapsed is not None else seconds, device=device))
    else:
        parts.append(_("Done on {device}.").format(device=device))
    metrics = summary.get("metrics") or {}
    folded = _number(metrics.get("negative_jacobian_percent"))
    if folded is not None:
        parts.append(_("Negative Jacobian: {percent:.2f} % of voxels.").format(percent=folded))
    before, after = _number(metrics.get("similarity_before")), _number(metrics.get("similarity_after"))
    if before is not None and after is not None:
        parts.append(_("Similarity {before:.3f} -> {after:.3f}.").format(before=before, after=after))
    dice_before, dice_after = _number(metrics.get("dice_before")), _number(metrics.get("dice_after"))
    if dice_before is not None and dice_after is not None:  # only with segmentations
        parts.append(_("Dice {before:.3f} -> {after:.3f}.").format(before=dice_before, after=dice_after))
    return " ".join(parts)


def engine_warnings(summary: dict) -> List[str]:
    """Warnings the engine put in its summary (e.g. about the inputs), as text lines."""
    warnings = summary.get("warnings") or []
    return [str(w) for w in warnings] if isinstance(warnings, (list, tuple)) else [str(warnings)]
