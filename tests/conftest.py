"""Session-wide fixtures: one local Ray instance, one sample world, servers started once.

Ray starts once per test session with ``address="local"`` (never attaching to a developer's cluster)
and logical CPUs above the 2 physical cores, so a 2-worker trainer and the decode actors fit
(docs/reference.md R-ray-4). Expensive artifacts are built once per session.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/servers.py and friends
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "2")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """GPU tests (``tests/gpu/``) are collected only where a GPU exists."""
    if "gpu" in collection_path.parts and collection_path.is_dir() and not _has_cuda():
        return True
    return None


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session; project code importable on every worker."""
    import ray

    pythonpath = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(
        address="local",
        num_cpus=4,
        object_store_memory=400 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        _system_config={"object_timeout_milliseconds": 200, "health_check_initial_delay_ms": 0},
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath, "RAY_USAGE_STATS_ENABLED": "0"}},
    )
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_world(tmp_path_factory) -> Path:
    """The deterministic sample world (pipelines/sample_world/), built once per session."""
    from pipelines.sample_world import build_sample_world

    out = tmp_path_factory.mktemp("sample_world")
    build_sample_world(out, seed=0)
    return out


@pytest.fixture(scope="session")
def motion_set(tmp_path_factory) -> Path:
    """A small motion probe set: 4 training and 2 validation clips per class (40 / 20), once per session."""
    from pipelines.sample_world.probe_sets import build_probe_sets

    world = tmp_path_factory.mktemp("probe_stage_world")
    build_probe_sets(world, seed=0, per_class={"train": 4, "val": 2})
    return world / "probes" / "motion"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (SQLite store), shared by the session; yields its URL."""
    from servers import start_mlflow_server, stop

    proc, url = start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"))
    yield url
    stop(proc)


@pytest.fixture
def runs_root(tmp_path, monkeypatch) -> Path:
    """An isolated runs root (MLflow store, outputs) for one test."""
    root = tmp_path / "runs"
    monkeypatch.setenv("VJEPA2_RAY_RUNS", str(root))
    return root



@pytest.fixture(scope="session")
def ray_head():
    """One ``ray start --head`` cluster (started by the README's step 1) for every job test."""
    import ray_cluster

    cluster = ray_cluster.start()
    yield cluster
    ray_cluster.stop(cluster)
