"""Meta's per-rank step log: ``<output_dir>/log_r{rank}.csv``, one row per training step."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

from core import storage

STEP_LOG = "log_r{rank}.csv"  # in the run folder, as Meta's runs keep it


class StepLog:
    """``<output_dir>/log_r{rank}.csv``: one row per step, as Meta's runs keep it (step, loss, the recipe's
    metrics such as lr and wd, samples seen, step and data-wait time in ms).

    A resumed run keeps the rows up to the step it resumes from and drops those of steps it will do
    again, so no step appears twice. Rows go to a local file as they come (flushed each step); for an
    ``s3://`` run folder that file is uploaded whole at every :meth:`sync` (checkpoints, the end)."""

    def __init__(self, output_dir: str, rank: int, resume_step: int):
        self.uri = storage.join(output_dir, STEP_LOG.format(rank=rank))
        self.header: list[str] = []
        kept: list[dict[str, str]] = []
        if storage.exists(self.uri):
            reader = csv.DictReader(io.StringIO(storage.read_bytes(self.uri).decode()))
            self.header = list(reader.fieldnames or [])
            kept = [row for row in reader if int(row["step"]) <= resume_step]
        self._remote = storage.is_s3(self.uri)
        self._staging = tempfile.TemporaryDirectory(prefix="vjepa2-steplog-") if self._remote else None
        self.local = os.path.join(self._staging.name, "log.csv") if self._staging else self.uri
        os.makedirs(os.path.dirname(self.local), exist_ok=True)
        self._file = open(self.local, "w", newline="")
        self._writer: csv.DictWriter | None = None
        if self.header:
            self._start_writer()
            self._writer.writerows(kept)
            self._file.flush()

    def _start_writer(self) -> None:
        self._writer = csv.DictWriter(self._file, fieldnames=self.header, extrasaction="ignore")
        self._writer.writeheader()

    def write(self, row: dict[str, float]) -> None:
        """One step's row; the first row of a new log fixes the columns."""
        if self._writer is None:
            self.header = list(row)
            self._start_writer()
        self._writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
        self._file.flush()

    def sync(self) -> None:
        """Make the run folder's copy current (a no-op for a local run folder, which is written directly)."""
        if self._remote:
            storage.write_bytes(self.uri, Path(self.local).read_bytes())

    def close(self) -> None:
        self._file.close()
        self.sync()
        if self._staging is not None:
            self._staging.cleanup()
