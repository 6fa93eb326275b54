"""MLflow, reached only through this module.

Default: a SQLite store at ``<runs root>/mlflow.db`` with artifacts in ``<runs root>/mlartifacts``,
both absolute, so a run started under ``ray job submit`` (whose working directory is a temporary copy)
lands beside the runs started from a shell. ``tracking.tracking_uri`` points at a server instead.
Params are the fully resolved config, flattened and redacted (core/redact.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import flatten, to_dict
from core.redact import redact

log = logging.getLogger(__name__)

RUNS_ROOT_ENV = "VJEPA2_RAY_RUNS"
MLFLOW_PARAM_MAX_CHARS = 6000
MLFLOW_PARAMS_PER_BATCH = 100


@dataclass
class TrackingConfig:
    """Where MLflow runs go. An empty ``tracking_uri`` means the local SQLite store."""

    enabled: bool = True
    tracking_uri: str = ""
    experiment: str = "vjepa2-ray"
    run_name: str = ""
    parent_run_id: str = ""


def runs_root() -> Path:
    """Absolute root for run outputs: ``$VJEPA2_RAY_RUNS`` or ``./runs``."""
    return Path(os.environ.get(RUNS_ROOT_ENV, "runs")).expanduser().resolve()


def local_store_uri(root: Path | None = None) -> str:
    return f"sqlite:///{(root or runs_root()) / 'mlflow.db'}"


def resolve_uri(cfg: TrackingConfig, root: Path | None = None) -> str:
    return cfg.tracking_uri or local_store_uri(root)


def ui_hint(uri: str) -> str:
    """The command that opens the MLflow UI on this store (loopback only)."""
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    return f"open {uri}"


def _params(config: Any) -> dict[str, str]:
    data = config if isinstance(config, dict) else to_dict(config)
    flat = flatten(redact(data))
    return {k: str(v)[:MLFLOW_PARAM_MAX_CHARS] for k, v in flat.items()}


class Run:
    """A started MLflow run; a no-op when tracking is disabled (e.g. non-zero ranks)."""

    def __init__(self, mlflow_module: Any | None, run_id: str | None):
        self._mlflow = mlflow_module
        self.run_id = run_id

    @property
    def active(self) -> bool:
        return self._mlflow is not None

    def log_params(self, config: Any) -> None:
        if not self.active:
            return
        items = list(_params(config).items())
        for i in range(0, len(items), MLFLOW_PARAMS_PER_BATCH):
            self._mlflow.log_params(dict(items[i : i + MLFLOW_PARAMS_PER_BATCH]))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.active:
            self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.active:
            self._mlflow.set_tags({k: str(v) for k, v in redact(tags).items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.active:
            self._mlflow.log_text(text, artifact_file)


def _ensure_experiment(mlflow: Any, name: str, uri: str, root: Path) -> str:
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        location = (root / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


@contextmanager
def start_run(cfg: TrackingConfig, config: Any = None, tags: dict[str, Any] | None = None,
              root: Path | None = None, run_name: str | None = None) -> Iterator[Run]:
    """Start an MLflow run, log the resolved ``config`` as params, yield a :class:`Run`."""
    if not cfg.enabled:
        yield Run(None, None)
        return
    import mlflow

    root = root or runs_root()
    root.mkdir(parents=True, exist_ok=True)
    uri = resolve_uri(cfg, root)
    mlflow.set_tracking_uri(uri)
    experiment_id = _ensure_experiment(mlflow, cfg.experiment, uri, root)
    all_tags = dict(tags or {})
    if cfg.parent_run_id:
        all_tags["mlflow.parentRunId"] = cfg.parent_run_id
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or cfg.run_name or None,
                          tags={k: str(v) for k, v in all_tags.items()}) as active:
        run = Run(mlflow, active.info.run_id)
        if config is not None:
            run.log_params(config)
        log.info("MLflow run %s in %s", active.info.run_id, uri)
        yield run


def find_runs(uri: str, experiment: str) -> list[Any]:
    """Runs of ``experiment`` at ``uri`` (newest first), as MLflow ``Run`` objects."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return list(client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"]))
