"""The curation pipeline end to end on the sample world: manifest, weights, quarantine, report, MLflow,
quality against the world's ground truth, resumption after SIGKILL, and S3 in/out on a real moto server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fixtures_s3 import BUCKET, s3_server_fixture  # noqa: F401

from core import storage
from core.config import load_config
from core.errors import UserError
from curation import shards
from curation.config import CurationConfig
from curation.curate import curate, resolve
from pipelines.manifest import read_manifest
from pipelines.quarantine import read_rejects

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "curate" / "tiny.yaml"
TARGETS = ("k710", "ssv2", "coin", "ek100")


def world_overrides(world: Path | str, output: str) -> list[str]:
    """tiny.yaml pointed at a sample world (local dir or s3:// prefix) and an output root."""
    base = str(world)
    out = [f"pool={base}/sources/yt1b/manifest.parquet", f"output={output}"]
    for name in TARGETS:
        out += [f"targets.{name}.train={base}/targets/{name}/train/manifest.parquet",
                f"targets.{name}.val={base}/targets/{name}/val/manifest.parquet"]
    return out


def tiny_config(world: Path | str, output: str, *extra: str) -> CurationConfig:
    return load_config(CurationConfig, TINY, [*world_overrides(world, output), *extra])


def quality(world: dict, manifest) -> dict:
    """Share of the world's on-/off-target scenes (>= min_scene_s, planted copies apart) that a manifest
    keeps (a kept row covers more than half of the scene), and the planted copies it still holds."""
    rows = list(zip(manifest["uri"].to_pylist(), manifest["start_s"].to_pylist(), manifest["end_s"].to_pylist()))
    copies = {(d["uri"], round(d["start_s"], 3)) for d in world["near_duplicates"]}
    counts = {"on": 0, "on_kept": 0, "off": 0, "off_kept": 0}
    copies_kept = []
    for video in world["yt1b"]:
        for scene in video["scenes"]:
            a, b = scene["start_s"], scene["end_s"]
            if b - a < world["min_scene_s"]:
                continue
            kept = any(u == video["uri"] and min(e, b) - max(s, a) > 0.5 * (b - a) for u, s, e in rows)
            if any(video["uri"] == u and abs(a - s) < 0.05 for u, s in copies):
                copies_kept += [video["uri"]] if kept else []
                continue
            side = "on" if scene["on_target"] else "off"
            counts[side] += 1
            counts[f"{side}_kept"] += kept
    return {"on": counts["on_kept"] / counts["on"], "off": counts["off_kept"] / counts["off"],
            "copies_kept": copies_kept, "n_on": counts["on"], "n_off": counts["off"]}


@pytest.fixture(scope="module")
def tiny_run(ray_session, sample_world, tmp_path_factory):
    """One full build of the sample world, tracked in an isolated MLflow store."""
    root = tmp_path_factory.mktemp("curate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VJEPA2_RAY_RUNS", str(root / "runs"))
        cfg = tiny_config(sample_world, str(root / "out"))
        result = curate(cfg)
    world = json.loads((sample_world / "world.json").read_text())
    return cfg, result, world, root


def test_curated_manifest_is_a_weighted_project_manifest(tiny_run):
    cfg, result, _, _ = tiny_run
    manifest = read_manifest(result.manifest)  # the VideoMix yt1b source reads it just like this
    for column in ("uri", "label", "duration_s", "fps", "num_frames", "bytes", "start_s", "end_s", "weight",
                   "cluster_id"):
        assert column in manifest.column_names
    assert manifest.num_rows == result.stats["counts"]["scenes_curated"] > 0
    clusters = pq.read_table(Path(cfg.output) / "curated" / "clusters.parquet").to_pydict()
    ids = manifest["cluster_id"].to_numpy()
    assert all(clusters["retained"][c] for c in ids)
    expected = [clusters["weight"][c] / clusters["clean_size"][c] for c in ids]
    assert np.allclose(manifest["weight"].to_numpy(), expected)  # w_c / |c|
    assert np.isclose(manifest["weight"].to_numpy().sum(), 1.0)  # Table 11 weights sum to 1
    hits = sum(np.array(clusters[f"hits_{t}"]) for t in TARGETS)
    assert np.array_equal(np.array(clusters["retained"]), (hits >= 1) & (np.array(clusters["clean_size"]) > 0))
    durations = manifest["end_s"].to_numpy() - manifest["start_s"].to_numpy()
    assert durations.min() >= cfg.scenes.min_scene_s
    assert np.all(manifest["end_s"].to_numpy() <= manifest["duration_s"].to_numpy() + 1e-6)


def test_short_and_bad_scenes_are_quarantined_with_reasons(tiny_run, sample_world):
    cfg, result, world, _ = tiny_run
    rejects = read_rejects(str(Path(cfg.output) / "quarantine" / "scenes"))
    short = [r for r in rejects.to_pylist() if r["reason"] == "scene_too_short"]
    expected = sum(1 for v in world["yt1b"] for s in v["scenes"] if s["end_s"] - s["start_s"] < world["min_scene_s"])
    assert len(short) == expected > 0
    assert {Path(r["uri"]).name for r in short} >= {"short_00.mp4", "street_0.mp4"}
    assert all(r["stage"] == "scenes" and r["source"] == "yt1b" and " s < 4.0 s" in r["detail"] for r in short)
    assert result.stats["quarantine"]["scenes/scene_too_short"] == expected
    counts = result.stats["counts"]
    assert counts["scenes"] == counts["scenes_embedded"]  # every kept scene was embedded (none undecodable)


def test_report_and_mlflow_run(tiny_run):
    from core.tracking import find_runs, local_store_uri

    cfg, result, _, root = tiny_run
    report = Path(cfg.output) / "report"
    for name in ("index.html", "cluster_sizes.png", "val_similarity.png", "contact_sheet.png", "stats.json",
                 "config.yaml"):
        assert (report / name).stat().st_size > 500, name
    html = (report / "index.html").read_text()
    assert "Table 11" in html and "Final curated" in html and "Per source" in html
    assert load_config(CurationConfig, report / "config.yaml") == resolve(cfg)  # the linked config is the resolved one
    sources = {(row["source"], row["role"]): row for row in result.stats["per_source"]}
    assert sources[("yt1b", "pool")]["curated"] == result.stats["counts"]["scenes_curated"]
    assert sources[("ek100", "target train")]["retained clusters hit"] >= 1
    stages = {row["stage"]: row["plan"] for row in result.stats["stages"]}
    assert stages["scenes"] == stages["embed"] == "run (no earlier output)"
    table = {row["target"]: row for row in result.stats["table11"]}
    assert table["Final curated"]["scenes"] == result.stats["counts"]["scenes_curated"]
    assert table["k710"]["weight"] == 0.7 and table["ek100"]["weight"] == 0.05
    runs = find_runs(local_store_uri(root / "runs"), "curate")
    assert len(runs) == 1
    assert f'href="http://127.0.0.1:5000/#/runs/{runs[0].info.run_id}"' in html
    metrics = runs[0].data.metrics
    for key in ("scenes_seconds", "embed_seconds", "kmeans_seconds", "assign_seconds", "count.scenes_curated",
                "quarantine.scenes.scene_too_short", "weight_sum"):
        assert key in metrics, key
    assert metrics["count.scenes_curated"] == result.stats["counts"]["scenes_curated"]
    from mlflow.tracking import MlflowClient

    artifacts = {a.path for a in MlflowClient(local_store_uri(root / "runs")).list_artifacts(runs[0].info.run_id,
                                                                                            "report")}
    assert {"report/index.html", "report/contact_sheet.png", "report/stats.json"} <= artifacts


def test_kmeans_seed_sweep_reuses_upstream_stages_and_keeps_quality(tiny_run, sample_world, tmp_path, caplog):
    """k-means seeds 0-2 on copies of the fixture's output (tiny.yaml has seed 0). Each seed reuses the
    scene, embedding and decontamination shards (untouched files) and re-runs k-means and what follows,
    naming ``kmeans.seed``. Quality: >= 90% of on-target scenes kept, <= 10% of off-target, no planted copy.
    """
    cfg, result, world, _ = tiny_run
    for seed in (0, 1, 2):
        out = tmp_path / f"seed{seed}"
        shutil.copytree(cfg.output, out)
        upstream = {p: p.stat().st_mtime_ns for stage in ("scenes", "embeddings", "decontam")
                    for p in (out / stage).rglob("part-*.parquet")}
        codebook = (out / "kmeans" / "codebook.npz").stat().st_mtime_ns
        caplog.clear()
        with caplog.at_level("INFO", logger="curation.lineage"):
            seeded = curate(tiny_config(sample_world, str(out), f"kmeans.seed={seed}", "tracking.enabled=false"))
        notices = {r.getMessage().split("]")[0][1:]: r.getMessage() for r in caplog.records}
        for stage in ("scenes", "embed", "decontam"):
            assert "] reused" in notices[stage] and "re-run" not in notices[stage], notices[stage]
        assert all(p.stat().st_mtime_ns == m for p, m in upstream.items())
        if seed == cfg.kmeans.seed:
            assert all("] reused" in n for n in notices.values()), notices
            assert (out / "kmeans" / "codebook.npz").stat().st_mtime_ns == codebook
        else:
            for stage in ("kmeans", "assign", "manifest"):
                assert f"re-run (changed: kmeans.seed (0 -> {seed}))" in notices[stage], notices[stage]
            assert (out / "kmeans" / "codebook.npz").stat().st_mtime_ns != codebook
        got = quality(world, read_manifest(seeded.manifest))
        assert got["on"] >= 0.9 and got["off"] <= 0.1 and not got["copies_kept"], (seed, got)
    assert quality(world, read_manifest(result.manifest))["n_off"] >= 10  # the check has off-target scenes to fail on


def test_rerun_skips_every_finished_shard(tiny_run, sample_world):
    cfg, result, _, _ = tiny_run
    again = curate(load_config(CurationConfig, TINY, [*world_overrides(sample_world, cfg.output),
                                                      "tracking.enabled=false"]))
    ran = {t.name: t.shards_run for t in again.timings if t.name in ("scenes", "embed", "decontam", "kmeans",
                                                                      "assign", "manifest")}
    assert ran == dict.fromkeys(ran, 0) and len(ran) == 6
    assert read_manifest(again.manifest).equals(read_manifest(result.manifest))


def test_inputs_are_checked_before_any_mlflow_run(sample_world, tmp_path, runs_root):
    cfg = tiny_config(sample_world, str(tmp_path / "out"), f"targets.coin.val={tmp_path / 'missing.parquet'}")
    with pytest.raises(UserError, match="missing.parquet"):
        curate(cfg)
    assert not runs_root.exists()  # no MLflow store was even opened, so no failed run is left behind


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the process group we started, then any process left in its session (Ray's daemons)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            if os.getsid(pid) == proc.pid:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


@pytest.mark.slow
def test_sigkill_during_embedding_then_rerun_gives_the_same_manifest(tiny_run, sample_world, tmp_path):
    cfg, result, _, _ = tiny_run
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "curation.curate", "--config", str(TINY),
           *world_overrides(sample_world, str(out)), "tracking.enabled=false", "ray.address=local"]
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    emb_dir = out / "embeddings" / "pool"
    with (tmp_path / "first.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 240
        while not shards.finished(str(emb_dir)) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        _kill_session(proc)
    done_at_kill = {p: p.stat().st_mtime_ns for p in (out / "embeddings").rglob("part-*.parquet")}
    pool_done, pool_total = len(shards.finished(str(emb_dir))), len(shards.finished(str(out / "scenes")))
    assert 0 < pool_done < pool_total, (pool_done, pool_total, (tmp_path / "first.log").read_text()[-2000:])
    assert not (out / "curated").exists()
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
                           start_new_session=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(done_at_kill)} already done" in rerun.stderr
    for path, mtime in done_at_kill.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was redone"
    assert read_manifest(str(out / "curated" / "manifest")).equals(read_manifest(result.manifest))


@pytest.mark.slow
def test_s3_inputs_and_outputs(ray_session, sample_world, s3_server, tmp_path, monkeypatch):
    """A small pool and two targets on a real S3-protocol server; every output goes back to S3."""
    import boto3

    # Ray workers started before this test never saw the dummy keys: hand them a credentials file
    # (its path, not the keys, travels to the workers; see core.ray_session.STORAGE_ENV_VARS).
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = boto3.client("s3", endpoint_url=s3_server)
    prefix = f"s3://{BUCKET}/curation-world"
    pool = read_manifest(str(sample_world / "sources/yt1b/manifest.parquet"))
    names = {"natural_00.mp4", "natural_01.mp4", "cartoon_00.mp4", "cartoon_01.mp4", "short_00.mp4",
             "reupload_02.mp4"}
    pool = pool.filter(np.isin([Path(u).name for u in pool["uri"].to_pylist()], list(names)))
    splits = {"pool": pool}
    for name in ("k710", "ssv2"):
        for split in ("train", "val"):
            splits[f"{name}/{split}"] = read_manifest(str(sample_world / f"targets/{name}/{split}/manifest.parquet"))

    def upload(table, key):
        from pipelines.manifest import write_manifest

        uris = []
        for uri in table["uri"].to_pylist():
            rel = Path(uri).relative_to(sample_world).as_posix()
            client.upload_file(uri, BUCKET, f"curation-world/{rel}")
            uris.append(f"{prefix}/{rel}")
        table = table.set_column(table.column_names.index("uri"), "uri", [uris])
        write_manifest(table, f"{prefix}/{key}")

    upload(splits["pool"], "sources/yt1b/manifest.parquet")
    for name in ("k710", "ssv2"):
        for split in ("train", "val"):
            upload(splits[f"{name}/{split}"], f"targets/{name}/{split}/manifest.parquet")
    out = f"s3://{BUCKET}/curated-tiny"
    overrides = [f"pool={prefix}/sources/yt1b/manifest.parquet", f"output={out}", "tracking.enabled=false",
                 "kmeans.num_clusters=2"]
    for name in ("k710", "ssv2"):
        overrides += [f"targets.{name}.train={prefix}/targets/{name}/train/manifest.parquet",
                      f"targets.{name}.val={prefix}/targets/{name}/val/manifest.parquet"]
    overrides += ["targets.coin=null", "targets.ek100=null"]  # tiny.yaml's base names all four
    cfg = load_config(CurationConfig, TINY, overrides)
    result = curate(cfg)
    manifest = read_manifest(result.manifest)
    assert result.manifest.startswith("s3://") and manifest.num_rows > 0
    assert all(u.startswith(prefix) for u in manifest["uri"].to_pylist())
    assert "reupload_02.mp4" not in {Path(u).name for u in manifest["uri"].to_pylist()}  # copy of an ssv2 val clip
    assert storage.exists(f"{out}/report/index.html") and storage.exists(f"{out}/kmeans/codebook.npz")
    short = read_rejects(f"{out}/quarantine/scenes")
    assert [Path(u).name for u in short["uri"].to_pylist()] == ["short_00.mp4"]
