"""S3 for real: manifests and media read from a moto S3 server on 127.0.0.1, rejects written to it.

Exercises multipart upload (a > 5 MiB video), ranged GETs (Parquet row groups, read_at), listing
(rejects parts), missing objects (quarantined), Meta CSV and Parquet manifests, validate-data, and one
Ray pass whose decode actors reach the endpoint through ``data.worker_env`` (and their keys through a
credentials file, as nodes do).
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures_media import media_dir_fixture, render_video  # noqa: F401  (pytest fixture)
from fixtures_s3 import BUCKET, S3_ENV, s3_server_fixture  # noqa: F401  (pytest fixture)

from cluster.cli import main as cli_main
from core import storage
from pipelines.clips import ClipRequest, make_clip
from pipelines.config import ClipConfig, DataConfig, SourceConfig
from pipelines.dataset import build_train_dataset, iter_local_batches
from pipelines.manifest import write_manifest
from pipelines.quarantine import read_rejects
from pipelines.sources import ManifestRows

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def bucket(s3_server, media_dir, tmp_path_factory):
    """Videos, an image and manifests in the bucket; the big video is uploaded in 5 MiB parts."""
    import boto3
    from boto3.s3.transfer import TransferConfig

    client = boto3.client("s3", endpoint_url=s3_server)
    local = tmp_path_factory.mktemp("s3src")
    big = render_video(local / "big.mp4", frames=48, width=320, height=256, fps=24, gop=8,
                       options={"crf": "0", "preset": "ultrafast"}, noise=True)
    assert big.stat().st_size > 5 * MIB
    multipart = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    client.upload_file(str(big), BUCKET, "media/big.mp4", Config=multipart)
    assert client.head_object(Bucket=BUCKET, Key="media/big.mp4")["ETag"].strip('"').endswith("-2")
    for name in ("h264.mp4", "vp9.webm", "img_rgb.jpg"):
        client.upload_file(str(media_dir / name), BUCKET, f"media/{name}")
    uris = [f"s3://{BUCKET}/media/{n}" for n in ("big.mp4", "h264.mp4", "vp9.webm", "img_rgb.jpg")]
    uris.append(f"s3://{BUCKET}/media/gone.mp4")  # listed, never uploaded
    n = len(uris)
    table = pa.table({"uri": uris, "label": list(range(n)), "duration_s": [None] * n, "fps": [None] * n,
                      "num_frames": [None] * n, "bytes": [None] * n})
    fs, _ = storage.filesystem_for(f"s3://{BUCKET}/x")
    with fs.open_output_stream(f"{BUCKET}/manifests/videos.parquet") as out:
        pq.write_table(table, out, row_group_size=2)  # 3 row groups: index reads are ranged GETs
    write_manifest(table.slice(1, 2), f"s3://{BUCKET}/manifests/meta.csv")
    return {"local_big": big, "uris": uris}


def test_ranged_reads_of_manifest_row_groups_and_objects(bucket):
    rows = ManifestRows(f"s3://{BUCKET}/manifests/videos.parquet")
    assert rows.group_rows.tolist() == [2, 2, 1]
    assert rows.read_group(1, ["uri", "start_s"]).column("uri").to_pylist() == bucket["uris"][2:4]
    fs, path = storage.filesystem_for(bucket["uris"][0])
    with fs.open_input_file(path) as f:
        assert f.read_at(1000, 3 * MIB) == bucket["local_big"].read_bytes()[3 * MIB:3 * MIB + 1000]


def test_local_iterator_reads_s3_and_quarantines_the_missing_object(bucket):
    cfg = DataConfig(sources={"vid": SourceConfig(f"s3://{BUCKET}/manifests/videos.parquet", 0.8),
                              "csv": SourceConfig(f"s3://{BUCKET}/manifests/meta.csv", 0.2)},
                     clip=ClipConfig(frames_per_clip=4, crop_size=32), seed=2)
    rejects = f"s3://{BUCKET}/runs/rejects"
    batches = list(iter_local_batches(cfg, 8, samples=32, rejects_dir=rejects))
    got = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    assert got["sample_id"].tolist() == list(range(32))
    table = read_rejects(rejects)
    assert table.num_rows == int(got["redraws"].sum()) > 0
    assert set(table.column("reason").to_pylist()) == {"missing"}
    assert set(table.column("uri").to_pylist()) == {bucket["uris"][-1]}
    request = ClipRequest(bucket["uris"][0], window_seed=99)
    from_s3 = make_clip(request, cfg)
    assert np.array_equal(from_s3, make_clip(ClipRequest(str(bucket["local_big"]), 99), cfg))


def test_validate_data_on_s3(bucket, capsys):
    out = f"s3://{BUCKET}/checks/rejects.parquet"
    rc = cli_main(["validate-data", "--manifest", f"s3://{BUCKET}/manifests/videos.parquet", "--rejects", out,
                   "--frames", "4"])
    assert rc == 0
    assert "5 rows, 4 good, 1 bad" in capsys.readouterr().out
    assert read_rejects(out).column("stage").to_pylist() == ["fetch"]


def test_ray_decode_actors_read_s3(bucket, ray_session, s3_server, tmp_path):
    """The actors reach the endpoint through ``data.worker_env`` and find their (test) keys as a node
    would, in a credentials file: keys themselves are refused in ``data.worker_env``."""
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\n" + "".join(f"{k.lower()} = {v}\n" for k, v in S3_ENV.items()
                                                   if k.startswith("AWS_") and k.endswith(("_ID", "_KEY"))))
    env = {"AWS_ENDPOINT_URL_S3": os.environ["AWS_ENDPOINT_URL_S3"], "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_SHARED_CREDENTIALS_FILE": str(credentials), "AWS_EC2_METADATA_DISABLED": "true"}
    cfg = DataConfig(sources={"vid": SourceConfig(f"s3://{BUCKET}/manifests/videos.parquet", 1.0)},
                     clip=ClipConfig(frames_per_clip=4, crop_size=32), seed=4, worker_env=env)
    rejects = f"s3://{BUCKET}/ray/rejects"
    rows = build_train_dataset(cfg, epoch=0, samples=12, rejects_dir=rejects).take_all()
    assert sorted(r["sample_id"] for r in rows) == list(range(12))
    expected = iter_local_batches(cfg, 12, samples=12)
    assert np.array_equal(np.stack([r["clip"] for r in sorted(rows, key=lambda r: r["sample_id"])]),
                          next(expected)["clip"])
    assert read_rejects(rejects).num_rows == sum(r["redraws"] for r in rows)
