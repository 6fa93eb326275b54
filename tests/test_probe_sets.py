"""The sample world's labelled probe sets (pipelines/sample_world/probe_sets.py): classes, splits, label
maps and manifests the data pipeline reads, and the property the motion set rests on: at the middle
frame every class looks the same, so only motion tells them apart."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from eval.labels import check_labels, load_label_map
from pipelines.manifest import read_manifest
from pipelines.sample_world.probe_sets import (
    APPEARANCE_CLASSES,
    FRAMES,
    MIDDLE,
    MOTION_CLASSES,
    PER_CLASS,
    build_probe_sets,
    clip_frames,
    motion_path,
    plan_set,
)


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory) -> tuple[Path, dict]:
    world = tmp_path_factory.mktemp("probe_world")
    return world, build_probe_sets(world, seed=0, per_class={"train": 2, "val": 1})


def frames_of(uri: str) -> np.ndarray:
    with av.open(uri) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_full_sets_are_large_enough_for_a_tight_interval():
    for set_name, classes in (("motion", MOTION_CLASSES), ("appearance", APPEARANCE_CLASSES)):
        val = plan_set(set_name, "val", 0)
        assert len(val) == len(classes) * PER_CLASS[set_name]["val"] >= 270
        assert 1.96 * (0.25 / len(val)) ** 0.5 <= 0.06  # the 95 % half-width at 50 % accuracy
        assert Counter(p.label for p in val) == {k: PER_CLASS[set_name]["val"] for k in range(len(classes))}
    assert {p.motion for p in plan_set("appearance", "train", 0)} == set(MOTION_CLASSES)  # motion is noise there
    assert {p.obj for p in plan_set("motion", "train", 0)} == set(APPEARANCE_CLASSES)  # appearance is noise here
    train_seeds = {p.seed for p in plan_set("motion", "train", 0)}
    assert not train_seeds & {p.seed for p in plan_set("motion", "val", 0)}


def test_manifests_label_maps_and_clips(small_sets):
    world, summary = small_sets
    assert summary["motion"] == {"dir": str(world / "probes" / "motion"), "classes": 10, "train": 20, "val": 10}
    for set_name, classes in (("motion", MOTION_CLASSES), ("appearance", APPEARANCE_CLASSES)):
        root = world / "probes" / set_name
        assert json.loads((root / "labels.json").read_text()) == list(classes)
        names = load_label_map(str(root / "labels.json"))
        assert check_labels(str(root / "train.parquet"), names, "labels.json", True) == dict.fromkeys(
            range(len(classes)), 2)
        for split, per_class in (("train", 2), ("val", 1)):
            for name in (f"{split}.parquet", f"{split}.csv"):
                table = read_manifest(str(root / name))
                assert sorted(table["label"].to_pylist()) == sorted(list(range(len(classes))) * per_class)
            uri = table["uri"][0].as_py()
            assert frames_of(uri).shape == (FRAMES, 128, 128, 3)
            assert f"/clips/{split}/{classes[table['label'][0].as_py()]}/" in uri


def test_every_motion_class_has_the_same_middle_frame():
    rng_seed = 7
    paths = {m: motion_path(m, FRAMES, np.random.default_rng(rng_seed)) for m in MOTION_CLASSES}
    assert all(np.allclose(p[MIDDLE], paths["moves_right"][MIDDLE]) for p in paths.values())
    assert all(not np.allclose(p[0], p[-1]) for p in paths.values())  # and every one of them moves
    # One seed, every class: the same object, background and middle-frame pose, pixel for pixel; the clips
    # differ away from it.
    base = plan_set("motion", "val", 0)[0]
    clips = {m: clip_frames(replace(base, motion=m)) for m in MOTION_CLASSES}
    for frames in clips.values():
        assert np.array_equal(frames[MIDDLE], clips["moves_right"][MIDDLE])
        assert np.abs(frames[0].astype(int) - frames[-1]).mean() > 2.0
    assert not np.array_equal(clips["moves_left"][0], clips["moves_right"][0])
