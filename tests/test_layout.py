"""The house: packages import downward only (docs/architecture.md). A forbidden import fails here.

ground (core/, configs/) -> models/, pipelines/ -> curation/, train/, eval/, planning/ -> cluster/, sweeps/
Every import counts, also those inside functions (lazy imports are still dependencies).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = {"core", "configs", "models", "pipelines", "curation", "train", "eval", "planning", "cluster", "sweeps",
           "bench"}
GROUND = {"core", "configs"}
STAGES = {"curation", "train", "eval", "planning"}
# package -> the project packages it may import (itself always)
ALLOWED = {
    "core": set(),
    "configs": set(),
    "models": GROUND,
    "pipelines": GROUND | {"models"},
    "curation": GROUND | {"models", "pipelines"},
    "train": GROUND | {"models", "pipelines"},
    "eval": GROUND | {"models", "pipelines", "train"},  # probes train on the generic loop
    "planning": GROUND | {"models", "pipelines"},
    "bench": GROUND | {"models", "pipelines"} | STAGES,
    "cluster": PROJECT - {"bench"},
    "sweeps": PROJECT - {"bench", "cluster"},
}
# third-party packages a project package may not import
FORBIDDEN_THIRD_PARTY = {"models": {"ray", "mlflow"}}
MLFLOW_HOME = "core/tracking.py"  # the only MLflow importer
PLANNING_RAY_MODULES = ("service", "client")  # planning/'s only Ray importers; the planner is plain PyTorch


def imports_of(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at any depth."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def project_files() -> list[Path]:
    return sorted(p for package in PROJECT if (REPO / package).is_dir() for p in (REPO / package).rglob("*.py"))


def violations() -> list[str]:
    found = []
    for path in project_files():
        rel = path.relative_to(REPO).as_posix()
        package = rel.split("/", 1)[0]
        for name in imports_of(path):
            top = name.split(".", 1)[0]
            if top in PROJECT and top != package and top not in ALLOWED[package]:
                found.append(f"{rel}: {package}/ may not import {top}/ ({name})")
            if top in FORBIDDEN_THIRD_PARTY.get(package, set()):
                found.append(f"{rel}: {package}/ may not import {top}")
            if name == "core.tracking" and package == "models":
                found.append(f"{rel}: models/ may not import the ground's tracking")
            if top == "mlflow" and rel != MLFLOW_HOME:
                found.append(f"{rel}: only {MLFLOW_HOME} imports mlflow")
            if (top == "ray" and package == "planning"
                    and not path.stem.startswith(PLANNING_RAY_MODULES)):
                found.append(f"{rel}: planning's planner modules import no Ray")
    return found


def test_packages_import_downward_only():
    assert violations() == []


def test_the_checker_catches_an_upward_import(tmp_path, monkeypatch):
    """The rule itself works: a planted upward import (pipelines -> train) and an MLflow import are caught."""
    planted = {"pipelines/bad.py": "from train.masks import sample_masks\n",
               "models/worse.py": "def f():\n    import mlflow\n    import ray\n"}
    for rel, text in planted.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = violations()
    assert any("pipelines/ may not import train/" in v for v in found)
    assert any("only core/tracking.py imports mlflow" in v for v in found)
    assert any("models/ may not import ray" in v for v in found)


@pytest.mark.parametrize("package", sorted(GROUND))
def test_the_ground_imports_no_project_package(package):
    for path in (REPO / package).rglob("*.py"):
        assert not {n.split(".")[0] for n in imports_of(path)} & (PROJECT - {package}), path
