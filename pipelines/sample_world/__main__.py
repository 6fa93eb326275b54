"""``python -m pipelines.sample_world``: the ``sample-world`` command."""

from core.entry import module_main

raise SystemExit(module_main("pipelines.sample_world.build"))
