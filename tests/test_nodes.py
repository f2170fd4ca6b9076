"""Unit tests of the Kedro nodes, and the slicing pipeline on an in-memory catalog."""

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from helpers import make_folder_source
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.pandas import ParquetDataset

from edgeloop.pipelines.ingest.nodes import generate_synthetic_scenes, ingest_images
from edgeloop.pipelines.slicing.nodes import resolve_labels, summarise_slicing
from edgeloop.pipelines.slicing.pipeline import create_pipeline as slicing_pipeline
from edgeloop.review_tasks import update_edge_cases
from edgeloop.synthetic import RARE_CONDITIONS

CLASSES = {
    "names": ["background", "fighter_jet", "airliner", "light_aircraft"],
    "palette": [[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]],
    "ignore_index": 255,
}
SYNTHETIC = {"seed": 1, "size": 32, "counts": {"collected": 4, "eval": 3, "stream": 5}}


def test_generate_keeps_stream_truth_apart():
    scenes, truth = generate_synthetic_scenes(
        SYNTHETIC, {"source": {"kind": "synthetic"}}
    )
    assert {k: len(v) for k, v in scenes.items()} == {
        "collected": 4,
        "eval": 3,
        "stream": 5,
    }
    assert all(
        item.mask is None and "tags" not in item.meta for item in scenes["stream"]
    )
    assert all(item.meta["captured_at"] is not None for item in scenes["stream"])
    assert [item.stem for item in truth["stream"]] == [i.stem for i in scenes["stream"]]
    assert all(item.image is None and item.mask is not None for item in truth["stream"])
    assert {item.meta["split"] for item in scenes["eval"]} == {"test"}


def test_generate_passes_the_stream_rare_rate_on():
    many = {**SYNTHETIC, "counts": {"collected": 0, "eval": 0, "stream": 200}}
    rare = {"dusk", "night", "glare", "haze", "cloud"}

    def rare_share(params):
        _, truth = generate_synthetic_scenes(params, {"source": {"kind": "synthetic"}})
        items = truth["stream"]
        return sum(bool(rare & set(i.meta["tags"])) for i in items) / len(items)

    assert rare_share({**many, "stream_rare_rate": 0.0}) == 0.0
    assert rare_share(many) > 0.1  # the default 0.06 of each condition


def test_generate_skips_for_other_sources():
    assert generate_synthetic_scenes(SYNTHETIC, {"source": {"kind": "camvid"}}) == (
        {},
        {},
    )


def test_ingest_images_node_reads_a_folder_source(tmp_path):
    root = make_folder_source(tmp_path / "src", n=3, tags=["dusk"])
    params = {"source": {"kind": "folders", "root": str(root), "name": "mine"}}
    images, labels, quarantine, report = ingest_images({}, params, CLASSES, 2)
    assert len(images) == 3 and quarantine.empty
    assert {r.iteration for r in labels.records} == {2}
    assert {r.annotator for r in labels.records} == {"source:mine"}
    assert report["good"] == 3 and report["kind"] == "folders"
    with pytest.raises(ValueError, match="not one of"):
        ingest_images({}, {"source": {"kind": "s3", "root": "x"}}, CLASSES, 0)


def _lake_labels():
    t = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [("a", "seed", 0), ("a", "human", 1), ("b", "human", 1), ("c", "human", 3)]
    return pd.DataFrame(
        [
            {
                "label_id": f"l{i}",
                "image_id": img,
                "origin": o,
                "iteration": it,
                "created_at": t,
                "class_pixels": [10, 2, 0, 0],
                "object_fracs": [0.2],
                "condition_tags": ["day"],
            }
            for i, (img, o, it) in enumerate(rows)
        ]
    )


def test_resolve_labels_records_first_iteration():
    resolved = resolve_labels(_lake_labels(), 1).set_index("image_id")
    assert resolved.loc["a", ["label_id", "first_iteration"]].tolist() == ["l1", 0]
    assert resolved.loc["b", "first_iteration"] == 1
    assert "c" not in resolved.index


def test_summary_records_delta_versions():
    images = pd.DataFrame({"image_id": ["a"]})
    images.attrs["delta_version"] = 4
    labels = _lake_labels()
    labels.attrs["delta_version"] = 7
    slices = pd.DataFrame({"image_id": ["a"], "slice": ["all"]})
    splits = pd.DataFrame(
        {"image_id": ["a"], "split": ["train"], "split_source": ["hash"]}
    )
    summary = summarise_slicing(images, labels, slices, splits, 3)
    assert summary["lake_versions"] == {"images": 4, "labels": 7}
    assert summary["slices"] == {"all": 1}


def test_slicing_pipeline_on_an_in_memory_catalog(tmp_path):
    import torch

    from edgeloop.lake import Lake
    from edgeloop.registry import ModelRecord, TrainedModel, register_model

    images = pd.DataFrame({"image_id": ["a", "b", "c"], "split": ["test", None, None]})
    # Iteration 0's model was rejected for regressing on cond:day.
    lake = Lake(str(tmp_path / "lake"))
    rejected = TrainedModel(
        {"w": torch.zeros(1)}, {"iteration": 0, "architecture": "unet_resnet18"}
    )
    gate = {"comparisons": [{"slice": "cond:day", "regressed": True}]}
    register_model(
        lake,
        ModelRecord(rejected, {"gate": gate}, "miou", 0.1, {}, False, "regressed"),
    )
    catalog = DataCatalog(
        {
            "lake": MemoryDataset(lake, copy_mode="assign"),
            "lake_models": MemoryDataset(lake.read("models")),
            "lake_images": MemoryDataset(images),
            "lake_labels": MemoryDataset(_lake_labels()),
            "params:iteration": MemoryDataset(1),
            "params:classes": MemoryDataset(CLASSES),
            # b is first labelled at iteration 1: new data, all to train.
            "params:slicing": MemoryDataset(
                {"splits": {"new_data_ratios": {"train": 1.0}}}
            ),
            # A bug tagged `day` makes the slice edge:day.
            "lake_edge_cases": MemoryDataset(
                update_edge_cases(
                    None,
                    pd.DataFrame(
                        {
                            "request_id": ["r1"],
                            "image_id": ["zz"],
                            "verdict": ["bug"],
                            "tags": [["day"]],
                            "ts": [pd.Timestamp("2026-11-28", tz="UTC")],
                        }
                    ),
                    iteration=0,
                    now=pd.Timestamp("2026-11-28", tz="UTC"),
                )
            ),
        }
    )
    # The runner frees memory datasets once consumed: keep the ones we check.
    kept = ("slices", "splits", "sampling_weights")
    for name in kept:
        catalog[name] = ParquetDataset(filepath=str(tmp_path / f"{name}.parquet"))
    result = SequentialRunner().run(slicing_pipeline(), catalog)
    splits = catalog.load("splits").set_index("image_id")
    assert splits.loc["a", "split"] == "test"
    assert set(splits.index) == {"a", "b"}
    slices = catalog.load("slices")
    assert set(slices.loc[slices["image_id"] == "a", "slice"]) == {
        "all",
        "class:background",
        "class:fighter_jet",
        "cond:day",
        "edge:day",
        "iter:0",
        "size:large",
    }
    weights = catalog.load("sampling_weights").set_index("image_id")
    train = sorted(splits.index[splits["split"] == "train"])
    assert sorted(weights.index) == train
    # Every labelled image is a day image: the rejection boosts each one.
    assert set(slices.loc[slices["slice"] == "cond:day", "image_id"]) >= set(train)
    assert train == ["b"] and set(weights["boost"]) == {2.0}
    assert set(weights["boosted_by"]) == {"cond:day"}
    summary = result["slicing_summary"].load()
    assert summary["splits"] == splits["split"].value_counts().sort_index().to_dict()


@pytest.mark.parametrize(
    ("decay", "gamma"), [("stretch", 0.9 ** (6 / 45)), ("keep", 0.9), ("bogus", None)]
)
def test_refit_decay_keeps_or_stretches_the_trial_gamma(monkeypatch, decay, gamma):
    import torch

    from edgeloop.pipelines.training import nodes
    from edgeloop.training import FitResult, ModelInput

    seen = {}

    def fake_fit_soup(config, data, *, ingredients, **kwargs):
        seen["config"], seen["ingredients"] = config, ingredients
        return FitResult(
            model=torch.nn.Conv2d(3, 2, 1),
            config=config,
            curves=[],
            best_epoch=0,
            best_score=0.5,
            epochs_run=config.epochs,
            stopped_early=False,
            policy="exponential_lr",
            n_params=8,
            weights_source="random",
            seconds=0.0,
            extra={"soup": {"ingredients": ingredients}} if ingredients > 1 else {},
        )

    monkeypatch.setattr(nodes, "fit_soup", fake_fit_soup)
    data = ModelInput(
        np.zeros((2, 8, 8, 3), np.uint8),
        np.zeros((2, 8, 8), np.uint8),
        np.array(["a", "b"]),
        np.array(["train", "val"]),
        np.ones(2),
        ("background", "plane"),
    )
    study = {"best_params": {"architecture": "unet_resnet18", "lr_gamma": 0.9}}
    training = {"epochs": 6, "refit_epochs": 45, "refit_decay": decay}
    promoted = nodes.PromotedModel(model=None, version=None)
    if gamma is None:
        with pytest.raises(ValueError, match="refit_decay must be"):
            nodes.refit_best_trial(data, promoted, study, training, 0)
        return
    model = nodes.refit_best_trial(data, promoted, study, training, 0)
    assert seen["config"].epochs == 45
    assert seen["config"].lr_gamma == pytest.approx(gamma)
    assert model.metadata["hyperparameters"]["lr_gamma"] == pytest.approx(gamma)
    assert seen["ingredients"] == 1 and "soup" not in model.metadata
    # training.refit_soup reaches fit_soup, and its record the model metadata.
    souped = nodes.refit_best_trial(
        data, promoted, study, {**training, "refit_soup": 3}, 0
    )
    assert seen["ingredients"] == 3
    assert souped.metadata["soup"] == {"ingredients": 3}


def test_the_card_says_which_slices_the_last_rejection_boosted():
    from edgeloop.pipelines.evaluation.nodes import _regression_boost

    weights = pd.DataFrame(
        {
            "image_id": list("abc"),
            "weight": [0.5, 1.25, 1.25],
            "boost": [1.0, 2.0, 2.0],
            "boosted_by": ["", "cond:night", "cond:night,edge:night"],
        }
    )
    assert _regression_boost(weights) == {
        "slices": ["cond:night", "edge:night"],
        "factor": 2.0,
        "train_images": 2,
    }
    assert _regression_boost(weights.assign(boost=1.0)) is None
    assert _regression_boost(weights.drop(columns="boost")) is None  # older runs
    assert _regression_boost(None) is None


def test_the_cards_object_breakdown_by_hand_and_its_bad_configs() -> None:
    from edgeloop.pipelines.evaluation.nodes import _object_breakdown

    names = ("background", "jet", "prop")
    matrix = np.array([[10, 2, 0], [1, 3, 2], [0, 1, 5]])
    out = _object_breakdown(matrix, names, ["jet", "prop"])
    assert out["classes"] == ["jet", "prop"]
    # Objects against the rest: tp 3+2+1+5 = 11, fp 2, fn 1.
    assert out["object_iou"] == pytest.approx(11 / 14)
    # Types right: [[10, 2, 0], [1, 5, 0], [0, 0, 6]].
    right = np.mean([10 / 13, 5 / 8, 6 / 6])
    assert out["miou_classes_right"] == pytest.approx(right)
    # No object classes, or every class an object: nothing to split.
    assert _object_breakdown(matrix, names, []) is None
    assert _object_breakdown(matrix, names, list(names)) is None
    with pytest.raises(ValueError, match=r"unknown classes \['car'\]"):
        _object_breakdown(matrix, names, ["jet", "car"])


def test_generate_passes_the_rare_look_on():
    many = {**SYNTHETIC, "counts": {"collected": 0, "eval": 30, "stream": 60}}
    source = {"source": {"kind": "synthetic"}}
    colour, truth = generate_synthetic_scenes(many, source)
    flat, _ = generate_synthetic_scenes({**many, "rare_look": "silhouette"}, source)
    rare = set(RARE_CONDITIONS)
    tags = {i.stem: set(i.meta["tags"]) for i in colour["eval"] + truth["stream"]}
    for kind in ("eval", "stream"):
        changed = {
            a.stem
            for a, b in zip(colour[kind], flat[kind], strict=True)
            if not np.array_equal(a.image, b.image)
        }
        assert changed, kind
        assert all(rare & tags[stem] for stem in changed), kind
