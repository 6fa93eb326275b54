"""The sample world's anticipation set: videos whose future differs from their present (docs/anticipation.md).

Each video (:data:`FRAMES` frames at :data:`FPS` fps, :data:`SIZE` px, H.264) shows one photo cut-out
(the *noun*: which photo, as in the appearance probe set) moving over a photo texture with a dark wall
along one border. At ``start_s`` (3 to 3.5 s) something happens that lasts 1 s, the *verb*:

- ``exits_left`` / ``exits_right`` / ``exits_top`` / ``exits_bottom``: it reaches that border, which has
  no wall, and leaves the frame;
- ``turns_back``: it reaches the wall and comes back;
- ``stops``: it has been slowing down all along and stops.

Before ``start_s`` every clip shows the object moving from near one border toward another, so what
happens next is written in the present only as its heading, its speed profile and where the wall is:
a probe whose clip ends 1 s before the action (the default validation window) must anticipate it.
The training split leaves out the six (verb, noun) pairs with ``(verb + noun) % 6 == 5``, so validation
has rows of pairs training never saw, which the stage leaves out (Meta's rule).

Layout under ``<world>/probes/anticipation/``: ``train.parquet``, ``val.parquet`` (the manifest schema
plus ``verb``, ``noun``, ``start_s``, ``end_s``; ``label`` is ``verb x 6 + noun``), ``verbs.json`` and
``nouns.json`` (names by id), the clips under ``clips/<split>/<verb>/``. Deterministic per seed.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.manifest import write_manifest
from pipelines.sample_world.plan import OBJECTS, SURFACES
from pipelines.sample_world.probe_sets import PROBES_DIR, SPLIT_SEED, paste_path
from pipelines.sample_world.render import NATIVE, pan_frames, photo, sprite, tinted
from pipelines.sample_world.writers import write_video

SET_NAME = "anticipation"
FRAMES, FPS, SIZE = 40, 8, 64  # 5 s
ACTION_FRAMES = FPS  # every action lasts 1 s
START_FRAMES = (24, 28)  # the action starts at 3.0 .. 3.5 s
WALL = 0.12  # the wall's thickness, as a share of the frame
SIDES = ("left", "right", "top", "bottom")
VERBS = ("exits_left", "exits_right", "exits_top", "exits_bottom", "turns_back", "stops")
NOUNS = OBJECTS
PER_PAIR = {"train": 4, "val": 2}
SET_INDEX = 2  # after the motion and appearance sets in the random streams


def held_out(verb: int, noun: int) -> bool:
    """The pairs the training split leaves out."""
    return (verb + noun) % len(VERBS) == len(VERBS) - 1


@dataclass(frozen=True)
class ActionClip:
    """One video to render: its action and what it is made of."""

    split: str
    verb: int
    noun: int
    background: str
    seed: tuple[int, ...]

    @property
    def relpath(self) -> str:
        return f"clips/{self.split}/{VERBS[self.verb]}/{NOUNS[self.noun]}_{self.seed[-1]:04d}.mp4"


def plan_split(split: str, seed: int, per_pair: int | None = None) -> list[ActionClip]:
    """Every video of one split: ``per_pair`` of each (verb, noun) pair (default :data:`PER_PAIR`),
    training without the :func:`held_out` pairs."""
    rng = np.random.default_rng((seed, SPLIT_SEED[split], SET_INDEX))
    plans = []
    for verb in range(len(VERBS)):
        for noun in range(len(NOUNS)):
            if split == "train" and held_out(verb, noun):
                continue
            for _ in range(PER_PAIR[split] if per_pair is None else per_pair):
                background = SURFACES[int(rng.integers(len(SURFACES)))]
                plans.append(ActionClip(split, verb, noun, background, (seed, SPLIT_SEED[split], SET_INDEX,
                                                                        len(plans))))
    return plans


def progress(verb: str, n: int, start: int, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Per frame the object's position along its heading (0: the border behind it, 1: the one ahead)."""
    t = np.arange(n, dtype=float)
    begin = rng.uniform(0.15, 0.3)
    if verb == "stops":  # slowing down at a constant rate, still from ``start`` on
        event = rng.uniform(0.5, 0.65)
        before = event - (event - begin) * ((start - np.minimum(t, start)) / start) ** 2
        return np.where(t < start, before, event)
    event = 1.0 - radius - (WALL if verb == "turns_back" else 0.0)  # touching the border or the wall
    speed = (event - begin) / start
    after = -1.0 if verb == "turns_back" else 1.0
    return np.where(t < start, event - speed * (start - t), event + after * speed * (t - start))


def video_frames(clip: ActionClip, start: int, rng: np.random.Generator) -> np.ndarray:
    """The RGB frames ``[FRAMES, SIZE, SIZE, 3]`` of one video."""
    verb = VERBS[clip.verb]
    heading = verb.removeprefix("exits_") if verb.startswith("exits_") else SIDES[int(rng.integers(4))]
    walls = [s for s in SIDES if s != heading]
    wall = heading if verb == "turns_back" else walls[int(rng.integers(len(walls)))]
    side = int(SIZE * rng.uniform(0.28, 0.34))
    cut, mask = sprite(photo(NOUNS[clip.noun], "all"), rng, side)
    backdrop = next(pan_frames(tinted(photo(clip.background, "all"), rng), (SIZE, SIZE), 1, NATIVE, rng, (0.5, 0.8)))
    thick = round(WALL * SIZE)
    backdrop = backdrop.copy()
    rows = {"left": np.s_[:, :thick], "right": np.s_[:, SIZE - thick:], "top": np.s_[:thick, :],
            "bottom": np.s_[SIZE - thick:, :]}
    backdrop[rows[wall]] = 40
    ahead = progress(verb, FRAMES, start, side / 2 / SIZE, rng)
    across = np.full(FRAMES, rng.uniform(0.35, 0.65))
    along = {"right": ahead, "left": 1.0 - ahead, "bottom": ahead, "top": 1.0 - ahead}[heading]
    x, y = (along, across) if heading in ("left", "right") else (across, along)
    angle = rng.uniform(0.0, 360.0)
    return paste_path(backdrop, cut, mask, side, np.column_stack([x, y, np.ones(FRAMES), np.full(FRAMES, angle)]))


def render(clip: ActionClip, out: Path) -> dict:
    """Render and write one video; its manifest row."""
    rng = np.random.default_rng(clip.seed)
    start = int(rng.integers(START_FRAMES[0], START_FRAMES[1] + 1))
    target = out / clip.relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    info = write_video(target, video_frames(clip, start, rng), (SIZE, SIZE), Fraction(FPS), gop=FRAMES)
    return {"uri": str(target), "label": clip.verb * len(NOUNS) + clip.noun, "duration_s": info.duration_s,
            "fps": info.fps, "num_frames": info.num_frames, "bytes": info.bytes, "verb": clip.verb,
            "noun": clip.noun, "start_s": start / FPS, "end_s": (start + ACTION_FRAMES) / FPS}


def _render_all(args: tuple[list[ActionClip], str]) -> list[dict]:
    clips, out = args
    return [render(c, Path(out)) for c in clips]


def build_anticipation_set(world: Path, seed: int = 0, workers: int = 2,
                           per_pair: dict[str, int] | None = None) -> dict:
    """The set under ``<world>/probes/anticipation``; returns its summary (videos per split, classes).
    ``per_pair``: videos of each pair by split instead of :data:`PER_PAIR` (small sets for tests)."""
    out = Path(world) / PROBES_DIR / SET_NAME
    summary: dict = {"dir": str(out), "verbs": len(VERBS), "nouns": len(NOUNS)}
    for split in ("train", "val"):
        plans = plan_split(split, seed, (per_pair or {}).get(split))
        chunks = [plans[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(min(workers, len(plans))) as pool:
            rows = sorted((r for chunk in pool.map(_render_all, [(c, str(out)) for c in chunks]) for r in chunk),
                          key=lambda r: r["uri"])
        table = pa.table({k: [r[k] for r in rows] for k in rows[0]})
        write_manifest(table, str(out / f"{split}.parquet"))
        summary[split] = len(rows)
    (out / "verbs.json").write_text(json.dumps(list(VERBS), indent=1) + "\n")
    (out / "nouns.json").write_text(json.dumps(list(NOUNS), indent=1) + "\n")
    return summary
