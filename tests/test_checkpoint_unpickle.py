"""Sharded (DCP) checkpoints are read through allow-listing unpicklers: a real checkpoint loads, and a
``__reduce__`` payload planted as its ``.metadata`` or as a non-tensor entry is refused without running."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from models.checkpoint import CheckpointError
from models.sharded import METADATA_FILE, check_dcp_metadata, read_model_state
from train.state import TrainState, load_checkpoint, save_checkpoint


class Payload:
    """Creates ``marker`` when unpickled: proof that a load ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    model, optimizer = _model()
    path = tmp_path / "step_00000001"
    save_checkpoint(path, model, optimizer, TrainState(step=1), {"config": {}})
    return path


def test_a_checkpoint_written_here_loads_through_the_checks(checkpoint):
    model, optimizer = _model()
    for p in model.parameters():
        p.data.zero_()
    assert load_checkpoint(checkpoint, model, optimizer).step == 1
    assert optimizer.param_groups[0]["lr"] == 1e-3  # a non-tensor entry, through the weights_only check
    assert torch.equal(read_model_state(checkpoint)["0.weight"], model[0].weight.detach())


def test_planted_metadata_payload_is_refused_and_never_runs(checkpoint, tmp_path):
    marker = tmp_path / "ran"
    (checkpoint / METADATA_FILE).write_bytes(pickle.dumps(Payload(marker)))
    model, optimizer = _model()
    for load in (lambda: read_model_state(checkpoint), lambda: load_checkpoint(checkpoint, model, optimizer)):
        with pytest.raises(CheckpointError, match=r"\.metadata: refused to load: it references posix\.system"):
            load()
    assert not marker.exists()
    (checkpoint / METADATA_FILE).write_bytes(b"\x80\x04 not a pickle")
    with pytest.raises(CheckpointError, match="corrupt DCP metadata"):
        check_dcp_metadata(checkpoint)


def test_planted_entry_payload_is_refused_and_never_runs(checkpoint, tmp_path):
    """Rewire one non-tensor entry (an optimizer hyper-parameter) to a payload appended to its shard."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    marker = tmp_path / "ran"
    meta = check_dcp_metadata(checkpoint)
    index = next(i for i in meta.storage_data if i.fqn.startswith("optim.param_groups"))
    info = meta.storage_data[index]
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    shard = checkpoint / info.relative_path
    offset = shard.stat().st_size
    with shard.open("ab") as f:
        f.write(buffer.getvalue())
    meta.storage_data[index] = _StorageInfo(info.relative_path, offset, len(buffer.getvalue()))
    (checkpoint / METADATA_FILE).write_bytes(pickle.dumps(meta))
    model, optimizer = _model()
    with pytest.raises(CheckpointError, match=rf"entry {index.fqn}: refused to load: .*GLOBAL posix\.system"):
        load_checkpoint(checkpoint, model, optimizer)
    assert not marker.exists()
