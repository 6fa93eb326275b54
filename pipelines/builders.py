"""Build project-schema manifests from public datasets' own index files.

``python -m pipelines.builders DATASET --out MANIFEST [options]`` for:

- ``ssv2``: Something-Something v2 ``train/validation.json`` + ``labels.json``; videos ``<root>/<id>.webm``
- ``kinetics``: Kinetics-400/600/700 CSV (``label,youtube_id,time_start,time_end,split``); videos
  ``<root>/<ytid>_<start:06d>_<end:06d>.mp4`` (``--layout flat``) or under ``<root>/<label>/``
- ``howto100m``: ``HowTo100M_v1.csv`` (``video_id,...,task_id``); videos ``<root>/<video_id>.<ext>``
- ``epickitchens``: ``EPIC_100_train/validation.csv``; one row per narrated segment with its
  ``start_s``/``end_s`` scene bounds; videos ``<root>/<participant>/videos/<video_id>.MP4``
- ``ek100-anticipation``: the same CSVs for action anticipation: ``verb`` and ``noun`` columns beside the
  action's ``start_s``/``end_s`` (docs/anticipation.md)
- ``imagenet``: class folders ``<root>/<wnid>/*.JPEG``, label = index of the sorted class folder
- ``diving48``: ``Diving48_V2_train/test.json`` (``vid_name``, ``label``) + ``Diving48_vocab.json`` (the
  class of each label: takeoff, somersault, twist, flight); videos ``<root>/<vid_name>.mp4``
- ``jester``: ``jester-v1-train/validation.csv`` (``<id>;<class name>``, no header; the test list has ids
  only) + ``jester-v1-labels.csv`` (class names, label = line number); videos ``<root>/<id>.<ext>``
  (Jester ships JPEG frame folders: transcode them to videos first)
- ``coin``: ``COIN.json`` (``database`` -> video id -> ``recipe_type``, ``class``, ``subset``), one split
  by ``--subset`` (``training`` / ``testing``), label = ``recipe_type`` (the 180 tasks); videos
  ``<root>/<video id>.<ext>``

``--labels-out FILE`` also writes the label map, the class names by label index as a JSON list, for
every dataset whose index files name the classes (not howto100m, epickitchens, ek100-anticipation).

Index files and media roots may be local or ``s3://``. ``--probe`` opens every file to fill
``duration_s``/``fps``/``num_frames``/``bytes`` (otherwise they stay null, which the pipeline accepts);
files that cannot be probed keep nulls and are counted, and ``validate-data`` names them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
from collections.abc import Callable
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs

from core import storage
from core.entry import module_main
from pipelines import decode
from pipelines.manifest import ManifestError, conform, write_manifest
from pipelines.quarantine import SampleError

log = logging.getLogger(__name__)

EPIC_TIMESTAMP = re.compile(r"^(\d+):(\d{2}):(\d{2}(?:\.\d+)?)$")


def _table(uris: list[str], labels: list[int], **extra: list) -> pa.Table:
    n = len(uris)
    columns = {"uri": pa.array(uris, pa.string()), "label": pa.array(labels, pa.int64()),
               "duration_s": pa.nulls(n, pa.float64()), "fps": pa.nulls(n, pa.float64()),
               "num_frames": pa.nulls(n, pa.int64()), "bytes": pa.nulls(n, pa.int64())}
    columns.update({k: pa.array(v) for k, v in extra.items()})
    return conform(pa.table(columns))


def _set(table: pa.Table, name: str, values: list) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values, table.schema.field(name).type))


def _read_text(uri: str) -> str:
    if not storage.exists(uri):
        raise ManifestError(f"{uri}: index file not found")
    return storage.read_bytes(uri).decode("utf-8-sig")


def _csv_rows(uri: str, required: tuple[str, ...]) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(_read_text(uri)))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise ManifestError(f"{uri}: missing column(s) {missing}; header is {reader.fieldnames}")
    return list(reader)


def ssv2(index: str, labels: str, root: str) -> pa.Table:
    """SSv2: the label is the id of the entry's template (brackets removed) in ``labels.json``; test: -1."""
    try:
        entries = json.loads(_read_text(index))
        label_map = {k: int(v) for k, v in json.loads(_read_text(labels)).items()}
    except (json.JSONDecodeError, ValueError) as exc:
        raise ManifestError(f"{index} / {labels}: not SSv2 JSON: {exc}") from exc
    uris, ids = [], []
    for number, entry in enumerate(entries):
        if "id" not in entry:
            raise ManifestError(f"{index}: entry {number} has no 'id'")
        template = entry.get("template")
        if template is None:
            ids.append(-1)
        else:
            name = template.replace("[", "").replace("]", "")
            if name not in label_map:
                raise ManifestError(f"{index}: entry {number} (id {entry['id']}): template {name!r} not in {labels}")
            ids.append(label_map[name])
        uris.append(storage.join(root, f"{entry['id']}.webm"))
    return with_label_names(_table(uris, ids), sorted(label_map, key=label_map.__getitem__))


def kinetics(index: str, root: str, layout: str = "flat", classes: list[str] | None = None) -> pa.Table:
    """Kinetics: label = index of the class name in ``classes`` (default: the CSV's sorted class names)."""
    rows = _csv_rows(index, ("youtube_id", "time_start", "time_end"))
    names = classes or sorted({r["label"] for r in rows if r.get("label")})
    label_of = {name: i for i, name in enumerate(names)}
    uris, labels = [], []
    for number, row in enumerate(rows, start=2):
        try:
            name = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}.mp4"
        except ValueError as exc:
            raise ManifestError(f"{index}: line {number}: bad time_start/time_end: {exc}") from exc
        label = row.get("label") or ""
        if label and label not in label_of:
            raise ManifestError(f"{index}: line {number}: class {label!r} not in the given class list")
        uris.append(storage.join(root, label, name) if layout == "by_label" and label else storage.join(root, name))
        labels.append(label_of[label] if label else -1)
    return with_label_names(_table(uris, labels), names)


def howto100m(index: str, root: str, ext: str = "mp4") -> pa.Table:
    """HowTo100M: label = ``task_id``."""
    rows = _csv_rows(index, ("video_id", "task_id"))
    uris, labels = [], []
    for number, row in enumerate(rows, start=2):
        try:
            labels.append(int(row["task_id"]))
        except ValueError as exc:
            raise ManifestError(f"{index}: line {number}: task_id {row['task_id']!r} is not an integer") from exc
        uris.append(storage.join(root, f"{row['video_id']}.{ext}"))
    return _table(uris, labels)


def _seconds(stamp: str, where: str) -> float:
    match = EPIC_TIMESTAMP.match(stamp.strip())
    if not match:
        raise ManifestError(f"{where}: timestamp {stamp!r} is not HH:MM:SS.ff")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def epickitchens(index: str, root: str, label: str = "verb") -> pa.Table:
    """EPIC-KITCHENS-100: one row per narrated segment, scene bounds from its start/stop timestamps."""
    column = {"verb": "verb_class", "noun": "noun_class"}[label]
    rows = _csv_rows(index, ("participant_id", "video_id", "start_timestamp", "stop_timestamp", column))
    uris, labels, starts, ends = [], [], [], []
    for number, row in enumerate(rows, start=2):
        where = f"{index}: line {number}"
        try:
            labels.append(int(row[column]))
        except ValueError as exc:
            raise ManifestError(f"{where}: {column} {row[column]!r} is not an integer") from exc
        starts.append(_seconds(row["start_timestamp"], where))
        ends.append(_seconds(row["stop_timestamp"], where))
        uris.append(storage.join(root, row["participant_id"], "videos", f"{row['video_id']}.MP4"))
    return _table(uris, labels, start_s=pa.array(starts, pa.float64()), end_s=pa.array(ends, pa.float64()))


def ek100_anticipation(index: str, root: str) -> pa.Table:
    """EPIC-KITCHENS-100 for action anticipation (pipelines/anticipation.py): the :func:`epickitchens` rows
    (label = verb) with ``verb`` and ``noun``, the CSV's class ids, and the action bounds as ``start_s`` and
    ``end_s``; the anticipation stage numbers the actions from the training manifest's pairs."""
    rows = _csv_rows(index, ("noun_class",))
    nouns = []
    for number, row in enumerate(rows, start=2):
        try:
            nouns.append(int(row["noun_class"]))
        except ValueError as exc:
            raise ManifestError(f"{index}: line {number}: noun_class {row['noun_class']!r} is not an integer") from exc
    table = epickitchens(index, root, "verb")
    return table.append_column("verb", table.column("label")).append_column("noun", pa.array(nouns, pa.int64()))


def imagenet(root: str) -> pa.Table:
    """ImageNet-style class folders; the label is the index of the sorted folder name."""
    fs, base = storage.filesystem_for(root)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise ManifestError(f"{root}: not a directory of class folders")
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and decode.is_image(i.path))
    classes = sorted({PurePosixPath(p).parent.name for p in files})
    label_of = {name: i for i, name in enumerate(classes)}
    uris = [f"s3://{p}" if storage.is_s3(root) else p for p in files]
    table = _table(uris, [label_of[PurePosixPath(p).parent.name] for p in files])
    sizes = {i.path: i.size for i in infos}
    table = _set(_set(table, "num_frames", [1] * len(files)), "bytes", [sizes[p] for p in files])
    return with_label_names(table, classes)


def diving48(index: str, root: str, vocab: str | None = None) -> pa.Table:
    """Diving48: ``label`` as given; the class names join each vocab entry's four parts with ``_``."""
    try:
        entries = json.loads(_read_text(index))
        names = ["_".join(str(part) for part in entry) for entry in json.loads(_read_text(vocab))] if vocab else None
    except (json.JSONDecodeError, TypeError) as exc:
        raise ManifestError(f"{index}: not Diving48 JSON: {exc}") from exc
    uris, labels = [], []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "vid_name" not in entry or not isinstance(entry.get("label"), int):
            raise ManifestError(f"{index}: entry {number} lacks 'vid_name' or an integer 'label'")
        if names is not None and not 0 <= entry["label"] < len(names):
            raise ManifestError(f"{index}: entry {number}: label {entry['label']} not in {vocab} "
                                f"({len(names)} classes)")
        uris.append(storage.join(root, f"{entry['vid_name']}.mp4"))
        labels.append(entry["label"])
    return with_label_names(_table(uris, labels), names)


def jester(index: str, labels: str, root: str, ext: str = "mp4") -> pa.Table:
    """Jester: label = the line of the row's class name in the labels file; a row without one: -1."""
    names = _class_list(labels)
    label_of = {name: i for i, name in enumerate(names or [])}
    uris, ids = [], []
    for number, line in enumerate(_read_text(index).splitlines(), start=1):
        if not line.strip():
            continue
        video, _, name = line.strip().partition(";")
        if name and name not in label_of:
            raise ManifestError(f"{index}: line {number}: class {name!r} not in {labels}")
        uris.append(storage.join(root, f"{video}.{ext}"))
        ids.append(label_of[name] if name else -1)
    return with_label_names(_table(uris, ids), names)


def coin(index: str, root: str, subset: str = "training", ext: str = "mp4") -> pa.Table:
    """COIN: the videos of one ``subset``, label = ``recipe_type``; class names from each video's ``class``."""
    try:
        database = json.loads(_read_text(index))["database"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ManifestError(f"{index}: not COIN JSON (a 'database' of videos): {exc}") from exc
    uris, labels, names = [], [], {}
    for video, entry in sorted(database.items()):
        if not isinstance(entry.get("recipe_type"), int) or "subset" not in entry:
            raise ManifestError(f"{index}: video {video!r} lacks an integer 'recipe_type' or 'subset'")
        names[entry["recipe_type"]] = entry.get("class", str(entry["recipe_type"]))
        if entry["subset"] == subset:
            uris.append(storage.join(root, f"{video}.{ext}"))
            labels.append(entry["recipe_type"])
    if not uris:
        raise ManifestError(f"{index}: no video in subset {subset!r}")
    return with_label_names(_table(uris, labels), [names.get(i, "") for i in range(max(names) + 1)])


LABEL_NAMES = b"vjepa2_ray.label_names"  # schema metadata: the class names by label, where the index names them


def with_label_names(table: pa.Table, names: list[str] | None) -> pa.Table:
    return table.replace_schema_metadata({LABEL_NAMES: json.dumps(names).encode()}) if names else table


def label_names(table: pa.Table) -> list[str] | None:
    raw = (table.schema.metadata or {}).get(LABEL_NAMES)
    return json.loads(raw) if raw else None


def probe(table: pa.Table, backend: str = "decord") -> tuple[pa.Table, int]:
    """Fill the media columns by opening every file; returns the table and how many could not be probed."""
    fields = {"duration_s": [], "fps": [], "num_frames": [], "bytes": []}
    failed = 0
    for uri in table.column("uri").to_pylist():
        try:
            media = decode.fetch(uri)
            fs, path = storage.filesystem_for(uri)
            size = fs.get_file_info(path).size
            if decode.is_image(uri):
                decode.read_image(media)
                values = (0.0, 0.0, 1, size)
            else:
                reader = decode.open_video(media, backend)
                values = (reader.num_frames / reader.fps if reader.fps else None, reader.fps, reader.num_frames, size)
                reader.close()
        except SampleError as err:
            failed += 1
            log.warning("probe %s: %s", uri, err)
            values = (None, None, None, None)
        for name, value in zip(fields, values):
            fields[name].append(value)
    for name, values in fields.items():
        table = _set(table, name, values)
    return table, failed


BUILDERS: dict[str, Callable[[argparse.Namespace], pa.Table]] = {
    "ssv2": lambda a: ssv2(a.index, a.labels, a.root),
    "kinetics": lambda a: kinetics(a.index, a.root, a.layout, _class_list(a.classes)),
    "howto100m": lambda a: howto100m(a.index, a.root, a.ext),
    "epickitchens": lambda a: epickitchens(a.index, a.root, a.label),
    "ek100-anticipation": lambda a: ek100_anticipation(a.index, a.root),
    "imagenet": lambda a: imagenet(a.root),
    "diving48": lambda a: diving48(a.index, a.root, a.labels),
    "jester": lambda a: jester(a.index, a.labels, a.root, a.ext),
    "coin": lambda a: coin(a.index, a.root, a.subset, a.ext),
}


def _class_list(uri: str | None) -> list[str] | None:
    return [line.strip() for line in _read_text(uri).splitlines() if line.strip()] if uri else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=sorted(BUILDERS), help="which dataset's index format to read")
    parser.add_argument("--out", required=True, help="manifest to write (.parquet, or .csv for Meta's format)")
    parser.add_argument("--root", required=True, help="media root (local or s3://)")
    parser.add_argument("--index", help="the dataset's index file (JSON/CSV); not for imagenet")
    parser.add_argument("--labels", help="the class list: ssv2 labels.json, diving48 Diving48_vocab.json, "
                                         "jester jester-v1-labels.csv")
    parser.add_argument("--layout", choices=("flat", "by_label"), default="flat", help="kinetics file layout")
    parser.add_argument("--classes", help="kinetics: file with one class name per line (fixes label ids)")
    parser.add_argument("--ext", default="mp4", help="howto100m, jester, coin: video file extension")
    parser.add_argument("--subset", default="training", help="coin: the split to list (training or testing)")
    parser.add_argument("--labels-out", help="also write the label map (class names by label, JSON)")
    parser.add_argument("--label", choices=("verb", "noun"), default="verb", help="epickitchens: label column")
    parser.add_argument("--probe", action="store_true", help="open every file to fill fps/num_frames/...")
    parser.add_argument("--decoder", choices=decode.BACKENDS, default="decord",
                        help="first backend tried for --probe (the others follow if it cannot read a file)")


def run(args: argparse.Namespace) -> int:
    if args.dataset != "imagenet" and not args.index:
        raise ManifestError(f"{args.dataset}: --index is required")
    if args.dataset in ("ssv2", "jester") and not args.labels:
        raise ManifestError(f"{args.dataset}: --labels (the class list) is required")
    table = BUILDERS[args.dataset](args)
    names = label_names(table)
    if args.labels_out:
        if names is None:
            raise ManifestError(f"{args.dataset}: the index names no classes; no --labels-out label map")
        storage.write_bytes(args.labels_out, (json.dumps(names, indent=1) + "\n").encode())
    failed = 0
    if args.probe:
        table, failed = probe(table, args.decoder)
    write_manifest(table, args.out)
    note = f" ({failed} could not be probed; see the log)" if failed else ""
    print(f"{args.dataset}: {table.num_rows} rows -> {args.out}{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(module_main(__name__))
