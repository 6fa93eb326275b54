"""The one way every entry point reaches Ray: attach or start, the local CPU and object-store budget,
and the environment that Ray workers get.

- Attach: ``ray.address`` in the config, else ``$RAY_ADDRESS`` (``ray job submit`` sets it for the
  job's driver). Start: a new local instance (``address="local"``, never a developer's running
  cluster by accident) whose logical CPUs cover what the stage asks for, even on a 2-core laptop: Ray
  only uses CPU counts for scheduling, and a trainer plus a decode pool must fit at once.
- Worker environment: the non-secret variables that tell a worker which object store to use
  (:data:`STORAGE_ENV_VARS`) are forwarded from the driver, plus what a stage adds explicitly
  (``data.worker_env``). Credentials are never forwarded: workers get them as every AWS client does
  (instance role, IRSA, their own environment, a credentials file named by ``AWS_SHARED_CREDENTIALS_FILE``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Non-secret variables that say which object store a worker talks to and how it finds credentials.
STORAGE_ENV_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
                    "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_EC2_METADATA_DISABLED")
LOCAL = "local"


@dataclass
class RayConfig:
    """How a stage reaches Ray (the ``ray:`` section of a run config)."""

    address: str = ""  # "" -> $RAY_ADDRESS if set, else a new local instance; "local": always a new one
    num_cpus: int = 0  # new local instance only: logical CPUs; 0 -> max(cores, what the stage needs)
    object_store_mb: int = 0  # new local instance only; 0 -> Ray's default (30% of memory)
    log_to_driver: bool = True  # stream worker logs to the driver's stderr


def connect(cfg: RayConfig, cpus_needed: float = 0.0) -> None:
    """Attach to the configured cluster or start a local one; a no-op when this process has Ray."""
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS", "")
        if address and address != LOCAL:
            ray.init(address=address, log_to_driver=cfg.log_to_driver)
        else:
            cpus = cfg.num_cpus or max(os.cpu_count() or 1, math.ceil(cpus_needed))
            store = cfg.object_store_mb * 1024**2 or None
            ray.init(address=LOCAL, num_cpus=cpus, object_store_memory=store, include_dashboard=False,
                     log_to_driver=cfg.log_to_driver)
    # Stages log their own progress: Ray Data's bars redraw with terminal escapes and flood job logs.
    DataContext.get_current().enable_progress_bars = False


def worker_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment Ray workers get: the driver's storage variables, then ``extra`` on top."""
    env = {name: os.environ[name] for name in STORAGE_ENV_VARS if os.environ.get(name)}
    return {**env, **(extra or {})}


def worker_runtime_env(extra: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """A ``runtime_env`` for Ray tasks and actors carrying :func:`worker_env`, or None when it is empty."""
    env = worker_env(extra)
    return {"env_vars": env} if env else None
