"""Attentive probe (docs/reference.md R-vjepa2-8.1): HF's VJEPA2AttentivePooler with eps 1e-5 as the oracle, init,
queries."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import VJEPA2Config
from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2AttentivePooler

from models.checkpoint import CheckpointError, load_probe_checkpoint, save_probe_checkpoint
from models.probe import AttentiveClassifier, AttentivePooler, ProbeBank
from train.probe_optim import ProbeGrid, head_schedules, probe_optimizer, set_head_lrs
from train.schedules import WarmupCosine


def _to_hf_pooler(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta pooler keys -> HF keys (docs/reference.md R-peers-1.9 classifier regexes, with the fused qkv/kv split)."""
    out = {}
    for key, value in sd.items():
        name = key.replace("blocks.", "self_attention_layers.").replace("cross_attention_block.",
                                                                        "cross_attention_layer.")
        name = name.replace(".norm1.", ".layer_norm1.").replace(".norm2.", ".layer_norm2.")
        if ".attn.qkv." in name:
            head, kind = name.split(".attn.qkv.")
            for part, chunk in zip("qkv", value.chunk(3)):
                out[f"{head}.self_attn.{part}_proj.{kind}"] = chunk
        elif ".xattn.kv." in name:
            head, kind = name.split(".xattn.kv.")
            for part, chunk in zip("kv", value.chunk(2)):
                out[f"{head}.cross_attn.{part}_proj.{kind}"] = chunk
        else:
            out[name.replace(".attn.proj.", ".self_attn.out_proj.").replace(".xattn.q.", ".cross_attn.q_proj.")] = value
    return out


def test_pooler_matches_transformers_with_reference_eps() -> None:
    torch.manual_seed(0)
    pooler = AttentivePooler(embed_dim=64, num_heads=4, depth=4).eval()
    config = VJEPA2Config(hidden_size=64, num_attention_heads=4, num_pooler_layers=3, layer_norm_eps=1e-5)
    hf = VJEPA2AttentivePooler(config).eval()
    hf.load_state_dict(_to_hf_pooler(pooler.state_dict()), strict=True)
    tokens = torch.randn(3, 40, 64)
    with torch.no_grad():
        ours = pooler(tokens).squeeze(1)
        assert (ours - hf(tokens)).abs().max() <= 1e-5
        # the eps matters: HF's own default (1e-6) gives a different answer
        hf_eps = VJEPA2AttentivePooler(VJEPA2Config(hidden_size=64, num_attention_heads=4)).eval()
        hf_eps.load_state_dict(_to_hf_pooler(pooler.state_dict()))
        assert (ours - hf_eps(tokens)).abs().max() > 1e-7
    assert all(m.eps == 1e-5 for m in pooler.modules() if isinstance(m, torch.nn.LayerNorm))


def test_cross_attention_has_no_output_projection_and_multiple_queries() -> None:
    pooler = AttentivePooler(embed_dim=32, num_heads=2, depth=1, num_queries=3)
    names = set(pooler.state_dict())
    assert "cross_attention_block.xattn.q.weight" in names and "cross_attention_block.xattn.kv.weight" in names
    assert not any("xattn.proj" in n for n in names)
    assert pooler(torch.randn(2, 10, 32)).shape == (2, 3, 32)


def test_classifier_shapes_and_meta_key_names() -> None:
    clf = AttentiveClassifier(embed_dim=32, num_heads=2, num_classes=5)
    assert clf(torch.randn(2, 10, 32)).shape == (2, 5)
    assert {"pooler.query_tokens", "linear.weight", "pooler.blocks.2.attn.qkv.weight"} <= set(clf.state_dict())


def test_residual_rescale_of_pooler_blocks() -> None:
    """Self-attention block l: proj, fc2 / sqrt(2l); cross block fc2 / sqrt(2 * 3) for depth 4."""
    torch.manual_seed(0)
    pooler = AttentivePooler(embed_dim=256, num_heads=4, depth=4)
    for layer, block in enumerate(pooler.blocks, start=1):
        assert abs(block.mlp.fc2.weight.std().item() / (0.02 / math.sqrt(2 * layer)) - 1) < 0.03
    fc2 = pooler.cross_attention_block.mlp.fc2.weight
    assert abs(fc2.std().item() / (0.02 / math.sqrt(6)) - 1) < 0.03
    shallow = AttentivePooler(embed_dim=256, num_heads=4, depth=1)
    assert abs(shallow.cross_attention_block.mlp.fc2.weight.std().item() / (0.02 / math.sqrt(2)) - 1) < 0.03


def _heads(count: int, classes: int = 5, dim: int = 32, seed: int = 0) -> list[AttentiveClassifier]:
    torch.manual_seed(seed)
    return [AttentiveClassifier(embed_dim=dim, num_heads=2, num_classes=classes, depth=2).eval() for _ in range(count)]


def test_probe_file_round_trips_in_metas_layout(tmp_path) -> None:
    heads, path = _heads(3), tmp_path / "probe.pt"
    save_probe_checkpoint(path, heads, extra={"epoch": 20, "labels": ["a", "b", "c", "d", "e"]})
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert len(raw["classifiers"]) == 3 and raw["epoch"] == 20
    assert all(k.startswith("module.") for sd in raw["classifiers"] for k in sd)
    fresh = _heads(3, seed=1)
    extra = load_probe_checkpoint(path, fresh)
    assert extra == {"epoch": 20, "labels": ["a", "b", "c", "d", "e"]}
    tokens = torch.randn(2, 12, 32)
    with torch.no_grad():
        for ours, loaded in zip(heads, fresh):
            assert torch.equal(ours(tokens), loaded(tokens))


def test_a_file_shaped_like_metas_release_loads_strictly(tmp_path) -> None:
    """Meta's eval saves DDP-prefixed heads plus its optimizer state (docs/reference.md R-vjepa2-9.2)."""
    head = _heads(1)[0]
    meta = {"classifiers": [{f"module.{k}": v for k, v in head.state_dict().items()}],
            "opt": [{"state": {}, "param_groups": []}], "scaler": None, "epoch": 20, "batch_size": 4,
            "world_size": 64, "lr": 0.005}
    torch.save(meta, tmp_path / "ssv2-vitl-16x2x3.pt")
    loaded = _heads(1, seed=3)
    assert load_probe_checkpoint(tmp_path / "ssv2-vitl-16x2x3.pt", loaded)["epoch"] == 20
    tokens = torch.randn(1, 8, 32)
    with torch.no_grad():
        assert torch.equal(loaded[0](tokens), head(tokens))


def test_probe_files_that_do_not_fit_name_the_file_and_field(tmp_path) -> None:
    path = tmp_path / "probe.pt"
    save_probe_checkpoint(path, _heads(2))
    with pytest.raises(CheckpointError, match=r"probe.pt: 'classifiers' holds 2 heads, the probe is configured with 3"):
        load_probe_checkpoint(path, _heads(3))
    with pytest.raises(CheckpointError, match=r"'classifiers\[0\]' does not fit.*linear.weight \(5, 32\) != \(7, 32\)"):
        load_probe_checkpoint(path, _heads(2, classes=7))
    with pytest.raises(CheckpointError, match=r"'classifiers\[0\]' does not fit.*wrong shapes"):
        load_probe_checkpoint(path, _heads(2, dim=64))
    torch.save({"encoder": {}}, tmp_path / "encoder.pt")
    with pytest.raises(CheckpointError, match=r"encoder.pt: no 'classifiers' list.*not a probe file"):
        load_probe_checkpoint(tmp_path / "encoder.pt", _heads(1))


def test_probe_bank_gives_every_head_its_logits_and_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    bank = ProbeBank(count=4, embed_dim=32, num_heads=2, num_classes=6, depth=1).eval()
    tokens = torch.randn(3, 10, 32)
    with torch.no_grad():
        logits = bank(tokens)
        assert logits.shape == (4, 3, 6) and not torch.allclose(logits[0], logits[1])  # independent inits
        assert torch.equal(logits[2], bank.classifiers[2](tokens))
    save_probe_checkpoint(tmp_path / "bank.pt", list(bank.classifiers))
    fresh = ProbeBank(count=4, embed_dim=32, num_heads=2, num_classes=6, depth=1).eval()
    load_probe_checkpoint(tmp_path / "bank.pt", list(fresh.classifiers))
    with torch.no_grad():
        assert torch.equal(fresh(tokens), logits)


def test_warmup_cosine_is_metas_probe_schedule() -> None:
    cosine = WarmupCosine(start=0.0, peak=1e-3, final=0.0, warmup_steps=0, t_max=100)
    assert cosine(49) == pytest.approx(5e-4)  # t = 50: half way down
    assert cosine(99) == 0.0 and cosine(150) == 0.0  # never below final
    assert 1e-3 > cosine(0) > 0.999e-3
    warm = WarmupCosine(start=1e-4, peak=1e-3, final=1e-5, warmup_steps=10, t_max=110)
    assert warm(4) == pytest.approx(1e-4 + 0.5 * 9e-4)  # t = 5 of 10
    assert warm(9) == pytest.approx(1e-3) and warm(59) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))


def test_one_optimizer_group_per_head_at_its_grid_pair() -> None:
    torch.manual_seed(0)
    assert ProbeGrid(lrs=[0.0, 1e-2], wds=[0.1, 0.8]).pairs() == [(0.0, 0.1), (1e-2, 0.1), (0.0, 0.8), (1e-2, 0.8)]
    grid = ProbeGrid(lrs=[0.0, 1e-2], wds=[0.1, 0.8], order="lr_major")  # Meta's IN1K numbering
    bank = ProbeBank(count=4, embed_dim=16, num_heads=2, num_classes=3, depth=1)
    optimizer = probe_optimizer(bank, grid)
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == grid.pairs() == [
        (0.0, 0.1), (0.0, 0.8), (1e-2, 0.1), (1e-2, 0.8)]
    assert all(len(g["params"]) == len(list(h.parameters())) for g, h in zip(optimizer.param_groups, bank.classifiers))
    before = [copy.deepcopy(h.state_dict()) for h in bank.classifiers]
    schedules = head_schedules(grid, total_steps=10)
    assert set_head_lrs(optimizer, schedules, 0)[:2] == [0.0, 0.0]
    logits = bank(torch.randn(5, 7, 16))
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.randint(0, 3, (5,)).repeat(4)).backward()
    optimizer.step()
    for head, old, lr in zip(bank.classifiers, before, [0.0, 0.0, 1e-2, 1e-2]):
        same = all(torch.equal(head.state_dict()[k], v) for k, v in old.items())
        assert same == (lr == 0.0)  # a head moves only at its own lr (decoupled WD scales with it too)
    with pytest.raises(ValueError, match="the grid has 4 .* for 3 heads"):
        probe_optimizer(ProbeBank(3, 16, 2, 3, depth=1), grid)
