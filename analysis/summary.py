"""What the three commands share: the records summarised per table cell, the paper's claims written out, and
how a command finds its records and where it writes.

make_tables, make_figures and make_report import from here (and collect, stats), never from each other, so a
change to one command's output never changes another's.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from analysis import collect, stats
from repro import layout
from repro.config import Parser, RunConfig, plural
from repro.datasets import DATASETS, table_datasets
from repro.experiments import COLUMNS, DEFAULT_RECIPE, PROFILES, RECIPES, TABLES, profile_words
from repro.records import DIVERGED_RULE

TABLE_TITLES = {"table1": "FlexPooling (ResNet20, no SAC)",
                "table2": "FlexPooling with Simple Auxiliary Classifiers (SAC)"}
SPREADS = {"std": "the sample standard deviation", "sem": "the standard error of the mean"}
VERDICTS = ("supported", "contradicted", "inconclusive")
CLAIM_HEADER = ["Claim", "Dataset", "Comparison", "n", "Δ (pp)", "95% CI", "p", "paper Δ", "Verdict"]
OPTIMIZERS = {"sgd": "SGD", "adam": "Adam"}
KEYS = ["recipe", "table", "dataset", "column"]
SUM_DEV = "|Σw−1|: the final FlexPool's mean distance of a channel's weight sum from 1, which Eq. 2 penalises"


def label(dataset: str) -> str:
    """A data set's name in tables and figures; its key where no entry has one (an unknown record's)."""
    return DATASETS[dataset].label if dataset in DATASETS else dataset


def summarize(runs: pd.DataFrame, paper: dict[str, pd.Series], skipped: pd.Series | None = None,
              recipes=(DEFAULT_RECIPE,), diverged: pd.Series | None = None) -> pd.DataFrame:
    """One row per (recipe, table, dataset, column), every cell of both tables per recipe, in percent: n, mean,
    std, sem, seeds, paper, diff (= mean - paper), skipped (failed or partial records of the cell), diverged (its
    runs that diverged: counted, never averaged), sum_dev (mean |sum - 1| of the final FlexPool, as a fraction).
    Cells without runs: n = 0, mean NaN."""
    cells = pd.MultiIndex.from_product([list(recipes), list(TABLES), table_datasets(), list(COLUMNS)], names=KEYS)
    runs = runs.assign(acc=runs["accuracy"] * 100, sum_dev=runs["sum_dev"].astype(float))
    grouped = runs.groupby(KEYS)
    out = grouped.agg(n=("acc", "size"), mean=("acc", "mean"), std=("acc", "std"),
                      sum_dev=("sum_dev", "mean")).reindex(cells)
    out["n"] = out["n"].fillna(0).astype(int)
    out["sem"] = out["std"] / out["n"].pow(0.5)
    seeds = grouped["seed"].agg(lambda s: " ".join(map(str, sorted(s))))
    out["seeds"] = [seeds.get(cell, "") for cell in cells]
    out["paper"] = [paper[t].get((d, c), math.nan) for _, t, d, c in cells]
    out["diff"] = out["mean"] - out["paper"]
    for name, counts in (("skipped", skipped), ("diverged", diverged)):
        counts = counts if counts is not None else pd.Series(dtype=int)
        out[name] = [int(counts.get((r, f"{t}/{d}/{c}"), 0)) for r, t, d, c in cells]
    return out.reset_index()


def without_runs(summary: pd.DataFrame, recipe: str) -> list[str]:
    """Labels of the data sets that have no run of this recipe in either table."""
    n = summary[summary["recipe"] == recipe].groupby("dataset")["n"].sum()
    return [DATASETS[d].label for d in table_datasets() if n[d] == 0]


def untested(summary: pd.DataFrame, recipe: str) -> str:
    """'No runs, so no claims tested: CIFAR100, Tiny ImageNet.', or '' when every data set has runs."""
    missing = without_runs(summary, recipe)
    return f"No runs, so no claims tested: {', '.join(missing)}." if missing else ""


def recipe_text(recipes) -> str:
    """'suite recipe (sgd, weight decay 0.0005)', from experiments.RECIPES; 'custom' for any other config."""
    def one(name):
        fields = RECIPES.get(name)
        return f"{name} recipe" + (f" ({OPTIMIZERS[fields['optimizer']]}, weight decay {fields['weight_decay']:g})"
                                   if fields else "")
    return " and ".join(map(one, recipes))


def profile_text(profile: str) -> str:
    return profile_words(profile) if profile in PROFILES else f"{profile} profile (all profiles)"


def fmt(x: float, sign: bool = False) -> str:
    return "n/a" if pd.isna(x) else f"{x:+.2f}" if sign else f"{x:.2f}"


def left_out(cell: dict) -> str:
    """', 1 skipped, 2 diverged': the cell's records that are not in its mean, or ''."""
    return "".join(f", {cell[kind]} {kind}" for kind in ("skipped", "diverged") if cell[kind])


def md_cell(cell: dict, spread: str) -> str:
    count = f"n={cell['n']}{left_out(cell)}"
    paper = f"paper {fmt(cell['paper'])}"
    if cell["n"] == 0:
        return f"missing ({count}); {paper}"
    ours = f"{cell['mean']:.2f}" + (f" ± {cell[spread]:.2f}" if cell["n"] > 1 else "")
    dev = "" if pd.isna(cell["sum_dev"]) else rf"; \|Σw−1\| {cell['sum_dev']:.2f}"  # a bare | ends the cell
    return f"{ours} ({count}); {paper}; Δ {fmt(cell['diff'], sign=True)}{dev}"


def cells_of(summary: pd.DataFrame, table: str, dataset: str) -> pd.DataFrame:
    """One data set's cells of a table, indexed by (recipe, column)."""
    part = summary[(summary["table"] == table) & (summary["dataset"] == dataset)]
    return part.set_index(["recipe", "column"])


def md_cells(summary: pd.DataFrame, recipe: str, table: str, dataset: str, spread: str) -> list[str]:
    """md_cell of each column, in the paper's order."""
    part = cells_of(summary, table, dataset).loc[recipe].loc[list(COLUMNS)]
    return [md_cell(cell, spread) for cell in part.to_dict("records")]


def caption(summary: pd.DataFrame, table: str, spread: str, profile: str, recipes) -> str:
    """The caption's text after the title, in Markdown; latex() turns it into TeX."""
    part = summary[summary["table"] == table]
    counts = []
    for recipe in recipes:
        n = part.loc[part["recipe"] == recipe, "n"]
        counts.append(f"{recipe + ': ' if len(recipes) > 1 else ''}{plural(n.sum(), 'run')} in {(n > 0).sum()} of "
                      f"{len(n)} cells")
    return (f"Test accuracy (%), {profile_text(profile)}, {recipe_text(recipes)}; {'; '.join(counts)}. "
            f"Ours: mean ± {SPREADS[spread]} over seeds; n (runs): runs averaged (failed or partial ones "
            f"skipped){'; ' if diverged(part) else ''}{diverged(part)}; Δ = ours − paper; {SUM_DEV}. "
            f"{other_names()}")


def other_names() -> str:
    """'The paper's "ImageNet" is Tiny ImageNet at 32x32.', for each data set the paper calls otherwise."""
    return " ".join(f"The paper's \"{info.paper_name}\" is {info.label} at {info.size}x{info.size}."
                    for info in map(DATASETS.get, table_datasets()) if info.paper_name)


def diverged(summary: pd.DataFrame) -> str:
    """'2 runs diverged (...): counted beside n, never averaged, their seeds out of every pair', or '' when none
    did: a recipe that diverges is a finding, to be seen but not averaged as if it had trained."""
    n = int(summary["diverged"].sum())
    return (f"{plural(n, 'run')} diverged ({DIVERGED_RULE}): counted beside n, never averaged, their seeds out "
            "of every pair" if n else "")


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def table_md(summary: pd.DataFrame, table: str, spread: str, profile: str, recipes) -> str:
    rows = [[DATASETS[d].label + (f" ({recipe})" if len(recipes) > 1 else ""),
             *md_cells(summary, recipe, table, d, spread)] for d in table_datasets() for recipe in recipes]
    title = f"## Table {table[-1]}: {TABLE_TITLES[table]} ({profile} profile, {' and '.join(recipes)} recipe)"
    lines = [title, "", caption(summary, table, spread, profile, recipes), "",
             *md_table(["Dataset"] + [COLUMNS[c].label for c in COLUMNS], rows)]
    return "\n".join(lines) + "\n"


def claim_summary(part: pd.DataFrame) -> str:
    """'supported 2 (where, where); inconclusive 6 — of 8 comparisons' for one claim's rows."""
    pieces = []
    for verdict in VERDICTS:
        hits = part[part["verdict"] == verdict]
        if len(hits):
            where = ", ".join(f"{label(r.dataset)} ({r.comparison})"
                              for r in hits.itertuples())
            where = "" if verdict == "inconclusive" else f" ({where})"
            pieces.append(f"{verdict} {len(hits)}{where}")
    return "; ".join(pieces) + f" — of {len(part)} comparisons"


CLAIMS_METHOD = ("Δ: treatment − baseline (percentage points), paired by seed; "
                 f"{stats.CONFIDENCE:.0%} CI from the t distribution; p: paired t-test. Supported: CI above 0; "
                 "contradicted: below 0; else inconclusive (as with under 2 paired seeds). Paper Δ: the same "
                 "difference in the paper's tables.")


def claims_intro(profile: str, recipes) -> str:
    return (f"{profile_text(profile).capitalize()}, {recipe_text(recipes)}. {CLAIMS_METHOD}"
            + (" Runs of two recipes are never paired." if len(recipes) > 1 else ""))


def claim_lines(part: pd.DataFrame, summarize_claim=claim_summary) -> list[str]:
    """'- **(a) FlexPool beats AvgPool**: <summarize_claim of its rows>', one line per claim."""
    return [f"- **({claim}) {text}**: {summarize_claim(part[part['claim'] == claim])}"
            for claim, text in stats.CLAIMS.items()]


def claim_cells(r) -> list[str]:
    """One comparison's cells under CLAIM_HEADER."""
    ci = "n/a" if pd.isna(r.ci_low) else f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
    p = "n/a" if pd.isna(r.p) else f"{r.p:.3g}"
    return [f"({r.claim})", label(r.dataset), r.comparison, str(r.n),
            fmt(r.mean_diff, sign=True), ci, p, fmt(r.paper_diff, sign=True),
            f"**{r.verdict}** ({r.reason})"]


def claims_block(claims: pd.DataFrame, summary: pd.DataFrame, recipe: str, summarize_claim=claim_summary,
                 header=CLAIM_HEADER, cells=claim_cells) -> list[str]:
    """One recipe's claims as the tables and the page write them: the data sets without runs, the runs that
    diverged, a line per claim (summarize_claim of its rows), then a row per comparison (cells, under header)."""
    missing, left = untested(summary, recipe), diverged(summary[summary["recipe"] == recipe])
    lines = ([missing, ""] if missing else []) + ([f"{left[0].upper()}{left[1:]}.", ""] if left else [])
    if claims.empty:
        return lines
    rows = [cells(r) for r in claims.itertuples()]
    return [*lines, *claim_lines(claims, summarize_claim), "", *md_table(header, rows)]


def counted(values: pd.Series) -> str:
    """'2.5.1 (24 runs), 2.6.0 (8 runs)': each value the records hold, and how often."""
    counts = values.fillna("not recorded").value_counts()
    return ", ".join(f"{value} ({plural(n, 'run')})" for value, n in counts.items()) or "none"


def commits(runs: pd.DataFrame) -> str:
    """Each commit by its first 10 hex digits (still unique in this repository, a '-dirty' mark kept), counted."""
    return counted(runs["git_commit"].map(lambda c: re.sub(r"^([0-9a-f]{10})[0-9a-f]{30}", r"\1", c),
                                          na_action="ignore"))


def date_span(runs: pd.DataFrame) -> str:
    dates = pd.to_datetime(runs["date"], utc=True, errors="coerce", format="ISO8601").dropna()
    return f"{dates.min():%Y-%m-%d} to {dates.max():%Y-%m-%d}" if len(dates) else "not recorded"


def output_parser(prog: str, description: str, output: str) -> argparse.ArgumentParser:
    """The options the commands share: which runs, where to write (`output`: tables, figures or report), which
    spread."""
    parser = Parser(prog=prog, description=description, epilog=collect.SELECTION_HELP,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    collect.add_input_args(parser)
    default = layout.output_dir(RunConfig.results_dir, output, "<profile>", "<recipe>")
    parser.add_argument("--out", help=f"output folder (default: {default}/, so a smoke run or "
                                      "another recipe never overwrites the full profile's suite outputs)")
    parser.add_argument("--spread", default="std", choices=list(SPREADS),
                        help="what ± and error bars show: std = standard deviation over seeds (default), "
                             "sem = standard error")
    parser.set_defaults(output=output)
    return parser


def out_dir(args) -> Path:
    return Path(args.out) if args.out else layout.output_dir(RunConfig.results_dir, args.output, args.profile,
                                                            args.recipe)


class Loaded(NamedTuple):
    """What the command-line tools read: notes are on the runs left out, paper holds its values per table."""

    runs: pd.DataFrame
    skipped: list[dict]
    notes: list[str]
    paper: dict[str, pd.Series]
    summary: pd.DataFrame


def load_summary(args, datasets=None) -> Loaded:
    """The runs and skipped records of `datasets` (a record too broken to name its data set counts for all)."""
    datasets = datasets or table_datasets()
    runs, skipped, notes = collect.load_from_args(args)
    runs = runs[runs["dataset"].isin(datasets)].reset_index(drop=True)
    others = set(table_datasets()) - set(datasets)
    skipped = [s for s in skipped if not any(f"/{dataset}/" in s["cell"] for dataset in others)]
    paper = {t: collect.load_paper(t, args.paper) for t in TABLES}
    counts, diverged = (collect.skipped_counts(skipped, args.profile, d) for d in (False, True))
    return Loaded(runs, skipped, notes, paper,
                  summarize(runs, paper, counts, collect.recipes(args.recipe), diverged))
