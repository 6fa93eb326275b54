"""FSDP2 outside Ray: 2 gloo ranks (torch.multiprocessing.spawn) against one plain process.

Sharding must not change the maths: 2 ranks x 2 accumulated micro-batches give the same losses and
weights as one process accumulating the same 4 micro-batches; checkpoints reshard from 2 ranks to 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from pretrain_utils import small_config, synthetic_batch
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, Shard

from core.config import to_dict
from models.sharded import read_model_state, read_record
from train.fsdp import compute_dtype, data_parallel_mesh, mixed_precision_policy, parallelize
from train.optim import build_optimizer
from train.schedules import build_schedules
from train.state import TrainState, load_checkpoint, save_checkpoint
from train.step import JEPA, build_jepa, train_step

WORLD, ACCUM, STEPS = 2, 2, 2
CPU = torch.device("cpu")


def _setup(cfg, mesh) -> tuple[JEPA, torch.optim.Optimizer]:
    torch.manual_seed(0)
    jepa = build_jepa(cfg.model)
    for module, blocks, trainable in ((jepa.encoder, jepa.encoder.blocks, True),
                                      (jepa.predictor, jepa.predictor.predictor_blocks, True),
                                      (jepa.target_encoder, jepa.target_encoder.blocks, False)):
        parallelize(module, blocks, cfg.trainer, mesh, torch.float32, trainable=trainable)
    return jepa, build_optimizer({"encoder": jepa.encoder, "predictor": jepa.predictor}, cfg.optim)


def _run(jepa, optimizer, cfg, micro_batches_per_step) -> list[float]:
    schedules = build_schedules(cfg.optim)
    losses = []
    for step, batches in enumerate(micro_batches_per_step):
        out = train_step(jepa, optimizer, batches, schedules.at(step), grad_accum=len(batches), device=CPU,
                         dtype=torch.float32)
        losses.append(out.loss)
    return losses


def _rank_batches(cfg, rank: int) -> list[list[dict]]:
    return [[synthetic_batch(cfg, s * ACCUM + i, rank) for i in range(ACCUM)] for s in range(STEPS)]


def _worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD)
    try:
        cfg = small_config("trainer.activation_checkpointing=true")
        jepa, optimizer = _setup(cfg, data_parallel_mesh(CPU))
        block = jepa.encoder.blocks[0]
        weight = jepa.encoder.patch_embed.proj.weight
        facts = {"block_sharded": isinstance(block, FSDPModule), "root_sharded": isinstance(jepa.encoder, FSDPModule),
                 "predictor_sharded": isinstance(jepa.predictor.predictor_blocks[0], FSDPModule),
                 "dtensor_shard0": isinstance(weight, DTensor) and weight.placements == (Shard(0),),
                 "local_rows": weight.to_local().shape[0], "full_rows": weight.shape[0],
                 "optimizer_dtensors": all(isinstance(p, DTensor) for g in optimizer.param_groups
                                           for p in g["params"])}
        losses = _run(jepa, optimizer, cfg, _rank_batches(cfg, rank))
        save_checkpoint(f"{tmp}/ckpt", jepa, optimizer, TrainState(step=STEPS, samples_seen=16, mask_step=4),
                        {"config": {"model": to_dict(cfg.model)}})
        if rank == 0:
            Path(tmp, "result.json").write_text(json.dumps({"losses": losses, **facts}))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("fsdp")
    mp.spawn(_worker, args=(str(tmp),), nprocs=WORLD, join=True)
    return tmp


def _reference() -> tuple[JEPA, list[float]]:
    """One process, no sharding, the same 4 micro-batches per step (rank 0's two, then rank 1's two)."""
    cfg = small_config("trainer.activation_checkpointing=true")
    jepa, optimizer = _setup(cfg, mesh=None)
    per_rank = [_rank_batches(cfg, r) for r in range(WORLD)]
    steps = [[b for r in range(WORLD) for b in per_rank[r][s]] for s in range(STEPS)]
    return jepa, _run(jepa, optimizer, cfg, steps)


def test_fully_shard_per_block_and_root(sharded_run):
    facts = json.loads((sharded_run / "result.json").read_text())
    assert facts["block_sharded"] and facts["root_sharded"] and facts["predictor_sharded"]
    assert facts["dtensor_shard0"] and facts["optimizer_dtensors"]
    assert facts["local_rows"] * WORLD == facts["full_rows"]


def test_two_ranks_match_one_process(sharded_run):
    facts = json.loads((sharded_run / "result.json").read_text())
    reference, ref_losses = _reference()
    assert facts["losses"] == pytest.approx(ref_losses, abs=1e-5)
    assert ref_losses[1] != ref_losses[0]  # the step changed the weights
    saved = read_model_state(sharded_run / "ckpt")  # 2 ranks' shards, read back whole in one process
    ref_sd = reference.state_dict()
    assert set(saved) == set(ref_sd), "checkpoint names must not carry wrapper prefixes"
    for key, value in ref_sd.items():
        torch.testing.assert_close(saved[key], value, atol=1e-5, rtol=1e-4, msg=key)


def test_checkpoint_reshards_to_one_process(sharded_run):
    cfg = small_config()
    jepa, optimizer = _setup(cfg, mesh=None)
    state, record = load_checkpoint(sharded_run / "ckpt", jepa, optimizer), read_record(sharded_run / "ckpt")
    assert state == TrainState(step=STEPS, samples_seen=16, mask_step=4) and record["world_size"] == WORLD
    saved = read_model_state(sharded_run / "ckpt")
    torch.testing.assert_close(jepa.state_dict()["encoder.blocks.1.mlp.fc1.weight"],
                               saved["encoder.blocks.1.mlp.fc1.weight"])
    adam = optimizer.state[jepa.encoder.blocks[0].mlp.fc1.weight]
    assert int(adam["step"]) == STEPS and adam["exp_avg"].abs().sum() > 0
    # unused mask tokens get no gradient under FSDP2 either, hence no AdamW state and no weight decay
    saved_keys = dcp.FileSystemReader(str(sharded_run / "ckpt")).read_metadata().state_dict_metadata
    assert "optim.state.predictor.mask_tokens.0.step" in saved_keys
    assert not any(k.startswith("optim.state.predictor.mask_tokens.1.") for k in saved_keys)


def test_mixed_precision_policy_is_explicit():
    policy = mixed_precision_policy(torch.bfloat16)
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32
    assert compute_dtype("auto", CPU) == torch.float32
    assert compute_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert compute_dtype("bf16", CPU) == torch.bfloat16


def test_compile_switch_wraps_blocks_and_keeps_outputs():
    cfg = small_config("trainer.compile=true", "trainer.activation_checkpointing=false", "model.encoder.depth=1")
    torch.manual_seed(0)
    eager = build_jepa(cfg.model).encoder
    compiled = build_jepa(cfg.model).encoder
    compiled.load_state_dict(eager.state_dict())
    parallelize(compiled, compiled.blocks, cfg.trainer, mesh=None, dtype=torch.float32)
    assert all(isinstance(b, torch._dynamo.eval_frame.OptimizedModule) for b in compiled.blocks)
    clip = synthetic_batch(cfg, 0, 0)["clip"]
    with torch.no_grad():
        torch.testing.assert_close(compiled(clip), eager(clip), atol=1e-4, rtol=1e-4)
