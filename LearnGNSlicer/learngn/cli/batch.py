"""``learngn batch PAIRS.csv -o OUTDIR``: a cohort, resumable, one folder per pair, a summary table.

A pair whose ``OUTDIR/<id>/summary.json`` exists is skipped when it was made by what this run would use
(engine version, preset, settings, model checksum, inputs, outputs: ``cli.provenance``); otherwise it runs
again and its result is replaced once the new one is complete (--overwrite reruns every pair).  A failing pair
gets ``OUTDIR/<id>/error.txt`` and the others go on; ``--shard I/N`` runs every N-th pair so an array
job can spread a cohort over a cluster.  Exit code 1 when a pair failed, 130 when cancelled.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, TextIO

from ..errors import RegistrationCancelled
from ..io import read_json
from .cancel import CancelOnSignal
from .cohort import COLUMNS, Pair, read_pairs, select_shard, shard_type
from .errors import EXIT_FAILURE, CommandFailed, classify
from .options import OutputOptions, RegistrationOptions, add_output_options, add_settings_options, \
    check_segmentations, output_options, registration_options
from .pipeline import SUMMARY_FILE, number, run_pair
from .progress import Reporter, make_reporter
from .provenance import KEY_ENTRY, key_changes, result_key

ERROR_FILE = "error.txt"
TABLE_COLUMNS = ("id", "status", "time_s", "ncc_before", "ncc_after", "negative_jacobian_percent",
                 "dice_before", "dice_after", "error")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "batch", help="register every pair listed in a CSV file (resumable, shardable)",
        description="Register every pair of PAIRS.csv into OUTDIR/<id>/ (the files of 'learngn register'). "
                    f"Columns: {', '.join(COLUMNS)}; fixed and moving are required, relative paths are relative "
                    "to the CSV file. Pairs already done with the same settings, preset, model and engine version "
                    "(recorded in their summary.json) are skipped, so running the same command again resumes a "
                    "cohort; a pair done with other settings runs again.",
        epilog="Exit codes: 0 all pairs done, 1 some pair failed (see OUTDIR/<id>/error.txt and the summary "
               "table), 2 bad input, 130 cancelled.")
    parser.add_argument("pairs", metavar="PAIRS.csv", help="the cohort: one pair per line")
    parser.add_argument("--shard", type=shard_type, default=(1, 1), metavar="I/N",
                        help="run only shard I of N (1-based): pairs I, I+N, I+2N, ... in file order; the table "
                             "is then batch_summary-shardIofN.csv")
    add_settings_options(parser)
    add_output_options(parser, output_help="results folder: one subfolder per pair id, and batch_summary.csv")
    return parser


def _row(pair: Pair, status: str, summary: Optional[Dict[str, Any]] = None, error: str = "") -> Dict[str, Any]:
    metrics = (summary or {}).get("metrics") or {}
    timings = (summary or {}).get("timings_s") or {}
    return {"id": pair.id, "status": status, "time_s": timings.get("wall"),
            **{k: metrics.get(k) for k in TABLE_COLUMNS[3:8]}, "error": error}


def _record_failure(folder: Path, pair: Pair, message: str, details: str) -> None:
    """error.txt for the pair, unless an earlier complete result sits there (it stays valid)."""
    if (folder / SUMMARY_FILE).exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    text = f"{pair.id} (line {pair.row}): {message}\n"
    (folder / ERROR_FILE).write_text(text + (f"\n{details}" if details else ""), encoding="utf-8")


def _forget_failure(folder: Path) -> None:
    """An earlier run's error.txt is ours to remove before trying again."""
    stale = folder / ERROR_FILE
    if stale.is_file():
        stale.unlink()
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty: the pair's own run reports it


def _read_summary(path: Path) -> Optional[Dict[str, Any]]:
    try:
        summary = read_json(path)
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _run_one(pair: Pair, outdir: Path, registration: RegistrationOptions, output: OutputOptions,
             reporter: Reporter, cancel: CancelOnSignal, command: List[str], position: str) -> Dict[str, Any]:
    folder = outdir / pair.id
    done = folder / SUMMARY_FILE
    if done.is_file() and not output.overwrite:
        summary = _read_summary(done)
        changes = key_changes((summary or {}).get(KEY_ENTRY),
                              result_key(registration.preset, registration.settings, pair.paths.resolved(), output))
        if not changes:
            reporter.note(f"pair {position}: already done ({done}); skipped")
            return _row(pair, "skipped", summary)
        reporter.note(f"pair {position}: the result in {folder} was made differently ({'; '.join(changes)}); "
                      "running it again (the old result stays until the new one is complete)")
        output = dataclasses.replace(output, overwrite=True)
    _forget_failure(folder)
    reporter.note(f"pair {position} (line {pair.row}): {pair.paths.moving} -> {pair.paths.fixed}")
    try:
        check_segmentations(registration, pair.paths.given(), lambda name: f"the {name} column")
        summary = run_pair(pair.paths, folder, registration, output, reporter, cancel, command)
    except (RegistrationCancelled, KeyboardInterrupt):
        raise
    except Exception as error:  # one bad pair must not stop the cohort
        code, message = classify(error)
        details = traceback.format_exc() if code == EXIT_FAILURE else ""
        _record_failure(folder, pair, message, details)
        reporter.close()
        reporter.note(f"failed: {message}")
        return _row(pair, "failed", error=message)
    reporter.close()
    return _row(pair, "done", summary)


def _table_path(outdir: Path, shard: tuple) -> Path:
    index, count = shard
    return outdir / ("batch_summary.csv" if count == 1 else f"batch_summary-shard{index}of{count}.csv")


def _write_table(rows: List[Dict[str, Any]], path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in TABLE_COLUMNS})
    os.replace(partial, path)


def _print_table(rows: List[Dict[str, Any]], stream: TextIO) -> None:
    header = ("id", "status", "time s", "NCC before", "NCC after", "neg. Jac. %", "Dice before", "Dice after")
    lines = [[r["id"], r["status"], number(r["time_s"], ".1f"), number(r["ncc_before"]), number(r["ncc_after"]),
              number(r["negative_jacobian_percent"], ".2f"), number(r["dice_before"]), number(r["dice_after"])]
             for r in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    for cells in [header, ["-" * w for w in widths], *lines]:
        stream.write("| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |\n")
    for row in rows:
        if row["error"]:
            stream.write(f"{row['id']}: {row['error']}\n")
    stream.flush()


def run(args: argparse.Namespace) -> int:
    registration = registration_options(args)
    output = output_options(args)
    pairs = select_shard(read_pairs(Path(args.pairs)), args.shard)
    outdir = Path(args.output).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    reporter = make_reporter(args.progress)
    rows: List[Dict[str, Any]] = []
    try:
        with CancelOnSignal() as cancel:
            for position, pair in enumerate(pairs, 1):
                reporter.label = pair.id
                try:
                    rows.append(_run_one(pair, outdir, registration, output, reporter, cancel, args.command_line,
                                         f"{position} of {len(pairs)}"))
                except (RegistrationCancelled, KeyboardInterrupt):
                    rows.append(_row(pair, "cancelled"))
                    raise
    finally:
        reporter.close()
        reporter.label = None
        rows += [_row(pair, "not run") for pair in pairs[len(rows):]]
        table = _table_path(outdir, args.shard)
        _write_table(rows, table)
        _print_table(rows, sys.stderr if args.progress == "jsonl" else sys.stdout)
    failed = [r["id"] for r in rows if r["status"] == "failed"]
    if failed:
        raise CommandFailed(f"{len(failed)} of {len(rows)} pairs failed ({', '.join(failed)}); see "
                            f"{outdir}/<id>/{ERROR_FILE} and {table}. Fix them and run the same command again: "
                            "finished pairs are skipped")
    reporter.done({"outdir": str(outdir), "table": str(table), "pairs": rows})
    return 0
