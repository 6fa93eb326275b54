"""The curation report: Table-11-style statistics, plots, a contact sheet and one HTML page.

What a person checks after a build: how many scenes each stage kept and why the rest went (counts
by quarantine reason), the paper's Table 11 for this pool (clusters and scenes retrieved per target,
retrieval weights), the cluster-size distribution of retained vs rejected clusters, how close pool
scenes came to target val videos (with the decontamination threshold), and what the largest retained
and rejected clusters actually look like (middle frames).

Reading the assignment shards is done shard by shard (histograms accumulate, only the few contact-
sheet rows are kept), so the driver's memory does not grow with the pool.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure  # the OO API renders with Agg, no pyplot/backend state
from PIL import Image, ImageDraw

from curation import shards
from curation.config import CurationConfig
from curation.frames import middle_frame, read_middle_frames
from curation.retrieval import ClusterTable
from pipelines.manifest import read_manifest

if TYPE_CHECKING:
    from curation.pipeline import Layout

SIM_BINS = np.linspace(-1.0, 1.0, 101)


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
                     "weight": cfg.targets[name].weight, "videos": int(hits.sum())})
    rows.append({"target": "Final curated", "clusters": int(table.retained.sum()),
                 "scenes": int(table.clean_sizes[table.retained].sum()), "weight": None})
    return rows


def _pick_clusters(table: ClusterTable, n: int) -> tuple[list[int], list[int]]:
    """The ``n`` largest retained and the ``n`` largest rejected (non-empty) clusters."""
    order = np.argsort(-table.sizes, kind="stable")
    retained = [int(c) for c in order if table.retained[c]][:n]
    rejected = [int(c) for c in order if not table.retained[c] and table.sizes[c] > 0][:n]
    return retained, rejected


def scan_assignments(layout: Layout, wanted: set[int], per_cluster: int) -> tuple[np.ndarray, dict[int, list]]:
    """One pass over the pool assignment shards: histogram of val similarity, and up to
    ``per_cluster`` scenes ``(uri, middle frame)`` of each wanted cluster."""
    hist = np.zeros(len(SIM_BINS) - 1, np.int64)
    picked: dict[int, list] = {c: [] for c in wanted}
    for _, uri in sorted(shards.finished(layout.assignments("yt1b")).items()):
        t = shards.read_shard(uri, ["uri", "start_frame", "end_frame", "cluster_id", "val_sim"])
        hist += np.histogram(np.clip(t["val_sim"].to_numpy(), -1, 1), SIM_BINS)[0]
        for u, s, e, c in zip(t["uri"].to_pylist(), t["start_frame"].to_pylist(), t["end_frame"].to_pylist(),
                              t["cluster_id"].to_pylist()):
            if c in picked and len(picked[c]) < per_cluster:
                picked[c].append((u, middle_frame(s, e)))
    return hist, picked


def plot_cluster_sizes(table: ClusterTable, path: Path) -> None:
    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for mask, label, color in ((table.retained, "retained", "tab:green"), (~table.retained, "rejected", "tab:red")):
        sizes = np.sort(table.sizes[mask & (table.sizes > 0)])[::-1]
        ax1.plot(np.arange(1, len(sizes) + 1), sizes, ".", ms=6, label=f"{label} ({len(sizes)})", color=color)
        ax2.hist(sizes, bins=30, alpha=0.6, label=label, color=color)
    ax1.set(xscale="log", yscale="log", xlabel="cluster rank", ylabel="scenes in cluster",
            title="cluster sizes (rank order)")
    ax2.set(xlabel="scenes in cluster", ylabel="clusters", title="cluster-size histogram")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_val_similarity(hist: np.ndarray, threshold: float, path: Path) -> None:
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    centers = (SIM_BINS[:-1] + SIM_BINS[1:]) / 2
    ax.bar(centers, np.maximum(hist, 0.5), width=SIM_BINS[1] - SIM_BINS[0], color="tab:blue")
    if np.isfinite(threshold):
        ax.axvline(threshold, color="tab:red", ls="--", label=f"threshold {threshold:g}")
        ax.legend()
    ax.set(yscale="log", xlabel="cosine to the nearest target val video", ylabel="pool scenes",
           title="decontamination")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def contact_sheet(rows: list[tuple[str, list[tuple[str, int]]]], thumb: int, path: Path, backend: str) -> None:
    """One row of middle-frame thumbnails per cluster, captioned."""
    label_w, cols = 220, max((len(items) for _, items in rows), default=1)
    sheet = Image.new("RGB", (label_w + cols * (thumb + 4), max(1, len(rows)) * (thumb + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (caption, items) in enumerate(rows):
        y = r * (thumb + 4)
        draw.text((4, y + thumb // 2 - 12), caption, fill="black")
        if not items:
            continue
        frames, errors = read_middle_frames([u for u, _ in items], [i for _, i in items], thumb, backend)
        for c, (frame, error) in enumerate(zip(frames, errors)):
            if error is None:
                sheet.paste(Image.fromarray(frame), (label_w + c * (thumb + 4), y))
    sheet.save(path)


def _html_table(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if row.get(c) is None else str(row.get(c)))}</td>"
                                    for c in cols) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html(stats: dict[str, Any], path: Path) -> None:
    counts = [{"count": k, "value": v} for k, v in stats["counts"].items()]
    quarantine = [{"stage/reason": k, "items": v} for k, v in stats["quarantine"].items()]
    path.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>Curation report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>Curated pool: {html.escape(stats["name"])}</h1>
<p>Embedder <b>{html.escape(stats["embedder"])}</b>, k = {stats["kmeans"]["k"]}
({html.escape(stats["kmeans"]["backend"])}), decontamination threshold {stats["decontam_threshold"]}.</p>
<h2>Retrieval (paper Table 11 for this pool)</h2>{_html_table(stats["table11"])}
<h2>Stage counts</h2>{_html_table(counts)}
<h2>Quarantine</h2>{_html_table(quarantine) if quarantine else "<p>nothing quarantined</p>"}
<h2>Cluster sizes</h2><img src="cluster_sizes.png">
<h2>Decontamination</h2><img src="val_similarity.png">
<h2>Largest retained and rejected clusters (middle frames)</h2><img src="contact_sheet.png">
</body></html>""")


def build_report(cfg: CurationConfig, layout: Layout, table: ClusterTable, km: dict[str, Any],
                 threshold: float, out: Path) -> dict[str, Any]:
    """Write the report files into ``out`` and return the statistics (also logged to MLflow)."""
    scene_rows = sum(shards.shard_rows(u) for u in shards.finished(layout.dir("scenes")).values())
    pool_rows = sum(shards.shard_rows(u) for u in shards.finished(layout.embeddings("yt1b")).values())
    quarantine_dirs = [layout.quarantine("scenes"), layout.quarantine("embed", "yt1b")]
    quarantine_dirs += [layout.quarantine("embed", n, s) for n, t in cfg.targets.items()
                        for s, u in (("train", t.train), ("val", t.val)) if u]
    hit = table.total_hits >= cfg.retrieval.min_hits
    counts = {
        "pool_videos": read_manifest(cfg.pool).num_rows,
        "scenes": scene_rows,
        "scenes_embedded": pool_rows,
        "clusters": km["k"],
        "clusters_hit": int(hit.sum()),
        "clusters_retained": int(table.retained.sum()),
        "scenes_contaminated": int((table.sizes - table.clean_sizes).sum()),
        "scenes_contaminated_in_hit_clusters": int((table.sizes - table.clean_sizes)[hit].sum()),
        "scenes_curated": int(table.clean_sizes[table.retained].sum()),
    }
    stats: dict[str, Any] = {
        "name": cfg.name, "embedder": cfg.embedder.kind, "kmeans": km, "decontam_threshold": threshold,
        "counts": counts, "quarantine": quarantine_counts(quarantine_dirs),
        "table11": table11(cfg, table, km["k"], pool_rows),
        "weight_sum": float(table.weight[table.retained].sum()),
    }
    retained, rejected = _pick_clusters(table, cfg.report.clusters_shown)
    hist, picked = scan_assignments(layout, set(retained) | set(rejected), cfg.report.frames_per_cluster)
    plot_cluster_sizes(table, out / "cluster_sizes.png")
    plot_val_similarity(hist, threshold, out / "val_similarity.png")
    sheet_rows = [(f"retained #{c}: {table.sizes[c]} scenes, {table.total_hits[c]} hits", picked[c]) for c in retained]
    sheet_rows += [(f"rejected #{c}: {table.sizes[c]} scenes", picked[c]) for c in rejected]
    contact_sheet(sheet_rows, cfg.report.thumb_px, out / "contact_sheet.png", cfg.embedder.decode_backend)
    (out / "table11.json").write_text(json.dumps(stats["table11"], indent=1))
    write_html(stats, out / "index.html")
    return stats
