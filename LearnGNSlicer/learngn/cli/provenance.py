"""What produced a result: the key ``learngn batch`` compares to decide whether a finished pair is still valid.

The key holds the engine version, the preset, the complete settings (preset plus overrides), the checksum
of the learned model's weights, the input files and the requested outputs.  Every ``summary.json`` records
it under ``result_key``; a rerun skips a pair only when the key it would produce is the recorded one.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional

from .. import __version__
from ..models import read_card
from ..settings import RegistrationSettings
from .options import OutputOptions

KEY_ENTRY = "result_key"
#: Entries of the key, with the words used when one of them changed.
_ENTRIES = {"engine_version": "engine version", "preset": "preset", "settings": "settings",
            "model_sha256": "model checksum", "inputs": "input files", "outputs": "requested outputs"}


def result_key(preset: str, settings: RegistrationSettings, inputs: Mapping[str, str],
               output: OutputOptions) -> Dict[str, Any]:
    """The key of a result made with these settings from these (resolved) input paths, as JSON values."""
    key = {
        "engine_version": __version__,
        "preset": preset,
        "settings": settings.to_dict(),
        "model_sha256": read_card(settings.model)["sha256"] if settings.model else None,
        "inputs": dict(sorted(inputs.items())),
        "outputs": {"field_files": list(output.field_files), "report": output.report},
    }
    return json.loads(json.dumps(key))  # tuples become lists, as in a summary read back


def key_changes(recorded: Optional[Mapping[str, Any]], current: Mapping[str, Any]) -> List[str]:
    """What differs between a recorded key and the current one, in words; empty when the result is valid."""
    if not isinstance(recorded, Mapping):
        return ["no record of what produced it (an older or incomplete summary)"]
    changes = []
    for entry, words in _ENTRIES.items():
        old, new = recorded.get(entry), current.get(entry)
        if old == new:
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            names = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
            details = ", ".join(f"{n} {old.get(n)!r} -> {new.get(n)!r}" for n in names)
            changes.append(f"{words} ({details})")
        else:
            changes.append(f"{words} ({old!r} -> {new!r})")
    return changes
