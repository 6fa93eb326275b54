"""Label maps and the labelled-manifest checks a probe runs before training (docs/eval.md).

A label map is a JSON list of class names, the name of label ``i`` at position ``i`` (what
``pipelines.builders --labels-out`` and the sample world's probe sets write). A probe needs every
manifest row to carry a label of the map and every class of the map to have clips in the training
split; otherwise it would train a head for a class it never sees, or silently drop rows. Each problem
is one :class:`LabelError` naming the file and the row or class (a ``UserError``: exit 2 at the CLI).
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from core import storage
from core.errors import UserError
from pipelines.manifest import read_manifest

MAX_LISTED = 5


class LabelError(UserError, ValueError):
    """A label map or labelled manifest a probe cannot use; the message names the file and row or class."""


def load_label_map(uri: str) -> list[str]:
    """The class names of a label map file (local or ``s3://``)."""
    if not storage.exists(uri):
        raise LabelError(f"{uri}: label map not found")
    try:
        names = json.loads(storage.read_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabelError(f"{uri}: not a JSON label map: {exc}") from exc
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise LabelError(f"{uri}: a label map is a non-empty JSON list of class names")
    if len(set(names)) != len(names):
        twice = sorted(n for n, c in Counter(names).items() if c > 1)[:MAX_LISTED]
        raise LabelError(f"{uri}: class names listed twice: {twice}")
    return names


def check_labels(manifest: str, names: list[str], label_map: str, require_every_class: bool) -> Counter[int]:
    """Clips per label of a labelled manifest. Rows without a label (null or negative, e.g. a test split)
    and labels outside the map are errors naming the first rows; with ``require_every_class`` (training
    splits) so is a class of the map without clips."""
    values = read_manifest(manifest).column("label").to_numpy(zero_copy_only=False).astype(float)  # null -> nan
    missing = np.flatnonzero(~(values >= 0))  # nan compares false
    if len(missing):
        raise LabelError(f"{manifest}: {len(missing)} row(s) without a label (first rows "
                         f"{missing[:MAX_LISTED].tolist()}): a probe needs a label on every row")
    labels = values.astype(np.int64)
    outside = np.flatnonzero(labels >= len(names))
    if len(outside):
        rows = outside[:MAX_LISTED].tolist()
        raise LabelError(f"{manifest}: label(s) {sorted(set(labels[rows].tolist()))} at row(s) {rows} are not in "
                         f"{label_map} ({len(names)} classes)")
    counts = Counter(labels.tolist())
    empty = [i for i in range(len(names)) if counts[i] == 0]
    if require_every_class and empty:
        listed = ", ".join(f"{names[i]!r} (label {i})" for i in empty[:MAX_LISTED])
        raise LabelError(f"{manifest}: {len(empty)} class(es) of {label_map} without a clip: {listed}")
    return counts
