"""Import/export of the Hugging Face ``transformers`` VJEPA2 layout (docs/reference.md R-peers-1.8, R-peers-1.9).

A HF model is a directory with ``model.safetensors`` and ``config.json`` (``model_type: vjepa2``). The key
mapping is pure renaming plus two reshapes: Meta's fused ``attn.qkv`` is split into ``query``/``key``/``value``
and the ``mask_tokens.{i}`` list is stacked into one ``[n, 1, 1, P]`` tensor. Both directions are bit-exact.
An export also holds the video processor config (so ``AutoVideoProcessor`` loads the directory too) and a
model card (``README.md``). This module does not import transformers: it only reads and writes files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from core import storage
from core.config import ConfigError, from_dict, to_dict
from models.build import count_params, list_presets, load_model_preset
from models.checkpoint import ARCH_KEY, FORMAT_VERSION, CheckpointError, StateDict
from models.config import EncoderConfig, ModelConfig, PredictorConfig
from models.frozen import IMAGENET_MEAN, IMAGENET_STD

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# The name transformers' VJEPA2VideoProcessor.save_pretrained writes (5.24.0; AutoVideoProcessor also falls back
# to preprocessor_config.json). tests/test_hf_processor.py checks it against the installed transformers.
PROCESSOR_FILE = "video_preprocessor_config.json"
CARD_FILE = "README.md"
# docs/reference.md R-vjepa2-8.2: the hub preprocessor resizes the short side to int(crop * 256 / 224).
RESIZE_RATIO = 256 / 224
PIL_BILINEAR = 2  # transformers stores `resample` as a PIL.Image.Resampling value
# Where a training run's record rides in a checkpoint's extras (models/sharded.py, train/state.export_meta).
TRAIN_RECORD = "vjepa2_ray_train"
QKV = ("query", "key", "value")

# (Meta prefix, HF prefix); block internals are handled by _block_to_hf / _block_to_meta.
ENCODER_PREFIXES = (("patch_embed.proj.", "encoder.embeddings.patch_embeddings.proj."),
                    ("norm.", "encoder.layernorm."),
                    ("blocks.", "encoder.layer."))
PREDICTOR_PREFIXES = (("predictor_embed.", "predictor.embeddings.predictor_embeddings."),
                      ("predictor_norm.", "predictor.layernorm."),
                      ("predictor_proj.", "predictor.proj."),
                      ("predictor_blocks.", "predictor.layer."))
HF_MASK_TOKENS = "predictor.embeddings.mask_tokens"
_QKV_HF = re.compile(r"^(.*)\.attention\.(query|key|value)\.(weight|bias)$")


class HFLayoutError(CheckpointError):
    """A HF directory or a model that does not fit the transformers VJEPA2 layout."""


def _rename(key: str, prefixes: tuple[tuple[str, str], ...], to_hf: bool, where: str) -> str:
    for meta, hf in prefixes:
        src, dst = (meta, hf) if to_hf else (hf, meta)
        if key.startswith(src):
            return dst + key[len(src):]
    raise HFLayoutError(f"{where}: key '{key}' has no HF VJEPA2 counterpart")


def _to_hf(sd: StateDict, prefixes: tuple[tuple[str, str], ...], where: str, out: StateDict) -> None:
    for key, value in sd.items():
        name = _rename(key, prefixes, True, where).replace(".attn.proj.", ".attention.proj.")
        if ".attn.qkv." in name:
            head, kind = name.split(".attn.qkv.")
            for part, chunk in zip(QKV, value.chunk(3, dim=0)):
                out[f"{head}.attention.{part}.{kind}"] = chunk.clone()  # safetensors refuses shared storage
        else:
            out[name] = value


def meta_to_hf(encoder_sd: StateDict, predictor_sd: StateDict) -> StateDict:
    """Meta-layout encoder + mask-token predictor state dicts -> one ``VJEPA2Model`` state dict."""
    if "action_encoder.weight" in predictor_sd:
        raise HFLayoutError("transformers has no V-JEPA 2-AC model (docs/reference.md R-peers-1.1); export the AC "
                            "predictor in Meta's layout instead")
    out: StateDict = {}
    _to_hf(encoder_sd, ENCODER_PREFIXES, "encoder", out)
    tokens = {int(k.split(".")[1]): v for k, v in predictor_sd.items() if k.startswith("mask_tokens.")}
    if sorted(tokens) != list(range(len(tokens))):
        raise HFLayoutError(f"predictor: mask tokens {sorted(tokens)} are not numbered 0..n-1")
    if tokens:
        out[HF_MASK_TOKENS] = torch.stack([tokens[i] for i in range(len(tokens))])
    rest = {k: v for k, v in predictor_sd.items() if not k.startswith("mask_tokens.")}
    _to_hf(rest, PREDICTOR_PREFIXES, "predictor", out)
    return out


def hf_to_meta(hf_sd: StateDict) -> tuple[StateDict, StateDict]:
    """One ``VJEPA2Model`` state dict -> Meta-layout (encoder, predictor) state dicts."""
    groups: dict[str, dict[str, dict[str, Tensor]]] = {}
    encoder: StateDict = {}
    predictor: StateDict = {}
    for key, value in hf_sd.items():
        if key == HF_MASK_TOKENS:
            predictor.update({f"mask_tokens.{i}": t for i, t in enumerate(value.unbind(0))})
            continue
        match = _QKV_HF.match(key)
        if match:  # fused again below, q|k|v along the output dim
            head, part, kind = match.groups()
            groups.setdefault(f"{head}.attn.qkv.{kind}", {})[part] = value
            continue
        target, prefixes = (encoder, ENCODER_PREFIXES) if key.startswith("encoder.") else \
            (predictor, PREDICTOR_PREFIXES)
        target[_rename(key, prefixes, False, "HF state dict").replace(".attention.proj.", ".attn.proj.")] = value
    for name, parts in groups.items():
        if set(parts) != set(QKV):
            raise HFLayoutError(f"HF state dict: {name} lacks {sorted(set(QKV) - set(parts))}")
        fused = torch.cat([parts[p] for p in QKV], dim=0)
        target, prefixes = (encoder, ENCODER_PREFIXES) if name.startswith("encoder.") else \
            (predictor, PREDICTOR_PREFIXES)
        target[_rename(name, prefixes, False, "HF state dict")] = fused
    return encoder, predictor


def _ratio(hidden: int, width: int, what: str) -> float:
    ratio = hidden / width
    if int(width * ratio) != hidden:  # HF sizes its MLP with int(width * mlp_ratio)
        raise HFLayoutError(f"{what}: MLP width {hidden} is not expressible as int({width} * mlp_ratio)")
    return ratio


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """``config.json`` for ``VJEPA2Model``; our full config rides along under ``vjepa2_ray``."""
    enc, pred = cfg.encoder, cfg.predictor
    if cfg.ac_predictor is not None:
        raise HFLayoutError("transformers has no V-JEPA 2-AC model (docs/reference.md R-peers-1.1)")
    if enc.rope_interleave:
        raise HFLayoutError("transformers' VJEPA2 only implements the tiled RoPE layout (docs/reference.md "
                            "R-peers-1.5); a model with encoder.rope_interleave=true would give different features "
                            "there")
    return {
        "model_type": "vjepa2", "architectures": ["VJEPA2Model"],
        "patch_size": enc.patch_size, "crop_size": enc.img_size, "frames_per_clip": enc.num_frames,
        "tubelet_size": enc.tubelet_size, "in_chans": enc.in_chans, "hidden_size": enc.embed_dim,
        "num_attention_heads": enc.num_heads, "num_hidden_layers": enc.depth,
        "mlp_ratio": _ratio(enc.mlp_hidden, enc.embed_dim, "encoder"), "qkv_bias": enc.qkv_bias,
        "layer_norm_eps": 1e-6, "hidden_act": "gelu",
        "pred_hidden_size": pred.embed_dim, "pred_num_attention_heads": pred.num_heads,
        "pred_num_hidden_layers": pred.depth, "pred_num_mask_tokens": pred.num_mask_tokens,
        "pred_zero_init_mask_tokens": True, "pred_mlp_ratio": _ratio(pred.mlp_hidden, pred.embed_dim, "predictor"),
        ARCH_KEY: {"format": FORMAT_VERSION, "model_cfg": to_dict(cfg)},
    }


def _same_arch(a: ModelConfig, b: ModelConfig) -> bool:
    ea, eb = a.encoder, b.encoder
    return (ea.embed_dim, ea.depth, ea.num_heads, ea.mlp_hidden, ea.img_size, ea.patch_size, a.predictor) == \
        (eb.embed_dim, eb.depth, eb.num_heads, eb.mlp_hidden, eb.img_size, eb.patch_size, b.predictor)


def model_cfg_from_hf(config: dict[str, Any], where: str) -> ModelConfig:
    """Our ModelConfig for a HF ``config.json``: its ``vjepa2_ray`` record, else the matching preset
    (Meta's hub configs say ``frames_per_clip: 64``; the preset's 16 frames is the eval default), else a
    ``custom`` config built from the HF fields."""
    if ARCH_KEY in config:
        try:
            return from_dict(ModelConfig, config[ARCH_KEY]["model_cfg"], origin_name=f"{where}:{ARCH_KEY}")
        except (KeyError, TypeError, ConfigError) as exc:
            raise HFLayoutError(f"{where}: unreadable '{ARCH_KEY}' record: {exc}") from exc
    if config.get("model_type") != "vjepa2":
        raise HFLayoutError(f"{where}: model_type is {config.get('model_type')!r}, expected 'vjepa2'")
    for name, want in (("layer_norm_eps", 1e-6), ("hidden_act", "gelu"), ("qkv_bias", True)):
        if config.get(name, want) != want:
            raise HFLayoutError(f"{where}: {name}={config[name]!r} is not supported (V-JEPA 2 uses {want!r})")
    try:
        width, pred_width = config["hidden_size"], config["pred_hidden_size"]
        cfg = ModelConfig(
            preset="custom",
            encoder=EncoderConfig(img_size=config["crop_size"], num_frames=config["frames_per_clip"],
                                  patch_size=config["patch_size"], tubelet_size=config["tubelet_size"],
                                  in_chans=config["in_chans"], embed_dim=width, depth=config["num_hidden_layers"],
                                  num_heads=config["num_attention_heads"],
                                  mlp_ratio=int(width * config["mlp_ratio"]) / width),
            predictor=PredictorConfig(embed_dim=pred_width, depth=config["pred_num_hidden_layers"],
                                      num_heads=config["pred_num_attention_heads"],
                                      mlp_ratio=int(pred_width * config["pred_mlp_ratio"]) / pred_width,
                                      num_mask_tokens=config["pred_num_mask_tokens"]))
    except KeyError as exc:
        raise HFLayoutError(f"{where}: config.json lacks {exc}") from exc
    for name in list_presets():
        preset = load_model_preset(name)
        if preset.ac_predictor is None and _same_arch(preset, cfg):
            return preset
    return cfg


def is_hf_dir(path: str) -> bool:
    return storage.exists(storage.join(path, CONFIG_FILE))


def processor_config(cfg: ModelConfig) -> dict[str, Any]:
    """``VJEPA2VideoProcessor`` settings equal to this project's eval preprocessing at the model's resolution
    (``pipelines.transforms.eval_preprocess``: short side to int(crop * 256 / 224), bilinear, center crop,
    ImageNet mean/std; docs/reference.md R-vjepa2-8.2), so HF users feed the model what our evaluation does."""
    crop = cfg.encoder.img_size
    return {
        "video_processor_type": "VJEPA2VideoProcessor",
        "do_resize": True, "size": {"shortest_edge": int(crop * RESIZE_RATIO)}, "resample": PIL_BILINEAR,
        "do_center_crop": True, "crop_size": {"height": crop, "width": crop},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD),
    }


def training_provenance(extras: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint's extras say about the run that trained it (empty when they say nothing): this
    project's training record (step, git revision, MLflow run), else a Meta training file's ``epoch``."""
    record = extras.get(TRAIN_RECORD)
    if isinstance(record, dict):
        fields = {"step": (record.get("state") or {}).get("step"), "git revision": record.get("git_revision"),
                  "MLflow run": record.get("mlflow_run_id"), "world size": record.get("world_size")}
        return {k: v for k, v in fields.items() if v is not None}
    return {"epoch": extras["epoch"]} if "epoch" in extras else {}


def model_card(cfg: ModelConfig, source: str = "", training: dict[str, Any] | None = None) -> str:
    """The export's ``README.md``: what the model is, where it came from, how to feed and load it."""
    enc, pred, crop = cfg.encoder, cfg.predictor, cfg.encoder.img_size
    counts = count_params(cfg)
    trained = "\n".join(f"- {k}: `{v}`" for k, v in (training or {}).items()) or \
        "- training: not recorded in the source checkpoint"
    rows = [("encoder", enc.embed_dim, enc.depth, enc.num_heads, enc.mlp_hidden,
             f"{enc.patch_size} x {enc.tubelet_size} patches"),
            ("predictor", pred.embed_dim, pred.depth, pred.num_heads, pred.mlp_hidden,
             f"{pred.num_mask_tokens} mask tokens")]
    table = "\n".join(f"| {name} | {width} x {depth} | {heads} | {mlp} | {extra} | {counts[name]:,} |"
                      for name, width, depth, heads, mlp, extra in rows)
    return f"""---
library_name: transformers
tags: [video, vjepa2, self-supervised-learning, feature-extraction]
---

# V-JEPA 2 `{cfg.preset}` (exported by vjepa2-ray)

A V-JEPA 2 video encoder with its mask-token predictor, in the layout of `transformers`' `VJEPA2Model`.

## Architecture

| part | width x depth | heads | MLP | tokens | parameters |
|---|---|---|---|---|---|
{table}

Preset `{cfg.preset}` (`configs/model/{cfg.preset}.yaml` in vjepa2-ray): {crop} px, {enc.num_frames} frames per clip.
3D RoPE, no CLS token; the encoder returns one token per {enc.tubelet_size} x {enc.patch_size} x {enc.patch_size} \
tubelet. The full vjepa2-ray config is in `config.json` under `{ARCH_KEY}`.

## Provenance

- source checkpoint: `{source or "unknown"}`
{trained}

## Preprocessing

`{PROCESSOR_FILE}` (`VJEPA2VideoProcessor`) holds the eval preprocessing of vjepa2-ray
(`pipelines.transforms.eval_preprocess`): short side resized to {int(crop * RESIZE_RATIO)} px (bilinear,
antialiased), center crop to {crop} x {crop}, scaled to [0, 1], ImageNet mean {list(IMAGENET_MEAN)} and
std {list(IMAGENET_STD)}. transformers resizes uint8 frames and truncates the resized long side and the crop
offset, where vjepa2-ray resizes floats and rounds both: the two agree to one uint8 level on frames where
truncating and rounding give the same size and offset (4:3 at 256 px), and sit one pixel apart otherwise
(16:9 at 256 px).

## How to load

```python
from transformers import AutoModel, AutoVideoProcessor

model = AutoModel.from_pretrained("path/to/this/dir")
processor = AutoVideoProcessor.from_pretrained("path/to/this/dir")
inputs = processor(videos=[frames], return_tensors="pt")  # frames: uint8 [T, H, W, 3]
tokens = model.get_vision_features(**inputs)              # [1, N, {enc.embed_dim}]
```

With vjepa2-ray: `from models import hub; encoder = hub.load_encoder(checkpoint="path/to/this/dir")`, or
`vjepa2-ray embed --checkpoint path/to/this/dir ...`; `vjepa2-ray convert` turns it back into Meta's layout.

## License

The weights keep the terms of the checkpoint they came from: Meta's released V-JEPA 2 weights come under
the license of Meta's release, weights trained with vjepa2-ray (Apache-2.0 code) under the terms of their
training data. Check both before redistributing.
"""


def save_hf(out_dir: str | Path, encoder_sd: StateDict, predictor_sd: StateDict, cfg: ModelConfig,
            source: str = "", training: dict[str, Any] | None = None) -> None:
    """Write ``model.safetensors`` + ``config.json`` (loadable by ``AutoModel.from_pretrained``), the video
    processor config (``AutoVideoProcessor.from_pretrained``) and a model card naming ``source`` and the
    ``training`` provenance (:func:`training_provenance`)."""
    out_dir = str(out_dir)
    config = hf_config(cfg)
    tensors = {k: v.contiguous() for k, v in meta_to_hf(encoder_sd, predictor_sd).items()}
    if not storage.is_s3(out_dir):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    storage.write_bytes(storage.join(out_dir, MODEL_FILE), save_safetensors(tensors, metadata={"format": "pt"}))
    storage.write_bytes(storage.join(out_dir, CONFIG_FILE), json.dumps(config, indent=2).encode())
    storage.write_bytes(storage.join(out_dir, PROCESSOR_FILE), json.dumps(processor_config(cfg), indent=2).encode())
    storage.write_bytes(storage.join(out_dir, CARD_FILE), model_card(cfg, source, training).encode())


def load_hf(path: str | Path) -> tuple[ModelConfig, StateDict, StateDict]:
    """(config, encoder, predictor) of a HF VJEPA2 directory, in Meta's layout."""
    path = str(path)
    if not is_hf_dir(path):
        raise HFLayoutError(f"{path}: not a HF model directory (no {CONFIG_FILE})")
    config_uri, weights_uri = storage.join(path, CONFIG_FILE), storage.join(path, MODEL_FILE)
    try:
        config = json.loads(storage.read_bytes(config_uri))
    except json.JSONDecodeError as exc:
        raise HFLayoutError(f"{config_uri}: not valid JSON: {exc}") from exc
    if not storage.exists(weights_uri):
        raise HFLayoutError(f"{path}: no {MODEL_FILE} (sharded HF checkpoints are not supported)")
    try:
        hf_sd = load_safetensors(storage.read_bytes(weights_uri))
    except Exception as exc:  # safetensors raises its own SafetensorError for corrupt files
        raise HFLayoutError(f"{weights_uri}: not a safetensors file ({exc})") from exc
    encoder, predictor = hf_to_meta(hf_sd)
    return model_cfg_from_hf(config, config_uri), encoder, predictor
