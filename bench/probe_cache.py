"""What the clip feature cache buys a probe grid: the tiny motion probe with and without it.

    python -m bench.probe_cache [--world data/sample_world] [--steps 60]

Three ``vjepa2-ray probe`` runs of the ``eval/tiny-motion`` preset (random tiny encoder, 5 heads, one
Ray Train worker), each ``--steps`` steps of global batch 32 and one validation over select + val:

1. ``uncached``: every training and evaluation clip decoded and encoded on the fly;
2. ``cached_first``: the pre-pass encodes every row once, then the probes read tokens;
3. ``cached_again``: a second grid (other learning rates) over the same encoder and clips, which finds the
   cache built and reads it: what each further grid or sweep trial costs.

``step_speedup`` compares the training steps alone (steps/s from the loop's own timing, warm steps);
``grid_speedup`` compares whole runs, wall clock (the pre-pass counted in ``cached_first``). Writes
``bench/results/probe_cache.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from configs import preset_path
from core.config import load_config
from core.redact import setup_logging
from eval.probe import probe
from eval.probe_config import ProbeConfig
from pipelines.sample_world.build import build_sample_world

RESULTS = Path(__file__).resolve().parent / "results"
OTHER_GRID = "probe.grid.lrs=[4.0e-3,2.5e-3,1.5e-3,8.0e-4,5.0e-4]"  # a second grid: same encoder, same clips


def timed_run(world: Path, out: Path, steps: int, *overrides: str) -> dict[str, Any]:
    motion = world / "probes" / "motion"
    cfg = load_config(ProbeConfig, preset_path("eval", "tiny-motion"), [
        f"data.train={motion / 'train.parquet'}", f"data.val={motion / 'val.parquet'}", f"run.output_dir={out}",
        f"optim.total_steps={steps}", f"trainer.eval_every={steps}", f"trainer.checkpoint_every={steps}",
        "tracking.enabled=false", *overrides])
    began = time.perf_counter()
    worker = probe(cfg).worker
    return {"wall_s": round(time.perf_counter() - began, 1), "steps_per_s": worker["throughput"]["steps_per_s"],
            "data_wait_frac": worker["throughput"]["data_wait_frac"],
            "val_top1": worker["result"]["val_top1"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=Path("data/sample_world"), help="sample world (built if absent)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per run (global batch 32)")
    args = parser.parse_args(argv)
    setup_logging()
    load = os.getloadavg()
    world = args.world.resolve()
    build_sample_world(world, probes=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-probe-cache-"))
    try:
        cache = f"cache.dir={tmp / 'cache'}"
        runs = {"uncached": timed_run(world, tmp / "uncached", args.steps, "cache.enabled=false"),
                "cached_first": timed_run(world, tmp / "cached_first", args.steps, cache),
                "cached_again": timed_run(world, tmp / "cached_again", args.steps, cache, OTHER_GRID)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "config": "configs/eval/tiny-motion.yaml", "steps": args.steps, "global_batch": 32, "workers": 1,
        "load_average_at_start": list(load), "runs": runs,
        "step_speedup": runs["cached_first"]["steps_per_s"] / runs["uncached"]["steps_per_s"],
        "grid_speedup_first": runs["uncached"]["wall_s"] / runs["cached_first"]["wall_s"],
        "grid_speedup": runs["uncached"]["wall_s"] / runs["cached_again"]["wall_s"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "probe_cache.json").write_text(json.dumps(result, indent=1) + "\n")
    walls = f"{runs['uncached']['wall_s']} s -> {runs['cached_again']['wall_s']} s"
    print(f"probe cache: steps {result['step_speedup']:.2f}x faster; a grid over a built cache "
          f"{result['grid_speedup']:.2f}x faster ({walls}; the first, pre-pass included, "
          f"{result['grid_speedup_first']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
