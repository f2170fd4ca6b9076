"""Training throughput, and what the data pipeline costs on top of the model.

For each architecture, at 128x128 (batch 16) and at CamVid-like 360x480 (batch 4):

(a) raw: forward + backward + optimiser step on batches already in memory as
    tensors, through `train_one_epoch`;
(b) pipeline: the same number of images through `SegmentationSet` (augmentation
    strength 0.5) + `make_loader` + `train_one_epoch`;
(c) overhead = 1 - b / a, against a target of <= 15%.

Rates are the batch size over the median per-step time (each step's time includes
fetching its batch), (a) and (b) measured interleaved on the same model. Also
shown: the data pipeline alone (loader iterated without a model) and the share of
a pipeline step it accounts for (b / data only), a steadier estimate of the
overhead than (c) on a noisy machine. Images are
synthetic (random uint8), so no dataset is needed. Run:
`python benchmarks/train.py [--archs ...] [--steps N]`.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterator

import numpy as np
import torch

from edgeloop.data import AugmentConfig, SegmentationSet, make_loader
from edgeloop.engine import train_one_epoch
from edgeloop.models import ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD, build_model

TARGET_OVERHEAD = 0.15
NUM_CLASSES = 11  # CamVid
SETTINGS = (((128, 128), 16), ((360, 480), 4))  # ((height, width), batch size)


def _synthetic(
    n: int, size: tuple[int, int], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *size, 3), dtype=np.uint8)
    masks = rng.integers(0, NUM_CLASSES, size=(n, *size), dtype=np.uint8)
    masks[:, :4] = 255  # a few ignored rows
    return images, masks


def _prebuilt(
    images: np.ndarray, masks: np.ndarray, batch: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    y = torch.from_numpy(masks).long()
    return [
        (x[i : i + batch].contiguous(), y[i : i + batch])
        for i in range(0, len(x), batch)
    ]


def bench(
    arch: str, size: tuple[int, int], batch: int, steps: int, rounds: int
) -> dict[str, float]:
    """Images/s raw, through the pipeline, and of the pipeline alone."""
    torch.manual_seed(0)
    model, _ = build_model(arch, NUM_CLASSES, pretrained=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n = steps * batch
    images, masks = _synthetic(n, size, seed=0)
    batches = _prebuilt(images, masks, batch)
    dataset = SegmentationSet(images, masks, augment=AugmentConfig(0.5), seed=0)
    loader = make_loader(dataset, batch_size=batch, seed=0)

    train_one_epoch(model, optimizer, batches[:2])  # warm-up: kernels, AdamW state

    def step_times(piped: bool, epoch: int) -> list[float]:
        """Seconds per step, each including the fetch of its batch."""
        dataset.set_epoch(epoch)
        source = loader if piped else batches
        stamps: list[float] = []

        def timed() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            stamps.append(time.perf_counter())
            for item in source:
                yield item
                stamps.append(time.perf_counter())

        train_one_epoch(model, optimizer, timed())
        return list(np.diff(stamps))

    raw: list[float] = []
    piped: list[float] = []
    for r in range(rounds):  # interleaved, alternating order
        for is_piped in (r % 2 == 1, r % 2 == 0):
            (piped if is_piped else raw).extend(step_times(is_piped, r))
    t0 = time.perf_counter()
    for _ in loader:
        pass
    data_only = time.perf_counter() - t0
    # Medians of per-step times: robust to the odd hiccup of a shared machine.
    return {
        "raw": batch / float(np.median(raw)),
        "piped": batch / float(np.median(piped)),
        "data": n / data_only,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--archs", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES
    )
    parser.add_argument(
        "--steps", type=int, default=3, help="batches per measurement (default 3)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="measurements, best kept (default 2)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(os.cpu_count() or 1)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.steps} steps x {args.rounds} round(s); images/s"
    )
    header = (
        f"{'architecture':<30} {'size':>8} {'batch':>5} {'(a) raw':>9} "
        f"{'(b) piped':>10} {'data only':>10} {'data share':>10} "
        f"{'(c) overhead':>13}  target"
    )
    print(header)
    print("-" * len(header))
    ok_all = True
    start = time.perf_counter()
    for arch in args.archs:
        for size, batch in SETTINGS:
            r = bench(arch, size, batch, args.steps, args.rounds)
            overhead = 1 - r["piped"] / r["raw"]
            share = r["piped"] / r["data"]
            ok = overhead <= TARGET_OVERHEAD
            ok_all &= ok
            print(
                f"{arch:<30} {size[0]:>4}x{size[1]:<3} {batch:>5} {r['raw']:>9.1f} "
                f"{r['piped']:>10.1f} {r['data']:>10.0f} {share:>10.1%} "
                f"{overhead:>12.1%}  "
                f"<= {TARGET_OVERHEAD:.0%} {'ok' if ok else 'NO'}",
                flush=True,
            )
    print(f"overall: {'ok' if ok_all else 'NO'} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
