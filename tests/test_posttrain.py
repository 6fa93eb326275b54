"""V-JEPA 2-AC post-training: Meta's windows over robot episodes, the loss, the quality check, the feature
cache, and the stage end to end (local mode: the generic loop in this process, fed by Ray Data) with
resume and the export in Meta's AC layout. Data: the sample world's simulated Franka set."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from PIL import Image

from configs import preset_path
from core.config import load_config
from core.tracking import local_store_uri
from models.ac_predictor import ACPredictor
from models.build import build_encoder, load_model_preset
from models.checkpoint import load_meta_checkpoint, load_predictor, load_state
from models.config import ACPredictorConfig, EncoderConfig
from models.frozen import FrozenEncoderConfig, build_frozen_encoder
from pipelines.episodes.actions import actions_from_states
from pipelines.episodes.cache import CacheConfig, build_feature_cache, clip_tokens, to_float
from pipelines.episodes.clips import EpisodeDataConfig, EpisodeSet, iter_local_batches, read_frames
from pipelines.episodes.schema import read_steps, video_path
from train.ac_loss import ACLossConfig, ac_loss, next_frame_errors, predict, rollout, rollout_errors
from train.posttrain import final_quality, posttrain
from train.posttrain_config import PosttrainConfig
from train.posttrain_pictures import CURSOR, EpisodeTrace, draw
from train.posttrain_recipe import quality

CROP = 64
ENCODER = FrozenEncoderConfig(kind="random", preset="tiny")


@pytest.fixture(scope="module")
def robot(sample_world) -> str:
    return str(sample_world / "robot")


def data_config(robot: str, **overrides) -> EpisodeDataConfig:
    return EpisodeDataConfig(dataset=robot, crop_size=CROP, val_fraction=0.25, split_salt="val", seed=0, **overrides)


def test_windows_are_metas_draw_and_a_pure_function_of_the_sample(robot):
    episodes = EpisodeSet.build(data_config(robot))
    step = 4  # ceil(12.5 Hz / 4 fps)
    windows = [episodes.window(i) for i in range(300)]
    assert all(np.array_equal(w.steps, episodes.window(i).steps) for i, w in enumerate(windows))
    for w in windows:
        assert len(w.steps) == 8 and set(np.diff(w.steps)) == {step}
        assert w.steps[0] >= 0 and w.steps[-1] + step < episodes.num_steps[w.episode]  # last step never sampled
    assert len({(w.episode, int(w.steps[0])) for w in windows}) > 100
    assert len({w.episode for w in windows}) == len(episodes)
    assert not np.array_equal(episodes.window(7, attempt=1).steps, episodes.window(7).steps) or \
        episodes.window(7, attempt=1).episode != episodes.window(7).episode


def test_held_out_episodes_never_train(robot):
    train = {e.episode_id for e in EpisodeSet.build(data_config(robot), "train").episodes}
    val = {e.episode_id for e in EpisodeSet.build(data_config(robot), "val").episodes}
    assert len(val) == 3 and len(train) == 9 and not train & val


def test_a_clip_holds_its_frames_states_and_the_actions_meta_derives(robot):
    cfg = data_config(robot)
    episodes = EpisodeSet.build(cfg)
    batch = next(iter_local_batches(cfg, episodes, 10, 14, 4))
    assert batch["clip"].shape == (4, 8, CROP, CROP, 3) and batch["clip"].dtype == np.uint8
    assert list(batch["sample_id"]) == [10, 11, 12, 13]
    window = episodes.window(10)
    info = episodes.episodes[window.episode]
    steps = read_steps(robot, info.episode_id)
    np.testing.assert_array_equal(batch["states"][0], steps.state[window.steps])
    np.testing.assert_allclose(batch["actions"][0], actions_from_states(batch["states"][0]), atol=1e-6)
    frames = read_frames(video_path(robot, info), steps.frame_index[window.steps], cfg)
    np.testing.assert_array_equal(batch["clip"][0], frames)


def _toy_predictor() -> ACPredictor:
    torch.manual_seed(0)
    return ACPredictor(ACPredictorConfig(embed_dim=32, depth=2, num_heads=2), EncoderConfig(img_size=32, embed_dim=8))


def _toy_batch(frames: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    z = F.layer_norm(torch.randn(3, frames, 4, 8, generator=g), (8,))
    return z, torch.randn(3, frames - 1, 7, generator=g), torch.randn(3, frames, 7, generator=g)


def test_loss_is_teacher_forcing_plus_a_rollout_that_keeps_its_first_prediction_attached():
    predictor, (z, actions, states) = _toy_predictor(), _toy_batch()
    forced_loss, rolled_loss = ac_loss(predictor, z, actions, states, ACLossConfig(auto_steps=2))
    forced = predict(predictor, z[:, :-1], actions, states)
    second = predict(predictor, torch.cat([z[:, :1], forced[:, :1]], 1), actions, states)[:, -1]
    assert forced_loss.item() == pytest.approx((forced - z[:, 1:]).abs().mean().item(), rel=1e-6)
    expected = (torch.stack([forced[:, 0], second], 1) - z[:, 1:3]).abs().mean()
    assert rolled_loss.item() == pytest.approx(expected.item(), rel=1e-6)

    def rollout_grad(detach: bool) -> torch.Tensor:
        predictor.zero_grad()
        first = predict(predictor, z[:, :-1], actions, states)[:, 0]
        rolled = rollout(predictor, z[:, :1], first.detach() if detach else first, actions, states, 2)
        (rolled - z[:, 1:3]).abs().mean().backward()
        return predictor.predictor_embed.weight.grad.clone()

    assert not torch.allclose(rollout_grad(detach=False), rollout_grad(detach=True))


def test_frames_see_no_later_step():
    """Block-causal: changing the last frame and action leaves every earlier prediction as it was."""
    predictor, (z, actions, states) = _toy_predictor(), _toy_batch()
    changed_z, changed_a = z.clone(), actions.clone()
    changed_z[:, -2], changed_a[:, -1] = 0.5, 3.0
    before = predict(predictor, z[:, :-1], actions, states)
    after = predict(predictor, changed_z[:, :-1], changed_a, states)
    torch.testing.assert_close(before[:, :-1], after[:, :-1])
    assert not torch.allclose(before[:, -1], after[:, -1])


def test_a_predictor_that_learned_nothing_fails_the_quality_bar(robot):
    cfg = data_config(robot)
    encoder = build_frozen_encoder(ENCODER)
    batch = next(iter_local_batches(cfg, EpisodeSet.build(cfg, "val"), 0, 8, 8))
    z = clip_tokens(encoder, torch.from_numpy(batch["clip"]))
    model = load_model_preset("tiny-ac")
    predictor = ACPredictor(model.ac_predictor, replace(model.encoder, img_size=CROP))
    errors = {k: float(v) for k, v in rollout_errors(predictor, z, torch.from_numpy(batch["actions"]),
                                                     torch.from_numpy(batch["states"])).items()}
    gains = quality(errors)
    assert gains["gain_vs_copy_1step"] < 0 and gains["gain_vs_copy_2step"] < 0
    assert abs(gains["gain_vs_shuffled_1step"]) < 0.10  # actions barely matter to an untrained predictor
    verdict = final_quality(load_config(PosttrainConfig, preset_path("posttrain", "tiny")),
                            {"validations": {5: {f"val_{k}": v for k, v in {**errors, **gains}.items()}}})
    assert verdict["passed"] is False and verdict["step"] == 5


def test_per_frame_errors_predict_each_frame_from_a_clip_long_window():
    torch.manual_seed(0)
    model = load_model_preset("tiny-ac")
    predictor = ACPredictor(model.ac_predictor, replace(model.encoder, img_size=CROP)).eval()
    z = F.layer_norm(torch.randn(1, 9, 16, 192), (192,))
    actions, states = torch.randn(1, 8, 7), torch.randn(1, 9, 7)
    errors = next_frame_errors(predictor, z, actions, states, context=3)
    assert errors.shape == (8,)
    direct = predict(predictor, z[:, 5:8], actions[:, 5:8], states[:, 5:8])[:, -1]
    assert errors[7].item() == pytest.approx((direct - z[:, 8]).abs().mean().item(), rel=1e-5)
    far = z.clone()
    far[:, :4] = 0  # frames older than the window of frame 8 (and of 7)
    changed = next_frame_errors(predictor, far, actions, states, context=3)
    assert torch.allclose(changed[6:], errors[6:]) and not torch.allclose(changed[:3], errors[:3])


def test_pictures_are_a_curve_plot_and_one_gif_per_episode_with_a_moving_cursor(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (10, 64, 64, 3), dtype=np.uint8)
    states = np.cumsum(rng.normal(0, 0.02, (10, 7)), 0)
    errors = {"predictor": rng.random(9), "copy": rng.random(9)}
    history = {s: {f"val_{p}l1_{h}": rng.random() for p in ("", "copy_", "shuffled_") for h in ("1step", "2step")}
               for s in (2, 4)}
    files = draw(history, [EpisodeTrace("ep-a", frames, states, np.diff(states, axis=0), errors)], 4, tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["l1_curves.png", "step_000004/ep-a.gif"]
    assert Image.open(files[0]).size[0] > 500
    cursor_columns = []
    with Image.open(files[1]) as gif:
        assert gif.n_frames == 10 and gif.info["loop"] == 0
        for t in range(gif.n_frames):
            gif.seek(t)
            rgb = np.asarray(gif.convert("RGB")).astype(int)
            red = (np.abs(rgb - np.array(CURSOR)).sum(-1) < 30).sum(0)  # cursor pixels per column
            cursor_columns.append(int(red.argmax()))
    assert all(b > a for a, b in zip(cursor_columns, cursor_columns[1:]))  # the cursor walks right, frame by frame


def test_feature_cache_gives_the_tokens_and_loss_of_encoding_on_the_fly(robot, ray_session, tmp_path):
    cfg = data_config(robot)
    root = str(tmp_path / "cache")
    cache = build_feature_cache(cfg, ENCODER, CacheConfig(dtype="float32", frames_per_batch=40), root)
    assert len(cache.episodes) == 12 and cache.token_shape == (16, 192)
    written = (tmp_path / "cache" / "cache.json").stat().st_mtime_ns
    assert build_feature_cache(cfg, ENCODER, CacheConfig(dtype="float32"), root).root == root  # reused
    assert (tmp_path / "cache" / "cache.json").stat().st_mtime_ns == written

    episodes = EpisodeSet.build(cfg)
    pixels = next(iter_local_batches(cfg, episodes, 0, 6, 6))
    cached = next(iter_local_batches(replace(cfg, cache_dir=root), episodes, 0, 6, 6))
    assert "clip" not in cached and list(cached["sample_id"]) == list(pixels["sample_id"])
    z_live = clip_tokens(build_frozen_encoder(ENCODER), torch.from_numpy(pixels["clip"]))
    z_cached = to_float(cached["tokens"], cache.dtype)
    torch.testing.assert_close(z_cached, z_live, atol=1e-5, rtol=1e-5)
    predictor = ACPredictor(load_model_preset("tiny-ac").ac_predictor, replace(load_model_preset("tiny").encoder,
                                                                              img_size=CROP))
    args = (torch.from_numpy(pixels["actions"]), torch.from_numpy(pixels["states"]), ACLossConfig())
    live, from_cache = ac_loss(predictor, z_live, *args), ac_loss(predictor, z_cached, *args)
    for a, b in zip(live, from_cache):
        assert a.item() == pytest.approx(b.item(), abs=1e-6)

    half = build_feature_cache(cfg, ENCODER, CacheConfig(dtype="bfloat16"), str(tmp_path / "bf16"))
    z_half = to_float(half.read(episodes.episodes[episodes.window(0).episode].episode_id, episodes.window(0).steps),
                      "bfloat16")
    torch.testing.assert_close(z_half, z_live[0], atol=0.05, rtol=0.02)


def test_posttrain_resumes_and_exports_metas_ac_layout(robot, ray_session, runs_root, tmp_path):
    overrides = [f"data.dataset={robot}", f"data.crop_size={CROP}", "optim.total_steps=4", "optim.warmup_steps=1",
                 "optim.anneal_steps=1", "trainer.num_workers=0", "trainer.batch_size_per_worker=4",
                 "optim.global_batch=4", "optim.reference_global_batch=4", "trainer.checkpoint_every=2",
                 "trainer.eval_every=2", "trainer.eval_samples=4", "trainer.log_every=1",
                 f"run.output_dir={tmp_path / 'run'}", "data.num_decode_workers=1"]
    tiny = preset_path("posttrain", "tiny")
    first = posttrain(load_config(PosttrainConfig, tiny, [*overrides, "trainer.stop_after=2"]))
    assert first.worker["final_step"] == 2
    result = posttrain(load_config(PosttrainConfig, tiny, overrides))
    assert result.worker["start_step"] == 2 and result.worker["final_step"] == 4
    assert sorted(result.worker["validations"]) == [4]  # this run's validations; the first run's are in MLflow

    raw = torch.load(result.export_path, map_location="cpu", weights_only=True)
    assert {"encoder", "predictor", "target_encoder", "epoch", "loss", "batch_size", "world_size", "lr"} <= set(raw)
    assert raw["epoch"] == 4 and raw["batch_size"] == 4
    assert all(k.startswith("module.") for part in ("encoder", "predictor") for k in raw[part])
    ckpt = load_meta_checkpoint(result.export_path)
    load_predictor(ckpt, ckpt.model_cfg)  # strict
    assert ckpt.model_cfg.encoder.img_size == CROP and ckpt.model_cfg.ac_predictor is not None
    encoder = build_encoder(ckpt.model_cfg.encoder)
    load_state(encoder, ckpt.state("encoder"), "encoder", ckpt.path)  # the frozen encoder rides along, strict
    reference = build_frozen_encoder(ENCODER).net.state_dict()
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in reference.items())

    quality_file = json.loads((Path(result.output_dir) / "quality.json").read_text())
    assert quality_file["step"] == 4 and isinstance(quality_file["passed"], bool)
    assert {"val_l1_1step", "val_copy_l1_2step", "val_gain_vs_shuffled_1step"} <= set(quality_file)
    assert Path(result.output_dir, "latest.pt").resolve() == Path(result.export_path).resolve()

    pictures = Path(result.output_dir, "pictures")  # drawn at every validation, 3 held-out episodes each
    gifs = sorted(p.name for p in (pictures / "step_000004").glob("*.gif"))
    assert len(gifs) == 3 and (pictures / "step_000002").is_dir() and (pictures / "l1_curves.png").stat().st_size
    with Image.open(pictures / "step_000004" / gifs[0]) as gif:
        assert gif.n_frames == 26  # 101 recorded steps, every 4th
    client = MlflowClient(local_store_uri(runs_root))
    logged = {a.path for a in client.list_artifacts(result.mlflow_run_id, "pictures/step_000004")}
    assert logged == {f"pictures/step_000004/{name}" for name in gifs}
    assert "pictures/l1_curves.png" in {a.path for a in client.list_artifacts(result.mlflow_run_id, "pictures")}
