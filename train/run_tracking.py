"""One MLflow run per pretraining run, written by the driver and by rank 0 of every worker group.

The driver creates the run (resolved config as params, lineage tags) through :mod:`core.tracking`;
workers re-open it by id, so restarts after a failure and resumed runs keep one metric history.
Re-opening uses MLflow's documented ``MLFLOW_RUN_ID`` variable, which ``mlflow.start_run`` consumes
(and removes) to resume that run instead of creating one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from core.tracking import Run, TrackingConfig, start_run

MLFLOW_RUN_ID_ENV = "MLFLOW_RUN_ID"


@contextmanager
def attach_run(cfg: TrackingConfig, run_id: str, enabled: bool = True,
               system_metrics: bool | None = None) -> Iterator[Run]:
    """Re-open run ``run_id``; a no-op :class:`Run` when disabled, on non-zero ranks, or without an id.

    ``system_metrics``: as in :func:`core.tracking.start_run` (default ``tracking.system_metrics``); the
    driver's short re-openings turn it off, the training loop's long one keeps the config's choice."""
    if not (enabled and cfg.enabled and run_id):
        yield Run(None, None)
        return
    os.environ[MLFLOW_RUN_ID_ENV] = run_id
    try:
        with start_run(cfg, system_metrics=system_metrics) as run:
            yield run
    finally:
        os.environ.pop(MLFLOW_RUN_ID_ENV, None)
