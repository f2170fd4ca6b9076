"""Ingest throughput: synthetic generation at 128x128 and CamVid ingest at 480x360.

Prints a table of images/s against the targets (>= 200/s synthetic generation,
>= 50/s CamVid ingest, on 2 cores). Run: `python benchmarks/ingest.py`.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from edgeloop import synthetic
from edgeloop.classmap import ClassMap
from edgeloop.datasets.scene_folder import FolderItem, SceneFolderDataset
from edgeloop.ingest import IngestLimits, ingest_source
from edgeloop.lake import LabelRegistry, Lake, add_images
from edgeloop.sources import SourceConfig

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
CAMVID_NAMES = [
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign_symbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
]


def bench_synthetic(n: int, size: int, out: Path) -> tuple[float, float]:
    """Generation alone, and generation plus writing images and masks as PNG."""
    t0 = time.perf_counter()
    scenes = synthetic.generate_scenes("stream", n, size=size, seed=0)
    t1 = time.perf_counter()
    SceneFolderDataset(path=str(out / "synthetic")).save(
        {"stream": [FolderItem(s.name, s.image, s.mask) for s in scenes]}
    )
    t2 = time.perf_counter()
    return n / (t1 - t0), n / (t2 - t0)


def bench_camvid(root: Path, out: Path) -> tuple[int, int, float]:
    """Read, validate, re-encode and store CamVid in a fresh lake."""
    cm = ClassMap(
        tuple(CAMVID_NAMES), tuple(range(11)), tuple((0, 0, 0) for _ in range(11))
    )
    config = SourceConfig.from_params(
        {
            "kind": "camvid",
            "root": str(root),
            "strip_prefix": "/SegNet/CamVid/",
            "value_map": {11: 255},
        }
    )
    objects = ("pole", "sign_symbol", "car", "pedestrian", "bicyclist")
    t0 = time.perf_counter()
    batch = ingest_source(
        config,
        cm,
        limits=IngestLimits(workers=os.cpu_count() or 2),
        object_classes=objects,
        iteration=0,
        progress=False,
    )
    lake = Lake(str(out / "lake"))
    add_images(lake, batch.images)
    LabelRegistry(lake, cm, objects).append(batch.labels)
    elapsed = time.perf_counter() - t0
    return len(batch.images), len(batch.quarantine), len(batch.images) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000, help="synthetic scenes")
    parser.add_argument("--camvid", type=Path, default=CAMVID, help="CamVid root")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        gen, gen_write = bench_synthetic(args.n, 128, Path(tmp))
        rows.append(("synthetic generate (128x128)", args.n, gen, 200))
        rows.append(
            ("synthetic generate + PNG write (128x128)", args.n, gen_write, 200)
        )
        if args.camvid.is_dir():
            n, bad, rate = bench_camvid(args.camvid, Path(tmp))
            rows.append(
                (f"CamVid ingest into lake (480x360, {bad} quarantined)", n, rate, 50)
            )
        else:
            print(f"CamVid not found at {args.camvid}: skipped")
    print(f"cores: {os.cpu_count()}")
    print(f"{'benchmark':<50}{'images':>8}{'images/s':>10}{'target':>8}  ok")
    for name, n, rate, target in rows:
        ok = "yes" if rate >= target else "NO"
        print(f"{name:<50}{n:>8}{rate:>10.1f}{target:>8}  {ok}")


if __name__ == "__main__":
    main()
