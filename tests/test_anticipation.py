"""Action anticipation: focal loss, class-mean recall@5 over seen pairs, the clip windows, the predictor's
target tubelet, Meta's EK100 probe layout, bad annotations, and `vjepa2-ray anticipate` end to end on a
small subset of the sample world's anticipation set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from cluster.cli import main
from eval.anticipation_metrics import class_mean_recall, in_top_k
from eval.anticipation_recipe import sigmoid_focal_loss
from models.anticipation import AnticipationBank, anticipate, future_positions
from models.checkpoint import load_probe_checkpoint
from pipelines.anticipation import (
    AnticipationDataConfig,
    Vocabulary,
    clip_end_s,
    clip_frames,
    read_annotations,
    read_part,
)
from pipelines.labelled import VAL
from pipelines.manifest import ManifestError, write_manifest
from pipelines.sample_world.anticipation_set import build_anticipation_set, held_out


def test_focal_loss_matches_a_hand_computation():
    logits, label = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([0])
    terms = sigmoid_focal_loss(logits, label)
    expected = 0.0
    for c, x in enumerate(logits[0].tolist()):
        p = 1 / (1 + math.exp(-x))
        if c == 0:  # the label: alpha (1 - p)^2 (-log p)
            expected += 0.25 * (1 - p) ** 2 * -math.log(p)
        else:  # the others: (1 - alpha) p^2 (-log (1 - p))
            expected += 0.75 * p ** 2 * -math.log(1 - p)
    assert float(terms.sum()) == pytest.approx(expected, rel=1e-6)
    assert terms.shape == (1, 3)
    heads = sigmoid_focal_loss(logits.expand(4, 1, 3), label)  # a bank's [heads, B, C]
    torch.testing.assert_close(heads.sum((-1, -2)), torch.full((4,), float(terms.sum())))


def test_recall_at_5_is_a_class_mean_over_classes_present():
    scores = np.tile(np.arange(8, dtype=float)[::-1], (4, 1))  # class 0 highest ... class 7 lowest
    labels = np.array([0, 0, 6, 7])
    hits = in_top_k(scores, labels)
    assert hits.tolist() == [True, True, False, False]
    assert class_mean_recall(hits, labels) == pytest.approx((1 + 0 + 0) / 3)  # per class, not per clip (1/2)
    assert class_mean_recall(np.array([True, False, True]), np.array([2, 2, 5])) == pytest.approx((0.5 + 1) / 2)
    assert in_top_k(scores[None], labels, k=7)[0].tolist() == [True, True, True, False]


def media(n: int) -> dict[str, pa.Array]:
    """The manifest's media columns, unknown (as a builder without --probe leaves them)."""
    return {"duration_s": pa.nulls(n, pa.float64()), "fps": pa.nulls(n, pa.float64()),
            "num_frames": pa.nulls(n, pa.int64()), "bytes": pa.nulls(n, pa.int64())}


def annotated(path: Path, verbs: list[int], nouns: list[int]) -> str:
    n = len(verbs)
    table = {"uri": [f"v{i}.mp4" for i in range(n)], "label": verbs, **media(n), "verb": verbs, "noun": nouns,
             "start_s": [2.0] * n, "end_s": [3.0] * n}
    write_manifest(pa.table(table), str(path))
    return str(path)


def test_actions_are_the_pairs_seen_in_training_and_unseen_val_pairs_are_left_out(tmp_path):
    train = annotated(tmp_path / "train.parquet", [3, 3, 5, 9], [1, 2, 1, 1])
    vocab = Vocabulary.of(read_annotations(train))
    assert vocab.verbs == [3, 5, 9] and vocab.nouns == [1, 2] and vocab.actions == [(3, 1), (3, 2), (5, 1), (9, 1)]
    val = annotated(tmp_path / "val.parquet", [5, 5, 9, 3], [1, 2, 1, 2])  # (5, 2): both seen, the pair not
    rows, unseen = read_part(val, VAL, vocab)
    assert unseen == 1 and rows.rows.labels.tolist() == [2, 3, 1] and rows.rows.rows.tolist() == [0, 2, 3]
    assert rows.verb.tolist() == [1, 2, 0] and rows.noun.tolist() == [0, 0, 1]


def test_clip_windows_end_tau_before_the_anticipation_point():
    cfg = AnticipationDataConfig(frames_per_clip=4, fps=8.0)
    assert clip_end_s(10.0, 14.0, 1.0, 1.0) == 9.0  # the paper: 1 s before the action starts
    assert clip_end_s(10.0, 14.0, 1.0, 0.0) == 13.0  # Meta's validation (ap 0): 1 s before it stops
    assert clip_end_s(10.0, 14.0, 0.5, 0.25) == pytest.approx(12.5)  # a training draw: 0.25 start + 0.75 stop
    assert clip_frames(24.0, 500, 9.0, cfg).tolist() == [204, 207, 210, 213]  # step int(24 / 8) = 3, before 216
    assert clip_frames(30.0, 500, 0.2, cfg).tolist() == [0, 0, 0, 3]  # before the start: frame 0 repeated
    assert cfg.ranges(True) == ((0.25, 1.75), (0.0, 0.25)) and cfg.ranges(False) == ((1.0, 1.0), (1.0, 1.0))


def test_the_predictor_targets_the_tubelet_tau_ahead():
    tau = torch.tensor([1.0, 0.25, 1.75])
    ids = future_positions(num_ctx=16 * 4, tokens_per_tubelet=4, tau=tau, fps=8.0, tubelet_size=2)
    assert (ids[:, 0] // 4).tolist() == [20, 17, 23]  # T_ctx 16 + int(tau x 8 / 2)
    assert ids[0].tolist() == [80, 81, 82, 83]

    class Spy(torch.nn.Module):
        def forward(self, ctx, masks_x, masks_y, mask_index, grid):
            self.seen = (masks_x, masks_y, mask_index, grid)
            return torch.zeros(ctx.size(0), masks_y.size(1), ctx.size(2))

    spy = Spy()
    out = anticipate(spy, torch.ones(3, 64, 8), (16, 2, 2), tau, fps=8.0, tubelet_size=2)
    assert out.shape == (3, 68, 8) and out[:, 64:].abs().sum() == 0
    assert spy.seen[0][0].tolist() == list(range(64)) and spy.seen[2] == 1 and spy.seen[1][0, 0] == 80


def meta_ek100_head(dim: int, classes: dict[str, int], depth: int) -> dict[str, torch.Tensor]:
    """A state dict laid out as Meta's EK100 AttentiveClassifier saves it under DDP (keys written out
    from evals/action_anticipation_frozen/models.py and src/models/attentive_pooler.py)."""
    sd = {"pooler.query_tokens": torch.randn(1, 3, dim)}
    block = {"norm1": [dim], "attn.qkv": [3 * dim, dim], "attn.proj": [dim, dim], "norm2": [dim],
             "mlp.fc1": [4 * dim, dim], "mlp.fc2": [dim, 4 * dim]}
    cross = {"norm1": [dim], "xattn.q": [dim, dim], "xattn.kv": [2 * dim, dim], "norm2": [dim],
             "mlp.fc1": [4 * dim, dim], "mlp.fc2": [dim, 4 * dim]}
    layers = [(f"pooler.blocks.{i}", block) for i in range(depth - 1)] + [("pooler.cross_attention_block", cross)]
    for prefix, parts in layers:
        for name, shape in parts.items():
            sd[f"{prefix}.{name}.weight"] = torch.randn(*shape)
            sd[f"{prefix}.{name}.bias"] = torch.randn(shape[0])
    for task, count in classes.items():
        sd[f"{task}_classifier.weight"], sd[f"{task}_classifier.bias"] = torch.randn(count, dim), torch.randn(count)
    return {f"module.{k}": v for k, v in sd.items()}


def test_meta_ek100_probe_files_load_strictly(tmp_path):
    classes = {"verb": 5, "noun": 7, "action": 11}
    heads = [meta_ek100_head(32, classes, depth=2) for _ in range(2)]
    torch.save({"classifiers": heads, "epoch": 20}, tmp_path / "ek100.pt")
    bank = AnticipationBank(2, 32, 4, classes, depth=2)
    assert load_probe_checkpoint(tmp_path / "ek100.pt", list(bank.classifiers))["epoch"] == 20
    loaded = bank.classifiers[1].action_classifier.weight
    torch.testing.assert_close(loaded, heads[1]["module.action_classifier.weight"])
    out = bank(torch.randn(3, 9, 32))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"verb": (2, 3, 5), "noun": (2, 3, 7), "action": (2, 3, 11)}
    heads[0].pop("module.noun_classifier.bias")
    torch.save({"classifiers": heads}, tmp_path / "short.pt")
    with pytest.raises(Exception, match="noun_classifier.bias"):
        load_probe_checkpoint(tmp_path / "short.pt", list(AnticipationBank(2, 32, 4, classes, depth=2).classifiers))


def test_bad_annotations_are_one_error_naming_the_file_and_column(tmp_path):
    rows = {"uri": ["a.mp4"], "label": [0], **media(1), "verb": [1], "start_s": [1.0], "end_s": [2.0]}
    write_manifest(pa.table(rows), str(tmp_path / "no_noun.parquet"))
    with pytest.raises(ManifestError, match=r"no_noun.parquet: missing column\(s\) \['noun'\]"):
        read_annotations(str(tmp_path / "no_noun.parquet"))
    bad = annotated(tmp_path / "bad.parquet", [0, 1, 7], [0, 0, 0])
    with pytest.raises(ManifestError, match=r"bad.parquet: column 'verb': 1 row\(s\) outside the verb map"):
        read_annotations(bad, {"verb": ["take", "put"]})
    negative = annotated(tmp_path / "negative.parquet", [0, -1], [0, 0])
    with pytest.raises(ManifestError, match="negative.parquet: column 'verb'.*not a class id"):
        read_annotations(negative)


# ---- the stage end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anticipation_set(tmp_path_factory) -> Path:
    """One video of every training pair (30) and of every pair in validation (36, 6 of them unseen)."""
    world = tmp_path_factory.mktemp("anticipation_world")
    summary = build_anticipation_set(world, seed=0, per_pair={"train": 1, "val": 1})
    assert summary["train"] == 30 and summary["val"] == 36
    return Path(summary["dir"])


def test_the_sample_set_holds_out_pairs_and_its_actions_start_after_the_context(anticipation_set):
    import pyarrow.parquet as pq

    train, val = (pq.read_table(anticipation_set / f"{s}.parquet").to_pydict() for s in ("train", "val"))
    assert not any(held_out(v, n) for v, n in zip(train["verb"], train["noun"]))
    assert sum(held_out(v, n) for v, n in zip(val["verb"], val["noun"])) == 6
    assert min(val["start_s"]) >= 3.0 and all(e - s == 1.0 for s, e in zip(val["start_s"], val["end_s"]))
    assert json.loads((anticipation_set / "verbs.json").read_text())[4] == "turns_back"


def test_anticipate_runs_end_to_end_and_writes_a_meta_layout_probe(anticipation_set, tmp_path, ray_session, capsys):
    args = ["anticipate", "--config", "eval/tiny-anticipation", f"data.train={anticipation_set / 'train.parquet'}",
            f"data.val={anticipation_set / 'val.parquet'}", f"run.output_dir={tmp_path / 'run'}",
            "tracking.enabled=false", "optim.epochs=1", "optim.global_batch=15", "trainer.num_workers=0",
            "trainer.batch_size_per_worker=15", "data.select_fraction=0", "data.frames_per_clip=4",
            "data.crop_size=32", "probe.grid.lrs=[3.0e-3]", "probe.grid.wds=[1.0e-2]", "data.num_decode_workers=1",
            "data.decode_batch_size=12"]
    assert main(args) == 0
    export = Path(capsys.readouterr().out.strip().splitlines()[-1])
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["val_clips"] == 30 and result["val_unseen"] == 6 and result["classes"] == {
        "verb": 6, "noun": 6, "action": 30}
    assert 0 <= result["val_action_recall5"] <= 1 and len(result["val_action_hits"]) == 30
    assert [c["name"] for c in result["per_class"]["verb"]][:2] == ["exits_left", "exits_right"]
    stored = torch.load(export, weights_only=True)
    keys = set(stored["classifiers"][0])
    assert {"module.pooler.query_tokens", "module.verb_classifier.weight", "module.noun_classifier.weight",
            "module.action_classifier.weight"} <= keys
    assert stored["classifiers"][0]["module.pooler.query_tokens"].shape[1] == 3
    assert stored["vjepa2_ray_anticipation"]["actions"][0] == [0, 0]
    bank = AnticipationBank(1, 192, 4, result["classes"], depth=1)
    load_probe_checkpoint(export, list(bank.classifiers))  # strict


def test_bad_input_is_exit_2_naming_the_field(anticipation_set, tmp_path, capsys):
    args = ["anticipate", "--config", "eval/tiny-anticipation", "--dry-run",
            f"data.train={anticipation_set / 'train.parquet'}", f"data.val={anticipation_set / 'val.parquet'}",
            f"run.output_dir={tmp_path}"]
    assert main([*args, "data.val_anticipation_point=[0.5,0.2]"]) == 2
    assert "data.val_anticipation_point" in capsys.readouterr().err
    assert main([*args, "encoder.kind=pixels"]) == 2
    assert "predictor.enabled" in capsys.readouterr().err


def test_the_ek100_builder_writes_verb_noun_and_bounds(tmp_path):
    from pipelines.builders import ek100_anticipation

    header = "participant_id,video_id,start_timestamp,stop_timestamp,verb_class,noun_class\n"
    (tmp_path / "train.csv").write_text(header + "P01,P01_01,00:00:00.14,00:00:03.37,3,114\n")
    table = ek100_anticipation(str(tmp_path / "train.csv"), "/data/EK")
    assert table.select(["verb", "noun", "start_s", "end_s"]).to_pylist() == [
        {"verb": 3, "noun": 114, "start_s": 0.14, "end_s": 3.37}]
    (tmp_path / "bad.csv").write_text(header.replace("noun_class", "noun") + "P01,P01_01,00:00:00.14,00:00:03.37,3,x\n")
    with pytest.raises(ManifestError, match=r"bad.csv: missing column\(s\) \['noun_class'\]"):
        ek100_anticipation(str(tmp_path / "bad.csv"), "/data/EK")
