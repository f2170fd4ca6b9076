"""Vector index benchmark: build, memory, query latency, recall@10 and k-means.

Usage:
    .venv/bin/python benchmarks/index.py [--n 1000000] [--dim 512]
        [--clusters 1000] [--kind auto] [--metric cosine] [--build-threads 1]
        [--ef-search N] [--nprobe N] [--seed 0]

Data: `--n` vectors in `--clusters` Gaussian clusters (centres N(0, 1),
within-cluster sigma 0.7); queries are fresh draws from the same clusters, not
in the index. Builds `VectorIndex` with `--kind` and prints one table: backend
and parameters, build time, index size (FAISS's serialised size, or the stored
vectors for the exact backend), p50/p99 latency of single-query searches (k=10,
1000 queries, through `VectorIndex.search`), recall@10 on 200 queries against
exact brute force (chunked numpy matmul), and k-means with k=100 over all N.

Targets: p50 <= 1 ms, recall@10 >= 0.95, k-means <= 5 s with every vector
assigned. At the default N the data alone is 2 GB (float32) and the run needs
about 8 GB of RAM; `--build-threads 1` (reproducible HNSW) builds slowly, raise
it for a quicker, non-reproducible build.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgeloop.vectorindex import KINDS, METRICS, VectorIndex, kmeans

K = 10
LATENCY_QUERIES = 1000
RECALL_QUERIES = 200
KMEANS_K = 100
SIGMA = 0.7


def make_data(
    n: int, dim: int, clusters: int, n_queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) and (n_queries, dim) float32 clustered vectors, built in chunks."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, 65_536):
            stop = min(count, start + 65_536)
            out[start:stop] = centres[rng.integers(0, clusters, stop - start)]
            out[start:stop] += SIGMA * rng.standard_normal(
                (stop - start, dim), dtype=np.float32
            )
        return out

    return draw(n), draw(n_queries)


def exact_top_k(x: np.ndarray, q: np.ndarray, k: int, metric: str) -> np.ndarray:
    """(Q, k) row positions of the true nearest neighbours, by chunked matmul."""
    q = q.astype(np.float32)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    best_d = np.full((len(q), 0), np.inf, dtype=np.float32)
    best_i = np.empty((len(q), 0), dtype=np.int64)
    for start in range(0, len(x), 65_536):
        chunk = x[start : start + 65_536]
        if metric == "cosine":
            chunk = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
            d = -(q @ chunk.T)  # (Q, C): smaller is nearer
        else:
            # |x - q|^2 up to the per-query constant |q|^2.
            d = (chunk * chunk).sum(1)[None, :] - 2.0 * (q @ chunk.T)
        cols = np.broadcast_to(np.arange(start, start + len(chunk)), d.shape)
        d = np.concatenate([best_d, d], axis=1)
        i = np.concatenate([best_i, cols], axis=1)
        keep = min(k, d.shape[1])
        top = np.argpartition(d, keep - 1, axis=1)[:, :keep]
        best_d = np.take_along_axis(d, top, 1)
        best_i = np.take_along_axis(i, top, 1)
    return best_i


def bench_latency(index: VectorIndex, q: np.ndarray) -> tuple[float, float]:
    """p50 and p99 milliseconds of single-query k=10 searches."""
    for row in q[:20]:  # warm-up
        index.search(row[None, :], K)
    times = np.empty(len(q))
    for j, row in enumerate(q):
        start = time.perf_counter()
        index.search(row[None, :], K)
        times[j] = time.perf_counter() - start
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def recall_at_k(index: VectorIndex, x: np.ndarray, q: np.ndarray) -> float:
    truth = exact_top_k(x, q, K, index.metric)
    found = index.search(q, K)
    hits = [
        len({int(i) for i, _ in got} & set(want.tolist()))
        for got, want in zip(found, truth, strict=True)
    ]
    return sum(hits) / (K * len(q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--kind", choices=KINDS, default="auto")
    parser.add_argument("--metric", choices=METRICS, default="cosine")
    parser.add_argument("--build-threads", type=int, default=1)
    parser.add_argument("--ef-search", type=int, default=None)
    parser.add_argument("--nprobe", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    n_queries = LATENCY_QUERIES + RECALL_QUERIES
    x, q = make_data(args.n, args.dim, args.clusters, n_queries, args.seed)
    ids = [str(i) for i in range(args.n)]  # id == row, for the recall check
    tuning = {"ef_search": args.ef_search, "nprobe": args.nprobe}
    tuning = {name: value for name, value in tuning.items() if value is not None}

    start = time.perf_counter()
    index = VectorIndex.build(
        x,
        ids,
        metric=args.metric,
        kind=args.kind,
        seed=args.seed,
        build_threads=args.build_threads,
        **tuning,
    )
    build_s = time.perf_counter() - start
    size_mb = index.index_bytes() / 2**20
    p50, p99 = bench_latency(index, q[:LATENCY_QUERIES])
    recall = recall_at_k(index, x, q[LATENCY_QUERIES:])

    start = time.perf_counter()
    labels, _ = kmeans(x, KMEANS_K, seed=args.seed, metric=args.metric)
    kmeans_s = time.perf_counter() - start
    assigned = labels.shape == (args.n,) and bool(
        ((labels >= 0) & (labels < KMEANS_K)).all()
    )

    info = index.describe()
    params = ", ".join(f"{k}={v}" for k, v in info["params"].items())
    print(
        f"\nVectorIndex: n={args.n} dim={args.dim} clusters={args.clusters} "
        f"metric={args.metric}; {info['backend']}/{info['kind']} ({params})"
    )
    rows = [
        ("build", f"{build_s:.2f} s", "", ""),
        ("index size", f"{size_mb:.1f} MB", "", ""),
        ("query p50 (k=10)", f"{p50:.3f} ms", "<= 1 ms", p50 <= 1.0),
        ("query p99 (k=10)", f"{p99:.3f} ms", "", ""),
        ("recall@10", f"{recall:.3f}", ">= 0.95", recall >= 0.95),
        (f"k-means k={KMEANS_K}, all N", f"{kmeans_s:.2f} s", "<= 5 s", kmeans_s <= 5),
        ("every vector assigned", "yes" if assigned else "NO", "yes", assigned),
    ]
    print(f"{'measure':<24}{'value':>12}{'target':>10}{'ok':>6}")
    for name, value, target, ok in rows:
        mark = "" if ok == "" else ("ok" if ok else "MISS")
        print(f"{name:<24}{value:>12}{target:>10}{mark:>6}")


if __name__ == "__main__":
    main()
