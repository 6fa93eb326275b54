"""The curation report: Table-11-style statistics, plots, contact sheets and one HTML page.

What a person checks after a build: which stages this run reused or re-ran and why, how many scenes
each stage kept and why the rest went (counts by quarantine reason), the paper's Table 11 for this
pool (clusters and scenes retrieved per target, retrieval weights), the same counts per source
dataset, the cluster sizes of retained vs rejected clusters, how close pool scenes came to target val
videos (with the decontamination threshold), and what retained and rejected clusters actually look
like: middle frames sampled at random across each cluster (seeded by ``report.seed``), contaminated
scenes and a sample of the quarantine marked, so an off-target scene inside a retained cluster shows
up wherever it is stored. The page links the resolved config and the MLflow run.

Reading the assignment shards is done shard by shard (histograms and counts accumulate, only the few
sampled rows are kept), so the driver's memory does not grow with the pool.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from matplotlib.figure import Figure  # the OO API renders with Agg, no pyplot/backend state
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

from core.config import to_dict
from core.redact import redact
from curation import shards
from curation.config import POOL_SOURCE, CurationConfig
from curation.frames import middle_frame, probe, read_middle_frames
from curation.retrieval import ClusterTable
from pipelines.manifest import read_manifest
from pipelines.quarantine import SampleError

if TYPE_CHECKING:
    from curation.pipeline import Layout

SIM_BINS = np.linspace(-1.0, 1.0, 101)  # fixed bins, so shard histograms add up
LOG_COUNTS_ABOVE = 1000  # a histogram bin above this many scenes switches the count axis to log
FEW_CLUSTERS = 40  # up to this many clusters the size plot is one labelled bar per cluster
# Matplotlib's tab10 colours as hex, which the plots, the contact sheet (PIL) and the HTML all read.
CONTAMINATED, QUARANTINED, RETAINED, REJECTED, CLEAN = "#d62728", "#ff7f0e", "#2ca02c", "#7f7f7f", "#1f77b4"


@dataclass
class TrackedRun:
    """The MLflow run a build was tracked in, for the report's link."""

    run_id: str
    experiment: str
    tracking_uri: str
    open_hint: str  # the command that opens the MLflow UI on a local store (core.tracking.ui_hint)

    def url(self) -> str:
        """The run's page: on the tracking server, or on the local UI that ``open_hint`` starts (port 5000)."""
        base = self.tracking_uri if self.tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
        return f"{base.rstrip('/')}/#/runs/{self.run_id}"  # the MLflow UI resolves the experiment itself


@dataclass
class Thumb:
    """One contact-sheet frame: which video and frame, and the mark it carries ("" for none)."""

    uri: str
    frame: int
    mark: str = ""
    color: str = ""


@dataclass
class Scan:
    """What one pass over the pool assignments gathers for the report."""

    hist: np.ndarray
    sampled: dict[int, list[Thumb]]
    matched_val: Counter[str] = field(default_factory=Counter)  # contaminated scenes per nearest val uri


def quarantine_counts(dirs: list[str]) -> dict[str, int]:
    """``"stage/reason" -> count`` over the quarantine shards in ``dirs``."""
    counts: Counter[str] = Counter()
    for d in dirs:
        if shards.finished(d):
            table = shards.read_stage(d, ["stage", "reason"])
            counts.update(f"{s}/{r}" for s, r in zip(table["stage"].to_pylist(), table["reason"].to_pylist()))
    return dict(sorted(counts.items()))


def table11(cfg: CurationConfig, table: ClusterTable, k: int, pool_scenes: int) -> list[dict[str, Any]]:
    """Rows of the paper's Table 11 for this build: per target, the retained clusters it hit and the
    curated scenes in them (rows overlap, as in the paper's "includes duplicates")."""
    rows: list[dict[str, Any]] = [{"target": "Uncurated pool", "clusters": k, "scenes": pool_scenes, "weight": None}]
    for name, hits in table.hits.items():
        mask = (hits > 0) & table.retained
        rows.append({"target": name, "clusters": int(mask.sum()), "scenes": int(table.clean_sizes[mask].sum()),
                     "weight": cfg.target_datasets()[name].weight, "videos": int(hits.sum())})
    rows.append({"target": "Final curated", "clusters": int(table.retained.sum()),
                 "scenes": int(table.clean_sizes[table.retained].sum()), "weight": None})
    return rows


def _rows(stage_dir: str) -> int:
    return sum(shards.shard_rows(u) for u in shards.finished(stage_dir).values())


def per_source(cfg: CurationConfig, layout: Layout, table: ClusterTable, counts: dict[str, int],
               matched_val: Counter[str]) -> list[dict[str, Any]]:
    """One row per source dataset and split: what went in, what was embedded or quarantined, and what
    it did: the pool's kept fraction, a target train set's clusters hit, a val set's matched scenes."""
    embedded = counts["scenes_embedded"]
    rows: list[dict[str, Any]] = [{
        "source": POOL_SOURCE, "role": "pool", "videos": counts["pool_videos"], "scenes": counts["scenes"],
        "embedded": embedded,
        "quarantined": _rows(layout.quarantine("scenes")) + _rows(layout.quarantine("embed", POOL_SOURCE)),
        "contaminated": counts["scenes_contaminated"], "curated": counts["scenes_curated"],
        "kept": f"{counts['scenes_curated'] / max(embedded, 1):.0%}"}]
    for name, target in cfg.target_datasets().items():
        for split, uri in (("train", target.train), ("val", target.val)):
            if not uri:
                continue
            row: dict[str, Any] = {"source": name, "role": f"target {split}",
                                   "embedded": _rows(layout.embeddings(name, split)),
                                   "quarantined": _rows(layout.quarantine("embed", name, split))}
            row["videos"] = row["embedded"] + row["quarantined"]
            if split == "train":
                hits = table.hits[name]
                row["clusters hit"] = int((hits > 0).sum())
                row["retained clusters hit"] = int(((hits > 0) & table.retained).sum())
            else:
                val_uris = set(shards.read_stage(layout.embeddings(name, "val"), ["uri"])["uri"].to_pylist()
                               if shards.finished(layout.embeddings(name, "val")) else [])
                row["pool scenes matched"] = sum(n for u, n in matched_val.items() if u in val_uris)
            rows.append(row)
    return rows


def pick_clusters(table: ClusterTable, n: int) -> tuple[list[int], list[int]]:
    """The ``n`` largest retained and the ``n`` largest rejected (non-empty) clusters."""
    order = np.argsort(-table.sizes, kind="stable")
    retained = [int(c) for c in order if table.retained[c]][:n]
    rejected = [int(c) for c in order if not table.retained[c] and table.sizes[c] > 0][:n]
    return retained, rejected


def scan_assignments(layout: Layout, wanted: set[int], per_cluster: int, seed: int) -> Scan:
    """One pass over the pool assignment shards: the val-similarity histogram, the contaminated scenes
    per nearest val video, and ``per_cluster`` scenes of each wanted cluster drawn uniformly at random
    (seeded): every scene gets a random key and each cluster keeps its smallest keys, so the sample
    does not depend on how the scenes are stored."""
    rng = np.random.default_rng(seed)
    hist = np.zeros(len(SIM_BINS) - 1, np.int64)
    best: dict[int, list[tuple[float, Thumb]]] = {c: [] for c in wanted}
    matched: Counter[str] = Counter()
    columns = ["uri", "start_frame", "end_frame", "cluster_id", "val_sim", "val_uri", "contaminated"]
    for _, uri in sorted(shards.finished(layout.assignments(POOL_SOURCE)).items()):
        t = shards.read_shard(uri, columns)
        sims = t["val_sim"].to_numpy()
        dirty = t["contaminated"].to_numpy(zero_copy_only=False)
        hist += np.histogram(np.clip(sims, -1, 1), SIM_BINS)[0]
        matched.update(u for u, d in zip(t["val_uri"].to_pylist(), dirty) if d)
        keys = rng.random(t.num_rows)  # drawn for every row, so the stream does not depend on ``wanted``
        for i in np.flatnonzero(np.isin(t["cluster_id"].to_numpy(), list(wanted))):
            thumb = Thumb(t["uri"][i].as_py(), middle_frame(t["start_frame"][i].as_py(), t["end_frame"][i].as_py()),
                          f"contam {sims[i]:.2f}" if dirty[i] else "", CONTAMINATED if dirty[i] else "")
            kept = best[int(t["cluster_id"][i].as_py())]
            kept.append((float(keys[i]), thumb))
            kept.sort(key=lambda item: item[0])
            del kept[per_cluster:]
    return Scan(hist, {c: [thumb for _, thumb in kept] for c, kept in best.items()}, matched)


def sample_quarantine(dirs: list[str], n: int, seed: int, backend: str) -> list[Thumb]:
    """``n`` quarantined (video, reason) pairs drawn at random (seeded), each shown as its video's middle frame and
    marked with its reason (a video that cannot be probed shows as a blank, still marked)."""
    tables = [shards.read_stage(d, ["uri", "reason"]) for d in dirs if shards.finished(d)]
    # One per video and reason: a video with several short scenes would otherwise fill the row.
    records = list(dict.fromkeys((u, r) for t in tables for u, r in zip(t["uri"].to_pylist(), t["reason"].to_pylist())))
    if not records:
        return []
    picked = np.random.default_rng(seed).choice(len(records), size=min(n, len(records)), replace=False)
    thumbs = []
    for i in sorted(picked):
        uri, reason = records[i]
        try:
            num_frames, _ = probe(uri, backend)
        except SampleError:
            num_frames = 0
        thumbs.append(Thumb(uri, middle_frame(0, num_frames), reason, QUARANTINED))
    return thumbs


def cluster_size_figure(table: ClusterTable) -> Figure:
    """Few clusters: one bar per cluster (clean and contaminated scenes stacked, retained or not, its
    target hits on top). Many: the rank plot and the size histogram of retained vs rejected clusters."""
    k = len(table.sizes)
    if k <= FEW_CLUSTERS:
        fig = Figure(figsize=(max(6.0, 0.45 * k + 2), 4))
        ax = fig.subplots()
        order = np.argsort(-table.sizes, kind="stable")
        x = np.arange(k)
        clean, dirty = table.clean_sizes[order], (table.sizes - table.clean_sizes)[order]
        colors = [RETAINED if table.retained[c] else REJECTED for c in order]
        ax.bar(x, clean, color=colors)
        ax.bar(x, dirty, bottom=clean, color=CONTAMINATED)
        for xi, c in zip(x, order):
            ax.text(xi, table.sizes[c], f"{table.total_hits[c]} hits", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [f"#{c}" for c in order], rotation=90 if k > 20 else 0)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        handles = [Patch(color=RETAINED, label=f"retained ({int(table.retained.sum())})"),
                   Patch(color=REJECTED, label=f"rejected ({int((~table.retained).sum())})"),
                   Patch(color=CONTAMINATED, label="contaminated scenes")]
        ax.set(xlabel="cluster (largest first)", ylabel="pool scenes", title="clusters: size and target hits")
        ax.margins(y=0.15)
        ax.legend(handles=handles)
        fig.tight_layout()
        return fig
    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for mask, label, color in ((table.retained, "retained", RETAINED), (~table.retained, "rejected", REJECTED)):
        sizes = np.sort(table.sizes[mask & (table.sizes > 0)])[::-1]
        ax1.plot(np.arange(1, len(sizes) + 1), sizes, ".", ms=6, label=f"{label} ({len(sizes)})", color=color)
        ax2.hist(sizes, bins=30, alpha=0.6, label=label, color=color)
    ax1.set(xscale="log", yscale="log", xlabel="cluster rank", ylabel="scenes in cluster",
            title="cluster sizes (rank order)")
    ax2.set(xlabel="scenes in cluster", ylabel="clusters", title="cluster-size histogram")
    ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    return fig


def val_similarity_figure(hist: np.ndarray, threshold: float) -> Figure:
    """Pool scenes per bin of cosine to the nearest target val video; only non-empty bins are drawn,
    bins above the threshold in the contamination colour. Counts are integers: a linear axis with
    integer ticks, or from ``LOG_COUNTS_ABOVE`` a log axis starting at one scene."""
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    centers = (SIM_BINS[:-1] + SIM_BINS[1:]) / 2
    filled = hist > 0
    colors = np.where(centers > threshold, CONTAMINATED, CLEAN)[filled]
    ax.bar(centers[filled], hist[filled], width=SIM_BINS[1] - SIM_BINS[0], color=colors)
    if hist.max(initial=0) > LOG_COUNTS_ABOVE:
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.8)
    else:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = (centers[filled].min(), centers[filled].max()) if filled.any() else (-1.0, 1.0)
    title = "decontamination"
    if np.isfinite(threshold):
        ax.axvline(threshold, color=CONTAMINATED, ls="--", label=f"threshold {threshold:g}")
        lo, hi = min(lo, threshold), max(hi, threshold)
        title += f": {int(hist[centers > threshold].sum())} of {int(hist.sum())} scenes above the threshold"
        ax.legend()
    ax.set_xlim(max(-1.0, lo - 0.05), min(1.0, hi + 0.05))
    ax.set(xlabel="cosine to the nearest target val video", ylabel="pool scenes", title=title)
    fig.tight_layout()
    return fig


def contact_sheet(rows: list[tuple[str, list[Thumb]]], thumb: int, path: Path, backend: str) -> None:
    """One row of middle-frame thumbnails per caption; a marked thumbnail gets a coloured frame and its
    mark written under it, a frame that cannot be read stays grey."""
    label_w, pad, tag_h = 280, 6, 16
    caption_font, tag_font = ImageFont.load_default(size=14), ImageFont.load_default(size=11)
    cols = max((len(items) for _, items in rows), default=1)
    row_h = thumb + tag_h + pad
    sheet = Image.new("RGB", (label_w + cols * (thumb + pad), max(1, len(rows)) * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (caption, items) in enumerate(rows):
        y = r * row_h
        draw.text((4, y + thumb // 2 - 8), caption, fill="black", font=caption_font)
        if not items:
            continue
        frames, errors = read_middle_frames([t.uri for t in items], [t.frame for t in items], thumb, backend)
        for c, (item, frame, error) in enumerate(zip(items, frames, errors)):
            x = label_w + c * (thumb + pad)
            if error is None:
                sheet.paste(Image.fromarray(frame), (x, y))
            else:
                draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill="#dddddd")
            if item.mark:
                draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), outline=item.color, width=4)
                draw.rectangle((x, y + thumb, x + thumb - 1, y + thumb + tag_h - 1), fill=item.color)
                draw.text((x + 3, y + thumb + 1), item.mark, fill="white", font=tag_font)
    sheet.save(path)


def _cell(value: Any) -> str:
    """Numbers right-aligned (the table default), text left-aligned."""
    if value is None:
        return "<td></td>"
    text = "" if isinstance(value, (int, float)) else ' class="text"'
    return f"<td{text}>{html.escape(str(value))}</td>"


def _html_table(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(_cell(row.get(c)) for c in cols) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _tracking_html(tracked: dict[str, str] | None) -> str:
    if not tracked:
        return "MLflow: tracking was off for this build."
    run = TrackedRun(**tracked)
    hint = "" if run.tracking_uri.startswith(("http://", "https://")) else (
        f" (start the UI first: <code>{html.escape(run.open_hint)}</code>)")
    return (f'MLflow run <a href="{html.escape(run.url())}"><code>{html.escape(run.run_id)}</code></a> in experiment '
            f"<b>{html.escape(run.experiment)}</b> at <code>{html.escape(run.tracking_uri)}</code>{hint}.")


def write_html(stats: dict[str, Any], path: Path) -> None:
    counts = [{"count": k, "value": v} for k, v in stats["counts"].items()]
    quarantine = [{"stage/reason": k, "items": v} for k, v in stats["quarantine"].items()]
    legend = (f'<span style="color:{CONTAMINATED}">red frame</span>: contaminated (its cosine to the nearest '
              f'target val video); <span style="color:{QUARANTINED}">orange frame</span>: quarantined (its '
              "reason); the frames of each cluster are a random sample "
              f"(report.seed = {stats['report_seed']}), not its first scenes.")
    path.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>Curation report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}}td.text{{text-align:left}}
img{{max-width:100%}}</style></head><body>
<h1>Curated pool: {html.escape(stats["name"])}</h1>
<p>Embedder <b>{html.escape(stats["embedder"])}</b>, k = {stats["kmeans"]["k"]}
({html.escape(stats["kmeans"]["backend"])}), decontamination threshold {stats["decontam_threshold"]}.</p>
<p>Resolved config: <a href="config.yaml">config.yaml</a>. {_tracking_html(stats["mlflow"])}</p>
<h2>Stages (reused or re-run, and why)</h2>{_html_table(stats["stages"])}
<h2>Retrieval (paper Table 11 for this pool)</h2>{_html_table(stats["table11"])}
<h2>Per source</h2>{_html_table(stats["per_source"])}
<h2>Stage counts</h2>{_html_table(counts)}
<h2>Quarantine</h2>{_html_table(quarantine) if quarantine else "<p>nothing quarantined</p>"}
<h2>Cluster sizes</h2><img src="cluster_sizes.png">
<h2>Decontamination</h2><img src="val_similarity.png">
<h2>Largest retained and rejected clusters (middle frames, sampled)</h2><p>{legend}</p><img src="contact_sheet.png">
</body></html>""")


def build_report(cfg: CurationConfig, layout: Layout, table: ClusterTable, km: dict[str, Any], threshold: float,
                 out: Path, stages: list[dict[str, Any]], tracked: TrackedRun | None = None) -> dict[str, Any]:
    """Write the report files into ``out`` and return the statistics (also logged to MLflow)."""
    pool_rows = _rows(layout.embeddings(POOL_SOURCE))
    quarantine_dirs = [layout.quarantine("scenes"), layout.quarantine("embed", POOL_SOURCE)]
    quarantine_dirs += [layout.quarantine("embed", n, s) for n, t in cfg.target_datasets().items()
                        for s, u in (("train", t.train), ("val", t.val)) if u]
    hit = table.total_hits >= cfg.retrieval.min_hits
    counts = {
        "pool_videos": read_manifest(cfg.pool).num_rows,
        "scenes": _rows(layout.dir("scenes")),
        "scenes_embedded": pool_rows,
        "clusters": km["k"],
        "clusters_hit": int(hit.sum()),
        "clusters_retained": int(table.retained.sum()),
        "scenes_contaminated": int((table.sizes - table.clean_sizes).sum()),
        "scenes_contaminated_in_hit_clusters": int((table.sizes - table.clean_sizes)[hit].sum()),
        "scenes_curated": int(table.clean_sizes[table.retained].sum()),
    }
    retained, rejected = pick_clusters(table, cfg.report.clusters_shown)
    scan = scan_assignments(layout, set(retained) | set(rejected), cfg.report.frames_per_cluster, cfg.report.seed)
    stats: dict[str, Any] = {
        "name": cfg.name, "embedder": cfg.embedder.kind, "kmeans": km, "decontam_threshold": threshold,
        "counts": counts, "quarantine": quarantine_counts(quarantine_dirs), "stages": stages,
        "table11": table11(cfg, table, km["k"], pool_rows),
        "per_source": per_source(cfg, layout, table, counts, scan.matched_val),
        "weight_sum": float(table.weight[table.retained].sum()),
        "mlflow": vars(tracked) if tracked else None, "report_seed": cfg.report.seed,
    }
    cluster_size_figure(table).savefig(out / "cluster_sizes.png", dpi=110)
    val_similarity_figure(scan.hist, threshold).savefig(out / "val_similarity.png", dpi=110)
    sheet_rows = [(f"retained #{c}: {table.sizes[c]} scenes, {table.total_hits[c]} hits", scan.sampled[c])
                  for c in retained]
    sheet_rows += [(f"rejected #{c}: {table.sizes[c]} scenes", scan.sampled[c]) for c in rejected]
    quarantined = sample_quarantine(quarantine_dirs[:2], cfg.report.frames_per_cluster, cfg.report.seed,
                                    cfg.embedder.decode_backend)
    if quarantined:
        sheet_rows.append(("quarantined pool items (sample)", quarantined))
    contact_sheet(sheet_rows, cfg.report.thumb_px, out / "contact_sheet.png", cfg.embedder.decode_backend)
    (out / "table11.json").write_text(json.dumps(stats["table11"], indent=1))
    (out / "config.yaml").write_text(yaml.safe_dump(redact(to_dict(cfg)), sort_keys=False))
    write_html(stats, out / "index.html")
    return stats
