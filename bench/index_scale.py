"""Building the weighted sampling index over a 10M-row manifest: time and driver peak memory.

The manifest looks like the curated YT1B one (curation writes a ``weight`` per row; the real one has
115M rows): s3-style URIs, media columns, scene bounds, weights, Parquet row groups of ``--group-rows``.
Each measurement runs in a fresh process (peak RSS: ``VmHWM``, reset when the measurement starts):

- ``index``: ``ClipIndex.build`` (row-group metadata + the weight column streamed group by group), then
  one virtual epoch of ``--samples`` draws (Meta's 300 x 3072) and their resolution into clip requests
  (one streamed pass over the row groups they hit);
- ``read_whole``: for scale, what holding the manifest costs (``read_manifest`` of the whole file).

    python -m bench.index_scale [--rows 10000000]

Writes bench/results/index_scale.json and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

log = logging.getLogger("bench.index_scale")
RESULTS = Path(__file__).resolve().parent / "results"
CHUNK_ROWS = 1_000_000


def write_manifest(path: Path, rows: int, group_rows: int, seed: int = 0) -> None:
    """A curated-YT1B-like manifest, written a million rows at a time."""
    rng = np.random.default_rng(seed)
    schema = None
    writer = None
    for start in range(0, rows, CHUNK_ROWS):
        n = min(CHUNK_ROWS, rows - start)
        ids = pa.array(np.arange(start, start + n)).cast(pa.string())
        starts = rng.uniform(0, 300, n)
        table = pa.table({
            "uri": pc.binary_join_element_wise("s3://videos/yt1b/", ids, ".mp4", ""),
            "label": pa.array(np.zeros(n, np.int64)),
            "duration_s": pa.array(rng.uniform(10, 600, n)),
            "fps": pa.array(np.full(n, 30.0)),
            "num_frames": pa.array(rng.integers(300, 18000, n)),
            "bytes": pa.array(rng.integers(10**6, 10**8, n)),
            "start_s": pa.array(starts),
            "end_s": pa.array(starts + rng.uniform(4, 20, n)),
            "weight": pa.array(rng.exponential(1.0, n)),
            "cluster_id": pa.array(rng.integers(0, 1024, n)),
        })
        if writer is None:
            schema = table.schema
            writer = pq.ParquetWriter(path, schema)
        writer.write_table(table, row_group_size=group_rows)
    writer.close()


def reset_peak() -> None:
    """Restart the peak-RSS watermark: a child forked from a big parent starts with the parent's peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb() -> float:
    """VmHWM (peak RSS since :func:`reset_peak`); ``ru_maxrss`` where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def measure_index(manifest: str, samples: int) -> dict[str, Any]:
    from pipelines.config import DataConfig, SourceConfig
    from pipelines.sampling import ClipIndex

    cfg = DataConfig(sources={"yt1b": SourceConfig(manifest, 1.0)}, seed=0)
    reset_peak()
    base = current_rss_mb()
    t0 = time.perf_counter()
    index = ClipIndex.build(cfg)
    build_s = time.perf_counter() - t0
    build_peak = peak_rss_mb()
    t0 = time.perf_counter()
    draws = index.draws(0, 0, samples)
    draw_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    requests = index.resolve(draws)
    resolve_s = time.perf_counter() - t0
    src = index.sources[0]
    return {"build_s": build_s, "draw_s": draw_s, "resolve_s": resolve_s, "samples": samples,
            "row_groups": len(src.rows.group_rows), "rows": src.rows.num_rows,
            "baseline_rss_mb": base, "peak_rss_after_build_mb": build_peak, "peak_rss_mb": peak_rss_mb(),
            "requests_mb": requests.nbytes / 2**20}


def measure_read_whole(manifest: str) -> dict[str, Any]:
    from pipelines.manifest import read_manifest

    reset_peak()
    base = current_rss_mb()
    t0 = time.perf_counter()
    table = read_manifest(manifest)
    return {"read_s": time.perf_counter() - t0, "rows": table.num_rows, "baseline_rss_mb": base,
            "peak_rss_mb": peak_rss_mb(), "table_mb": table.nbytes / 2**20}


def child(kind: str, manifest: str, samples: int) -> dict[str, Any]:
    return measure_index(manifest, samples) if kind == "index" else measure_read_whole(manifest)


def run_child(kind: str, manifest: Path, samples: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.index_scale", "--child", kind, "--manifest", str(manifest),
                          "--samples", str(samples)], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--group-rows", type=int, default=131_072)
    parser.add_argument("--samples", type=int, default=300 * 3072, help="draws in the virtual epoch")
    parser.add_argument("--out", default=str(RESULTS / "index_scale.json"))
    parser.add_argument("--child", choices=("index", "read_whole"), help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.manifest, args.samples)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="index_scale-") as tmp:
        manifest = Path(tmp) / "yt1b.parquet"
        t0 = time.perf_counter()
        write_manifest(manifest, args.rows, args.group_rows)
        log.info("wrote %d rows (%.0f MB) in %.0f s", args.rows, manifest.stat().st_size / 2**20,
                 time.perf_counter() - t0)
        load_before = os.getloadavg()
        index = run_child("index", manifest, args.samples)
        log.info("index: %s", index)
        whole = run_child("read_whole", manifest, args.samples)
        log.info("read whole: %s", whole)
        size_mb = manifest.stat().st_size / 2**20
    result = {
        "benchmark": "index_scale", "rows": args.rows, "group_rows": args.group_rows, "manifest_mb": size_mb,
        "index": index, "read_whole_manifest": whole,
        "index_build_driver_mb": index["peak_rss_after_build_mb"] - index["baseline_rss_mb"],
        "index_driver_mb": index["peak_rss_mb"] - index["baseline_rss_mb"],
        "read_whole_driver_mb": whole["peak_rss_mb"] - whole["baseline_rss_mb"],
        "setup": {"cpu_count": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"index_scale: {args.rows / 1e6:.0f}M rows ({index['row_groups']} row groups): index built in "
          f"{index['build_s']:.1f} s (+{result['index_build_driver_mb']:.0f} MB); {args.samples} draws "
          f"{index['draw_s']:.2f} s, resolved in {index['resolve_s']:.1f} s (driver peak "
          f"+{result['index_driver_mb']:.0f} MB); reading the whole manifest instead: "
          f"+{result['read_whole_driver_mb']:.0f} MB in {whole['read_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
