"""A HF export is what transformers users expect (issue 12): ``AutoModel`` and ``AutoVideoProcessor`` both load
it (the installed transformers, local files only), its processor reproduces ``eval_preprocess``, and its
model card says what the model is and where it came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoVideoProcessor, VJEPA2Model, VJEPA2VideoProcessor

from models import hub
from models.build import load_model_preset
from models.checkpoint import save_meta_checkpoint
from models.hf import CARD_FILE, PROCESSOR_FILE, TRAIN_RECORD, processor_config
from pipelines.transforms import IMAGENET_STD, eval_preprocess
from train.convert import convert

# transformers resizes uint8 frames (rounded, in torchvision's fixed-point kernel), eval_preprocess floats:
# one uint8 level after normalisation apart at most.
ONE_LEVEL = 1 / (255 * min(IMAGENET_STD)) + 1e-5
RECORD = {"state": {"step": 20}, "git_revision": "abc1234", "mlflow_run_id": "run42"}


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A tiny model as training exports it (Meta layout, training record), converted to HF."""
    tmp = tmp_path_factory.mktemp("export")
    encoder, predictor = hub.load_model("tiny", seed=1)
    save_meta_checkpoint(tmp / "latest.pt", encoder.state_dict(), predictor.state_dict(),
                         model_cfg=load_model_preset("tiny"), extra={"epoch": 20, TRAIN_RECORD: RECORD})
    convert(str(tmp / "latest.pt"), str(tmp / "hf"), "hf")
    return tmp / "hf"


def _clip(height: int, width: int, frames: int = 8) -> np.ndarray:
    """Noise: any shift of the resampling grid between the two preprocessors shows as a large difference."""
    return np.random.default_rng(height * width).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def _hf(processor: VJEPA2VideoProcessor, frames: np.ndarray) -> torch.Tensor:
    """[3, T, crop, crop] like eval_preprocess (transformers gives [1, T, 3, crop, crop])."""
    return processor(videos=[frames], return_tensors="pt")["pixel_values_videos"][0].permute(1, 0, 2, 3)


def test_auto_model_and_auto_video_processor_load_the_export(export: Path) -> None:
    model = AutoModel.from_pretrained(export, local_files_only=True).eval()
    processor = AutoVideoProcessor.from_pretrained(export, local_files_only=True)
    assert isinstance(model, VJEPA2Model) and isinstance(processor, VJEPA2VideoProcessor)
    assert processor.crop_size == {"height": 128, "width": 128} and processor.size == {"shortest_edge": 146}
    inputs = processor(videos=[_clip(100, 150)], return_tensors="pt")
    with torch.no_grad():
        assert model.get_vision_features(**inputs).shape == (1, 4 * 8 * 8, 192)


@pytest.mark.parametrize("preset", ["tiny", "vitl"])
def test_processor_config_is_what_transformers_itself_saves(preset: str, tmp_path: Path) -> None:
    ours = processor_config(load_model_preset(preset))
    VJEPA2VideoProcessor(crop_size=ours["crop_size"]["height"]).save_pretrained(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [PROCESSOR_FILE]
    theirs = json.loads((tmp_path / PROCESSOR_FILE).read_text())
    assert {k: theirs.get(k) for k in ours} == ours


@pytest.mark.parametrize(("preset", "height", "width"), [("tiny", 73, 110), ("tiny", 292, 440), ("tiny", 220, 146),
                                                         ("vitl", 240, 320), ("vitl", 480, 360)])
def test_processor_reproduces_eval_preprocess(export: Path, preset: str, height: int, width: int) -> None:
    """Up- and downscaled, landscape and portrait, at 128 and 256 px. transformers truncates the resized long
    side and the crop offset where eval_preprocess rounds them, so these are frames where both give the same
    size and offset (docs/models.md: elsewhere the two are one pixel apart)."""
    cfg = load_model_preset(preset)
    processor = AutoVideoProcessor.from_pretrained(export, local_files_only=True) if preset == "tiny" else \
        VJEPA2VideoProcessor(**processor_config(cfg))
    frames = _clip(height, width)
    want = eval_preprocess(frames, cfg.encoder.img_size)
    got = _hf(processor, frames)
    assert got.shape == want.shape == (3, 8, cfg.encoder.img_size, cfg.encoder.img_size)
    diff = (got - want).abs()
    assert diff.max() <= ONE_LEVEL and diff.mean() <= ONE_LEVEL / 2


def test_model_card_says_what_where_from_and_how_to_load(export: Path, tmp_path: Path) -> None:
    card = (export / CARD_FILE).read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    for fact in ("`tiny`", "| encoder | 192 x 4 | 6 | 768 |", "| predictor | 96 x 2 | 3 |", "latest.pt [encoder]",
                 "step: `20`", "git revision: `abc1234`", "MLflow run: `run42`", "short side resized to 146 px",
                 "center crop to 128 x 128", "AutoVideoProcessor.from_pretrained", "## License"):
        assert fact in card, fact
    convert(str(export), str(tmp_path / "again"), "hf")  # HF -> HF: the processor stays, provenance is unknown
    again = (tmp_path / "again" / CARD_FILE).read_text()
    assert "not recorded in the source checkpoint" in again and str(export) in again
    assert (tmp_path / "again" / PROCESSOR_FILE).read_bytes() == (export / PROCESSOR_FILE).read_bytes()
