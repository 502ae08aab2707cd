"""Which approximate-nearest-neighbour index `imgcls index` uses: faiss (HNSW) or usearch
(HNSW), against exact search, on embeddings shaped like EfficientNet-Lite0's.

Embeddings: synthetic, N vectors of 1,280 features (EfficientNet-Lite0's width) drawn
around 1,000 random centres, clipped at zero as pooled ReLU features are, L2-normalised;
200 queries are indexed vectors with a little noise added. Exact search (a matrix
product over every vector) gives the true 10 nearest by cosine similarity; recall@10 is
the share of those an index returns. Per library: build time (2 threads), single-query
latency (one query at a time, as `imgcls search` and /v1/similar ask), recall@10.

    PYTHONPATH=src .venv/bin/python benchmarks/ann_index.py [--sizes 10000 100000]
        [--libraries faiss usearch]

Measured on 2 shared cores of an AMD EPYC (Zen 4), other work running; figures in
docs/loop.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

DIMENSIONS, CENTRES, QUERIES, K = 1280, 1000, 200, 10


def embeddings(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, DIMENSIONS)).astype(np.float32)
    noise = rng.standard_normal((count, DIMENSIONS)).astype(np.float32)
    vectors = np.maximum(centres[rng.integers(0, CENTRES, count)] + 0.7 * noise, 0)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def queries(vectors: np.ndarray, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picked = vectors[rng.choice(len(vectors), QUERIES, replace=False)]
    moved = picked + 0.05 * rng.standard_normal(picked.shape).astype(np.float32)
    return moved / np.linalg.norm(moved, axis=1, keepdims=True)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth, strict=True)]))


def timed_queries(search, asked: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    found = np.stack([search(vector) for vector in asked])
    return found, (time.perf_counter() - start) / len(asked) * 1000


def faiss_hnsw(vectors: np.ndarray, asked: np.ndarray, truth: np.ndarray) -> None:
    import faiss

    from imgcls.similar import EF_CONSTRUCTION, EF_SEARCH, HNSW_M

    faiss.omp_set_num_threads(2)
    start = time.perf_counter()
    index = faiss.IndexHNSWFlat(DIMENSIONS, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    index.add(vectors)
    built = time.perf_counter() - start
    for ef in (64, EF_SEARCH):
        index.hnsw.efSearch = ef
        found, ms = timed_queries(lambda v: index.search(v[None], K)[1][0], asked)
        print(f"  faiss HNSW M={HNSW_M} ef={ef}: build {built:.1f} s, "
              f"{ms:.2f} ms a query, recall@10 {recall(found, truth):.3f}")  # fmt: skip


def usearch_hnsw(vectors: np.ndarray, asked: np.ndarray, truth: np.ndarray) -> None:
    from usearch.index import Index

    for dtype in ("f32", "f16"):
        start = time.perf_counter()
        index = Index(ndim=DIMENSIONS, metric="ip", dtype=dtype)
        index.add(np.arange(len(vectors)), vectors, threads=2)
        built = time.perf_counter() - start
        found, ms = timed_queries(lambda v, index=index: index.search(v, K).keys, asked)
        print(f"  usearch HNSW {dtype}: build {built:.1f} s, "
              f"{ms:.2f} ms a query, recall@10 {recall(found, truth):.3f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--libraries", nargs="+", default=["faiss", "usearch"])
    args = parser.parse_args()
    for count in args.sizes:
        vectors = embeddings(count)
        asked = queries(vectors)
        truth = np.argsort(-(asked @ vectors.T), axis=1)[:, :K]
        _, ms = timed_queries(lambda v, x=vectors: np.argpartition(-(x @ v), K)[:K], asked)
        print(f"{count} embeddings: exact search {ms:.2f} ms a query")
        for library in args.libraries:
            {"faiss": faiss_hnsw, "usearch": usearch_hnsw}[library](vectors, asked, truth)


if __name__ == "__main__":
    main()
