"""Simulated Franka play collection (``vjepa2-ray collect``): episodes per second with 1 and 2 Ray workers.

    python -m bench.collect [--episodes 4] [--steps 200]

Runs the collect stage's own path (``pipelines.robot_sim.collect.collect``: one Ray task per episode,
PyBullet on the CPU, frames rendered at the recording rate, mp4 + Parquet written) with ``workers=1`` and
then ``workers=2`` on the same episodes, in one process, and reports episodes/s, recorded frames/s and the
2-worker / 1-worker scaling (2 cores here: at most 2). Writes ``bench/results/collect.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from core.redact import setup_logging
from pipelines.robot_sim.collect import CollectConfig, collect

RESULTS = Path(__file__).resolve().parent / "results"


def timed(workers: int, episodes: int, steps: int, out: Path) -> dict:
    began = time.perf_counter()
    result = collect(CollectConfig(episodes=episodes, steps=steps, workers=workers, out=str(out)))
    seconds = time.perf_counter() - began
    return {"workers": workers, "seconds": seconds, "episodes_per_s": episodes / seconds,
            "frames_per_s": result.summary["frames"] / seconds, "frames": result.summary["frames"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=4, help="episodes per measurement")
    parser.add_argument("--steps", type=int, default=200, help="control steps per episode (25 Hz)")
    args = parser.parse_args(argv)
    setup_logging()
    import ray

    load = os.getloadavg()
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    with tempfile.TemporaryDirectory(prefix="vjepa2-bench-collect-") as tmp:
        timed(1, 1, args.steps, Path(tmp) / "warmup")  # the first task pays for importing PyBullet
        one = timed(1, args.episodes, args.steps, Path(tmp) / "one")
        two = timed(2, args.episodes, args.steps, Path(tmp) / "two")
    ray.shutdown()
    result = {"episodes": args.episodes, "steps": args.steps, "record_hz": CollectConfig().record_hz,
              "load_average_at_start": list(load), "one_worker": one, "two_workers": two,
              "episodes_per_s_1_worker": one["episodes_per_s"], "episodes_per_s_2_workers": two["episodes_per_s"],
              "frames_per_s": two["frames_per_s"], "scaling": two["episodes_per_s"] / one["episodes_per_s"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "collect.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"collect: {one['episodes_per_s']:.3f} episodes/s with 1 worker, {two['episodes_per_s']:.3f} with 2 "
          f"(scaling {result['scaling']:.2f}); {two['frames_per_s']:.1f} frames/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
