"""Shared helpers for the pretraining tests: a very small model config and synthetic micro-batches."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from configs import preset_path
from core.config import load_config
from train.config import PretrainConfig
from train.masks import sample_masks, token_grid

FRAMES, CROP, PER_RANK = 4, 64, 2
TINY = preset_path("pretrain", "tiny")


def small_overrides() -> list[str]:
    """The tiny preset shrunk to 4 frames at 64 px, so a step takes milliseconds."""
    return [f"model.encoder.img_size={CROP}", f"model.encoder.num_frames={FRAMES}",
            f"data.clip.frames_per_clip={FRAMES}", f"data.clip.crop_size={CROP}"]


def small_config(*overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, TINY, [*small_overrides(), *overrides])


def synthetic_batch(cfg: PretrainConfig, index: int, rank: int, batch_size: int = PER_RANK) -> dict:
    """A reproducible micro-batch: noise clips and the real mask sampler at counter ``index``."""
    gen = torch.Generator().manual_seed(1000 * rank + index)
    grid = token_grid(FRAMES, CROP, cfg.model.encoder.patch_size, cfg.model.encoder.tubelet_size)
    masks_enc, masks_pred = sample_masks(cfg.masks, batch_size, grid, index, seed=0, rank=rank)
    clip = torch.randn(batch_size, 3, FRAMES, CROP, CROP, generator=gen)
    return {"clip": clip, "masks_enc": masks_enc, "masks_pred": masks_pred}


# Credential values planted in the environment of a run, then searched for in every file it wrote.
PLANTED_ENV = {"AWS_SECRET_ACCESS_KEY": "planted-aws-7f3a9c", "AWS_SESSION_TOKEN": "planted-session-91bc2e",
               "HF_TOKEN": "planted-hf-44d2aa", "MLFLOW_TRACKING_PASSWORD": "planted-mlflow-0e5f17",
               "VJEPA2_TEST_API_TOKEN": "planted-custom-6b1d08"}


def ray_session_dir() -> Path | None:
    """The running Ray session's directory (its logs), where this Ray version exposes it."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None) if ray.is_initialized() else None
    return Path(node.get_session_dir_path()) if node is not None else None


def files_holding(roots: list[Path], values: list[str]) -> list[str]:
    """``file: value`` for every one of ``values`` found in any file under ``roots``."""
    found = []
    for root in roots:
        for path in (p for p in root.rglob("*") if p.is_file()):
            try:
                data = path.read_bytes()
            except OSError:  # a socket, or a file removed meanwhile
                continue
            found += [f"{path}: {value}" for value in values if value.encode() in data]
    return found


TOTAL_STEPS = 6
SOURCES = ("ssv2", "kinetics", "howto100m", "yt1b", "imagenet")


def world_overrides(world: Path, out: Path, *overrides: str) -> list[str]:
    """The small config on the sample world's sources, writing to ``out``: 6 steps, a checkpoint every 2."""
    return [*small_overrides(), *(f"data.sources.{name}.manifest={world}/sources/{name}/manifest.parquet"
                                  for name in SOURCES),
            f"run.output_dir={out}", f"optim.total_steps={TOTAL_STEPS}", "trainer.checkpoint_every=2",
            "data.num_decode_workers=1", *overrides]


def world_config(world: Path, out: Path, *overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, TINY, world_overrides(world, out, *overrides))


@functools.cache
def uninterrupted_losses(world: str, session_tmp: str, workers: int = 2) -> dict[int, float]:
    """Per-step losses of an uninterrupted ``workers``-worker run; computed once per test session
    (the resume and fault-tolerance tests compare against the same reference). ``session_tmp``:
    ``tmp_path_factory.getbasetemp()``, the same for the whole session."""
    from train.pretrain import pretrain

    out = Path(session_tmp) / f"reference-{workers}w"
    result = pretrain(world_config(Path(world), out, f"trainer.num_workers={workers}", "tracking.enabled=false"))
    assert result.worker["start_step"] == 0 and result.worker["final_step"] == TOTAL_STEPS
    return result.worker["losses"]
