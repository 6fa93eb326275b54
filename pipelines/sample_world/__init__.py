"""The sample world: a small, real, deterministic stand-in for the paper's data tree.

``plan`` says which files exist and what each shows, ``render`` makes their frames, ``writers``
encodes videos and writes manifests, ``build`` puts them together (and is the ``sample-world``
command). See docs/sample_world.md.
"""

from pipelines.sample_world.build import build_sample_world, prepare_out
from pipelines.sample_world.plan import MIN_SCENE_S, SOURCES, TARGETS, plan_world

__all__ = ["MIN_SCENE_S", "SOURCES", "TARGETS", "build_sample_world", "plan_world", "prepare_out"]
