"""How every stage runs as a program: ``python -m <module>`` and the ``vjepa2-ray`` subcommands.

Two kinds of stage module, both with a docstring whose first line is its help:

- a **config stage** (pretrain, curate; later posttrain, probe, plan, sweep) declares
  ``STAGE = ConfigStage(ConfigType, check=..., execute=...)`` and nothing else for the command line.
  It inherits one contract from here: ``--config FILE|PRESET`` (a YAML path, or ``<stage>/<preset>``
  from ``configs/`` from any directory), dotted ``KEY=VALUE`` overrides, ``--print-config`` (the resolved
  config as YAML) and ``--dry-run`` (every input and path checked, nothing opened: no Ray, no MLflow);
- any other module has ``add_arguments(parser)`` and ``run(args) -> int``.

:func:`module_main` runs one as ``python -m <module>`` (so ``ray job submit -- python -m train.pretrain
...`` works); the roof's CLI (``cluster/cli.py``) dispatches the same modules. A
:class:`~core.errors.UserError` (bad config, manifest, data directory, checkpoint) becomes one line on
stderr and exit code 2, in both.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import yaml

from core.config import find_config, load_config, to_dict
from core.errors import UserError
from core.redact import setup_logging


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Docstrings keep their layout, and an option's help shows its default where it has a real one
    (not for flags, required options and lists that default to nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text or action.required:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


@dataclass(frozen=True)
class ConfigStage:
    """What a config stage gives the command-line contract.

    ``resolve`` turns a loaded config into the one the run uses (absolute paths, derived values): it is
    what ``--print-config`` prints. ``check`` refuses bad inputs and unwritable outputs with a
    :class:`UserError` and opens nothing (``--dry-run`` runs it and stops). ``execute`` runs the stage on
    a resolved config and returns the exit code; it makes the same checks itself before it starts Ray or
    opens a tracking run, so a stage called from Python is refused the same way.
    """

    config_type: type
    check: Callable[[Any], None]
    execute: Callable[[Any], int]
    resolve: Callable[[Any], Any] = lambda cfg: cfg


def add_config_arguments(parser: argparse.ArgumentParser, stage_name: str) -> None:
    """The options every config stage takes (built without importing the stage's module)."""
    parser.add_argument("--config", required=True, metavar="FILE|PRESET",
                        help=f"run config: a YAML path, or a preset such as {stage_name}/tiny "
                             "(`vjepa2-ray presets` lists them)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config, inputs and output paths, then exit (opens no Ray or MLflow)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides parsed as YAML, e.g. trainer.num_workers=2 optim.betas=[0.9,0.95]")


def run_config_stage(stage: ConfigStage, args: argparse.Namespace) -> int:
    """Load and resolve the config, then print it, check it and stop (dry run), or run the stage."""
    setup_logging()
    cfg = stage.resolve(load_config(stage.config_type, find_config(args.config), args.overrides))
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    if args.dry_run:
        stage.check(cfg)
        print(f"dry run: {args.config} is valid; inputs and output paths checked; nothing was started")
        return 0
    return stage.execute(cfg)


def run_module(module: ModuleType, args: argparse.Namespace) -> int:
    """Run the module's stage, with a :class:`UserError` turned into one stderr line and exit code 2."""
    stage: ConfigStage | None = getattr(module, "STAGE", None)
    try:
        return int(run_config_stage(stage, args) if stage else module.run(args) or 0)
    except UserError as exc:
        print(f"vjepa2-ray: error: {exc}", file=sys.stderr)
        return 2


def module_main(module_name: str, argv: list[str] | None = None) -> int:
    """Entry point for ``python -m <module>`` (called with ``__name__``, i.e. ``"__main__"``)."""
    module = importlib.import_module(module_name)
    if module_name == "__main__" and module.__spec__ is not None:
        module_name = module.__spec__.name  # the dotted name `python -m` was given
    parser = argparse.ArgumentParser(prog=f"python -m {module_name}", description=module.__doc__,
                                     formatter_class=HelpFormatter)
    if hasattr(module, "STAGE"):
        add_config_arguments(parser, module_name.rsplit(".", 1)[-1])
    else:
        module.add_arguments(parser)
    return run_module(module, parser.parse_args(argv))
