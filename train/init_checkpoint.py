"""Write a randomly initialised V-JEPA 2 model (encoder, target encoder, predictor) in Meta's layout.

The target encoder is a copy of the encoder, as at the start of Meta's pretraining (docs/reference.md R-vjepa2-4.1). The
architecture is recorded in the file, so later commands need no --preset. Example:

    vjepa2-ray init-checkpoint --preset tiny --seed 0 --out runs/tiny-init.pt
"""

from __future__ import annotations

import argparse
import logging

from core.entry import module_main

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, help="configs/model/<NAME>.yaml, e.g. tiny, vitl, vitg")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the init (default 0)")
    parser.add_argument("--out", required=True, help="output .pt path (local or s3://)")


def init_checkpoint(preset: str, seed: int, out: str) -> dict[str, int]:
    """Build, initialise and save; returns the parameter counts."""
    # imported here, not at the top: `vjepa2-ray init-checkpoint --help` must not pay for torch
    import torch

    from models.build import build_model, load_model_preset, num_params
    from models.checkpoint import save_meta_checkpoint

    cfg = load_model_preset(preset)
    torch.manual_seed(seed)
    encoder, predictor = build_model(cfg)
    encoder_sd = encoder.state_dict()
    save_meta_checkpoint(out, encoder_sd, predictor.state_dict(),
                         target_encoder_sd={k: v.clone() for k, v in encoder_sd.items()}, model_cfg=cfg,
                         extra={"epoch": 0})
    return {"encoder": num_params(encoder), "predictor": num_params(predictor)}


def run(args: argparse.Namespace) -> int:
    counts = init_checkpoint(args.preset, args.seed, args.out)
    print(f"wrote {args.out}: preset {args.preset}, seed {args.seed}, "
          f"encoder {counts['encoder']:,} params, predictor {counts['predictor']:,} params")
    return 0


if __name__ == "__main__":
    raise SystemExit(module_main(__name__))
