"""Figures 2 and 4 (the trend across the four columns, ours beside the paper's) and what FlexPool learned.

    python -m analysis.make_figures                      # results/runs -> results/figures/full/paper/
    python -m analysis.make_figures --profile smoke --recipe both

Writes, as PNG and PDF, to results/figures/<profile>/<recipe>/ (or --out); every title names profile and recipe:
  figure2 / figure4: per dataset, the change in test accuracy from AvgPool to each FlexPool column (Table 1 /
      Table 2) in percentage points, ours (per recipe, paired by seed, with error bars over seeds) beside the
      paper's; the panel title gives each AvgPool level. Gains, not raw accuracies, so that a trend reads even
      when our level is far from the paper's (a short smoke run), and where our gains span over SCALE_RATIO
      times the paper's, the paper's trend on a y axis of its own, 0 level with ours;
  flexpool-<table>-<dataset>[-<recipe>]: the learned FlexPool weights from the run records, scaled by H*W so
      that 1 is plain average pooling (its initial value): per FlexPool column the final pool's mean over
      channels (averaged over seeds), a few single channels (one seed: channel k of two seeds is not the same
      feature), the SAC heads' channel means (Table 2) and a histogram of the final pool's per-channel weight
      sums, which Eq. 2 pulls towards 1, with their mean |sum - 1|.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure  # the object API needs no pyplot and no display: works headless
from matplotlib.ticker import MaxNLocator

from analysis import collect
from analysis.summary import (
    SPREADS,
    cells_of,
    commits,
    counted,
    date_span,
    label,
    load_summary,
    out_dir,
    output_parser,
    profile_text,
)
from repro.config import plural
from repro.datasets import DATASETS, table_datasets
from repro.experiments import COLUMNS, PROFILES, TABLES
from repro.records import atomic_write

DPI = 150  # the heatmaps' in-cell numbers stay legible
TREND_SIZE = (10.0, 7.5)  # inches for two rows of panels: 1500 x 1125 pixels at DPI
PANEL_SIZE = (3.0, 2.8)  # inches per heatmap panel
FIGURE_NAMES = {"table1": "figure2", "table2": "figure4"}
TREND_TITLES = {"table1": "Figure 2: FlexPooling (Table 1)",
                "table2": "Figure 4: FlexPooling with SAC (Table 2)"}
MAIN_POOL, HEAD_POOLS = collect.MAIN_POOL, ("heads.0.pool", "heads.1.pool")
SINGLE_CHANNELS = 3
PAPER_COLOR = "0.45"
# When our mean gains span more than this many times the paper's (a short smoke run), the paper's trend gets a y
# axis of its own: on a shared one it would look flat. Never the other way: a flat trend of ours is a result.
SCALE_RATIO = 4.0
MAX_LABELLED = 64  # heatmaps with at most this many cells (ResNet20's last stage is 8x8) print their values


def gains(cell_runs: pd.DataFrame) -> pd.DataFrame | None:
    """Per column with runs: mean, spread and n of (accuracy - AvgPool accuracy) in percentage points over the
    seeds both have, like the claims' pairing; None without AvgPool runs."""
    acc = cell_runs.pivot_table(index="seed", columns="column", values="accuracy") * 100
    if "avgpool" not in acc:
        return None
    diff = acc.sub(acc["avgpool"], axis=0).reindex(columns=list(COLUMNS))
    out = diff.agg(["mean", "std", "count"]).T
    out["sem"] = out["std"] / out["count"].pow(0.5)
    return out[out["count"] > 0].rename(columns={"count": "n"})


def trend_figure(runs: pd.DataFrame, summary: pd.DataFrame, table: str, spread: str, profile: str,
                 recipes) -> Figure:
    rows = -(-len(table_datasets()) // 2)  # a panel per data set, two in a row
    fig = Figure(figsize=(TREND_SIZE[0], TREND_SIZE[1] * rows / 2), dpi=DPI, layout="constrained")
    panels = fig.subplots(rows, 2).ravel()
    x = np.arange(len(COLUMNS))
    part = runs[runs["table"] == table]
    series = {(r, d): gains(part[(part["recipe"] == r) & (part["dataset"] == d)]) for r in recipes
              for d in table_datasets()}
    series = {key: g for key, g in series.items() if g is not None}
    counts = pd.concat([g["n"] for g in series.values()]).astype(int) if series else pd.Series(dtype=int)
    order = ["paper (published values)", *(f"ours, {r} recipe" for r in recipes)]  # legend order in every figure
    for ax in panels[len(table_datasets()):]:
        ax.axis("off")
    for ax, d in zip(panels, table_datasets()):
        cells = cells_of(summary, table, d)
        paper = cells.loc[recipes[0]].loc[list(COLUMNS), "paper"]
        levels, ours = [], [0.0]
        for i, recipe in enumerate(recipes):
            name = f"{recipe} recipe" if len(recipes) > 1 else "ours"
            if (recipe, d) not in series:
                levels += [f"{name}: no AvgPool runs"] if (part["dataset"] == d).any() else []
                continue
            g = series[(recipe, d)]
            ns = pd.concat([s["n"] for (r, _), s in series.items() if r == recipe]).astype(int)
            seeds = plural(ns.iloc[0], "seed") if ns.nunique() == 1 else "seeds per point at the bottom"
            at = x[[list(COLUMNS).index(c) for c in g.index]]
            ax.errorbar(at, g["mean"], yerr=g[spread].fillna(0), fmt="o-", capsize=4, color=f"C{i}",
                        label=f"ours, {recipe} recipe ({seeds})")
            ours += list(g["mean"])
            if ns.nunique() > 1:  # only then a point needs its own count; at the bottom it covers no data
                for xi, n in zip(at, g["n"].astype(int)):
                    ax.text(xi, 0.03 + 0.07 * i, f"n={n}", transform=ax.get_xaxis_transform(), ha="center",
                            fontsize=7, color=f"C{i}")
            levels.append(f"{name} {cells.loc[(recipe, 'avgpool'), 'mean']:.2f}")
        if not levels:
            ax.text(0.02, 0.96, "no runs yet", transform=ax.transAxes, ha="left", va="top", color="C3")
        paper_gain = paper - paper["avgpool"]
        paper_ax = ax.twinx() if np.ptp(ours) > SCALE_RATIO * np.ptp(paper_gain) else ax
        paper_ax.plot(x, paper_gain, "s--", color=PAPER_COLOR, label=order[0])
        ax.axhline(0, color="0.7", linewidth=0.8)
        ax.set_xticks(x, [c.tick for c in COLUMNS.values()], fontsize=8)
        ax.set_xlim(-0.5, len(COLUMNS) - 0.5)
        ax.margins(y=0.25 if counts.nunique() > 1 else 0.15)  # room for the n= labels under the points
        if paper_ax is not ax:
            paper_ax.set_ylabel("paper: accuracy − AvgPool (pp)", color=PAPER_COLOR)
            paper_ax.tick_params(axis="y", colors=PAPER_COLOR)
            _align_zero(ax, paper_ax)
        paper_name = DATASETS[d].paper_name
        title = label(d) + (f" (paper: {paper_name})" if paper_name else "")
        sep = "\n" if len(recipes) > 1 else ", "  # two recipes' levels do not fit beside the published one
        ax.set_title(f"{title}\nAvgPool accuracy (%): published {paper['avgpool']:.2f}"
                     + (sep + ", ".join(levels) if levels else ""), fontsize=9)
        ax.set_ylabel(("ours: " if paper_ax is not ax else "") + "accuracy − AvgPool (pp)")
        ax.grid(alpha=0.3)
    handles = {label: h for ax in fig.axes for h, label in zip(*ax.get_legend_handles_labels())}
    handles = dict(sorted(handles.items(), key=lambda item: [item[0].startswith(o) for o in order].index(True)))
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=len(handles), fontsize=8)
    bars = (f"points: mean over seeds of each seed's gain; error bars: {SPREADS[spread]} over seeds"
            if (counts > 1).any() else "one seed per point: no error bars")
    fig.suptitle(f"{TREND_TITLES[table]}: test accuracy gained over AvgPool; {profile_text(profile)}, "
                 f"{' and '.join(recipes)} recipe\n{bars}", fontsize=10)
    return fig


def _align_zero(ax, other) -> None:
    """Both y axes' 0 at the same height, so that both trends start from the same AvgPool line."""
    limits = [a.get_ylim() for a in (ax, other)]
    below = max(-low / (high - low) for low, high in limits)  # the share of each axis under 0
    for a, (low, high) in zip((ax, other), limits):
        a.set_ylim(min(low, -below * high / (1 - below)), max(high, -low * (1 - below) / below))


def _scaled(weights) -> np.ndarray:
    """Weights times H*W: 1 everywhere is global average pooling, FlexPool's initial value."""
    w = np.asarray(weights, dtype=float)
    return w * w.shape[-1] * w.shape[-2]


def _size(pool: dict) -> str:
    return "x".join(map(str, pool["shape"][1:]))


def flexpool_panels(cell_runs: pd.DataFrame) -> list[tuple[str, object]]:
    """(title, data) panels for one cell: arrays become heatmaps, the list of weight sums a histogram."""
    runs = cell_runs.loc[[MAIN_POOL in f for f in cell_runs["flexpool"]]].sort_values("seed")
    if runs.empty:
        return []
    first = runs["flexpool"].iloc[0][MAIN_POOL]
    same = [f for f in runs["flexpool"] if f[MAIN_POOL]["shape"] == first["shape"]]
    pool = f"final pool {_size(first)}"
    panels = [(f"{pool}, channel mean\n({plural(len(same), 'seed')})",
               _scaled([f[MAIN_POOL]["channel_mean"] for f in same]).mean(0))]
    for k, channel in enumerate(first.get("channels", [])[:SINGLE_CHANNELS]):
        panels.append((f"{pool}, channel {k}\n(seed {runs['seed'].iloc[0]})", _scaled(channel)))
    for i, head in enumerate(HEAD_POOLS):
        maps = [f[head] for f in same if head in f]
        if maps:
            title = f"SAC head {i + 1} (stage {i + 1}, {_size(maps[0])})\nchannel mean ({plural(len(maps), 'seed')})"
            panels.append((title, _scaled([m["channel_mean"] for m in maps]).mean(0)))
    sums = [s for f in same for s in f[MAIN_POOL].get("sums", [])]
    dev = np.abs(np.asarray(sums) - 1).mean()
    panels.append((f"{pool}: per-channel weight sums\nmean |sum − 1| = {dev:.3f}", sums))
    return panels


def heatmap(ax, fig, data: np.ndarray, title: str) -> None:
    # Diverging around 1 (= average pooling): red pixels count more than in AvgPool, blue less.
    spread = max(float(np.abs(data - 1).max()), 1e-6)
    image = ax.imshow(data, cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=1, vmin=1 - spread, vmax=1 + spread))
    if data.size <= MAX_LABELLED:
        for (i, j), v in np.ndenumerate(data):
            r, g, b, _ = image.cmap(image.norm(v))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # white text on dark cells, black on light ones
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(image, ax=ax, shrink=0.8)


def histogram(ax, sums: list[float], title: str) -> None:
    counts, _, _ = ax.hist(sums, bins=20, color="C0")
    ax.set_ylim(0, counts.max() * 1.3)  # headroom, so that the legend covers no bar
    ax.axvline(1, color="C3", linestyle="--", label="1 (Eq. 2)")
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("sum of a channel's weights", fontsize=8)
    ax.set_ylabel("channels (all seeds)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of channels
    ax.legend(fontsize=7)


def flexpool_figure(runs: pd.DataFrame, table: str, dataset: str, profile: str, recipe: str) -> Figure | None:
    """One row per FlexPool column with weights in its records; None when no record holds any."""
    cells = runs[(runs["recipe"] == recipe) & (runs["table"] == table) & (runs["dataset"] == dataset)]
    # every column but the first, AvgPool, has FlexPool weights to show
    rows = [(c, flexpool_panels(cells[cells["column"] == c])) for c in list(COLUMNS)[1:]]
    rows = [(c, panels) for c, panels in rows if panels]
    if not rows:
        return None
    ncols = max(len(panels) for _, panels in rows)
    fig = Figure(figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * len(rows) + 0.5), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for (column, panels), ax_row in zip(rows, axes):
        for ax, (title, data) in zip(ax_row, panels):
            if isinstance(data, list):
                histogram(ax, data, title)
            else:
                heatmap(ax, fig, data, title)
        for ax in ax_row[len(panels):]:
            ax.axis("off")
        ax_row[0].set_ylabel(COLUMNS[column].label, fontsize=10)
    fig.suptitle(f"Learned FlexPool weights × H·W (1 = average pooling): {label(dataset)}, "
                 f"{table.replace('table', 'Table ')}; {profile_text(profile)}, {recipe} recipe", fontsize=11)
    return fig


def curves(cell_runs: pd.DataFrame) -> pd.DataFrame:
    """Per epoch, mean, std and n over the seeds of the test accuracy (percent) after that epoch; an epoch counts
    only the runs that reached it."""
    per_seed = pd.DataFrame([pd.Series(c, index=range(1, len(c) + 1)) for c in cell_runs["curve"]]) * 100
    return per_seed.agg(["mean", "std", "count"]).T.rename(columns={"count": "n"})


def curves_figure(runs: pd.DataFrame, spread: str, profile: str, recipe: str) -> Figure | None:
    """Test accuracy after each epoch, per column a mean line with a band of the spread over seeds: a panel per
    table (columns) and data set with runs (rows). None without runs. The y axis shows the second half of
    training, where the columns part; the first epochs' climb would flatten it."""
    mine = runs[(runs["recipe"] == recipe) & (runs["curve"].map(len) > 0)]
    datasets = [d for d in table_datasets() if (mine["dataset"] == d).any()]
    if not datasets:
        return None
    fig = Figure(figsize=(10.0, 3.4 * len(datasets) + 1.0), dpi=DPI, layout="constrained")
    for row, dataset in zip(fig.subplots(len(datasets), len(TABLES), squeeze=False), datasets):
        for ax, table in zip(row, TABLES):
            cell = mine[(mine["dataset"] == dataset) & (mine["table"] == table)]
            low, high, seeds, epochs = [], [], set(), 1
            for i, column in enumerate(COLUMNS):
                if not (cell["column"] == column).any():
                    continue
                c = curves(cell[cell["column"] == column])
                band = (c["std"] / c["n"].pow(0.5) if spread == "sem" else c["std"]).fillna(0)
                ax.plot(c.index, c["mean"], color=f"C{i}", label=COLUMNS[column].label)
                ax.fill_between(c.index, c["mean"] - band, c["mean"] + band, color=f"C{i}", alpha=0.2, linewidth=0)
                later = c.index > len(c) / 2
                low.append((c["mean"] - band)[later].min())
                high.append((c["mean"] + band)[later].max())
                seeds.add(int(c["n"].max()))
                epochs = max(epochs, len(c))
            if low:
                margin = 0.05 * (max(high) - min(low)) or 0.5
                ax.set_ylim(min(low) - margin, max(high) + margin)
                ax.set_xlim(epochs / 2, epochs)
            else:
                ax.text(0.5, 0.5, "no runs yet", transform=ax.transAxes, ha="center", color="C3")
            count = (plural(min(seeds), "seed") if len(seeds) == 1 else f"{min(seeds)}-{max(seeds)} seeds") \
                if seeds else "no runs"
            ax.set_title(f"{label(dataset)}, Table {table[-1]}: {count} per column", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.set_ylabel("test accuracy (%)", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    handles = {label: h for ax in fig.axes for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle(f"Learning curves: test accuracy after each epoch, second half of training; {profile_text(profile)}, "
                 f"{recipe} recipe\nlines: mean over seeds; bands: {SPREADS[spread]} over seeds", fontsize=10)
    return fig


def lengths_figure(compared: pd.DataFrame, short: str, long: str, recipe: str) -> Figure:
    """Each claim's Δ with its 95% CI after the shorter and the longer training (stats.across_profiles), one row
    per comparison, the paper's Δ beside them: does a gain grow, shrink or turn with training length?"""
    rows = len(compared)
    fig = Figure(figsize=(9.0, 1.4 + 0.32 * rows), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    y = np.arange(rows)[::-1]
    for offset, (suffix_, profile, color) in zip((0.15, -0.15), (("_short", short, "C0"), ("_long", long, "C1"))):
        mean = compared[f"mean_diff{suffix_}"]
        error = [mean - compared[f"ci_low{suffix_}"], compared[f"ci_high{suffix_}"] - mean]
        ax.errorbar(mean, y + offset, xerr=[e.fillna(0) for e in error], fmt="o", color=color, capsize=3,
                    label=f"ours after {PROFILES[profile]['epochs']} epochs ({profile} profile)")
    ax.plot(compared["paper_diff"], y, "s", color=PAPER_COLOR, label="paper (100 epochs)")
    ax.axvline(0, color="0.5", linewidth=0.8)
    labels = [f"({r.claim}) {label(r.dataset)}: {r.comparison} (n={min(r.n_short, r.n_long)})"
              for r in compared.itertuples()]
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_ylim(-0.6, rows - 0.4)
    ax.set_xlabel("Δ test accuracy, treatment − baseline (pp); bars: 95% CI over the paired seeds", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(f"The paper's claims after {PROFILES[short]['epochs']} and {PROFILES[long]['epochs']} epochs, "
                 f"{recipe} recipe, paired by seed on the seeds both have", fontsize=10)
    return fig


def figures(runs: pd.DataFrame, summary: pd.DataFrame, spread: str, profile: str,
            recipes) -> Iterator[tuple[str, str, str | None, str | None, Figure]]:
    """(file stem, kind, table, data set, figure), kind "trend", "weights" or "curves": Figures 2 and 4, the
    FlexPool weights of each data set whose records hold any, then the learning curves."""
    for table in TABLES:
        yield FIGURE_NAMES[table], "trend", table, None, trend_figure(runs, summary, table, spread, profile, recipes)
        for dataset in table_datasets():
            for recipe in recipes:
                fig = flexpool_figure(runs, table, dataset, profile, recipe)
                if fig is not None:
                    yield f"flexpool-{table}-{dataset}{suffix(recipe, recipes)}", "weights", table, dataset, fig
    for recipe in recipes:
        fig = curves_figure(runs, spread, profile, recipe)
        if fig is not None:
            yield f"curves{suffix(recipe, recipes)}", "curves", None, None, fig


def suffix(recipe: str, recipes) -> str:
    """A figure's file name names its recipe where the figures show several."""
    return f"-{recipe}" if len(recipes) > 1 else ""


def save(fig: Figure, out: Path, stem: str, formats=("png", "pdf")) -> list[Path]:
    """Each format written then renamed so a reader never opens half a file. A PDF carries no creation date, so
    the same records draw the same bytes."""
    paths = [out / f"{stem}.{fmt}" for fmt in formats]
    for path in paths:
        metadata = {"CreationDate": None} if path.suffix == ".pdf" else None
        atomic_write(path, lambda f, fmt=path.suffix[1:], m=metadata: fig.savefig(f, format=fmt, metadata=m))
    return paths


def parse_args(argv=None):
    parser = output_parser("python -m analysis.make_figures", __doc__, "figures")
    return parser.parse_args(argv)


def provenance(runs: pd.DataFrame, command: str) -> str:
    """How the figures beside it were made: the command, and the devices, torch versions, commits and dates of
    the records they draw, read from those records."""
    return (f"# How these figures were made\n\nCommand: `{command.strip()}`, from {len(runs)} run record(s) and "
            f"the paper's numbers (`results/paper/`).\n\n- devices: {counted(runs['device'])}\n- torch: "
            f"{counted(runs['torch'])}\n- commits: {commits(runs)}\n- dates: {date_span(runs)}\n")


def main(argv=None) -> None:
    args = parse_args(argv)
    loaded, out = load_summary(args), out_dir(args)
    drawn = figures(loaded.runs, loaded.summary, args.spread, args.profile, collect.recipes(args.recipe))
    written = [path for stem, *_, fig in drawn for path in save(fig, out, stem)]
    text = provenance(loaded.runs, "python -m analysis.make_figures " + " ".join(argv or sys.argv[1:]))
    atomic_write(out / "README.md", lambda f: f.write(text.encode()))
    if loaded.runs.empty:
        print(f"note: no completed test runs of profile {args.profile!r}, recipe {args.recipe!r}: figures show "
              "the paper only", file=sys.stderr)
    print(f"wrote {len(written)} files to {out}/", file=sys.stderr)


if __name__ == "__main__":
    collect.run_cli(main)
