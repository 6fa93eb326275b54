"""The ``vjepa2-ray`` console script: one subcommand per entry point.

Each subcommand is a module with ``add_arguments(parser)`` and ``run(args) -> int`` and a docstring
whose first line is its help. The same module runs as ``python -m <module>`` (so
``ray job submit -- python -m train.pretrain ...`` works) through :func:`core.entry.module_main`.
A :class:`~core.errors.UserError` becomes one line on stderr and exit code 2 (``core/entry.py``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from core.entry import run_module

# subcommand -> module; add a line here when a package grows an entry point.
SUBCOMMANDS: dict[str, str] = {
    "demo": "cluster.demo",
    "sample-world": "pipelines.sample_world.build",
    "validate-data": "pipelines.validate",
    "transcode": "pipelines.transcode",
    "init-checkpoint": "train.init_checkpoint",
    "convert": "train.convert",
    "embed": "eval.embed",
    "curate": "curation.curate",
    "pretrain": "train.pretrain",
}


def _describe(module: ModuleType) -> str:
    return (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="vjepa2-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    command = next((a for a in argv if not a.startswith("-")), None)
    for name, module_name in SUBCOMMANDS.items():
        if name == command:
            module = importlib.import_module(module_name)
            sp = sub.add_parser(name, help=_describe(module), description=module.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
            module.add_arguments(sp)
            sp.set_defaults(_module=module)
        else:  # imported lazily: `vjepa2-ray --help` must not pay for torch and ray
            sub.add_parser(name, help=f"(python -m {module_name})")
    args = parser.parse_args(argv)
    return run_module(args._module, args)


if __name__ == "__main__":
    raise SystemExit(main())
