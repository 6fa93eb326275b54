"""The curation report's pieces on synthetic shards, without Ray: the decontamination histogram draws
only non-empty bins on an integer count axis, contact sheets are a seeded random sample of each
cluster (not its first rows in storage order) with contaminated scenes marked, and the size plot of
a few clusters is one labelled bar per cluster."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation import report, shards
from curation.pipeline import Layout
from curation.retrieval import ClusterTable


def _assignments(root: str, n_per_shard: int = 20, n_shards: int = 3) -> Layout:
    """Pool assignment shards of one cluster (0) and a second one (1); every 7th scene contaminated."""
    layout = Layout(root)
    for s in range(n_shards):
        idx = np.arange(s * n_per_shard, (s + 1) * n_per_shard)
        shards.write_shard(pa.table({
            "uri": [f"v{i}.mp4" for i in idx], "start_frame": idx * 10, "end_frame": idx * 10 + 10,
            "cluster_id": (idx % 4 == 3).astype(np.int64), "val_sim": np.where(idx % 7 == 0, 0.9, 0.1),
            "val_uri": ["val0.mp4"] * len(idx), "contaminated": idx % 7 == 0,
        }), shards.shard_uri(layout.assignments("yt1b"), s))
    return layout


def test_histogram_draws_only_filled_bins_on_an_integer_axis():
    hist = np.zeros(len(report.SIM_BINS) - 1, np.int64)
    hist[[55, 56, 80]] = [3, 7, 1]
    fig = report.val_similarity_figure(hist, threshold=0.49)
    ax = fig.axes[0]
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == [1, 3, 7]  # empty bins draw nothing (no band across [-1, 1])
    assert ax.get_yscale() == "linear"
    ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
    assert all(float(t).is_integer() for t in ticks)  # scene counts, never "6x10^-1 scenes"
    assert ax.get_xlim()[0] > 0 and "1 of 11 scenes above the threshold" in ax.get_title()
    big = report.val_similarity_figure(hist * 1000, threshold=0.49).axes[0]
    assert big.get_yscale() == "log" and big.get_ylim()[0] >= 0.5  # a log axis starts at one scene


def test_contact_sheet_sample_is_seeded_random_across_the_cluster_and_marks_contamination(tmp_path):
    layout = _assignments(str(tmp_path))
    first = report.scan_assignments(layout, {0, 1}, per_cluster=6, seed=0)
    again = report.scan_assignments(layout, {0, 1}, per_cluster=6, seed=0)
    other = report.scan_assignments(layout, {0, 1}, per_cluster=6, seed=1)
    picked = [t.uri for t in first.sampled[0]]
    storage_order = [f"v{i}.mp4" for i in range(60) if i % 4 != 3][:6]
    assert len(picked) == 6 and picked != storage_order
    assert picked == [t.uri for t in again.sampled[0]] and picked != [t.uri for t in other.sampled[0]]
    assert len({int(u[1:-4]) // 20 for u in picked}) > 1  # drawn from more than the first shard
    everything = report.scan_assignments(layout, {0}, per_cluster=100, seed=0).sampled[0]
    marked = {t.uri for t in everything if t.mark}
    assert marked == {f"v{i}.mp4" for i in range(60) if i % 7 == 0 and i % 4 != 3}
    assert all(t.mark.startswith("contam 0.90") and t.color == report.CONTAMINATED for t in everything if t.mark)
    assert first.matched_val == {"val0.mp4": 9} and first.hist.sum() == 60


def test_few_clusters_get_one_labelled_bar_each():
    table = ClusterTable(hits={"a": np.array([2, 0, 1])}, sizes=np.array([5, 9, 3]), clean_sizes=np.array([4, 9, 3]),
                         weight=np.array([0.6, 0.0, 0.4]), retained=np.array([True, False, True]))
    ax = report.cluster_size_figure(table).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["#1", "#0", "#2"]  # largest first
    assert sorted(t.get_text() for t in ax.texts) == ["0 hits", "1 hits", "2 hits"]
