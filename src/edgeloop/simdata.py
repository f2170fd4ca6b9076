"""CamVid laid out for `edgeloop simulate --dataset camvid`.

The simulation needs what the synthetic generator gives it for free: a small
labeled seed set, an unlabeled production pool with timestamps whose truth is
kept apart, and a fixed, fully labeled evaluation set that is never in the pool.
`prepare_camvid` derives them from CamVid's official split, once per seed:

- **seed set**: `seed_frac` of the official train frames (chosen by the seed),
  ingested as labeled `train`, with the official `val` frames as `val` and the
  official 233 `test` frames as `test`;
- **pool**: the other train frames, as a production folder (`images/` plus
  `metadata.jsonl` with `captured_at`). CamVid has no timestamps, so frames get
  them from frame order (sequence, then frame number), `frame_interval_s` apart;
- **truth** of the pool (`masks/` plus `metadata.jsonl` with the sequence as a
  tag), read only by the simulated annotator;
- **eval**: the official test frames with masks and sequence tags, for scoring
  every strategy independently of the gate.

Frames are resized once (`size`, image bilinear, mask nearest) so every stage of
a simulated iteration decodes small PNGs; void (raw 11) becomes the ignore index.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from edgeloop.classmap import ClassMap
from edgeloop.imaging import decode_image, decode_mask, encode_png
from edgeloop.progress import tqdm
from edgeloop.sources import RawItem, SourceError, list_camvid, resolve_inside

_FRAME = re.compile(r"^(?P<seq>.+?)_f?(?P<num>\d+)$")
_VERSION = 1  # bump when the layout or the processing changes


@dataclass(frozen=True)
class CamvidSimConfig:
    """How CamVid is laid out for a simulation (`simulation.camvid`).

    Attributes:
        seed_frac: Share of the official train frames labeled at the start.
        size: (height, width) every frame is resized to, or None to keep it.
        frame_interval_s: Seconds between consecutive frames' timestamps.
        start: Timestamp of the first frame (ISO, UTC).
    """

    seed_frac: float = 0.1
    size: tuple[int, int] | None = (120, 160)
    frame_interval_s: float = 240.0
    start: str = "2026-01-05T00:00:00Z"

    def __post_init__(self) -> None:
        if not 0.0 < self.seed_frac < 1.0:
            raise ValueError(f"seed_frac must be in (0, 1), got {self.seed_frac}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 16):
            raise ValueError(f"size must be (height, width) >= 16, got {self.size}")
        if self.frame_interval_s <= 0:
            raise ValueError(
                f"frame_interval_s must be > 0, got {self.frame_interval_s}"
            )

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> CamvidSimConfig:
        params = dict(params or {})
        unknown = set(params) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown simulation.camvid key(s): {sorted(unknown)}")
        if params.get("size") is not None:
            params["size"] = tuple(int(v) for v in params["size"])
        return cls(**params)


@dataclass(frozen=True)
class PreparedCamvid:
    """Where a prepared CamVid simulation's parts are (see the module doc)."""

    root: Path  # list files for the `camvid` ingest: seed train, val, test
    pool: Path  # production.source.root
    truth: Path  # the pool's truth: masks/ + metadata.jsonl
    eval: Path  # images/, masks/, metadata.jsonl
    counts: dict[str, int]

    def runtime_params(self) -> dict[str, Any]:
        """What every Kedro session of the simulation gets for this data."""
        return {
            "camvid_root": str(self.root),
            "production": {"source": {"root": str(self.pool)}},
        }


def frame_key(stem: str) -> tuple[str, int]:
    """(sequence, frame number) of a CamVid frame name, e.g. `0001TP_006690`."""
    match = _FRAME.match(stem)
    if match is None:
        raise ValueError(f"CamVid frame name {stem!r} is not <sequence>_<frame number>")
    return match["seq"], int(match["num"])


def _load(
    root: Path, item: RawItem, value_map: Mapping[int, int], cm: ClassMap, size
) -> tuple[np.ndarray, np.ndarray]:
    paths = []
    for what, rel in (("image", item.image_path), ("mask", item.mask_path)):
        path = resolve_inside(root, rel or "")
        if path is None or not path.is_file():
            raise SourceError(f"CamVid {what} {rel!r} of {item.name} not found")
        paths.append(path)
    image = decode_image(paths[0].read_bytes())
    raw = decode_mask(paths[1].read_bytes())
    if raw.shape != image.shape[:2]:
        raise SourceError(
            f"CamVid {item.name}: mask {raw.shape} and image {image.shape[:2]} "
            "differ in size"
        )
    mask, invalid = cm.remap(raw, value_map)  # what the ingest does
    if invalid:
        raise SourceError(
            f"CamVid {item.name}: mask values {invalid[:10]} are not classes "
            f"{list(cm.ids)} or the ignore index {cm.ignore_index}"
        )
    if size is not None and (image.shape[0], image.shape[1]) != tuple(size):
        h, w = size
        image = np.asarray(
            Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR)
        )
        mask = np.asarray(
            Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST)
        )
    return image, mask


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def prepare_camvid(
    source: Mapping[str, Any],
    class_map: ClassMap,
    dest: Path,
    *,
    seed: int,
    config: CamvidSimConfig,
    progress: bool = True,
) -> PreparedCamvid:
    """Lays out CamVid for one simulation seed under `dest` (reused if done).

    Args:
        source: The camvid env's `ingest.source` (root, list_files,
            strip_prefix, value_map); `root` must be the real CamVid folder.
        class_map: CamVid's class map.
        dest: Output folder; a finished one with the same settings is reused.
        seed: Chooses the seed set among the train frames.
        config: The layout settings.
        progress: Show a progress bar.

    Returns:
        The prepared parts.

    Raises:
        SourceError: If CamVid is missing or a frame is bad (the message names
            it); nothing is left half-written under `dest`.
    """
    root = Path(source["root"])
    if not root.is_dir():
        raise SourceError(
            f"CamVid not found at {str(root)!r}: give its folder (with train.txt, "
            "val.txt, test.txt) with --camvid-root"
        )
    manifest = {
        "version": _VERSION,
        "source": str(root.resolve()),
        "seed": int(seed),
        "config": asdict(config),
    }
    parts = PreparedCamvid(
        root=dest / "labeled",
        pool=dest / "pool",
        truth=dest / "truth",
        eval=dest / "eval",
        counts={},
    )
    done = dest / "manifest.json"
    if done.is_file():
        saved = json.loads(done.read_text())
        if {k: saved.get(k) for k in manifest} == json.loads(json.dumps(manifest)):
            return replace(parts, counts=saved["counts"])
    items = list_camvid(
        root,
        source.get("list_files") or {},
        str(source.get("strip_prefix") or ""),
    )
    by_split: dict[str, list[RawItem]] = {}
    for item in items:
        by_split.setdefault(item.split or "train", []).append(item)
    missing = {"train", "test"} - set(by_split)
    if missing:
        raise SourceError(f"CamVid at {root} has no {sorted(missing)} split")
    train = sorted(by_split["train"], key=lambda it: frame_key(it.name))
    n_seed = max(1, round(config.seed_frac * len(train)))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
    chosen = set(rng.choice(len(train), size=n_seed, replace=False).tolist())
    start = pd.Timestamp(config.start)
    start = start.tz_localize("UTC") if start.tzinfo is None else start

    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    for sub in ("labeled/images", "labeled/masks", "pool/images", "truth/masks",
                "eval/images", "eval/masks"):  # fmt: skip
        (tmp / sub).mkdir(parents=True)
    value_map = {int(k): int(v) for k, v in (source.get("value_map") or {}).items()}
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    pool_meta, truth_meta, eval_meta = [], [], []
    jobs = [("train", i, it) for i, it in enumerate(train)]
    jobs += [(s, None, it) for s in ("val", "test") for it in by_split.get(s, [])]
    for split, pos, item in tqdm(
        jobs, desc="preparing CamVid", unit="frame", disable=not progress
    ):
        image, mask = _load(root, item, value_map, class_map, config.size)
        name = f"{item.name}.png"
        seq = frame_key(item.name)[0]
        if split == "train" and pos not in chosen:
            (tmp / "pool" / "images" / name).write_bytes(encode_png(image))
            (tmp / "truth" / "masks" / name).write_bytes(encode_png(mask))
            ts = start + pd.Timedelta(seconds=config.frame_interval_s * pos)
            pool_meta.append({"stem": item.name, "captured_at": ts.isoformat()})
            truth_meta.append({"stem": item.name, "tags": [seq]})
            continue
        (tmp / "labeled" / "images" / name).write_bytes(encode_png(image))
        (tmp / "labeled" / "masks" / name).write_bytes(encode_png(mask))
        lists[split].append(f"images/{name} masks/{name}")
        if split == "test":
            (tmp / "eval" / "images" / name).write_bytes(encode_png(image))
            (tmp / "eval" / "masks" / name).write_bytes(encode_png(mask))
            eval_meta.append({"stem": item.name, "tags": [seq]})
    for split, lines in lists.items():
        (tmp / "labeled" / f"{split}.txt").write_text(
            "".join(f"{ln}\n" for ln in lines)
        )
    _write_jsonl(tmp / "pool" / "metadata.jsonl", pool_meta)
    _write_jsonl(tmp / "truth" / "metadata.jsonl", truth_meta)
    _write_jsonl(tmp / "eval" / "metadata.jsonl", eval_meta)
    counts = {
        "train_frames": len(train),
        "seed": len(lists["train"]),
        "pool": len(pool_meta),
        "val": len(lists["val"]),
        "test": len(lists["test"]),
    }
    (tmp / "manifest.json").write_text(
        json.dumps({**manifest, "counts": counts}, indent=1, sort_keys=True)
    )
    if dest.exists():
        shutil.rmtree(dest)
    tmp.replace(dest)
    return replace(parts, counts=counts)
