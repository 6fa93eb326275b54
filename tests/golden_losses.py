"""The golden loss curves of the house refactor: a 20-step tiny pretrain and the same run stopped at
step 10 and resumed. Recorded before the refactor (``python tests/golden_losses.py``); the test
``test_golden_losses.py`` reruns the same commands and must reproduce the numbers."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pretrain_utils import world_config  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden" / "pretrain_tiny_losses.json"
STEPS, STOP = 20, 10
SETTINGS = (f"optim.total_steps={STEPS}", "trainer.checkpoint_every=5", "trainer.num_workers=1",
            "tracking.enabled=false")


def golden_curves(world: Path, out: Path) -> dict[str, dict[str, float]]:
    """Per-step losses of the uninterrupted run and of the stopped-and-resumed one (steps as strings)."""
    from train.pretrain import pretrain

    full = pretrain(world_config(world, out / "full", *SETTINGS)).worker["losses"]
    first = pretrain(world_config(world, out / "resumed", *SETTINGS, f"trainer.stop_after={STOP}")).worker["losses"]
    second = pretrain(world_config(world, out / "resumed", *SETTINGS)).worker["losses"]
    as_json = lambda losses: {str(step): float(loss) for step, loss in sorted(losses.items())}  # noqa: E731
    return {"uninterrupted": as_json(full), "resumed": as_json({**first, **second})}


def main() -> None:
    import ray

    from pipelines.sample_world import build_sample_world

    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        build_sample_world(world, seed=0)
        ray.init(address="local", num_cpus=4, object_store_memory=400 * 1024**2, include_dashboard=False)
        curves = golden_curves(world, Path(tmp) / "runs")
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(curves, indent=1) + "\n")
    print(GOLDEN)


if __name__ == "__main__":
    main()
