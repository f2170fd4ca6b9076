"""The annotation export and import as Kedro runs, with export files on disk."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import register_tiny_model
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from edgeloop.annotation import ExportRejected
from edgeloop.imaging import decode_mask
from edgeloop.labelstudio import brush_results
from edgeloop.lake import Lake

NAMES = ["background", "fighter_jet", "airliner", "light_aircraft"]
EXPORTS = Path("data/01_raw/annotation_exports")


def _run(names, nodes=None, **params) -> None:
    bootstrap_project(Path.cwd())
    with KedroSession.create(env="ci", runtime_params=params or None) as session:
        session.run(pipeline_names=names, node_names=nodes)


def _truth() -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(Path("data/01_raw/synthetic/stream/images").glob("*.png")):
        mask = Path("data/01_raw/truth/stream/masks") / path.name
        out[hashlib.sha256(path.read_bytes()).hexdigest()] = decode_mask(
            mask.read_bytes()
        )
    return out


def _answered(tasks: list[dict], truth: dict[str, np.ndarray]) -> list[dict]:
    """Label Studio's JSON export of `tasks`, each answered with its truth mask."""
    out = []
    for i, task in enumerate(tasks):
        mask = truth[task["data"]["image_id"]]
        started = task["predictions"][0]
        out.append(
            task
            | {
                "id": 700 + i,
                "annotations": [
                    {
                        "id": 900 + i,
                        "completed_by": {"id": 2, "email": "ann@example.com"},
                        "result": brush_results(
                            mask, range(4), NAMES, region_prefix=str(i)
                        ),
                        "prediction": started,
                        "was_cancelled": False,
                        "created_at": "2026-11-28T10:00:00Z",
                        "updated_at": "2026-11-28T10:00:00Z",
                    }
                ],
            }
        )
    return out


@pytest.mark.slow
def test_export_then_import_from_files_and_malicious_files_write_nothing(project):
    _run(["ingest"])
    lake = Lake("data/lake")
    register_tiny_model(lake)
    _run(
        ["discover"],
        acquisition={"budget": 4},
        pseudo_labelling={"methods": ["own_model", "slic"]},
    )
    tasks = json.loads(
        Path("data/07_model_output/iter_0/annotation_tasks.json").read_text()
    )
    config = Path("data/07_model_output/iter_0/annotation_labeling_config.xml")
    assert len(tasks) == 4 and "<BrushLabels" in config.read_text()
    scores = [max(p["score"] for p in t["predictions"]) for t in tasks]
    assert scores == sorted(scores)  # the doubtful first
    prelabels = Path("data/07_model_output/iter_0/prelabels.parquet")
    assert prelabels.is_file()

    export = _answered(tasks, _truth())
    EXPORTS.mkdir(parents=True)
    evil = json.loads(json.dumps(export[:1]))
    evil[0]["data"]["image"] = "/data/local-files/?d=../../../etc/passwd"
    (EXPORTS / "a_good.json").write_text(json.dumps(export))
    (EXPORTS / "b_evil.json").write_text(json.dumps(evil))
    versions = {t: lake.version(t) for t in ("images", "labels", "edge_cases")}
    with pytest.raises(ExportRejected, match=r"b_evil\.json: rejected whole"):
        _run(["annotation"], ["import_annotations"], iteration=1)
    assert {t: lake.version(t) for t in versions} == versions  # nothing written

    (EXPORTS / "b_evil.json").unlink()
    _run(["annotation"], ["import_annotations"], iteration=1)
    report = json.loads(
        Path("data/08_reporting/iter_1/annotation_import_report.json").read_text()
    )
    assert report["labels"] == 4 and report["images_added"] == 4
    labels = lake.read("labels")
    human = labels[labels["origin"] == "human"]
    assert len(human) == 4 and set(human["iteration"]) == {1}
    # Effort: the imported truth against the pre-annotation each task started from.
    effort = report["effort"]
    assert sum(e["n"] for e in effort.values()) == 4
    assert all(0 < e["mean_changed_frac"] < 1 for e in effort.values())
    # The exports stay in the folder: the next iteration's import reads them
    # again and adds nothing (the labels keep the iteration they came in).
    _run(["annotation"], ["import_annotations"], iteration=2)
    again = json.loads(
        Path("data/08_reporting/iter_2/annotation_import_report.json").read_text()
    )
    assert again["labels"] == 0 and again["already_imported"] == 4
    labels = lake.read("labels")
    assert labels[labels["origin"] == "human"]["iteration"].tolist() == [1] * 4
