"""``learngn train``: fit the Gauss-Newton predictors on label-supervised pairs (docs/TRAINING.md)."""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any, Dict

from ..errors import InputError


def _floats(text: str):
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _crop(text: str):
    if text.lower() in ("none", "full", "0"):
        return ()  # whole volumes (None would mean "not given")
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected D,H,W or a single size or 'none', got {text!r}") from None
    return tuple(values * 3 if len(values) == 1 else values)


#: option name -> (TrainConfig field, type, help)
_OPTIONS = {
    "--setting": ("setting", str, "sdm: signed distance maps of the labels (the paper's 3D setting); synthetic: "
                                  "MIND of synthetic CT made from the labels; images: MIND of the dataset's images"),
    "--working-spacing": ("working_spacing", float, "isotropic working grid in mm (goes into the model card)"),
    "--grid-stride": ("grid_stride", int, "control-point spacing in working voxels"),
    "--iterations": ("iterations", int, "unrolled Gauss-Newton iterations per level"),
    "--levels": ("levels", int, "coarse-to-fine levels of the working grid (the product's default: 2)"),
    "--cg-max-iterations": ("cg_max_iterations", int, "conjugate-gradient steps per Gauss-Newton step"),
    "--lambda-start": ("lambda_start", float, "regularisation weight of the first iteration"),
    "--lambda-end": ("lambda_end", float, "regularisation weight of the last iteration"),
    "--regularisation": ("regularisation", float, "multiplies the lambda schedule (the brain-mri preset's 0.3: less "
                                                 "smoothing)"),
    "--steps": ("steps", int, "optimiser steps"),
    "--batch-size": ("batch_size", int, "pairs per optimiser step"),
    "--learning-rate": ("learning_rate", float, "Adam learning rate"),
    "--schedule": ("schedule", str, "learning-rate schedule: constant, or cosine (decays to 0 at the last step)"),
    "--trainable": ("trainable", str, "which part to fit: all, residual (f only), jacobian (J only), branches (the "
                                      "non-linear CNN branches of J and f, stencils kept), branches+features, or "
                                      "features (the feature network only)"),
    "--feature-width": ("feature_width", int, "hidden channels of the feature network (default 8)"),
    "--feature-depth": ("feature_depth", int, "3x3x3 layers of the feature network (default 1; each further one is "
                                              "a dilated residual layer that adds 4 voxels of context)"),
    "--feature-input": ("feature_input", str, "what the MIND feature network reads: intensity (the first models), "
                                              "or intensity+mind (the MIND channels too, so it can also scale them)"),
    "--optimizer": ("optimizer", str, "nsgd: SGD with momentum on the normalised gradient (default; safe for "
                                      "stencil-initialised predictors); adam"),
    "--loss": ("loss", str, "dice (soft Dice of warped one-hot labels) or ce (weighted cross-entropy)"),
    "--smoothness": ("smoothness_weight", float, "weight of the displacement smoothness penalty"),
    "--folding": ("folding_weight", float, "weight of the folding penalty mean(relu(0.1 - det(I + grad u)))"),
    "--synthesis": ("synthesis", str, "synthetic appearance for --setting synthetic: random (label-wise random "
                                      "intensities) or ct (typical CT values per organ, jittered)"),
    "--prealign": ("prealign", str, "pre-align every training pair as register() does before Gauss-Newton: "
                                    "affine (its default), com (centre of mass) or none (the default here, "
                                    "as the shipped models were trained)"),
    "--crop": ("crop", _crop, "training crop D,H,W in working voxels, or 'none' for whole volumes"),
    "--elastic-mm": ("elastic_mm", float, "maximum elastic augmentation (mm)"),
    "--rotation": ("rotation_degrees", float, "maximum augmentation rotation per axis (degrees)"),
    "--scale": ("scale", float, "maximum augmentation scaling per axis (0.08: +-8%%)"),
    "--translation-mm": ("translation_mm", float, "maximum augmentation translation per axis (mm)"),
    "--seed": ("seed", int, "random seed: the same seed and options reproduce a run"),
    "--threads": ("threads", int, "CPU threads for torch (0: its default)"),
    "--val-every": ("val_every", int, "score the validation pairs every N steps"),
    "--val-pairs": ("val_pairs", int, "validation pairs scored during training (0: none)"),
    "--checkpoint-every": ("checkpoint_every", int, "write checkpoint.pt every N steps"),
    "--max-cases": ("max_cases", int, "use only the first N training cases (quick trials)"),
    "--init-weights": ("init_weights", str, "start from the weights of an earlier run (its model.pt), e.g. to "
                                            "add a feature network to trained predictors"),
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train the learned Gauss-Newton predictors on labelled pairs",
        description="Unroll the differentiable Gauss-Newton steps and train the J and f predictors with weak "
                    "label supervision. Writes checkpoint.pt, model.pt, log.csv, curves.png, config.json and "
                    "summary.json to OUTDIR; --export also writes a shipped model (weights + card).")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", metavar="JSON", help="Learn2Reg dataset.json (training + registration_val)")
    data.add_argument("--labels-dir", metavar="DIR", help="folder of label maps (NIfTI/NRRD), without images")
    data.add_argument("--brain-data", metavar="DIR",
                      help="the folder holding brain_mindboggle/ (images + label maps): trains on the accuracy "
                           "benchmark's brain tuning people, monitors two of them, never reads the reporting people")
    data.add_argument("--validation-cases", metavar="IDS",
                      help="comma-separated case ids kept for validation with --labels-dir (never trained on); "
                           "default: the Learn2Reg abdomen validation cases 0001,0004,0007,0010,0023")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="run folder")
    parser.add_argument("--config", metavar="JSON", help="start from the options in this file (a run's config.json)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTDIR/checkpoint.pt")
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                        help="no random affine/elastic augmentation")
    parser.add_argument("--feature-net", dest="feature_net", action="store_true", default=None,
                        help="add a compact CNN that refines the features (MIND from the intensities, or each "
                             "distance map); its weights ship with the model")
    parser.add_argument("--progress", choices=("bar", "none"), default="bar")
    options = parser.add_argument_group("training options (defaults: the product's learngn.RegistrationSettings on a "
                                        "6 mm grid, and learngn.training.TrainConfig)")
    from ..training.config import FEATURE_INPUTS, SETTINGS, TRAINABLE  # ~25 ms after the torch that learngn.cli imports

    choices = {"--setting": SETTINGS, "--loss": ("dice", "ce"), "--optimizer": ("nsgd", "adam"),
               "--trainable": TRAINABLE, "--feature-input": FEATURE_INPUTS, "--synthesis": ("random", "ct"),
               "--schedule": ("constant", "cosine"), "--prealign": ("none", "com", "affine")}
    for flag, (_, kind, text) in _OPTIONS.items():
        options.add_argument(flag, type=kind, default=None, help=text, choices=choices.get(flag))
    tuning = parser.add_argument_group("tuning classic GN first (on training pairs)")
    tuning.add_argument("--tune-lambda", type=_floats, metavar="STARTS",
                        help="grid of lambda_start values; the best classic-GN schedule is used for training")
    tuning.add_argument("--tune-ratios", type=_floats, default=[5.0], metavar="R",
                        help="lambda_start/lambda_end ratios to try (default 5)")
    tuning.add_argument("--tune-pairs", type=int, default=6, help="training pairs used for tuning")
    tuning.add_argument("--max-folding", type=float, default=0.05,
                        help="largest %% negative Jacobian a tuned schedule may have (default 0.05)")
    tuning.add_argument("--tune-only", action="store_true", help="stop after tuning")
    export = parser.add_argument_group("shipping the model")
    export.add_argument("--export", metavar="NAME", help="write NAME.pt and NAME.json into --models-dir")
    export.add_argument("--preset-name", metavar="PRESET", help="preset the card defines (default: NAME)")
    export.add_argument("--description", default=None, help="one-line description of the preset")
    export.add_argument("--models-dir", default="Resources/Models", help="where --export writes")
    export.add_argument("--export-weights", choices=("last", "best"), default="last",
                        help="ship the last weights (default) or those of the best validation Dice (best.pt)")
    return parser


def build_config(args: argparse.Namespace):
    from ..training.config import ABDOMEN_VALIDATION_CASES, TrainConfig

    values: Dict[str, Any] = {}
    if args.config:
        values = json.loads(Path(args.config).read_text(encoding="utf-8"))
    values["output"] = args.output
    if args.dataset or args.labels_dir or args.brain_data:
        values["dataset"], values["labels_dir"], values["brain_data"] = args.dataset, args.labels_dir, args.brain_data
    if args.validation_cases:
        values["validation_cases"] = [c.strip() for c in args.validation_cases.split(",") if c.strip()]
    values.setdefault("validation_cases", list(ABDOMEN_VALIDATION_CASES))
    for flag, (name, _, _) in _OPTIONS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            values[name] = None if value == () else value
    if args.augment is False:
        values["augment"] = False
    if args.feature_net:
        values["feature_net"] = True
    if not any(values.get(source) for source in ("dataset", "labels_dir", "brain_data")):
        raise InputError("give the training data: --dataset dataset.json, --labels-dir DIR or --brain-data DIR")
    return TrainConfig.from_dict(values)


def run(args: argparse.Namespace) -> int:
    from ..training.cards import export_model
    from ..training.trainer import train
    from ..training.tuning import tune_lambda

    config = build_config(args)
    progress = args.progress == "bar"
    if args.tune_lambda:
        output = Path(config.output)
        result = tune_lambda(config, args.tune_lambda, args.tune_ratios, args.tune_pairs, args.max_folding,
                             progress=progress, output=output / "tuning.csv")
        for row in result.rows:
            print(f"lambda {row['lambda_start']:g} -> {row['lambda_end']:g}: Dice {100 * row['dice']:.1f}% "
                  f"(initial {100 * row['dice_initial']:.1f}%), negative Jacobian {row['negative_jacobian_percent']:.3f}%")
        print(f"best: lambda {result.best['lambda_start']:g} -> {result.best['lambda_end']:g}")
        config = config.replace(lambda_start=result.best["lambda_start"], lambda_end=result.best["lambda_end"])
        if args.tune_only:
            output.mkdir(parents=True, exist_ok=True)
            config.save(output / "config.json")
            return 0
    if args.export and args.export_weights == "best" and not (config.val_pairs and config.val_every):
        raise InputError("--export-weights best chooses by the validation Dice: give --val-pairs 1 or more "
                         "and --val-every N")
    result = train(config, resume=args.resume, progress=progress)
    initial = "-" if result.val_dice_initial is None else f"{100 * result.val_dice_initial:.1f}%"
    final = "-" if result.val_dice_final is None else f"{100 * result.val_dice_final:.1f}%"
    print(f"trained {result.steps} steps; validation Dice (working grid) {initial} untrained -> {final}; "
          f"weights {result.weights}")
    if result.best_weights is not None:
        print(f"best validation Dice {100 * result.val_dice_best:.1f}% at step {result.best_step}; "
              f"weights {result.best_weights}")
    if args.export:
        best = args.export_weights == "best"
        if best and result.best_weights is None:
            # a checkpoint written before best.pt existed logs its validations but not their weights
            raise InputError(f"cannot export the best weights: the best validation Dice (step {result.best_step}) "
                             f"was logged by a checkpoint that did not keep its weights; export the last weights "
                             f"(--export-weights last, {result.weights}) or train again without --resume")
        # a resumed run continues exactly as an uninterrupted one, so the command that reproduces the
        # weights is this one without --resume
        command = [word for word in getattr(args, "command_line", []) if word != "--resume"]
        extra: Dict[str, Any] = {"command": shlex.join(command)} if command else {}
        extra["weights_step"] = result.best_step if best else result.steps
        card = export_model(result.best_weights if best else result.weights, Path(args.models_dir), args.export,
                            args.preset_name or args.export,
                            args.description or f"learned Gauss-Newton ({config.setting} features)", config,
                            extra=extra)
        print(f"model card {card}")
    return 0
