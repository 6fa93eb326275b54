"""How every stage runs as a program: ``python -m <module>`` and the ``vjepa2-ray`` subcommands.

A stage module has ``add_arguments(parser)`` and ``run(args) -> int`` and a docstring whose first line
is its help. :func:`module_main` runs one as ``python -m <module>`` (so ``ray job submit -- python -m
train.pretrain ...`` works); the roof's CLI (``cluster/cli.py``) dispatches the same modules. A
:class:`~core.errors.UserError` (bad config, manifest, data directory, checkpoint) becomes one line on
stderr and exit code 2, in both.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from core.errors import UserError


def run_module(module: ModuleType, args: argparse.Namespace) -> int:
    """``module.run(args)``, with a :class:`UserError` turned into one stderr line and exit code 2."""
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"vjepa2-ray: error: {exc}", file=sys.stderr)
        return 2


def module_main(module_name: str, argv: list[str] | None = None) -> int:
    """Entry point for ``python -m <module>`` (called with ``__name__``, i.e. ``"__main__"``)."""
    module = importlib.import_module(module_name)
    if module_name == "__main__" and module.__spec__ is not None:
        module_name = module.__spec__.name  # the dotted name `python -m` was given
    parser = argparse.ArgumentParser(prog=f"python -m {module_name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return run_module(module, parser.parse_args(argv))
