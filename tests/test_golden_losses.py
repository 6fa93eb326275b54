"""The house refactor changed no number: a 20-step tiny pretrain and the same run stopped at step 10 and
resumed give the per-step losses recorded before it (tests/golden/pretrain_tiny_losses.json)."""

from __future__ import annotations

import json

import pytest
from golden_losses import GOLDEN, golden_curves


@pytest.mark.slow
def test_losses_match_the_golden_file(ray_session, sample_world, runs_root, tmp_path):
    golden = json.loads(GOLDEN.read_text())
    curves = golden_curves(sample_world, tmp_path)
    assert set(curves) == {"uninterrupted", "resumed"}
    for name, losses in curves.items():
        assert list(losses) == list(golden[name]) == [str(s) for s in range(1, 21)]
        assert losses == pytest.approx(golden[name], abs=1e-5), name
