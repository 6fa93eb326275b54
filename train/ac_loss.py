"""The V-JEPA 2-AC objective and the rollout errors post-training is judged by (docs/reference.md R-vjepa2-6.3).

Tensors: ``z [B, T, n, D]`` the layer-normed frame tokens of a clip (targets, from the frozen encoder),
``actions [B, T-1, 7]``, ``states [B, T, 7]``. The predictor's output at step t predicts frame t+1 and
is layer-normed like the targets.

- Teacher forcing: one block-causal pass over z_0..z_{T-2} with a_0..a_{T-2}, s_0..s_{T-2} predicts
  z_1..z_{T-1}.
- Rollout (``auto_steps``): from [z_0, z^_1] (z^_1 the teacher-forced prediction, *not* detached, so
  the rollout's gradient reaches it), predict the next frame from the sequence so far with the true
  states and append it; the loss compares z^_1..z^_auto_steps with z_1..z_auto_steps.
- Loss = L_tf + L_ro, each ``mean(|z^ - z|^p) / p`` (p = ``loss_exp`` = 1: L1, Meta's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class ACLossConfig:
    auto_steps: int = 2  # rollout length of the second loss term (Meta's 2)
    loss_exp: float = 1.0  # 1: L1


def predict(predictor: nn.Module, frames: Tensor, actions: Tensor, states: Tensor) -> Tensor:
    """One block-causal pass: ``frames [B, k, n, D]`` with the first k actions and states -> the layer-normed
    predictions of frames 1..k ``[B, k, n, D]``."""
    batch, steps, tokens, dim = frames.shape
    out = predictor(frames.flatten(1, 2), actions[:, :steps], states[:, :steps])
    return F.layer_norm(out, (dim,)).view(batch, steps, tokens, dim)


def rollout(predictor: nn.Module, frames: Tensor, first: Tensor, actions: Tensor, states: Tensor,
            steps: int) -> Tensor:
    """Autoregressive predictions ``[B, steps, n, D]`` of the frames after ``frames [B, k, n, D]``, starting
    from ``first`` (the already computed prediction of frame k): each new frame is predicted from the
    sequence so far, true states fed."""
    seq, preds = torch.cat([frames, first[:, None]], 1), [first]
    for _ in range(steps - 1):
        nxt = predict(predictor, seq, actions, states)[:, -1]
        preds.append(nxt)
        seq = torch.cat([seq, nxt[:, None]], 1)
    return torch.stack(preds, 1)


def distance(pred: Tensor, target: Tensor, exp: float = 1.0) -> Tensor:
    return (pred - target).abs().pow(exp).mean() / exp


def ac_loss(predictor: nn.Module, z: Tensor, actions: Tensor, states: Tensor,
            cfg: ACLossConfig) -> tuple[Tensor, Tensor]:
    """(teacher-forcing loss, rollout loss) of one batch; their sum is what trains."""
    if not 1 <= cfg.auto_steps < z.size(1):
        raise ValueError(f"loss.auto_steps={cfg.auto_steps} needs clips of more than {cfg.auto_steps} frames")
    forced = predict(predictor, z[:, :-1], actions, states)
    rolled = rollout(predictor, z[:, :1], forced[:, 0], actions, states, cfg.auto_steps)
    return (distance(forced, z[:, 1:], cfg.loss_exp),
            distance(rolled, z[:, 1:cfg.auto_steps + 1], cfg.loss_exp))


def shuffled(actions: Tensor) -> Tensor:
    """Each sample gets the next sample's actions (samples are drawn from random episodes)."""
    return actions.roll(1, dims=0)


@torch.no_grad()
def rollout_errors(predictor: nn.Module, z: Tensor, actions: Tensor, states: Tensor) -> dict[str, Tensor]:
    """Mean L1 of 1-step and 2-step predictions over every start of the clip, for the predictor, for the
    same predictor fed shuffled actions, and for "copy the last frame" (z_t predicts z_{t+1} and z_{t+2}).
    Each value is the batch mean (a 0-d tensor)."""
    out: dict[str, Tensor] = {}
    frames = z.size(1)
    for name, acts in (("", actions), ("shuffled_", shuffled(actions))):
        forced = predict(predictor, z[:, :-1], acts, states)
        out[f"{name}l1_1step"] = (forced - z[:, 1:]).abs().mean()
        second = [rollout(predictor, z[:, :s + 1], forced[:, s], acts, states, 2)[:, 1] for s in range(frames - 2)]
        out[f"{name}l1_2step"] = (torch.stack(second, 1) - z[:, 2:]).abs().mean()
    out["copy_l1_1step"] = (z[:, :-1] - z[:, 1:]).abs().mean()
    out["copy_l1_2step"] = (z[:, :-2] - z[:, 2:]).abs().mean()
    return out


@torch.no_grad()
def next_frame_errors(predictor: nn.Module, z: Tensor, actions: Tensor, states: Tensor, context: int) -> Tensor:
    """Per-frame 1-step L1 along one long sequence ``z [1, n, tokens, D]`` (an episode, not a clip): frame t
    predicted from the at most ``context`` frames before it (teacher forcing over a window as long as a
    training clip's, so positions never exceed what training saw) -> ``[n - 1]``, entry t - 1 for frame t."""
    errors = []
    for t in range(1, z.size(1)):
        start = max(0, t - context)
        pred = predict(predictor, z[:, start:t], actions[:, start:t], states[:, start:t])[:, -1]
        errors.append((pred - z[:, t]).abs().mean())
    return torch.stack(errors)
