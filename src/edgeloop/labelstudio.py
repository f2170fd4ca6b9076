"""Label Studio plumbing shared by the review and the annotation round trips.

- Building blocks for tasks and labeling configs (`hex_colour`, `check_names`,
  `class_brush`, `short_id`, `brush_results`).
- Reading a JSON export safely: `load_export` checks the file's shape,
  `check_image_url` rejects URLs that could reach outside the allowed roots, and
  `latest_annotation` picks the annotation that counts; `submitted_annotation`
  checks it and `task_rows` sets aside the tasks that cannot be used.
- `client`, `push_if_enabled` / `push_tasks` and `collect_exports` /
  `fetch_export`: an optional direct push of tasks, and pull of exports, through
  `label-studio-sdk`, with the URL and token from `conf/local/credentials.yml`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import numpy as np
import pandas as pd

from edgeloop import lsrle

log = logging.getLogger(__name__)

MAX_TASKS = 100_000
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


class ExportRejected(ValueError):
    """A Label Studio export is malformed or malicious; nothing of it is used."""


def hex_colour(colour: Any, *, name: str) -> str:
    if isinstance(colour, str) and re.fullmatch(r"#[0-9a-fA-F]{6}", colour):
        return colour.lower()
    try:
        rgb = [int(c) for c in colour]
    except (TypeError, ValueError):
        rgb = []
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"{name} must be an RGB triple or '#rrggbb', got {colour!r}")
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def check_names(names: Sequence[str], *, name: str) -> list[str]:
    if isinstance(names, str):
        raise ValueError(f"{name} must be a sequence of strings, got a string")
    out = list(names)
    bad = [n for n in out if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"{name} must be non-empty strings, got {bad}")
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise ValueError(f"{name} has duplicates: {dup}")
    return out


def class_brush(
    view: ET.Element,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int] | str],
    *,
    name: str,
    to_name: str,
) -> ET.Element:
    """Appends a BrushLabels control with one label per class to `view`.

    The labels are the class names in class-id order, each in its palette
    colour. Returns the control, so callers can add labels of their own.

    Raises:
        ValueError: empty or duplicate names, a bad colour, or a palette that
            does not have one colour per class.
    """
    names = check_names(class_names, name="class_names")
    if not names:
        raise ValueError("class_names is empty: the brush needs at least one class")
    colours = list(palette)
    if len(colours) != len(names):
        raise ValueError(
            f"palette must have one colour per class: {len(names)} classes, "
            f"{len(colours)} colours"
        )
    brush = ET.SubElement(view, "BrushLabels", name=name, toName=to_name)
    for i, (label, colour) in enumerate(zip(names, colours, strict=True)):
        ET.SubElement(
            brush,
            "Label",
            value=label,
            background=hex_colour(colour, name=f"palette[{i}]"),
        )
    return brush


def short_id(*parts: object) -> str:
    """A stable 10-character id (Label Studio region ids are short strings)."""
    return hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:10]


def as_list(value: Any) -> list:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def _decoded_forms(text: str) -> list[str]:
    """The text and its percent-decodings, up to a fixed point (%252e -> %2e -> .)."""
    forms = [text]
    for _ in range(5):
        nxt = unquote(forms[-1])
        if nxt == forms[-1]:
            break
        forms.append(nxt)
    return forms


def _is_absolute_path(text: str) -> bool:
    return (
        text.startswith(("/", "\\", "~"))
        or bool(_DRIVE.match(text))
        or text.lower().startswith("file:")
    )


def check_image_url(url: str, prefixes: Sequence[str], *, task_id: Any) -> None:
    """Raises ExportRejected when `url` could reach outside the allowed places."""
    where = f"task {task_id}: data.image {url[:200]!r}"
    for form in _decoded_forms(url):
        if any(ord(c) < 32 for c in form):
            raise ExportRejected(f"{where} contains control characters")
        if ".." in re.split(r"[\\/?&=#;]", form):
            raise ExportRejected(f"{where} contains path traversal ('..')")
    if not url.startswith(tuple(prefixes)):
        if any(_is_absolute_path(f) for f in _decoded_forms(url)):
            raise ExportRejected(f"{where} is an absolute filesystem path")
        raise ExportRejected(
            f"{where} does not start with an allowed prefix {list(prefixes)}"
        )
    # Label Studio local files: /data/local-files/?d=<path>; the path must be
    # relative to the storage root.
    for _, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if any(_is_absolute_path(f) for f in _decoded_forms(value)):
            raise ExportRejected(
                f"{where} has an absolute filesystem path in its query"
            )


def load_export(export: list[dict] | str | bytes) -> list:
    if isinstance(export, str | bytes):
        try:
            export = json.loads(export)
        except ValueError as err:
            raise ExportRejected(f"export is not valid JSON: {err}") from None
    if not isinstance(export, list):
        raise ExportRejected(
            "export must be a JSON list of tasks (Label Studio's JSON export), "
            f"got {type(export).__name__}"
        )
    if len(export) > MAX_TASKS:
        raise ExportRejected(
            f"export has {len(export)} tasks, more than the limit of {MAX_TASKS}"
        )
    for i, task in enumerate(export):
        if not isinstance(task, dict):
            raise ExportRejected(
                f"export[{i}] must be a task object, got {type(task).__name__}"
            )
        task_id = task.get("id")
        if isinstance(task_id, bool) or not isinstance(task_id, int):
            raise ExportRejected(f"export[{i}] has no integer task id: {task_id!r}")
        if not isinstance(task.get("data"), dict):
            raise ExportRejected(f"task {task_id}: data must be an object")
        if not isinstance(task.get("annotations", []), list):
            raise ExportRejected(f"task {task_id}: annotations must be a list")
    return export


def utc(value: Any) -> pd.Timestamp:
    """A UTC timestamp; naive values are taken as UTC, like the lake writes them."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def annotation_time(ann: dict) -> pd.Timestamp | None:
    for key in ("updated_at", "created_at"):
        value = ann.get(key)
        if value:
            try:
                ts = utc(value)
            except (TypeError, ValueError):
                return None
            return None if pd.isna(ts) else ts
    return None


def annotator_of(completed_by: Any) -> str | None:
    if isinstance(completed_by, dict):
        email = completed_by.get("email")
        if isinstance(email, str) and email:
            return email
        completed_by = completed_by.get("id")
    if isinstance(completed_by, int) and not isinstance(completed_by, bool):
        return f"user-{completed_by}"
    if isinstance(completed_by, str) and completed_by:
        return completed_by
    return None


def latest_annotation(annotations: list) -> dict | None:
    done = [
        a
        for a in annotations
        if isinstance(a, dict) and not a.get("was_cancelled", False)
    ]
    if not done:
        return None

    def key(a: dict) -> tuple:
        ts = annotation_time(a)
        aid = a.get("id")
        return (
            ts is not None,
            ts if ts is not None else pd.Timestamp(0, tz="UTC"),
            aid if isinstance(aid, int) else -1,
        )

    return max(done, key=key)


class TaskSetAside(ValueError):
    """One task of an export cannot be used; the message says why.

    The task goes to the quarantine with that reason; the rest of the export
    is still read.
    """


@dataclass(frozen=True)
class Submitted:
    """The annotation of a task that counts, with the fields every import needs."""

    id: int
    result: list
    ts: pd.Timestamp
    by: str
    raw: dict


def submitted_annotation(task: dict) -> Submitted:
    """The task's annotation that counts (`latest_annotation`), checked.

    Raises:
        TaskSetAside: no submitted annotation, or one without an integer id, a
            result list, a readable time or who completed it.
    """
    ann = latest_annotation(task.get("annotations", []))
    if ann is None:
        raise TaskSetAside("no annotation (none submitted, or all cancelled)")
    ann_id = ann.get("id")
    if isinstance(ann_id, bool) or not isinstance(ann_id, int):
        raise TaskSetAside(f"annotation has no integer id: {ann_id!r}")
    result = ann.get("result")
    if not isinstance(result, list):
        raise TaskSetAside(f"annotation {ann_id}: result is not a list")
    ts = annotation_time(ann)
    if ts is None:
        raise TaskSetAside(
            f"annotation {ann_id}: missing or unreadable updated_at/created_at"
        )
    by = annotator_of(ann.get("completed_by"))
    if by is None:
        raise TaskSetAside(f"annotation {ann_id}: completed_by is missing")
    return Submitted(id=ann_id, result=result, ts=ts, by=by, raw=ann)


def task_rows(
    tasks: Sequence[dict], row_of: Callable[[dict], dict]
) -> tuple[list[dict], list[dict]]:
    """Each task's row, and the tasks set aside as `{task_id, reason}`.

    A task is set aside when its id was seen before in the export, or when
    `row_of` raises `TaskSetAside`.
    """
    rows, bad, seen = [], [], set()
    for task in tasks:
        if task["id"] in seen:
            bad.append({"task_id": task["id"], "reason": "duplicate task id"})
            continue
        seen.add(task["id"])
        try:
            rows.append(row_of(task))
        except TaskSetAside as err:
            bad.append({"task_id": task["id"], "reason": str(err)})
    return rows, bad


def brush_results(
    mask: np.ndarray,
    values: Sequence[int],
    labels: Sequence[str],
    *,
    region_prefix: str,
    from_name: str = "mask",
    to_name: str = "image",
) -> list[dict]:
    """One Label Studio `brushlabels` result per label present in `mask`.

    Args:
        mask: (H, W) integer label map.
        values: The mask value of each label; other values are left out.
        labels: The brush label each value is shown as.
        region_prefix: Makes the region ids stable and unique per task.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask must be a non-empty (H, W) array, got {mask.shape}")
    h, w = mask.shape
    present = set(np.unique(mask).tolist())
    return [
        {
            "id": short_id(region_prefix, label),
            "from_name": from_name,
            "to_name": to_name,
            "type": "brushlabels",
            "original_width": int(w),
            "original_height": int(h),
            "image_rotation": 0,
            "value": {
                "format": "rle",
                "rle": lsrle.encode(mask == v),
                "brushlabels": [label],
            },
        }
        for v, label in zip(values, labels, strict=True)
        if int(v) in present
    ]


def local_files_url(path: str | Path, document_root: str | Path, prefix: str) -> str:
    """The Label Studio local-files URL of a file under `document_root`.

    Raises:
        ValueError: the file is outside `document_root` (Label Studio could not
            serve it).
    """
    try:
        rel = Path(path).resolve().relative_to(Path(document_root).resolve())
    except ValueError as err:
        raise ValueError(
            f"document_root {str(document_root)!r} does not contain "
            f"{str(path)!r}: Label Studio could not serve it"
        ) from err
    return prefix + quote(rel.as_posix(), safe="/")


# -- a running Label Studio (optional) -------------------------------------------


def credentials(project: str | Path = ".") -> dict[str, str]:
    """Label Studio's URL and token: `LABEL_STUDIO_URL` / `LABEL_STUDIO_API_KEY`,
    else `label_studio: {url, token}` in `conf/local/credentials.yml`."""
    import yaml

    creds: dict[str, Any] = {}
    path = Path(project) / "conf" / "local" / "credentials.yml"
    if path.is_file():
        creds = dict((yaml.safe_load(path.read_text()) or {}).get("label_studio") or {})
    url = os.environ.get("LABEL_STUDIO_URL") or creds.get("url")
    token = os.environ.get("LABEL_STUDIO_API_KEY") or creds.get("token")
    return {"url": str(url or ""), "token": str(token or "")}


def client(url: str, token: str) -> Any:
    """A `label_studio_sdk.LabelStudio` client (legacy token auth).

    Start Label Studio with `--enable-legacy-api-token` and pass the token shown
    under Account & Settings (or given with `--user-token`).
    """
    try:
        from label_studio_sdk import LabelStudio
    except ImportError as err:  # the sdk is in the dev extra
        raise ImportError(
            "pushing to Label Studio needs label-studio-sdk: "
            "pip install 'label-studio-sdk==2.1.2'"
        ) from err
    if not url or not token:
        raise ValueError(
            "label_studio.url and label_studio.token are needed "
            "(conf/local/credentials.yml: label_studio: {url: ..., token: ...})"
        )
    return LabelStudio(base_url=url, api_key=token)


TITLE_LENGTH = (3, 50)  # Label Studio's PROJECT_TITLE_MIN_LEN / MAX_LEN


def push_tasks(
    ls: Any,
    *,
    title: str,
    label_config: str,
    tasks: list[dict],
    local_files_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Creates (or reuses, by title) a project and imports `tasks` into it.

    Tasks already in the project (the same `task_key`) are not imported again,
    so re-running a pipeline does not duplicate work for people.

    Args:
        local_files_dir: The folder holding the tasks' images (absolute, under
            Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT), connected to
            the project by `ensure_local_storage` so Label Studio serves them.

    Returns:
        {"project_id", "title", "tasks", "already_there"}: the project, how
        many tasks were imported and how many it had already, and
        "local_storage" (the folder) when one was given.

    Raises:
        ValueError: a title Label Studio would refuse (3 to 50 characters).
    """
    if not TITLE_LENGTH[0] <= len(title) <= TITLE_LENGTH[1]:
        raise ValueError(
            f"Label Studio project titles have {TITLE_LENGTH[0]} to "
            f"{TITLE_LENGTH[1]} characters, got {title!r}"
        )
    project = next((p for p in ls.projects.list() if p.title == title), None)
    if project is None:
        project = ls.projects.create(title=title, label_config=label_config)
    else:
        ls.projects.update(id=project.id, label_config=label_config)
    report: dict[str, Any] = {"project_id": int(project.id), "title": title}
    if local_files_dir is not None:
        report["local_storage"] = ensure_local_storage(ls, project.id, local_files_dir)
    there = {task_key(t.data) for t in ls.tasks.list(project=project.id)}
    new = [t for t in tasks if task_key(t.get("data") or {}) not in there]
    if new:
        ls.projects.import_tasks(id=project.id, request=new)
    return report | {"tasks": len(new), "already_there": len(tasks) - len(new)}


def task_key(data: Mapping[str, Any]) -> str:
    """What makes a task the same task again: its review request, else its image.

    A review task is one prediction (`request_id`); a labeling task one image
    (`image_id`); anything else is its whole `data`.
    """
    for field in ("request_id", "image_id"):
        if data.get(field):
            return f"{field}:{data[field]}"
    return json.dumps(dict(data), sort_keys=True, default=str)


def ensure_local_storage(ls: Any, project_id: int, folder: str | Path) -> str:
    """Connects `folder` to a project as a local-files storage, once.

    Label Studio serves `/data/local-files/?d=<path>` only for files under a
    local-files storage of a project the user can see; any other file is a 404,
    so pushed tasks would show no image. The storage is created without a sync:
    a sync would turn every file in the folder into a task.

    Returns:
        The folder as an absolute path (the storage's path).

    Raises:
        ValueError: Label Studio refused the folder (not a folder, outside
            LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, or local-files serving is off).
    """
    from label_studio_sdk.core.api_error import ApiError

    path = str(Path(folder).resolve())
    existing = ls.import_storage.local.list(project=project_id)
    if any(getattr(s, "path", None) == path for s in existing):
        return path
    try:
        ls.import_storage.local.create(
            project=project_id,
            path=path,
            title="edgeloop images",
            use_blob_urls=False,
        )
    except ApiError as err:  # its body says why; other errors are not refusals
        body = err.body or err
        if isinstance(body, dict):
            body = body.get("validation_errors") or body.get("detail") or body
        raise ValueError(
            f"Label Studio refused {path} as a local-files storage ({body}); "
            "start it with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to a folder above it"
        ) from err
    return path


def push_if_enabled(
    push: Mapping[str, Any] | None,
    *,
    default_title: str,
    label_config: str,
    tasks: list[dict],
    local_files_dir: str | Path,
) -> dict[str, Any]:
    """`push_tasks` to the Label Studio of `credentials()` when `push.enabled`.

    The one push of every task kind (review, labeling): `push` is a pipeline's
    `push` parameters, `{enabled, project_title}`.

    Returns:
        {"tasks", "pushed"}, plus `push_tasks`'s report when pushed.
    """
    report: dict[str, Any] = {"tasks": len(tasks), "pushed": False}
    push = push or {}
    if not push.get("enabled"):
        return report
    creds = credentials()
    ls = client(creds["url"], creds["token"])
    report |= push_tasks(
        ls,
        title=str(push.get("project_title") or default_title),
        label_config=label_config,
        tasks=tasks,
        local_files_dir=local_files_dir,
    )
    report["pushed"] = True
    log.info(
        "pushed %d new task(s) to Label Studio at %s (%d already there)",
        report["tasks"],
        creds["url"],
        report["already_there"],
    )
    return report


def collect_exports(
    folder: str | Path,
    pull: Mapping[str, Any] | None,
    *,
    default_title: str,
    setting: str,
) -> list[tuple[str, bytes]]:
    """(source, bytes) of every Label Studio export to import.

    The `*.json` files in `folder` (missing: none), then, with `pull.enabled`,
    the JSON export of the Label Studio project titled `pull.project_title`
    (source `label-studio:<title>`), through the SDK.

    `setting` names the parameter `folder` came from, for the error.

    Raises:
        ValueError: `folder` is not a folder; no project has that title.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(
            f"{setting}: exports folder {str(folder)!r} is not a folder; "
            "give a folder of Label Studio JSON exports"
        )
    files = (
        sorted(
            p for p in folder.iterdir() if p.suffix.lower() == ".json" and p.is_file()
        )
        if folder.exists()
        else []
    )
    out = [(str(p), p.read_bytes()) for p in files]
    pull = pull or {}
    if pull.get("enabled"):
        creds = credentials()
        ls = client(creds["url"], creds["token"])
        title = str(pull.get("project_title") or default_title)
        project = next((p for p in ls.projects.list() if p.title == title), None)
        if project is None:
            raise ValueError(f"no Label Studio project titled {title!r}")
        out.append((f"label-studio:{title}", fetch_export(ls, project.id)))
    return out


def fetch_export(ls: Any, project_id: int) -> bytes:
    """A project's JSON export (every task, with annotations), as bytes.

    Annotators appear as `{"id", "email"}` (the export itself gives user ids).
    """
    chunks = ls.projects.exports.download_sync(
        project_id, export_type="JSON", download_all_tasks=True
    )
    raw = chunks if isinstance(chunks, bytes) else b"".join(chunks)
    try:
        tasks = json.loads(raw)
        emails = {u.id: u.email for u in ls.users.list() if getattr(u, "email", None)}
    except (ValueError, TypeError):
        return raw  # the importer reports what is wrong with it
    if not isinstance(tasks, list):
        return raw
    for task in tasks:
        for ann in (task.get("annotations") or []) if isinstance(task, dict) else []:
            uid = ann.get("completed_by") if isinstance(ann, dict) else None
            if isinstance(uid, int) and uid in emails:
                ann["completed_by"] = {"id": uid, "email": emails[uid]}
    return json.dumps(tasks).encode()
