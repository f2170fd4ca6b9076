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
