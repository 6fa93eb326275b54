"""V-JEPA loss, EMA (plain and FSDP2 DTensor), and the 2-AC teacher-forcing + rollout loss (docs/reference.md
R-vjepa2-4.1, R-vjepa2-6.3)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.ac_predictor import ACPredictor
from models.build import build_predictor, load_model_preset
from train.losses import ac_loss, ema_update, vjepa_loss


def test_vjepa_loss_is_mean_l1_to_layer_normed_targets_averaged_over_configs() -> None:
    torch.manual_seed(0)
    target = torch.randn(2, 50, 8) * 3 + 1
    masks = [torch.randint(0, 50, (2, 7)), torch.randint(0, 50, (2, 20))]
    preds = [torch.randn(2, 7, 8, requires_grad=True), torch.randn(2, 20, 8, requires_grad=True)]
    loss, per_cfg = vjepa_loss(preds, target, masks)
    normed = F.layer_norm(target, (8,))
    expected = [(p - torch.stack([normed[b, m[b]] for b in range(2)])).abs().mean() for p, m in zip(preds, masks)]
    assert torch.allclose(torch.stack(per_cfg), torch.stack(expected))
    assert torch.allclose(loss, (expected[0] + expected[1]) / 2)
    # the extra LN is parameter-free: a per-token affine change of the targets does not move the loss
    shifted, _ = vjepa_loss(preds, target * 5 - 2, masks)
    assert torch.allclose(shifted, loss, atol=1e-5)
    loss.backward()
    assert preds[0].grad is not None


def test_vjepa_loss_stops_the_gradient_at_the_targets() -> None:
    target = torch.randn(1, 10, 4, requires_grad=True)
    loss, _ = vjepa_loss([torch.randn(1, 3, 4, requires_grad=True)], target, [torch.tensor([[1, 2, 3]])])
    loss.backward()
    assert target.grad is None


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2))
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    return target, online


def test_ema_update_plain_tensors() -> None:
    target, online = _pair()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    ema_update(target, online, 0.99925)
    for name, value in target.state_dict().items():
        want = 0.99925 * before[name] + (1 - 0.99925) * online.state_dict()[name]
        assert torch.allclose(value, want, atol=1e-7), name
    with pytest.raises(ValueError, match="differ in parameters"):
        ema_update(target, nn.Linear(4, 6), 0.5)


def test_ema_update_on_fsdp2_dtensors() -> None:
    """The trainer shards both encoders with FSDP2; the update must work on the DTensor parameters."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    if dist.is_initialized():
        pytest.fail("a process group is already initialised in this test process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        target, online = _pair()
        before_t = {k: v.clone() for k, v in target.state_dict().items()}
        before_o = {k: v.clone() for k, v in online.state_dict().items()}
        mesh = init_device_mesh("cpu", (1,))
        for model in (target, online):
            fully_shard(model, mesh=mesh)
        assert isinstance(target[0].weight, DTensor)
        ema_update(target, online, 0.9)
        for name, value in target.state_dict().items():
            want = 0.9 * before_t[name] + 0.1 * before_o[name]
            assert torch.allclose(value.full_tensor(), want, atol=1e-6), name
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ac() -> ACPredictor:
    torch.manual_seed(0)
    return build_predictor(load_model_preset("tiny-ac"))


def _ac_inputs(frames: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    z = F.layer_norm(torch.randn(2, frames * 64, 192), (192,))
    return z, torch.randn(2, frames - 1, 7), torch.randn(2, frames, 7)


def _manual_ac_terms(ac: ACPredictor, z, actions, states, detach_first: bool):
    step = lambda x, n: F.layer_norm(ac(x, actions[:, :n], states[:, :n]), (192,))  # noqa: E731
    z_tf = step(z[:, :-64], 3)
    first = z_tf[:, :64].detach() if detach_first else z_tf[:, :64]
    z_2 = step(torch.cat([z[:, :64], first], dim=1), 2)[:, -64:]
    loss_tf = (z_tf - z[:, 64:]).abs().mean()
    loss_ro = (torch.cat([z_tf[:, :64], z_2], dim=1) - z[:, 64:192]).abs().mean()
    return loss_tf, loss_ro


def test_ac_loss_values_match_teacher_forcing_plus_two_step_rollout(ac: ACPredictor) -> None:
    z, actions, states = _ac_inputs()
    loss, loss_tf, loss_ro = ac_loss(ac, z, actions, states, auto_steps=2)
    want_tf, want_ro = _manual_ac_terms(ac, z, actions, states, detach_first=False)
    assert torch.allclose(loss_tf, want_tf) and torch.allclose(loss_ro, want_ro)
    assert torch.allclose(loss, want_tf + want_ro)


def test_ac_rollout_gradient_flows_back_through_the_teacher_forced_prediction(ac: ACPredictor) -> None:
    """docs/reference.md R-vjepa2-6.3 (fix 93366fe): z_hat_1 is not detached inside the rollout."""
    z, actions, states = _ac_inputs()

    def grad_of(loss: torch.Tensor) -> torch.Tensor:
        ac.zero_grad()
        loss.backward()
        return ac.predictor_embed.weight.grad.clone()

    ours = grad_of(ac_loss(ac, z, actions, states)[2])
    attached = grad_of(_manual_ac_terms(ac, z, actions, states, detach_first=False)[1])
    detached = grad_of(_manual_ac_terms(ac, z, actions, states, detach_first=True)[1])
    assert torch.allclose(ours, attached, atol=1e-6)
    assert not torch.allclose(ours, detached, atol=1e-6)


def test_ac_loss_rejects_a_rollout_longer_than_the_clip(ac: ACPredictor) -> None:
    z, actions, states = _ac_inputs(frames=2)
    with pytest.raises(ValueError, match="auto_steps"):
        ac_loss(ac, z, actions, states, auto_steps=2)
