"""V-JEPA 2 objectives: the masked-prediction L1 loss, the EMA update, and the 2-AC rollout loss.

References: docs/reference.md R-vjepa2-4.1 (V-JEPA loss and EMA), R-vjepa2-6.3 (AC teacher forcing + rollout).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _local(t: Tensor) -> Tensor:
    """The local shard of an FSDP2 DTensor (aliasing its storage), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def normalize_targets(target_tokens: Tensor) -> Tensor:
    """docs/reference.md R-vjepa2-4.1: the target encoder's (already final-LN'd) output gets a second, parameter-free
    LN."""
    return F.layer_norm(target_tokens, (target_tokens.size(-1),))


def vjepa_loss(preds: Sequence[Tensor], target_tokens: Tensor,
               pred_masks: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """Mean over mask configs of ``mean |pred - LN(target)[mask]|`` (L1, loss_exp 1, docs/reference.md R-vjepa2-4.1).

    ``target_tokens [B, N, D]`` is the target encoder's output on the full clip; it is normalised here
    (parameter-free layer norm) and detached, then gathered at each config's target ids ``[B, Kt]``.
    Returns the loss and the per-config losses.
    """
    if len(preds) != len(pred_masks):
        raise ValueError(f"{len(preds)} predictions for {len(pred_masks)} target masks")
    target = normalize_targets(target_tokens.detach())
    per_cfg = []
    for pred, mask in zip(preds, pred_masks):
        wanted = target.gather(1, mask.unsqueeze(-1).expand(-1, -1, target.size(-1)))
        per_cfg.append((pred - wanted).abs().mean())
    return torch.stack(per_cfg).mean(), per_cfg


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- m * target + (1 - m) * online`` parameter by parameter (docs/reference.md R-vjepa2-4.1).

    Works on plain tensors and on FSDP2 DTensors alike: both models must be sharded the same way, and
    the update runs on each parameter's local shard, so no communication happens.
    """
    target_params = dict(target.named_parameters())
    online_params = dict(online.named_parameters())
    if target_params.keys() != online_params.keys():
        diff = sorted(set(target_params) ^ set(online_params))
        raise ValueError(f"EMA: target and online models differ in parameters {diff[:8]}")
    tgt = [_local(p.data) for p in target_params.values()]
    src = [_local(online_params[name].data) for name in target_params]
    torch._foreach_mul_(tgt, momentum)
    torch._foreach_add_(tgt, src, alpha=1.0 - momentum)


def ac_loss(predictor: nn.Module, z: Tensor, actions: Tensor, states: Tensor,
            extrinsics: Tensor | None = None, auto_steps: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """V-JEPA 2-AC loss L_tf + L_ro (docs/reference.md R-vjepa2-6.3); returns (loss, teacher-forcing loss, rollout
    loss).

    ``z [B, T*H*W, D]``: the layer-normed frame features of the frozen encoder (targets, detached here);
    ``actions [B, T-1, A]``, ``states [B, T, S]`` (and ``extrinsics [B, T, E]``). Teacher forcing predicts
    frames 1..T-1 from frames 0..T-2 in one causal pass; the rollout starts from ``[z_0, z_hat_1]`` and
    appends ``auto_steps - 1`` predicted frames. Only the targets are detached: the gradient flows through
    the rollout back into the teacher-forced z_hat_1, as in Meta's code after fix 93366fe.
    """
    per_frame = predictor.tokens_per_frame
    z = z.detach()
    frames = z.size(1) // per_frame
    if auto_steps < 1 or auto_steps >= frames:
        raise ValueError(f"auto_steps must be in [1, {frames - 1}] for {frames} frames, got {auto_steps}")

    def step(x: Tensor, n: int) -> Tensor:
        ext = extrinsics[:, :n] if extrinsics is not None else None
        out = predictor(x, actions[:, :n], states[:, :n], ext)
        return F.layer_norm(out, (out.size(-1),))  # normalize_reps: predictions are layer-normed too

    z_tf = step(z[:, :-per_frame], frames - 1)
    loss_tf = (z_tf - z[:, per_frame:]).abs().mean()
    seq = torch.cat([z[:, :per_frame], z_tf[:, :per_frame]], dim=1)
    for n in range(1, auto_steps):
        seq = torch.cat([seq, step(seq, n + 1)[:, -per_frame:]], dim=1)
    rollout = seq[:, per_frame:]
    loss_ro = (rollout - z[:, per_frame:per_frame + rollout.size(1)]).abs().mean()
    return loss_tf + loss_ro, loss_tf, loss_ro
