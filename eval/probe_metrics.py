"""What one evaluation pass of a probe grid scores, from per-clip predictions (plain numpy, no torch).

Every head of the grid is scored on both evaluation parts: ``select`` (held out from training) and
``val``. The head reported is the one with the best top-1 on ``select`` (ties: the lower
cross-entropy there), and its ``val`` numbers are the result; the best head *on val* is kept beside it
as ``val_top1_max``, the number Meta's eval logs (docs/eval.md). Without ``select`` rows (evaluating a
given probe file) the head is the one the file names, else head 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.labelled import SELECT, VAL


@dataclass
class Predictions:
    """One evaluation pass, per clip: which part, the label, and per head the top-1 class, whether the
    label is in the top 5, and the cross-entropy of the view-averaged softmax."""

    sample: np.ndarray  # [n] int: the evaluation stream's sample id (select rows first, then val rows)
    part: np.ndarray  # [n] int
    label: np.ndarray  # [n] int
    top1: np.ndarray  # [n, heads] int
    in_top5: np.ndarray  # [n, heads] bool
    nll: np.ndarray  # [n, heads] float

    @classmethod
    def concat(cls, parts: list[Predictions]) -> Predictions:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))

    def where(self, part: int) -> Predictions:
        mask = self.part == part
        return Predictions(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))

    def __len__(self) -> int:
        return len(self.label)


def head_top1(pred: Predictions) -> np.ndarray:
    """Top-1 accuracy of every head ``[heads]`` (zeros without clips)."""
    if not len(pred):
        return np.zeros(pred.top1.shape[1])
    return (pred.top1 == pred.label[:, None]).mean(axis=0)


def choose_head(pred: Predictions, default: int = 0) -> int:
    """The best head on ``select``: highest top-1, then lowest cross-entropy; ``default`` without rows."""
    select = pred.where(SELECT)
    if not len(select):
        return default
    return int(np.lexsort((select.nll.mean(axis=0), -head_top1(select)))[0])


def correct(pred: Predictions, head: int) -> np.ndarray:
    """Whether ``head`` got each clip right, in sample order (paired tests compare two runs clip by clip)."""
    order = np.argsort(pred.sample, kind="stable")
    return (pred.top1[order, head] == pred.label[order]).astype(np.int8)


def confusion(pred: Predictions, head: int, num_classes: int) -> np.ndarray:
    """``[true, predicted]`` clip counts of one head."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (pred.label, pred.top1[:, head]), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class (NaN for a class without clips)."""
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / totals, np.nan)


def score(pred: Predictions, num_classes: int, default_head: int = 0) -> dict[str, float]:
    """The pass's metrics: the chosen head's select and val numbers, every head's top-1 on both parts,
    the best-on-val number, and ``val_loss`` (the chosen head's select cross-entropy, or its val one
    without select rows: what a scheduler minimises)."""
    head = choose_head(pred, default_head)
    select, val = pred.where(SELECT), pred.where(VAL)
    select_top1, val_top1 = head_top1(select), head_top1(val)
    metrics = {"best_head": float(head), "select_top1": float(select_top1[head]), "val_top1": float(val_top1[head]),
               "val_top5": float(val.in_top5[:, head].mean()) if len(val) else 0.0,
               "val_top1_max": float(val_top1.max()), "select_clips": float(len(select)), "val_clips": float(len(val)),
               "val_mean_class_top1": float(np.nanmean(per_class_accuracy(confusion(val, head, num_classes))))
               if len(val) else 0.0}
    scored = select if len(select) else val
    metrics["val_loss"] = float(scored.nll[:, head].mean()) if len(scored) else float("nan")
    for h in range(pred.top1.shape[1]):
        metrics[f"head_{h:02d}/select_top1"] = float(select_top1[h])
        metrics[f"head_{h:02d}/val_top1"] = float(val_top1[h])
    return metrics
