"""Model cards: JSON (the record) and Markdown (rendered from the JSON).

Everything outside the `volatile` section is deterministic for a given config,
lake state and machine, so determinism checks and `edgeloop reproduce` compare
cards with `volatile` removed.
"""

from __future__ import annotations

import math
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "edgeloop",
    "kedro",
    "kedro-datasets",
    "torch",
    "torchvision",
    "optuna",
    "numpy",
    "pandas",
    "deltalake",
    "scikit-image",
)
CARD_SCHEMA = "edgeloop.model_card/v1"


def git_commit() -> str | None:
    """The commit of the edgeloop checkout that runs (not of the working folder)."""
    package_dir = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=package_dir,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict[str, Any]:
    import os

    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def strip_volatile(card: Mapping[str, Any]) -> dict[str, Any]:
    """The card without its `volatile` section (what determinism compares)."""
    return {k: v for k, v in card.items() if k != "volatile"}


def clean(value: Any) -> Any:
    """JSON-safe: nan/inf become None, tuples lists, numpy scalars Python."""
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if digits < 0 else f"{value:.{digits}f}"
    return str(value)


def _delta(value: Any) -> str:
    return "–" if value is None else f"{value:+.3f}"


def render_markdown(card: Mapping[str, Any]) -> str:
    """The human-readable card, rendered from the JSON card only."""
    m = card["model"]
    gate = card["gate"]
    lines = [
        f"# Model card: {m['version']} (iteration {m['iteration']})",
        "",
        f"**Verdict: {'PROMOTED' if gate['promoted'] else 'NOT PROMOTED'}.** "
        + " ".join(gate["reasons"]),
        "",
        "## Model details",
        "",
        "| field | value |",
        "|---|---|",
    ]
    for key in (
        "architecture",
        "n_params",
        "parent_version",
        "weights_source",
        "policy",
        "epochs_run",
        "best_epoch",
        "input_size",
        "weights_hash",
    ):
        lines.append(f"| {key} | {m.get(key)} |")
    if m.get("soup"):
        soup = m["soup"]
        lines.append(
            f"| refit soup | {soup['ingredients']} refits, val "
            + " ".join(f"{v:.4f}" for v in soup["val_scores"])
            + f"; their average {soup['soup_val_score']:.4f}; kept: "
            + f"{soup['returned']} |"
        )
    lines += ["", "## Intended use", "", card["intended_use"], ""]
    lines += ["## Limitations", "", card["limitations"], ""]
    td = card["training_data"]
    lines += [
        "## Training data",
        "",
        f"Images per split: {td['splits']}. By source: {td['by_source']}. "
        f"By label origin: {td['by_origin']}. Added this iteration: "
        f"{td['added_this_iteration']}.",
        "",
        "| slice (train) | images |",
        "|---|---|",
        *[f"| {s} | {n} |" for s, n in td["train_slices"].items()],
        "",
    ]
    boost = td.get("regression_boost")
    if boost:
        lines += [
            f"The last gate rejected a model for regressions: the "
            f"{boost['train_images']} train images of its regressed slices "
            f"({', '.join(boost['slices'])}) weighed {boost['factor']:g}x in "
            "this training.",
            "",
        ]
    ed = card["evaluation_data"]
    lines += [
        "## Evaluation data",
        "",
        f"Gate split: {ed['gate_split']} ({ed['n_images']} images); "
        f"resolution {ed['input_size']}; metric `{ed['metric']}`; slices with fewer "
        f"than {ed['min_images']} images are *insufficient* and never gate.",
        "",
        "## Results per slice",
        "",
        "| slice | n | new | promoted | Δ | 95% CI | best so far | flag |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in card["results"]["slices"]:
        flag = (
            "insufficient"
            if row["insufficient"]
            else ("**REGRESSED**" if row["regressed"] else "ok")
        )
        ci = (
            "–"
            if row["ci_low"] is None
            else f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
        )
        lines.append(
            f"| {row['slice']} | {row['n_images']} | {_fmt(row['new'])} | "
            f"{_fmt(row['old'])} | {_delta(row['delta'])} | {ci} | "
            f"{_fmt(row['best'])} | {flag} |"
        )
    lines += ["", "Per-class IoU on the gate split:", ""]
    lines += ["| class | IoU | Dice |", "|---|---|---|"]
    for name, iou, dice in zip(
        card["results"]["class_names"],
        card["results"]["per_class_iou"],
        card["results"]["per_class_dice"],
        strict=True,
    ):
        lines.append(f"| {name} | {_fmt(iou)} | {_fmt(dice)} |")
    objects = card["results"].get("objects")
    if objects:
        lines += [
            "",
            f"Where the errors are: {', '.join(objects['classes'])} against the "
            f"rest, whatever the class, IoU {_fmt(objects['object_iou'])} (finding "
            "the objects); mIoU if every pixel found as an object had the right "
            f"class {_fmt(objects['miou_classes_right'])}, against "
            f"{_fmt(card['results']['miou'])} (what telling them apart costs).",
        ]
    s = card["search"]
    lines += [
        "",
        "## Hyperparameter search",
        "",
        f"{s['n_trials']} trials ({s['complete']} complete, {s['pruned']} pruned); "
        f"best trial #{s['best_trial']} ({_fmt(s['best_value'])}).",
        "",
        "| architecture | trials | pruned | best val | params | policy | best params |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in s["per_architecture"]:
        lines.append(
            f"| {row['architecture']} | {row['trials']} | {row['pruned']} | "
            f"{_fmt(row['best_value'])} | {row['n_params']} | {row['policy']} | "
            f"{row['params']} |"
        )
    c = card["caveats"]
    lines += [
        "",
        "## Caveats",
        "",
        "Worst sufficient slices: "
        + ", ".join(f"{w['slice']} ({_fmt(w['score'])})" for w in c["worst_slices"]),
        "",
        "Known edge cases: "
        + (", ".join(c["known_edge_cases"]) if c["known_edge_cases"] else "none yet."),
        "",
    ]
    bugs = card.get("edge_cases") or []
    if bugs:
        lines += [
            "## Edge cases (bugs)",
            "",
            "Each bug's `edge:<tag>` test slice, before (the promoted model) and "
            "after (this model). A bug is `fixed` when a promoted model's slice is "
            "sufficient and improved.",
            "",
            "| bug | tag | status | n | before | after | Δ |",
            "|---|---|---|---|---|---|---|",
        ]
        for b in bugs:
            status = (
                b["status"]
                if b["status"] == b["status_before"]
                else f"{b['status_before']} → **{b['status']}**"
            )
            n = "–" if b["n_images"] is None else str(b["n_images"])
            if b["insufficient"]:
                n += " (insufficient)"
            lines.append(
                f"| {b['bug_id']} | {b['tag']} | {status} | {n} | "
                f"{_fmt(b['before'])} | {_fmt(b['after'])} | {_delta(b['delta'])} |"
            )
        lines.append("")
    lab = card.get("labeling") or {}
    if lab.get("labels"):
        lines += [
            "## Labeling effort",
            "",
            f"{lab['labels']} human label(s) imported for this iteration from "
            f"{', '.join(lab.get('annotators') or []) or 'unknown annotators'} "
            f"({lab.get('quarantined', 0)} task(s) quarantined). How much of each "
            "pre-annotation people had to change (IoU with the final label, and "
            "the fraction of pixels changed; lower is less work):",
            "",
            "| started from | labels | IoU | pixels changed |",
            "|---|---|---|---|",
        ]
        for method, e in sorted((lab.get("effort") or {}).items()):
            lines.append(
                f"| {method} | {e['n']} | {_fmt(e['mean_iou'])} | "
                f"{e['mean_changed_frac']:.1%} |"
            )
        lines.append("")
    r = card["reproducibility"]
    lines += [
        "## Reproducibility",
        "",
        f"git commit `{r['git_commit']}`, environment `{r['env']}`, seed {r['seed']}; "
        f"lake versions read: {r['lake_versions']}.",
        "",
        f"Re-run: `edgeloop reproduce <this card's JSON>`. Packages: {r['packages']}.",
        "",
        "<details><summary>Config snapshot and dataset fingerprints</summary>",
        "",
        "```json",
        __import__("json").dumps(
            {"config": r["config"], "datasets": r["datasets"]}, indent=1, sort_keys=True
        ),
        "```",
        "",
        "</details>",
        "",
        "## Volatile",
        "",
        f"{card['volatile']}",
        "",
    ]
    return "\n".join(lines)
