"""Convert a robot dataset (DROID raw or LeRobot v2.1/v3.0) into the project's episode schema.

``vjepa2-ray build-episodes --format droid|lerobot --root ROOT --out DIR [options]``

Writes ``DIR/episodes.parquet`` (the index), ``DIR/steps/<episode>.parquet``, ``DIR/rejects/rejects.parquet``
(every quarantined episode with its reason) and ``DIR/build_report.json``; videos stay where they
are. Bad episodes are counted and listed, never a failed run; only a root or a column mapping that
cannot be read is an error (exit 2, one line). The last line printed is DIR, so commands chain.
See docs/posttrain.md "Robot episodes".
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict

from core.entry import module_main

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options only; the readers (h5py, PyAV, pyarrow) are imported in :func:`run`, so help is instant."""
    parser.add_argument("--format", required=True, choices=("droid", "lerobot"),
                        help="droid: raw DROID (trajectory list file, or a directory searched for trajectory.h5); "
                             "lerobot: a LeRobot v2.1 or v3.0 dataset directory")
    parser.add_argument("--root", required=True, help="the source: a local path or s3:// URI")
    parser.add_argument("--out", required=True, help="episode dataset directory to write (local or s3://)")
    parser.add_argument("--drop-failures", action="store_true",
                        help="leave out episodes marked unsuccessful (default: keep them, as Meta's loader "
                             "does); counted in the report either way")
    parser.add_argument("--clip-frames", type=int, default=8,
                        help="frames per training clip; shorter episodes are quarantined (episode_too_short)")
    parser.add_argument("--clip-fps", type=float, default=4.0,
                        help="rate clips are sampled at; with the episode's rate it sets the frame step")
    parser.add_argument("--no-check-videos", action="store_true",
                        help="skip opening each video (frame count, first and last frame); faster on S3, where "
                             "the check fetches every video whole, but broken videos then surface in training")
    parser.add_argument("--decoder", choices=("pyav", "decord", "torchcodec"), default="pyav",
                        help="first decoder tried by the video check (the others follow if it cannot read a file)")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="fraction of episodes held out for validation (by a hash of the episode id); "
                             "only reported here, training applies the same split")
    parser.add_argument("--split-salt", default="", help="salt of the validation hash (another salt, another split)")
    parser.add_argument("--limit", type=int, default=0, help="convert only the first N episodes (0: all)")
    droid = parser.add_argument_group("droid")
    droid.add_argument("--camera", default="left_mp4_path",
                       help="metadata json key of the camera MP4 (Meta trains on left_mp4_path)")
    droid.add_argument("--control-hz", type=float, default=15.0,
                       help="step rate used when trajectory.h5 has no usable timestamps")
    droid.add_argument("--cache-dir", default="~/.cache/vjepa2-ray/droid-h5",
                       help="local folder S3 trajectory.h5 files are fetched into (h5py cannot read S3)")
    lerobot = parser.add_argument_group("lerobot")
    lerobot.add_argument("--state-columns", default="observation.state.cartesian_position",
                         help="comma-separated columns concatenated into xyz + Euler xyz (6 dims), or all 7 "
                              "dims with --gripper-column ''")
    lerobot.add_argument("--gripper-column", default="observation.state.gripper_position",
                         help="the gripper column ('' when the state columns already hold it)")
    lerobot.add_argument("--gripper-open", type=float, default=0.0, help="the gripper column's open value (-> 0)")
    lerobot.add_argument("--gripper-closed", type=float, default=1.0, help="its closed value (-> 1)")
    lerobot.add_argument("--camera-key", default="",
                         help="video feature to train on (default: the first video feature of info.json)")
    lerobot.add_argument("--success-column", default="",
                         help="bool column (episodes table or data) saying whether the episode succeeded")
    lerobot.add_argument("--id-prefix", default="", help="episode id prefix (default: the dataset folder's name)")


def run(args: argparse.Namespace) -> int:
    from itertools import islice

    from core import storage
    from pipelines.episodes import droid, lerobot
    from pipelines.episodes.convert import ConvertOptions, convert

    options = ConvertOptions(keep_failures=not args.drop_failures, clip_frames=args.clip_frames,
                             clip_fps=args.clip_fps, check_videos=not args.no_check_videos, decoder=args.decoder,
                             val_fraction=args.val_fraction, split_salt=args.split_salt)
    root, out = storage.data_path(args.root), storage.data_path(args.out)
    if args.format == "droid":
        source = droid.episodes(root, droid.DroidOptions(args.camera, args.control_hz, args.cache_dir))
    else:
        source = lerobot.episodes(root, lerobot.LeRobotOptions(
            state=tuple(c for c in args.state_columns.split(",") if c), gripper=args.gripper_column,
            camera=args.camera_key, success=args.success_column, gripper_open=args.gripper_open,
            gripper_closed=args.gripper_closed, id_prefix=args.id_prefix))
    t0 = time.perf_counter()
    report = convert(islice(source, args.limit or None), out, args.format, options)
    log.info("build-episodes: %d episodes in %.1f s", report.episodes, time.perf_counter() - t0)
    print(json.dumps(asdict(report), indent=1))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(module_main(__name__))
