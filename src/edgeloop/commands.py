"""The `edgeloop` command group: what is not a pipeline (`kedro` runs those)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from edgeloop import __version__

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeloop")
def main() -> None:
    """edgeloop: human-in-the-loop image segmentation.

    Pipelines run through Kedro (`kedro run --pipelines ingest,slicing`);
    this command holds the rest.
    """


@main.group()
def lake() -> None:
    """Inspect and maintain the data lake."""


@lake.command("status")
@click.option(
    "--root",
    default="data/lake",
    show_default=True,
    help="Lake root: a local folder or an fsspec/object-store URI.",
)
def lake_status(root: str) -> None:
    """Show every lake table with its Delta version and row count."""
    from deltalake import DeltaTable

    from edgeloop.lake import SCHEMAS, Lake

    handle = Lake(root)
    click.echo(f"lake root: {root}")
    click.echo(f"{'table':<16}{'version':>8}{'rows':>10}")
    for table in SCHEMAS:
        version = handle.version(table)
        rows = "-"
        if version is not None:
            rows = str(DeltaTable(handle.table_uri(table)).count())
        click.echo(f"{table:<16}{'-' if version is None else version:>8}{rows:>10}")


@main.command("reproduce")
@click.argument("card", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--project",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="The project whose conf/ and lake the card was built from.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Scratch folder for the re-run (default: a new temp folder).",
)
def reproduce_cmd(card: Path, project: Path, workdir: Path | None) -> None:
    """Re-run the iteration of a model card JSON and compare, field by field.

    The re-run happens in a scratch folder, on a copy of the lake pinned to the
    Delta versions the card lists, with the card's config snapshot. Exits 1 if
    any field outside the card's `volatile` section differs.
    """
    import tempfile

    from edgeloop.reproduce import reproduce

    workdir = workdir or Path(tempfile.mkdtemp(prefix="edgeloop-reproduce-"))
    click.echo(f"re-running {card} in {workdir} ...")
    new_card, diffs = reproduce(card, project=project.resolve(), workdir=workdir)
    old = json.loads(card.read_text())
    checks = [
        (
            "model.weights_hash",
            old["model"]["weights_hash"],
            new_card["model"]["weights_hash"],
        ),
        ("gate.promoted", old["gate"]["promoted"], new_card["gate"]["promoted"]),
        ("results.miou", old["results"]["miou"], new_card["results"]["miou"]),
    ]
    click.echo(f"{'field':<40}{'card':>22}{'re-run':>22}  match")
    for name, a, b in checks:
        click.echo(
            f"{name:<40}{str(a)[:20]:>22}{str(b)[:20]:>22}  {'yes' if a == b else 'NO'}"
        )
    slice_paths = [d for d in diffs if d.path.startswith("results.slices")]
    n_slices = len(old["results"]["slices"])
    click.echo(
        f"slices compared: {n_slices}, slice fields differing: {len(slice_paths)}; "
        f"card fields differing (volatile excluded): {len(diffs)}"
    )
    for d in diffs[:40]:
        click.echo(f"  DIFF {d.path}: {d.expected!r} != {d.got!r}")
    if diffs:
        raise SystemExit(1)
    click.echo("reproduced: every field matches")


@lake.command("optimize")
@click.option("--root", default="data/lake", show_default=True, help="Lake root.")
@click.option(
    "--table",
    "tables",
    multiple=True,
    help="Table(s) to compact (default: predictions and feedback).",
)
def lake_optimize(root: str, tables: tuple[str, ...]) -> None:
    """Compact small files (one per writer commit) into large ones."""
    from edgeloop.lake import Lake

    handle = Lake(root)
    for table in tables or ("predictions", "feedback"):
        result = handle.optimize(table)
        if "skipped" in result:
            click.echo(f"{table}: skipped ({result['skipped']})")
        else:
            click.echo(
                f"{table}: {result.get('numFilesRemoved', 0)} files -> "
                f"{result.get('numFilesAdded', 0)}"
            )


def project_config(project: Path, env: str | None) -> tuple[dict, dict]:
    """(globals, parameters) of a Kedro project's conf, for one environment."""
    from kedro.config import OmegaConfigLoader

    if not (project / "conf" / "base").is_dir():
        return {}, {}
    loader = OmegaConfigLoader(
        conf_source=str(project / "conf"),
        base_env="base",
        default_run_env="local",
        env=env,
        merge_strategy={"parameters": "soft"},
    )
    return dict(loader["globals"]), dict(loader["parameters"])


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port.")
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Serve this model folder (weights.pt + metadata.json) instead of the "
    "promoted model; disables hot reload.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Run without a token (local experiments only): no auth at all.",
)
@click.option(
    "--project",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="The Kedro project: its conf/ gives the lake root and the tag vocabulary.",
)
@click.option("--env", default=None, help="Kedro environment (e.g. camvid).")
@click.option("--lake", "lake_root", default=None, help="Lake root (overrides conf).")
@click.option(
    "--no-log",
    is_flag=True,
    help="Do not log predictions to the lake (benchmarks only).",
)
@click.option(
    "--flush-seconds",
    default=2.0,
    show_default=True,
    help="How often spooled records are committed to Delta.",
)
@click.option(
    "--reload-seconds",
    default=5.0,
    show_default=True,
    help="How often the registry is checked for a newly promoted model.",
)
def serve(
    host: str,
    port: int,
    model_path: str | None,
    insecure: bool,
    project: Path,
    env: str | None,
    lake_root: str | None,
    no_log: bool,
    flush_seconds: float,
    reload_seconds: float,
) -> None:
    """Serve the promoted model over HTTP (FastAPI on uvicorn).

    Every prediction and its query image is spooled durably, then written to
    the lake's `predictions` table; feedback goes to `feedback`. The token
    comes from EDGELOOP_API_TOKEN or conf/local/credentials.yml
    (edgeloop_api: {token: ...}); requests send `Authorization: Bearer <token>`.

    \b
    Endpoints: POST /v1/predict?mask_format=png|ls_rle (multipart field `file`),
    POST /v1/feedback, GET /healthz, GET /v1/model, GET /metrics.
    """
    import logging

    import uvicorn

    from edgeloop.server import ServeConfig, ServeError, create_app, load_token

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    project = project.resolve()
    globals_, params = project_config(project, env)
    root = lake_root or globals_.get("lake_root", "data/lake")
    if not Path(root).is_absolute() and "://" not in root:
        root = str(project / root)
    token = load_token(project)
    tags = params.get("slicing", {}).get("condition_tags")
    config = ServeConfig(
        lake_root=root,
        token=token,
        insecure=insecure,
        model_path=model_path,
        log_predictions=not no_log,
        flush_seconds=flush_seconds,
        reload_seconds=reload_seconds,
        condition_tags=tuple(tags) if tags is not None else None,
    )
    try:
        app = create_app(config)
    except ServeError as err:
        raise click.ClickException(str(err)) from err
    if token is None:
        click.echo("WARNING: --insecure: the API accepts requests without a token")
    click.echo(f"lake: {root}")
    uvicorn.run(app, host=host, port=port, log_level="info")


if __name__ == "__main__":
    main()


@main.command("simulate")
@click.option(
    "--dataset",
    type=click.Choice(["synthetic", "camvid"]),
    default="synthetic",
    show_default=True,
    help="The data the loop runs on.",
)
@click.option(
    "--strategy",
    type=click.Choice(["random", "entropy", "hitl", "full"]),
    default="hitl",
    show_default=True,
    help="acquisition.strategy for every iteration; `full` labels the whole pool "
    "in one iteration (the full-data reference, same recipe).",
)
@click.option("--iterations", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--budget",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Masks added per iteration (acquisition.budget).",
)
@click.option(
    "--seeds",
    default="0",
    show_default=True,
    help="Comma-separated seeds (training, acquisition and review sampling).",
)
@click.option(
    "--env",
    type=click.Choice(["ci", "bench", "local", "camvid"]),
    default=None,
    help="Kedro environment: ci is tiny (64 px, 60-image pool), bench the "
    "label-efficiency benchmark's (64 px, 400-image pool), local the default "
    "(128 px, 2000-image pool), camvid CamVid's.  [default: local, or camvid "
    "with --dataset camvid]",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data/09_simulation"),
    show_default=True,
    help="Runs, curves, tables and every iteration's model card go here. "
    "Re-running with the same --out resumes; other strategies add to the report.",
)
@click.option(
    "--project",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="The Kedro project whose conf is simulated.",
)
@click.option(
    "--params",
    "extra",
    default=None,
    help="Extra runtime params for every session, as JSON, e.g. "
    '\'{"training": {"refit_epochs": 4}}\'.',
)
@click.option(
    "--camvid-root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The CamVid folder (train.txt, val.txt, test.txt and the frames) for "
    "--dataset camvid.  [default: the camvid env's, ../shared/data/camvid]",
)
def simulate_cmd(
    dataset: str,
    strategy: str,
    iterations: int,
    budget: int,
    seeds: str,
    env: str | None,
    out: Path,
    project: Path,
    extra: str | None,
    camvid_root: Path | None,
) -> None:
    """Runs the loop end to end with a simulated annotator.

    Each iteration runs real Kedro sessions (`discover`, then `train_iteration`
    with iteration=k+1); between them a simulated annotator answers the review
    and labeling tasks from the truth, writing Label Studio export files that go
    through the same import path as people's. Writes curves.csv, summary.csv,
    forgetting.csv, learning_curves.png, slice_curves.png and cards/ to --out.

    With --dataset camvid, a share of CamVid's train frames is the labeled seed
    set, the rest the unlabeled pool (timestamps from frame order), and the
    official test frames the fixed evaluation set (simulation.camvid in
    conf/camvid/parameters_simulation.yml).
    """
    from edgeloop.simulate import SimulationPlan, simulate

    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
        extra_params = json.loads(extra) if extra else {}
    except ValueError as err:
        raise click.BadParameter(f"{err}") from err
    try:
        plan = SimulationPlan(
            project=project.resolve(),
            out=out.resolve(),
            dataset=dataset,
            strategy=strategy,
            iterations=iterations,
            budget=budget,
            seeds=seed_list,
            env=None if env in (None, "local") and dataset != "camvid" else env,
            extra_params=extra_params,
            camvid_root=camvid_root.resolve() if camvid_root else None,
        )
        report = simulate(plan, echo=click.echo)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(
        f"{report['records']} records; forgetting events: "
        f"{report['forgetting_events']}; report in {plan.out}"
    )
    summary = out / "summary.csv"
    if summary.is_file():
        import pandas as pd

        click.echo(pd.read_csv(summary).to_string(index=False))
