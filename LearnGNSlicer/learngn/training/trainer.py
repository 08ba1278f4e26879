"""``train(config)``: unroll the differentiable Gauss-Newton steps and fit the J and f predictors.

One step: draw a random pair of training cases, augment each (random affine + elastic, the same
coordinates for its features and its labels), crop, compute the features (distance maps, or MIND of a
synthetic CT / of the image), run the engine's :func:`learngn.gauss_newton.gauss_newton` with the
predictors being trained, warp the moving one-hot labels with the resulting displacement and score them
against the fixed ones (soft Dice or weighted cross-entropy) plus a smoothness penalty.

Every random choice of step ``s`` comes from a generator seeded with ``(seed, s)``, so a run is
reproducible and a resumed run continues exactly as an uninterrupted one would.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import InputError
from ..features import CT_WINDOW, intensity_window, mind_ssc, normalise_intensity
from ..gauss_newton import gauss_newton, warp
from ..predictors import GaussNewtonPredictors
from ..quality import dice_per_label
from ..settings import RegistrationSettings
from .alignment import PairAligner, through
from .augment import AugmentOptions, crop_coordinates, crop_start, random_coordinates, sample
from .config import TrainConfig
from .data import CaseData, Dataset, Pair, load_case, open_dataset
from .losses import folding, one_hot, smoothness, soft_dice, weighted_cross_entropy
from .progressbar import ProgressBar
from .synthesis import case_seed, synthetic_ct

CHECKPOINT = "checkpoint.pt"
#: Weights at the best validation Dice so far: a run can overfit its few training people, and its
#: last weights are then not its best.
BEST_WEIGHTS = "best.pt"
LOG_FIELDS = ("step", "loss", "label_loss", "smoothness", "train_dice", "val_dice", "seconds")


@dataclass
class TrainResult:
    output: Path
    weights: Path
    log: List[Dict[str, float]]
    val_dice_initial: Optional[float]
    val_dice_final: Optional[float]
    steps: int
    best_weights: Optional[Path] = None
    best_step: Optional[int] = None
    val_dice_best: Optional[float] = None


@dataclass
class PreparedData:
    """Cases on the working grid, loaded once (distance maps precomputed: they are deterministic)."""

    training: List[CaseData]
    validation: Dict[str, CaseData]
    validation_pairs: List[Pair]
    label_values: List[int]
    n_classes: int
    windows: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    boxes: Dict[str, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    aligner: PairAligner = field(default_factory=lambda: PairAligner("none"))


def prepare_data(config: TrainConfig, dataset: Optional[Dataset] = None, *, validation: bool = True) -> PreparedData:
    dataset = dataset or open_dataset(config.dataset, config.labels_dir, config.validation_cases, config.brain_data)
    dataset.check_disjoint()
    names = dataset.training[: config.max_cases] if config.max_cases else dataset.training
    if len(names) < 2:
        raise InputError(f"training needs at least two training cases, found {len(names)}")
    pairs = dataset.validation_pairs[: config.val_pairs] if validation else []
    val_names = sorted({c for p in pairs for c in (p.fixed, p.moving)})
    with_image = config.setting == "images" or config.prealign != "none"  # pre-alignment uses the images
    loaded = {n: load_case(dataset.cases[n], config.registration.working_spacing, [], with_sdm=False, with_image=with_image)
              for n in list(names) + val_names}
    if config.setting == "images" and any(loaded[n].image is None for n in loaded):
        raise InputError("the 'images' setting needs an image for every case; use 'synthetic' for label maps alone")
    values = sorted({int(v) for n in loaded for v in np.unique(loaded[n].labels) if v != 0})
    if not values:
        raise InputError("the label maps contain no foreground label")
    from ..features import signed_distance_maps

    windows: Dict[str, Tuple[float, float]] = {}
    boxes = {}
    index = np.zeros(max(values) + 1, dtype=np.int32)
    index[values] = np.arange(1, len(values) + 1)
    for name, case in loaded.items():
        if config.setting == "sdm":
            case.sdm = signed_distance_maps(case.labels, values, config.registration.working_spacing, config.registration.sdm_clip_mm)
        # one-hot channels for the labels that occur, not for every integer up to the largest (brain label
        # maps number theirs up to 2035)
        case.labels = index[case.labels]
        if case.image is not None:
            windows[name] = intensity_window(case.image.ravel(), "auto")
        coords = np.nonzero(case.labels)
        boxes[name] = (np.array([c.min() for c in coords]), np.array([c.max() for c in coords]))
    return PreparedData([loaded[n] for n in names], {n: loaded[n] for n in val_names}, pairs, values,
                        len(values) + 1, windows, boxes, PairAligner(config.prealign, windows))


def _channels_present(fixed: CaseData, moving: CaseData, values: Sequence[int]) -> List[int]:
    """Distance-map channels of the labels in either case (register() uses that union too); the cases'
    labels are indices into ``values`` plus one."""
    present = set(np.unique(fixed.labels)) | set(np.unique(moving.labels))
    return [i for i in range(len(values)) if i + 1 in present]


class CaseTensors(NamedTuple):
    """One case on the (cropped, augmented) training grid."""

    features: torch.Tensor             # (1, C, ...): distance maps, or MIND before any feature network
    labels: torch.Tensor               # (1, n_classes, ...) soft one-hot
    intensity: Optional[torch.Tensor]  # (1, 1, ...) normalised image (None in the distance-map setting)


def case_tensors(config: TrainConfig, data: PreparedData, case: CaseData, coords: Optional[torch.Tensor],
                 generator: Optional[torch.Generator], channels: Sequence[int]) -> CaseTensors:
    """Features, soft one-hot labels and intensity of a case, augmented by ``coords``.

    ``generator`` None means evaluation: no randomness (the synthetic appearance is the fixed CT table).
    """
    labels = one_hot(torch.from_numpy(case.labels), data.n_classes)
    if coords is not None:
        labels = sample(labels, coords)
    if config.setting == "sdm":
        sdm = torch.from_numpy(case.sdm[list(channels)])[None]
        features = sample(sdm, coords) if coords is not None else sdm
        return CaseTensors(features, labels, None)
    if config.setting == "synthetic":
        hard = labels[0].argmax(0)
        if generator is None:
            hu = synthetic_ct(hard, torch.Generator().manual_seed(case_seed(case.name)),
                              spacing_mm=config.registration.working_spacing, mode="ct", n_labels=data.n_classes)
        else:
            hu = synthetic_ct(hard, generator, spacing_mm=config.registration.working_spacing, mode=config.synthesis,
                              n_labels=data.n_classes)
        intensity = normalise_intensity(hu, CT_WINDOW)
    else:
        image = torch.from_numpy(case.image)[None, None]
        if coords is not None:
            image = sample(image, coords)
        intensity = normalise_intensity(image, data.windows[case.name])
    return CaseTensors(mind_ssc(intensity, dilation=config.registration.mind_dilation), labels, intensity)


def model_features(model: Optional[torch.nn.Module], case: CaseTensors) -> torch.Tensor:
    """The features Gauss-Newton sees: through the model's feature network where it has one."""
    network = getattr(model, "features", None)
    return case.features if network is None else network.refine(case.features, case.intensity)


class TrainingSample(NamedTuple):
    names: Tuple[str, str]
    fixed: CaseTensors
    moving: CaseTensors


def _augment_options(config: TrainConfig) -> AugmentOptions:
    return AugmentOptions(config.rotation_degrees, config.scale, config.translation_mm, config.elastic_mm)


def training_sample(config: TrainConfig, data: PreparedData, step: int, index: int):
    """The pair, features and labels of one training sample; depends only on (seed, step, index)."""
    rng = np.random.default_rng([config.seed, step, index])
    generator = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
    i, j = rng.choice(len(data.training), size=2, replace=False)
    fixed, moving = data.training[int(i)], data.training[int(j)]
    shape = fixed.shape
    crop = tuple(config.crop) if config.crop else shape
    low, high = data.boxes[fixed.name]
    centre = [rng.uniform(lo, hi) for lo, hi in zip(low, high)]
    start = crop_start(shape, crop, centre) if config.crop else (0, 0, 0)
    channels = _channels_present(fixed, moving, data.label_values)
    alignment = data.aligner.matrix(fixed, moving)
    tensors = []
    for case, matrix in ((fixed, None), (moving, alignment)):
        if config.augment:
            coords = random_coordinates(start, crop, config.registration.working_spacing, generator, _augment_options(config))
        elif config.crop or matrix is not None:
            coords = crop_coordinates(start, crop)
        else:
            coords = None
        coords = coords if coords is None else through(matrix, coords)
        tensors.append(case_tensors(config, data, case, coords, generator, channels))
    return TrainingSample((fixed.name, moving.name), *tensors)


def aligned_coordinates(data: PreparedData, fixed: CaseData, moving: CaseData) -> Optional[torch.Tensor]:
    """Where the whole fixed grid samples the moving case after the pair's pre-alignment (None: where the
    training is not pre-aligned, the moving case as it is)."""
    matrix = data.aligner.matrix(fixed, moving)
    return None if matrix is None else through(matrix, crop_coordinates((0, 0, 0), fixed.shape))


def whole_pair(config: TrainConfig, data: PreparedData, fixed: CaseData, moving: CaseData
               ) -> Tuple[CaseTensors, CaseTensors]:
    """Both cases of a pair on the whole fixed grid, no augmentation; the moving one through the pair's
    pre-alignment. Scoring and lambda tuning see pairs this way."""
    channels = _channels_present(fixed, moving, data.label_values)
    return (case_tensors(config, data, fixed, None, None, channels),
            case_tensors(config, data, moving, aligned_coordinates(data, fixed, moving), None, channels))


def register_cases(model: Optional[torch.nn.Module], settings: RegistrationSettings, fixed: CaseTensors,
                   moving: CaseTensors) -> torch.Tensor:
    """The displacement (voxels) that the model (None: classic GN) finds between two cases: the engine's
    Gauss-Newton with the settings the model card will hold (torch solver)."""
    return gauss_newton(model_features(model, fixed), model_features(model, moving), settings, predictors=model)


def score_pair(config: TrainConfig, data: PreparedData, model: Optional[torch.nn.Module], fixed: CaseData,
               moving: CaseData) -> Tuple[float, torch.Tensor]:
    """Dice on the working grid and displacement of one whole-volume pair (no augmentation)."""
    fixed_case, moving_case = whole_pair(config, data, fixed, moving)
    displacement = register_cases(model, config.registration, fixed_case, moving_case)
    return hard_dice(fixed_case.labels, warp(moving_case.labels, displacement)), displacement


def sample_loss(config: TrainConfig, model: torch.nn.Module, sample_: TrainingSample
                ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Label loss of the warped moving labels plus the weighted smoothness of the displacement."""
    fixed_labels, moving_labels = sample_.fixed.labels, sample_.moving.labels
    displacement = register_cases(model, config.registration, sample_.fixed, sample_.moving)
    warped = warp(moving_labels, displacement)
    present = (fixed_labels.sum((0, 2, 3, 4)) > 0) | (moving_labels.sum((0, 2, 3, 4)) > 0)
    if config.loss == "dice":
        label_loss = 1.0 - soft_dice(warped, fixed_labels, present)
    else:
        label_loss = weighted_cross_entropy(warped, fixed_labels)
    smooth = smoothness(displacement)
    loss = label_loss + config.smoothness_weight * smooth
    if config.folding_weight > 0:
        loss = loss + config.folding_weight * folding(displacement)
    parts = {"loss": float(loss.detach()), "label_loss": float(label_loss.detach()),
             "smoothness": float(smooth.detach()), "train_dice": hard_dice(fixed_labels, warped.detach())}
    return loss, parts


def hard_dice(fixed_labels: torch.Tensor, warped_labels: torch.Tensor) -> float:
    """Mean Dice of the argmax labels over the foreground classes present in either."""
    a = fixed_labels[0].argmax(0).numpy()
    b = warped_labels[0].argmax(0).numpy()
    values = list(dice_per_label(a, b, range(1, fixed_labels.shape[1])).values())
    return float(np.mean(values)) if values else float("nan")


def validate(config: TrainConfig, data: PreparedData, model: Optional[torch.nn.Module]) -> Optional[float]:
    """Mean Dice on the working grid over the monitored validation pairs (no augmentation, whole volumes)."""
    if not data.validation_pairs:
        return None
    scores = []
    with torch.no_grad():
        for pair in data.validation_pairs:
            scores.append(score_pair(config, data, model, data.validation[pair.fixed], data.validation[pair.moving])[0])
    return float(np.mean(scores))


def trained_modules(config: TrainConfig, model: torch.nn.Module) -> List[torch.nn.Module]:
    """The parts of ``model`` that ``config.trainable`` names (``all``: the whole model)."""
    if config.trainable == "all":
        return [model]
    modules: List[torch.nn.Module] = []
    for part in config.trainable.split("+"):
        if part == "branches":
            modules += [getattr(predictor, layer) for predictor in (model.jacobian, model.residual)
                        for layer in ("branch_in", "branch_out")]
        else:
            modules.append(getattr(model, part))
    return modules


def trained_parameters(config: TrainConfig, model: torch.nn.Module) -> List[torch.nn.Parameter]:
    """The parameters the run fits; the others keep their classic-GN initialisation."""
    modules = trained_modules(config, model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    parameters = [p for module in modules for p in module.parameters()]
    for parameter in parameters:
        parameter.requires_grad_(True)
    return parameters


def start_from(model: GaussNewtonPredictors, weights: Path) -> None:
    """Load an earlier run's weights into ``model``; parts the file lacks (a new feature network) keep their
    classic-GN initialisation.  Context layers added to a trained feature network (a larger
    ``--feature-depth``) and the MIND inputs added to one that read the intensity alone start at zero,
    so the model starts as exactly the earlier one and training can only add to it."""
    from ..models import load_predictors_file

    state = load_predictors_file(weights).state_dict()
    own = model.state_dict()
    mix, own_mix = state.get("features.mix.weight"), own.get("features.mix.weight")
    if mix is not None and own_mix is not None and own_mix.shape[1] > mix.shape[1]:
        widened = own_mix.new_zeros(own_mix.shape)
        widened[:, :mix.shape[1]] = mix
        state["features.mix.weight"] = widened
    foreign = sorted(k for k in state if k not in own or own[k].shape != state[k].shape)
    if foreign:
        raise InputError(f"--init-weights {weights} does not fit this model ({', '.join(foreign)}); "
                         "use the weights of a run with the same setting")
    model.load_state_dict(state, strict=False)
    if model.features is not None and "features.out.weight" in state:
        with torch.no_grad():
            for index, layer in enumerate(model.features.context):
                if f"features.context.{index}.weight" not in state:
                    layer.weight.zero_()
                    layer.bias.zero_()


def make_optimiser(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    parameters = trained_parameters(config, model)
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.learning_rate)
    return torch.optim.SGD(parameters, lr=config.learning_rate, momentum=0.9)


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of ``step`` (1-based); a function of the step alone, so a resumed run matches."""
    if config.schedule == "cosine":
        return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / max(config.steps, 1)))
    return config.learning_rate


def _save_atomically(content: Any, path: Path) -> None:
    """torch.save through a temporary file, so an interrupted write never leaves a truncated ``path``."""
    temporary = path.with_suffix(".tmp")
    torch.save(content, temporary)
    temporary.replace(path)


def _save_checkpoint(path: Path, step: int, model, optimiser, config: TrainConfig, log,
                     best: Optional[Dict[str, torch.Tensor]]) -> None:
    _save_atomically({"step": step, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                      "config": config.to_dict(), "log": log, "best": best}, path)


def best_validation(log: List[Dict[str, float]]) -> Tuple[Optional[int], Optional[float]]:
    """The step with the highest validation Dice in ``log`` (the earliest on a tie), and that Dice."""
    scored = [(r["val_dice"], -int(r["step"])) for r in log if r.get("val_dice") is not None]
    if not scored:
        return None, None
    dice, negative_step = max(scored)
    return -negative_step, dice


def _keep_best(path: Path, model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Write the model's weights to ``path`` and return a copy of them (the checkpoint carries it, so a
    resumed run's best weights are those of its own log)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _save_atomically(state, path)
    return state


def _comparable(config: TrainConfig) -> Dict:
    """The options that must not change between a checkpoint and its resumption."""
    values = config.to_dict()
    for key in ("output", "steps", "val_every", "checkpoint_every", "threads", "dataset", "labels_dir",
                "brain_data"):
        values.pop(key, None)
    return values


def write_log(path: Path, log: List[Dict[str, float]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
        writer.writeheader()
        for row in log:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in LOG_FIELDS})


def plot_curves(path: Path, log: List[Dict[str, float]], title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in log if r.get("loss") is not None]
    losses = [r["loss"] for r in log if r.get("loss") is not None]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    if losses:
        left.plot(steps, losses, color="0.7", lw=0.8, label="loss")
        window = max(1, len(losses) // 10)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        left.plot(steps[window - 1:], smooth, color="C0", label=f"loss (mean of {window})")
        train = [r["train_dice"] for r in log if r.get("loss") is not None]
        left.plot(steps, train, color="C2", lw=0.6, alpha=0.6, label="training-pair Dice")
    left.set_xlabel("step")
    left.legend(fontsize=8)
    left.set_title("training")
    val = [(r["step"], r["val_dice"]) for r in log if r.get("val_dice") is not None]
    if val:
        right.plot(*zip(*val), "o-", color="C1")
    right.set_xlabel("step")
    right.set_ylabel("mean Dice (working grid)")
    right.set_title("validation pairs")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True,
          dataset: Optional[Dataset] = None) -> TrainResult:
    """Train the predictors; writes checkpoint.pt, model.pt (the last weights), best.pt (the weights of the best
    validation Dice, when there are validation pairs), log.csv, curves.png and config.json to ``output``."""
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = GaussNewtonPredictors(feature_net=config.features[0] if config.feature_net else None,
                                  feature_width=config.feature_width, feature_depth=config.feature_depth,
                                  feature_reads_features=config.feature_net_reads_mind)
    if config.init_weights:
        start_from(model, Path(config.init_weights))
    optimiser = make_optimiser(config, model)
    log: List[Dict[str, float]] = []
    first_step = 0
    checkpoint_path = output / CHECKPOINT
    best_path = output / BEST_WEIGHTS
    best: Optional[Dict[str, torch.Tensor]] = None
    if resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        saved = TrainConfig.from_dict(state["config"])
        if _comparable(saved) != _comparable(config):
            changed = sorted(k for k, v in _comparable(config).items() if _comparable(saved).get(k) != v)
            raise InputError(f"cannot resume {checkpoint_path}: options changed since it was written ({', '.join(changed)})")
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        log = list(state["log"])
        first_step = int(state["step"])
        best = state.get("best")
        if best is not None:
            _save_atomically(best, best_path)
    elif checkpoint_path.is_file() and not resume:
        checkpoint_path.unlink()
    if best is None and best_path.is_file():
        best_path.unlink()  # not from this run's log
    config.save(output / "config.json")
    data = prepare_data(config, dataset, validation=config.val_pairs > 0)
    bar = ProgressBar(config.steps, "train", enabled=progress)
    val_initial = next((r["val_dice"] for r in log if r.get("step") == 0 and r.get("val_dice") is not None), None)
    if first_step == 0 and not log:
        val_initial = validate(config, data, model) if config.val_pairs else None
        log.append({"step": 0, "loss": None, "label_loss": None, "smoothness": None, "train_dice": None,
                    "val_dice": val_initial, "seconds": 0.0})
        if val_initial is not None:
            best = _keep_best(best_path, model)
    last_val = next((r["val_dice"] for r in reversed(log) if r.get("val_dice") is not None), None)
    started = time.perf_counter()
    for step in range(first_step + 1, config.steps + 1):
        model.train()
        optimiser.zero_grad()
        totals = {"loss": 0.0, "label_loss": 0.0, "smoothness": 0.0, "train_dice": 0.0}
        for index in range(config.batch_size):
            sample_ = training_sample(config, data, step, index)
            loss, parts = sample_loss(config, model, sample_)
            (loss / config.batch_size).backward()
            for key, value in parts.items():
                totals[key] += value / config.batch_size
        if not all(math.isfinite(float(p.grad.abs().sum())) for p in model.parameters() if p.grad is not None):
            raise RuntimeError(f"non-finite gradient at step {step}; lower the learning rate")
        if config.optimizer == "nsgd":
            # each step moves the weights by at most the learning rate (times momentum): the stencils
            # start at classic GN, and a uniform per-weight step (Adam's) breaks their invariance to
            # constant inputs at once
            norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(norm.clamp_min(1e-12))
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(config, step)
        optimiser.step()
        row: Dict[str, Optional[float]] = dict(step=step, **totals, val_dice=None,
                                               seconds=round(time.perf_counter() - started, 2))
        if config.val_pairs and config.val_every and (step % config.val_every == 0 or step == config.steps):
            model.eval()
            best_before = best_validation(log)[1]
            row["val_dice"] = last_val = validate(config, data, model)
            if best_before is None or last_val > best_before:
                best = _keep_best(best_path, model)
        log.append(row)
        if step % max(config.checkpoint_every, 1) == 0 or step == config.steps:
            _save_checkpoint(checkpoint_path, step, model, optimiser, config, log, best)
        val_text = f"val Dice {last_val:.3f}" if last_val is not None else "val Dice -"
        bar.update(step, f"loss {totals['loss']:.4f} | {val_text}")
    bar.close()
    if first_step >= config.steps and not checkpoint_path.is_file():
        _save_checkpoint(checkpoint_path, config.steps, model, optimiser, config, log, best)
    weights = output / "model.pt"
    torch.save(model.state_dict(), weights)
    write_log(output / "log.csv", log)
    gn = config.registration
    plot_curves(output / "curves.png", log, f"{config.setting}, {gn.working_spacing} mm, stride {gn.grid_stride}, "
                f"{gn.levels} level(s) of {gn.iterations} GN iterations, lambda {gn.lambda_start}->{gn.lambda_end}")
    val_final = next((r["val_dice"] for r in reversed(log) if r.get("val_dice") is not None), None)
    best_step, val_best = best_validation(log)
    best_weights = best_path if best is not None else None
    summary = {"steps": config.steps, "val_dice_initial": val_initial, "val_dice_final": val_final,
               "best_step": best_step, "val_dice_best": val_best,
               "validation_pairs": [[p.fixed, p.moving] for p in data.validation_pairs],
               "training_cases": [c.name for c in data.training], "label_values": data.label_values}
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return TrainResult(output, weights, log, val_initial, val_final, config.steps, best_weights, best_step, val_best)
