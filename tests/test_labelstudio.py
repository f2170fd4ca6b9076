"""The labeling round trip with a real Label Studio 1.23.2 server.

`make test` builds Label Studio in its own virtual env (`.venv-ls`; its
dependencies clash with ours) and passes its path in EDGELOOP_LABEL_STUDIO.
This test starts it on 127.0.0.1 with SQLite and a legacy API token; the
project pushes the tasks, the test submits ground-truth masks through the SDK
as the annotators, and `train_iteration` pulls the export, imports it and trains.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import register_tiny_model
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from edgeloop import labelstudio, lsrle
from edgeloop.imaging import decode_mask
from edgeloop.lake import Lake

REPO = Path(__file__).resolve().parents[1]
TOKEN = "edgeloop-test-token-0123456789"
TITLE = "edgeloop labeling"
REVIEW_TITLE = "edgeloop review"


def _label_studio_bin() -> Path | None:
    env = os.environ.get("EDGELOOP_LABEL_STUDIO")
    path = Path(env) if env else REPO / ".venv-ls" / "bin" / "label-studio"
    return path if path.is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def label_studio(tmp_path: Path, project: Path):
    """A Label Studio server on 127.0.0.1 serving local files from the project."""
    binary = _label_studio_bin()
    if binary is None:
        message = (
            "Label Studio is not installed: run `make test` (it builds .venv-ls) "
            "or set EDGELOOP_LABEL_STUDIO to a label-studio executable"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    port = _free_port()
    env = {
        **os.environ,
        "LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(project),
        "DJANGO_DB": "sqlite",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
    }
    log = open(tmp_path / "label-studio.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(binary),
            "start",
            "--no-browser",
            "--data-dir",
            str(tmp_path / "ls-data"),
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(port),
            "--username",
            "admin@example.com",
            "--password",
            "edgeloop-pass-123",
            "--user-token",
            TOKEN,
            "--enable-legacy-api-token",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(
                    "Label Studio did not start:\n"
                    + (tmp_path / "label-studio.log").read_text()[-3000:]
                )
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _run(names: list[str], nodes: list[str] | None = None, **params) -> None:
    bootstrap_project(Path.cwd())
    with KedroSession.create(env="ci", runtime_params=params or None) as session:
        session.run(pipeline_names=names, node_names=nodes)


def _truth_by_image_id() -> dict[str, np.ndarray]:
    """The stream's ground truth, keyed by image_id (sha256 of the stored PNG)."""
    images = Path("data/01_raw/synthetic/stream/images")
    masks = Path("data/01_raw/truth/stream/masks")
    out = {}
    for path in sorted(images.glob("*.png")):
        image_id = hashlib.sha256(path.read_bytes()).hexdigest()
        out[image_id] = decode_mask((masks / path.name).read_bytes())
    return out


def _brush(mask: np.ndarray, class_names: list[str], rid: str) -> list[dict]:
    return labelstudio.brush_results(
        mask, list(range(len(class_names))), class_names, region_prefix=rid
    )


@pytest.mark.slow
def test_label_studio_round_trip_then_train(label_studio, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    _run(["ingest"])
    lake = Lake("data/lake")
    register_tiny_model(lake)
    _run(
        ["discover"],
        acquisition={"budget": 6},
        pseudo_labelling={"methods": ["own_model", "slic"]},
        annotation={"push": {"enabled": True, "project_title": TITLE}},
        review={"push": {"enabled": True, "project_title": REVIEW_TITLE}},
    )
    pushed = json.loads(
        Path("data/08_reporting/iter_0/annotation_push_report.json").read_text()
    )
    assert pushed["pushed"] and pushed["tasks"] == 6

    ls = labelstudio.client(label_studio, TOKEN)
    project = next(p for p in ls.projects.list() if p.title == TITLE)
    tasks = list(ls.tasks.list(project=project.id, fields="all"))
    assert len(tasks) == 6
    # Every task carries the pre-annotations of both methods, in brush RLE.
    assert all(len(t.predictions) == 2 for t in tasks)
    # ... and Label Studio serves its image (it serves local files only under a
    # local-files storage of the project: without one, every image is a 404).
    _assert_serves_lake_images(label_studio, tasks, lake)
    storage_dir = str((Path("data/lake") / "blobs").resolve())
    assert pushed["local_storage"] == storage_dir
    # Pushing again reuses the project and its storage, and adds no task twice.
    again = labelstudio.push_tasks(
        ls,
        title=TITLE,
        label_config=project.label_config,
        tasks=json.loads(
            Path("data/07_model_output/iter_0/annotation_tasks.json").read_text()
        ),
        local_files_dir=storage_dir,
    )
    assert again["project_id"] == project.id
    assert (again["tasks"], again["already_there"]) == (0, 6)
    assert len(list(ls.tasks.list(project=project.id))) == 6
    storages = list(ls.import_storage.local.list(project=project.id))
    assert [s.path for s in storages] == [storage_dir]
    # A folder Label Studio may not serve is refused with its reason.
    with pytest.raises(ValueError, match="must be a subdirectory of LOCAL_FILES"):
        labelstudio.ensure_local_storage(ls, project.id, Path.cwd().parent)

    truth = _truth_by_image_id()
    names = ["background", "fighter_jet", "airliner", "light_aircraft"]
    submitted: dict[str, np.ndarray] = {}
    for i, task in enumerate(tasks):
        image_id = task.data["image_id"]
        mask = truth[image_id]
        if i == 0:  # a careless annotator leaves a generic region: quarantined
            result = _brush(mask, names, f"bad{i}")
            result[0]["value"]["brushlabels"] = ["segment?"]
            bad_id = image_id
        else:
            result = _brush(mask, names, f"ok{i}")
            submitted[image_id] = mask
        ls.annotations.create(id=task.id, result=result)

    labels_before = lake.version("labels")
    _run(
        ["train_iteration"],
        iteration=1,
        annotation={
            "import": {"from_label_studio": {"enabled": True, "project_title": TITLE}}
        },
    )
    report = json.loads(
        Path("data/08_reporting/iter_1/annotation_import_report.json").read_text()
    )
    assert report["labels"] == 5 and report["quarantined"] == 1
    assert report["sources"] == [f"label-studio:{TITLE}"]
    quarantine = pd.read_csv("data/08_reporting/iter_1/annotation_quarantine.csv")
    assert "generic label 'segment?'" in quarantine.loc[0, "reason"]

    # The registry holds exactly the submitted masks, pixel for pixel.
    assert lake.version("labels") == labels_before + 1
    labels = lake.read("labels")
    human = labels[(labels["origin"] == "human") & (labels["iteration"] == 1)]
    assert sorted(human["image_id"]) == sorted(submitted)
    assert bad_id not in set(human["image_id"])
    assert set(human["annotator"]) == {"admin@example.com"}  # resolved from the id
    for row in human.itertuples():
        np.testing.assert_array_equal(
            decode_mask(lake.get_blob(row.mask_blob)), submitted[row.image_id]
        )
    # ... the production images joined `images`, and iteration 1 trained on them.
    assert set(submitted) <= set(lake.read("images")["image_id"])
    card = json.loads(
        next(Path("data/08_reporting/iter_1").glob("model_card*.json")).read_text()
    )
    assert card["labeling"]["labels"] == 5
    effort = card["labeling"]["effort"]
    assert set(effort) <= {"own_model", "slic", "unknown"} and effort
    assert all(0 <= e["mean_changed_frac"] <= 1 for e in effort.values())

    # Re-importing the same export adds nothing.
    _run(
        ["annotation"],
        ["import_annotations"],
        iteration=1,
        annotation={
            "import": {"from_label_studio": {"enabled": True, "project_title": TITLE}}
        },
    )
    assert lake.version("labels") == labels_before + 1

    _review_round_trip(ls, label_studio, lake)


def _assert_serves_lake_images(url: str, tasks: list, lake: Lake) -> None:
    """Label Studio serves each task's image, byte for byte the lake's blob."""
    blobs = {r.image_id: r.blob_uri for r in lake.read("images").itertuples()}
    blobs |= {
        r.image_id: r.image_blob
        for r in lake.read(
            "predictions", columns=["image_id", "image_blob"]
        ).itertuples()
    }
    auth = {"Authorization": f"Token {TOKEN}"}
    for task in tasks:
        got = httpx.get(url + task.data["image"], headers=auth, timeout=30)
        assert got.status_code == 200, (task.data["image"], got.status_code)
        assert got.content == lake.get_blob(blobs[task.data["image_id"]])


def _review_round_trip(ls, url: str, lake: Lake) -> None:
    """The review tasks `discover` pushed: a verdict comes back as a bug."""
    review_tasks = json.loads(
        Path("data/07_model_output/iter_0/review_tasks.json").read_text()
    )
    report = json.loads(
        Path("data/08_reporting/iter_0/review_push_report.json").read_text()
    )
    assert report["pushed"] and report["tasks"] == len(review_tasks) > 0
    project = next(p for p in ls.projects.list() if p.title == REVIEW_TITLE)
    assert report["project_id"] == project.id
    tasks = list(ls.tasks.list(project=project.id, fields="all"))
    assert len(tasks) == len(review_tasks)
    task = tasks[0]
    _assert_serves_lake_images(url, [task], lake)
    config = ET.fromstring(
        Path("data/07_model_output/iter_0/review_labeling_config.xml").read_text()
    )
    tag = config.find("./Choices[@name='condition']/Choice").get("value")
    ls.annotations.create(
        id=task.id,
        result=[
            {
                "from_name": name,
                "to_name": "image",
                "type": "choices",
                "value": {"choices": [value]},
            }
            for name, value in (("verdict", "bug"), ("condition", tag))
        ],
    )
    pull = {"from_label_studio": {"enabled": True, "project_title": REVIEW_TITLE}}
    for _ in range(2):  # the second import adds nothing
        _run(
            ["review"], ["import_review_verdicts"], iteration=1, review={"import": pull}
        )
    imported = json.loads(
        Path("data/08_reporting/iter_1/review_import_report.json").read_text()
    )
    assert imported["sources"] == [f"label-studio:{REVIEW_TITLE}"]
    verdicts = lake.read("review_verdicts")
    assert len(verdicts) == 1
    assert verdicts.loc[0, "verdict"] == "bug"
    assert verdicts.loc[0, "request_id"] == task.data["request_id"]
    bugs = lake.read("edge_cases")
    assert list(bugs["tag"].unique()) == [tag]
    assert set(bugs["status"]) == {"open"}


def test_rle_of_the_sdk_matches_ours():
    """The brush RLE the test submits is what Label Studio's own codec decodes."""
    from label_studio_sdk.converter.brush import decode_rle

    mask = np.zeros((5, 7), np.uint8)
    mask[1:4, 2:6] = 1
    rle = lsrle.encode(mask == 1)
    flat = decode_rle(rle).reshape(5, 7, 4)[..., 3]
    np.testing.assert_array_equal(flat > 0, mask == 1)
