"""Pictures of post-training, drawn on rank 0 after each validation and logged as MLflow artifacts.

- ``pictures/l1_curves.png``: the held-out 1-step and 2-step rollout L1 over training, with the two
  baselines the quality check compares against (copy the last frame, the same predictor fed shuffled
  actions). Redrawn at every validation, so the artifact always shows the run so far.
- ``pictures/step_<N>/<episode>.gif``: a few held-out episodes from their start, sampled at the
  clip rate, the frame on the left and, beside it, the state (xyz, gripper), the action (delta xyz,
  delta gripper) and the 1-step L1 of the predictor, of copying and of shuffled actions at each
  frame, with a cursor at the frame shown. Watching the L1 curve against the frames shows where the
  predictor fails (contacts, fast moves) and whether it uses the actions at all.

The traces come from :func:`train.ac_loss.next_frame_errors` inside validation (every rank runs the
model there, so sharded predictors stay in step); drawing needs no model. Matplotlib's object API
(Agg, no pyplot state) draws each GIF's traces once; per frame only the picture and the cursor change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

CURVES_FILE = "l1_curves.png"
GIF_FRAME_MS = 320  # one clip frame at 3.125 fps (4 fps sampling of 12.5 Hz) is 320 ms
CURSOR = (220, 40, 40)
PANEL_PX = 360  # height of a GIF
PALETTE = 128  # colours
ERROR_STYLES = {"predictor": ("tab:blue", "-"), "copy": ("tab:gray", "--"), "shuffled": ("tab:orange", ":")}


@dataclass
class EpisodeTrace:
    """One held-out episode as a GIF shows it: ``frames`` uint8 ``[n, H, W, 3]`` at the clip rate,
    ``states [n, 7]``, ``actions [n - 1, 7]`` and per-frame 1-step L1 ``errors[name] [n - 1]``
    (``errors[name][t]`` scores the prediction of frame ``t + 1``)."""

    episode_id: str
    frames: np.ndarray
    states: np.ndarray
    actions: np.ndarray
    errors: dict[str, np.ndarray]


def curves_figure(history: dict[int, dict[str, float]]) -> Figure:
    """Held-out L1 per validation step: the predictor's against both baselines, 1-step and 2-step."""
    steps = sorted(history)
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    for ax, horizon in zip(fig.subplots(1, 2), ("1step", "2step"), strict=True):
        for name, key in (("predictor", f"val_l1_{horizon}"), ("copy", f"val_copy_l1_{horizon}"),
                          ("shuffled", f"val_shuffled_l1_{horizon}")):
            color, style = ERROR_STYLES[name]
            ax.plot(steps, [history[s][key] for s in steps], style, color=color, marker="o", ms=3,
                    label={"copy": "copy last frame", "shuffled": "shuffled actions"}.get(name, name))
        ax.set(title=f"held-out {horizon.replace('step', '-step')} rollout L1", xlabel="step", ylabel="L1")
        ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _trace_axes(fig: Figure, trace: EpisodeTrace) -> tuple[Axes, list[Axes]]:
    grid = fig.add_gridspec(3, 2, width_ratios=(1.0, 1.35))
    image_ax = fig.add_subplot(grid[:, 0])
    image_ax.set_axis_off()
    image_ax.set_title(trace.episode_id, fontsize=9)
    plots = [fig.add_subplot(grid[row, 1]) for row in range(3)]
    t = np.arange(len(trace.states))
    state, action = plots[0], plots[1]
    for i, (axis, color) in enumerate(zip("xyz", ("tab:red", "tab:green", "tab:blue"), strict=True)):
        state.plot(t, trace.states[:, i], color=color, lw=1.2, label=axis)
        action.plot(t[:-1] + 0.5, 100 * trace.actions[:, i], color=color, lw=1.2, label=f"d{axis}")
    state.plot(t, trace.states[:, 6], color="k", lw=1.0, ls="--", label="gripper")
    action.plot(t[:-1] + 0.5, 100 * trace.actions[:, 6], color="k", lw=1.0, ls="--", label="d grip")
    state.set_ylabel("state (m, 0-1)", fontsize=8)
    action.set_ylabel("action (cm, x100)", fontsize=8)
    for name, values in trace.errors.items():
        color, style = ERROR_STYLES[name]
        plots[2].plot(t[1:], values, style, color=color, lw=1.2, label=name)
    plots[2].set_ylabel("1-step L1", fontsize=8)
    plots[2].set_xlabel("clip frame", fontsize=8)
    for ax in plots:
        ax.set_xlim(0, len(t) - 1)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper right", ncols=4)
    return image_ax, plots


def _pixel_box(ax: Axes, height: int) -> tuple[int, int, int, int]:
    """An axes' (left, top, right, bottom) in image pixels (display y runs up, image rows down)."""
    x0, y0, x1, y1 = ax.get_window_extent().extents
    return round(x0), round(height - y1), round(x1), round(height - y0)


def episode_gif(trace: EpisodeTrace, path: Path) -> Path:
    """The episode's frames beside its traces, a cursor on the frame shown, as a looping GIF."""
    fig = Figure(figsize=(9.6, 3.6), dpi=PANEL_PX / 3.6, layout="constrained")
    image_ax, plots = _trace_axes(fig, trace)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    background = np.asarray(canvas.buffer_rgba())[..., :3]
    height = background.shape[0]
    left, top, right, bottom = _pixel_box(image_ax, height)
    side = min(right - left, bottom - top)
    boxes = [_pixel_box(ax, height) for ax in plots]
    # One palette for the whole GIF (the traces and a sample of the frames): quantizing each frame on
    # its own costs ~0.3 s a frame, mapping to a fixed palette a few ms.
    colours = np.concatenate([background.reshape(-1, 3), trace.frames[::4].reshape(-1, 3), np.full((256, 3), CURSOR)])
    palette = Image.fromarray(colours[None].astype(np.uint8)).quantize(colors=PALETTE)
    pictures = []
    for t, frame in enumerate(trace.frames):
        canvas_image = Image.fromarray(background.copy())
        canvas_image.paste(Image.fromarray(frame).resize((side, side)), (left, top + (bottom - top - side) // 2))
        draw = ImageDraw.Draw(canvas_image)
        for ax, (_, box_top, _, box_bottom) in zip(plots, boxes, strict=True):
            x = round(ax.transData.transform((t, 0.0))[0])
            draw.line([(x, box_top), (x, box_bottom)], fill=CURSOR, width=2)
        pictures.append(canvas_image.quantize(palette=palette, dither=Image.Dither.NONE))
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=GIF_FRAME_MS, loop=0)
    return path


def draw(history: dict[int, dict[str, float]], traces: list[EpisodeTrace], step: int, out: Path) -> list[Path]:
    """Every picture of one validation under ``out`` (paths relative to it name the artifacts)."""
    curves = out / CURVES_FILE
    out.mkdir(parents=True, exist_ok=True)
    curves_figure(history).savefig(curves, dpi=110)
    return [curves] + [episode_gif(trace, out / f"step_{step:06d}" / f"{trace.episode_id}.gif") for trace in traces]
