"""Top-5 labels of a video (or image) from a frozen encoder and a probe file.

The clip is cut as the probe was trained (frames, frame step, segments, views and crop recorded in our
probe files; ``--frames`` and friends for Meta's, which record none), encoded, and scored by the probe
file's reported head (``--head`` for another); the class names come from the probe file or ``--labels``.

    vjepa2-ray classify --checkpoint runs/pretrain-tiny/latest.pt --probe runs/probe-tiny-motion/latest.pt \\
        --input data/sample_world/probes/motion/clips/val/moves_left/0000.mp4
"""

from __future__ import annotations

import argparse

from core.entry import module_main
from core.errors import UserError

META_NUM_HEADS = 16  # Meta's probes: 16 attention heads (not recorded in their files)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="encoder checkpoint (Meta layout, ours or Meta's release)")
    parser.add_argument("--probe", required=True, help="probe file (Meta's layout or ours)")
    parser.add_argument("--input", required=True, help="video or image (local or s3://)")
    parser.add_argument("--labels", default="", help="label map JSON (default: the probe file's class names)")
    parser.add_argument("--key", default="target_encoder", choices=["encoder", "target_encoder"],
                        help="which encoder of the checkpoint (default target_encoder, as Meta's evals)")
    parser.add_argument("--preset", default="", help="encoder architecture, for files that record none")
    parser.add_argument("--head", type=int, default=None, help="which head (default: the one the probe file reports)")
    parser.add_argument("--num-heads", type=int, default=META_NUM_HEADS, help="pooler attention heads (Meta's files)")
    for name, default in (("frames", 16), ("frame-step", 4), ("segments", 1), ("views", 1), ("crop", 256)):
        parser.add_argument(f"--{name}", type=int, default=None, help=f"clip geometry for files that record none "
                                                                      f"(default {default})")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from eval.clip_cache import sample_tokens
    from eval.labels import load_label_map
    from eval.probe import PROBE_KEY
    from models.checkpoint import load_probe_checkpoint, probe_file_shape, read_checkpoint
    from models.frozen import FrozenEncoderConfig, build_frozen_encoder
    from models.probe import ProbeBank
    from pipelines.labelled import LabelledDataConfig, eval_sample

    data = read_checkpoint(args.probe)
    ours = data.get(PROBE_KEY) or {}
    shape = ours.get("shape") or probe_file_shape(data, args.num_heads, args.probe)
    geometry = {"frames_per_clip": 16, "frame_step": 4, "num_segments": 1, "num_views": 1, "crop_size": 256,
                **ours.get("geometry", {})}
    for key, arg in (("frames_per_clip", args.frames), ("frame_step", args.frame_step),
                     ("num_segments", args.segments), ("num_views", args.views), ("crop_size", args.crop)):
        if arg is not None:
            geometry[key] = arg
    names = load_label_map(args.labels) if args.labels else ours.get("class_names")
    if not names:
        raise UserError(f"{args.probe}: the probe file names no classes; pass --labels")
    if len(names) != shape["classes"]:
        raise UserError(f"{args.labels or args.probe}: {len(names)} class names for a probe of {shape['classes']}")
    head = args.head if args.head is not None else int(ours.get("best_head", 0))
    if not 0 <= head < shape["heads"]:
        raise UserError(f"--head {head}: the probe file holds {shape['heads']} heads")
    bank = ProbeBank(shape["heads"], shape["dim"], shape["num_heads"], shape["classes"], shape["depth"])
    load_probe_checkpoint(args.probe, list(bank.classifiers))
    encoder = build_frozen_encoder(FrozenEncoderConfig(kind="vjepa2", checkpoint=args.checkpoint, key=args.key,
                                                       preset=args.preset))
    cfg = LabelledDataConfig(decoder="pyav", **geometry)
    try:
        sample = eval_sample(args.input, cfg, cfg.num_views)
    except Exception as exc:  # a SampleError or a decoder's own error: one line naming the file
        raise UserError(f"{args.input}: cannot read: {exc}") from exc
    with torch.no_grad():
        tokens = sample_tokens(encoder, torch.from_numpy(sample)[None], cfg.num_views)[0]
        probs = bank.classifiers[head](tokens).softmax(-1).mean(0).numpy()
    print(f"{args.input}: head {head} of {args.probe}")
    for rank, label in enumerate(np.argsort(-probs)[:5], 1):
        print(f"{rank}. {names[label]:<32} {100 * probs[label]:6.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(module_main(__name__))
