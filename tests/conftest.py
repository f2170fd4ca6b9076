"""Shared fixtures: a lake in a temp folder and a temp copy of the Kedro project."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ["KEDRO_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

from edgeloop.classmap import ClassMap  # noqa: E402
from edgeloop.lake import Lake  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CAMVID = (REPO.parent / "shared" / "data" / "camvid").resolve()


@pytest.fixture
def class_map() -> ClassMap:
    return ClassMap(
        names=("background", "fighter_jet", "airliner", "light_aircraft"),
        ids=(0, 1, 2, 3),
        palette=((0, 0, 0), (220, 20, 60), (0, 114, 189), (237, 177, 32)),
    )


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(str(tmp_path / "lake"))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project's configuration in a temp folder, as the cwd."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(
        REPO / "conf", root / "conf", ignore=shutil.ignore_patterns("local")
    )
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()  # the package itself comes from the installed project
    (root / ".telemetry").write_text("consent: false\n")
    monkeypatch.chdir(root)
    return root
