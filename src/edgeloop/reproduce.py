"""`edgeloop reproduce`: re-run an iteration from its model card and compare.

The card lists the config snapshot, the Kedro environment, the runtime
parameters and the Delta versions of the lake tables it read. Reproduction
copies the project's configuration and the lake into a scratch folder, pins
the lake tables to those versions (Delta time travel), re-runs
`train_iteration` there, and compares the new card with the old one field by
field, `volatile` excluded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kedro.config import OmegaConfigLoader

from edgeloop.card import strip_volatile

# Fields that name the run rather than describe the model.
IGNORED = ("reproducibility.runtime_params", "reproducibility.env")
# Datasets the original run loaded but a train_iteration re-run does not (e.g.
# ingest's inputs) are not compared; those both loaded are.
OPTIONAL = "reproducibility.datasets."


@dataclass(frozen=True)
class FieldDiff:
    path: str
    expected: Any
    got: Any


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yields (dotted.path, leaf) pairs of nested dicts and lists."""
    if isinstance(value, Mapping):
        for key in sorted(value):
            yield from flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value and isinstance(value[0], Mapping | list):
        for i, item in enumerate(value):
            yield from flatten(item, f"{prefix}[{i}]")
    else:
        yield prefix, value


def compare_cards(
    expected: Mapping[str, Any], got: Mapping[str, Any]
) -> list[FieldDiff]:
    """Leaf-by-leaf differences of two cards, `volatile` excluded."""
    a = dict(flatten(strip_volatile(expected)))
    b = dict(flatten(strip_volatile(got)))
    diffs = []
    for path in sorted(a.keys() | b.keys()):
        if path.startswith(IGNORED):
            continue
        if path.startswith(OPTIONAL) and (path not in a or path not in b):
            continue
        if a.get(path, "<missing>") != b.get(path, "<missing>"):
            diffs.append(
                FieldDiff(path, a.get(path, "<missing>"), b.get(path, "<missing>"))
            )
    return diffs


def _lake_root(project: Path, env: str) -> Path:
    loader = OmegaConfigLoader(
        conf_source=str(project / "conf"), base_env="base", default_run_env=env
    )
    root = Path(loader["globals"].get("lake_root", "data/lake"))
    return root if root.is_absolute() else project / root


def prepare_workdir(card: Mapping[str, Any], project: Path, workdir: Path) -> str:
    """Lays out a scratch project; returns the Kedro env to run it with."""
    repro = card["reproducibility"]
    env = repro.get("env") or "local"
    if workdir.exists() and any(workdir.iterdir()):
        raise ValueError(f"workdir {workdir} is not empty")
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(project / "pyproject.toml", workdir / "pyproject.toml")
    (workdir / "src").mkdir()
    (workdir / ".telemetry").write_text("consent: false\n")
    conf = workdir / "conf"
    shutil.copytree(project / "conf" / "base", conf / "base")
    (conf / "local").mkdir()
    # One env holding the original env's catalog and globals, and the card's
    # parameters: the config snapshot wins over today's parameter files.
    target = conf / "reproduce"
    target.mkdir()
    env_dir = project / "conf" / env
    if env not in ("base", "local") and env_dir.is_dir():
        for path in env_dir.iterdir():
            if path.is_file() and not path.name.startswith("parameters"):
                shutil.copy(path, target / path.name)
    with (target / "parameters.yml").open("w") as fh:
        yaml.safe_dump(repro["config"], fh, sort_keys=True)
    src_lake = _lake_root(project, env)
    dst_lake = _lake_root(workdir, "reproduce")
    if not src_lake.is_dir():
        raise ValueError(f"the lake {src_lake} the card was built from is missing")
    shutil.copytree(src_lake, dst_lake)
    return "reproduce"


def run_iteration(card: Mapping[str, Any], workdir: Path, env: str) -> Path:
    """Runs `train_iteration` in the scratch project; returns the new card path."""
    repro = card["reproducibility"]
    iteration = int(card["model"]["iteration"])
    params = {"iteration": iteration}
    for table, version in (repro.get("lake_versions") or {}).items():
        if version is not None:
            params[f"lake_version_{table}"] = version
    args = ",".join(f"{k}={v}" for k, v in params.items())
    cmd = [
        sys.executable,
        "-m",
        "kedro",
        "run",
        "--env",
        env,
        "--pipelines",
        "train_iteration",
        "--params",
        args,
    ]
    run_env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    result = subprocess.run(
        cmd, cwd=workdir, env=run_env, capture_output=True, text=True
    )
    (workdir / "reproduce.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-2000:]
        raise RuntimeError(
            f"the re-run failed (log: {workdir / 'reproduce.log'}):\n{tail}"
        )
    return workdir / "data" / "08_reporting" / f"iter_{iteration}" / "model_card.json"


def reproduce(
    card_path: Path, *, project: Path, workdir: Path
) -> tuple[dict, list[FieldDiff]]:
    card = json.loads(Path(card_path).read_text())
    env = prepare_workdir(card, project, workdir)
    new_card = json.loads(run_iteration(card, workdir, env).read_text())
    return new_card, compare_cards(card, new_card)
