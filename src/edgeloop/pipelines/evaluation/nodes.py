"""Evaluation nodes: per-slice metrics, the forgetting gate, plots, card, registry."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402

from edgeloop.card import (  # noqa: E402
    CARD_SCHEMA,
    clean,
    git_commit,
    hardware,
    package_versions,
    render_markdown,
)
from edgeloop.datasets.model_input import overlay  # noqa: E402
from edgeloop.gate import GateConfig, gate, regressed_slices  # noqa: E402
from edgeloop.lake import Lake  # noqa: E402
from edgeloop.metrics import (  # noqa: E402
    OVERALL_SLICE,
    SegmentationScores,
    evaluate_slices,
    metric_fn,
    object_matrix,
    per_image_confusion,
    right_class_matrix,
)
from edgeloop.pipelines.training.nodes import PromotedModel  # noqa: E402
from edgeloop.registry import ModelRecord, TrainedModel, best_so_far  # noqa: E402
from edgeloop.review_tasks import (  # noqa: E402
    advance_status,
    current_bugs,
    reopen_bugs,
)
from edgeloop.training import ModelInput  # noqa: E402

log = logging.getLogger(__name__)

EVAL_SPLITS = ("test", "val")


@dataclass(frozen=True)
class EvaluationRun:
    """Both models' predictions on one split, as per-image confusion matrices.

    Attributes:
        new_cm, old_cm: (N, K, K) per-image confusion matrices (old is None
            without a promoted model).
        new_masks: (N, H, W) the new model's predicted masks (for the gallery).
    """

    split: str
    image_ids: np.ndarray
    new_cm: np.ndarray
    old_cm: np.ndarray | None
    new_masks: np.ndarray


def _predict_cms(
    model: TrainedModel, data: ModelInput
) -> tuple[np.ndarray, np.ndarray]:
    predictor = model.predictor()
    preds = predictor.predict(list(data.images), with_scores=False)
    masks = np.stack([p.mask for p in preds])
    return per_image_confusion(data.masks, masks, len(data.class_names)), masks


def evaluate_models(
    trained_model: TrainedModel, promoted: PromotedModel, model_input: ModelInput
) -> dict[str, EvaluationRun]:
    """Runs the new and the promoted model on the test and val images."""
    runs = {}
    for split in EVAL_SPLITS:
        data = model_input.split(split)
        if len(data) == 0:
            if split == "test":
                raise ValueError(
                    "the test split is empty: nothing to evaluate or gate on"
                )
            continue
        new_cm, masks = _predict_cms(trained_model, data)
        old_cm = _predict_cms(promoted.model, data)[0] if promoted.model else None
        runs[split] = EvaluationRun(split, data.image_ids, new_cm, old_cm, masks)
    return runs


def gate_new_model(
    evaluations: dict[str, EvaluationRun],
    slices: pd.DataFrame,
    lake_models: pd.DataFrame,
    evaluation: dict[str, Any],
    training: dict[str, Any],
    classes: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-slice metrics for test and val, and the gate verdict on test."""
    config = GateConfig.from_params(evaluation, section="evaluation")
    metric = training.get("metric", "miou")
    names = tuple(classes["names"])
    test = evaluations["test"]
    verdict = gate(
        test.new_cm,
        test.old_cm,
        list(test.image_ids),
        slices,
        metric=metric,
        class_names=names,
        best_so_far=best_so_far(lake_models),
        config=config,
    )
    rows = [{"split": "test", **c.to_dict()} for c in verdict.comparisons]
    if "val" in evaluations:
        val = evaluations["val"]
        score = partial(
            evaluate_slices,
            image_ids=list(val.image_ids),
            slices=slices,
            metric=metric,
            class_names=names,
            min_images=config.min_images,
        )
        new = score(val.new_cm)
        old = score(val.old_cm) if val.old_cm is not None else {}
        for name, res in new.items():
            prev = old.get(name)
            rows.append(
                {
                    "split": "val",
                    "slice": name,
                    "n_images": res.n_images,
                    "new": res.score,
                    "old": prev.score if prev else None,
                    "delta": res.score - prev.score if prev else None,
                    "insufficient": res.insufficient,
                    "regressed": False,
                }
            )
    metrics = pd.DataFrame(rows)
    log.info(
        "gate: %s (%s)",
        "PROMOTED" if verdict.promoted else "REJECTED",
        "; ".join(verdict.reasons),
    )
    return metrics, verdict.to_dict()


# -- plots ---------------------------------------------------------------------


def plot_slice_scores(
    slice_metrics: pd.DataFrame, training: dict[str, Any]
) -> go.Figure:
    """Per-slice test scores, new model against the promoted one."""
    test = slice_metrics[slice_metrics["split"] == "test"].sort_values("slice")
    fig = go.Figure()
    fig.add_bar(name="new", x=test["slice"], y=test["new"])
    if test["old"].notna().any():
        fig.add_bar(name="promoted", x=test["slice"], y=test["old"])
    fig.update_layout(
        barmode="group",
        title=f"Test {training.get('metric', 'miou')} per slice",
        yaxis_title=training.get("metric", "miou"),
    )
    return fig


def plot_confusion_matrix(
    evaluations: dict[str, EvaluationRun], classes: dict[str, Any]
) -> go.Figure:
    """The new model's row-normalised confusion matrix on test."""
    cm = evaluations["test"].new_cm.sum(0).astype(float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    names = list(classes["names"])
    fig = go.Figure(
        go.Heatmap(
            z=norm,
            x=names,
            y=names,
            colorscale="Blues",
            zmin=0,
            zmax=1,
            text=cm.astype(int),
            hovertemplate="truth %{y}<br>pred %{x}<br>%{z:.3f}",
        )
    )
    fig.update_layout(
        title="Confusion matrix (test, rows = truth)",
        xaxis_title="predicted",
        yaxis_title="truth",
        yaxis_autorange="reversed",
    )
    return fig


def plot_training_curves(trained_model: TrainedModel) -> go.Figure:
    """Loss and validation score per epoch of the refit."""
    curves = pd.DataFrame(trained_model.metadata["curves"])
    fig = go.Figure()
    fig.add_scatter(x=curves["epoch"], y=curves["train_loss"], name="train loss")
    fig.add_scatter(
        x=curves["epoch"], y=curves["val_score"], name="val score", yaxis="y2"
    )
    fig.update_layout(
        title=f"Training curves: {trained_model.metadata['architecture']}",
        xaxis_title="epoch",
        yaxis={"title": "loss"},
        yaxis2={"title": "val score", "overlaying": "y", "side": "right"},
    )
    return fig


def plot_optuna_history(study_summary: dict[str, Any]) -> go.Figure:
    """Every trial's value by architecture, and the best so far."""
    hist = pd.DataFrame(study_summary["history"])
    fig = go.Figure()
    for arch, group in hist.groupby("architecture"):
        fig.add_scatter(
            x=group["number"],
            y=group["value"],
            mode="markers",
            name=arch,
            text=group["state"],
        )
    done = hist.dropna(subset=["value"]).sort_values("number")
    fig.add_scatter(
        x=done["number"], y=done["value"].cummax(), mode="lines", name="best so far"
    )
    fig.update_layout(title="Optuna history", xaxis_title="trial", yaxis_title="value")
    return fig


def render_worst_gallery(
    evaluations: dict[str, EvaluationRun],
    model_input: ModelInput,
    slices: pd.DataFrame,
    evaluation: dict[str, Any],
    classes: dict[str, Any],
) -> plt.Figure:
    """The worst test images of the worst slices: image | truth | prediction."""
    test = evaluations["test"]
    data = model_input.split("test")
    names = tuple(classes["names"])
    per_image = metric_fn("miou", names)(test.new_cm)
    n_slices = int(evaluation.get("gallery_slices", 4))
    per_slice = int(evaluation.get("gallery_images", 2))
    res = evaluate_slices(
        test.new_cm,
        list(test.image_ids),
        slices,
        metric="miou",
        class_names=names,
        min_images=1,
    )
    worst = sorted(
        (r for r in res.values() if r.slice != "all"), key=lambda r: (r.score, r.slice)
    )[:n_slices]
    index = {image_id: i for i, image_id in enumerate(test.image_ids)}
    rows = []
    for r in worst:
        ids = slices.loc[slices["slice"] == r.slice, "image_id"]
        idx = sorted((index[i] for i in ids if i in index), key=lambda i: per_image[i])
        rows.extend((r.slice, i) for i in idx[:per_slice])
    fig, axes = plt.subplots(
        max(len(rows), 1), 3, figsize=(7.5, 2.5 * max(len(rows), 1)), squeeze=False
    )
    for row, (name, i) in zip(axes, rows, strict=False):
        row[0].imshow(data.images[i])
        row[0].set_ylabel(f"{name}\nmIoU {per_image[i]:.2f}", fontsize=8)
        row[1].imshow(overlay(data.images[i], data.masks[i], alpha=0.7))
        row[2].imshow(overlay(data.images[i], test.new_masks[i], alpha=0.7))
    for ax, title in zip(axes[0], ("image", "truth", "prediction"), strict=True):
        ax.set_title(title)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


# -- card and registry -----------------------------------------------------------


def _value_counts(values: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}


def _first_set(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _regression_boost(weights: pd.DataFrame | None) -> dict[str, Any] | None:
    """Which train images weighed more because the last gate saw them regress."""
    if weights is None or "boost" not in weights or not (weights["boost"] > 1).any():
        return None
    boosted = weights[weights["boost"] > 1]
    return {
        "slices": sorted(set(",".join(boosted["boosted_by"]).split(","))),
        "factor": float(boosted["boost"].max()),
        "train_images": len(boosted),
    }


def _object_breakdown(
    matrix: np.ndarray, names: tuple[str, ...], object_classes: Sequence[str]
) -> dict[str, Any] | None:
    """Where the errors are: finding the objects, or telling their classes apart.

    None without `classes.object_classes`, or when they are every class.
    """
    unknown = [c for c in object_classes if c not in names]
    if unknown:
        raise ValueError(
            f"classes.object_classes names unknown classes {unknown}; "
            f"valid classes: {list(names)}"
        )
    ids = [names.index(c) for c in object_classes]
    if not ids or len(ids) == len(names):
        return None
    return {
        "classes": [names[i] for i in ids],
        "object_iou": SegmentationScores.from_matrix(object_matrix(matrix, ids)).iou[1],
        "miou_classes_right": SegmentationScores.from_matrix(
            right_class_matrix(matrix, ids)
        ).miou,
    }


def write_model_card(
    trained_model: TrainedModel,
    promoted: PromotedModel,
    gate_verdict: dict[str, Any],
    slice_metrics: pd.DataFrame,
    study_summary: dict[str, Any],
    evaluations: dict[str, EvaluationRun],
    model_input: ModelInput,
    slices: pd.DataFrame,
    effective_labels: pd.DataFrame,
    lake_images: pd.DataFrame,
    lake_models: pd.DataFrame,
    run_provenance: dict[str, Any],
    parameters: dict[str, Any],
    evaluation: dict[str, Any],
    bug_report: list[dict[str, Any]],
    annotation_import_report: dict[str, Any],
    sampling_weights: pd.DataFrame | None = None,
) -> tuple[dict[str, Any], str]:
    """The model card, JSON and Markdown, rendered from the saved results."""
    meta = trained_model.metadata
    iteration = int(meta["iteration"])
    names = tuple(meta["class_names"])
    test = evaluations["test"]
    overall = SegmentationScores.from_matrix(test.new_cm.sum(0))
    train_ids = set(model_input.image_ids[model_input.splits == "train"])
    train_slices = slices[slices["image_id"].isin(train_ids)]
    labels = effective_labels[effective_labels["image_id"].isin(model_input.image_ids)]
    sources = lake_images.set_index("image_id")["source"]
    test_rows = slice_metrics[slice_metrics["split"] == "test"]
    sufficient = test_rows[~test_rows["insufficient"] & (test_rows["slice"] != "all")]
    worst = sufficient.sort_values(["new", "slice"]).head(5)
    datasets = run_provenance.get("datasets", {}) if run_provenance else {}
    card = {
        "schema": CARD_SCHEMA,
        "model": {
            "version": trained_model.version,
            "iteration": iteration,
            "architecture": meta["architecture"],
            "n_params": meta["n_params"],
            "parent_version": meta.get("parent_version"),
            "weights_source": meta["weights_source"],
            "weights_hash": trained_model.weights_hash,
            "policy": meta["policy"],
            "epochs_run": meta["epochs_run"],
            "best_epoch": meta["best_epoch"],
            "input_size": meta["input_size"],
            "class_names": list(names),
            "hyperparameters": meta["hyperparameters"],
            "curves": meta["curves"],
            # Only with training.refit_soup > 1: the refits it averaged.
            **({"soup": meta["soup"]} if "soup" in meta else {}),
        },
        "intended_use": (
            f"Semantic segmentation of {', '.join(names)} in images like the "
            "training data, as one iteration of a human-in-the-loop loop: its "
            "predictions are reviewed, and its mistakes become training data."
        ),
        "limitations": (
            "Trained on little data at a fixed resolution "
            f"{meta['input_size']}; slices flagged insufficient are not evidence "
            "either way; conditions absent from training are unsupported."
        ),
        "training_data": {
            "splits": _value_counts(pd.Series(model_input.splits)),
            "by_source": _value_counts(
                pd.Series(model_input.image_ids).map(sources).fillna("unknown")
            ),
            "by_origin": _value_counts(labels["origin"]),
            "added_this_iteration": int((labels["first_iteration"] == iteration).sum()),
            "train_slices": _value_counts(train_slices["slice"]),
            "regression_boost": _regression_boost(sampling_weights),
        },
        "evaluation_data": {
            "gate_split": "test",
            "n_images": len(test.image_ids),
            "val_images": len(evaluations["val"].image_ids)
            if "val" in evaluations
            else 0,
            "input_size": meta["input_size"],
            "metric": parameters["training"].get("metric", "miou"),
            "min_images": int(evaluation.get("min_images", 20)),
        },
        "results": {
            "slices": test_rows.drop(columns="split").to_dict("records"),
            "val_slices": slice_metrics[slice_metrics["split"] == "val"]
            .drop(columns="split")
            .to_dict("records"),
            "class_names": list(names),
            "per_class_iou": list(overall.iou),
            "per_class_dice": list(overall.dice),
            "miou": overall.miou,
            "pixel_accuracy": overall.pixel_accuracy,
            "objects": _object_breakdown(
                test.new_cm.sum(0),
                names,
                parameters.get("classes", {}).get("object_classes") or (),
            ),
        },
        "gate": gate_verdict,
        "search": {k: v for k, v in study_summary.items() if k != "history"},
        "caveats": {
            "worst_slices": [
                {"slice": r.slice, "score": r.new, "n_images": r.n_images}
                for r in worst.itertuples()
            ],
            "known_edge_cases": sorted(
                s for s in slices["slice"].unique() if str(s).startswith("edge:")
            ),
        },
        "edge_cases": bug_report,
        "labeling": {
            k: annotation_import_report.get(k)
            for k in ("labels", "quarantined", "images_added", "annotators", "effort")
        },
        "reproducibility": {
            "git_commit": git_commit(),
            "env": run_provenance.get("env") if run_provenance else None,
            "seed": meta["seed"],
            "packages": package_versions(),
            "config": {
                k: v for k, v in parameters.items() if not k.startswith("lake_version_")
            },
            "runtime_params": run_provenance.get("runtime_params")
            if run_provenance
            else None,
            "lake_versions": {
                "images": lake_images.attrs.get("delta_version"),
                # What the iteration saw: after its annotation import, if any.
                "labels": _first_set(
                    annotation_import_report.get("labels_version"),
                    datasets.get("lake_labels", {}).get("delta_version"),
                ),
                "models": lake_models.attrs.get("delta_version"),
                "edge_cases": _first_set(
                    annotation_import_report.get("edge_cases_version"),
                    datasets.get("lake_edge_cases", {}).get("delta_version"),
                ),
            },
            "datasets": {
                name: {
                    "fingerprint": d.get("fingerprint"),
                    **(
                        {"delta_version": d["delta_version"]}
                        if "delta_version" in d
                        else {}
                    ),
                }
                for name, d in sorted(datasets.items())
            },
            "promoted_before": promoted.version,
        },
        "volatile": {
            "created_at": datetime.now(UTC).isoformat(),
            "training": meta.get("volatile", {}),
            "hardware": hardware(),
            "kedro_load_versions": {
                name: d["load_version"]
                for name, d in sorted(datasets.items())
                if d.get("load_version")
            },
        },
    }
    card = clean(card)
    return card, render_markdown(card)


def register_trained_model(
    trained_model: TrainedModel,
    model_card: dict[str, Any],
    gate_verdict: dict[str, Any],
    slice_metrics: pd.DataFrame,
    training: dict[str, Any],
) -> ModelRecord:
    """The `models` row: promoted or not, and why."""
    test = slice_metrics[slice_metrics["split"] == "test"]
    scores = dict(zip(test["slice"], test["new"], strict=True))
    return ModelRecord(
        model=trained_model,
        card=model_card,
        metric=training.get("metric", "miou"),
        score=float(scores.get("all", float("nan"))),
        slice_scores={k: (None if v != v else float(v)) for k, v in scores.items()},
        promoted=bool(gate_verdict["promoted"]),
        reason=" ".join(gate_verdict["reasons"]),
    )


# -- edge cases (bugs) --------------------------------------------------------------


def _bug_row(
    bug: Any, test: pd.DataFrame, *, status_before: str, status: str, labelled: int
) -> dict[str, Any]:
    """A bug's line in the report, with its `edge:` test slice before and after."""
    name = f"edge:{bug.tag}"
    row = test.loc[name] if name in test.index else None
    return {
        "bug_id": bug.bug_id,
        "tag": bug.tag,
        "opened_iteration": int(bug.opened_iteration),
        "status_before": status_before,
        "status": status,
        "seeds": len(bug.seed_image_ids),
        "labelled_since_opened": int(labelled),
        "slice": name,
        "n_images": None if row is None else int(row["n_images"]),
        "insufficient": None if row is None else bool(row["insufficient"]),
        "before": None if row is None else row["old"],
        "after": None if row is None else row["new"],
        "delta": None if row is None else row["delta"],
    }


def track_bugs(
    lake: Lake,
    edge_cases: pd.DataFrame,
    gate_verdict: dict[str, Any],
    slice_metrics: pd.DataFrame,
    slices: pd.DataFrame,
    effective_labels: pd.DataFrame,
    iteration: int,
) -> list[dict[str, Any]]:
    """Moves bugs along their life cycle and reports each bug's `edge:` slice.

    - `candidates -> labelled`: the bug's `edge:<tag>` slice holds an image first
      labelled after the bug was opened (its candidates came back labelled).
    - `labelled -> fixed`: the gate promoted this model, and its test
      `edge:<tag>` slice is sufficient and improved on the promoted model.
    - reopened: the gate rejected this model for regressing on `edge:<tag>`
      (but not overall: worse everywhere is a bad run, not an edge case
      forgotten), and no bug of that tag is looking for candidates: a new
      bug of the tag opens with the earlier bugs' seeds (`reopen_bugs`), so
      the next iteration's KNN and acquisition fetch more images like them.

    Returns:
        One row per bug (bug_id, tag, status before and after, and the test
        slice's n, before, after and delta), for the model card.
    """
    bugs = current_bugs(edge_cases)
    if bugs.empty:
        return []
    first = effective_labels.set_index("image_id")["first_iteration"]
    test = slice_metrics[slice_metrics["split"] == "test"].set_index("slice")
    now = datetime.now(UTC)
    events, report = [], []
    log_so_far = edge_cases
    for bug in bugs.sort_values("bug_id").itertuples(index=False):
        name = f"edge:{bug.tag}"
        status = bug.status
        members = slices.loc[slices["slice"] == name, "image_id"]
        new_labels = int(
            (first.reindex(members).fillna(-1) > bug.opened_iteration).sum()
        )
        row = test.loc[name] if name in test.index else None
        steps = []
        if status == "candidates" and new_labels:
            steps.append("labelled")
        improved = (
            row is not None
            and not bool(row["insufficient"])
            and row["delta"] is not None
            and pd.notna(row["delta"])
            and float(row["delta"]) > 0
        )
        if (
            (status == "labelled" or steps)
            and gate_verdict.get("promoted")
            and improved
        ):
            steps.append("fixed")
        for step in steps:
            event = advance_status(
                log_so_far, bug.bug_id, step, iteration=int(iteration), now=now
            )
            log_so_far = pd.concat([log_so_far, event], ignore_index=True)
            events.append(event)
        report.append(
            _bug_row(
                bug,
                test,
                status_before=status,
                status=steps[-1] if steps else status,
                labelled=new_labels,
            )
        )
    flagged = regressed_slices(gate_verdict)
    regressed = {name.split(":", 1)[1] for name in flagged if name.startswith("edge:")}
    if regressed and OVERALL_SLICE in flagged:
        # Worse everywhere is a bad training run, not an edge case forgotten.
        log.info("bugs: the model regressed overall; no bug reopens")
    elif regressed and not gate_verdict.get("promoted"):
        reopened = reopen_bugs(
            log_so_far, sorted(regressed), iteration=iteration, now=now
        )
        if len(reopened):
            events.append(reopened)
        report += [
            _bug_row(bug, test, status_before="regressed", status="open", labelled=0)
            for bug in reopened.itertuples(index=False)
        ]
    if events:
        lake.append("edge_cases", pd.concat(events, ignore_index=True))
    log.info(
        "bugs: %s",
        "; ".join(f"{r['bug_id']} {r['status_before']}->{r['status']}" for r in report),
    )
    return report
