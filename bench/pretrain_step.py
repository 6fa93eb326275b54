"""Pretraining on CPU with the tiny preset: loop overhead, data wait, and whether the encoder learns.

    python -m bench.pretrain_step [--world data/sample_world] [--steps 12] [--learn-steps 500]

1. Loop overhead: steps/s of the Ray Train loop (1 worker, ``train.pretrain.pretrain``) against the same
   step (``PretrainRecipe.setup`` + ``PretrainRecipe.step``) in a plain process, both fed the same
   pre-decoded clips, so only Ray Train, reporting and checkpointing differ (``ratio_vs_plain``, goal
   >= 0.9). The plain process runs before and after the Ray loop; their mean is the reference.
2. Data wait: a run fed by the streaming VideoMix pipeline (decode actors working while the step runs):
   fraction of step time spent waiting for data once warm, and clips/s (goal < 10 %).
3. Learning: the same run's target-feature std over time (collapse floor ``trainer.target_std_floor``),
   and leave-one-out k-NN accuracy (cosine, k = 1 since the smallest classes are pairs) of the trained
   encoder vs the same encoder at its initial weights (and a second init) on two sample-world label sets:
   the videos' motion classes (moves left/right/up/down, grows, shrinks, native; mean-pooled or
   time-resolved features) and the ImageNet source's photo classes. Labels are never used in training;
   every probe is reported.

Writes ``bench/results/pretrain_step.json`` and ``.png`` and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from configs import preset_path
from core.config import load_config
from core.redact import setup_logging
from eval.features import embed_path
from models.checkpoint import load_encoder
from models.config import ModelConfig
from pipelines.dataset import build_train_dataset
from train.collate import Collator
from train.config import PretrainConfig
from train.health import StepTiming, Throughput
from train.optim import plan_batch
from train.pretrain import pretrain
from train.pretrain_recipe import PretrainRecipe
from train.step import build_jepa

log = logging.getLogger("bench.pretrain_step")
RESULTS = Path(__file__).resolve().parent / "results"
SOURCES = ("ssv2", "kinetics", "howto100m", "yt1b", "imagenet")
# sample-world folders whose labels are the motion classes (world.json "labels.video")
IMAGE_SETS = ("sources/imagenet",)  # 8 photo classes, 2 photos each
MOTION_SETS = ("sources/ssv2", "sources/kinetics", "sources/howto100m", "targets/ssv2/train", "targets/ssv2/val",
               "targets/k710/train", "targets/k710/val")
KNN_K = 5


def config(world: Path, out: Path, *overrides: str) -> PretrainConfig:
    sources = [f"data.sources.{n}.manifest={world}/sources/{n}/manifest.parquet" for n in SOURCES]
    return load_config(PretrainConfig, preset_path("pretrain", "tiny"), [
        *sources, "trainer.num_workers=1", "tracking.enabled=false", f"run.output_dir={out}", *overrides])


def plain_steps(cfg: PretrainConfig, batches: list[dict], steps: int) -> tuple[dict, dict[int, float]]:
    """The training step in this process, no Ray: the reference for the loop's overhead."""
    training = PretrainRecipe(cfg)
    training.setup(world_size=1, rank=0)
    micro = iter(batches)
    throughput, losses = Throughput(), {}
    for step in range(steps):
        began = time.perf_counter()
        out = training.step(step, micro)
        throughput.record(StepTiming(time.perf_counter() - began, 0.0, out.clips, out.tokens))
        losses[step + 1] = out.loss
    return throughput.summary(), losses


def loop_overhead(world: Path, tmp: Path, steps: int) -> dict:
    cfg = config(world, tmp / "loop", f"optim.total_steps={steps}", f"trainer.checkpoint_every={steps}",
                 f"trainer.log_every={steps}")
    plan = plan_batch(cfg.optim, cfg.trainer)
    dataset = build_train_dataset(cfg.data, epoch=0, samples=(steps + 1) * plan.global_batch).materialize()
    enc = cfg.model.encoder
    collator = Collator(cfg.masks, cfg.data, cfg.run.seed, 0, enc.patch_size, enc.tubelet_size)
    rows = dataset.iter_batches(batch_size=plan.batch_per_worker, batch_format="numpy", drop_last=True)
    batches = [collator(batch, i) for i, batch in enumerate(rows)]
    before, plain_losses = plain_steps(cfg, batches, steps)
    ray_run = pretrain(cfg, dataset=dataset)
    after, _ = plain_steps(cfg, batches, steps)
    ray_tp = ray_run.worker["throughput"]
    plain_sps = (before["steps_per_s"] + after["steps_per_s"]) / 2
    loss_diff = max(abs(ray_run.worker["losses"][s] - plain_losses[s]) for s in plain_losses)
    return {"steps": steps, "warmup_steps_excluded": steps - int(ray_tp["steps_measured"]),
            "ray_steps_per_s": ray_tp["steps_per_s"], "plain_steps_per_s": plain_sps,
            "plain_steps_per_s_before_after": [before["steps_per_s"], after["steps_per_s"]],
            "ratio_vs_plain": ray_tp["steps_per_s"] / plain_sps, "ray_data_wait_frac": ray_tp["data_wait_frac"],
            "max_loss_diff_ray_vs_plain": loss_diff}


def labelled(world: Path, folders: tuple[str, ...]) -> list[tuple[str, int]]:
    items = []
    for folder in folders:
        table = pq.read_table(world / folder / "manifest.parquet", columns=["uri", "label"])
        items += [(uri if Path(uri).is_absolute() else str(world / folder / uri), int(label))
                  for uri, label in zip(table.column("uri").to_pylist(), table.column("label").to_pylist())]
    return items


def features(encoder: torch.nn.Module, model_cfg: ModelConfig, items: list[tuple[str, int]], pool: str) -> np.ndarray:
    """``mean``: mean over all tokens; ``time``: mean over space per tubelet step, concatenated (keeps the
    order of events, which motion classes need)."""
    out = []
    for uri, _ in items:
        tokens = embed_path(encoder, model_cfg, uri)  # [T' * H' * W', D], t-major
        if pool == "time":
            steps = model_cfg.encoder.num_frames // model_cfg.encoder.tubelet_size
            tokens = tokens.reshape(steps, -1, tokens.shape[-1]).mean(axis=1).reshape(1, -1)
        out.append(tokens.mean(axis=0))
    feats = np.stack(out)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def knn_k(labels: np.ndarray) -> int:
    """At most KNN_K, and no more than the other members of the smallest class (1 for pairs)."""
    return max(1, min(KNN_K, int(np.bincount(labels)[np.unique(labels)].min()) - 1))


def knn_accuracy(feats: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out k-NN (cosine, majority vote, similarity-weighted ties)."""
    sims = feats @ feats.T
    np.fill_diagonal(sims, -np.inf)
    k = knn_k(labels)
    correct = 0
    for i in range(len(labels)):
        nearest = np.argsort(-sims[i])[:k]
        votes = np.zeros(labels.max() + 1)
        np.add.at(votes, labels[nearest], 1.0 + 1e-3 * sims[i, nearest])
        correct += int(votes.argmax() == labels[i])
    return correct / len(labels)


def probes(encoders: dict[str, torch.nn.Module], model_cfg: ModelConfig, world: Path) -> dict[str, dict]:
    """Every probe for every encoder; all are reported, none is picked after the fact."""
    tasks = {"motion_mean": (MOTION_SETS, "mean"), "motion_time": (MOTION_SETS, "time"),
             "image_class_mean": (IMAGE_SETS, "mean")}
    results: dict[str, dict] = {}
    for task, (folders, pool) in tasks.items():
        items = labelled(world, folders)
        labels = np.array([label for _, label in items])
        chance = np.bincount(labels).max() / len(labels)
        results[task] = {"clips": len(items), "classes": len(set(labels.tolist())), "k": knn_k(labels),
                         "majority_rate": chance,
                         **{name: knn_accuracy(features(enc, model_cfg, items, pool), labels)
                            for name, enc in encoders.items()}}
    return results


def learning(world: Path, tmp: Path, steps: int) -> dict:
    cfg = config(world, tmp / "learn", f"optim.total_steps={steps}", f"trainer.checkpoint_every={steps}",
                 "trainer.log_every=10")
    run = pretrain(cfg)
    tp = run.worker["throughput"]
    stds = run.worker["target_std"]
    encoders = {f"trained_{key}": load_encoder(run.export_path, key=key)[0] for key in ("encoder", "target_encoder")}
    for seed in (cfg.run.seed, cfg.run.seed + 1):  # the run's own initial weights, and another init
        torch.manual_seed(seed)
        encoders[f"random_init_seed{seed}"] = build_jepa(cfg.model).encoder.eval()
    late = [v for s, v in stds.items() if s > steps // 2]
    return {"steps": steps, "data_wait_frac_warm": tp["data_wait_frac"], "clips_per_s_warm": tp["clips_per_s"],
            "steps_per_s_warm": tp["steps_per_s"], "target_std_floor": cfg.trainer.target_std_floor,
            "target_std_first": stds[1], "target_std_min_second_half": min(late), "target_std_last": stds[steps],
            "loss_first": run.worker["losses"][1], "loss_last": run.worker["losses"][steps],
            "knn": probes(encoders, cfg.model, world),
            "curves": {"loss": run.worker["losses"], "target_std": stds}}


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result["learning"]["curves"]
    fig, (ax_loss, ax_std) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(list(curves["loss"]), list(curves["loss"].values()))
    ax_loss.set(xlabel="step", ylabel="L1 loss", title="loss (tiny, CPU, sample world)")
    ax_std.plot(list(curves["target_std"]), list(curves["target_std"].values()), label="target-feature std")
    ax_std.axhline(result["learning"]["target_std_floor"], color="red", linestyle="--", label="collapse floor")
    ax_std.set(xlabel="step", ylim=(0, 1.05), title="target-feature std")
    ax_std.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=Path("data/sample_world"),
                        help="sample world (built into a temp dir if missing)")
    parser.add_argument("--steps", type=int, default=12, help="steps of the overhead comparison")
    parser.add_argument("--learn-steps", type=int, default=500, help="steps of the data-wait / learning run")
    args = parser.parse_args(argv)
    setup_logging()
    import ray

    with tempfile.TemporaryDirectory(prefix="vjepa2-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        world = args.world.resolve()
        if not (world / "world.json").is_file():
            from pipelines.sample_world import build_sample_world

            world = tmp / "sample_world"
            build_sample_world(world, seed=0)
        ray.init(address="local", num_cpus=4, object_store_memory=400 * 1024**2, include_dashboard=False)
        started = time.perf_counter()
        result = {"device": "cpu", "torch_threads_per_worker": 1, "config": "configs/pretrain/tiny.yaml",
                  "loop": loop_overhead(world, tmp, args.steps), "learning": learning(world, tmp, args.learn_steps)}
        result["wall_s"] = time.perf_counter() - started
        ray.shutdown()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pretrain_step.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, RESULTS / "pretrain_step.png")
    loop, learn = result["loop"], result["learning"]
    knn = "; ".join(f"{task} trained {v['trained_encoder']:.2f} vs init {v['random_init_seed0']:.2f}"
                    for task, v in learn["knn"].items())
    print(f"pretrain_step: ratio_vs_plain {loop['ratio_vs_plain']:.2f} ({loop['ray_steps_per_s']:.2f} vs "
          f"{loop['plain_steps_per_s']:.2f} steps/s); data wait {100 * learn['data_wait_frac_warm']:.1f}% at "
          f"{learn['clips_per_s_warm']:.1f} clips/s; target std min {learn['target_std_min_second_half']:.3f} "
          f"(floor {learn['target_std_floor']}); k-NN {knn}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
