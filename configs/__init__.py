"""YAML presets, one run per file: ``configs/<stage>/<preset>.yaml`` (installed with the package)."""

from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parent


def preset_path(stage: str, name: str) -> Path:
    """Path of ``configs/<stage>/<name>.yaml``; raises FileNotFoundError listing the known presets."""
    path = CONFIG_ROOT / stage / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_ROOT / stage).glob("*.yaml"))
        raise FileNotFoundError(f"no preset '{name}' for stage '{stage}' (known: {known})")
    return path


def describe(path: Path) -> str:
    """A preset's one-line description: the first line of its header comment."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def list_presets() -> dict[str, list[tuple[str, str]]]:
    """``{stage: [(preset, description), ...]}`` for every ``configs/<stage>/*.yaml`` (nested folders such
    as ``curate/targets/`` are config fragments to include with ``_base_``, listed as ``targets/<name>``)."""
    found: dict[str, list[tuple[str, str]]] = {}
    for stage_dir in sorted(p for p in CONFIG_ROOT.iterdir() if p.is_dir() and not p.name.startswith("_")):
        found[stage_dir.name] = [(str(p.relative_to(stage_dir).with_suffix("")), describe(p))
                                 for p in sorted(stage_dir.rglob("*.yaml"))]
    return found
