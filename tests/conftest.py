"""Shared fixtures: a lake in a temp folder and a temp copy of the Kedro project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["KEDRO_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

from edgeloop.classmap import ClassMap  # noqa: E402
from edgeloop.lake import Lake  # noqa: E402
from edgeloop.simulate import copy_project  # noqa: E402

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
    root = copy_project(REPO, tmp_path / "project")
    monkeypatch.chdir(root)
    return root


def register_tiny_model(
    lake: Lake,
    *,
    iteration: int = 0,
    seed: int = 0,
    promoted: bool = True,
    class_names: tuple[str, ...] = (
        "background",
        "fighter_jet",
        "airliner",
        "light_aircraft",
    ),
    input_size: tuple[int, int] = (64, 64),
) -> str:
    """Registers a random-init LRASPP model in the lake; returns its version."""
    import torch

    from edgeloop.models import IMAGENET_MEAN, IMAGENET_STD, build_model
    from edgeloop.registry import ModelRecord, TrainedModel, register_model

    torch.manual_seed(seed)
    model, _ = build_model(
        "lraspp_mobilenet_v3_large", len(class_names), pretrained=False
    )
    meta = {
        "architecture": "lraspp_mobilenet_v3_large",
        "class_names": list(class_names),
        "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "input_size": list(input_size),
        "hyperparameters": {"input_norm": "dataset"},
        "iteration": iteration,
        "n_params": sum(p.numel() for p in model.parameters()),
        "seed": seed,
    }
    trained = TrainedModel(state_dict=model.state_dict(), metadata=meta)
    register_model(
        lake,
        ModelRecord(
            model=trained,
            card={"results": {"miou": 0.5, "metric": "miou", "score": 0.5}},
            metric="miou",
            score=0.5,
            slice_scores={},
            promoted=promoted,
            reason="registered by a test",
        ),
    )
    return trained.version
