"""How a curation stage runs on Ray: typed shard tasks, the steps that process them, and resumption.

Every stage is the same shape: a list of :class:`StageTask` records (one per output shard), the
tasks whose output shard already exists dropped (that is all resumption is), and the rest sent
through one or more Ray Data ``map_batches`` steps, one task per batch. The last step writes the
shard and returns a :class:`ShardSummary`. This module is that machinery, so each stage worker
(``curation/stages.py``) only says what it does with one task.

Records cross Ray as themselves: ``ray.data.from_items`` keeps an object that Arrow cannot represent
as a pickled Python object in its one ``item`` column, and every step hands its result on the same
way. The one place where a Ray batch becomes a record again is ``_record`` below. Stage configs (the
dataclasses of ``curation/config.py``) travel as step arguments, as their types too.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from core import storage
from core.ray_session import worker_runtime_env
from curation import shards
from pipelines.quarantine import RejectRecord, rejects_table

log = logging.getLogger(__name__)

PROGRESS_STEP = 0.05  # a progress line per 5% of a stage's shards ...
PROGRESS_EVERY_S = 10.0  # ... and at most one per 10 s


@dataclass
class StageTask:
    """One output shard of a stage and what it is made from.

    Made either from ``rows`` (a slice of a manifest, as plain dicts) or from ``input`` (the URI of an
    earlier stage's shard); ``aux`` is a second input shard with the same index (the decontam verdicts
    next to the pool embeddings); ``quarantine`` is where the task's rejects go ("" when it has none).
    """

    shard: int
    source: str
    out: str
    input: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    quarantine: str = ""
    aux: str = ""


@dataclass
class ShardSummary:
    """What a finished task reports back: its shard, the rows written, and the rows quarantined."""

    shard: int
    out: str
    rows_out: int
    quarantined: int


@dataclass
class StageTiming:
    """How long a stage took and how many of its shards this run had to produce."""

    name: str
    seconds: float
    shards_total: int
    shards_run: int


def chunk_tasks(rows: list[dict[str, Any]], per_shard: int, source: str, out_dir: str,
                quarantine_dir: str) -> list[StageTask]:
    """One task per ``per_shard`` manifest rows, in manifest order."""
    return [StageTask(shard=i, source=source, out=shards.shard_uri(out_dir, i), rows=rows[s : s + per_shard],
                      quarantine=shards.shard_uri(quarantine_dir, i))
            for i, s in enumerate(range(0, len(rows), per_shard))]


def shard_tasks(in_dir: str, out_dir: str, source: str, aux_dir: str = "",
                quarantine_dir: str = "") -> list[StageTask]:
    """One task per finished shard of ``in_dir``; ``aux`` / ``quarantine`` are the same-numbered shards
    of ``aux_dir`` / ``quarantine_dir`` when those are given."""
    return [StageTask(shard=i, source=source, out=shards.shard_uri(out_dir, i), input=uri,
                      quarantine=shards.shard_uri(quarantine_dir, i) if quarantine_dir else "",
                      aux=shards.shard_uri(aux_dir, i) if aux_dir else "")
            for i, uri in sorted(shards.finished(in_dir).items())]


def summary(task: StageTask, rows_out: int, quarantined: int = 0) -> ShardSummary:
    return ShardSummary(task.shard, task.out, rows_out, quarantined)


def write_with_quarantine(task: StageTask, table: pa.Table, rejects: list[RejectRecord],
                          metadata: dict[str, bytes] | None = None) -> ShardSummary:
    """Quarantine first, then the shard: the shard's existence is what marks the task done."""
    shards.write_shard(rejects_table(rejects), task.quarantine)
    shards.write_shard(table, task.out, metadata)
    return summary(task, table.num_rows, len(rejects))


# ----------------------------------------------------------------------------------------------
# Steps: one record in, one record out


def _record(batch: dict[str, np.ndarray]) -> Any:
    (record,) = batch["item"]
    return record


def _batch(record: Any) -> dict[str, np.ndarray]:
    column = np.empty(1, dtype=object)
    column[0] = record
    return {"item": column}


class RecordActor:
    """Base of the actor steps (one model or index load per actor): ``process`` sees one record."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _batch(self.process(_record(batch)))

    def process(self, record: Any) -> Any:
        raise NotImplementedError


def _per_record(fn: Callable[..., Any]) -> Callable[..., dict[str, np.ndarray]]:
    @functools.wraps(fn)  # Ray names the operator after the function
    def step(batch: dict[str, np.ndarray], **kwargs: Any) -> dict[str, np.ndarray]:
        return _batch(fn(_record(batch), **kwargs))

    return step


@dataclass
class Step:
    """One ``map_batches`` step: a function run as Ray tasks, or a :class:`RecordActor` subclass run in
    a pool of ``actors`` actors; ``kwargs`` go to the function / the actor's constructor."""

    fn: Callable[..., Any] | type[RecordActor]
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_cpus: float = 1.0
    num_gpus: float | None = None  # None: not asked for
    actors: int = 1

    def map_batches_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus is not None:
            args["num_gpus"] = self.num_gpus
        if isinstance(self.fn, type):
            import ray.data

            if not issubclass(self.fn, RecordActor):
                raise TypeError(f"{self.fn.__name__}: an actor step must subclass RecordActor")

            return {**args, "fn": self.fn, "fn_constructor_kwargs": self.kwargs,
                    "compute": ray.data.ActorPoolStrategy(size=self.actors)}
        return {**args, "fn": _per_record(self.fn), "fn_kwargs": self.kwargs}


class Progress:
    """Throttled progress of one stage with running totals: a line when another ``step`` of the shards
    is done, but at most one every ``every_s`` seconds; the last shard always gets one.

    At paper scale a stage has tens of thousands of shards (curation/SCALE.md); one line per shard
    would bury everything else in the log.
    """

    def __init__(self, name: str, total: int, unit: str, *, step: float = PROGRESS_STEP,
                 every_s: float = PROGRESS_EVERY_S, clock: Callable[[], float] = time.perf_counter):
        self.name, self.total, self.unit = name, total, unit
        self.step, self.every_s, self.clock = step, every_s, clock
        self.t0 = self.last_t = clock()
        self.done = self.rows = self.quarantined = 0
        self.next_done = max(1, math.ceil(step * total))

    def update(self, result: ShardSummary) -> None:
        self.done += 1
        self.rows += result.rows_out
        self.quarantined += result.quarantined
        now = self.clock()
        if self.done == self.total or (self.done >= self.next_done and now - self.last_t >= self.every_s):
            self.last_t = now
            self.next_done = self.done + max(1, math.ceil(self.step * self.total))
            elapsed = now - self.t0
            log.info("[%s] %d/%d shards (%.0f%%), %d %s and %d quarantined so far, %.0f s elapsed, ~%.0f s left",
                     self.name, self.done, self.total, 100 * self.done / self.total, self.rows, self.unit,
                     self.quarantined, elapsed, elapsed / self.done * (self.total - self.done))


def run_stage(name: str, tasks: list[StageTask], steps: Sequence[Step], unit: str = "rows") -> StageTiming:
    """Run the tasks whose ``out`` shard is missing through ``steps``, one task per batch, logging
    throttled progress in ``unit`` (what a shard's rows are) as shards finish (the last step returns a
    :class:`ShardSummary`)."""
    import ray
    from ray.data import DataContext

    t0 = time.perf_counter()
    pending = [t for t in tasks if not storage.exists(t.out)]
    log.info("[%s] %d shards, %d already done, %d to run", name, len(tasks), len(tasks) - len(pending),
             len(pending))
    if pending:
        # Records are meant to travel pickled: say so, and Ray does not warn that Arrow cannot hold them.
        DataContext.get_current().enable_fallback_to_arrow_object_ext_type = True
        ds = ray.data.from_items(pending, override_num_blocks=len(pending))
        runtime_env = worker_runtime_env()
        extra = {"runtime_env": runtime_env} if runtime_env else {}
        for step in steps:
            ds = ds.map_batches(batch_size=1, batch_format="numpy", **step.map_batches_args(), **extra)
        progress = Progress(name, len(pending), unit)
        for row in ds.iter_rows():
            progress.update(row["item"])
    return StageTiming(name, time.perf_counter() - t0, len(tasks), len(pending))


def cluster_gpus() -> float:
    """GPUs in the Ray cluster (0 on a CPU-only one)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))
