"""Clips/s delivered to a consumer: the Ray pipeline vs a single-process loop vs Meta's DataLoader scheme.

The same list of clip requests (drawn once by the clip index over the sample world, no repeats) goes
through three loaders, each in a fresh process pinned to the same cores, feeding the same consumer
loop (batches of ``--batch`` clips):

1. ``ray``: pipelines.dataset's Ray Data pipeline, 2 decode actors, its best decoder (``--ray-decoder``);
2. ``single``: one process calling the same decode+augment code with decord;
3. ``meta_loader``: Meta's scheme, a PyTorch DataLoader (2 workers) over a dataset that opens one decord
   reader per sample (as ``VideoDataset.loadvideo_decord``) and augments in the worker.

All three run the same ``pipelines.clips.make_clip`` per request, so their output tensors must be
identical; that is checked on every ``--check-every``-th request. Throughput is steady state (after
the first ``--warmup`` batches); start-up (to the first batch, Ray's ``init`` included) is separate.
CPU-seconds per clip and the peak PSS of the whole process tree are sampled with psutil. The Ray
pipeline runs again on a manifest 10x longer (every row repeated) with 10x the requests: its peak
memory must stay within 10% of the short run (streaming, nothing accumulates).

    python -m bench.data_throughput [--world data/sample_world] [--requests 400]

Writes bench/results/data_throughput.json and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from core.config import from_dict
from pipelines.clips import ClipRequest, make_clip
from pipelines.config import ClipConfig, DataConfig, videomix22m_sources
from pipelines.sampling import ClipIndex

log = logging.getLogger("bench.data_throughput")
RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("ray", "single", "meta_loader")
MAX_CHECKED = 20  # clips kept per run for the cross-check (the same in the short and long runs)


class TreeMonitor:
    """Samples CPU time and PSS of this process and all its descendants (Ray's raylet and workers too)."""

    def __init__(self, every_s: float = 1.0):  # PSS of ~12 processes costs ~20 ms CPU per sample
        self.root = psutil.Process()
        self.every_s = every_s
        self.cpu: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self.peak_pss = 0
        self.peak_rss = 0
        self.own_cpu = 0.0  # this sampling thread's CPU, not charged to the loader
        self.peak_parts: dict[str, float] = {}  # PSS MB by process name at the peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> float:
        """Update per-process CPU and memory; return the tree's CPU seconds so far."""
        pss = rss = 0
        parts: dict[str, float] = {}
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                mem = proc.memory_full_info()
                name = proc.name() if proc.pid != self.root.pid else "consumer"
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            self.cpu[proc.pid] = times.user + times.system
            self.names[proc.pid] = name
            pss += getattr(mem, "pss", mem.rss)
            rss += mem.rss
            parts[name] = parts.get(name, 0.0) + getattr(mem, "pss", mem.rss) / 2**20
        if pss > self.peak_pss:
            self.peak_parts = dict(sorted(parts.items(), key=lambda kv: -kv[1]))
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_rss = max(self.peak_rss, rss)
        return sum(self.cpu.values()) - self.own_cpu

    def cpu_by_process(self, since: dict[int, float]) -> dict[str, float]:
        """CPU seconds per process name since the ``since`` snapshot of ``self.cpu`` (where the time went;
        "consumer" includes this monitor's own sampling)."""
        out: dict[str, float] = {}
        for pid, cpu in self.cpu.items():
            out[self.names[pid]] = out.get(self.names[pid], 0.0) + cpu - since.get(pid, 0.0)
        return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            t0 = time.thread_time()
            self.sample()
            self.own_cpu += time.thread_time() - t0

    def __enter__(self) -> TreeMonitor:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- loaders (run inside the child process)

def _requests(spec: dict) -> list[dict]:
    return pq.read_table(spec["requests"]).to_pylist()


def ray_batches(spec: dict, cfg: DataConfig, index: ClipIndex, marks: dict):
    import ray

    from pipelines.dataset import decode_dataset

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=len(spec["cores"]), object_store_memory=spec["object_store_mb"] * 2**20,
             include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    marks["init_s"] = time.perf_counter() - t0
    ds = decode_dataset(pq.read_table(spec["requests"]), cfg, index, epoch=0)
    yield from ds.iter_batches(batch_size=spec["batch"], batch_format="numpy")
    ray.shutdown()


def single_batches(spec: dict, cfg: DataConfig, index: ClipIndex, marks: dict):
    from pipelines.dataset import ClipDecoder

    decoder = ClipDecoder(cfg, index, epoch=0)
    requests = pq.read_table(spec["requests"])
    for at in range(0, requests.num_rows, spec["batch"]):
        part = requests.slice(at, spec["batch"])
        yield decoder({name: part.column(name).to_numpy(zero_copy_only=False) for name in part.column_names})


class MetaStyleDataset:
    """Meta's VideoDataset shape: __getitem__ opens a decord reader for its file, samples, augments."""

    def __init__(self, requests: list[dict], cfg: DataConfig, kinds: list[str]):
        self.requests = requests
        self.cfg = cfg
        self.kinds = kinds

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.requests[i]
        request = ClipRequest(r["uri"], r["window_seed"], self.kinds[r["source"]], r["start_s"], r["end_s"])
        return {"clip": make_clip(request, self.cfg), "source": r["source"], "label": r["label"],
                "sample_id": r["sample_id"]}


def meta_loader_batches(spec: dict, cfg: DataConfig, index: ClipIndex, marks: dict):
    import torch

    dataset = MetaStyleDataset(_requests(spec), cfg, index.kinds)
    loader = torch.utils.data.DataLoader(dataset, batch_size=spec["batch"], num_workers=2, shuffle=False,
                                         persistent_workers=False, pin_memory=False)
    for batch in loader:
        yield {k: v.numpy() for k, v in batch.items()}


LOADERS = {"ray": ray_batches, "single": single_batches, "meta_loader": meta_loader_batches}


def run_variant(spec: dict, variant: str, out: Path) -> dict[str, Any]:
    """Consume every batch of ``variant``; timings, CPU, memory and the clips to cross-check."""
    os.sched_setaffinity(0, spec["cores"])  # children (DataLoader workers, raylet, Ray workers) inherit it
    cfg = from_dict(DataConfig, spec["data"])
    if variant != "ray":
        cfg = replace(cfg, decoder="decord")
    index = ClipIndex.build(cfg)
    marks: dict[str, float] = {}
    times, sizes, kept = [], [], {}
    with TreeMonitor() as monitor:
        start = time.perf_counter()
        cpu0 = monitor.sample()
        steady_cpu0, steady_snapshot = None, {}
        for batch in LOADERS[variant](spec, cfg, index, marks):
            times.append(time.perf_counter() - start)
            sizes.append(len(batch["sample_id"]))
            for i, sample_id in enumerate(batch["sample_id"].tolist()):
                if sample_id % spec["check_every"] == 0 and len(kept) < MAX_CHECKED:  # bounded: not a leak
                    kept[str(sample_id)] = np.array(batch["clip"][i])
            if len(times) == spec["warmup"]:
                steady_cpu0 = monitor.sample()
                steady_snapshot = dict(monitor.cpu)
        cpu_end = monitor.sample()
    np.savez_compressed(out.with_suffix(".npz"), **kept)
    w = spec["warmup"]
    steady_clips = sum(sizes[w:])
    return {
        "clips": int(sum(sizes)), "first_batch_s": times[0], "init_s": marks.get("init_s", 0.0),
        "total_s": times[-1], "one_pass_clips_per_s": sum(sizes) / times[-1],
        "steady_clips_per_s": steady_clips / (times[-1] - times[w - 1]),
        "cpu_s_per_clip": (cpu_end - cpu0) / sum(sizes),
        "steady_cpu_s_per_clip": (cpu_end - steady_cpu0) / steady_clips,
        "peak_pss_mb": monitor.peak_pss / 2**20, "peak_rss_mb": monitor.peak_rss / 2**20,
        "peak_pss_by_process_mb": {k: round(v, 1) for k, v in monitor.peak_parts.items()},
        "steady_cpu_s_by_process": monitor.cpu_by_process(steady_snapshot),
        "decoder": cfg.decoder,
    }


# ---------------------------------------------------------------- driver (parent process)

def world_config(world: Path, args: argparse.Namespace, repeat: int = 1, tmp: Path | None = None) -> DataConfig:
    sources = videomix22m_sources()
    for name, src in sources.items():
        manifest = world / "sources" / name / "manifest.parquet"
        if repeat > 1:
            table = pq.read_table(manifest)
            manifest = tmp / f"{name}-x{repeat}.parquet"
            pq.write_table(pa.concat_tables([table] * repeat), manifest)
        src.manifest = str(manifest)
    return DataConfig(sources=sources, clip=ClipConfig(frames_per_clip=args.frames, fps=args.fps, crop_size=args.crop),
                      decoder=args.ray_decoder, num_decode_workers=2, decode_cpus=0.5,
                      decode_batch_size=args.decode_batch, seed=0)


def write_requests(cfg: DataConfig, n: int, path: Path) -> None:
    index = ClipIndex.build(cfg)
    pq.write_table(index.resolve(index.draws(0, 0, n)), path)


def spawn(spec: dict, variant: str, tmp: Path, tag: str) -> dict[str, Any]:
    spec_path = tmp / f"{tag}.spec.json"
    out = tmp / f"{tag}.json"
    spec_path.write_text(json.dumps(spec))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.data_throughput", "--child", variant, "--spec", str(spec_path),
                    "--child-out", str(out)], check=True, cwd=Path(__file__).resolve().parents[1])
    result = json.loads(out.read_text())
    log.info("%s: %.1f clips/s steady, first batch %.2f s, peak PSS %.0f MB (%.0f s wall)", tag,
             result["steady_clips_per_s"], result["first_batch_s"], result["peak_pss_mb"], time.perf_counter() - t0)
    return result


def same_clips(tmp: Path, a: str, b: str) -> tuple[int, bool]:
    x, y = np.load(tmp / f"{a}.npz"), np.load(tmp / f"{b}.npz")
    keys = sorted(set(x.files) & set(y.files))
    return len(keys), bool(keys) and all(np.array_equal(x[k], y[k]) for k in keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="", help="sample world root (default: build one in a temp dir)")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3, help="batches before steady state")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--fps", type=float, default=4.0)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--ray-decoder", default="decord", choices=("decord", "pyav"))
    parser.add_argument("--decode-batch", type=int, default=16, help="data.decode_batch_size (decode_block_mb caps it)")
    parser.add_argument("--long-factor", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each is reported")
    parser.add_argument("--check-every", type=int, default=20)
    parser.add_argument("--object-store-mb", type=int, default=1024,
                        help="Ray's object store; a full store makes the raylet trigger gc.collect() everywhere")
    parser.add_argument("--cores", default="", help="comma-separated CPU ids (default: all allowed)")
    parser.add_argument("--out", default=str(RESULTS / "data_throughput.json"))
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.child:
        out = Path(args.child_out)
        out.write_text(json.dumps(run_variant(json.loads(Path(args.spec).read_text()), args.child, out)))
        return 0

    cores = [int(c) for c in args.cores.split(",")] if args.cores else sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="data_throughput-") as tmp_name:
        tmp = Path(tmp_name)
        world = Path(args.world) if args.world else tmp / "world"
        if not args.world:
            from pipelines.sample_world import build_sample_world

            build_sample_world(world, seed=0)
        load_before = os.getloadavg()
        specs = {}
        for tag, repeat in (("short", 1), ("long", args.long_factor)):
            cfg = world_config(world, args, repeat, tmp)
            write_requests(cfg, args.requests * repeat, tmp / f"requests-{tag}.parquet")
            specs[tag] = {"data": asdict(cfg), "requests": str(tmp / f"requests-{tag}.parquet"), "batch": args.batch,
                          "warmup": args.warmup, "check_every": args.check_every, "cores": cores,
                          "object_store_mb": args.object_store_mb}
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for round_ in range(args.rounds):  # interleaved, so a burst of load on the shared machine hits all
            for variant in VARIANTS:
                runs[variant].append(spawn(specs["short"], variant, tmp, f"{variant}-short-{round_}"))
        results: dict[str, Any] = {v: max(r, key=lambda x: x["steady_clips_per_s"]) for v, r in runs.items()}
        for v in VARIANTS:
            results[v]["all_rounds_steady_clips_per_s"] = [r["steady_clips_per_s"] for r in runs[v]]
        results["ray_long"] = spawn(specs["long"], "ray", tmp, "ray-long")
        checks = {f"ray_vs_{v}": same_clips(tmp, "ray-short-0", f"{v}-short-0") for v in ("single", "meta_loader")}
    ray, single, meta = results["ray"], results["single"], results["meta_loader"]
    short_pss = float(np.mean([r["peak_pss_mb"] for r in runs["ray"]]))
    # Rounds are interleaved, so each round's ray/meta pair saw the same machine load.
    paired = [r["steady_clips_per_s"] / m["steady_clips_per_s"] for r, m in zip(runs["ray"], runs["meta_loader"])]
    summary = {
        "benchmark": "data_throughput",
        "ratio_vs_meta_loader": ray["steady_clips_per_s"] / meta["steady_clips_per_s"],
        "ratio_vs_meta_loader_per_round": paired,
        "ratio_vs_meta_loader_median_round": float(np.median(paired)),
        "ratio_vs_single_process": ray["steady_clips_per_s"] / single["steady_clips_per_s"],
        "one_pass_ratio_vs_meta_loader": ray["one_pass_clips_per_s"] / meta["one_pass_clips_per_s"],
        "floor": {"ratio_vs_meta_loader": 1.0, "long_vs_short_peak_pss": 1.10},
        "long_vs_short_peak_pss": results["ray_long"]["peak_pss_mb"] / short_pss,
        "identical_outputs": {k: {"clips_compared": n, "identical": ok} for k, (n, ok) in checks.items()},
        "variants": results,
        "setup": {"requests": args.requests, "batch": args.batch, "warmup_batches": args.warmup,
                  "frames": args.frames, "fps": args.fps, "crop": args.crop, "decode_batch": args.decode_batch,
                  "ray_decoder": args.ray_decoder, "decode_workers": 2,
                  "decode_calls_per_worker": specs["short"]["data"]["decode_calls_per_worker"],
                  "object_store_mb": args.object_store_mb, "meta_loader_workers": 2, "cores": cores,
                  "long_factor": args.long_factor, "rounds": args.rounds, "cpu_count": os.cpu_count(),
                  "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"data_throughput: ray {ray['steady_clips_per_s']:.1f} clips/s, single {single['steady_clips_per_s']:.1f}, "
          f"meta_loader {meta['steady_clips_per_s']:.1f} -> ratio_vs_meta_loader "
          f"{summary['ratio_vs_meta_loader']:.2f} (median round {summary['ratio_vs_meta_loader_median_round']:.2f}); "
          f"peak PSS ray {ray['peak_pss_mb']:.0f} MB "
          f"(x{args.long_factor} manifest: {summary['long_vs_short_peak_pss']:.2f}x), "
          f"meta {meta['peak_pss_mb']:.0f} MB; "
          f"outputs identical: {all(ok for _, ok in checks.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
