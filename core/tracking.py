"""MLflow, reached only through this module.

Default: a SQLite store at ``<runs root>/mlflow.db`` with artifacts in ``<runs root>/mlartifacts``,
both absolute, so a run started under ``ray job submit`` (whose working directory is a temporary copy)
lands beside the runs started from a shell. ``tracking.tracking_uri`` points at a server instead.

What a run holds, as MLflow users expect it:
- params: the fully resolved config, flattened and redacted (core/redact.py), and the same config as
  the ``config.yaml`` artifact;
- experiments tagged as model development (``mlflow.experimentKind``), so MLflow 3 opens them in the
  training view, not the GenAI one (traces, token usage);
- ``tracking.parent_run``: the run this one nests under (a pipeline's run, a sweep);
- manifests as input datasets with a content digest (:meth:`Run.log_input_manifest`);
- a resume records what changed as ``resumed.<n>.<key>`` params (MLflow refuses to change a logged
  param) and ``resumed/<n>/config.yaml`` (:meth:`Run.log_resumed_config`);
- end-of-run figures as ``summary.<key>`` tags and ``summary.json``, not one-point metric charts;
- system metrics (CPU, memory, GPU) with ``tracking.system_metrics``;
- models as pyfunc models-from-code (:meth:`Run.log_pyfunc_model`); the code file hands its model to
  MLflow through :func:`set_pyfunc_model`, so this stays the only module that imports MLflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pyarrow import fs as pafs

from core import storage
from core.config import flatten, to_dict
from core.ray_session import warn_if_lost
from core.redact import redact

log = logging.getLogger(__name__)

RUNS_ROOT_ENV = "VJEPA2_RAY_RUNS"
MLFLOW_PARAM_MAX_CHARS = 6000
MLFLOW_PARAMS_PER_BATCH = 100
# MLflow 3 opens an experiment without this tag as a GenAI one; training runs are model development.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
PARENT_RUN_TAG = "mlflow.parentRunId"
CONFIG_ARTIFACT = "config.yaml"
RESUMES_TAG = "resumed.count"  # how many times the run was resumed; n in resumed.<n>.<key>
DIGEST_CHUNK = 1 << 20
MODEL_WEIGHTS_ARTIFACT = "weights"  # a pyfunc model's weights file, as its load_context finds it
# MLflow reads these when it is first imported, which happens only through this module: its INFO lines
# (store migrations, the system-metrics monitor starting and stopping) and its artifact download bars
# would otherwise fill every job log. A user's own setting wins.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
if not sys.stderr.isatty():
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@dataclass
class TrackingConfig:
    """Where MLflow runs go. An empty ``tracking_uri`` means the local SQLite store."""

    enabled: bool = True
    tracking_uri: str = ""
    experiment: str = "vjepa2-ray"
    run_name: str = ""
    parent_run: str = ""  # run id this stage's run nests under (set by the demo and by sweeps)
    system_metrics: bool = True  # CPU, memory, disk, network, GPU under system/* while the stage runs
    registered_model: str = ""  # register logged models under this name in the model registry ("": don't)


def runs_root() -> Path:
    """Absolute root for run outputs: ``$VJEPA2_RAY_RUNS`` or ``./runs`` (under ``ray job submit`` the
    latter is inside the job's temporary upload, which the run then warns about)."""
    root = Path(os.environ.get(RUNS_ROOT_ENV, "runs")).expanduser().resolve()
    warn_if_lost(str(root), f"the runs root (MLflow store, reports; ${RUNS_ROOT_ENV} unset)")
    return root


def local_store_uri(root: Path | None = None) -> str:
    return f"sqlite:///{(root or runs_root()) / 'mlflow.db'}"


def resolve_uri(cfg: TrackingConfig, root: Path | None = None) -> str:
    return cfg.tracking_uri or local_store_uri(root)


def ui_hint(uri: str) -> str:
    """The command that opens the MLflow UI on this store (loopback only)."""
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    return f"open {uri}"


def _plain(config: Any) -> dict[str, Any]:
    """The config as redacted JSON-like data (tuples become lists), as params and YAML record it."""
    data = config if isinstance(config, dict) else to_dict(config)
    return json.loads(json.dumps(redact(data), default=str))


def _params(config: Any) -> dict[str, str]:
    return {k: str(v)[:MLFLOW_PARAM_MAX_CHARS] for k, v in flatten(_plain(config)).items()}


def config_yaml(config: Any) -> str:
    """The resolved config as YAML, redacted: the ``config.yaml`` artifact and a run folder's copy."""
    return yaml.safe_dump(_plain(config), sort_keys=False)


def manifest_digest(uri: str) -> str:
    """sha256 (first 16 hex digits) of a manifest's bytes: a file, or every file of a parts directory
    by relative path, so the same rows in the same files give the same digest wherever they are stored."""
    fs, path = storage.filesystem_for(uri)
    with storage.storage_errors(uri, "digest"):
        info = fs.get_file_info(path)
        files = [info] if info.type == pafs.FileType.File else sorted(
            (i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if i.type == pafs.FileType.File),
            key=lambda i: i.path)
        digest = hashlib.sha256()
        for item in files:
            digest.update(os.path.relpath(item.path, path).encode())
            with fs.open_input_stream(item.path) as stream:
                while chunk := stream.read(DIGEST_CHUNK):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


@contextmanager
def hidden_warnings(*fragments: str) -> Iterator[None]:
    """Drop warnings whose text holds one of ``fragments`` while the block runs. Not a warnings filter:
    MLflow resets the filters itself (``simplefilter("once")`` inside its own annotations wrapper), so
    the warnings are dropped where they are shown."""
    with warnings.catch_warnings():  # restores showwarning on exit
        show = warnings.showwarning

        def maybe_show(message: Warning | str, *args: Any, **kwargs: Any) -> None:
            if not any(fragment in str(message) for fragment in fragments):
                show(message, *args, **kwargs)

        warnings.showwarning = maybe_show
        yield


def set_pyfunc_model(model: Any) -> None:
    """Hand ``model`` to MLflow from a models-from-code file (``mlflow.models.set_model``). ``model`` is
    a plain object with ``load_context(context)`` and ``predict(context, model_input, params=None)``;
    it is wrapped in a ``PythonModel`` here, so the code file itself need not import MLflow."""
    import mlflow
    from mlflow.pyfunc import PythonModel

    with hidden_warnings("Add type hints to the `predict` method"):  # the logged signature stands in

        class Delegate(PythonModel):
            """MLflow's PythonModel around the plain model object."""

            def load_context(self, context: Any) -> None:
                model.load_context(context)

            # model_input unannotated: MLflow would otherwise derive a (wrong) signature from the hint
            def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> Any:
                return model.predict(context, model_input, params)

    mlflow.models.set_model(Delegate())


class Run:
    """A started MLflow run; a no-op when tracking is disabled (e.g. non-zero ranks)."""

    def __init__(self, mlflow_module: Any | None, run_id: str | None):
        self._mlflow = mlflow_module
        self.run_id = run_id

    @property
    def active(self) -> bool:
        return self._mlflow is not None

    def _log_param_items(self, params: dict[str, str]) -> None:
        items = list(params.items())
        for i in range(0, len(items), MLFLOW_PARAMS_PER_BATCH):
            self._mlflow.log_params(dict(items[i : i + MLFLOW_PARAMS_PER_BATCH]))

    def log_params(self, config: Any) -> None:
        if self.active:
            self._log_param_items(_params(config))

    def log_config(self, config: Any, artifact_file: str = CONFIG_ARTIFACT) -> None:
        """The resolved config as params and as a YAML artifact."""
        self.log_params(config)
        self.log_text(config_yaml(config), artifact_file)

    def log_resumed_config(self, config: Any) -> int:
        """Record the config of a resume of this run; returns the resume number n (1, 2, ...).

        MLflow refuses to change a logged param, so a value that differs from the logged one goes in as
        ``resumed.<n>.<key>`` (keys new since the last start go in as plain params), the whole config as
        ``resumed/<n>/config.yaml``, and the count as the ``resumed.count`` tag."""
        if not self.active:
            return 0
        logged = self._mlflow.get_run(self.run_id).data
        number = int(logged.tags.get(RESUMES_TAG, 0)) + 1
        params = _params(config)
        self._log_param_items({k: v for k, v in params.items() if k not in logged.params})
        self._log_param_items({f"resumed.{number}.{k}": v for k, v in params.items()
                               if k in logged.params and logged.params[k] != v})
        self.log_text(config_yaml(config), f"resumed/{number}/{CONFIG_ARTIFACT}")
        self.set_tags({RESUMES_TAG: number})
        return number

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.active:
            self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.active:
            self._mlflow.set_tags({k: str(v) for k, v in redact(tags).items()})

    def log_summary(self, summary: dict[str, Any]) -> None:
        """End-of-run figures: ``summary.<key>`` tags (the run's overview lists them) and ``summary.json``,
        instead of metrics, which MLflow would draw as one-point charts."""
        self.set_tags({f"summary.{k}": f"{v:.6g}" if isinstance(v, float) else v for k, v in summary.items()})
        self.log_text(json.dumps(summary, indent=1, default=str), "summary.json")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.active:
            self._mlflow.log_text(text, artifact_file)

    def log_input_manifest(self, uri: str, name: str, context: str = "training",
                           tags: dict[str, Any] | None = None) -> str:
        """Log the manifest at ``uri`` (local or ``s3://``; a file or a parts directory) as an input dataset
        of this run, named ``name``, with its content digest (:func:`manifest_digest`); ``context`` says
        what the run did with it ("training", "curated"). Returns the digest ("" when tracking is off).

        MLflow then shows which runs read or wrote the same manifest, e.g. curation's output and the
        pretraining run that trains on it."""
        if not self.active:
            return ""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        digest = manifest_digest(uri)
        with hidden_warnings("can be interpreted in multiple ways"):  # MLflow 3 registers its file source twice
            source = resolve_dataset_source(uri)
        dataset = MetaDataset(source, name=name, digest=digest)
        self._mlflow.log_input(dataset, context=context,
                               tags={k: str(v) for k, v in (tags or {}).items()} or None)
        return digest

    def log_pyfunc_model(self, code_path: str | Path, weights: str, name: str,
                         signature: tuple[tuple[str, tuple[int, ...]], tuple[str, tuple[int, ...]]],
                         requirements: list[str], registered_model: str = "") -> str:
        """Log a pyfunc model-from-code: ``code_path`` is a Python file that calls :func:`set_pyfunc_model`;
        ``weights`` (a local path or URI) is copied into the model, and its ``load_context`` finds the
        copy at ``context.artifacts[MODEL_WEIGHTS_ARTIFACT]``; ``signature``: ``((input dtype, shape),
        (output dtype, shape))`` of the tensors, -1 for a free dimension. Registered as
        ``registered_model`` if given. Returns the model URI ("" when tracking is off)."""
        if not self.active:
            return ""
        import numpy as np
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        (in_dtype, in_shape), (out_dtype, out_shape) = signature
        model_signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(in_dtype), in_shape)]),
                                         outputs=Schema([TensorSpec(np.dtype(out_dtype), out_shape)]))
        # the signature is given: no example input is run, and predict needs no type hints
        with hidden_warnings("input example was not provided", "Add type hints to the `predict` method"):
            info = self._mlflow.pyfunc.log_model(name=name, python_model=str(code_path),
                                                 artifacts={MODEL_WEIGHTS_ARTIFACT: weights},
                                                 signature=model_signature, pip_requirements=requirements,
                                                 registered_model_name=registered_model or None)
        return info.model_uri


def _ensure_experiment(mlflow: Any, name: str, uri: str, root: Path) -> str:
    """The experiment's id, created if missing; tagged as model development either way."""
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        if existing.tags.get(EXPERIMENT_KIND_TAG) is None:
            mlflow.MlflowClient().set_experiment_tag(existing.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return existing.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        location = (root / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


@contextmanager
def start_run(cfg: TrackingConfig, config: Any = None, tags: dict[str, Any] | None = None,
              root: Path | None = None, run_name: str | None = None,
              system_metrics: bool | None = None) -> Iterator[Run]:
    """Start an MLflow run (or re-open the one ``$MLFLOW_RUN_ID`` names), log the resolved ``config`` as
    params and ``config.yaml``, yield a :class:`Run`.

    The run nests under ``tracking.parent_run``. ``system_metrics`` (default ``tracking.system_metrics``):
    off for the short openings that only add tags or artifacts."""
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
    if cfg.parent_run:
        all_tags[PARENT_RUN_TAG] = cfg.parent_run
    monitor = cfg.system_metrics if system_metrics is None else system_metrics
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or cfg.run_name or None,
                          tags={k: str(v) for k, v in all_tags.items()}, log_system_metrics=monitor) as active:
        run = Run(mlflow, active.info.run_id)
        if config is not None:
            run.log_config(config)
        log.info("MLflow run %s in %s", active.info.run_id, uri)
        yield run


@contextmanager
def parent_run(cfg: TrackingConfig, run_name: str, tags: dict[str, Any] | None = None,
               root: Path | None = None) -> Iterator[str]:
    """A run that groups a pipeline's stage runs; yields its id for their ``tracking.parent_run``.

    It is created and closed through MLflow's client and never becomes the process's active run, so
    the stages start their own runs inside it as usual, and a stage that nests elsewhere (a cooldown
    under the main phase whose checkpoint it starts from) is not pulled under it. It ends FAILED when
    the block raises. Yields "" when tracking is disabled."""
    if not cfg.enabled:
        yield ""
        return
    import mlflow

    root = root or runs_root()
    root.mkdir(parents=True, exist_ok=True)
    uri = resolve_uri(cfg, root)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    all_tags = {**{k: str(v) for k, v in (tags or {}).items()}, **({PARENT_RUN_TAG: cfg.parent_run}
                                                                    if cfg.parent_run else {})}
    created = client.create_run(_ensure_experiment(mlflow, cfg.experiment, uri, root), tags=all_tags,
                                run_name=run_name)
    status = "FAILED"
    try:
        yield created.info.run_id
        status = "FINISHED"
    finally:
        client.set_terminated(created.info.run_id, status)


def find_runs(uri: str, experiment: str) -> list[Any]:
    """Runs of ``experiment`` at ``uri`` (newest first), as MLflow ``Run`` objects."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return list(client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"]))
