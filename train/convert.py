"""Convert a checkpoint between Meta's layout (.pt) and the Hugging Face VJEPA2 layout (directory).

IN is a Meta-layout file (Meta's releases, Meta training checkpoints, this project's files) or a HF
directory (config.json + model.safetensors). Model tensors are copied bit-exactly. A HF export also gets
the video processor config (AutoVideoProcessor loads it) and a model card (README.md) naming the source and
what the source records of its training. Examples:

    vjepa2-ray convert vitl.pt hf/vitl --to hf            # Meta -> HF (encoder from --key)
    vjepa2-ray convert hf/vitl vitl-meta.pt --to meta      # HF -> Meta (encoder + predictor)
    vjepa2-ray convert latest.pt clean.pt --to meta --drop-extras   # normalise keys, drop optimizer etc.

Meta -> Meta keeps the non-model keys (opt, epoch, ...) unless --drop-extras. HF holds one encoder, so
Meta -> HF exports --key and HF -> Meta writes `encoder` and `predictor` only (no `target_encoder`).
"""

from __future__ import annotations

import argparse
import logging

from core.entry import module_main

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="Meta-layout .pt file or HF model directory")
    parser.add_argument("output", metavar="OUT", help=".pt file (--to meta) or directory (--to hf)")
    parser.add_argument("--to", required=True, choices=["meta", "hf"], help="output layout")
    parser.add_argument("--preset", default=None, help="architecture of a Meta file that does not record one")
    parser.add_argument("--key", default="encoder", choices=["encoder", "target_encoder"],
                        help="encoder exported to HF (default: encoder, as Meta's hub and HF conversion)")
    parser.add_argument("--drop-extras", action="store_true",
                        help="Meta -> Meta: drop non-model keys (optimizer state, epoch, ...)")


def convert(src: str, dst: str, to: str, preset: str | None = None, key: str = "encoder",
            drop_extras: bool = False) -> str:
    """Convert ``src`` to ``dst``; returns a one-line description of what was written."""
    # imported here, not at the top: `vjepa2-ray convert --help` must not pay for torch
    from models.checkpoint import load_meta_checkpoint, resolve_model_cfg, save_meta_checkpoint
    from models.hf import is_hf_dir, load_hf, save_hf, training_provenance

    if is_hf_dir(src):
        cfg, encoder, predictor = load_hf(src)
        if to == "hf":
            save_hf(dst, encoder, predictor, cfg, source=src)
        else:
            save_meta_checkpoint(dst, encoder, predictor, model_cfg=cfg)
        return f"HF {src} -> {to} {dst} (preset {cfg.preset})"
    ckpt = load_meta_checkpoint(src)
    cfg = resolve_model_cfg(ckpt, preset)
    if to == "hf":
        save_hf(dst, ckpt.state(key), ckpt.state("predictor"), cfg, source=f"{src} [{key}]",
                training=training_provenance(ckpt.extras))
        return f"Meta {src} [{key}] -> HF {dst} (preset {cfg.preset})"
    if drop_extras and ckpt.extras:
        log.info("dropping non-model keys %s", sorted(ckpt.extras))
    save_meta_checkpoint(dst, ckpt.state("encoder"), ckpt.state("predictor"),
                         target_encoder_sd=ckpt.target_encoder, model_cfg=cfg,
                         extra=None if drop_extras else ckpt.extras)
    return f"Meta {src} -> Meta {dst} (preset {cfg.preset}, extras {'dropped' if drop_extras else 'kept'})"


def run(args: argparse.Namespace) -> int:
    print(convert(args.input, args.output, args.to, args.preset, args.key, args.drop_extras))
    return 0


if __name__ == "__main__":
    raise SystemExit(module_main(__name__))
