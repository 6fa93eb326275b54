"""What a driver prints of Ray's own output: the stages' lines, not Ray's chatter.

A Ray driver prints every line its workers and actors write (``log_to_driver``). Besides the stages'
own log lines, Ray's components write lines on every run that a user cannot act on; a 20-step tiny
pretraining job printed ~800 lines, most of them these (docs/reference.md R-ray-3.5):

- Ray Data progress bars, redrawn with terminal escapes, from the actor that feeds Ray Train (the
  driver's ``DataContext`` does not reach it: :func:`quiet_data_context` is also called where datasets
  are built);
- Ray Train's controller narrating each worker-group start and each reported checkpoint (the loop logs
  its own one line per checkpoint);
- error-level core-worker lines for harmless events (an actor whose constructor arguments sit in the
  object store);
- Ray Train's placement-group cleaner, an actor that polls Ray's state API to free the training
  placement group if the controller dies: it logs a warning on every retry while a job ends, and a
  traceback when the machine runs more than one Ray instance (it cannot tell which to ask). Its
  output is replaced by one line saying so; training is not affected.

In the driver itself, Ray Data's console handler prints each dataset's start and execution plan at INFO
(:func:`quiet_data_context` holds it to warnings; Ray Data's log file keeps everything). Lines the C++
core worker writes straight to stderr cannot be filtered.

:func:`filter_worker_lines` drops exactly those and blank lines, and stops coloring the ``(pid=...)``
prefixes when the output is not a terminal (a log file or ``ray job logs`` gets no ANSI escapes).
Errors, warnings and tracebacks pass untouched. The filter wraps the handler Ray registers in its
driver-side log dispatcher (``ray._private.ray_logging``), a private interface: if a Ray upgrade
renames it, the driver prints everything again and nothing else changes.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

# Substrings of lines Ray prints on every run that carry nothing to act on.
HARMLESS_RAY_LINES = (
    "has constructor arguments in the object store and max_restarts > 0",
    "State API may be temporarily unavailable",
    "A new progress UI is available",
    "Requesting resources: {",
    "Attempting to start training worker group",
    "Started training worker group",
    "Setting up process group for",
    "world_rank=",
    "Checkpoint successfully created at",
    "Reporting training result",
    "Starting execution of Dataset",
    "Execution plan of Dataset",
    "execution finished in",
    "Progress bars disabled",
    # Ray Train finding its own run record on a resume (the loop logs "resumed at step N" itself)
    "A run snapshot was found in storage folder",
    "This snapshot contains a list of checkpoints",
    "If you meant to start a brand new training job",
)
SILENCED_ACTORS = {"PlacementGroupCleaner": "Ray Train's placement-group cleaner could not reach Ray's state API "
                   "(harmless; its further output is hidden, see core/ray_logs.py)"}
TERMINAL_ESCAPE = "\x1b["
RAY_HANDLER = "ray_print_logs"  # the name Ray gives its printing handler in the dispatcher
COLOR_ENV = "RAY_COLOR_PREFIX"  # "0": Ray prints worker prefixes without color codes


def keep_line(line: str) -> bool:
    """Whether a line a worker wrote is worth a line in the driver's output."""
    if not line.strip() or TERMINAL_ESCAPE in line or "\r" in line:
        return False  # blank lines and progress-bar redraws
    return not any(marker in line for marker in HARMLESS_RAY_LINES)


def _filtering(handler: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    explained: set[str] = set()

    def handle(data: dict[str, Any]) -> None:
        actor = data.get("actor_name") or ""
        if actor in SILENCED_ACTORS:
            lines = [] if actor in explained else [SILENCED_ACTORS[actor]]
            explained.add(actor)
        else:
            lines = [line for line in data.get("lines", []) if keep_line(line)]
        if lines:
            handler({**data, "lines": lines})

    handle.vjepa2_filter = True  # type: ignore[attr-defined]  # marks an installed filter
    return handle


def filter_worker_lines() -> bool:
    """Install the filter on this driver's Ray log dispatcher (idempotent); False where Ray has none."""
    if not sys.stdout.isatty():
        os.environ.setdefault(COLOR_ENV, "0")
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    with dispatcher._lock:
        handlers = dispatcher.handlers
        for i, (name, handler) in enumerate(handlers):
            if name == RAY_HANDLER and not getattr(handler, "vjepa2_filter", False):
                handlers[i] = (name, _filtering(handler))
        return any(name == RAY_HANDLER for name, _ in handlers)


class HarmlessRecords(logging.Filter):
    """Drops log records of Ray's own that :func:`keep_line` would drop from a worker's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return keep_line(record.getMessage())


def quiet_data_context() -> None:
    """No Ray Data progress bars from datasets built in this process (the stages log their own progress),
    and Ray Data's console lines held to warnings that matter: its handler prints each dataset's start
    and execution plan at INFO and a "progress bars disabled" warning. Its log file keeps everything."""
    from ray.data import DataContext  # importing ray.data installs its logging configuration

    DataContext.get_current().enable_progress_bars = False
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
            handler.setLevel(max(handler.level, logging.WARNING))
            if not any(isinstance(f, HarmlessRecords) for f in handler.filters):
                handler.addFilter(HarmlessRecords())
