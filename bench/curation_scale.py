"""Benchmark: spherical k-means (k=1024, 10 iterations) + assignment on 100k / 300k / 1M x 256 float32
embeddings read from a memory-mapped ``.npy``, through the functions ``vjepa2-ray curate`` calls
(curation.kmeans.fit / assign, plus writing the assignment shard) against calling FAISS directly on the
same memmap.

Each case runs in a fresh process so its peak RSS is its own, ``--repeats`` times alternating with the
FAISS baseline; the fastest run of each counts (other work shares the machine). Ray start-up (what a
curate run pays once before any stage) is measured apart. Writes bench/results/curation_scale.json and prints one line.

    python bench/curation_scale.py [--sizes 100000 300000 1000000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "curation_scale.json"
K, NITER, DIM, SEED = 1024, 10, 256, 1234


def make_embeddings(path: Path, n: int, dim: int, seed: int = 0, chunk: int = 100_000) -> None:
    """Unit vectors around 4096 random directions (real embeddings are clustered, not Gaussian noise)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((4096, dim)).astype(np.float32)
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        v = centers[rng.integers(0, len(centers), m)] + 0.6 * rng.standard_normal((m, dim)).astype(np.float32)
        x[start : start + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    x.flush()


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would carry the parent's peak across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(path: str, n: int, out_dir: str) -> dict:
    """What the pipeline does: subsample + fit, assign in batches, write the assignment shard."""
    import pyarrow as pa

    from curation import kmeans, shards

    x = np.load(path, mmap_mode="r")[:n]
    t0, c0 = time.perf_counter(), time.process_time()
    codebook, stats = kmeans.fit(x, K, niter=NITER, seed=SEED)
    t1 = time.perf_counter()
    labels, sims = kmeans.assign(x, codebook)
    t2 = time.perf_counter()
    table = pa.table({"cluster_id": labels, "cluster_sim": sims})
    shards.write_shard(table, os.path.join(out_dir, "part-00000.parquet"))
    t3 = time.perf_counter()
    return {"fit_s": t1 - t0, "assign_s": t2 - t1, "write_s": t3 - t2, "total_s": t3 - t0,
            "cpu_s": time.process_time() - c0, "n_train": stats["n_train"], "objective": stats["objective"],
            "peak_rss_mb": _peak_rss_mb()}


def run_faiss(path: str, n: int, out_dir: str) -> dict:
    """FAISS alone on the same memmap: Kmeans.train (its own subsampling) and one index search."""
    import faiss

    x = np.load(path, mmap_mode="r")[:n]
    t0, c0 = time.perf_counter(), time.process_time()
    km = faiss.Kmeans(DIM, K, niter=NITER, seed=SEED, spherical=True)
    km.train(x)
    t1 = time.perf_counter()
    _, labels = km.index.search(x, 1)
    t2 = time.perf_counter()
    return {"fit_s": t1 - t0, "assign_s": t2 - t1, "total_s": t2 - t0, "cpu_s": time.process_time() - c0,
            "objective": float(km.obj[-1]), "peak_rss_mb": _peak_rss_mb()}


def _child(fn_name: str, args: tuple, threads: int, queue: mp.Queue) -> None:
    import faiss

    faiss.omp_set_num_threads(threads)
    queue.put(globals()[fn_name](*args))


def in_fresh_process(fn_name: str, args: tuple, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn_name, args, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def ray_startup_s() -> float:
    """``ray.init`` (local, no dashboard) plus the first task: paid once per curate run."""
    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.get(ray.remote(lambda: 1).remote())
    elapsed = time.perf_counter() - t0
    ray.shutdown()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    # 1 thread by default: on a shared box OpenMP threads spin while descheduled, which inflates both
    # wall and CPU time at random; one thread per process keeps the comparison fair.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cases = []
    with tempfile.TemporaryDirectory(prefix="curation-bench-") as tmp:
        path = Path(tmp) / "emb.npy"
        t0 = time.perf_counter()
        make_embeddings(path, max(args.sizes), DIM)
        print(f"wrote {max(args.sizes)} x {DIM} float32 memmap in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for n in sorted(args.sizes):
            runs: dict[str, list[dict]] = {"run_ours": [], "run_faiss": []}
            for rep in range(args.repeats):  # alternate the order, keep the fastest: the machine is shared
                for fn in (list(runs) if rep % 2 == 0 else list(runs)[::-1]):
                    runs[fn].append(in_fresh_process(fn, (str(path), n, tmp), args.threads))
            ours, direct = (min(runs[fn], key=lambda r: r["total_s"]) for fn in runs)
            ours["assign_min_s"] = min(r["assign_s"] for r in runs["run_ours"])
            cases.append({"n": n, "ours": ours, "faiss": direct,
                          "overhead_vs_faiss": (ours["cpu_s"] - direct["cpu_s"]) / direct["cpu_s"],
                          "overhead_vs_faiss_wall": (ours["total_s"] - direct["total_s"]) / direct["total_s"],
                          "all_total_s": {fn[4:]: [r["total_s"] for r in rs] for fn, rs in runs.items()}})
            print(f"n={n}: ours {ours['total_s']:.1f} s (fit {ours['fit_s']:.1f}, assign {ours['assign_s']:.1f}), "
                  f"faiss {direct['total_s']:.1f} s, rss {ours['peak_rss_mb']:.0f} MB", file=sys.stderr)
    ns = np.array([c["n"] for c in cases], float)
    assign = np.array([c["ours"]["assign_min_s"] for c in cases])
    slope, intercept = np.polyfit(ns, assign, 1)
    exponent = float(np.polyfit(np.log(ns), np.log(assign), 1)[0]) if len(ns) > 1 else float("nan")
    result = {
        "benchmark": "curation_scale", "k": K, "niter": NITER, "dim": DIM, "threads": args.threads,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "note": "shared 2-core machine: wall times are noisy (fastest of --repeats kept); cpu_s is steadier",
        "repeats": args.repeats,
        "cases": cases,
        "assign_seconds_per_million": float(slope * 1e6), "assign_intercept_s": float(intercept),
        "assign_loglog_exponent": exponent,
        # CPU seconds: on a shared box wall time varies 3x between identical runs (see all_total_s)
        "overhead_vs_faiss": max(c["overhead_vs_faiss"] for c in cases),
        "overhead_vs_faiss_wall": max(c["overhead_vs_faiss_wall"] for c in cases),
        "ray_startup_s": ray_startup_s(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    sizes = "/".join(str(c["n"]) for c in cases)
    totals = "/".join(f"{c['ours']['total_s']:.1f}" for c in cases)
    peak = max(c["ours"]["peak_rss_mb"] for c in cases)
    print(f"curation_scale: k={K} x{NITER} it, n={sizes}: total {totals} s, assign {slope * 1e6:.1f} s per 1M "
          f"(log-log exponent {exponent:.2f}), overhead vs faiss {result['overhead_vs_faiss']:+.3f} cpu / "
          f"{result['overhead_vs_faiss_wall']:+.3f} wall, "
          f"peak RSS {peak:.0f} MB, ray start-up {result['ray_startup_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
