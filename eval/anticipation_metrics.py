"""What one evaluation pass of an anticipation probe grid scores (plain numpy, no torch; docs/anticipation.md).

EK100's anticipation metric, as Meta's ``ClassMeanRecall`` computes it (docs/reference.md R-vjepa2-8.3): a clip
is a hit for a task when its class is among the 5 highest sigmoid scores; per class the share of its
clips that are hits (recall@5), averaged over the classes that have clips (class-mean, so rare actions
weigh as much as frequent ones). The action classes are the verb-noun pairs seen in training
(``pipelines.anticipation.Vocabulary``), so a validation row of an unseen pair never reaches the metric.

The head is chosen as for the classification probes (eval/probe_metrics.py): best action recall@5 on the
held-out ``select`` rows (ties: the lower focal loss there), reported on ``val``; the best head on val,
the number Meta logs, is kept beside it as ``val_action_recall5_max``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from models.anticipation import TASKS
from pipelines.labelled import SELECT, VAL

K = 5


def in_top_k(scores: np.ndarray, labels: np.ndarray, k: int = K) -> np.ndarray:
    """Whether each clip's label is among its ``k`` highest scores: scores ``[..., n, C]``, labels ``[n]``
    -> ``[..., n]`` bool. Ties with the label's score count against it, as a top-k that keeps the others."""
    picked = np.take_along_axis(scores, np.broadcast_to(labels[:, None], (*scores.shape[:-1], 1)), -1)
    return (scores > picked).sum(axis=-1) < min(k, scores.shape[-1])


def class_mean_recall(hits: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of their clips' hit rate (0 without clips)."""
    if not len(labels):
        return 0.0
    classes, inverse = np.unique(labels, return_inverse=True)
    return float((np.bincount(inverse, weights=hits.astype(float)) / np.bincount(inverse)).mean())


@dataclass
class AnticipationPredictions:
    """One evaluation pass, per clip: its part, its class of each task, and per head whether each task's
    class is in its top 5 and the clip's focal loss (verb + noun + action)."""

    sample: np.ndarray  # [n] int: the evaluation stream's sample id
    part: np.ndarray  # [n] int
    labels: np.ndarray  # [n, 3] int: verb, noun, action class
    hits: np.ndarray  # [n, heads, 3] bool
    loss: np.ndarray  # [n, heads] float

    @classmethod
    def concat(cls, parts: list[AnticipationPredictions]) -> AnticipationPredictions:
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def where(self, part: int) -> AnticipationPredictions:
        mask = self.part == part
        return AnticipationPredictions(*(getattr(self, f.name)[mask] for f in fields(self)))

    def __len__(self) -> int:
        return len(self.sample)

    def recall(self, head: int, task: int) -> float:
        return class_mean_recall(self.hits[:, head, task], self.labels[:, task])


def score(pred: AnticipationPredictions, default_head: int = 0) -> dict[str, float]:
    """The pass's metrics: the chosen head's recall@5 of every task on select and val, every head's
    action recall@5 on both, the best-on-val action number, and ``val_loss`` (the chosen head's mean
    focal loss on select, or on val without select rows)."""
    select, val = pred.where(SELECT), pred.where(VAL)
    heads = pred.hits.shape[1]
    action = TASKS.index("action")
    select_action = np.asarray([select.recall(h, action) for h in range(heads)])
    val_action = np.asarray([val.recall(h, action) for h in range(heads)])
    head = default_head
    if len(select):
        head = int(np.lexsort((select.loss.mean(axis=0), -select_action))[0])
    metrics = {"best_head": float(head), "select_clips": float(len(select)), "val_clips": float(len(val)),
               "val_action_recall5_max": float(val_action.max())}
    for name, part in (("select", select), ("val", val)):
        for t, task in enumerate(TASKS):
            metrics[f"{name}_{task}_recall5"] = part.recall(head, t)
    scored = select if len(select) else val
    metrics["val_loss"] = float(scored.loss[:, head].mean()) if len(scored) else float("nan")
    for h in range(heads):
        metrics[f"head_{h:02d}/select_action_recall5"] = float(select_action[h])
        metrics[f"head_{h:02d}/val_action_recall5"] = float(val_action[h])
    return metrics


def per_class_recall(pred: AnticipationPredictions, head: int, task: int, classes: int) -> list[float | None]:
    """Recall@5 of every class of a task for ``head`` (None for a class without clips)."""
    labels, hits = pred.labels[:, task], pred.hits[:, head, task]
    counts = np.bincount(labels, minlength=classes)
    found = np.bincount(labels, weights=hits.astype(float), minlength=classes)
    return [float(f / c) if c else None for f, c in zip(found, counts)]
