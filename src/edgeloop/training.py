"""`fit`, the one training routine, and the Optuna sweep around it.

The training node, the Optuna objective, the refit of the best trial and the
simulator all call `fit`. Small models (under `small_model_params`) stop early
with patience; larger ones decay the learning rate exponentially every epoch.
Both policies are parameters.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import optuna
import torch

from edgeloop.checks import check_int
from edgeloop.data import AugmentConfig, SegmentationSet, make_loader
from edgeloop.engine import train_one_epoch
from edgeloop.metrics import ConfusionMatrix, metric_fn
from edgeloop.models import (
    ARCHITECTURES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_model,
    count_parameters,
)
from edgeloop.predictor import Predictor
from edgeloop.progress import enabled as progress_enabled

log = logging.getLogger(__name__)

POLICIES = ("early_stopping", "exponential_lr")
CLASS_WEIGHTING = ("none", "median_frequency", "sqrt_median_frequency")
INITS = ("warm", "pretrained", "scratch")
FIRST_TRIALS = ("sampled", "defaults")
# The searched values besides the architecture (FitConfig and SweepConfig fields).
SEARCHED = ("lr", "weight_decay", "batch_size", "aug_strength", "lr_gamma")


def seed_everything(seed: int) -> None:
    """Seeds Python, numpy and torch, and asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass(frozen=True)
class ModelInput:
    """Images and masks of one iteration, at training resolution.

    Attributes:
        images: (N, H, W, 3) uint8.
        masks: (N, H, W) uint8 on the class map (255 = ignore).
        image_ids: (N,) image ids.
        splits: (N,) train / val / test.
        weights: (N,) sampling weights (1 outside train).
        class_names: The class map's names, in id order.
    """

    images: np.ndarray
    masks: np.ndarray
    image_ids: np.ndarray
    splits: np.ndarray
    weights: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[3] != 3:
            raise ValueError(f"images must be (N, H, W, 3), got {self.images.shape}")
        if self.masks.shape != self.images.shape[:3]:
            raise ValueError(
                f"masks must be (N, H, W) = {self.images.shape[:3]}, "
                f"got {self.masks.shape}"
            )
        for name in ("image_ids", "splits", "weights"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have {n} entries")

    def split(self, name: str) -> ModelInput:
        keep = self.splits == name
        return ModelInput(
            self.images[keep],
            self.masks[keep],
            self.image_ids[keep],
            self.splits[keep],
            self.weights[keep],
            self.class_names,
        )

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class FitConfig:
    """Everything one `fit` call depends on (hyperparameters and policies)."""

    architecture: str = "lraspp_mobilenet_v3_large"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 8
    aug_strength: float = 0.5
    weather_aug: float = 0.0
    lr_gamma: float = 0.95
    epochs: int = 20
    patience: int = 4
    small_model_params: int = 5_000_000
    small_policy: str = "early_stopping"
    large_policy: str = "exponential_lr"
    metric: str = "miou"
    class_weighting: str = "sqrt_median_frequency"
    dice_weight: float = 0.0
    input_norm: str = "dataset"
    seed: int = 0
    init: str = "warm"
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture {self.architecture!r} is not one of "
                f"{list(ARCHITECTURES)}"
            )
        for name in ("small_policy", "large_policy"):
            if getattr(self, name) not in POLICIES:
                raise ValueError(f"training.{name} must be one of {list(POLICIES)}")
        if self.class_weighting not in CLASS_WEIGHTING:
            raise ValueError(
                f"training.class_weighting {self.class_weighting!r} is not one of "
                f"{list(CLASS_WEIGHTING)}"
            )
        if self.init not in INITS:
            raise ValueError(f"training.init {self.init!r} is not one of {list(INITS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("training.epochs, batch_size and lr must be positive")
        if not self.dice_weight >= 0.0:
            raise ValueError(
                f"training.dice_weight must be >= 0, got {self.dice_weight}"
            )
        if not 0.0 < self.lr_gamma <= 1.0:
            raise ValueError(
                f"training.lr_gamma must be in (0, 1], got {self.lr_gamma}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(
                f"training.ema_decay must be in [0, 1) (0: off), got {self.ema_decay}"
            )

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> FitConfig:
        known = {k: v for k, v in params.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, **overrides})


@dataclass
class FitResult:
    """A trained model (at its best validation epoch) and how it got there."""

    model: torch.nn.Module
    config: FitConfig
    curves: list[dict[str, float]]
    best_epoch: int
    best_score: float
    epochs_run: int
    stopped_early: bool
    policy: str
    n_params: int
    weights_source: str
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def class_weights(
    masks: np.ndarray, num_classes: int, scheme: str
) -> torch.Tensor | None:
    """Loss weights from train pixel frequencies (SegNet's median frequency).

    w_c = median(f) / f_c, or its square root (gentler); classes absent from the
    train masks get weight 1. Clipped to [0.05, 20].
    """
    if scheme == "none":
        return None
    counts = np.bincount(masks.ravel(), minlength=256)[:num_classes].astype(float)
    present = counts > 0
    freq = counts / max(counts.sum(), 1.0)
    weights = np.ones(num_classes)
    weights[present] = np.median(freq[present]) / freq[present]
    if scheme == "sqrt_median_frequency":
        weights = np.sqrt(weights)
    return torch.tensor(np.clip(weights, 0.05, 20.0), dtype=torch.float32)


def predicted_confusion(
    model: torch.nn.Module, data: ModelInput, *, batch_size: int = 16
) -> np.ndarray:
    """The confusion matrix of `model` on a labelled set, through the predictor."""
    predictor = Predictor(
        model,
        class_names=data.class_names,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        batch_size=batch_size,
    )
    cm = ConfusionMatrix(len(data.class_names))
    preds = predictor.predict(list(data.images), with_scores=False)
    for pred, mask in zip(preds, data.masks, strict=True):
        cm.update(mask, pred.mask)
    return cm.matrix


def validation_score(
    model: torch.nn.Module, data: ModelInput, metric: str, *, batch_size: int = 16
) -> float:
    """The metric on a labelled set, through the shared predictor."""
    matrix = predicted_confusion(model, data, batch_size=batch_size)
    return float(metric_fn(metric, data.class_names)(matrix))


def fit(
    config: FitConfig,
    data: ModelInput,
    *,
    init_state: Mapping[str, torch.Tensor] | None = None,
    init_label: str = "warm",
    trial: optuna.Trial | None = None,
    progress: bool = False,
) -> FitResult:
    """Trains one model on `data`'s train split, selecting on its val split.

    Args:
        config: Hyperparameters and policies.
        data: Model input with train and val images.
        init_state: Weights to warm-start from (same architecture), used when
            `config.init` is ``warm``; otherwise ignored.
        init_label: How to describe `init_state` in the metadata.
        trial: The Optuna trial, for per-epoch pruning.
        progress: Show progress bars.

    Raises:
        ValueError: if the train or val split is empty.
        optuna.TrialPruned: when the trial's pruner stops it.
    """
    train, val = data.split("train"), data.split("val")
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"fit needs train and val images, got {len(train)} train and {len(val)} val"
        )
    seed_everything(config.seed)
    start = time.perf_counter()
    model, source = build_model(
        config.architecture,
        len(data.class_names),
        pretrained=config.init != "scratch",
        input_norm=config.input_norm,
    )
    warm = config.init == "warm" and init_state is not None
    if warm:
        model.load_state_dict(init_state)
        source = init_label
    n_params = count_parameters(model)
    policy = (
        config.small_policy
        if n_params < config.small_model_params
        else config.large_policy
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = (
        torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_gamma)
        if policy == "exponential_lr"
        else None
    )
    train_set = SegmentationSet(
        train.images,
        train.masks,
        augment=AugmentConfig(strength=config.aug_strength, weather=config.weather_aug),
        seed=config.seed,
    )
    batch_size = min(config.batch_size, len(train))
    loader = make_loader(
        train_set,
        batch_size=batch_size,
        weights=train.weights,
        seed=config.seed,
        # A last batch of one image breaks batch norm in training mode.
        drop_last=len(train) % batch_size == 1,
    )
    weights = class_weights(train.masks, len(data.class_names), config.class_weighting)
    # With ema_decay > 0 the model that is validated, selected and returned is
    # the running average of the weights. A warm start's average begins at the
    # promoted model; any other begins at the first step (not at random init).
    ema = None
    if config.ema_decay > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay),
            use_buffers=True,
        )
        if warm:
            ema.update_parameters(model)
    scored = ema.module if ema is not None else model
    curves: list[dict[str, float]] = []
    best_score, best_epoch, best_state = float("-inf"), -1, None
    stopped_early = False
    for epoch in range(config.epochs):
        train_set.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        loss = train_one_epoch(
            model,
            optimizer,
            loader,
            class_weights=weights,
            dice_weight=config.dice_weight,
            ema=ema,
            progress=progress,
        )
        if scheduler is not None:
            scheduler.step()  # exponential decay once per epoch
        score = validation_score(scored, val, config.metric)
        curves.append(
            {"epoch": epoch, "train_loss": loss, "val_score": score, "lr": lr}
        )
        log.info(
            "%s epoch %d/%d: loss %.4f, val %s %.4f",
            config.architecture,
            epoch + 1,
            config.epochs,
            loss,
            config.metric,
            score,
        )
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = copy.deepcopy(scored.state_dict())
        if trial is not None:
            trial.report(score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} (val {score:.4f})")
        if policy == "early_stopping" and epoch - best_epoch >= config.patience:
            stopped_early = True
            break
    model.load_state_dict(best_state)
    return FitResult(
        model=model.eval(),
        config=config,
        curves=curves,
        best_epoch=best_epoch,
        best_score=best_score,
        epochs_run=len(curves),
        stopped_early=stopped_early,
        policy=policy,
        n_params=n_params,
        weights_source=source,
        seconds=time.perf_counter() - start,
    )


def average_states(
    states: list[Mapping[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """The uniform average of state dicts of one architecture (a model soup).

    Floating-point tensors (weights, batch-norm statistics) are averaged;
    integer ones (batch-norm step counters) are taken from the first state.

    Raises:
        ValueError: no state, or states with different keys or shapes.
    """
    if not states:
        raise ValueError("average_states needs at least one state dict")
    keys = list(states[0])
    if any(set(state) != set(keys) for state in states):
        raise ValueError(
            "state dicts differ in their keys: a soup needs one architecture"
        )
    averaged: dict[str, torch.Tensor] = {}
    for name in keys:
        tensors = [state[name] for state in states]
        if any(t.shape != tensors[0].shape for t in tensors):
            raise ValueError(
                f"state dicts differ at {name!r}: a soup needs one architecture"
            )
        if tensors[0].is_floating_point():
            averaged[name] = torch.stack([t.detach() for t in tensors]).mean(dim=0)
        else:
            averaged[name] = tensors[0].detach().clone()
    return averaged


def soup_seeds(seed: int, ingredients: int) -> list[int]:
    """The seeds of a soup's ingredients: `seed` itself, then derived ones.

    Derived from (seed, i) rather than seed + i, so two soups with nearby
    seeds (training seeds 0 and 1) share no ingredient.
    """
    derived = (
        int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        for i in range(1, ingredients)
    )
    return [seed, *derived]


def fit_soup(
    config: FitConfig,
    data: ModelInput,
    *,
    ingredients: int,
    init_state: Mapping[str, torch.Tensor] | None = None,
    init_label: str = "warm",
    progress: bool = False,
) -> FitResult:
    """`fit` `ingredients` times from one warm start and average the weights.

    The ingredients are `fit` with the seeds of `soup_seeds` (batch order
    and augmentation); the first is `config.seed`, so ingredient 0 is the
    plain `fit` and `ingredients=1` is exactly `fit`. Refits of a small
    labelled set move a lot with the seed alone; the uniform average of
    refits that share their starting point (a model soup) moves less.
    Averaging needs that shared point: without a warm start (`config.init`
    not ``warm``, or no `init_state`) it trains one model and logs why. If
    the soup scores below its worst ingredient on val (the refits left the
    shared basin), the best ingredient is returned.

    The result's `extra["soup"]` records the ingredients' seeds and val
    scores, the soup's val score and what was returned.

    Raises:
        ValueError: `ingredients` not an integer >= 1, or what `fit` raises.
    """
    ingredients = check_int(ingredients, "training.refit_soup", minimum=1)
    warm = config.init == "warm" and init_state is not None
    if ingredients == 1 or not warm:
        if ingredients > 1:
            log.info(
                "refit_soup %d: no warm start to share (init %s), training one model",
                ingredients,
                config.init,
            )
        return fit(
            config,
            data,
            init_state=init_state,
            init_label=init_label,
            progress=progress,
        )
    start = time.perf_counter()
    seeds = soup_seeds(config.seed, ingredients)
    results = [
        fit(
            replace(config, seed=seed),
            data,
            init_state=init_state,
            init_label=init_label,
            progress=progress,
        )
        for seed in seeds
    ]
    scores = [r.best_score for r in results]
    soup = copy.deepcopy(results[0].model)
    soup.load_state_dict(average_states([r.model.state_dict() for r in results]))
    soup_score = validation_score(soup, data.split("val"), config.metric)
    if soup_score >= min(scores):
        kept, base, model, score = "soup", results[0], soup.eval(), soup_score
    else:
        best = int(np.argmax(scores))
        kept, base = f"ingredient {best}", results[best]
        model, score = base.model, base.best_score
    log.info(
        "refit_soup %d: ingredients' val %s %s, soup %.4f -> %s",
        ingredients,
        config.metric,
        " ".join(f"{s:.4f}" for s in scores),
        soup_score,
        kept,
    )
    return replace(
        base,
        model=model,
        best_score=score,
        seconds=time.perf_counter() - start,
        extra={
            "soup": {
                "ingredients": ingredients,
                "seeds": seeds,
                "val_scores": scores,
                "soup_val_score": soup_score,
                "returned": kept,
            }
        },
    )


# -- the sweep ----------------------------------------------------------------


@dataclass(frozen=True)
class SweepConfig:
    """The `training.sweep` parameters."""

    n_trials: int = 6
    architectures: tuple[str, ...] = ARCHITECTURES
    storage: str = "sqlite:///data/06_models/optuna.db"
    study_name: str = "edgeloop-iter-0"
    seed: int = 0
    pruner: str = "median"
    # What each architecture's enqueued first trial holds besides the
    # architecture: "sampled" (the sampler draws the rest, like any trial) or
    # "defaults" (the base config's lr, weight_decay, batch_size, aug_strength
    # and lr_gamma), so the configured defaults are always among the candidates.
    first_trial: str = "sampled"
    lr: tuple[float, float] = (3e-4, 3e-3)
    weight_decay: tuple[float, float] = (1e-6, 1e-3)
    batch_size: tuple[int, ...] = (4, 8, 16)
    aug_strength: tuple[float, float] = (0.0, 0.8)
    lr_gamma: tuple[float, float] = (0.85, 0.99)

    def __post_init__(self) -> None:
        bad = [a for a in self.architectures if a not in ARCHITECTURES]
        if bad:
            raise ValueError(f"sweep architectures {bad} not in {list(ARCHITECTURES)}")
        if self.n_trials < 2 * len(self.architectures):
            raise ValueError(
                f"training.sweep.n_trials must be at least twice the number of "
                f"architectures ({2 * len(self.architectures)}), got {self.n_trials}"
            )
        if self.pruner not in ("median", "hyperband"):
            raise ValueError(
                f"training.pruner must be median or hyperband, got {self.pruner!r}"
            )
        if self.first_trial not in FIRST_TRIALS:
            raise ValueError(
                f"training.first_trial must be one of {FIRST_TRIALS}, "
                f"got {self.first_trial!r}"
            )

    def first_trials(self, base: FitConfig) -> list[dict[str, Any]]:
        """The trials enqueued before the sampler's: one per architecture.

        Raises:
            ValueError: with ``first_trial: defaults``, a default outside the
                search space (it would not be a point the sweep can reach).
        """
        if self.first_trial == "sampled":
            return [{"architecture": arch} for arch in self.architectures]
        defaults = {key: getattr(base, key) for key in SEARCHED}
        outside = []
        for key, value in defaults.items():
            space = getattr(self, key)  # batch_size: choices; the rest: [low, high]
            if not (
                value in space if key == "batch_size" else space[0] <= value <= space[1]
            ):
                outside.append(f"{key}={value} (space {list(space)})")
        if outside:
            raise ValueError(
                "training.first_trial: defaults needs every default inside "
                f"training.space; outside: {', '.join(outside)}"
            )
        return [{"architecture": arch, **defaults} for arch in self.architectures]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SweepConfig:
        space = params.get("space") or {}
        kwargs: dict[str, Any] = {
            k: params[k]
            for k in (
                "n_trials",
                "storage",
                "study_name",
                "seed",
                "pruner",
                "first_trial",
            )
            if k in params
        }
        if "architectures" in params:
            kwargs["architectures"] = tuple(params["architectures"])
        for key in SEARCHED:
            if key in space:
                kwargs[key] = tuple(space[key])
        return cls(**kwargs)


def suggest_config(
    trial: optuna.Trial, base: FitConfig, sweep: SweepConfig
) -> FitConfig:
    """The trial's point of the search space, on top of the base config."""
    return replace(
        base,
        architecture=trial.suggest_categorical(
            "architecture", list(sweep.architectures)
        ),
        lr=trial.suggest_float("lr", *sweep.lr, log=True),
        weight_decay=trial.suggest_float("weight_decay", *sweep.weight_decay, log=True),
        batch_size=trial.suggest_categorical("batch_size", list(sweep.batch_size)),
        aug_strength=trial.suggest_float("aug_strength", *sweep.aug_strength),
        lr_gamma=trial.suggest_float("lr_gamma", *sweep.lr_gamma),
    )


def _storage(url: str) -> str:
    if url.startswith("sqlite:///"):
        os.makedirs(
            os.path.dirname(os.path.abspath(url.removeprefix("sqlite:///"))),
            exist_ok=True,
        )
    return url


def data_key(data: ModelInput) -> str:
    """A short fingerprint of a model input: ids, splits, classes and size."""
    h = hashlib.sha256()
    for part in (data.image_ids.astype(str), data.splits.astype(str)):
        h.update("\n".join(part.tolist()).encode())
    h.update(repr((data.class_names, data.images.shape[1:])).encode())
    return h.hexdigest()[:16]


def run_sweep(
    data: ModelInput,
    *,
    base: FitConfig,
    sweep: SweepConfig,
    init_states: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    init_label: str = "warm",
    progress: bool = True,
) -> optuna.Study:
    """Runs (or resumes) the study until it holds `n_trials` finished trials.

    One trial per architecture is enqueued first, so every architecture is
    tried (at the base config's values with `first_trial: defaults`). Several
    processes can share the study through the same storage: each stops once
    the study has `n_trials` complete or pruned trials.
    """
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=len(sweep.architectures), n_warmup_steps=1
        )
        if sweep.pruner == "median"
        else optuna.pruners.HyperbandPruner(min_resource=1, max_resource=base.epochs)
    )
    study = optuna.create_study(
        study_name=sweep.study_name,
        storage=_storage(sweep.storage),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=sweep.seed),
        pruner=pruner,
        load_if_exists=True,
    )
    # A study belongs to one model input: resuming it on other data (another
    # environment, another iteration's images) would mix incomparable trials.
    key = data_key(data)
    if not study.trials:
        study.set_user_attr("data_key", key)
        for params in sweep.first_trials(base):
            study.enqueue_trial(params)
    elif study.user_attrs.get("data_key") != key:
        raise ValueError(
            f"study {sweep.study_name!r} in {sweep.storage} was run on other model "
            "input; delete it or set training.study_name / training.storage"
        )
    init_states = init_states or {}

    def objective(trial: optuna.Trial) -> float:
        config = suggest_config(trial, base, sweep)
        result = fit(
            config,
            data,
            init_state=init_states.get(config.architecture),
            init_label=init_label,
            trial=trial,
        )
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("policy", result.policy)
        trial.set_user_attr("n_params", result.n_params)
        trial.set_user_attr("curves", [c["val_score"] for c in result.curves])
        return result.best_score

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = sum(t.state in finished for t in study.trials)
    remaining = max(0, sweep.n_trials - done)
    if remaining:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(
            objective,
            n_trials=remaining,
            callbacks=[optuna.study.MaxTrialsCallback(sweep.n_trials, states=finished)],
            show_progress_bar=progress and progress_enabled(),
        )
    else:
        log.info(
            "study %s already holds %d finished trials: resumed, nothing to run",
            sweep.study_name,
            done,
        )
    return study


def best_per_architecture(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per architecture: its best trial, so the choice is visible."""
    rows = []
    for arch in sorted({t.params.get("architecture") for t in study.trials} - {None}):
        trials = [t for t in study.trials if t.params.get("architecture") == arch]
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = max(complete, key=lambda t: t.value) if complete else None
        rows.append(
            {
                "architecture": arch,
                "trials": len(trials),
                "pruned": sum(
                    t.state == optuna.trial.TrialState.PRUNED for t in trials
                ),
                "best_trial": best.number if best else None,
                "best_value": best.value if best else None,
                "n_params": best.user_attrs.get("n_params") if best else None,
                "policy": best.user_attrs.get("policy") if best else None,
                "params": {k: v for k, v in best.params.items() if k != "architecture"}
                if best
                else None,
            }
        )
    return rows


def study_summary(study: optuna.Study) -> dict[str, Any]:
    states = [t.state.name for t in study.trials]
    best = study.best_trial
    return {
        "study_name": study.study_name,
        "n_trials": len(study.trials),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "per_architecture": best_per_architecture(study),
        "history": [
            {"number": t.number, "state": t.state.name, "value": t.value, **t.params}
            for t in study.trials
        ],
    }


def config_dict(config: FitConfig) -> dict[str, Any]:
    return asdict(config)
