"""Pictures of a probe run, drawn on rank 0 after each validation and logged as MLflow artifacts.

- ``pictures/heads.png``: every head's top-1 over training, on ``select`` (left, where the reported
  head is chosen) and on ``val`` (right), the chosen head drawn thick: whether the grid's learning
  rates matter, and whether the head chosen on ``select`` is also good on ``val``.
- ``pictures/confusion.png``: the chosen head's confusion matrix on ``val`` (rows: true class,
  normalised to 1) beside its per-class accuracy, class names on the axes.

Matplotlib's object API (Agg, no pyplot state), as ``train/posttrain_pictures.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eval.probe_metrics import per_class_accuracy

HEADS_FILE = "heads.png"
CONFUSION_FILE = "confusion.png"


def draw_heads(history: dict[int, dict[str, float]], out: Path) -> Path:
    steps = sorted(history)
    heads = sorted({k.split("/")[0] for k in history[steps[-1]] if k.startswith("head_")})
    chosen = int(history[steps[-1]]["best_head"])
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    for column, part in enumerate(("select", "val")):
        ax = fig.add_subplot(1, 2, column + 1)
        for i, head in enumerate(heads):
            values = [100 * history[s][f"{head}/{part}_top1"] for s in steps]
            ax.plot(steps, values, lw=2.5 if i == chosen else 0.8, alpha=1.0 if i == chosen else 0.5,
                    label=f"{head} (chosen)" if i == chosen else None, marker="o" if len(steps) < 12 else None)
        ax.set_title(f"top-1 on {part} per head")
        ax.set_xlabel("step")
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = out / HEADS_FILE
    fig.savefig(path, dpi=110)
    return path


def draw_confusion(matrix: np.ndarray, class_names: list[str], metrics: dict[str, float], out: Path) -> Path:
    n = len(class_names)
    side = min(14.0, 4.0 + 0.32 * n)
    fig = Figure(figsize=(side * 1.6, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    totals = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, totals, out=np.zeros(matrix.shape, float), where=totals > 0)
    image = ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    labels = class_names if n <= 60 else []
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"val confusion, head {int(metrics['best_head'])}: top-1 {100 * metrics['val_top1']:.1f}%")
    bars = fig.add_subplot(1, 2, 2)
    accuracy = 100 * np.nan_to_num(per_class_accuracy(matrix))
    bars.barh(range(n), accuracy, color="tab:blue")
    bars.axvline(100 / n, color="tab:gray", ls="--", label="chance")
    bars.set_yticks(range(len(labels)), labels, fontsize=7)
    bars.invert_yaxis()
    bars.set_xlim(0, 100)
    bars.set_xlabel("val accuracy (%)")
    bars.set_title("per class")
    bars.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = out / CONFUSION_FILE
    fig.savefig(path, dpi=110)
    return path


def draw(history: dict[int, dict[str, float]], matrix: np.ndarray, class_names: list[str], out: Path) -> list[Path]:
    """Both pictures under ``out`` (the loop logs them)."""
    if not history:
        return []
    return [draw_heads(history, out), draw_confusion(matrix, class_names, history[max(history)], out)]
