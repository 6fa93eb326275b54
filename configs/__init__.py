"""YAML presets, one run per file: ``configs/<stage>/<preset>.yaml``."""

from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parent


def preset_path(stage: str, name: str) -> Path:
    """Path of ``configs/<stage>/<name>.yaml``; raises FileNotFoundError listing the known presets."""
    path = CONFIG_ROOT / stage / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_ROOT / stage).glob("*.yaml"))
        raise FileNotFoundError(f"no preset '{name}' for stage '{stage}' (known: {known})")
    return path
