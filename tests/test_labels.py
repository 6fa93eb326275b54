"""Label maps and labelled-manifest checks (eval/labels.py) on the sample world's probe-set layout."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from eval.labels import LabelError, check_labels, load_label_map
from pipelines.manifest import write_manifest


def manifest(tmp_path, name: str, labels: list[int | None]) -> str:
    uri = str(tmp_path / name)
    n = len(labels)
    write_manifest(pa.table({"uri": [f"/v/{i}.mp4" for i in range(n)], "label": pa.array(labels, pa.int64()),
                             "duration_s": pa.nulls(n, pa.float64()), "fps": pa.nulls(n, pa.float64()),
                             "num_frames": pa.nulls(n, pa.int64()), "bytes": pa.nulls(n, pa.int64())}), uri)
    return uri


def test_a_good_split_counts_clips_per_class(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps(["up", "down", "left"]))
    names = load_label_map(str(tmp_path / "labels.json"))
    counts = check_labels(manifest(tmp_path, "train.parquet", [0, 1, 2, 2]), names, "labels.json", True)
    assert counts == {0: 1, 1: 1, 2: 2}
    assert check_labels(manifest(tmp_path, "val.parquet", [2, 2]), names, "labels.json", False) == {2: 2}


def test_bad_labels_name_the_file_and_the_rows_or_classes(tmp_path):
    names = ["up", "down", "left"]
    with pytest.raises(LabelError, match=r"train.parquet: label\(s\) \[7\] at row\(s\) \[1\] are not in labels.json "
                                         r"\(3 classes\)"):
        check_labels(manifest(tmp_path, "train.parquet", [0, 7, 1]), names, "labels.json", True)
    with pytest.raises(LabelError, match=r"test.parquet: 2 row\(s\) without a label \(first rows \[0, 2\]\)"):
        check_labels(manifest(tmp_path, "test.parquet", [-1, 0, None]), names, "labels.json", False)
    with pytest.raises(LabelError, match=r"small.parquet: 1 class\(es\) of labels.json without a clip: "
                                         r"'left' \(label 2\)"):
        check_labels(manifest(tmp_path, "small.parquet", [0, 1, 1]), names, "labels.json", True)
    assert check_labels(manifest(tmp_path, "small-val.parquet", [0, 1]), names, "labels.json", False) == {0: 1, 1: 1}


@pytest.mark.parametrize(("text", "why"), [("{}", "non-empty JSON list"), ("[\"a\", \"a\"]", "listed twice"),
                                           ("not json", "not a JSON label map"), ("[]", "non-empty JSON list")])
def test_bad_label_maps(tmp_path, text, why):
    (tmp_path / "labels.json").write_text(text)
    with pytest.raises(LabelError, match=why):
        load_label_map(str(tmp_path / "labels.json"))
    with pytest.raises(LabelError, match="label map not found"):
        load_label_map(str(tmp_path / "gone.json"))
