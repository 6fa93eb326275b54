"""Images of every PIL mode decode to the right RGB; oversized and broken ones are quarantined with their
reason, in read_image, in a training clip and in validate-data (never an exception out of a run)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from fixtures_media import coded_frame, frame_number, odd_images, png_header

from cluster.cli import main as cli_main
from pipelines import decode
from pipelines.clips import ClipRequest, make_clip
from pipelines.config import ClipConfig, DataConfig
from pipelines.manifest import write_manifest
from pipelines.quarantine import SampleError, read_rejects

EXACT_GRAY = ("gray16.png", "gray16.tif", "int32_16bit.tif", "int32_8bit.tif", "float01.tif")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict:
    return odd_images(tmp_path_factory.mktemp("images"))


def test_every_mode_becomes_rgb_with_its_picture(images):
    from PIL import Image

    gray = np.asarray(Image.fromarray(coded_frame(5, 80, 60)).convert("L"))
    for name, path in images.items():
        image = decode.read_image(str(path))
        assert image.dtype == np.uint8 and image.shape == (60, 80, 3), name
        assert frame_number(image) == 5, name  # the first frame of the animated GIF
        if name in EXACT_GRAY:  # 16-bit, 32-bit and float grayscale scaled to 8 bits, not clipped to white
            assert np.array_equal(image[..., 0], gray) and np.array_equal(image[..., 2], gray), name


def test_oversized_and_broken_images_are_quarantined_with_their_reason(images, tmp_path):
    bomb = png_header(tmp_path / "bomb.png", 15000, 15000)  # 225 MP: PIL's DecompressionBombError
    with pytest.raises(SampleError) as err:
        decode.read_image(str(bomb))
    assert (err.value.reason, err.value.stage) == ("too_large", "open")
    with pytest.raises(SampleError, match=r"too_large.*80x60 = 4800 pixels > data.max_image_pixels 4000"):
        decode.read_image(str(images["rgb.bmp"]), max_pixels=4000)
    data = images["palette.png"].read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(SampleError) as err:
        decode.read_image(str(tmp_path / "cut.png"))
    assert err.value.reason == "bad_image"
    cfg = DataConfig(clip=ClipConfig(frames_per_clip=2, crop_size=16), max_image_pixels=4000)
    with pytest.raises(SampleError, match="too_large"):  # the training path passes the configured limit
        make_clip(ClipRequest(str(images["rgb.bmp"]), 0, kind="image"), cfg)


def test_validate_data_survives_every_image_kind(images, tmp_path, capsys):
    bomb = png_header(tmp_path / "bomb.png", 15000, 15000)
    data = images["palette.png"].read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    uris = [str(p) for p in images.values()] + [str(bomb), str(tmp_path / "cut.png")]
    n = len(uris)
    manifest = tmp_path / "imagenet" / "manifest.parquet"
    write_manifest(pa.table({"uri": uris, "label": list(range(n)), **{c: [None] * n for c in (
        "duration_s", "fps", "num_frames", "bytes")}}), str(manifest))
    out = tmp_path / "rejects.parquet"
    assert cli_main(["validate-data", "--manifest", str(manifest), "--rejects", str(out), "--kind", "image"]) == 0
    assert f"{n} rows, {n - 2} good, 2 bad" in capsys.readouterr().out
    rejects = read_rejects(str(out))
    assert dict(zip(rejects["uri"].to_pylist(), rejects["reason"].to_pylist())) == {
        str(bomb): "too_large", str(tmp_path / "cut.png"): "bad_image"}
