"""CamVid laid out for the simulation, and `edgeloop simulate --dataset camvid`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from helpers import write_png

from edgeloop.classmap import ClassMap
from edgeloop.imaging import decode_image, decode_mask
from edgeloop.lake import Lake
from edgeloop.simdata import CamvidSimConfig, frame_key, prepare_camvid
from edgeloop.simulate import (
    AnnotatorConfig,
    LabeledFolder,
    SimulatedAnnotator,
    SimulationPlan,
    copy_project,
)
from edgeloop.sources import SourceError

PREFIX = "/SegNet/CamVid/"
CAMVID_CM = ClassMap(
    names=tuple(f"c{i}" for i in range(11)),
    ids=tuple(range(11)),
    palette=tuple((i * 20, i * 10, i * 5) for i in range(11)),
)
# Two sequences in train (frame numbers out of order on purpose), as in CamVid.
TRAIN = [f"0006R0_f{n:05d}" for n in (930, 900, 960, 990, 1020)] + [
    f"0001TP_{n:06d}" for n in (6720, 6690, 6750, 6780, 6810, 6840, 6870, 6900, 6930,
                                6960, 6990, 7020, 7050, 7080, 7110)
]  # fmt: skip
VAL = [f"0016E5_{n:05d}" for n in (390, 420, 450, 480)]
TEST = [f"Seq05VD_f{n:05d}" for n in range(0, 180, 30)]


def make_camvid(root: Path, *, size=(36, 48), bad: str | None = None) -> Path:
    """A CamVid-shaped folder: list files with SegNet's prefix, 0..11 masks."""
    rng = np.random.default_rng(0)
    h, w = size
    for split, names in (("train", TRAIN), ("val", VAL), ("test", TEST)):
        lines = []
        for name in names:
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            mask = rng.integers(0, 12, (h, w), dtype=np.uint8)  # 11 = void
            if name == bad:
                mask[0, 0] = 12
            write_png(root / split / f"{name}.png", image)
            write_png(root / f"{split}annot" / f"{name}.png", mask)
            lines.append(f"{PREFIX}{split}/{name}.png {PREFIX}{split}annot/{name}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


SOURCE = {
    "list_files": {"train": "train.txt", "val": "val.txt", "test": "test.txt"},
    "strip_prefix": PREFIX,
    "value_map": {11: 255},
}


def test_frame_key_orders_camvid_names():
    assert frame_key("0001TP_006690") == ("0001TP", 6690)
    assert frame_key("Seq05VD_f00030") == ("Seq05VD", 30)
    with pytest.raises(ValueError, match="sequence"):
        frame_key("noframe")


def test_prepare_camvid_seed_pool_truth_and_eval(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    cfg = CamvidSimConfig(seed_frac=0.2, size=(24, 32), frame_interval_s=60)
    dest = tmp_path / "prep"
    prep = prepare_camvid(
        {**SOURCE, "root": str(root)}, CAMVID_CM, dest, seed=0, config=cfg,
        progress=False,
    )  # fmt: skip
    assert prep.counts == {"train_frames": 20, "seed": 4, "pool": 16, "val": 4,
                           "test": 6}  # fmt: skip
    seed_set = [
        Path(line.split()[0]).stem
        for line in (prep.root / "train.txt").read_text().splitlines()
    ]
    pool_meta = [
        json.loads(line)
        for line in (prep.pool / "metadata.jsonl").read_text().splitlines()
    ]
    pool = [r["stem"] for r in pool_meta]
    # The seed set and the pool split the train frames; the pool is not labeled.
    assert set(seed_set) | set(pool) == set(TRAIN) and not set(seed_set) & set(pool)
    assert not set(pool) & {Path(p).stem for p in (prep.root / "images").iterdir()}
    # Timestamps follow frame order (sequence, then frame number), 60 s apart,
    # and keep the seed frames' slots.
    order = sorted(TRAIN, key=frame_key)
    start = pd.Timestamp("2026-01-05T00:00:00Z")
    for rec in pool_meta:
        expected = start + pd.Timedelta(seconds=60 * order.index(rec["stem"]))
        assert pd.Timestamp(rec["captured_at"]) == expected
    assert pool == sorted(pool, key=frame_key)
    # Frames are resized; masks by nearest neighbour, void 11 -> 255.
    truth = LabeledFolder.from_folders(prep.pool / "images", prep.truth)
    assert len(truth) == 16
    some = truth.image_ids[0]
    assert truth.image(some).shape == (24, 32, 3) and truth.mask(some).shape == (24, 32)
    values = set(
        np.unique(np.concatenate([truth.mask(i).ravel() for i in truth.image_ids]))
    )
    assert 255 in values and 11 not in values and values <= {*range(11), 255}
    assert set(truth.tags.values()) == {("0001TP",), ("0006R0",)}
    # The eval set is the official test split, with sequence tags.
    evalset = LabeledFolder.from_folders(prep.eval / "images", prep.eval)
    assert sorted(evalset.stems.values()) == sorted(TEST)
    assert set(evalset.tags.values()) == {("Seq05VD",)}
    listed = (prep.root / "test.txt").read_text().split()
    assert len(listed) == 12 and listed[0].startswith("images/")
    # Runtime params point the camvid ingest and production at the layout.
    assert prep.runtime_params() == {
        "camvid_root": str(prep.root),
        "production": {"source": {"root": str(prep.pool)}},
    }
    # Prepared once: the same call reuses it; another seed picks another seed set.
    stamp = (dest / "manifest.json").stat().st_mtime_ns
    again = prepare_camvid(
        {**SOURCE, "root": str(root)}, CAMVID_CM, dest, seed=0, config=cfg,
        progress=False,
    )  # fmt: skip
    assert again.counts == prep.counts
    assert (dest / "manifest.json").stat().st_mtime_ns == stamp
    other = prepare_camvid(
        {**SOURCE, "root": str(root)}, CAMVID_CM, tmp_path / "prep1", seed=1,
        config=cfg, progress=False,
    )  # fmt: skip
    assert (other.root / "train.txt").read_text() != (
        prep.root / "train.txt"
    ).read_text()
    image = decode_image((prep.eval / "images" / f"{TEST[0]}.png").read_bytes())
    assert image.shape == (24, 32, 3)


def test_prepare_camvid_names_a_bad_frame_and_writes_nothing(tmp_path):
    root = make_camvid(tmp_path / "camvid", bad=TRAIN[3])
    dest = tmp_path / "prep"
    with pytest.raises(SourceError, match=rf"{TRAIN[3]}: mask values \[12\]"):
        prepare_camvid(
            {**SOURCE, "root": str(root)}, CAMVID_CM, dest, seed=0,
            config=CamvidSimConfig(), progress=False,
        )  # fmt: skip
    assert not dest.exists()
    with pytest.raises(SourceError, match="CamVid not found"):
        prepare_camvid(
            {**SOURCE, "root": str(tmp_path / "nowhere")}, CAMVID_CM, dest, seed=0,
            config=CamvidSimConfig(), progress=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="seed_frac"):
        CamvidSimConfig(seed_frac=1.5)
    with pytest.raises(ValueError, match="unknown simulation.camvid"):
        CamvidSimConfig.from_params({"sise": [10, 10]})
    with pytest.raises(ValueError, match="camvid environment"):
        SimulationPlan(project=tmp_path, out=tmp_path, dataset="camvid", env="ci")
    assert (
        SimulationPlan(project=tmp_path, out=tmp_path, dataset="camvid").env == "camvid"
    )
    with pytest.raises(ValueError, match="with --dataset camvid"):
        SimulationPlan(project=tmp_path, out=tmp_path, env="camvid")


def test_relative_reviewer_threshold_flags_the_worse_part_of_a_batch(tmp_path):
    """With tau_quantile, a weak model's batch is not all bugs."""
    from edgeloop.labelstudio import brush_results

    cm = ClassMap(names=("background", "a"), ids=(0, 1), palette=((0, 0, 0), (9, 9, 9)))
    rng = np.random.default_rng(0)
    truth = np.zeros((20, 20), np.uint8)
    truth[5:15, 5:15] = 1
    tasks = []
    for i in range(4):
        write_png(tmp_path / "images" / f"s{i}.png",
                  rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))  # fmt: skip
        write_png(tmp_path / "truth" / "masks" / f"s{i}.png", truth)
    folder = LabeledFolder.from_folders(tmp_path / "images", tmp_path / "truth")
    # Worse and worse predictions, in the folder's order.
    for image_id, shift in zip(folder.image_ids, (0, 2, 4, 6), strict=True):
        pred = np.roll(truth, shift + 3, axis=1)
        tasks.append({
            "data": {"image": f"/x/{image_id}.png", "image_id": image_id},
            "predictions": [{"model_version": "m", "result": brush_results(
                pred, [0, 1], ["background", "a"], region_prefix=image_id)}],
        })  # fmt: skip
    strict = AnnotatorConfig(tau=0.9)
    absolute = SimulatedAnnotator(folder, cm, vocabulary=[], config=strict)
    assert absolute.review(tasks, iteration=0)[1]["bugs"] == 4  # all under 0.9
    relative = SimulatedAnnotator(
        folder, cm, vocabulary=[], config=AnnotatorConfig(tau=0.9, tau_quantile=0.5)
    )
    export, stats = relative.review(tasks, iteration=0)
    verdicts = [t["annotations"][0]["result"][0]["value"]["choices"][0] for t in export]
    assert verdicts == ["correct", "correct", "bug", "bug"] and stats["bugs"] == 2
    with pytest.raises(ValueError, match="tau_quantile"):
        AnnotatorConfig.from_params({"tau_quantile": 1.0})


@pytest.mark.slow
def test_simulate_camvid_runs_the_loop_on_camvid_frames(tmp_path):
    """`edgeloop simulate --dataset camvid` end to end on a CamVid-shaped folder."""
    root = make_camvid(tmp_path / "camvid")
    project = copy_project(REPO, tmp_path / "project")
    out = tmp_path / "out"
    extra = {
        "simulation": {"camvid": {"seed_frac": 0.2, "size": [24, 32]}},
        "training": {"input_size": [24, 32], "epochs": 1, "refit_epochs": 2,
                     "batch_size": 4, "space": {"batch_size": [4]}},
    }  # fmt: skip
    cmd = [
        str(Path(sys.executable).with_name("edgeloop")), "simulate",
        "--dataset", "camvid", "--camvid-root", str(root), "--strategy", "hitl",
        "--iterations", "1", "--budget", "3", "--project", str(project),
        "--out", str(out), "--params", json.dumps(extra),
    ]  # fmt: skip
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    run = out / "runs" / "hitl-seed0"
    state = json.loads((run / "state.json").read_text())
    assert [r["masks"] for r in state["records"]] == [0, 3]
    assert [r["pool"] for r in state["records"]] == [16, 16]
    # Scored on the official test frames (6), never on the pool.
    assert state["records"][-1]["slices"]["all"]["n"] == 6
    assert "cond:Seq05VD" in state["records"][-1]["slices"]
    lake = Lake(str(run / "data" / "lake_camvid"))
    images = lake.read("images")
    # The ingest saw the seed set, val and test only; the pool came in through
    # production (330 frames on real CamVid), with frame-order timestamps.
    assert images.groupby("split").size().to_dict() == {"train": 4, "val": 4, "test": 6}
    predictions = lake.read("predictions")
    assert predictions["image_id"].nunique() == 16
    prep = out / "data" / "camvid-seed0"
    pool = LabeledFolder.from_folders(prep / "pool/images", prep / "truth")
    captured = {
        rec["stem"]: pd.Timestamp(rec["captured_at"])
        for rec in map(
            json.loads, (prep / "pool/metadata.jsonl").read_text().splitlines()
        )
    }
    for row in predictions.drop_duplicates("image_id").itertuples():
        assert pd.Timestamp(row.ts) == captured[pool.stems[row.image_id]]
    labels = lake.read("labels")
    human = labels[labels["origin"] == "human"]
    assert len(human) == 3 and set(human["iteration"]) == {1}
    for row in human.itertuples():
        np.testing.assert_array_equal(
            decode_mask(lake.get_blob(row.mask_blob)), pool.mask(row.image_id)
        )
    reviews = state["stats"][0]["review"]
    assert 0 < reviews["bugs"] < reviews["reviews"]  # tau_quantile 0.5 (camvid)
    assert (out / "cards/hitl/seed0/iter_1/model_card.json").is_file()
