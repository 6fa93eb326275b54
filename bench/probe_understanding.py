"""Does a laptop-scale V-JEPA 2 understand motion? Pretrain the tiny model, then probe it and baselines.

    python -m bench.probe_understanding [--steps 2000] [--random-seeds 2] [--world data/sample_world]

1. Pretrains the tiny V-JEPA 2 (``pretrain/tiny``, one CPU worker, global batch 8) for ``--steps`` steps
   on the sample world's mix plus the *training* clips of both probe sets as two more unlabelled sources
   (as VideoMix22M holds SSv2's training videos, on which the paper then probes). Classes, splits and
   the probe recipe are fixed before it starts; no val clip is ever pretrained on.
2. Probes, with the ``eval/tiny-motion`` / ``eval/tiny-appearance`` presets through ``vjepa2-ray probe``
   (Ray Train, clip feature cache, 5 heads, the head chosen on 20 % of the training split, reported on
   val): the pretrained encoder (its ``target_encoder``), random-init tiny encoders (``--random-seeds``
   seeds), the EfficientNet-lite0 image encoder on 4 frames, and, on the motion set, the image encoder
   on the middle frame alone (the set's check: one frame cannot tell its classes apart).
3. The floor: the pretrained encoder beats every random init on motion val by at least 10 points, with
   an exact paired McNemar test (clip by clip) at p < 0.01. The goal (the paper's pattern): the video
   encoder ahead of the image encoder on motion, the image encoder ahead on appearance.

Writes ``bench/results/probe_understanding.json`` (every configuration run, with its numbers) and keeps
the runs under ``--out`` (a rerun reuses a finished pretraining and the feature caches).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from configs import preset_path
from core.config import load_config
from core.redact import setup_logging
from eval.probe import probe
from eval.probe_config import ProbeConfig
from pipelines.sample_world.build import build_sample_world
from pipelines.sample_world.probe_sets import MIDDLE
from train.config import PretrainConfig
from train.pretrain import pretrain

RESULTS = Path(__file__).resolve().parent / "results"
FLOOR_POINTS = 0.10
FLOOR_P = 0.01
EMA = 0.998  # the target encoder's momentum (constant): Meta's 0.99925 suits 100k+ steps, not 1,200
PROBE_SOURCE_WEIGHT = 0.25  # each probe set's training clips in the pretraining mix (the sample world's sum to 1)


def pretrain_encoder(world: Path, out: Path, steps: int) -> tuple[str, dict[str, Any]]:
    """The tiny V-JEPA 2 after ``steps`` steps (reused if that export exists); (export, facts)."""
    export = out / "pretrain" / f"pretrain-tiny-step_{steps:08d}.pt"
    facts: dict[str, Any] = {"steps": steps, "global_batch": 8, "probe_source_weight": PROBE_SOURCE_WEIGHT}
    if export.exists():
        return str(export), {**facts, "reused": True}
    overrides = [f"run.output_dir={out / 'pretrain'}", f"optim.total_steps={steps}", "optim.warmup_steps=100",
                 "optim.start_lr=1.0e-4", "optim.lr=1.0e-3", "optim.final_lr=1.0e-3", f"optim.ema={EMA}",
                 f"trainer.checkpoint_every={max(steps // 4, 1)}", "trainer.log_every=50", "tracking.enabled=false"]
    for name in ("motion", "appearance"):
        manifest = world / "probes" / name / "train.parquet"
        overrides.append(f"data.sources.probe_{name}={{manifest: {manifest}, weight: {PROBE_SOURCE_WEIGHT}}}")
    for name in ("ssv2", "kinetics", "howto100m", "yt1b", "imagenet"):
        overrides.append(f"data.sources.{name}.manifest={world / 'sources' / name / 'manifest.parquet'}")
    cfg = load_config(PretrainConfig, preset_path("pretrain", "tiny"), overrides)
    began = time.perf_counter()
    result = pretrain(cfg)
    losses = result.worker["losses"]
    return result.export_path, {**facts, "seconds": round(time.perf_counter() - began, 1), "reused": False,
                                "loss_first": losses[min(losses)], "loss_last": losses[max(losses)]}


def probe_run(name: str, probe_set: str, world: Path, out: Path, encoder: list[str],
              data: list[str] | None = None) -> dict[str, Any]:
    overrides = [f"run.output_dir={out / 'probes' / name}", "tracking.enabled=false", "run.resume=false",
                 f"data.train={world / 'probes' / probe_set / 'train.parquet'}",
                 f"data.val={world / 'probes' / probe_set / 'val.parquet'}", *encoder, *(data or [])]
    cfg = load_config(ProbeConfig, preset_path("eval", f"tiny-{probe_set}"), overrides)
    out_dir = out / "probes" / name
    if out_dir.exists():  # a fresh probe each time: old checkpoints would be resumed
        import shutil

        shutil.rmtree(out_dir)
    began = time.perf_counter()
    result = probe(cfg).worker["result"]
    return {"name": name, "set": probe_set, "overrides": encoder + (data or []),
            "frames_per_clip": cfg.data.frames_per_clip, "frame_step": cfg.data.frame_step,
            "seconds": round(time.perf_counter() - began, 1),
            **{k: result[k] for k in ("val_top1", "val_top5", "select_top1", "val_top1_max", "best_head", "lr_wd",
                                      "val_clips", "val_missing", "val_correct")}}


def mcnemar(first: str, second: str) -> dict[str, float]:
    """Exact two-sided McNemar test on two runs' per-clip correctness (same clips, same order)."""
    from scipy.stats import binomtest

    if len(first) != len(second):
        raise ValueError(f"paired runs scored {len(first)} and {len(second)} clips")
    only_first = sum(a == "1" and b == "0" for a, b in zip(first, second))
    only_second = sum(a == "0" and b == "1" for a, b in zip(first, second))
    n = only_first + only_second
    p = binomtest(only_first, n, 0.5).pvalue if n else 1.0
    return {"only_first": only_first, "only_second": only_second, "p_value": float(p)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="pretraining steps (global batch 8)")
    parser.add_argument("--random-seeds", type=int, default=2, help="random-init encoders probed")
    parser.add_argument("--world", default="data/sample_world", help="a sample world (built with --probes if absent)")
    parser.add_argument("--out", default="runs/bench-probe-understanding", help="runs directory (kept)")
    args = parser.parse_args(argv)
    setup_logging()
    load = os.getloadavg()
    world, out = Path(args.world).resolve(), Path(args.out).resolve()
    began = time.perf_counter()
    build_sample_world(world, probes=True)
    encoder_path, pretraining = pretrain_encoder(world, out, args.steps)
    runs: list[dict[str, Any]] = []
    encoders = {"pretrained": ["encoder.kind=vjepa2", f"encoder.checkpoint={encoder_path}"],
                **{f"random_seed{s}": ["encoder.kind=random", "encoder.preset=tiny", f"encoder.seed={s}"]
                   for s in range(args.random_seeds)},
                "image": ["encoder.kind=image"]}
    image_frames = ["data.frames_per_clip=4", "data.frame_step=4"]
    for probe_set in ("motion", "appearance"):
        for name, encoder in encoders.items():
            runs.append(probe_run(f"{name}-{probe_set}", probe_set, world, out, encoder,
                                  image_frames if name == "image" else None))
    runs.append(probe_run("image_middle_frame-motion", "motion", world, out, encoders["image"],
                          ["data.frames_per_clip=1", "data.frame_step=1"]))
    by = {r["name"]: r for r in runs}
    pretrained = by["pretrained-motion"]
    versus = {}
    for s in range(args.random_seeds):
        other = by[f"random_seed{s}-motion"]
        test = mcnemar(pretrained["val_correct"], other["val_correct"])
        versus[f"random_seed{s}"] = {"points": pretrained["val_top1"] - other["val_top1"], **test,
                                     "met": pretrained["val_top1"] - other["val_top1"] >= FLOOR_POINTS
                                     and test["p_value"] < FLOOR_P}
    single = by["image_middle_frame-motion"]
    goal = {"video_ahead_on_motion": pretrained["val_top1"] > by["image-motion"]["val_top1"],
            "image_ahead_on_appearance": by["image-appearance"]["val_top1"] > by["pretrained-appearance"]["val_top1"]}
    result = {
        "pretraining": pretraining, "encoder": encoder_path, "load_average_at_start": list(load),
        "seconds": round(time.perf_counter() - began, 1),
        "floor": f"pretrained beats every random init on motion val by >= {FLOOR_POINTS:.0%} points, McNemar "
                 f"p < {FLOOR_P}",
        "floor_met": all(v["met"] for v in versus.values()), "pretrained_vs_random_on_motion": versus,
        "single_frame_check": {"frame": MIDDLE, "val_top1": single["val_top1"], "chance": 0.1,
                               "val_clips": single["val_clips"]},
        "goal": {**goal, "holds": all(goal.values())},
        "runs": [{k: v for k, v in r.items() if k != "val_correct"} for r in runs],
        "val_correct": {r["name"]: r["val_correct"] for r in runs},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "probe_understanding.json").write_text(json.dumps(result, indent=1) + "\n")
    table = ", ".join(f"{r['name']} {100 * r['val_top1']:.1f}%" for r in runs)
    print(f"probe understanding: floor {'met' if result['floor_met'] else 'NOT met'}; goal "
          f"{'holds' if result['goal']['holds'] else 'does not hold'}; {table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
