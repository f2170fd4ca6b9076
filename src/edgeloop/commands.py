"""The `edgeloop` command group: what is not a pipeline (`kedro` runs those)."""

from __future__ import annotations

import os

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
