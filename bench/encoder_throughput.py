"""Encoder forward throughput on CPU: ours vs transformers' VJEPA2Model holding the same weights.

Same process, dtype, thread count and input; runs are interleaved (alternating which model goes first) and
the median of ``--runs`` timed forwards is reported after one warm-up each. The machine is shared, so the
load average before and after is recorded with the numbers. Writes bench/results/encoder_throughput.json
(+ .png) and prints a one-line summary:

    python -m bench.encoder_throughput            # tiny and ViT-B at 16 x 256 x 256, 2 threads, 5 runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import VJEPA2Config, VJEPA2Model

from models.build import build_model, load_model_preset, num_params
from models.config import EncoderConfig, ModelConfig
from models.hf import hf_config, meta_to_hf

log = logging.getLogger("bench.encoder_throughput")
RESULTS = Path(__file__).resolve().parent / "results"


def configs() -> dict[str, ModelConfig]:
    tiny = load_model_preset("tiny")
    vit_b = dataclasses.replace(tiny, preset="vit-b", encoder=EncoderConfig(
        img_size=256, num_frames=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0))
    return {"tiny": tiny, "vit-b": vit_b}


def hf_twin(cfg: ModelConfig, encoder: torch.nn.Module, predictor: torch.nn.Module, crop: int) -> VJEPA2Model:
    config = hf_config(dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, img_size=crop)))
    for key in ("model_type", "architectures", "vjepa2_ray"):
        config.pop(key)
    model = VJEPA2Model(VJEPA2Config(**config))
    model.load_state_dict(meta_to_hf(encoder.state_dict(), predictor.state_dict()), strict=True)
    return model.eval()


def _timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@torch.no_grad()
def bench_one(cfg: ModelConfig, shape: tuple[int, ...], runs: int) -> dict[str, Any]:
    torch.manual_seed(0)
    encoder, predictor = build_model(cfg)
    encoder.eval()
    hf = hf_twin(cfg, encoder, predictor, crop=shape[-1])
    x = torch.randn(*shape)
    x_hf = x.permute(0, 2, 1, 3, 4).contiguous()  # HF takes [B, T, C, H, W]

    def ours_fn() -> torch.Tensor:
        return encoder(x)

    def hf_fn() -> torch.Tensor:
        return hf.encoder(pixel_values_videos=x_hf).last_hidden_state

    _, ours_out = _timed(ours_fn)
    _, hf_out = _timed(hf_fn)
    ours_s, hf_s = [], []
    for run in range(runs):
        order = [(ours_fn, ours_s), (hf_fn, hf_s)]
        for fn, sink in order if run % 2 == 0 else order[::-1]:
            sink.append(_timed(fn)[0])
        log.info("%s run %d/%d: ours %.2fs, HF %.2fs", cfg.preset, run + 1, runs, ours_s[-1], hf_s[-1])
    tokens = shape[0] * ours_out.shape[1]
    ours_tps, hf_tps = tokens / statistics.median(ours_s), tokens / statistics.median(hf_s)
    return {"encoder_params": num_params(encoder), "tokens": tokens, "ours_tokens_per_s": round(ours_tps, 1),
            "hf_tokens_per_s": round(hf_tps, 1), "ratio_vs_hf": round(ours_tps / hf_tps, 4),
            "max_abs_diff": float((ours_out - hf_out).abs().max()),
            "ours_s": [round(t, 4) for t in ours_s], "hf_s": [round(t, 4) for t in hf_s]}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2))
    for ax, name in zip(axes if len(names) > 1 else [axes], names):
        r = results["models"][name]
        ax.bar(["ours", "transformers"], [r["ours_tokens_per_s"], r["hf_tokens_per_s"]], color=["C0", "C7"])
        ax.set_title(f"{name}: ratio {r['ratio_vs_hf']:.3f}")
        ax.set_ylabel("tokens / s")
    fig.suptitle(f"encoder forward, {results['dtype']}, {results['threads']} threads, input {results['input_shape']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--models", nargs="+", default=["tiny", "vit-b"], choices=sorted(configs()))
    parser.add_argument("--out", type=Path, default=RESULTS / "encoder_throughput.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    shape = (1, 3, args.frames, args.res, args.res)
    results: dict[str, Any] = {
        "bench": "encoder_throughput", "device": "cpu", "dtype": "float32", "threads": args.threads,
        "input_shape": list(shape), "runs": args.runs, "statistic": "median of interleaved runs",
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "cpu_count": os.cpu_count(), "loadavg_before": [round(v, 2) for v in os.getloadavg()], "models": {}}
    for name in args.models:
        results["models"][name] = bench_one(configs()[name], shape, args.runs)
    results["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))
    summary = "; ".join(f"{n} {r['ours_tokens_per_s']:.0f} vs HF {r['hf_tokens_per_s']:.0f} tok/s "
                        f"(ratio {r['ratio_vs_hf']:.3f}, max diff {r['max_abs_diff']:.1e})"
                        for n, r in results["models"].items())
    print(f"encoder_throughput ({args.threads} threads, fp32, {shape}): {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
