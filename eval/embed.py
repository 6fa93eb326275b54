"""Extract V-JEPA 2 encoder features of a video, an image, or a preprocessed .npy clip.

A video gets the standard eval preprocessing (short side to crop*256/224, center crop, ImageNet
normalisation) on FRAMES frames sampled at FPS from START seconds (default: the middle of the video); an
image (jpg/png/...) is repeated to a clip (docs/reference.md R-vjepa2-5.4); a .npy is a float array [C, T, H, W] already
preprocessed and fed as is. Output: float32 [N_tokens, D], or [D] with --pool mean. Examples:

    vjepa2-ray embed --checkpoint vitl.pt --input clip.mp4 --out feats.npy
    vjepa2-ray embed --checkpoint runs/tiny-init.pt --input clip.npy --out feats.npy --pool mean
"""

from __future__ import annotations

import argparse
import io

import numpy as np

from core import storage
from core.entry import module_main
from pipelines.config import ClipConfig

DEFAULT_FPS = ClipConfig().fps  # docs/reference.md R-vjepa2-5.3: V-JEPA 2 samples clips at 4 fps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="Meta-layout .pt (local or s3://)")
    parser.add_argument("--input", required=True, help="video, image (jpg/png/...), or preprocessed .npy [C,T,H,W]")
    parser.add_argument("--out", required=True, help="output .npy")
    parser.add_argument("--preset", default=None, help="architecture, for Meta files that record none")
    parser.add_argument("--key", default="encoder", choices=["encoder", "target_encoder"],
                        help="which encoder of the checkpoint (default: encoder, as Meta's hub)")
    parser.add_argument("--pool", default="none", choices=["none", "mean"], help="mean: average the tokens")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default: the preset's)")
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS, help="sampling rate")
    parser.add_argument("--start", type=float, default=None, help="clip start in seconds (default: centred)")


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `vjepa2-ray embed --help` must not pay for torch
    from eval.features import embed_path
    from models.checkpoint import load_encoder

    encoder, cfg = load_encoder(args.checkpoint, key=args.key, preset=args.preset)
    feats = embed_path(encoder, cfg, args.input, args.frames, args.fps, args.start)
    if args.pool == "mean":
        feats = feats.mean(axis=0)
    buffer = io.BytesIO()
    np.save(buffer, feats.astype(np.float32))
    storage.write_bytes(args.out, buffer.getvalue())
    print(f"wrote {args.out}: {feats.shape} float32 ({cfg.preset}, {args.key})")
    return 0


if __name__ == "__main__":
    raise SystemExit(module_main(__name__))
