"""Which outputs of a curation build a run can reuse, and which dotted config keys changed.

Every output a stage writes (a *node*: the scenes, the pool's embeddings, one target split's
embeddings, the codebook, ...) depends on some config keys and on the nodes it reads. Its record
(``_stage.json`` in its first directory) holds every dotted key it depends on, its upstream nodes'
keys included, with the resolved value. A run compares each node's record with what its config gives:

* no record: the node is new and runs;
* the same inputs: the node is reused; only its missing shards run (that is how a killed run resumes);
* other inputs: its old output is removed and it runs again; the notice names the changed keys.

Because a node's inputs include its upstream nodes' inputs, a change re-runs the node that reads the
key and everything downstream of it, and nothing else: ``kmeans.seed`` re-runs k-means, assignment
and the manifest, and reuses scenes, embeddings and decontamination. Every step is deterministic, so
equal inputs mean equal outputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

from core import storage
from curation import shards

log = logging.getLogger(__name__)

RECORD_FILE = "_stage.json"
MAX_KEYS_SHOWN = 6  # a notice names at most this many changed keys, then "and N more"

Status = Literal["new", "reuse", "rerun"]


@dataclass(frozen=True)
class Node:
    """One output of a stage: the directories it writes (its record lives in the first), its own config
    keys, and the nodes whose output it reads."""

    name: str
    stage: str
    dirs: tuple[str, ...]
    keys: tuple[str, ...]
    upstream: tuple[str, ...] = ()


@dataclass
class Decision:
    """What a run does with one node, and why."""

    node: Node
    inputs: dict[str, Any]
    status: Status
    changed: list[str]  # "kmeans.seed (0 -> 1)", for status "rerun"


def _plain(value: Any) -> Any:
    """The value as it reads back from a JSON record (tuples as lists), so equal inputs compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def inputs_of(nodes: list[Node], values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every node's inputs: its own keys' values and its upstream nodes' inputs (nodes in stage order)."""
    out: dict[str, dict[str, Any]] = {}
    for node in nodes:
        merged: dict[str, Any] = {}
        for up in node.upstream:
            merged.update(out[up])
        merged.update({key: _plain(values[key]) for key in node.keys})
        out[node.name] = dict(sorted(merged.items()))
    return out


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key (old -> new)`` for every dotted key whose value differs, was added or was removed."""
    missing = object()
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            out.append(f"{key} ({'unset' if a is missing else a} -> {'unset' if b is missing else b})")
    return out


def plan(nodes: list[Node], values: dict[str, Any]) -> list[Decision]:
    """Compare every node's record with its inputs under ``values`` (the resolved, flattened config)."""
    decisions = []
    for node, inputs in zip(nodes, inputs_of(nodes, values).values()):
        uri = storage.join(node.dirs[0], RECORD_FILE)
        if not storage.exists(uri):
            decisions.append(Decision(node, inputs, "new", []))
            continue
        # A record of an older format has no "inputs": every key then reads as changed.
        old = json.loads(storage.read_bytes(uri)).get("inputs", {})
        changed = changed_keys(old, inputs)
        decisions.append(Decision(node, inputs, "rerun" if changed else "reuse", changed))
    return decisions


def prepare(decisions: list[Decision]) -> None:
    """Remove the output of every node that re-runs and record the inputs of every node that runs
    (the driver calls it as each stage starts).

    A run killed after this finds the new records and resumes: a record only says which inputs the
    node's shards are made with, not that they are all there.
    """
    for d in decisions:
        if d.status == "reuse":
            continue
        if d.status == "rerun":
            for directory in d.node.dirs:
                shards.remove_dir(directory)
        record = {"node": d.node.name, "inputs": d.inputs}
        storage.write_bytes(storage.join(d.node.dirs[0], RECORD_FILE),
                            json.dumps(record, indent=1, sort_keys=True).encode())


def _why(changed: list[str]) -> str:
    unique = list(dict.fromkeys(changed))
    shown = ", ".join(unique[:MAX_KEYS_SHOWN])
    more = f" and {len(unique) - MAX_KEYS_SHOWN} more" if len(unique) > MAX_KEYS_SHOWN else ""
    return f"changed: {shown}{more}"


def stage_notices(decisions: list[Decision]) -> dict[str, str]:
    """One notice per stage (stages in order): what is reused, what re-runs and which keys made it."""
    by_stage: dict[str, list[Decision]] = {}
    for d in decisions:
        by_stage.setdefault(d.node.stage, []).append(d)
    notices = {}
    for stage, group in by_stage.items():
        parts = []
        for status, verb in (("rerun", "re-run"), ("new", "run"), ("reuse", "reused")):
            picked = [d for d in group if d.status == status]
            if not picked:
                continue
            some = len(picked) < len(group)  # name the outputs (count the reused ones) only when not all
            which = f" {', '.join(d.node.name for d in picked)}" if some and status != "reuse" else ""
            count = f" {len(picked)} of {len(group)}" if some and status == "reuse" else ""
            why = {"rerun": _why([c for d in picked for c in d.changed]), "new": "no earlier output",
                   "reuse": "inputs unchanged"}[status]
            parts.append(f"{verb}{which}{count} ({why})")
        notices[stage] = "; ".join(parts)
    return notices


def log_notices(notices: dict[str, str]) -> None:
    for stage, notice in notices.items():
        log.info("[%s] %s", stage, notice)
