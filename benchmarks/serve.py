"""Serving benchmark: latency with lake logging on and off, and a lake query.

Usage:
    .venv/bin/python benchmarks/serve.py [--requests 100] [--rounds 5]
        [--lake data/lake] [--rows 1000000]

1. Starts two `edgeloop serve` processes on loopback over scratch lakes, one
   logging every prediction (spool + Delta) and one with `--no-log`, both with
   the promoted model of `--lake` (or a random-init LRASPP at 128x128 when
   there is none: the same compute). This process is the client: it sends
   `--requests` sequential requests per round, alternating the two servers for
   `--rounds` rounds, and reports the median over rounds of p50, p99 and
   throughput. Then it stops the logging server and checks that every
   acknowledged request is in the Delta table exactly once.
2. Writes `--rows` synthetic prediction rows (30 days, through the lake
   writer) and times finding the 100 lowest-confidence predictions of one hour.

Targets: logging costs <= max(10% of p50, 1 ms); zero records lost; the query
<= 1 s. Every request goes to 127.0.0.1 only, bounded by --requests x --rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from edgeloop.imaging import encode_png
from edgeloop.lake import Lake
from edgeloop.prodlog import LakeWriter, most_doubtful
from edgeloop.registry import ModelRecord, load_model, promoted_row, register_model

TOKEN = "bench-token"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_lake(root: Path, source: str) -> str:
    """A scratch lake holding one promoted model; returns a description."""
    lake = Lake(str(root))
    src = Lake(source)
    row = (
        promoted_row(src.read("models")) if src.version("models") is not None else None
    )
    if row is not None:
        model = load_model(src, row)
        what = f"promoted model {model.version} of {source}"
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import register_tiny_model

        version = register_tiny_model(lake, input_size=(128, 128))
        return f"random-init LRASPP {version} (no promoted model in {source})"
    register_model(
        lake,
        ModelRecord(
            model=model,
            card={},
            metric=row["metric"],
            score=float(row["score"]),
            slice_scores={},
            promoted=True,
            reason="benchmark copy",
        ),
    )
    return what


class Server:
    def __init__(self, lake_root: Path, workdir: Path, log: bool) -> None:
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            sys.executable,
            "-m",
            "edgeloop.commands",
            "serve",
            "--port",
            str(self.port),
            "--lake",
            str(lake_root),
            "--project",
            str(workdir),
        ]
        if not log:
            args.append("--no-log")
        self.logfile = open(workdir / f"server-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            args,
            env={**os.environ, "EDGELOOP_API_TOKEN": TOKEN},
            stdout=self.logfile,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: see {self.logfile.name}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise SystemExit("server did not start in 120 s")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        self.logfile.close()


def _images(n: int, size: int) -> list[bytes]:
    """Stream-like images: the synthetic production stream when it exists."""
    stream = Path("data/01_raw/synthetic/stream/images")
    files = sorted(stream.glob("*.png"))[:n] if stream.is_dir() else []
    if len(files) >= n:
        return [f.read_bytes() for f in files]
    rng = np.random.default_rng(0)
    return [
        encode_png(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        for _ in range(n)
    ]


def _round(http: httpx.Client, url: str, images: list[bytes]) -> dict:
    latencies, ids, failures = [], [], 0
    start = time.perf_counter()
    for data in images:
        t0 = time.perf_counter()
        r = http.post(
            f"{url}/v1/predict",
            files={"file": ("x.png", data, "image/png")},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        latencies.append((time.perf_counter() - t0) * 1000)
        if r.status_code == 200:
            ids.append(r.json()["request_id"])
        else:
            failures += 1
    seconds = time.perf_counter() - start
    return {
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
        "rps": len(images) / seconds,
        "ids": ids,
        "failures": failures,
    }


def bench_latency(args: argparse.Namespace, work: Path) -> None:
    on_root, off_root = work / "lake_on", work / "lake_off"
    what = _prepare_lake(on_root, args.lake)
    _prepare_lake(off_root, args.lake)
    images = _images(args.requests, 128)
    servers = {
        "on": Server(on_root, work, log=True),
        "off": Server(off_root, work, log=False),
    }
    results: dict[str, list[dict]] = {"on": [], "off": []}
    with httpx.Client(timeout=60) as http:
        for server in servers.values():  # warm-up
            _round(http, server.url, images[:10])
        for r in range(args.rounds):
            order = ("on", "off") if r % 2 == 0 else ("off", "on")
            for mode in order:
                results[mode].append(_round(http, servers[mode].url, images))
    for server in servers.values():
        server.stop()  # the logging server flushes its spool on shutdown
    acked = [i for res in results["on"] for i in res["ids"]]
    stored = Lake(str(on_root)).read("predictions")
    stored = stored[stored["request_id"].isin(set(acked))]
    lost = len(set(acked) - set(stored["request_id"]))
    dupes = int(stored["request_id"].duplicated().sum())

    def med(mode: str, key: str) -> float:
        return statistics.median(res[key] for res in results[mode])

    print(
        f"\nmodel: {what}; {args.requests} sequential requests x {args.rounds} "
        "alternating rounds per mode; medians over rounds"
    )
    print(f"{'lake logging':<14}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'failed':>8}")
    for mode in ("off", "on"):
        failed = sum(res["failures"] for res in results[mode])
        print(
            f"{mode:<14}{med(mode, 'p50'):>10.2f}{med(mode, 'p99'):>10.2f}"
            f"{med(mode, 'rps'):>10.1f}{failed:>8}"
        )
    cost = med("on", "p50") - med("off", "p50")
    budget = max(0.1 * med("off", "p50"), 1.0)
    print(
        f"logging cost at p50: {cost:.2f} ms (target <= {budget:.2f} ms: "
        f"{'met' if cost <= budget else 'NOT met'})"
    )
    print(
        f"acknowledged {len(acked)}, in Delta {len(stored)}, lost {lost}, "
        f"duplicated {dupes} (target: 0 lost)"
    )


def bench_query(args: argparse.Namespace, work: Path) -> None:
    lake = Lake(str(work / "lake_query"))
    writer = LakeWriter(lake, "predictions", max_rows=100_000, max_seconds=1e9)
    rng = np.random.default_rng(0)
    t0_ts = datetime(2026, 1, 1, tzinfo=UTC)
    n, chunk = args.rows, 100_000
    start = time.perf_counter()
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        offsets = np.sort(rng.uniform(0, 30 * 86400, m))
        ts = (pd.to_datetime(t0_ts) + pd.to_timedelta(offsets, unit="s")).floor("us")
        rows = pd.DataFrame(
            {
                "request_id": [f"q{i:08d}" for i in range(lo, lo + m)],
                "ts": ts,
                "date": ts.strftime("%Y-%m-%d"),
                "model_version": "it0-bench",
                "iteration": 0,
                "image_id": [f"img{i}" for i in range(lo, lo + m)],
                "image_blob": "blobs/images/x.png",
                "mask_blob": "blobs/predictions/x.png",
                "width": 128,
                "height": 128,
                "mean_max_prob": rng.uniform(0.3, 1.0, m),
                "mean_entropy": rng.uniform(0, 1.4, m),
                "mean_margin": rng.uniform(0, 1, m),
                "low_conf_frac": rng.uniform(0, 1, m),
                "class_fracs": [[1.0, 0.0, 0.0, 0.0]] * m,
                "latency_ms": 10.0,
                "source": "batch",
                "client": "bench",
            }
        )
        writer.add(rows.to_dict("records"))
    writer.flush()
    write_s = time.perf_counter() - start
    hour = datetime(2026, 1, 17, 14, tzinfo=UTC)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        top = most_doubtful(lake, hour, hour + timedelta(hours=1), k=100)
        times.append(time.perf_counter() - t0)
    assert len(top) == 100 and top["ts"].min() >= pd.Timestamp(hour)
    optimized = lake.optimize("predictions")
    times_opt = []
    for _ in range(5):
        t0 = time.perf_counter()
        most_doubtful(lake, hour, hour + timedelta(hours=1), k=100)
        times_opt.append(time.perf_counter() - t0)
    print(
        f"\n{n:,} prediction rows over 30 days written in {write_s:.1f} s "
        f"({writer.commits} Delta commits)"
    )
    print(f"{'query':<58}{'median s':>10}{'target':>8}")
    print(
        f"{'100 lowest-confidence predictions in one hour':<58}"
        f"{statistics.median(times):>10.3f}{'1.0':>8}"
    )
    print(
        f"{'  same, after `edgeloop lake optimize`':<58}"
        f"{statistics.median(times_opt):>10.3f}{'1.0':>8}"
        f"   ({optimized.get('numFilesRemoved')} -> "
        f"{optimized.get('numFilesAdded')} files)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--lake", default="data/lake", help="where the model comes from"
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-query", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgeloop-bench-serve-"))
    try:
        if not args.skip_latency:
            bench_latency(args, work)
        if not args.skip_query:
            bench_query(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
