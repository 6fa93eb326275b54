"""The vjepa2-ray console script: one subcommand per stage, the same modules that run as `python -m`.

This table is the one place a stage registers. A config stage (``config=True``) takes the contract of
``core/entry.py``: ``--config FILE|PRESET``, ``KEY=VALUE`` overrides, ``--print-config``, ``--dry-run``.
Help is built from the table and the stages' argument functions without importing torch or Ray, so
``vjepa2-ray --help`` and ``vjepa2-ray pretrain --help`` answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from configs import list_presets
from core.entry import HelpFormatter, add_config_arguments, run_module


@dataclass(frozen=True)
class Command:
    module: str  # dotted module: `python -m <module>` runs the same stage
    summary: str  # one line for `vjepa2-ray --help`
    config: bool = False  # a config stage (the module declares STAGE = core.entry.ConfigStage(...))


COMMANDS: dict[str, Command] = {
    "demo": Command("cluster.demo", "the end-to-end demo on local defaults: sample world, curation, pretraining"),
    "presets": Command("cluster.cli", "list the config presets (`--config <stage>/<preset>`)"),
    "sample-world": Command("pipelines.sample_world.build", "write the deterministic sample dataset tree"),
    "build-manifest": Command("pipelines.builders", "a manifest from a dataset's own index files"),
    "validate-data": Command("pipelines.validate", "decode a test clip of every row; report bad rows by reason"),
    "transcode": Command("pipelines.transcode", "re-encode videos with short keyframe intervals (faster seeks)"),
    "build-episodes": Command("pipelines.episodes.build",
                              "convert DROID raw or LeRobot v2.1/v3.0 into the robot-episode schema"),
    "curate": Command("curation.curate", "Curated-YT1B: scenes, embeddings, k-means, retrieval, report",
                      config=True),
    "pretrain": Command("train.pretrain", "V-JEPA 2 pretraining on Ray Train (FSDP2)", config=True),
    "posttrain": Command("train.posttrain", "V-JEPA 2-AC post-training on robot episodes (frozen encoder)",
                         config=True),
    "collect": Command("pipelines.robot_sim.collect",
                       "simulated Franka play episodes (panda-gym) as a robot-episode dataset", config=True),
    "probe": Command("eval.probe", "attentive probes over a frozen encoder (train a grid, or evaluate a probe file)",
                     config=True),
    "anticipate": Command("eval.anticipation", "EK100-style action anticipation: 3-head probes over a frozen "
                          "encoder and predictor", config=True),
    "classify": Command("eval.classify", "top-5 labels of a video from an encoder and a probe file"),
    "init-checkpoint": Command("train.init_checkpoint", "a randomly initialised model in Meta's layout"),
    "convert": Command("train.convert", "convert checkpoints between Meta's and Hugging Face's layouts"),
    "embed": Command("eval.embed", "encoder features of a video or an array"),
}


def package_version() -> str:
    try:
        return version("vjepa2-ray")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``presets`` takes no options."""


def run(args: argparse.Namespace) -> int:
    """``vjepa2-ray presets``: every preset with the first line of its header comment."""
    for stage, presets in list_presets().items():
        print(f"{stage}/")
        for name, description in presets:
            print(f"  {stage + '/' + name:<24} {description[:96]}")
    return 0


def _add_command(sub: argparse._SubParsersAction, name: str, command: Command, selected: bool) -> None:
    """Register ``name``; only the command being run (or asked for help) has its arguments built."""
    sp = sub.add_parser(name, help=command.summary, description=command.summary, formatter_class=HelpFormatter)
    if not selected:
        return
    if command.config:
        add_config_arguments(sp, name)
        sp.set_defaults(_module=command.module)
        return
    module = importlib.import_module(command.module)
    sp.description = module.__doc__ if command.module != __name__ else command.summary
    module.add_arguments(sp)
    sp.set_defaults(_module=command.module)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="vjepa2-ray", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"vjepa2-ray {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, command in COMMANDS.items():
        _add_command(sub, name, command, selected=name == chosen)
    args = parser.parse_args(argv)
    return run_module(importlib.import_module(args._module), args)  # the stage's heavy imports happen here


if __name__ == "__main__":
    raise SystemExit(main())
