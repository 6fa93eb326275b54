"""The post-training quality check at laptop scale: does the AC predictor beat copying the last frame and
use its actions on held-out simulated episodes?

    python -m bench.posttrain_quality [--steps 1500] [--world data/sample_world]

Runs ``vjepa2-ray posttrain --config posttrain/quality`` (the tiny AC predictor over the frozen
EfficientNet-lite0 image encoder, tokens from the feature cache, Ray Train, one CPU worker) on the sample
world's robot set (9 training episodes, 3 held out), then reads the run's ``quality.json``: the held-out
1-step and 2-step rollout L1 of the predictor, of copying the last frame and of the predictor fed
shuffled actions, at every validation, and the verdict of the issue's bar (beat copying at both
horizons, beat shuffled actions by >= 10 % relative L1). Writes ``bench/results/posttrain_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from configs import preset_path
from core.config import load_config
from core.redact import setup_logging
from train.posttrain import posttrain
from train.posttrain_config import PosttrainConfig

RESULTS = Path(__file__).resolve().parent / "results"
GAINS = ("val_gain_vs_copy_1step", "val_gain_vs_copy_2step", "val_gain_vs_shuffled_1step",
         "val_gain_vs_shuffled_2step")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps (the preset's schedule, stretched)")
    parser.add_argument("--world", default="data/sample_world", help="a sample world (vjepa2-ray sample-world)")
    args = parser.parse_args(argv)
    setup_logging()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vjepa2-bench-quality-") as tmp:
        overrides = [f"data.dataset={Path(args.world).resolve() / 'robot'}", f"optim.total_steps={args.steps}",
                     f"optim.anneal_steps={args.steps // 3}", f"trainer.eval_every={args.steps // 6}",
                     f"trainer.checkpoint_every={args.steps}", f"run.output_dir={tmp}/run", "tracking.enabled=false"]
        cfg = load_config(PosttrainConfig, preset_path("posttrain", "quality"), overrides)
        began = time.perf_counter()
        result = posttrain(cfg)
        seconds = time.perf_counter() - began
    quality = result.worker["quality"]
    final = {k: quality[k] for k in ("val_l1_1step", "val_l1_2step", "val_copy_l1_1step", "val_copy_l1_2step",
                                     "val_shuffled_l1_1step", "val_shuffled_l1_2step", *GAINS)}
    out = {"preset": "posttrain/quality", "encoder": cfg.encoder.kind, "steps": args.steps,
           "global_batch": cfg.optim.global_batch, "train_episodes": 9, "val_episodes": 3,
           "val_clips": quality["val_clips"], "seconds": seconds, "load_average_at_start": list(load),
           **{k.removeprefix("val_"): v for k, v in final.items()},
           "passed": quality["passed"], "min_gain_vs_shuffled": quality["min_gain_vs_shuffled"],
           "curves": {step: {k.removeprefix("val_"): v[k] for k in ("val_l1_1step", "val_l1_2step", *GAINS)}
                      for step, v in quality["curves"].items()}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "posttrain_quality.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"posttrain quality after {args.steps} steps: 1-step L1 {final['val_l1_1step']:.4f} (copy "
          f"{final['val_copy_l1_1step']:.4f}, shuffled {final['val_shuffled_l1_1step']:.4f}), 2-step "
          f"{final['val_l1_2step']:.4f} (copy {final['val_copy_l1_2step']:.4f}, shuffled "
          f"{final['val_shuffled_l1_2step']:.4f}): {'passes' if quality['passed'] else 'does NOT pass'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
