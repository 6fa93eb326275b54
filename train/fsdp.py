"""Parallelism applied from outside the model: FSDP2, activation checkpointing, torch.compile.

The networks in ``models/`` know nothing about any of this. :func:`parallelize` takes a module and the
``nn.ModuleList`` of its transformer blocks and, in torchtitan's order,
1. wraps each block in activation checkpointing (recompute in backward; docs/reference.md R-vjepa2-4.2: on in Meta's
runs),
2. compiles each block (per-block compile keeps graphs small and reusable across blocks),
3. ``fully_shard``s each block, then the root (patch embed, norms, projections, mask tokens),
with an explicit :class:`MixedPrecisionPolicy`: bf16 parameters for compute with fp32 gradient
reduction on GPU, fp32 throughout on CPU. Sharding is skipped (steps 1-2 still apply) with fewer than two
ranks: Ray Train's local mode, a plain single process, or one worker, where FSDP would shard nothing.

Ray Train V2 creates the process group (gloo on CPU workers, NCCL on GPU workers, :func:`backend`);
``ray.train.torch.prepare_model(parallel_strategy="fsdp")`` is FSDP1 and GPU-only, so it is not used
(docs/reference.md R-ray-2.6, R-ray-2.7).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from train.config import TrainerConfig

log = logging.getLogger(__name__)


def backend(use_gpu: bool) -> str:
    """NCCL on GPU workers, gloo on CPU workers."""
    return "nccl" if use_gpu else "gloo"


def training_device(use_gpu: bool) -> torch.device:
    """``cuda:<local rank>`` on GPU workers (Ray sets CUDA_VISIBLE_DEVICES and LOCAL_RANK), else CPU."""
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("trainer.use_gpu is true but this worker sees no CUDA device")
    index = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPU, fp32 on CPU (docs/reference.md R-vjepa2-4.2: Meta trains in bf16 autocast)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def mixed_precision_policy(dtype: torch.dtype) -> MixedPrecisionPolicy:
    """Parameters cast to ``dtype`` for forward/backward; gradients always reduced and stored in fp32."""
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32, output_dtype=None)


def autocast(dtype: torch.dtype, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast (keeps norms and softmax in fp32); a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def data_parallel_mesh(device: torch.device) -> DeviceMesh | None:
    """A 1-D mesh over every rank, or None without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return init_device_mesh(device.type, (dist.get_world_size(),))


def parallelize(module: nn.Module, blocks: nn.ModuleList, cfg: TrainerConfig, mesh: DeviceMesh | None,
                dtype: torch.dtype, *, trainable: bool = True) -> nn.Module:
    """Activation checkpointing, compile and FSDP2 for ``module`` whose blocks are ``blocks`` (in place).

    The EMA target encoder (``trainable=False``) is wrapped exactly like the context encoder, so both keep
    the same parameter names and shards and the EMA update pairs them locally; checkpointing costs nothing
    under no_grad.
    """
    for i, block in enumerate(blocks):
        if cfg.activation_checkpointing:
            block = checkpoint_wrapper(block, preserve_rng_state=False)
        if cfg.compile:
            block = torch.compile(block)
        blocks[i] = block
    if mesh is None or mesh.size() == 1 or not cfg.fsdp:  # one rank: sharding would only add bookkeeping
        return module
    policy = mixed_precision_policy(dtype)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    # A trained root keeps its parameters gathered after forward since backward needs them right away; the
    # target encoder has no backward, so it reshards at once and the EMA update sees sharded parameters.
    fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=not trainable)
    return module


def fsdp_modules(*modules: nn.Module) -> Iterator[FSDPModule]:
    for module in modules:
        if isinstance(module, FSDPModule):
            yield module


@contextlib.contextmanager
def no_gradient_sync(*modules: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip FSDP2's reduce-scatter for accumulation micro-batches but the last (gradients stay local)."""
    targets = list(fsdp_modules(*modules)) if enabled else []
    for m in targets:
        m.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        for m in targets:
            m.set_requires_gradient_sync(True)
