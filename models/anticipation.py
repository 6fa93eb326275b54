"""Action anticipation on frozen V-JEPA 2 networks: the future tubelet and the 3-head probe (docs/anticipation.md).

Meta's EK100 eval (``evals/action_anticipation_frozen/``, docs/reference.md R-vjepa2-8.3) feeds the probe
more than the context clip's tokens: the pretrained predictor, given every encoder token as context,
predicts the tokens of one future tubelet ``tau`` seconds after the clip, and the probe reads
``[encoder tokens ; predicted tokens]``. The probe is the attentive pooler of ``models/probe.py`` with three
queries (verb, noun, action), each read out by its own linear head. Key names follow Meta's
``models.py`` (``pooler.*``, ``verb_classifier``, ``noun_classifier``, ``action_classifier``) so their
EK100 probe files load strictly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.modules import init_weights
from models.probe import AttentivePooler

TASKS = ("verb", "noun", "action")  # the pooler's queries, in Meta's order


def future_positions(num_ctx: int, tokens_per_tubelet: int, tau: Tensor, fps: float, tubelet_size: int,
                     tubelets: int = 1) -> Tensor:
    """Token ids ``[B, tubelets x tokens_per_tubelet]`` of the predicted future: the tubelets starting at
    temporal index ``T_ctx + int(tau x fps / tubelet_size)`` (``T_ctx`` the context's tubelets), as Meta's
    ``AnticipativeWrapper`` places them (truncated like its int64 cast): with tau 1 s at 8 fps and tubelets
    of 2 frames, 4 tubelets after the context's end."""
    steps = (tau.double() * fps / tubelet_size).to(torch.int64)  # [B]
    first = num_ctx + tokens_per_tubelet * steps
    return first[:, None] + torch.arange(tubelets * tokens_per_tubelet, device=tau.device)[None]


@torch.no_grad()
def anticipate(predictor: nn.Module, tokens: Tensor, grid: tuple[int, int, int], tau: Tensor, fps: float,
               tubelet_size: int, tubelets: int = 1, mask_index: int = 1) -> Tensor:
    """``[B, N, D]`` context tokens on ``grid`` -> ``[B, N + tubelets x h x w, D]``: the context followed
    by the predictor's tokens of the future tubelet(s) ``tau`` seconds (``[B]``) on. The context is every
    token (ids ``0..N-1``); ``mask_index`` 1 is the mask token Meta's direct predictor call uses."""
    batch, num_ctx, _ = tokens.shape
    context = torch.arange(num_ctx, device=tokens.device).expand(batch, -1)
    targets = future_positions(num_ctx, grid[1] * grid[2], tau.to(tokens.device), fps, tubelet_size, tubelets)
    predicted = predictor(tokens, context, targets, mask_index=mask_index, grid=grid)
    return torch.cat([tokens, predicted.to(tokens.dtype)], dim=1)


class AnticipativeClassifier(nn.Module):
    """Pooler with three queries + ``verb_classifier``, ``noun_classifier``, ``action_classifier``:
    ``[B, N, D]`` -> ``{"verb": [B, V], "noun": [B, Nn], "action": [B, A]}`` logits."""

    def __init__(self, embed_dim: int, num_heads: int, classes: dict[str, int], depth: int = 4,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.pooler = AttentivePooler(embed_dim, num_heads, depth, num_queries=len(TASKS), mlp_ratio=mlp_ratio)
        self.verb_classifier = nn.Linear(embed_dim, classes["verb"])
        self.noun_classifier = nn.Linear(embed_dim, classes["noun"])
        self.action_classifier = nn.Linear(embed_dim, classes["action"])
        for head in (self.verb_classifier, self.noun_classifier, self.action_classifier):
            init_weights(head)

    def forward(self, tokens: Tensor) -> dict[str, Tensor]:
        pooled = self.pooler(tokens)
        return {task: getattr(self, f"{task}_classifier")(pooled[:, i]) for i, task in enumerate(TASKS)}


class AnticipationBank(nn.Module):
    """``count`` independent 3-head probes over the same tokens (one per (lr, wd) pair, as
    :class:`models.probe.ProbeBank`): ``[B, N, D]`` -> per task logits ``[count, B, classes]``."""

    def __init__(self, count: int, embed_dim: int, num_heads: int, classes: dict[str, int], depth: int = 4,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if count < 1:
            raise ValueError(f"a probe bank needs at least one head, got {count}")
        self.classifiers = nn.ModuleList(
            AnticipativeClassifier(embed_dim, num_heads, classes, depth, mlp_ratio) for _ in range(count))

    def forward(self, tokens: Tensor) -> dict[str, Tensor]:
        outputs = [head(tokens) for head in self.classifiers]
        return {task: torch.stack([o[task] for o in outputs]) for task in TASKS}
