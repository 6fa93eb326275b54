"""Why the tiny pretrained encoder loses to random init on the motion set: three probes, one token set.

    python -m bench.probe_diagnosis [--steps 600] [--world data/sample_world]

``bench/probe_understanding.py`` runs the issue's check through the probe stage; this one asks what the
tokens hold. It pretrains the tiny V-JEPA 2 as that benchmark does (``--steps`` steps, the same mix and
recipe: ``bench.probe_understanding.pretrain_encoder``), encodes the motion set once per encoder in this
process (``eval/tiny-motion``'s clip geometry: 8 frames x 2, 128 px, one centred view), and probes the
same tokens three ways:

1. ``attentive``: the stage's probe, a depth-1 attentive pooler per learning rate (the stage's grid
   optimizer and cosine schedule, 20 epochs, batch 32), over the tokens as an unordered set, as Meta's
   probe sees them; two seeds, because one seed's number moves by ~10 points.
2. ``attentive_coded``: the same with a fixed 3-D sin-cos code of each token's (t, h, w) added first, so
   the pooler knows where and when each token is.
3. ``linear_ordered``: a logistic regression on the tokens averaged over 4 x 4 pixel-token cells of each
   time step (t x 2 x 2 cells, in order): a linear probe that is told the layout.

Encoders: random init (tiny, seed 0), the pretrained ``target_encoder`` (what probes read) and the
pretrained context ``encoder``. ``ema_share_of_init`` is how much of the random initial weights the
target encoder still holds (momentum ** steps). Writes ``bench/results/probe_diagnosis.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.probe_understanding import EMA, pretrain_encoder
from core.redact import setup_logging
from eval.clip_cache import sample_tokens
from models.frozen import FrozenEncoderConfig, build_frozen_encoder
from models.probe import ProbeBank
from pipelines.labelled import FIT, LabelledDataConfig, eval_sample, read_rows
from pipelines.sample_world.build import build_sample_world
from train.probe_optim import ProbeGrid, head_schedules, probe_optimizer, set_head_lrs

RESULTS = Path(__file__).resolve().parent / "results"
LRS = [3e-2, 1e-2, 3e-3]
SEEDS = (0, 1)
EPOCHS, BATCH = 20, 32
GEOMETRY = LabelledDataConfig(frames_per_clip=8, frame_step=2, crop_size=128, augment=False, decoder="pyav")


def encode(encoder: Any, manifest: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``[clips, N, D]`` of every row's centred clip, and the labels."""
    rows = read_rows(str(manifest), FIT)
    tokens = []
    with torch.no_grad():
        for start in range(0, len(rows), 16):
            clips = np.stack([eval_sample(uri, GEOMETRY, 1) for uri in rows.uris[start:start + 16]])
            tokens.append(sample_tokens(encoder, torch.from_numpy(clips), 1)[:, 0])
    return torch.cat(tokens), torch.as_tensor(rows.labels)


def position_code(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """``[t * h * w, dim]``: a third of the channels code t, a third h, a third w (sin and cos halves)."""
    per_axis = dim // 3

    def axis(n: int) -> torch.Tensor:
        freqs = 1.0 / 10000 ** (torch.arange(per_axis // 2, dtype=torch.float64) / (per_axis // 2))
        angles = torch.arange(n, dtype=torch.float64)[:, None] * freqs
        return torch.cat([angles.sin(), angles.cos()], 1).float()

    t, h, w = grid
    parts = [axis(t)[:, None, None].expand(t, h, w, -1), axis(h)[None, :, None].expand(t, h, w, -1),
             axis(w)[None, None].expand(t, h, w, -1)]
    code = torch.cat(parts, -1).reshape(t * h * w, -1)
    return torch.nn.functional.pad(code, (0, dim - code.size(1)))


def attentive(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], seed: int,
              classes: int) -> list[float]:
    """Val top-1 of one depth-1 attentive probe per learning rate (the stage's optimizer and schedule)."""
    (x, y), (xv, yv) = train, val
    torch.manual_seed(seed)
    grid = ProbeGrid(lrs=LRS, wds=[0.01])
    bank = ProbeBank(len(LRS), x.size(-1), 4, classes, depth=1)
    optimizer = probe_optimizer(bank, grid)
    steps = EPOCHS * (len(y) // BATCH)
    schedules = head_schedules(grid, steps)
    draws = torch.Generator().manual_seed(seed)
    for step in range(steps):
        set_head_lrs(optimizer, schedules, step)
        pick = torch.randint(0, len(y), (BATCH,), generator=draws)
        logits = bank(x[pick])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[pick].repeat(len(LRS)))
        optimizer.zero_grad(set_to_none=True)
        (loss * len(LRS)).backward()
        optimizer.step()
    with torch.no_grad():
        return [float((head.argmax(-1) == yv).float().mean()) for head in bank(xv)]


def ordered_cells(tokens: torch.Tensor, grid: tuple[int, int, int]) -> np.ndarray:
    """Tokens averaged over a 2 x 2 spatial split of each time step, flattened in (t, row, column) order."""
    t, h, w = grid
    cells = tokens.view(len(tokens), t, 2, h // 2, 2, w // 2, -1).mean(dim=(3, 5))
    return cells.reshape(len(tokens), -1).numpy()


def linear_ordered(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                   grid: tuple[int, int, int]) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, xv = ordered_cells(train[0], grid), ordered_cells(val[0], grid)
    scale = StandardScaler().fit(x)
    model = LogisticRegression(max_iter=3000, C=0.1).fit(scale.transform(x), train[1].numpy())
    return float(model.score(scale.transform(xv), val[1].numpy()))


def diagnose(cfg: FrozenEncoderConfig, motion: Path) -> dict[str, Any]:
    began = time.perf_counter()
    encoder = build_frozen_encoder(cfg)
    grid = encoder.grid(GEOMETRY.frames_per_clip, GEOMETRY.crop_size, GEOMETRY.crop_size)
    train, val = encode(encoder, motion / "train.parquet"), encode(encoder, motion / "val.parquet")
    classes = int(train[1].max()) + 1
    code = position_code(grid, train[0].size(-1))
    coded_train, coded_val = (train[0] + code, train[1]), (val[0] + code, val[1])
    result = {
        "attentive": {f"seed{s}": attentive(train, val, s, classes) for s in SEEDS},
        "attentive_coded": {f"seed{s}": attentive(coded_train, coded_val, s, classes) for s in SEEDS},
        "linear_ordered": linear_ordered(train, val, grid),
    }
    best = {k: max(max(v) for v in result[k].values()) for k in ("attentive", "attentive_coded")}
    return {**result, "best": {**best, "linear_ordered": result["linear_ordered"]}, "grid": list(grid),
            "val_clips": len(val[1]), "seconds": round(time.perf_counter() - began, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="pretraining steps (global batch 8)")
    parser.add_argument("--world", default="data/sample_world", help="a sample world (built with --probes if absent)")
    parser.add_argument("--out", default="runs/bench-probe-diagnosis", help="runs directory (kept)")
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(os.cpu_count() or 1)
    load = os.getloadavg()
    world, out = Path(args.world).resolve(), Path(args.out).resolve()
    build_sample_world(world, probes=True)
    export, pretraining = pretrain_encoder(world, out, args.steps)
    encoders = {"random_seed0": FrozenEncoderConfig(kind="random", preset="tiny", seed=0),
                "pretrained_target_encoder": FrozenEncoderConfig(kind="vjepa2", checkpoint=export),
                "pretrained_context_encoder": FrozenEncoderConfig(kind="vjepa2", checkpoint=export, key="encoder")}
    runs = {name: diagnose(cfg, world / "probes" / "motion") for name, cfg in encoders.items()}
    result = {"pretraining": pretraining, "ema_share_of_init": EMA ** args.steps, "load_average_at_start": list(load),
              "probe": {"lrs": LRS, "seeds": list(SEEDS), "epochs": EPOCHS, "batch": BATCH, "depth": 1,
                        "geometry": "8 frames x 2, 128 px, one centred view"},
              "chance": 0.1, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "probe_diagnosis.json").write_text(json.dumps(result, indent=1) + "\n")
    print("probe diagnosis (best val top-1: attentive / attentive with position code / ordered linear): " + "; ".join(
        f"{name} {100 * r['best']['attentive']:.1f} / {100 * r['best']['attentive_coded']:.1f} / "
        f"{100 * r['best']['linear_ordered']:.1f}" for name, r in runs.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
