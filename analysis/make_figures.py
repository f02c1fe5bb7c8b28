"""Figures 2 and 4 (accuracy across the four columns, ours beside the paper's) and what FlexPool learned.

    python -m analysis.make_figures                      # results/runs -> results/figures/
    python -m analysis.make_figures --profile smoke --out /tmp/figures

Writes, as PNG and PDF:
  figure2 / figure4: per dataset, our mean test accuracy with error bars over seeds and the paper's values
      (Table 1 / Table 2), as trend lines over AvgPool -> FlexPool -> +Reg -> +Dropout;
  flexpool-<table>-<dataset>: the learned FlexPool weights from the run records, scaled by H*W so that 1 is
      plain average pooling (its initial value): per FlexPool column the mean over channels (averaged over
      seeds), a few single channels (one seed: channel k of two seeds is not the same feature), the SAC heads'
      channel means (Table 2) and a histogram of per-channel weight sums, which Eq. 2 pulls towards 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure  # the object API needs no pyplot and no display: works headless

from analysis import collect
from analysis.make_tables import DATASET_LABELS, DATASET_ORDER, SPREADS, load_summary, output_parser
from repro.experiments import COLUMN_LABELS, COLUMNS, TABLES
from repro.records import atomic_write

DPI = 100
TREND_SIZE = (10.0, 7.5)  # inches: 1000 x 750 pixels at DPI
PANEL_SIZE = (2.6, 2.4)  # inches per heatmap panel
FIGURE_NAMES = {"table1": "figure2", "table2": "figure4"}
SHORT_LABELS = ["AvgPool", "FlexPool", "+ Reg", "+ Reg\n+ Dropout"]
FLEX_COLUMNS = [c for c in COLUMNS if c != "avgpool"]
MAIN_POOL, HEAD_POOLS = "pool", ("heads.0.pool", "heads.1.pool")
SINGLE_CHANNELS = 3


def trend_figure(summary: pd.DataFrame, table: str, spread: str) -> Figure:
    fig = Figure(figsize=TREND_SIZE, dpi=DPI, layout="constrained")
    x = np.arange(len(COLUMNS))
    for ax, d in zip(fig.subplots(2, 2).flat, DATASET_ORDER):
        cells = summary[(summary["table"] == table) & (summary["dataset"] == d)].set_index("column").loc[list(COLUMNS)]
        ax.plot(x, cells["paper"], "s--", color="0.5", label="paper")
        has = (cells["n"] > 0).to_numpy()
        if has.any():
            ax.errorbar(x[has], cells["mean"][has], yerr=cells[spread][has].fillna(0), fmt="o-", capsize=4,
                        color="C0", label=f"ours (mean ± {spread})")
            for xi, (mean, n) in zip(x[has], cells[["mean", "n"]][has].itertuples(index=False)):
                ax.annotate(f"n={n}", (xi, mean), textcoords="offset points", xytext=(6, -12), fontsize=7)
        else:
            ax.text(0.5, 0.08, "no runs yet", transform=ax.transAxes, ha="center", color="C3")
        ax.set_xticks(x, SHORT_LABELS, fontsize=8)
        ax.set_title(DATASET_LABELS[d] + (" (paper: ImageNet)" if d == "tiny_imagenet" else ""))
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    title = "Figure 2: FlexPooling (Table 1)" if table == "table1" else "Figure 4: FlexPooling with SAC (Table 2)"
    fig.suptitle(f"{title}; error bars: {SPREADS[spread]}", fontsize=10)
    return fig


def _scaled(weights) -> np.ndarray:
    """Weights times H*W: 1 everywhere is global average pooling, FlexPool's initial value."""
    w = np.asarray(weights, dtype=float)
    return w * w.shape[-1] * w.shape[-2]


def flexpool_panels(cell_runs: pd.DataFrame) -> list[tuple[str, object]]:
    """(title, data) panels for one cell: arrays become heatmaps, a ('sums', list) entry a histogram."""
    has_weights = [MAIN_POOL in f for f in cell_runs["flexpool"]]
    runs = cell_runs[has_weights].sort_values("seed") if any(has_weights) else cell_runs.iloc[0:0]
    if runs.empty:
        return []
    shape = runs["flexpool"].iloc[0][MAIN_POOL]["shape"]
    same = [f for f in runs["flexpool"] if f[MAIN_POOL]["shape"] == shape]
    panels = [(f"channel mean ({len(same)} seeds)", _scaled([f[MAIN_POOL]["channel_mean"] for f in same]).mean(0))]
    first = same[0][MAIN_POOL]
    for k, channel in enumerate(first.get("channels", [])[:SINGLE_CHANNELS]):
        panels.append((f"channel {k} (seed {runs['seed'].iloc[0]})", _scaled(channel)))
    for head in HEAD_POOLS:
        maps = [f[head]["channel_mean"] for f in same if head in f]
        if maps:
            panels.append((f"SAC {head} channel mean", _scaled(maps).mean(0)))
    panels.append(("sums", [s for f in same for s in f[MAIN_POOL].get("sums", [])]))
    return panels


def heatmap(ax, fig, data: np.ndarray, title: str) -> None:
    # Diverging around 1 (= average pooling): red pixels count more than in AvgPool, blue less.
    spread = max(float(np.abs(data - 1).max()), 1e-6)
    image = ax.imshow(data, cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=1, vmin=1 - spread, vmax=1 + spread))
    if data.size <= 64:  # ResNet20's last stage is 8x8: small enough to print the values
        for (i, j), v in np.ndenumerate(data):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=5)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(image, ax=ax, shrink=0.8)


def flexpool_figure(runs: pd.DataFrame, table: str, dataset: str) -> Figure | None:
    """One row per FlexPool column with weights in its records; None when no record holds any."""
    rows = [(c, flexpool_panels(runs[(runs["table"] == table) & (runs["dataset"] == dataset)
                                     & (runs["column"] == c)])) for c in FLEX_COLUMNS]
    rows = [(c, panels) for c, panels in rows if panels]
    if not rows:
        return None
    ncols = max(len(panels) for _, panels in rows)
    fig = Figure(figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * len(rows) + 0.5), dpi=DPI, layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), ncols, squeeze=False))
    for (column, panels), ax_row in zip(rows, axes):
        for ax, (title, data) in zip(ax_row, panels):
            if title == "sums":
                ax.hist(data, bins=20, color="C0")
                ax.axvline(1, color="C3", linestyle="--")
                ax.set_title("per-channel weight sum\n(Eq. 2 pulls to 1)", fontsize=8)
            else:
                heatmap(ax, fig, data, title)
        for ax in ax_row[len(panels):]:
            ax.axis("off")
        ax_row[0].set_ylabel(COLUMN_LABELS[column], fontsize=9)
    fig.suptitle(f"Learned FlexPool weights x H*W (1 = average pooling): {DATASET_LABELS[dataset]}, "
                 f"{table.replace('table', 'Table ')}", fontsize=10)
    return fig


def save(fig: Figure, out: Path, stem: str) -> list[Path]:
    """PNG and PDF, each written then renamed so a reader never opens half a file."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.{fmt}" for fmt in ("png", "pdf")]
    for path in paths:
        atomic_write(path, lambda f, fmt=path.suffix[1:]: fig.savefig(f, format=fmt))
    return paths


def parse_args(argv=None):
    parser = output_parser("python -m analysis.make_figures", __doc__, "results/figures")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    runs, _, _, summary = load_summary(args)
    written = []
    for table in TABLES:
        written += save(trend_figure(summary, table, args.spread), Path(args.out), FIGURE_NAMES[table])
        for dataset in DATASET_ORDER:
            fig = flexpool_figure(runs, table, dataset)
            if fig is not None:
                written += save(fig, Path(args.out), f"flexpool-{table}-{dataset}")
    if runs.empty:
        print(f"note: no completed test runs of profile {args.profile!r}: figures show the paper only",
              file=sys.stderr)
    print(f"wrote {len(written)} files to {args.out}/", file=sys.stderr)


if __name__ == "__main__":
    collect.run_cli(main)
