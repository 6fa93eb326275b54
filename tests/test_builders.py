"""Manifest builders from the public datasets' own index files into the project schema."""

from __future__ import annotations

import json

import pytest
from fixtures_media import render_video, write_image

from core.entry import module_main
from pipelines import builders
from pipelines.manifest import ManifestError, read_manifest


def test_ssv2_labels_come_from_templates(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps({"Moving something up": "0", "Pushing something left": "1"}))
    (tmp_path / "train.json").write_text(json.dumps([
        {"id": "12", "label": "moving cup up", "template": "Moving [something] up", "placeholders": ["cup"]},
        {"id": "7", "label": "pushing pen left", "template": "Pushing [something] left", "placeholders": ["pen"]},
    ]))
    (tmp_path / "test.json").write_text(json.dumps([{"id": "99"}]))
    table = builders.ssv2(str(tmp_path / "train.json"), str(tmp_path / "labels.json"), "/data/ssv2")
    assert table.column("uri").to_pylist() == ["/data/ssv2/12.webm", "/data/ssv2/7.webm"]
    assert table.column("label").to_pylist() == [0, 1]
    test = builders.ssv2(str(tmp_path / "test.json"), str(tmp_path / "labels.json"), "/d")
    assert test.column("label").to_pylist() == [-1]
    (tmp_path / "odd.json").write_text(json.dumps([{"id": "1", "template": "Juggling [something]"}]))
    with pytest.raises(ManifestError, match="entry 0 .id 1.: template 'Juggling something' not in"):
        builders.ssv2(str(tmp_path / "odd.json"), str(tmp_path / "labels.json"), "/d")


def test_kinetics_csv_layouts_and_class_ids(tmp_path):
    (tmp_path / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "riding a bike,abc,10,20,train\n"
        "archery,xyz,0,10,train\n"
        "riding a bike,q-1,5,15,train\n")
    flat = builders.kinetics(str(tmp_path / "train.csv"), "s3://bucket/k400/train")
    assert flat.column("uri").to_pylist()[0] == "s3://bucket/k400/train/abc_000010_000020.mp4"
    assert flat.column("label").to_pylist() == [1, 0, 1]  # sorted class names: archery=0
    by_label = builders.kinetics(str(tmp_path / "train.csv"), "/k", layout="by_label",
                                 classes=["riding a bike", "archery"])
    assert by_label.column("uri").to_pylist()[1] == "/k/archery/xyz_000000_000010.mp4"
    assert by_label.column("label").to_pylist() == [0, 1, 0]
    (tmp_path / "bad.csv").write_text("label,youtube_id,time_start,time_end\nx,abc,ten,20\n")
    with pytest.raises(ManifestError, match="bad.csv: line 2: bad time_start"):
        builders.kinetics(str(tmp_path / "bad.csv"), "/k")
    (tmp_path / "cols.csv").write_text("label,id\nx,1\n")
    with pytest.raises(ManifestError, match="missing column"):
        builders.kinetics(str(tmp_path / "cols.csv"), "/k")


def test_howto100m_and_epickitchens(tmp_path):
    (tmp_path / "howto.csv").write_text("video_id,category_1,category_2,rank,task_id\n"
                                        "nVbIUDjzWY4,Cars,Wheels,27,52907\nCTPAZ2euJ2Q,Food,Bread,3,109972\n")
    howto = builders.howto100m(str(tmp_path / "howto.csv"), "/h", ext="webm")
    assert howto.column("uri").to_pylist() == ["/h/nVbIUDjzWY4.webm", "/h/CTPAZ2euJ2Q.webm"]
    assert howto.column("label").to_pylist() == [52907, 109972]
    header = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
              "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")
    (tmp_path / "epic.csv").write_text(
        header
        + "P01_01_0,P01,P01_01,00:00:01.089,00:00:00.14,00:00:03.37,8,202,open door,open,3,door,3,\"['door']\",[3]\n"
        + "P01_01_1,P01,P01_01,00:00:02.629,00:01:02.60,00:01:05.10,156,306,turn on light,turn-on,6,light,114,"
        + "\"['light']\",[114]\n")
    epic = builders.epickitchens(str(tmp_path / "epic.csv"), "/ek", label="noun")
    assert epic.column("uri").to_pylist()[0] == "/ek/P01/videos/P01_01.MP4"
    assert epic.column("label").to_pylist() == [3, 114]
    assert epic.column("start_s").to_pylist() == pytest.approx([0.14, 62.6])
    assert epic.column("end_s").to_pylist() == pytest.approx([3.37, 65.1])
    (tmp_path / "epic_bad.csv").write_text(header + "a,P01,P01_01,x,00:00:00.14,3.37,8,202,n,v,3,n,3,[],[]\n")
    with pytest.raises(ManifestError, match="line 2: timestamp '3.37' is not HH:MM:SS.ff"):
        builders.epickitchens(str(tmp_path / "epic_bad.csv"), "/ek")


def test_imagenet_folders_and_probe_through_the_cli(tmp_path, capsys):
    for wnid, mode in (("n02", "RGB"), ("n01", "CMYK"), ("n01", "L")):
        write_image(tmp_path / "train" / wnid / f"{wnid}_{mode}.JPEG", mode=mode)
    (tmp_path / "train" / "n01" / "notes.txt").write_text("not an image")
    out = tmp_path / "imagenet.parquet"
    assert module_main("pipelines.builders", ["imagenet", "--root", str(tmp_path / "train"), "--out", str(out)]) == 0
    table = read_manifest(str(out))
    assert [u.rsplit("/", 2)[-2] for u in table.column("uri").to_pylist()] == ["n01", "n01", "n02"]
    assert table.column("label").to_pylist() == [0, 0, 1] and set(table.column("num_frames").to_pylist()) == {1}

    render_video(tmp_path / "videos" / "a.mp4", frames=30, fps=15)
    (tmp_path / "howto.csv").write_text("video_id,task_id\na,1\nmissing,2\n")
    out = tmp_path / "howto.parquet"
    assert module_main("pipelines.builders", ["howto100m", "--index", str(tmp_path / "howto.csv"), "--root",
                                              str(tmp_path / "videos"), "--out", str(out), "--probe"]) == 0
    assert "2 rows" in capsys.readouterr().out
    table = read_manifest(str(out))
    assert table.column("num_frames").to_pylist() == [30, None]
    assert table.column("fps").to_pylist() == [15.0, None] and table.column("duration_s")[0].as_py() == 2.0
    assert module_main("pipelines.builders", ["kinetics", "--root", "/k", "--out", str(out)]) == 2


def test_diving48_jester_and_coin_with_label_maps(tmp_path, capsys):
    vocab = [["Back", "15som", "NoTwis", "PIKE"], ["Forward", "25som", "1Twis", "FREE"]]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "d48.json").write_text(json.dumps([{"vid_name": "_8Vy3dlHg2w_00000", "label": 1, "start_frame": 0,
                                                     "end_frame": 51}, {"vid_name": "b", "label": 0}]))
    table = builders.diving48(str(tmp_path / "d48.json"), "/d48", str(tmp_path / "vocab.json"))
    assert table.column("uri").to_pylist() == ["/d48/_8Vy3dlHg2w_00000.mp4", "/d48/b.mp4"]
    assert table.column("label").to_pylist() == [1, 0]
    assert builders.label_names(table) == ["Back_15som_NoTwis_PIKE", "Forward_25som_1Twis_FREE"]
    (tmp_path / "bad48.json").write_text(json.dumps([{"vid_name": "c", "label": 5}]))
    with pytest.raises(ManifestError, match=r"bad48.json: entry 0: label 5 not in .*vocab.json \(2 classes\)"):
        builders.diving48(str(tmp_path / "bad48.json"), "/d48", str(tmp_path / "vocab.json"))

    (tmp_path / "jester-labels.csv").write_text("Swiping Left\nSwiping Right\nNo gesture\n")
    (tmp_path / "jester-train.csv").write_text("34870;Swiping Right\n56557;No gesture\n")
    (tmp_path / "jester-test.csv").write_text("1\n2\n")
    table = builders.jester(str(tmp_path / "jester-train.csv"), str(tmp_path / "jester-labels.csv"), "/j")
    assert table.column("uri").to_pylist() == ["/j/34870.mp4", "/j/56557.mp4"]
    assert table.column("label").to_pylist() == [1, 2]
    test = builders.jester(str(tmp_path / "jester-test.csv"), str(tmp_path / "jester-labels.csv"), "/j", "webm")
    assert test.column("label").to_pylist() == [-1, -1] and test.column("uri")[0].as_py() == "/j/1.webm"
    (tmp_path / "jester-odd.csv").write_text("9;Waving\n")
    with pytest.raises(ManifestError, match=r"jester-odd.csv: line 1: class 'Waving' not in"):
        builders.jester(str(tmp_path / "jester-odd.csv"), str(tmp_path / "jester-labels.csv"), "/j")

    coin_db = {"database": {
        "vid2": {"recipe_type": 1, "class": "ReplaceBatteryOnKey", "subset": "training", "annotation": []},
        "vid1": {"recipe_type": 0, "class": "AssembleBed", "subset": "testing", "annotation": []},
        "vid3": {"recipe_type": 0, "class": "AssembleBed", "subset": "training", "annotation": []}}}
    (tmp_path / "COIN.json").write_text(json.dumps(coin_db))
    out, labels_out = tmp_path / "coin.parquet", tmp_path / "coin-labels.json"
    assert module_main("pipelines.builders", ["coin", "--index", str(tmp_path / "COIN.json"), "--root", "/c",
                                              "--out", str(out), "--labels-out", str(labels_out)]) == 0
    table = read_manifest(str(out))
    assert table.column("uri").to_pylist() == ["/c/vid2.mp4", "/c/vid3.mp4"]
    assert table.column("label").to_pylist() == [1, 0]
    assert json.loads(labels_out.read_text()) == ["AssembleBed", "ReplaceBatteryOnKey"]
    assert module_main("pipelines.builders", ["coin", "--index", str(tmp_path / "COIN.json"), "--root", "/c",
                                              "--subset", "validation", "--out", str(out)]) == 2
    assert "no video in subset 'validation'" in capsys.readouterr().err
    (tmp_path / "howto.csv").write_text("video_id,task_id\na,1\n")
    assert module_main("pipelines.builders", ["howto100m", "--index", str(tmp_path / "howto.csv"), "--root",
                                              "/h", "--out", str(out), "--labels-out", str(labels_out)]) == 2
    assert "howto100m: the index names no classes" in capsys.readouterr().err
