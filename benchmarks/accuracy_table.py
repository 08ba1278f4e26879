"""One table from several ``learngn evaluate`` runs of the same suite (e.g. the peers in one background run,
the project's presets in another), for docs/EVALUATION.md.

    python benchmarks/accuracy_table.py --title "Brain MRI (reporting)" out/brain_peers/brain out/brain_ours/brain

Rows of the same method on the same pair are taken once (the first folder wins).  Pairs that a method did
not finish are left out of its mean and counted in its ``pairs`` column; ``--common-pairs`` keeps only the
pairs that every method finished.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LearnGNSlicer"))

from learngn.training.evaluation import markdown_summary  # noqa: E402


def _number(text: str) -> object:
    try:
        return float(text)
    except ValueError:
        return text


def read_rows(folders: List[Path]) -> List[Dict[str, object]]:
    rows: List[Dict[str, object]] = []
    seen = set()
    for folder in folders:
        with open(Path(folder) / "results.csv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                key = (row["fixed"], row["moving"], row["method"])
                if key in seen:
                    continue
                seen.add(key)
                rows.append({k: _number(v) for k, v in row.items() if v != ""})
    return rows


def common_pairs(rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """The rows of the pairs on which every method has a successful result."""
    methods = {r["method"] for r in rows}
    done: Dict[tuple, set] = {}
    for row in rows:
        if row.get("status") == "ok":
            done.setdefault((row["fixed"], row["moving"]), set()).add(row["method"])
    complete = {pair for pair, finished in done.items() if finished == methods}
    return [r for r in rows if (r["fixed"], r["moving"]) in complete]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders holding a results.csv of one suite")
    parser.add_argument("--title", default="")
    parser.add_argument("--common-pairs", action="store_true",
                        help="only the pairs that every method finished, so that the means compare like with like")
    args = parser.parse_args(argv)
    rows = read_rows(args.folders)
    if args.common_pairs:
        rows = common_pairs(rows)
    print(markdown_summary(rows, [], {}, [], args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
