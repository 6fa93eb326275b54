"""Clip requests of a long stream, resolved window by window in Ray Data read tasks, never all in the driver.

A whole run's stream is ``total_steps x global_batch`` samples: 240k x 3072 = 737M requests for the
paper's ViT-g, about 70 GB as a table. Resolving them up front in the driver (fine for a tiny run)
cannot work there. :class:`ClipRequestSource` cuts samples ``[start, stop)`` into windows of
``data.resolve_window`` samples; each window is one read task that draws its samples and resolves
them (one streamed pass over the needed manifest row groups, :meth:`ClipIndex.resolve`) on a worker,
as Ray Data's streaming executor asks for more input. Every sample is a pure function of
(seed, epoch, sample id), so the windows give exactly the rows a driver-side resolve would give, in order.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipelines.sampling import REQUESTS_SCHEMA, ClipIndex

REQUEST_BYTES = 96  # in-memory size of one resolved request row on the sample world (URI strings dominate)


def window_bounds(start: int, stop: int, window: int, block: int = 1) -> list[tuple[int, int]]:
    """``[start, stop)`` cut into consecutive ranges of ``window`` samples rounded down to whole ``block``s.

    Whole blocks per window keep the block stream (and Ray Train's deal of blocks to ranks) the one a
    driver-side resolve makes: a short block at each window's end would shift every later block.
    """
    if window < 1:
        raise ValueError(f"data.resolve_window must be >= 1, got {window}")
    size = max(block, window - window % block)
    return [(at, min(at + size, stop)) for at in range(start, stop, size)]


def split_blocks(requests: pa.Table, rows_per_block: int) -> Iterator[pa.Table]:
    """``requests`` as blocks of ``rows_per_block`` rows (one decode call each).

    ``take`` copies each block: a pickled slice would carry the whole table's buffers.
    """
    for at in range(0, requests.num_rows, rows_per_block):
        yield requests.take(np.arange(at, min(at + rows_per_block, requests.num_rows)))


def resolve_blocks(index: ClipIndex, epoch: int, start: int, stop: int, rows_per_block: int) -> Iterator[pa.Table]:
    """The requests of samples ``[start, stop)`` of ``epoch``, resolved, as blocks (a read task's body)."""
    yield from split_blocks(index.resolve(index.draws(epoch, start, stop)), rows_per_block)


class ClipRequestSource(Datasource):
    """Samples ``[start, stop)`` of ``epoch``: one read task per window of ``window`` samples (whole blocks)."""

    def __init__(self, index: ClipIndex, epoch: int, start: int, stop: int, window: int, rows_per_block: int):
        self.index = index
        self.epoch = epoch
        self.windows = window_bounds(start, stop, window, rows_per_block)
        self.rows_per_block = rows_per_block

    def estimate_inmemory_data_size(self) -> int:
        return sum(b - a for a, b in self.windows) * REQUEST_BYTES

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        """One task per window, whatever ``parallelism`` Ray asks for: a window is the unit of resolution."""
        return [
            ReadTask(functools.partial(resolve_blocks, self.index, self.epoch, a, b, self.rows_per_block),
                     BlockMetadata(num_rows=b - a, size_bytes=(b - a) * REQUEST_BYTES, exec_stats=None,
                                   input_files=None),
                     schema=REQUESTS_SCHEMA, per_task_row_limit=per_task_row_limit)
            for a, b in self.windows
        ]
