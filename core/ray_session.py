"""The one way every entry point reaches Ray: attach or start, the local CPU and object-store budget,
and the environment that Ray workers get.

- Attach: ``ray.address`` in the config, else ``$RAY_ADDRESS`` (``ray job submit`` sets it for the
  job's driver). Start: a new local instance (``address="local"``, never a developer's running
  cluster by accident) whose logical CPUs cover what the stage asks for, even on a 2-core laptop: Ray
  only uses CPU counts for scheduling, and a trainer plus a decode pool must fit at once.
- Bind: a local instance listens on loopback only (``ray.node_ip_address``, default 127.0.0.1): GCS,
  raylet, workers and agents are then unreachable from other machines (docs/reference.md R-ray-3.4).
- Worker environment: the non-secret variables that tell a worker which object store to use
  (:data:`STORAGE_ENV_VARS`) are forwarded from the driver, plus what a stage adds explicitly
  (``data.worker_env``). Credentials are never forwarded: workers get them as every AWS client does
  (instance role, IRSA, their own environment, a credentials file named by ``AWS_SHARED_CREDENTIALS_FILE``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import UserError
from core.ray_logs import filter_worker_lines, quiet_data_context
from core.redact import SECRET_ENV_VARS, is_secret_key

log = logging.getLogger(__name__)

# Non-secret variables that say which object store a worker talks to and how it finds credentials.
STORAGE_ENV_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
                    "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_EC2_METADATA_DISABLED")
LOCAL = "local"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Set by Ray's job supervisor for the entrypoint of a `ray job submit` (docs/reference.md R-ray-2.9).
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# Ray's single-machine mode (docs/reference.md R-ray-3.4): read by ray._private.ray_constants at import.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass
class RayConfig:
    """How a stage reaches Ray (the ``ray:`` section of a run config)."""

    address: str = ""  # "" -> $RAY_ADDRESS if set, else a new local instance; "local": always a new one
    num_cpus: int = 0  # new local instance only: logical CPUs; 0 -> max(cores, what the stage needs)
    object_store_mb: int = 0  # new local instance only; 0 -> Ray's default (30% of memory)
    log_to_driver: bool = True  # stream worker logs to the driver's stderr
    # New local instance only: the address its processes listen on. 127.0.0.1: loopback only; "": Ray's
    # default (the node's outward address, reachable from other machines); any other IP: that address.
    node_ip_address: str = "127.0.0.1"


def connect(cfg: RayConfig, cpus_needed: float = 0.0) -> None:
    """Attach to the configured cluster or start a local one; a no-op when this process has Ray."""
    import ray

    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS", "")
        if address and address != LOCAL:
            ray.init(address=address, log_to_driver=cfg.log_to_driver, logging_level=logging.WARNING)
        else:
            cpus = cfg.num_cpus or max(os.cpu_count() or 1, math.ceil(cpus_needed))
            store = cfg.object_store_mb * 1024**2 or None
            ip = cfg.node_ip_address
            with single_machine() if ip in LOOPBACK else contextlib.nullcontext():
                ray.init(address=LOCAL, num_cpus=cpus, object_store_memory=store, include_dashboard=False,
                         log_to_driver=cfg.log_to_driver, logging_level=logging.WARNING,
                         **({"_node_ip_address": ip} if ip else {}))
    # Stages log their own progress; Ray's chatter and progress-bar redraws stay out of the output.
    filter_worker_lines()
    quiet_data_context()


@contextlib.contextmanager
def single_machine() -> Iterator[None]:
    """Start Ray inside this block to have every process it starts listen on loopback only.

    On Linux, Ray 2.60 replaces a loopback ``_node_ip_address`` by the machine's outward address unless
    it runs in its single-machine mode (the default on macOS and Windows), whose switch is read when
    ``ray._private.ray_constants`` is imported: the environment variable reaches the processes Ray
    spawns, the module attribute this already-imported driver. Both are restored afterwards (Ray keeps
    the node's address), so a later attach to a real cluster from this process is unaffected.
    """
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = saved_env


def in_submitted_job() -> bool:
    """Whether this process is the entrypoint of a ``ray job submit`` (or a process it started)."""
    return JOB_CONFIG_ENV in os.environ


def job_working_dir() -> str:
    """The job's working directory when it is an uploaded copy (``--working-dir``), else "". Ray deletes
    that copy after the job, so nothing the job should keep may be written under it."""
    if not in_submitted_job():
        return ""
    with contextlib.suppress(ValueError, TypeError):
        if json.loads(os.environ[JOB_CONFIG_ENV]).get("runtime_env", {}).get("working_dir"):
            return os.getcwd()
    return ""


def missing_path_hint(path: str) -> str:
    """What to add to a "not found" error inside a job: why a relative data path is missing there."""
    if not job_working_dir():
        return ""
    return (" (this runs under `ray job submit`, whose working directory is an upload of the repository "
            "without data/ (.rayignore): give absolute or s3:// paths, or set data_root / "
            "VJEPA2_RAY_DATA_ROOT in the job's runtime env)")


_warned: set[str] = set()


def warn_if_lost(path: str, what: str) -> None:
    """Warn loudly (once per path) when a job would write ``what`` into its temporary working directory."""
    workdir = job_working_dir()
    if workdir and path not in _warned and os.path.abspath(path).startswith(workdir.rstrip("/") + "/"):
        _warned.add(path)
        log.warning("%s goes to %s, inside this job's uploaded working directory, which Ray deletes after the "
                    "job: it will be LOST. Set VJEPA2_RAY_RUNS (or the stage's output path) to shared storage "
                    "in the job's runtime env", what, path)


def worker_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment Ray workers get: the driver's storage variables, then ``extra`` on top.

    A secret-looking key in ``extra`` (``data.worker_env``) is refused: a runtime environment is stored
    by Ray's GCS and written to its runtime-env agent's log in clear text, so credentials must reach
    workers from their nodes' own environment or credential chain instead.
    """
    secret = sorted(key for key in (extra or {}) if key not in STORAGE_ENV_VARS
                    and (key in SECRET_ENV_VARS or is_secret_key(key)))
    if secret:
        raise UserError(f"data.worker_env: {', '.join(secret)} looks like a secret; Ray writes a worker "
                        "environment to its logs in clear text, so give credentials to the nodes (their "
                        "environment, instance role or credentials file) instead")
    env = {name: os.environ[name] for name in STORAGE_ENV_VARS if os.environ.get(name)}
    return {**env, **(extra or {})}


def worker_runtime_env(extra: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """A ``runtime_env`` for Ray tasks and actors carrying :func:`worker_env`, or None when it is empty."""
    env = worker_env(extra)
    return {"env_vars": env} if env else None
