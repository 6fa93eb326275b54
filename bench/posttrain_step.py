"""V-JEPA 2-AC post-training on CPU with the tiny preset: loop overhead, data wait, and the feature cache.

    python -m bench.posttrain_step [--world data/sample_world] [--steps 12] [--stream-steps 40]

1. Loop overhead: steps/s of the Ray Train loop (1 worker, ``train.posttrain.posttrain``) against the same
   step (``PosttrainRecipe.setup`` + ``PosttrainRecipe.step``) in a plain process, both fed the same
   pre-decoded clips and encoding them with the frozen encoder, so only Ray Train, reporting and
   checkpointing differ (``ratio_vs_plain``, floor 0.9). The plain process runs before and after the Ray
   loop; their mean is the reference.
2. Data wait: a run fed by the streaming episode pipeline (decode actors working while the step runs):
   fraction of warm step time spent waiting for data, and clips/s.
3. Feature cache: the plain step reading cached tokens against the plain step encoding the same clips
   on the fly (``cache_speedup``, floor 1.5), and what the pre-pass cost.

Writes ``bench/results/posttrain_step.json`` and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from configs import preset_path
from core.config import load_config
from core.ray_logs import quiet_data_context
from core.redact import setup_logging
from pipelines.episodes.cache import build_feature_cache
from pipelines.episodes.clips import build_episode_dataset
from train.health import StepTiming, Throughput
from train.optim import plan_batch
from train.posttrain import posttrain, resolve
from train.posttrain_config import PosttrainConfig
from train.posttrain_recipe import PosttrainRecipe

log = logging.getLogger("bench.posttrain_step")
RESULTS = Path(__file__).resolve().parent / "results"


def config(world: Path, out: Path, *overrides: str) -> PosttrainConfig:
    return load_config(PosttrainConfig, preset_path("posttrain", "tiny"), [
        f"data.dataset={world / 'robot'}", "trainer.num_workers=1", "tracking.enabled=false", "trainer.eval_every=0",
        "optim.warmup_steps=1", "optim.anneal_steps=1", f"run.output_dir={out}", *overrides])


def plain_steps(cfg: PosttrainConfig, batches: list[dict], steps: int) -> dict:
    """The training step in this process, no Ray: the reference for the loop's overhead."""
    recipe = PosttrainRecipe(resolve(cfg))
    recipe.setup(world_size=1, rank=0)
    micro = iter(batches)
    throughput = Throughput()
    for step in range(steps):
        began = time.perf_counter()
        out = recipe.step(step, micro)
        throughput.record(StepTiming(time.perf_counter() - began, 0.0, out.clips, out.tokens))
    return throughput.summary()


def collated(cfg: PosttrainConfig, steps: int) -> tuple[object, list[dict]]:
    """The first ``steps + 1`` global batches of the stream, decoded once: a Ray Dataset and the same
    rows collated for the plain loop."""
    resolved = resolve(cfg)
    recipe = PosttrainRecipe(resolved)
    plan = plan_batch(cfg.optim, cfg.trainer)
    dataset = build_episode_dataset(resolved.data, recipe.episodes("train"), 0,
                                    (steps + 1) * plan.global_batch).materialize()
    rows = dataset.iter_batches(batch_size=plan.batch_per_worker, batch_format="numpy", drop_last=True)
    return dataset, [recipe.collate(batch, i) for i, batch in enumerate(rows)]


def loop_overhead(world: Path, tmp: Path, steps: int) -> dict:
    cfg = config(world, tmp / "loop", f"optim.total_steps={steps}", f"trainer.checkpoint_every={steps}",
                 f"trainer.log_every={steps}")
    dataset, batches = collated(cfg, steps)
    before = plain_steps(cfg, batches, steps)
    ray_run = posttrain(cfg, dataset=dataset)
    after = plain_steps(cfg, batches, steps)
    ray_tp = ray_run.worker["throughput"]
    plain_sps = (before["steps_per_s"] + after["steps_per_s"]) / 2
    return {"steps": steps, "ray_steps_per_s": ray_tp["steps_per_s"], "plain_steps_per_s": plain_sps,
            "plain_steps_per_s_before_after": [before["steps_per_s"], after["steps_per_s"]],
            "ratio_vs_plain": ray_tp["steps_per_s"] / plain_sps}


def streaming(world: Path, tmp: Path, steps: int) -> dict:
    cfg = config(world, tmp / "stream", f"optim.total_steps={steps}", f"trainer.checkpoint_every={steps}")
    tp = posttrain(cfg).worker["throughput"]
    return {"steps": steps, "data_wait_frac": tp["data_wait_frac"], "clips_per_s": tp["clips_per_s"],
            "steps_per_s": tp["steps_per_s"]}


def cache_speedup(world: Path, tmp: Path, steps: int) -> dict:
    cfg = config(world, tmp / "cache", f"optim.total_steps={steps}")
    _, live = collated(cfg, steps)
    began = time.perf_counter()
    resolved = resolve(cfg)
    cache = build_feature_cache(resolved.data, resolved.encoder, resolved.cache, str(tmp / "features"))
    prepass_s = time.perf_counter() - began
    cached_cfg = replace(cfg, data=replace(cfg.data, cache_dir=cache.root))
    _, cached = collated(cached_cfg, steps)
    on_the_fly, from_cache = plain_steps(cfg, live, steps), plain_steps(cached_cfg, cached, steps)
    return {"steps": steps, "on_the_fly_steps_per_s": on_the_fly["steps_per_s"],
            "cached_steps_per_s": from_cache["steps_per_s"],
            "cache_speedup": from_cache["steps_per_s"] / on_the_fly["steps_per_s"], "prepass_s": prepass_s,
            "cached_frames": sum(cache.episodes.values()), "cache_dtype": cache.dtype}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=Path("data/sample_world"),
                        help="sample world with its robot part (built into a temp dir if missing)")
    parser.add_argument("--steps", type=int, default=12, help="steps of the overhead and cache comparisons")
    parser.add_argument("--stream-steps", type=int, default=40, help="steps of the streaming data-wait run")
    args = parser.parse_args(argv)
    setup_logging()
    import ray

    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vjepa2-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        world = args.world.resolve()
        if not (world / "robot" / "episodes.parquet").is_file():
            from pipelines.sample_world import build_sample_world

            world = tmp / "sample_world"
            build_sample_world(world, seed=0)
        ray.init(address="local", num_cpus=4, object_store_memory=400 * 1024**2, include_dashboard=False)
        quiet_data_context()
        started = time.perf_counter()
        result = {"device": "cpu", "torch_threads_per_worker": 1, "config": "configs/posttrain/tiny.yaml",
                  "load_average_at_start": list(load), "loop": loop_overhead(world, tmp, args.steps),
                  "stream": streaming(world, tmp, args.stream_steps), "cache": cache_speedup(world, tmp, args.steps)}
        result["ratio_vs_plain"] = result["loop"]["ratio_vs_plain"]
        result["data_wait_frac"] = result["stream"]["data_wait_frac"]
        result["cache_speedup"] = result["cache"]["cache_speedup"]
        result["wall_s"] = time.perf_counter() - started
        ray.shutdown()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "posttrain_step.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"posttrain_step: ratio_vs_plain {result['ratio_vs_plain']:.2f} ({result['loop']['ray_steps_per_s']:.2f} vs "
          f"{result['loop']['plain_steps_per_s']:.2f} steps/s); data wait {100 * result['data_wait_frac']:.1f}% at "
          f"{result['stream']['clips_per_s']:.1f} clips/s; cache_speedup {result['cache_speedup']:.2f} "
          f"(pre-pass {result['cache']['prepass_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
