"""Label efficiency: hitl against random and uncertainty (entropy) sampling.

Usage:
    .venv/bin/python benchmarks/label_efficiency.py [--env bench] [--seeds 0,1,2]
        [--strategies random,entropy,hitl] [--iterations 5] [--budget 20]
        [--out data/09_label_efficiency] [--project .]
    .venv/bin/python benchmarks/label_efficiency.py --dataset camvid
        [--camvid-root ../shared/data/camvid] [--out data/09_label_efficiency_camvid]

On CamVid (env camvid) the defaults are 3 iterations and a budget of the seed
set's size, so every strategy goes from 10% to 40% of the train frames labeled;
"% labeled" then counts the seed set too (of all train frames).

It wraps `edgeloop simulate` (the same Kedro pipelines for every strategy, the
simulated annotator answering through the Label Studio import path), runs the
full-data reference (the same recipe on the whole pool), and prints, per
strategy, mean ± std over the seeds of:

- the masks, and the annotation cost (1 per mask + review cost), needed to
  reach 95% of the full-data mIoU;
- the mIoU at each budget;
- forgetting events (judged on the fixed eval set, independently of the gate);
- how many of its trained models the forgetting gate rejected ("5/15": the
  curve stays flat at those iterations).

Runs are resumable: re-running with the same --out continues where it stopped.
The curves are saved as PNG in --out (learning_curves.png, slice_curves.png,
label_efficiency.png).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import reduce
from pathlib import Path

import numpy as np
import pandas as pd

from edgeloop.commands import project_config
from edgeloop.progress import ENV as PROGRESS_ENV
from edgeloop.simulate import (
    REFERENCE,
    SimulationPlan,
    deep_merge,
    labeled_picks,
    load_records,
    pool_tags,
    simulate,
)
from edgeloop.sources import SourceError, list_camvid

TARGET = 0.95
TIE = 0.0005  # a paired difference under this prints as +-0.000: level


def _pm(values: list[float], fmt: str = "{:.3f}") -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(np.mean(values))} ± {fmt.format(np.std(values, ddof=1))}"


def _camvid_train_frames(project: Path, params: dict, args) -> int:
    """How many official train frames CamVid lists (for the default budget)."""
    source = (params.get("ingest") or {}).get("source") or {}
    root = args.camvid_root or Path(source.get("root", ""))
    root = root if root.is_absolute() else project / root
    train = (source.get("list_files") or {}).get("train", "train.txt")
    try:
        items = list_camvid(root, {"train": train}, source.get("strip_prefix", ""))
    except SourceError as err:
        raise SystemExit(f"{err}: give --camvid-root") from err
    return len(items)


def _reach(records: list[dict], target: float) -> tuple[float, float] | None:
    """(masks, cost) at the first iteration whose eval mIoU reaches target."""
    for rec in sorted(records, key=lambda r: r["iteration"]):
        if rec["slices"]["all"]["miou"] >= target:
            return rec["masks"], rec["cost"]
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", type=Path, default=Path("."))
    ap.add_argument("--dataset", choices=["synthetic", "camvid"], default="synthetic")
    ap.add_argument(
        "--env", default=None, help="Kedro env (default: bench; camvid for CamVid)"
    )
    ap.add_argument("--camvid-root", type=Path, default=None)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--strategies", default="random,entropy,hitl")
    ap.add_argument(
        "--iterations", type=int, default=None, help="default: 5 (CamVid: 3)"
    )
    ap.add_argument(
        "--budget",
        type=int,
        default=None,
        help="masks per iteration (default: 20; CamVid: the seed set's size)",
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars, the pipelines' included (EDGELOOP_PROGRESS=0)",
    )
    ap.add_argument(
        "--params",
        default=None,
        help="extra runtime params as JSON, for every strategy (e.g. "
        '\'{"simulation": {"annotator": {"tau_quantile": 0.5}}}\'); use a new '
        "--out when they change",
    )
    args = ap.parse_args(argv)
    if args.quiet:
        os.environ[PROGRESS_ENV] = "0"
    camvid = args.dataset == "camvid"
    seeds = tuple(int(s) for s in args.seeds.split(","))
    strategies = [s for s in args.strategies.split(",") if s]
    env = args.env or ("camvid" if camvid else "bench")
    env = None if env == "local" else env
    project = args.project.resolve()
    out = (
        args.out or Path(f"data/09_label_efficiency{'_camvid' if camvid else ''}")
    ).resolve()
    _, params = project_config(project, env)
    extra = json.loads(args.params) if args.params else {}
    sim = deep_merge(params.get("simulation") or {}, extra.get("simulation") or {})
    iterations = args.iterations or (3 if camvid else 5)
    budget = args.budget
    if budget is None:
        if camvid:
            # The seed set's size: 10% -> 40% of the train frames in 3 steps.
            frac = float((sim.get("camvid") or {}).get("seed_frac", 0.1))
            budget = round(frac * _camvid_train_frames(project, params, args))
        else:
            budget = 20

    t0 = time.perf_counter()
    for strategy in [REFERENCE, *strategies]:
        plan = SimulationPlan(
            project=project,
            out=out,
            strategy=strategy,
            dataset=args.dataset,
            iterations=iterations,
            budget=budget,
            seeds=seeds,
            env=env,
            progress=not args.quiet,
            camvid_root=args.camvid_root.resolve() if args.camvid_root else None,
            extra_params=extra,
        )
        simulate(plan, echo=lambda s: print(s, flush=True))
    minutes = (time.perf_counter() - t0) / 60

    def ran(section: str) -> dict:
        # What the sessions ran with: conf, then simulation.overrides, then
        # --params (which may change the seed set, synthetic.counts).
        layers = (params, sim.get("overrides") or {}, extra)
        return reduce(deep_merge, (layer.get(section) or {} for layer in layers))

    syn, training = ran("synthetic"), ran("training")
    records = [r for r in load_records(out) if r["seed"] in seeds]
    full = [
        r["slices"]["all"]["miou"]
        for r in records
        if r["strategy"] == REFERENCE and r["iteration"] == 1
    ]
    if not full:
        print("no full-data reference run found", file=sys.stderr)
        return 1
    full_miou = float(np.mean(full))
    target = TARGET * full_miou
    pool = records[0]["pool"]
    eval_n = records[0]["slices"]["all"]["n"]
    forgetting = pd.read_csv(out / "forgetting.csv")

    if camvid:
        manifest = out / "data" / f"camvid-seed{seeds[0]}" / "manifest.json"
        counts = json.loads(manifest.read_text())["counts"]
        seed_n = int(counts.get("seed", 0))
        train_n = int(counts.get("train_frames", pool))
        size = (sim.get("camvid") or {}).get("size")
        seed_set = (
            f"{seed_n} of CamVid's {train_n} train frames, chosen by the seed; "
            f"the official {counts.get('val')} val frames are the val split"
        )
        eval_set = f"{eval_n} CamVid official test frames"
        data_size = f"frames resized to {size} once; "
    else:
        seed_n, train_n = 0, pool
        seed_set = f"{syn.get('counts', {}).get('collected')} labeled images"
        eval_set = f"{eval_n} synthetic eval images"
        data_size = ""

    annotator = sim.get("annotator") or {}
    reviewer = f"tau {annotator.get('tau', 0.5)}"
    if annotator.get("tau_quantile") is not None:
        reviewer += (
            f" and below the {annotator['tau_quantile']} quantile of its review batch"
        )

    def pct(masks: float) -> float:
        """Labeled share: added masks of the pool (CamVid: seed + added of train)."""
        return 100 * (seed_n + masks) / train_n

    recipe = (
        f"{training.get('architectures')}, {training.get('n_trials')} trials x "
        f"{training.get('epochs')} epochs + refit {training.get('refit_epochs')} "
        "epochs, warm start"
    )
    rules = [
        "every strategy of a seed starts from the same seed set and iteration-0 "
        f"model ({seed_set})",
        "scored on a fixed, fully labeled eval set that is never in the pool: "
        f"{eval_set}",
        f"pool {pool} images; budget {budget} masks per iteration; "
        f"{iterations} iterations ({pct(0):.0f}% -> {pct(budget * iterations):.0f}% "
        f"labeled); seeds {list(seeds)}",
        f"{data_size}resolution {training.get('input_size')}; recipe {recipe}",
        f"full-data mIoU = the same recipe on the whole pool: {_pm(full)}; "
        f"target 95% = {target:.3f}",
        "cost = 1 per mask + 0.1 per review verdict (only hitl uses reviews)",
        f"simulated reviewer: a bug when the prediction's mIoU < {reviewer}",
        "forgetting event: a promoted model losing > 0.03 mIoU vs the previous "
        "one on an eval slice with n >= 30",
        f"wall time {minutes:.1f} min on this machine (this invocation: runs "
        "already complete in --out are reused, not timed again)",
    ]
    if extra:
        # What --params changed, for every strategy and the reference alike.
        rules.insert(
            4, f"runtime params (--params), for every run: {json.dumps(extra)}"
        )
    print("\nRules of the comparison")
    for rule in rules:
        print(f"- {rule}")
    print()

    budgets = sorted({r["masks"] for r in records if r["strategy"] in strategies})
    col = "% labeled" if camvid else "% of pool"
    widths = [("strategy", 9), ("masks to 95%", 16), (col, 12)]
    widths += [("cost to 95%", 16), ("forgetting", 11), ("gate rejected", 14)]
    header = "".join(
        f"{name:<{w}}" if i == 0 else f"{name:>{w}}"
        for i, (name, w) in enumerate(widths)
    )
    header += "  " + "  ".join(f"{'mIoU@' + str(b):>15}" for b in budgets)
    print(header)
    print("-" * len(header))
    curves, by_seed = {}, {}
    for strategy in strategies:
        rows = [r for r in records if r["strategy"] == strategy]
        reach, at = [], {b: [] for b in budgets}
        by_seed[strategy] = {}
        for seed in seeds:
            mine = [r for r in rows if r["seed"] == seed]
            hit = _reach(mine, target)
            reach.append(hit)
            for r in mine:
                at[r["masks"]].append(r["slices"]["all"]["miou"])
                by_seed[strategy][(seed, r["masks"])] = r["slices"]["all"]["miou"]
        curves[strategy] = at
        got = [h for h in reach if h is not None]
        masks = _pm([h[0] for h in got], "{:.0f}") + (
            f" ({len(got)}/{len(seeds)})" if len(got) < len(seeds) else ""
        )
        frac = _pm([pct(h[0]) for h in got], "{:.1f}")
        cost = _pm([h[1] for h in got], "{:.1f}")
        n_forget = int((forgetting["strategy"] == strategy).sum())
        # Models the forgetting gate kept out (the curve stays flat there).
        trained = [r for r in rows if r["iteration"] > 0]
        rejected = sum(r.get("gate_promoted") is False for r in trained)
        gate = f"{rejected}/{len(trained)}"
        cells = "  ".join(f"{_pm(at[b]):>15}" for b in budgets)
        values = [masks, frac, cost] if got else ["not reached", "-", "-"]
        row = f"{strategy:<9}" + "".join(
            f"{v:>{w}}" for v, (_, w) in zip(values, widths[1:4], strict=True)
        )
        print(f"{row}{n_forget:>11}{gate:>14}  {cells}")
    if "hitl" in curves and "random" in curves:
        print()
        print("hitl - random at each budget (mean; spread = largest std of the two):")
        for b in budgets[1:]:
            h, r = curves["hitl"][b], curves["random"][b]
            if not h or not r:
                continue
            diff = np.mean(h) - np.mean(r)
            if min(len(h), len(r)) < 2:
                # One seed has no spread: nothing to beat it by.
                print(f"  {b:>4} masks: {diff:+.3f} (one seed: no spread)")
                continue
            spread = max(np.std(h, ddof=1), np.std(r, ddof=1))
            verdict = "beats" if diff > spread else "does not beat"
            print(
                f"  {b:>4} masks: {diff:+.3f} (spread {spread:.3f}): "
                f"hitl {verdict} random"
            )
        # Every strategy of a seed starts from the same iteration-0 model, so
        # each seed's own difference is the paired view of the same numbers.
        print("hitl - random per seed (paired; the seeds' own differences):")
        for b in budgets[1:]:
            pairs = [
                by_seed["hitl"][(seed, b)] - by_seed["random"][(seed, b)]
                for seed in seeds
                if (seed, b) in by_seed["hitl"] and (seed, b) in by_seed["random"]
            ]
            if pairs:
                # A difference that prints as +0.000 or -0.000 is a tie, not a lead.
                ahead = sum(d >= TIE for d in pairs)
                level = sum(abs(d) < TIE for d in pairs)
                print(
                    f"  {b:>4} masks: "
                    + " ".join(f"{d:+.3f}" for d in pairs)
                    + f"  (mean {np.mean(pairs):+.3f}; hitl ahead in "
                    f"{ahead}/{len(pairs)} seeds"
                    + (f", level in {level}" if level else "")
                    + ")"
                )
    tags = annotator.get("bug_tags") or []
    if tags:
        _print_slice_gains(records, strategies, seeds, tags)
    if tags and not camvid:  # the synthetic pool's truth has condition tags
        picks = labeled_picks(out, sim)
        picks = picks[picks["strategy"].isin(strategies) & picks["seed"].isin(seeds)]
        pool = pool_tags(out / "runs" / f"{REFERENCE}-seed{seeds[0]}", sim)
        _print_picks(picks, strategies, set(tags), pool)
    _plot(curves, full_miou, target, budgets, out)
    (out / "label_efficiency.json").write_text(
        json.dumps(
            {
                "full_miou": full_miou,
                "target": target,
                "pool": pool,
                "curves": {
                    s: {str(b): v for b, v in c.items()} for s, c in curves.items()
                },
            },
            indent=1,
        )
    )
    plots = ("label_efficiency.png", "learning_curves.png", "slice_curves.png")
    print("\nplots: " + ", ".join(str(out / p) for p in plots))
    return 0


def _print_slice_gains(
    records: list[dict], strategies: list[str], seeds: tuple[int, ...], tags: list
) -> None:
    """Per rare-condition slice: which strategy improves it fastest.

    A strategy's gain on a slice is the slice's mIoU at each iteration minus
    its iteration-0 mIoU (the same model for every strategy of a seed),
    averaged over the iterations and then over the seeds: the area between
    the slice's curve and its start, so an early gain counts for more.
    """
    print("\nRare-condition slices, mean gain over the iterations (seeds averaged):")
    print(f"  {'slice':<14}" + "".join(f"{s:>10}" for s in strategies) + "  fastest")
    for tag in tags:
        name = f"cond:{tag}"
        gains = {}
        for strategy in strategies:
            per_seed = []
            for seed in seeds:
                mine = sorted(
                    (
                        r
                        for r in records
                        if r["strategy"] == strategy
                        and r["seed"] == seed
                        and name in r["slices"]
                    ),
                    key=lambda r: r["iteration"],
                )
                if len(mine) < 2:
                    continue
                start = mine[0]["slices"][name]["miou"]
                per_seed.append(
                    np.mean([r["slices"][name]["miou"] - start for r in mine[1:]])
                )
            if per_seed:
                gains[strategy] = float(np.mean(per_seed))
        if not gains:
            continue
        fastest = max(gains, key=gains.get)
        print(
            f"  {name:<14}"
            + "".join(
                f"{gains[s]:>+10.3f}" if s in gains else f"{'-':>10}"
                for s in strategies
            )
            + f"  {fastest}"
        )


def _print_picks(
    picks: pd.DataFrame, strategies: list[str], rare: set[str], pool: dict
) -> None:
    """What each strategy sent to labeling: the share with a rare condition.

    Per strategy and reason (hitl's bug candidates, confidence and random
    checks), from the true tags; for a bug's picks also the share that carry
    the very condition the bug was flagged with (does the similarity search
    find the failure people saw?).
    """
    is_rare = picks["tags"].map(lambda t: bool(rare & set(t)))
    own = pd.Series(
        [
            tag in tags if isinstance(tag, str) else np.nan
            for tag, tags in zip(picks["bug_tag"], picks["tags"], strict=True)
        ],
        index=picks.index,
        dtype=float,
    )
    in_pool = np.mean([bool(rare & set(t)) for t in pool.values()])
    print(
        "\nWhat each strategy labeled (all seeds and iterations): the share of "
        f"masks with a rare condition ({', '.join(sorted(rare))})"
    )
    print(f"  {'strategy':<10}{'picked by':<16}{'masks':>7}{'rare':>8}  bug's own")
    for strategy in strategies:
        mine = picks["strategy"] == strategy
        if not mine.any():
            continue
        reasons = sorted(picks.loc[mine, "reason"].unique())
        for reason in reasons + (["(all)"] if len(reasons) > 1 else []):
            sel = mine & ((picks["reason"] == reason) | (reason == "(all)"))
            bug = own[sel].dropna()
            print(
                f"  {strategy:<10}{reason:<16}{int(sel.sum()):>7}"
                f"{is_rare[sel].mean():>8.1%}"
                + (f"  {bug.mean():>8.1%}" if len(bug) else "")
            )
    print(f"  {'the pool':<26}{len(pool):>7}{in_pool:>8.1%}")


def _plot(
    curves: dict, full: float, target: float, budgets: list[int], out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy, at in curves.items():
        xs = [b for b in budgets if at[b]]
        m = np.array([np.mean(at[b]) for b in xs])
        s = np.array([np.std(at[b], ddof=1) if len(at[b]) > 1 else 0.0 for b in xs])
        ax.plot(xs, m, "-o", ms=3, label=strategy)
        ax.fill_between(xs, m - s, m + s, alpha=0.2)
    ax.axhline(full, color="k", ls="--", lw=1, label="full pool")
    ax.axhline(target, color="grey", ls=":", lw=1, label="95% of full")
    ax.set_xlabel("masks labeled")
    ax.set_ylabel("mIoU on the fixed eval set")
    ax.set_title("Label efficiency (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "label_efficiency.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
