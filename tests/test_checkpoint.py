"""Meta-layout checkpoints (docs/reference.md R-vjepa2-9.2): prefixes, legacy keys, extras, round trips, preset
recognition,
and the named errors for bad files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from models.ac_predictor import ACPredictor
from models.build import build_model, load_model_preset, recognise_preset
from models.checkpoint import (
    ARCH_KEY,
    CheckpointError,
    load_encoder,
    load_meta_checkpoint,
    load_predictor,
    resolve_model_cfg,
    save_meta_checkpoint,
)


def _meta_release_file(path: Path, preset: str = "tiny") -> dict[str, dict[str, torch.Tensor]]:
    """A file shaped like Meta's releases/training files: module.backbone. prefixes, a legacy pos_embed,
    optimizer and bookkeeping keys, no architecture record. Returns the bare state dicts."""
    torch.manual_seed(0)
    encoder, predictor = build_model(load_model_preset(preset))
    target = {k: v + 1.0 for k, v in encoder.state_dict().items()}
    bare = {"encoder": encoder.state_dict(), "target_encoder": target, "predictor": predictor.state_dict()}
    wrapped = {key: {f"module.backbone.{k}": v for k, v in sd.items()} for key, sd in bare.items()}
    wrapped["encoder"]["module.backbone.pos_embed"] = torch.zeros(1, 256, 192)
    wrapped["predictor"]["module.backbone.predictor_pos_embed"] = torch.zeros(1, 256, 96)
    torch.save({**wrapped, "opt": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "epoch": 7, "loss": 0.5,
                "batch_size": 24, "world_size": 128, "lr": 5.25e-4}, path)
    return bare


def test_release_layout_loads_with_prefixes_stripped_and_legacy_dropped(tmp_path: Path) -> None:
    bare = _meta_release_file(tmp_path / "vitl.pt")
    ckpt = load_meta_checkpoint(tmp_path / "vitl.pt")
    assert ckpt.model_cfg is None
    assert ckpt.encoder.keys() == bare["encoder"].keys()
    assert ckpt.predictor.keys() == bare["predictor"].keys()
    assert ckpt.legacy == {"encoder.pos_embed": (1, 256, 192), "predictor.predictor_pos_embed": (1, 256, 96)}
    assert ckpt.extras["epoch"] == 7 and "opt" in ckpt.extras
    assert len([k for k in ckpt.predictor if k.startswith("mask_tokens.")]) == 10


@pytest.mark.parametrize("key", ["encoder", "target_encoder"])
def test_load_encoder_from_either_key_recognising_the_preset(tmp_path: Path, key: str) -> None:
    bare = _meta_release_file(tmp_path / "ckpt.pt")
    encoder, cfg = load_encoder(tmp_path / "ckpt.pt", key=key)
    assert cfg.preset == "tiny" and not encoder.training
    assert all(torch.equal(v, bare[key][k]) for k, v in encoder.state_dict().items())


def test_meta_to_ours_to_meta_keeps_every_tensor_bit_exact(tmp_path: Path) -> None:
    bare = _meta_release_file(tmp_path / "in.pt")
    ckpt = load_meta_checkpoint(tmp_path / "in.pt")
    cfg = resolve_model_cfg(ckpt)
    save_meta_checkpoint(tmp_path / "out.pt", ckpt.encoder, ckpt.predictor, ckpt.target_encoder,
                         model_cfg=cfg, extra=ckpt.extras)
    raw = torch.load(tmp_path / "out.pt", weights_only=True)
    for key in ("encoder", "target_encoder", "predictor"):
        assert raw[key].keys() == bare[key].keys()  # bare keys, as Meta's loaders expect after stripping
        assert all(torch.equal(raw[key][k], bare[key][k]) for k in bare[key])
    assert raw["epoch"] == 7 and raw["opt"]["param_groups"][0]["lr"] == 1e-4
    assert raw[ARCH_KEY]["model_cfg"]["preset"] == "tiny"
    assert load_meta_checkpoint(tmp_path / "out.pt").model_cfg == load_model_preset("tiny")


def _shapes_of(preset: str) -> tuple[dict, dict]:
    with torch.device("meta"):
        encoder, predictor = build_model(load_model_preset(preset))
    return encoder.state_dict(), predictor.state_dict()


@pytest.mark.parametrize("preset", ["vitl", "vith", "vitg", "vitg-ac", "tiny-ac"])
def test_presets_are_recognised_from_tensor_shapes(preset: str) -> None:
    encoder_sd, predictor_sd = _shapes_of(preset)
    assert recognise_preset(encoder_sd, predictor_sd).preset == preset


def test_vitg_384_needs_the_legacy_pos_embed_or_a_preset(caplog: pytest.LogCaptureFixture) -> None:
    """256 and 384 px ViT-g share every weight shape; a 64-frame 384-px pos_embed has 32 x 24 x 24 tokens."""
    encoder_sd, predictor_sd = _shapes_of("vitg-384")
    assert recognise_preset(encoder_sd, predictor_sd, pos_embed_tokens=32 * 24 * 24).preset == "vitg-384"
    assert recognise_preset(encoder_sd, predictor_sd, pos_embed_tokens=32 * 16 * 16).preset == "vitg"
    with caplog.at_level(logging.WARNING):
        assert recognise_preset(encoder_sd, predictor_sd).preset == "vitg"
    assert "vitg-384" in caplog.text and "--preset" in caplog.text


def test_ac_checkpoint_loads_encoder_and_action_conditioned_predictor(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder, predictor = build_model(load_model_preset("tiny-ac"))
    torch.save({"encoder": {f"module.{k}": v for k, v in encoder.state_dict().items()},
                "predictor": {f"module.{k}": v for k, v in predictor.state_dict().items()}}, tmp_path / "ac.pt")
    ckpt = load_meta_checkpoint(tmp_path / "ac.pt")
    cfg = resolve_model_cfg(ckpt)
    assert cfg.preset == "tiny-ac"
    loaded = load_predictor(ckpt, cfg)
    assert isinstance(loaded, ACPredictor)
    assert {"action_encoder.weight", "state_encoder.weight", "extrinsics_encoder.weight"} <= set(ckpt.predictor)
    assert all(torch.equal(v, predictor.state_dict()[k]) for k, v in loaded.state_dict().items())


class _NotAllowed:
    pass


@pytest.mark.parametrize(("content", "message"), [
    (b"hello, not a checkpoint", "not a PyTorch checkpoint (neither"),
    (b"PK\x03\x04 truncated zip", "not a PyTorch checkpoint loadable"),
    ("list", "expected a dict checkpoint"),
    ({"weights": {}}, "none of ['encoder', 'target_encoder', 'predictor']"),
    ({"encoder": {"a": 1}}, "'encoder' is not a state dict"),
    ("pickle", "_NotAllowed"),  # an arbitrary object: refused by weights_only=True, never unpickled
])
def test_files_that_are_not_checkpoints_are_named(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "list":
        torch.save([torch.zeros(1)], path)
    elif content == "pickle":
        torch.save({"encoder": _NotAllowed()}, path)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match="bad.pt") as info:
        load_meta_checkpoint(path)
    assert message in str(info.value)


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path: Path) -> None:
    bare = _meta_release_file(tmp_path / "ok.pt")
    enc = dict(bare["encoder"])
    del enc["blocks.1.mlp.fc2.bias"]
    enc["blocks.0.attn.extra"] = torch.zeros(1)
    enc["norm.weight"] = torch.zeros(7)
    save_meta_checkpoint(tmp_path / "broken.pt", enc, bare["predictor"], model_cfg=load_model_preset("tiny"))
    with pytest.raises(CheckpointError) as info:
        load_encoder(tmp_path / "broken.pt")
    text = str(info.value)
    assert "broken.pt" in text and "'encoder'" in text
    assert "missing keys: blocks.1.mlp.fc2.bias" in text
    assert "unexpected keys: blocks.0.attn.extra" in text
    assert "norm.weight (7,) != (192,)" in text


def test_absent_key_and_unknown_architecture_are_named(tmp_path: Path) -> None:
    bare = _meta_release_file(tmp_path / "ok.pt")
    save_meta_checkpoint(tmp_path / "no_target.pt", bare["encoder"], bare["predictor"])
    has = r"no 'target_encoder' state dict \(file has: \['encoder', 'predictor'\]\)"
    with pytest.raises(CheckpointError, match=has):
        load_encoder(tmp_path / "no_target.pt", key="target_encoder")
    odd = {k: v for k, v in bare["encoder"].items() if not k.startswith("blocks.3.")}  # depth 3: no preset
    save_meta_checkpoint(tmp_path / "odd.pt", odd, bare["predictor"])
    with pytest.raises(CheckpointError, match="match no preset.*--preset"):
        load_encoder(tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_encoder(tmp_path / "absent.pt")
