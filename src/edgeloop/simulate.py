"""The loop end to end with a simulated annotator (`edgeloop simulate`).

The simulated annotator is, with the benchmarks, the only reader of the truth
of the unlabeled pool (`data/01_raw/truth/`). It plays the people of the loop:

- **reviewer**: answers the review tasks of `discover`. A prediction whose mIoU
  against truth is below `tau` is a `bug`, tagged with the image's true rare
  conditions (`bug_tags`; none gives the bug `other`); the rest is `correct`.
- **annotator**: answers the labeling tasks by correcting the best
  pre-annotation to the truth (optionally with label noise: an object painted
  with a wrong class).

Its answers are Label Studio JSON export files written where people's exports
go (`review.import.exports_dir`, `annotation.import.exports_dir`), so they take
the same import path as real exports: there is no back door.

One simulated iteration `k` runs real Kedro sessions:

1. `discover` up to the review tasks (production scoring, review);
2. the reviewer answers them (hitl only: the other strategies do not use
   verdicts, so they pay no review cost);
3. `discover` from the verdict import on (bugs, similarity, acquisition,
   pseudo-labelling, labeling tasks);
4. the annotator answers the labeling tasks;
5. `train_iteration` with `iteration=k+1` (import, slicing, training, gate);
6. the promoted model is scored on the fixed, fully labeled evaluation set,
   independently of the gate.

Every strategy of a seed starts from one shared base (ingest and iteration 0),
copied, so they start from the same seed set and model. Runs are resumable per
(strategy, seed, iteration): finished stages are recorded in `state.json`.

On CamVid (`dataset="camvid"`, env `camvid`) the seed set, the pool with
frame-order timestamps, its truth and the eval set are laid out once per seed
by `edgeloop.simdata.prepare_camvid`; the sessions get their paths as runtime
params, so the same pipelines run.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy import ndimage

from edgeloop.annotation import IMAGE, MASK, effort, prediction_mask
from edgeloop.classmap import ClassMap
from edgeloop.imaging import decode_image, decode_mask, sha256
from edgeloop.labelstudio import brush_results
from edgeloop.metrics import (
    SegmentationScores,
    confusion_matrix,
    evaluate_slices,
    per_image_confusion,
)
from edgeloop.review_tasks import CONDITION, VERDICT
from edgeloop.simdata import CamvidSimConfig, PreparedCamvid, prepare_camvid

log = logging.getLogger(__name__)

STRATEGIES = ("random", "entropy", "hitl")
REFERENCE = "full"  # the same recipe on the whole pool: the 100% line
DATASETS = ("synthetic", "camvid")
REVIEWER = "simulated-reviewer@edgeloop.local"
ANNOTATOR = "simulated-annotator@edgeloop.local"
# Answers are stamped at EPOCH + iteration days (+ the task's position in
# seconds): the same run gives the same exports, verdicts and cards.
EPOCH = pd.Timestamp("2030-01-01T00:00:00Z")


# -- truth ------------------------------------------------------------------------


@dataclass(frozen=True)
class LabeledFolder:
    """Images with masks and condition tags, keyed by image_id.

    The image_id is the sha256 of the image file's bytes, which is what the
    lake stores for a PNG, so tasks (which carry image_id) find their truth.
    Layout: `<images>/<stem>.png`, `<masks>/masks/<stem>.png` and
    `<masks>/metadata.jsonl` (`{"stem": ..., "tags": [...]}` per line).
    """

    stems: dict[str, str]  # image_id -> stem
    image_paths: dict[str, Path]
    mask_paths: dict[str, Path]
    tags: dict[str, tuple[str, ...]]

    @classmethod
    def from_folders(cls, images: str | Path, masks: str | Path) -> LabeledFolder:
        images, masks = Path(images), Path(masks)
        if not images.is_dir():
            raise FileNotFoundError(f"images folder {str(images)!r} does not exist")
        mask_dir = masks / "masks"
        if not mask_dir.is_dir():
            raise FileNotFoundError(f"masks folder {str(mask_dir)!r} does not exist")
        tags: dict[str, tuple[str, ...]] = {}
        meta = masks / "metadata.jsonl"
        if meta.is_file():
            for line in meta.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    tags[str(rec["stem"])] = tuple(rec.get("tags") or ())
        stems, image_paths, mask_paths, by_id_tags = {}, {}, {}, {}
        for path in sorted(images.glob("*.png")):
            mask = mask_dir / path.name
            if not mask.is_file():
                continue
            image_id = sha256(path.read_bytes())
            stems[image_id] = path.stem
            image_paths[image_id] = path
            mask_paths[image_id] = mask
            by_id_tags[image_id] = tags.get(path.stem, ())
        if not stems:
            raise ValueError(
                f"no image under {str(images)!r} has a mask under {str(mask_dir)!r}"
            )
        return cls(stems, image_paths, mask_paths, by_id_tags)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self.stems

    def __len__(self) -> int:
        return len(self.stems)

    @property
    def image_ids(self) -> list[str]:
        return list(self.stems)

    def mask(self, image_id: str) -> np.ndarray:
        return decode_mask(self.mask_paths[image_id].read_bytes()).astype(np.uint8)

    def image(self, image_id: str) -> np.ndarray:
        return decode_image(self.image_paths[image_id].read_bytes())


# -- the simulated annotator ----------------------------------------------------------


@dataclass(frozen=True)
class AnnotatorConfig:
    """The simulated people and their cost model.

    Attributes:
        tau: A review task is a bug when the prediction's mIoU vs truth is
            below this.
        review_cost: Cost of one review verdict (a labeled mask costs mask_cost).
        mask_cost: Cost of one labeled mask.
        pixel_cost: Extra cost per pixel changed from the pre-annotation.
        label_noise: Probability that a labeled object is painted with a wrong
            (random other object) class.
        bug_tags: The conditions a reviewer names in a bug verdict (the image's
            true tags among these); an image with none gives `other`.
        tau_quantile: If set, the threshold is also at most this quantile of
            the batch's mIoUs, so a reviewer flags the worst predictions of a
            weak model instead of all of them.
        seed: Seeds the label noise.
    """

    tau: float = 0.5
    review_cost: float = 0.1
    mask_cost: float = 1.0
    pixel_cost: float = 0.0
    label_noise: float = 0.0
    bug_tags: tuple[str, ...] = ("dusk", "night", "glare", "haze", "cloud")
    tau_quantile: float | None = None
    seed: int = 0

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> AnnotatorConfig:
        params = dict(params or {})
        unknown = set(params) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown simulation.annotator key(s): {sorted(unknown)}")
        if "bug_tags" in params:
            params["bug_tags"] = tuple(params["bug_tags"])
        cfg = cls(**params)
        if not 0.0 <= cfg.label_noise <= 1.0:
            raise ValueError(f"label_noise must be in [0, 1], got {cfg.label_noise}")
        if cfg.tau_quantile is not None and not 0.0 < cfg.tau_quantile < 1.0:
            raise ValueError(
                f"tau_quantile must be in (0, 1) or null, got {cfg.tau_quantile}"
            )
        if not 0.0 <= cfg.tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {cfg.tau}")
        return cfg


def _answer_time(iteration: int, position: int) -> str:
    return (EPOCH + pd.Timedelta(days=iteration, seconds=position)).isoformat()


def _export_task(
    task_id: int, task: Mapping[str, Any], result: list, who: str, ts: str, **extra
) -> dict:
    """A task as Label Studio exports it, with one submitted annotation."""
    annotation = {
        "id": task_id,
        "completed_by": {"id": 1, "email": who},
        "result": result,
        "was_cancelled": False,
        "ground_truth": False,
        "created_at": ts,
        "updated_at": ts,
        **extra,
    }
    return {
        "id": task_id,
        "data": dict(task["data"]),
        "annotations": [annotation],
        "predictions": list(task.get("predictions", [])),
    }


class SimulatedAnnotator:
    """Answers review and labeling tasks from truth, as Label Studio exports."""

    def __init__(
        self,
        truth: LabeledFolder,
        class_map: ClassMap,
        *,
        vocabulary: Sequence[str],
        config: AnnotatorConfig | None = None,
    ) -> None:
        self.truth = truth
        self.class_map = class_map
        self.vocabulary = set(vocabulary)
        self.config = config or AnnotatorConfig()

    def review(self, tasks: Sequence[Mapping], *, iteration: int) -> tuple[list, dict]:
        """Verdicts for review tasks: (export, stats).

        Tasks whose image has no truth (not from the pool) are left unanswered.
        """
        cm, cfg = self.class_map, self.config
        export, bugs, skipped = [], 0, 0
        scored: list[tuple[int, Mapping, str, float]] = []
        for i, task in enumerate(tasks):
            image_id = str(task["data"].get("image_id", ""))
            if image_id not in self.truth or not task.get("predictions"):
                skipped += 1
                continue
            truth = self.truth.mask(image_id)
            pred = prediction_mask(task["predictions"][0], cm, *truth.shape)
            if pred is None:
                skipped += 1
                continue
            miou = SegmentationScores.from_matrix(
                confusion_matrix(
                    truth, pred, cm.num_classes, ignore_index=cm.ignore_index
                )
            ).miou
            scored.append((i, task, image_id, float(miou)))
        tau = cfg.tau
        values = [m for *_, m in scored if not np.isnan(m)]
        if cfg.tau_quantile is not None and values:
            # Relative: people flag what is bad for this model, not everything.
            tau = min(tau, float(np.quantile(values, cfg.tau_quantile)))
        for i, task, image_id, miou in scored:
            verdict = "bug" if (np.isnan(miou) or miou < tau) else "correct"
            result = [
                {
                    "id": "verdict",
                    "from_name": VERDICT,
                    "to_name": IMAGE,
                    "type": "choices",
                    "value": {"choices": [verdict]},
                }
            ]
            if verdict == "bug":
                bugs += 1
                tags = [
                    t
                    for t in self.truth.tags[image_id]
                    if t in cfg.bug_tags and t in self.vocabulary
                ]
                if tags:
                    result.append(
                        {
                            "id": "condition",
                            "from_name": CONDITION,
                            "to_name": IMAGE,
                            "type": "choices",
                            "value": {"choices": tags},
                        }
                    )
            task_id = iteration * 1_000_000 + i + 1
            export.append(
                _export_task(
                    task_id, task, result, REVIEWER, _answer_time(iteration, i)
                )
            )
        stats = {
            "reviews": len(export),
            "bugs": bugs,
            "skipped": skipped,
            "cost": round(len(export) * cfg.review_cost, 6),
        }
        return export, stats

    def _noisy(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Paints each object with a wrong object class with prob label_noise."""
        cm, noise = self.class_map, self.config.label_noise
        objects = [
            i for n, i in zip(cm.names, cm.ids, strict=True) if n != "background"
        ]
        objects = objects if noise > 0 else []
        if len(objects) < 2:
            return mask
        out = mask.copy()
        for cid in objects:
            comps, n = ndimage.label(mask == cid)
            for j in range(1, n + 1):
                if rng.random() < noise:
                    out[comps == j] = rng.choice([o for o in objects if o != cid])
        return out

    def label(self, tasks: Sequence[Mapping], *, iteration: int) -> tuple[list, dict]:
        """Corrected masks for labeling tasks: (export, stats).

        Each annotation starts from the task's best pre-annotation (its first
        prediction) and is recorded with it, so the import measures the effort.
        """
        cm, cfg = self.class_map, self.config
        ids = list(cm.ids)
        export, skipped, changed_pixels, changed = [], 0, 0, []
        for i, task in enumerate(tasks):
            image_id = str(task["data"].get("image_id", ""))
            if image_id not in self.truth:
                skipped += 1
                continue
            rng = np.random.default_rng([cfg.seed, iteration, i])
            final = self._noisy(self.truth.mask(image_id), rng)
            start = (task.get("predictions") or [None])[0]
            extra: dict[str, Any] = {}
            if start is not None:
                extra["prediction"] = start
                pre = prediction_mask(start, cm, *final.shape)
                if pre is not None:
                    measured = effort(pre, final, ignore_index=cm.ignore_index)
                    frac = measured["changed_frac"] or 0.0
                    changed.append(frac)
                    changed_pixels += int(round(frac * final.size))
            result = brush_results(
                final,
                ids,
                list(cm.names),
                region_prefix=f"sim:{image_id}",
                from_name=MASK,
                to_name=IMAGE,
            )
            task_id = iteration * 1_000_000 + 500_000 + i + 1
            export.append(
                _export_task(
                    task_id,
                    task,
                    result,
                    ANNOTATOR,
                    _answer_time(iteration, i),
                    **extra,
                )
            )
        n = len(export)
        stats = {
            "masks": n,
            "skipped": skipped,
            "changed_pixels": changed_pixels,
            "mean_changed_frac": round(float(np.mean(changed)), 6) if changed else None,
            "cost": round(n * cfg.mask_cost + changed_pixels * cfg.pixel_cost, 6),
        }
        return export, stats


# -- scoring on the fixed evaluation set ------------------------------------------


@dataclass(frozen=True)
class EvalSet:
    """The fixed evaluation set in memory, with its slices (decoded once)."""

    image_ids: list[str]
    images: list[np.ndarray]
    truths: list[np.ndarray]
    slices: pd.DataFrame  # image_id, slice: `class:<name>` (present), `cond:<tag>`

    @classmethod
    def load(cls, folder: LabeledFolder, class_map: ClassMap) -> EvalSet:
        ids = folder.image_ids
        truths = [folder.mask(i) for i in ids]
        rows = []
        for image_id, truth in zip(ids, truths, strict=True):
            present = set(np.unique(truth).tolist())
            rows += [
                (image_id, f"class:{name}")
                for name, cid in zip(class_map.names, class_map.ids, strict=True)
                if cid in present
            ]
            rows += [(image_id, f"cond:{t}") for t in folder.tags[image_id]]
        return cls(
            ids,
            [folder.image(i) for i in ids],
            truths,
            pd.DataFrame(rows, columns=["image_id", "slice"]),
        )


def score_model(
    predictor: Any, evalset: EvalSet, class_map: ClassMap
) -> dict[str, dict[str, float]]:
    """mIoU and n per slice of the evaluation set ("all" first)."""
    preds = [p.mask for p in predictor.predict(evalset.images, with_scores=False)]
    per_image = per_image_confusion(
        evalset.truths,
        preds,
        class_map.num_classes,
        ignore_index=class_map.ignore_index,
    )
    results = evaluate_slices(
        per_image,
        evalset.image_ids,
        evalset.slices,
        metric="miou",
        class_names=class_map.names,
        min_images=1,
    )
    return {
        name: {"miou": round(float(r.score), 6), "n": int(r.n_images)}
        for name, r in results.items()
    }


def forgetting_events(
    records: Sequence[Mapping[str, Any]], *, min_images: int = 30, drop: float = 0.03
) -> list[dict]:
    """Promoted models that lost more than `drop` mIoU on a slice with n >= min.

    Judged on the fixed evaluation set, against the previous promoted model,
    independently of the gate. `records` are one run's iterations in order.
    """
    events = []
    prev = None
    for rec in records:
        if prev is not None and rec["promoted_version"] != prev["promoted_version"]:
            for name, now in rec["slices"].items():
                before = prev["slices"].get(name)
                if before is None or min(now["n"], before["n"]) < min_images:
                    continue
                delta = now["miou"] - before["miou"]
                if delta < -drop:
                    events.append(
                        {
                            "iteration": rec["iteration"],
                            "slice": name,
                            "n": now["n"],
                            "before": before["miou"],
                            "after": now["miou"],
                            "delta": round(delta, 6),
                            "model": rec["promoted_version"],
                        }
                    )
        prev = rec
    return events


# -- the driver -------------------------------------------------------------------


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """`over` merged into `base`, recursively for dicts (lists are replaced)."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def kedro_run(
    project: Path,
    *,
    env: str | None,
    pipelines: Sequence[str],
    params: Mapping[str, Any],
    to_nodes: Sequence[str] | None = None,
    node_names: Sequence[str] | None = None,
) -> None:
    """One real Kedro session in `project` (its folder is the working folder)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    with _cwd(project):
        bootstrap_project(project)
        with KedroSession.create(
            project_path=project, env=env, runtime_params=dict(params)
        ) as session:
            session.run(
                pipeline_names=list(pipelines),
                to_nodes=list(to_nodes) if to_nodes else None,
                node_names=list(node_names) if node_names else None,
            )


def discover_after_review() -> list[str]:
    """The `discover` nodes the second run of an iteration runs.

    The simulator runs `discover` twice per iteration: up to the review tasks,
    then (once the reviewer has answered) from the verdict import on. Both runs
    start from the same scored lake, so the similarity context (embeddings,
    clusters, novelty) the first run saved is loaded, not computed again:
    everything from `lake_after_production` on except those nodes.
    """
    from edgeloop.pipelines.discover import create_pipeline
    from edgeloop.pipelines.similarity.pipeline import context_pipeline

    context = {n.name for n in context_pipeline().nodes}
    after = create_pipeline().from_nodes("lake_after_production")
    return [n.name for n in after.nodes if n.name not in context]


@dataclass
class SimulationPlan:
    """What one `edgeloop simulate` call runs.

    Attributes:
        project: The Kedro project whose conf is simulated (copied per run).
        out: Where runs, curves, tables and cards go.
        strategy: An `acquisition.strategy`, or `full` (the reference: the
            whole pool labeled in one iteration, same recipe).
        env: The Kedro environment (None: the default, `local`; `camvid` for
            the camvid dataset).
        camvid_root: The real CamVid folder (default: the camvid env's
            `ingest.source.root`, relative to the project).
    """

    project: Path
    out: Path
    dataset: str = "synthetic"
    strategy: str = "hitl"
    iterations: int = 3
    budget: int = 50
    seeds: tuple[int, ...] = (0,)
    env: str | None = None
    progress: bool = True
    extra_params: dict[str, Any] = field(default_factory=dict)
    camvid_root: Path | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.dataset == "camvid":
            if self.env is None:
                self.env = "camvid"
            elif self.env != "camvid":
                raise ValueError(
                    f"--dataset camvid runs in the camvid environment, not {self.env!r}"
                )
        elif self.env == "camvid":
            raise ValueError("the camvid environment runs with --dataset camvid")
        if self.strategy not in (*STRATEGIES, REFERENCE):
            raise ValueError(
                f"strategy must be one of {(*STRATEGIES, REFERENCE)}, "
                f"got {self.strategy!r}"
            )
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1, got {self.budget}")
        if not self.seeds:
            raise ValueError("seeds is empty: give at least one, e.g. --seeds 0")


class Run:
    """One (strategy, seed): a project folder, its state and its records."""

    def __init__(
        self,
        plan: SimulationPlan,
        seed: int,
        sim: Mapping[str, Any],
        data_params: Mapping[str, Any] | None = None,
    ):
        self.plan, self.seed, self.sim = plan, seed, sim
        self.data_params = dict(data_params or {})
        self.dir = plan.out / "runs" / f"{plan.strategy}-seed{seed}"
        self.state_path = self.dir / "state.json"
        self.state = (
            json.loads(self.state_path.read_text())
            if self.state_path.is_file()
            else {"done": [], "records": [], "stats": []}
        )

    def save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True))
        tmp.replace(self.state_path)

    def done(self, stage: str) -> bool:
        return stage in self.state["done"]

    def mark(self, stage: str) -> None:
        self.state["done"].append(stage)
        self.save()

    def params(self, iteration: int) -> dict[str, Any]:
        """Runtime params of every session: the recipe, the strategy, the seed."""
        plan, seed = self.plan, self.seed
        strategy = "random" if plan.strategy == REFERENCE else plan.strategy
        run = {
            "acquisition": {"strategy": strategy, "budget": plan.budget, "seed": seed},
            "training": {"seed": seed},
            "review": {"sampling": {"seed": seed}},
        }
        merged = deep_merge(self.sim.get("overrides") or {}, run)
        merged = deep_merge(merged, plan.extra_params)
        # Where this seed's data is (CamVid): derived, so it wins.
        merged = deep_merge(merged, self.data_params)
        if plan.strategy == REFERENCE:
            merged = deep_merge(
                merged, {"pseudo_labelling": {"methods": ["own_model"]}}
            )
        return {**merged, "iteration": int(iteration)}


def copy_project(project: Path, dest: Path) -> Path:
    """A Kedro project folder at `dest` with `project`'s conf (not conf/local).

    The package itself comes from the installed project; telemetry is off.
    """
    dest.mkdir(parents=True)
    shutil.copy(project / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(
        project / "conf", dest / "conf", ignore=shutil.ignore_patterns("local")
    )
    (dest / "conf" / "local").mkdir()
    (dest / "src").mkdir()
    (dest / ".telemetry").write_text("consent: false\n")
    return dest


def _make_base(
    plan: SimulationPlan,
    seed: int,
    sim: Mapping[str, Any],
    data_params: Mapping[str, Any] | None = None,
) -> Path:
    """Ingest and iteration 0 for a seed, shared by every strategy (resumable)."""
    base = plan.out / "runs" / f"base-seed{seed}"
    if (base / ".complete").is_file():
        return base
    if base.exists():
        shutil.rmtree(base)
    copy_project(plan.project, base)
    run = Run(
        SimulationPlan(**{**plan.__dict__, "strategy": "random"}),
        seed,
        sim,
        data_params,
    )
    log.info("seed %d: ingest and iteration 0 in %s", seed, base)
    kedro_run(
        base,
        env=plan.env,
        pipelines=["ingest", "train_iteration"],
        params=run.params(0),
    )
    (base / ".complete").write_text("ok\n")
    return base


def _truth(
    run_dir: Path, sim: Mapping[str, Any], prepared: PreparedCamvid | None = None
) -> tuple[LabeledFolder, LabeledFolder]:
    if prepared is not None:
        pool = LabeledFolder.from_folders(prepared.pool / "images", prepared.truth)
        return pool, LabeledFolder.from_folders(prepared.eval / "images", prepared.eval)
    paths = sim.get("paths") or {}
    eval_root = run_dir / paths.get("eval_set", "data/01_raw/synthetic/eval")
    evalset = LabeledFolder.from_folders(eval_root / "images", eval_root)
    return _pool_truth(run_dir, sim), evalset


def _pool_truth(run_dir: Path, sim: Mapping[str, Any]) -> LabeledFolder:
    """A synthetic run's pool with its truth (`simulation.paths`)."""
    paths = sim.get("paths") or {}
    return LabeledFolder.from_folders(
        run_dir / paths.get("pool_images", "data/01_raw/synthetic/stream/images"),
        run_dir / paths.get("pool_truth", "data/01_raw/truth/stream"),
    )


def _load_params(plan: SimulationPlan) -> dict[str, Any]:
    """The project's parameters, with the plan's `simulation` overrides merged."""
    from edgeloop.commands import project_config

    globals_, params = project_config(plan.project, plan.env)
    extra = plan.extra_params.get("simulation") or {}
    params["simulation"] = deep_merge(params.get("simulation") or {}, extra)
    return {**params, "_lake_root": globals_.get("lake_root", "data/lake")}


def _prepare_camvid(
    plan: SimulationPlan, seed: int, params: Mapping[str, Any]
) -> PreparedCamvid:
    """This seed's CamVid layout under `out/data/camvid-seed<s>` (made once)."""
    source = dict((params.get("ingest") or {}).get("source") or {})
    root = Path(plan.camvid_root or source.get("root") or "")
    source["root"] = str(root if root.is_absolute() else plan.project / root)
    config = CamvidSimConfig.from_params((params.get("simulation") or {}).get("camvid"))
    return prepare_camvid(
        source,
        ClassMap.from_params(params["classes"]),
        plan.out / "data" / f"camvid-seed{seed}",
        seed=seed,
        config=config,
        progress=plan.progress,
    )


def _score_promoted(run_dir: Path, folder: LabeledFolder, cm: ClassMap, cache: dict):
    """The promoted model's version and eval-set scores (each scored once)."""
    from edgeloop.lake import Lake
    from edgeloop.registry import load_model, promoted_row

    lake = Lake(str(run_dir / cache["lake_root"]))
    row = promoted_row(lake.read("models"))
    if row is None:
        raise RuntimeError(f"{run_dir}: no promoted model after training")
    model = load_model(lake, row)
    if model.version not in cache:
        if "eval" not in cache:
            cache["eval"] = EvalSet.load(folder, cm)
        cache[model.version] = score_model(
            model.predictor(batch_size=32), cache["eval"], cm
        )
    return model.version, cache[model.version]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


STAGES = ("discover-review", "review", "discover", "label", "train", "score")


def simulate_run(
    plan: SimulationPlan, seed: int, *, echo=print, stop_before: str | None = None
) -> list[dict]:
    """Runs (or resumes) one (strategy, seed); returns its per-iteration records.

    `stop_before` ("<iteration>:<stage>", e.g. "0:train") stops the run just
    before that stage, if it is not done yet: a later call resumes it there,
    with its own plan (benchmarks/refit_noise.py retrains one labelled set
    under several training seeds that way).
    """
    from edgeloop.progress import tqdm

    iterations = 1 if plan.strategy == REFERENCE else plan.iterations
    if stop_before is not None:
        k, _, stage = stop_before.partition(":")
        if not k.isdigit() or stage not in STAGES:
            raise ValueError(
                f"stop_before must be '<iteration>:<stage>' with a stage of "
                f"{STAGES}, got {stop_before!r}"
            )
        if int(k) >= iterations:
            # It would never be reached: the run would go to the end instead.
            raise ValueError(
                f"stop_before {stop_before!r} is past the run's {iterations} "
                f"iteration(s) (0-{iterations - 1})"
            )
    params = _load_params(plan)
    sim = params.get("simulation") or {}
    cm = ClassMap.from_params(params["classes"])
    vocabulary = (params.get("slicing") or {}).get("condition_tags") or []
    review_dir = ((params.get("review") or {}).get("import") or {}).get(
        "exports_dir", "data/01_raw/review_exports"
    )
    label_dir = ((params.get("annotation") or {}).get("import") or {}).get(
        "exports_dir", "data/01_raw/annotation_exports"
    )
    prepared = _prepare_camvid(plan, seed, params) if plan.dataset == "camvid" else None
    data_params = prepared.runtime_params() if prepared is not None else {}
    run = Run(plan, seed, sim, data_params)
    if not run.dir.is_dir():
        base = _make_base(plan, seed, sim, data_params)
        shutil.copytree(base, run.dir, ignore=shutil.ignore_patterns(".complete"))
        run.save()
    pool, evalset = _truth(run.dir, sim, prepared)
    annotator = SimulatedAnnotator(
        pool,
        cm,
        vocabulary=vocabulary,
        config=AnnotatorConfig.from_params(
            {**(sim.get("annotator") or {}), "seed": seed}
        ),
    )
    cache: dict = {"lake_root": params["_lake_root"]}
    if not run.state["records"]:
        version, slices = _score_promoted(run.dir, evalset, cm, cache)
        run.state["records"].append(_record(plan, seed, 0, version, slices, run, pool))
        run.save()
    bar = tqdm(
        total=iterations * len(STAGES),
        desc=f"{plan.strategy} seed {seed}",
        unit="stage",
        disable=not plan.progress,
    )
    for k in range(iterations):
        reports = run.dir / "data" / "07_model_output" / f"iter_{k}"
        for stage in STAGES:
            key = f"{k}:{stage}"
            bar.set_postfix_str(f"iteration {k}: {stage}")
            if run.done(key):
                bar.update()
                continue
            if key == stop_before:
                bar.close()
                return run.state["records"]
            t0 = time.perf_counter()
            if stage in ("discover-review", "discover"):
                # Up to the review tasks; then again from the verdict import on,
                # so this iteration's verdicts open bugs before acquisition
                # (reusing the first run's embeddings, clusters and novelty).
                params_k = run.params(k)
                if plan.strategy == REFERENCE:
                    params_k["acquisition"]["budget"] = len(pool)
                first = stage == "discover-review"
                kedro_run(
                    run.dir,
                    env=plan.env,
                    pipelines=["discover"],
                    params=params_k,
                    to_nodes=["export_review_tasks"] if first else None,
                    node_names=None if first else discover_after_review(),
                )
            elif stage == "review":
                stats = {"reviews": 0, "bugs": 0, "skipped": 0, "cost": 0.0}
                if plan.strategy == "hitl":
                    tasks = _read_json(reports / "review_tasks.json")
                    export, stats = annotator.review(tasks, iteration=k)
                    _write_json(
                        run.dir / review_dir / f"simulated-iter{k}.json", export
                    )
                run.state["stats"].append({"iteration": k, "review": stats})
            elif stage == "label":
                tasks = _read_json(reports / "annotation_tasks.json")
                export, stats = annotator.label(tasks, iteration=k)
                _write_json(run.dir / label_dir / f"simulated-iter{k}.json", export)
                run.state["stats"].append({"iteration": k, "label": stats})
            elif stage == "train":
                kedro_run(
                    run.dir,
                    env=plan.env,
                    pipelines=["train_iteration"],
                    params=run.params(k + 1),
                )
            elif stage == "score":
                version, slices = _score_promoted(run.dir, evalset, cm, cache)
                rec = _record(plan, seed, k + 1, version, slices, run, pool)
                run.state["records"].append(rec)
                echo(
                    f"{plan.strategy} seed {seed} iteration {k + 1}: "
                    f"{rec['masks']} masks, cost {rec['cost']:.1f}, "
                    f"eval mIoU {slices['all']['miou']:.4f} ({version})"
                )
            log.info("%s %s took %.1f s", run.dir.name, key, time.perf_counter() - t0)
            run.mark(key)
            bar.update()
    bar.close()
    _collect_cards(run, plan.out)
    return run.state["records"]


def _record(
    plan: SimulationPlan,
    seed: int,
    iteration: int,
    version: str,
    slices: dict,
    run: Run,
    pool: LabeledFolder,
) -> dict:
    masks = sum(s["label"]["masks"] for s in run.state["stats"] if "label" in s)
    reviews = sum(s["review"]["reviews"] for s in run.state["stats"] if "review" in s)
    cost = sum(
        s.get("label", s.get("review", {})).get("cost", 0.0) for s in run.state["stats"]
    )
    previous = (
        run.state["records"][-1]["promoted_version"] if run.state["records"] else None
    )
    card = run.dir / "data" / "08_reporting" / f"iter_{iteration}" / "model_card.json"
    gate = _read_json(card).get("gate", {}) if card.is_file() and iteration > 0 else {}
    return {
        "strategy": plan.strategy,
        "seed": seed,
        "iteration": iteration,
        "masks": int(masks),
        "reviews": int(reviews),
        "cost": round(float(cost), 6),
        "pool": len(pool),
        "labeled_frac": round(masks / len(pool), 6),
        "promoted_version": version,
        "new_promoted": previous is not None and version != previous,
        "gate_promoted": gate.get("promoted"),
        "slices": slices,
    }


def _collect_cards(run: Run, out: Path) -> None:
    """Copies every iteration's model card to out/cards/<strategy>/seed<s>/."""
    reporting = run.dir / "data" / "08_reporting"
    target = out / "cards" / run.plan.strategy / f"seed{run.seed}"
    for card in sorted(reporting.glob("iter_*/model_card.*")):
        dest = target / card.parent.name / card.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(card, dest)


# -- the report ---------------------------------------------------------------------


def load_records(out: Path) -> list[dict]:
    """Every record of every run under `out/runs`."""
    records = []
    for state in sorted((out / "runs").glob("*-seed*/state.json")):
        records += json.loads(state.read_text())["records"]
    return records


def pool_tags(run_dir: Path, sim: Mapping[str, Any] | None = None) -> dict:
    """image_id -> true condition tags of a synthetic run's pool (the truth)."""
    return dict(_pool_truth(run_dir, sim or {}).tags)


PICK_COLUMNS = [
    "strategy",
    "seed",
    "iteration",
    "image_id",
    "reason",
    "bug_tag",
    "tags",
]


def latest_version(path: Path) -> Path:
    """The latest version's file of a Kedro versioned dataset at `path`.

    Kedro saves `<path>/<version>/<name>`, version strings sort by time.
    """
    versions = sorted(
        v / path.name for v in path.iterdir() if (v / path.name).is_file()
    )
    if not versions:
        raise FileNotFoundError(f"{path} holds no saved version of {path.name}")
    return versions[-1]


def labeled_picks(out: Path, sim: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """What every synthetic run under `out/runs` sent to labeling, with the truth.

    One row per labeling-queue row (the annotator labels the whole queue) of
    every iteration of every strategy but the full-data reference: strategy,
    seed, iteration (the one whose model first trains on it), image_id, reason
    (random, low_confidence, bug_candidate, ...), bug_tag (the queue's: the
    condition the bug of a bug_candidate or bug_seed pick was flagged with,
    else missing) and tags (the image's true condition tags, as the annotator
    sees them). Like the annotator, it reads the pool's truth; it is for the
    benchmarks.
    """
    rows = []
    for state in sorted((out / "runs").glob("*-seed*/state.json")):
        run_dir = state.parent
        strategy, _, seed = run_dir.name.rpartition("-seed")
        if strategy in (REFERENCE, "base"):
            continue
        tags = pool_tags(run_dir, sim)
        for versions in sorted(
            run_dir.glob("data/07_model_output/iter_*/labeling_queue.parquet")
        ):
            iteration = int(versions.parent.name.removeprefix("iter_")) + 1
            # A versioned dataset: the latest version is the queue the
            # annotator labelled (a resumed acquisition may have saved two).
            path = latest_version(versions)
            # Not the image blobs: only the columns the picks need.
            columns = ["image_id", "reason", "bug_tag"]
            names = pq.read_schema(path).names
            queue = pd.read_parquet(path, columns=[c for c in columns if c in names])
            if "bug_tag" not in queue.columns:
                log.warning(
                    "%s was written before queues had a bug_tag column: "
                    "its picks' bug_tag is missing",
                    path,
                )
                queue["bug_tag"] = None
            for pick in queue.itertuples():
                rows.append(
                    {
                        "strategy": strategy,
                        "seed": int(seed),
                        "iteration": iteration,
                        "image_id": pick.image_id,
                        "reason": pick.reason,
                        "bug_tag": pick.bug_tag,
                        "tags": tuple(tags.get(pick.image_id, ())),
                    }
                )
    return pd.DataFrame(rows, columns=PICK_COLUMNS).sort_values(
        ["strategy", "seed", "iteration"], kind="stable", ignore_index=True
    )


def curves_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Long table: one row per (strategy, seed, iteration, slice)."""
    rows = [
        {
            **{k: r[k] for k in ("strategy", "seed", "iteration", "masks", "reviews")},
            **{k: r[k] for k in ("cost", "labeled_frac", "promoted_version")},
            "slice": name,
            "n": s["n"],
            "miou": s["miou"],
        }
        for r in records
        for name, s in r["slices"].items()
    ]
    cols = [
        "strategy", "seed", "iteration", "masks", "reviews", "cost",
        "labeled_frac", "promoted_version", "slice", "n", "miou",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=cols).sort_values(
        ["strategy", "seed", "iteration", "slice"], kind="stable", ignore_index=True
    )


def write_report(out: Path, *, min_images: int = 30, drop: float = 0.03) -> dict:
    """curves.csv, forgetting.csv, summary.csv and the plots, from every run."""
    records = load_records(out)
    curves = curves_frame(records)
    curves.to_csv(out / "curves.csv", index=False)
    events = []
    for strategy, seed in sorted({(r["strategy"], r["seed"]) for r in records}):
        recs = sorted(
            (r for r in records if r["strategy"] == strategy and r["seed"] == seed),
            key=lambda r: r["iteration"],
        )
        events += [
            {"strategy": strategy, "seed": seed, **e}
            for e in forgetting_events(recs, min_images=min_images, drop=drop)
        ]
    ev_cols = ["strategy", "seed", "iteration", "slice", "n", "before", "after"]
    pd.DataFrame(events, columns=[*ev_cols, "delta", "model"]).to_csv(
        out / "forgetting.csv", index=False
    )
    overall = curves[curves["slice"] == "all"]
    summary = (
        overall.groupby(["strategy", "iteration"], sort=True)
        .agg(
            masks=("masks", "mean"),
            cost=("cost", "mean"),
            labeled_frac=("labeled_frac", "mean"),
            miou_mean=("miou", "mean"),
            miou_std=("miou", "std"),
            seeds=("seed", "nunique"),
        )
        .reset_index()
    )
    summary["miou_std"] = summary["miou_std"].fillna(0.0)
    summary.to_csv(out / "summary.csv", index=False)
    if not overall.empty:
        plot_curves(curves, out)
    return {"records": len(records), "forgetting_events": len(events)}


def plot_curves(curves: pd.DataFrame, out: Path) -> None:
    """learning_curves.png (overall, vs masks and vs cost) and slice_curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = curves[curves["slice"] == "all"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for strategy, group in overall.groupby("strategy", sort=True):
        agg = group.groupby("iteration").agg(
            masks=("masks", "mean"),
            cost=("cost", "mean"),
            m=("miou", "mean"),
            s=("miou", "std"),
        )
        agg["s"] = agg["s"].fillna(0.0)
        for ax, x in zip(axes, ("masks", "cost"), strict=True):
            style = "k--" if strategy == REFERENCE else "-o"
            ax.plot(agg[x], agg["m"], style, label=strategy, ms=3)
            ax.fill_between(agg[x], agg["m"] - agg["s"], agg["m"] + agg["s"], alpha=0.2)
    axes[0].set_xlabel("masks labeled")
    axes[1].set_xlabel("annotation cost (1 per mask + review cost)")
    axes[0].set_ylabel("mIoU on the fixed evaluation set")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Label efficiency (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)

    names = sorted(s for s in curves["slice"].unique() if s.startswith("cond:"))
    if not names:
        return
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(
        rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False, sharey=True
    )
    for ax, name in zip(axes.flat, names, strict=False):
        part = curves[curves["slice"] == name]
        for strategy, group in part.groupby("strategy", sort=True):
            agg = group.groupby("iteration").agg(
                masks=("masks", "mean"), m=("miou", "mean")
            )
            ax.plot(agg["masks"], agg["m"], "-o", ms=3, label=strategy)
        ax.set_title(f"{name} (n={int(part['n'].max())})")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes[0][0].legend(fontsize=8)
    fig.supxlabel("masks labeled")
    fig.supylabel("mIoU")
    fig.tight_layout()
    fig.savefig(out / "slice_curves.png", dpi=100)
    plt.close(fig)


def simulate(plan: SimulationPlan, *, echo=print) -> dict:
    """Every seed of the plan, then the report over everything under `plan.out`."""
    plan.out.mkdir(parents=True, exist_ok=True)
    sim = (_load_params(plan).get("simulation") or {}).get("forgetting") or {}
    for seed in plan.seeds:
        simulate_run(plan, seed, echo=echo)
    return write_report(
        plan.out,
        min_images=int(sim.get("min_images", 30)),
        drop=float(sim.get("drop", 0.03)),
    )
