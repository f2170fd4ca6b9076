"""Refit noise: how far one iteration's model moves when only its training seed does.

The label-efficiency grid (benchmarks/label_efficiency.py) compares strategies
by the spread across 3 seeds, and a seed changes everything at once: the seed
set, the iteration-0 model, which images each strategy picks, and every refit.
This benchmark holds the labelled set fixed. For each (strategy, seed) it runs
the loop up to one iteration's training (`simulate_run(stop_before="K:train")`,
by default K = 0: the first acquisition, 20 masks), then trains that same
labelled set, warm-started from the same parent model, under several training
seeds (`training.seed`: the Optuna sampler, the initialisation of new layers,
batch order and augmentation), each in its own copy of the run. Every trained
model (the candidate, whether or not the forgetting gate promotes it) is scored
on the fixed eval set.

It prints, per (strategy, seed), the candidates' eval mIoU per training seed
(`*`: the gate rejected it; the grid's curve then stays at the parent), then:

- refit noise: the std across training seeds, pooled over the seeds;
- the spread across seeds of the per-seed means (what the grid's verdict uses,
  here without the refit noise of a single training seed);
- hitl - random per seed, with the training seeds averaged;
- how well the val score (which picks each refit's best epoch and trial)
  ranks the refits by eval mIoU: the correlation within seeds, pooled.

Only the synthetic data (env bench by default). Resumable per (strategy, seed,
training seed): re-run with the same --out. About 19 minutes on 2 cores for
2 strategies x 3 seeds x 6 training seeds at K = 0 (half a minute per trained
model, plus the loop up to iteration K once per (strategy, seed)).

Run: `.venv/bin/python benchmarks/refit_noise.py --out /tmp/refit [--strategies
random,hitl] [--seeds 0,1,2] [--train-seeds 0,1,2,3] [--at 0] [--params JSON]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edgeloop.classmap import ClassMap
from edgeloop.commands import project_config
from edgeloop.progress import ENV as PROGRESS_ENV
from edgeloop.simulate import (
    EvalSet,
    LabeledFolder,
    SimulationPlan,
    deep_merge,
    score_model,
    simulate_run,
)

EVAL_SET = Path("data/01_raw/synthetic/eval")


class Refit(NamedTuple):
    """One retrain of the labelled set: its eval mIoU, gate verdict and val score."""

    train_seed: int
    miou: float
    promoted: bool
    val: float


def _refit(
    run_dir: Path,
    train_seed: int,
    iteration: int,
    lake_root: str,
    evalset: EvalSet,
    cm: ClassMap,
) -> Refit:
    """The model trained at `iteration`, scored on the eval set."""
    from edgeloop.lake import Lake
    from edgeloop.registry import load_model

    lake = Lake(str(run_dir / lake_root))
    models = lake.read("models")
    rows = models[models["iteration"] == iteration]
    if len(rows) != 1:
        raise RuntimeError(
            f"{run_dir}: expected one model of iteration {iteration}, found {len(rows)}"
        )
    row = rows.iloc[0]
    model = load_model(lake, row)
    scores = score_model(model.predictor(batch_size=32), evalset, cm)
    return Refit(
        train_seed,
        scores["all"]["miou"],
        bool(row["promoted"]),
        float(json.loads(row["metadata_json"])["val_score"]),
    )


def _after_gate(rows: list[Refit], parent: float) -> list[float]:
    """The promoted model's mIoU per training seed: the candidate's, or the parent's."""
    return [r.miou if r.promoted else parent for r in rows]


def _centred(values: list[float]) -> np.ndarray:
    return np.asarray(values) - np.mean(values)


def _pm(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", type=Path, default=Path("."))
    ap.add_argument("--env", default="bench", help="Kedro env (default: bench)")
    ap.add_argument("--seeds", default="0,1,2", help="data seeds, as in the grid")
    ap.add_argument("--strategies", default="random,hitl")
    ap.add_argument(
        "--train-seeds",
        default="0,1,2,3",
        help="training seeds of each retrain (the grid trains seed s with seed s)",
    )
    ap.add_argument(
        "--at",
        type=int,
        default=0,
        help="retrain iteration K's labelled set, as trained for iteration K+1 "
        "(default 0: the first acquisition)",
    )
    ap.add_argument("--budget", type=int, default=20, help="masks per iteration")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars, the pipelines' included (EDGELOOP_PROGRESS=0)",
    )
    ap.add_argument(
        "--params", default=None, help="extra runtime params as JSON, for every run"
    )
    args = ap.parse_args(argv)
    if args.quiet:
        os.environ[PROGRESS_ENV] = "0"
    seeds = [int(s) for s in args.seeds.split(",") if s]
    train_seeds = [int(s) for s in args.train_seeds.split(",") if s]
    strategies = [s for s in args.strategies.split(",") if s]
    if args.at < 0:
        ap.error(f"--at must be >= 0, got {args.at}")
    if len(train_seeds) < 2:
        ap.error("give at least two --train-seeds: noise needs two refits")
    env = None if args.env == "local" else args.env
    project = args.project.resolve()
    out = args.out.resolve()
    extra = json.loads(args.params) if args.params else {}
    globals_, params = project_config(project, env)
    lake_root = globals_.get("lake_root", "data/lake")
    cm = ClassMap.from_params(params["classes"])
    iteration = args.at + 1
    masks = iteration * args.budget

    def plan(
        folder: Path, strategy: str, seed: int, train_seed: int | None
    ) -> SimulationPlan:
        over = (
            extra
            if train_seed is None
            else deep_merge(extra, {"training": {"seed": train_seed}})
        )
        return SimulationPlan(
            project=project,
            out=folder,
            strategy=strategy,
            iterations=iteration,
            budget=args.budget,
            seeds=(seed,),
            env=env,
            progress=not args.quiet,
            extra_params=over,
        )

    t0 = time.perf_counter()
    results: dict[str, dict[int, list[Refit]]] = {}
    parents: dict[tuple[str, int], float] = {}
    for strategy in strategies:
        results[strategy] = {}
        for seed in seeds:
            prep = out / "prep"
            records = simulate_run(
                plan(prep, strategy, seed, None), seed, stop_before=f"{args.at}:train"
            )
            parents[strategy, seed] = records[-1]["slices"]["all"]["miou"]
            source = prep / "runs" / f"{strategy}-seed{seed}"
            # The run's own eval set (the same synthetic one for every seed).
            evalset = EvalSet.load(
                LabeledFolder.from_folders(
                    source / EVAL_SET / "images", source / EVAL_SET
                ),
                cm,
            )
            rows = []
            for t in train_seeds:
                folder = out / f"train{t}"
                run_dir = folder / "runs" / f"{strategy}-seed{seed}"
                if not run_dir.is_dir():
                    shutil.copytree(source, run_dir)
                simulate_run(plan(folder, strategy, seed, t), seed)
                r = _refit(run_dir, t, iteration, lake_root, evalset, cm)
                rows.append(r)
                print(
                    f"{strategy} seed {seed} training seed {t}: eval mIoU "
                    f"{r.miou:.4f}{'' if r.promoted else ' (gate rejected)'}",
                    flush=True,
                )
            results[strategy][seed] = rows

    print(f"\nwall time {(time.perf_counter() - t0) / 60:.1f} min")
    print(
        f"\nRefit noise at iteration {iteration} ({masks} masks added), env "
        f"{args.env}, params {json.dumps(extra) if extra else 'none'}: the same "
        "labelled set and parent, training seeds " + ",".join(map(str, train_seeds))
    )
    head = f"{'strategy':<9}{'seed':>5}{'parent':>8}" + "".join(
        f"{'t=' + str(t):>8}" for t in train_seeds
    )
    print(head + f"{'mean ± std':>17}{'gate passed':>13}{'after the gate':>17}")
    print("-" * (len(head) + 47))
    for strategy in strategies:
        for seed in seeds:
            rows = results[strategy][seed]
            cells = "".join(
                f"{f'{r.miou:.3f}' + ('' if r.promoted else '*'):>8}" for r in rows
            )
            passed = sum(r.promoted for r in rows)
            gated = _after_gate(rows, parents[strategy, seed])
            print(
                f"{strategy:<9}{seed:>5}{parents[strategy, seed]:>8.3f}{cells}"
                f"{_pm([r.miou for r in rows]):>17}{f'{passed}/{len(rows)}':>13}"
                f"{_pm(gated):>17}"
            )
    print(
        "(*: the forgetting gate rejected it; the grid's curve stays at the parent,"
        "\n as in 'after the gate': the promoted model's mIoU, what the grid records)"
    )

    print("\nper strategy:")
    means: dict[tuple[str, str], dict[int, float]] = {}
    for view in ("candidates", "after the gate"):
        for strategy in strategies:
            by_seed = {
                s: [r.miou for r in rows]
                if view == "candidates"
                else _after_gate(rows, parents[strategy, s])
                for s, rows in results[strategy].items()
            }
            within = [np.var(v, ddof=1) for v in by_seed.values()]
            means[strategy, view] = {s: float(np.mean(v)) for s, v in by_seed.items()}
            across = list(means[strategy, view].values())
            print(
                f"  {view:<15}{strategy:<8} refit noise (std across training seeds, "
                f"pooled) {np.sqrt(np.mean(within)):.3f}; spread across seeds of "
                f"the per-seed means "
                f"{np.std(across, ddof=1) if len(across) > 1 else 0:.3f}"
            )
        if ("hitl", view) in means and ("random", view) in means:
            diffs = [means["hitl", view][s] - means["random", view][s] for s in seeds]
            print(
                f"  {view:<15}hitl - random per seed (training seeds averaged): "
                + " ".join(f"{d:+.3f}" for d in diffs)
                + f"  (mean {np.mean(diffs):+.3f})"
            )
    # Model selection (best epoch, best trial) reads the val split, which holds
    # 20% of each strategy's own picks: how well does it rank the refits?
    for strategy in strategies:
        by_seed = results[strategy].values()
        v = np.concatenate([_centred([r.val for r in rows]) for rows in by_seed])
        e = np.concatenate([_centred([r.miou for r in rows]) for rows in by_seed])
        print(
            f"  {strategy:<8} val score against eval mIoU across training seeds "
            f"(within seeds, pooled): r = {np.corrcoef(v, e)[0, 1]:+.2f}"
        )
    summary = {
        "iteration": iteration,
        "masks": masks,
        "params": extra,
        "parents": {f"{s}-seed{k}": v for (s, k), v in parents.items()},
        "results": {
            s: {str(k): [r._asdict() for r in rows] for k, rows in by_seed.items()}
            for s, by_seed in results.items()
        },
    }
    (out / "refit_noise.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
