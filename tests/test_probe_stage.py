"""The probe stage: labelled splits and the epoch stream, multi-clip cutting, head choice and scores, Meta
probe files, bad input, and `vjepa2-ray probe` end to end on a small labelled set (the generic loop in local
mode, fed by Ray Data): the clip feature cache gives the run the uncached run gives, the export is Meta's
probe layout and evaluates to the same numbers, and `vjepa2-ray classify` names the top-5 classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.cli import main
from configs import preset_path
from core.config import load_config
from eval.probe import evaluate, probe
from eval.probe_config import ProbeConfig
from eval.probe_metrics import Predictions, choose_head, correct, score
from models.checkpoint import CheckpointError, load_probe_checkpoint, probe_file_shape, save_probe_checkpoint
from models.probe import ProbeBank
from pipelines.labelled import (
    FIT,
    SELECT,
    VAL,
    LabelledDataConfig,
    LabelledRows,
    epoch_requests,
    segment_windows,
    split_select,
    view_boxes,
)
from pipelines.sample_world.probe_sets import MIDDLE


def rows(labels: list[int], part: int = FIT) -> LabelledRows:
    return LabelledRows(part, [f"clip{i}.mp4" for i in range(len(labels))], np.asarray(labels, np.int64),
                        np.arange(len(labels), dtype=np.int64))


def test_select_split_is_stratified_disjoint_and_seeded():
    train = rows([0] * 10 + [1] * 5 + [2] * 2)
    fit, select = split_select(train, 0.2, seed=3)
    assert sorted(select.labels.tolist()) == [0, 0, 1, 2]  # round(0.2 n) per class, at least one
    assert set(fit.rows) | set(select.rows) == set(range(17)) and not set(fit.rows) & set(select.rows)
    assert select.part == SELECT and fit.part == FIT
    again, _ = split_select(train, 0.2, seed=3)
    other, _ = split_select(train, 0.2, seed=4)
    assert again.rows.tolist() == fit.rows.tolist() and other.rows.tolist() != fit.rows.tolist()


def test_epoch_stream_permutes_each_epoch_and_resumes_exactly():
    fit = rows(list(range(7)))
    whole = epoch_requests(fit, seed=1, start=0, stop=21)
    positions = whole.column("position").to_numpy()
    for epoch in range(3):
        assert sorted(positions[7 * epoch:7 * epoch + 7]) == list(range(7))
    assert positions[:7].tolist() != positions[7:14].tolist()
    resumed = epoch_requests(fit, seed=1, start=10, stop=21)
    assert resumed.to_pylist() == whole.slice(10).to_pylist()


def test_segments_views_and_the_middle_frame():
    cfg = LabelledDataConfig(frames_per_clip=1, frame_step=1)
    assert segment_windows(16, cfg, None).tolist() == [[MIDDLE]]
    two = LabelledDataConfig(frames_per_clip=4, frame_step=2, num_segments=2)
    centred = segment_windows(40, two, None)
    assert centred.tolist() == [[6, 8, 10, 12], [26, 28, 30, 32]]  # centred in [0, 20) and [20, 40)
    drawn = segment_windows(40, two, np.random.default_rng(0))
    assert drawn.shape == (2, 4) and drawn[0].max() < 20 <= drawn[1].min()
    left, centre, right = view_boxes(100, 160, 3)
    assert (left.left, centre.left, right.left) == (0, 30, 60) and left.height == left.width == 100
    assert view_boxes(160, 100, 1)[0].top == 30


def predictions(select_right: list[list[bool]], val_right: list[list[bool]]) -> Predictions:
    """Heads' correctness on select and val clips (label 0; a wrong head says 1)."""
    right = np.asarray(select_right + val_right)
    n, heads = right.shape
    part = np.asarray([SELECT] * len(select_right) + [VAL] * len(val_right))
    return Predictions(np.arange(n)[::-1].copy(), part, np.zeros(n, np.int64), np.where(right, 0, 1),
                       right, np.where(right, 0.1, 2.0) + np.arange(heads) * 0.01)


def test_the_head_is_chosen_on_select_and_reported_on_val():
    # head 1 is best on select, head 0 best on val: the result is head 1's val number, Meta's max beside it
    pred = predictions([[False, True], [True, True]], [[True, False], [True, True]])
    metrics = score(pred, num_classes=2)
    assert metrics["best_head"] == 1 and metrics["select_top1"] == 1.0
    assert metrics["val_top1"] == 0.5 and metrics["val_top1_max"] == 1.0
    assert metrics["head_00/val_top1"] == 1.0 and metrics["val_clips"] == 2
    tie = predictions([[True, True]], [[True, True]])
    assert choose_head(tie) == 0  # equal top-1: the lower cross-entropy
    assert choose_head(predictions([], [[True, False]]), default=1) == 1  # no select rows: the given head
    assert correct(pred, 1).tolist() == [1, 0, 1, 1]  # in sample order (the stream's ids were reversed)


def test_meta_probe_files_round_trip_and_their_shape_is_read_off_the_tensors(tmp_path):
    bank = ProbeBank(3, 32, 4, 7, depth=2)
    save_probe_checkpoint(tmp_path / "p.pt", list(bank.classifiers), {"epoch": 5})
    stored = torch.load(tmp_path / "p.pt", weights_only=True)
    assert all(k.startswith("module.") for k in stored["classifiers"][0])
    assert probe_file_shape(stored, 4, "p.pt") == {"heads": 3, "depth": 2, "num_heads": 4, "dim": 32, "classes": 7}
    again = ProbeBank(3, 32, 4, 7, depth=2)
    assert load_probe_checkpoint(tmp_path / "p.pt", list(again.classifiers))["epoch"] == 5
    tokens = torch.randn(2, 9, 32)
    torch.testing.assert_close(again(tokens), bank(tokens), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="p.pt.*holds 3 heads"):
        load_probe_checkpoint(tmp_path / "p.pt", list(ProbeBank(2, 32, 4, 7, depth=2).classifiers))


# ---- the stage end to end -------------------------------------------------------------------------------


def small_config(motion: Path, out: Path, *overrides: str) -> ProbeConfig:
    base = [f"data.train={motion / 'train.parquet'}", f"data.val={motion / 'val.parquet'}",
            f"run.output_dir={out}", "optim.epochs=2", "optim.global_batch=8", "trainer.num_workers=0",
            "trainer.batch_size_per_worker=8", "trainer.log_every=2", "data.num_decode_workers=1",
            "cache.dtype=float32", "probe.grid.lrs=[3.0e-3,1.0e-3]", "data.frames_per_clip=4", "data.frame_step=4",
            "data.crop_size=64"]
    return load_config(ProbeConfig, preset_path("eval", "tiny-motion"), [*base, *overrides])


@pytest.fixture(scope="module")
def cached_run(motion_set, tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("probe_cached")
    return out, probe(small_config(motion_set, out / "run", f"cache.dir={out / 'cache'}", "tracking.enabled=false"))


def test_cached_tokens_train_the_same_probes_as_encoding_on_the_fly(cached_run, motion_set, tmp_path, ray_session):
    out, cached = cached_run
    fresh = probe(small_config(motion_set, tmp_path / "run", "cache.enabled=false", "tracking.enabled=false"))
    a, b = cached.worker["result"], fresh.worker["result"]
    assert a["val_clips"] == b["val_clips"] == 20 and a["select_clips"] == 10  # one per class of 4 train clips
    assert a["val_correct"] == b["val_correct"] and a["best_head"] == b["best_head"]
    np.testing.assert_allclose(list(cached.worker["losses"].values()), list(fresh.worker["losses"].values()),
                               rtol=1e-4)
    left, right = (torch.load(r.export_path, weights_only=True)["classifiers"] for r in (cached, fresh))
    for head_a, head_b in zip(left, right, strict=True):
        for key in head_a:
            torch.testing.assert_close(head_a[key], head_b[key], rtol=1e-3, atol=1e-5)
    assert json.loads((out / "cache" / "cache.json").read_text())["positions"]["fit"]  # fit came from the cache


def test_the_run_leaves_a_probe_file_results_and_pictures_and_evaluates_to_the_same(cached_run, motion_set):
    out, result = cached_run
    run = Path(result.output_dir)
    stored = torch.load(result.export_path, weights_only=True)
    meta = stored["vjepa2_ray_probe"]
    assert len(stored["classifiers"]) == 2 and meta["class_names"][0] == "moves_right"
    assert meta["geometry"]["frames_per_clip"] == 4 and (run / "latest.pt").exists()
    assert {"confusion.png", "heads.png"} <= {p.name for p in (run / "pictures").iterdir()}
    written = json.loads((run / "result.json").read_text())
    assert len(written["per_class"]) == 10 and (run / "per_class.csv").read_text().startswith("label,class")
    again = evaluate(small_config(motion_set, out / "eval", "eval_only=true", f"probe.checkpoint={result.export_path}",
                                  f"cache.dir={out / 'cache'}", "tracking.enabled=false"))
    assert again["best_head"] == written["best_head"] and again["val_top1"] == pytest.approx(written["val_top1"])
    assert again["val_correct"] == written["val_correct"]


def test_classify_prints_the_top5_classes_of_a_clip(cached_run, motion_set, tmp_path, capsys):
    _, result = cached_run
    encoder = tmp_path / "tiny-seed0.pt"  # the random tiny encoder the run probed (same init for seed 0)
    assert main(["init-checkpoint", "--preset", "tiny", "--seed", "0", "--out", str(encoder)]) == 0
    clip = sorted((motion_set / "clips" / "val" / "moves_left").iterdir())[0]
    capsys.readouterr()
    assert main(["classify", "--checkpoint", str(encoder), "--probe", result.export_path, "--input", str(clip)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and lines[1].startswith("1. ") and lines[5].startswith("5. ")
    probabilities = [float(line.rsplit(" ", 1)[-1].rstrip("%")) for line in lines[1:]]
    assert probabilities == sorted(probabilities, reverse=True)


@pytest.mark.parametrize("overrides, message", [
    (["data.val="], "data.val: no validation manifest"),
    (["eval_only=true"], "eval_only=true needs probe.checkpoint"),
    (["data.labels=/nowhere/labels.json"], "/nowhere/labels.json: label map not found"),
    (["data.num_views=0"], "data.num_views: must be >= 1"),
])
def test_bad_input_is_one_line_naming_the_field_or_file(motion_set, tmp_path, capsys, overrides, message):
    args = [f"data.train={motion_set / 'train.parquet'}", f"data.val={motion_set / 'val.parquet'}",
            f"run.output_dir={tmp_path}", *overrides]
    assert main(["probe", "--config", "eval/tiny-motion", "--dry-run", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_label_outside_the_map_names_the_manifest_and_rows(motion_set, tmp_path, capsys):
    (tmp_path / "labels.json").write_text(json.dumps(["moves_right", "moves_left"]))
    args = [f"data.train={motion_set / 'train.parquet'}", f"data.val={motion_set / 'val.parquet'}",
            f"data.labels={tmp_path / 'labels.json'}", f"run.output_dir={tmp_path / 'out'}"]
    assert main(["probe", "--config", "eval/tiny-motion", "--dry-run", *args]) == 2
    err = capsys.readouterr().err
    assert "train.parquet" in err and "not in" in err
