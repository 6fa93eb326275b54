"""The Python loading API (models/hub.py, hubconf.py; issue 12): every network by preset (random init) and
from each checkpoint kind, loaded strictly, plus the matching preprocessing and torch.hub's local entry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import hubconf
from core.config import to_dict
from core.errors import UserError
from models import hub
from models.ac_predictor import ACPredictor
from models.build import build_model, load_model_preset
from models.checkpoint import CheckpointError, save_meta_checkpoint
from models.encoder import VisionTransformer
from models.hf import save_hf
from models.predictor import Predictor
from pipelines.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_preprocess
from train.init_checkpoint import init_checkpoint
from train.state import TrainState, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
StateDict = dict[str, torch.Tensor]


def assert_same(module: nn.Module, want: StateDict) -> None:
    got = module.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def _random(preset: str, seed: int) -> tuple[StateDict, StateDict]:
    torch.manual_seed(seed)
    encoder, predictor = build_model(load_model_preset(preset))
    return encoder.state_dict(), predictor.state_dict()


@pytest.fixture(scope="module")
def trained() -> nn.ModuleDict:
    """A tiny model as training holds it; encoder and target encoder differ, so reading the wrong key shows."""
    cfg = load_model_preset("tiny")
    torch.manual_seed(1)
    return nn.ModuleDict({"encoder": VisionTransformer(cfg.encoder), "target_encoder": VisionTransformer(cfg.encoder),
                          "predictor": Predictor(cfg.predictor, cfg.encoder)})


@pytest.fixture(scope="module")
def weights(trained: nn.ModuleDict) -> dict[str, StateDict]:
    return {name: module.state_dict() for name, module in trained.items()}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, trained: nn.ModuleDict, weights: dict[str, StateDict]) -> dict[str, Path]:
    """The same tiny model as each checkpoint kind: Meta file, training checkpoint directory, HF directory."""
    tmp = tmp_path_factory.mktemp("hub")
    cfg = load_model_preset("tiny")
    save_meta_checkpoint(tmp / "meta.pt", weights["encoder"], weights["predictor"],
                         target_encoder_sd=weights["target_encoder"], model_cfg=cfg)
    save_checkpoint(tmp / "step_7", trained, torch.optim.AdamW(trained.parameters()), TrainState(step=7),
                    {"config": {"model": to_dict(cfg)}})
    save_hf(tmp / "hf", weights["encoder"], weights["predictor"], cfg)
    return {"meta": tmp / "meta.pt", "sharded": tmp / "step_7", "hf": tmp / "hf"}


def test_random_networks_by_preset_are_seeded_like_init_checkpoint(tmp_path: Path) -> None:
    init_checkpoint("tiny", 3, str(tmp_path / "init.pt"))
    written = torch.load(tmp_path / "init.pt", weights_only=True)
    rng = torch.get_rng_state()
    encoder, predictor = hub.load_model("tiny", seed=3)
    assert torch.equal(rng, torch.get_rng_state())  # the caller's RNG is left alone
    assert_same(encoder, written["encoder"])
    assert_same(predictor, written["predictor"])
    assert_same(hub.load_encoder("tiny", seed=3), written["encoder"])
    assert isinstance(hub.load_predictor("tiny"), Predictor)
    ac = hub.load_ac_predictor("tiny-ac")
    assert isinstance(ac, ACPredictor) and not ac.training
    assert all(p.requires_grad for p in encoder.parameters()) and not encoder.training


@pytest.mark.parametrize("kind", ["meta", "sharded", "hf"])
def test_every_network_loads_from_every_checkpoint_kind(checkpoints: dict[str, Path],
                                                        weights: dict[str, StateDict], kind: str) -> None:
    encoder, predictor = hub.load_model(checkpoint=checkpoints[kind])
    assert_same(encoder, weights["encoder"])
    assert_same(predictor, weights["predictor"])


def test_single_networks_from_a_checkpoint(checkpoints: dict[str, Path], weights: dict[str, StateDict]) -> None:
    path = str(checkpoints["sharded"])
    assert_same(hub.load_encoder(checkpoint=path, key="target_encoder"), weights["target_encoder"])
    assert_same(hub.load_predictor(checkpoint=path), weights["predictor"])


def test_ac_predictor_from_a_checkpoint_and_the_wrong_loader_named(tmp_path: Path) -> None:
    encoder, predictor = _random("tiny-ac", 4)
    save_meta_checkpoint(tmp_path / "ac.pt", encoder, predictor, model_cfg=load_model_preset("tiny-ac"))
    assert_same(hub.load_ac_predictor(checkpoint=tmp_path / "ac.pt"), predictor)
    with pytest.raises(UserError, match="action-conditioned predictor; use load_ac_predictor"):
        hub.load_predictor(checkpoint=tmp_path / "ac.pt")
    with pytest.raises(UserError, match="mask-token predictor; use load_predictor"):
        hub.load_ac_predictor("tiny")
    with pytest.raises(UserError, match="pass a preset"):
        hub.load_encoder()


def test_loads_are_strict(tmp_path: Path, weights: dict[str, StateDict]) -> None:
    extra = {**weights["encoder"], "blocks.9.attn.qkv.weight": torch.zeros(3)}
    save_meta_checkpoint(tmp_path / "extra.pt", extra, weights["predictor"], model_cfg=load_model_preset("tiny"))
    with pytest.raises(CheckpointError, match="unexpected keys: blocks.9.attn.qkv.weight"):
        hub.load_encoder(checkpoint=tmp_path / "extra.pt")


def test_meta_hub_names_bind_their_presets(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(hub, "load_model", lambda *args: calls.append(args))
    for name, preset in hub.META_MODELS.items():
        entry = getattr(hub, name)
        assert entry.__name__ == name and getattr(hubconf, name) is entry
        entry("ckpt.pt", "target_encoder", 5)
        assert calls.pop() == (preset, "ckpt.pt", "target_encoder", 5)
        assert (load_model_preset(preset).ac_predictor is not None) == ("_ac_" in name)


def test_preprocessing_matches_the_preset() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (4, 90, 160, 3), dtype=np.uint8)
    clip = hubconf.preprocessor("tiny")(frames)
    assert clip.shape == (3, 4, 128, 128)
    assert torch.equal(clip, eval_preprocess(frames, 128))
    assert hubconf.vjepa2_preprocessor()(frames).shape == (3, 4, 256, 256)  # Meta's default crop
    gray = hubconf.preprocessor("tiny")(np.full((2, 64, 64, 3), 255, dtype=np.uint8))
    want = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(gray.amax(dim=(1, 2, 3)), torch.tensor(want), atol=1e-6)
    assert torch.allclose(gray.amin(dim=(1, 2, 3)), torch.tensor(want), atol=1e-6)


def test_torch_hub_loads_the_entry_points_locally(checkpoints: dict[str, Path],
                                                  weights: dict[str, StateDict]) -> None:
    encoder = torch.hub.load(str(REPO), "load_encoder", checkpoint=str(checkpoints["meta"]), source="local")
    assert_same(encoder, weights["encoder"])
    preprocess = torch.hub.load(str(REPO), "preprocessor", "tiny", source="local")
    frames = np.zeros((2, 128, 128, 3), dtype=np.uint8)
    assert torch.equal(preprocess(frames), eval_preprocess(frames, 128))
