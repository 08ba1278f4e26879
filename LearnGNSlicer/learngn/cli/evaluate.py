"""``learngn evaluate``: Dice, HD95, TRE, folding and time of several methods over pairs (docs/EVALUATION.md)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

DEFAULT_METHODS = "identity,gn:segmentation-guided,convexadam,ants,elastix"
#: What the accuracy suites compare by default: the default preset against every peer.
SUITE_METHODS = "identity,learngn:generic,convexadam,ants,elastix"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate", help="score learned GN, untrained GN and installed peers over validation pairs",
        description="Register every pair with every method (learngn methods through learngn.register, the "
                    "product path) and write results.csv, summary.md and boxplot.png to OUTDIR. Peers whose "
                    "package is not installed are skipped with a note.")
    suites = parser.add_argument_group("accuracy benchmark on the shared real data (docs/EVALUATION.md)")
    suites.add_argument("--suite", metavar="NAMES",
                        help="comma-separated: brain (15 labelled brain MRIs, not pre-aligned), ct (real CTs with "
                             "known deformations), abdomen (synthetic CT of real abdomen anatomy), or all; "
                             "replaces --dataset/--labels-dir")
    suites.add_argument("--data", metavar="DIR", default=os.environ.get("LEARNGN_DATA"),
                        help="the folder holding brain_mindboggle/, ct/ and abdomen_ctct_labels/ "
                             "(default: $LEARNGN_DATA)")
    suites.add_argument("--split", choices=("tuning", "reporting"), default="reporting",
                        help="tuning: the cases that choose settings; reporting: the cases that choose nothing "
                             "(default: %(default)s)")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", metavar="JSON", help="Learn2Reg dataset.json: pairs from registration_val")
    data.add_argument("--labels-dir", metavar="DIR", help="folder of label maps; pairs among --validation-cases")
    data.add_argument("--validation-cases", metavar="IDS", default="0001,0004,0007,0010,0023",
                      help="comma-separated case ids (with --labels-dir); all pairs among them, first one fixed")
    data.add_argument("--images", choices=("dataset", "synthetic-ct"), default="dataset",
                      help="the images to register: the dataset's, or CT-like images synthesised from the labels "
                           "(fixed per case, for label maps without images)")
    data.add_argument("--landmarks-dir", metavar="DIR",
                      help="CSV files (x,y,z LPS mm per line) named after the case ids, for TRE")
    data.add_argument("--spacing", type=float, default=None, metavar="MM",
                      help="resample every case to this isotropic spacing first (labels nearest-neighbour), so "
                           "that slow peers fit a time budget; every method is scored on the same grid")
    data.add_argument("--max-pairs", type=int, default=None, help="evaluate only the first N pairs")
    parser.add_argument("--methods", default=None,
                        help="comma-separated: learngn:PRESET (as shipped), gn:PRESET (same settings, no learned "
                             "model), identity, convexadam, ants, elastix; overrides as learngn:PRESET:key=value;"
                             "key=value (default: " + DEFAULT_METHODS + "; with --suite: " + SUITE_METHODS + ")")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    parser.add_argument("--prealign", choices=("none", "com", "affine"), default="none",
                        help="pre-alignment for the learngn methods (Learn2Reg pairs are already aligned: none)")
    parser.add_argument("--device", default="cpu", help="device of the learngn methods (auto, cpu, cuda)")
    parser.add_argument("--title", default="", help="title of the table and plot")
    parser.add_argument("--progress", choices=("bar", "none"), default="bar")
    parser.add_argument("--record-in-card", metavar="NAME", action="append", default=[],
                        help="write the figures of learngn:PRESET and gn:PRESET (PRESET: the model's) and this "
                             "command into the model card NAME.json (repeatable)")
    return parser


def _split_methods(text: str):
    """Split on commas that start a new method (overrides use ';' between key=value items)."""
    return [m.strip().replace(";", ",") for m in text.split(",") if m.strip()]


def run(args: argparse.Namespace) -> int:
    if args.suite:
        return run_suites(args)
    args.methods = args.methods or DEFAULT_METHODS
    from ..training.data import open_dataset
    from ..models import read_card
    from ..training.evaluation import evaluate

    cards = [read_card(name)["_path"] for name in args.record_in_card]  # an unknown name fails before the work
    cases = [c.strip() for c in args.validation_cases.split(",") if c.strip()]
    dataset = open_dataset(args.dataset, args.labels_dir, cases)
    pairs = dataset.validation_pairs[: args.max_pairs] if args.max_pairs else dataset.validation_pairs
    result = evaluate(dataset, _split_methods(args.methods), Path(args.output), pairs=pairs, images=args.images,
                      prealign=args.prealign, device=args.device,
                      landmarks_dir=Path(args.landmarks_dir) if args.landmarks_dir else None,
                      progress=args.progress == "bar", title=args.title, spacing=args.spacing,
                      log=lambda line: sys.stderr.write(f"learngn: note: {line}\n"))
    markdown = result.files["markdown"].read_text(encoding="utf-8")
    print(markdown)
    _record_in_cards(args, cards, [(result.rows, markdown)])
    print("wrote " + ", ".join(str(p) for p in result.files.values()))
    return 0


def _record_in_cards(args: argparse.Namespace, cards, tables) -> None:
    """Write each card's figures (its learned method against its untrained twin) from the first of ``tables``
    (rows, Markdown) where both ran."""
    from ..errors import InputError
    from ..training.cards import record_validation

    command = shlex.join(getattr(args, "command_line", ["learngn", "evaluate"]))
    for card in cards:
        for index, (rows, markdown) in enumerate(tables):
            try:
                record_validation(Path(card), rows, command, markdown)
            except InputError:
                if index == len(tables) - 1:
                    raise
                continue
            print(f"recorded the validation figures in {card}")
            break


def run_suites(args: argparse.Namespace) -> int:
    """``--suite``: the accuracy benchmark on the shared real data, one table per suite."""
    from ..errors import InputError
    from ..training.accuracy import SUITES, run_suites as run_accuracy_suites

    if not args.data:
        raise InputError("--suite needs the shared data: give --data DIR (the folder holding brain_mindboggle/, "
                         "ct/ and abdomen_ctct_labels/) or set LEARNGN_DATA")
    from ..models import read_card

    cards = [read_card(name)["_path"] for name in args.record_in_card]  # an unknown name fails before the work
    suites = list(SUITES) if args.suite == "all" else [s.strip() for s in args.suite.split(",") if s.strip()]
    results = run_accuracy_suites(Path(args.data), suites, _split_methods(args.methods or SUITE_METHODS),
                                  Path(args.output), split=args.split, device=args.device,
                                  max_pairs=args.max_pairs, progress=args.progress == "bar",
                                  log=lambda line: sys.stderr.write(f"learngn: note: {line}\n"))
    for result in results:
        print(result.markdown)
    _record_in_cards(args, cards, [(result.rows, result.markdown) for result in results])
    print(f"wrote {Path(args.output) / 'accuracy.md'} and one folder per suite")
    return 0
