"""Tables 1 and 2 in the paper's layout, next to the paper's numbers, and a verdict on each of its claims.

    python -m analysis.make_tables                       # results/runs -> terminal + results/tables/full/suite/
    python -m analysis.make_tables --profile smoke --recipe both --format md

Writes table1.*, table2.* and claims.* (md, tex, csv) to results/tables/<profile>/<recipe>/ (or --out), so runs of
another profile or recipe never overwrite them; every caption names the profile and recipe too. Accuracies print
in percent like the paper. The .tex files are booktabs tables that fit a portrait article page: \\input them.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from analysis import collect, stats
from repro.config import plural
from repro.experiments import COLUMN_LABELS, COLUMNS, PROFILES, RECIPES, TABLES, profile_words
from repro.records import DIVERGED_RULE, atomic_write

DATASET_ORDER = ("cifar10", "fashion_mnist", "cifar100", "tiny_imagenet")  # the paper's row order
DATASET_LABELS = {"cifar10": "CIFAR10", "fashion_mnist": "Fashion-MNIST", "cifar100": "CIFAR100",
                  "tiny_imagenet": "Tiny ImageNet"}
TABLE_TITLES = {"table1": "FlexPooling (ResNet20, no SAC)",
                "table2": "FlexPooling with Simple Auxiliary Classifiers (SAC)"}
SPREADS = {"std": "the sample standard deviation", "sem": "the standard error of the mean"}
FORMATS = {"md": ".md", "latex": ".tex", "csv": ".csv"}
VERDICTS = ("supported", "contradicted", "inconclusive")
CLAIM_HEADER = ["Claim", "Dataset", "Comparison", "n", "Δ (pp)", "95% CI", "p", "paper Δ", "Verdict"]
OPTIMIZERS = {"sgd": "SGD", "adam": "Adam"}
KEYS = ["recipe", "table", "dataset", "column"]
SUM_DEV = "|Σw−1|: the final FlexPool's mean distance of a channel's weight sum from 1, which Eq. 2 penalises"
CLAIM_TABLES = (("a", "b"), ("c",))  # the claims' LaTeX tables: within a table, and SAC across the two
# Compact column names for the claims' LaTeX, where the paper's long ones do not fit a page.
SHORT_COLUMNS = {"avgpool": "Avg", "flexpool": "Flex", "flexpool-reg": "+Reg", "flexpool-reg-dropout": "+Drop"}
SHORT_LEGEND = ("T1, T2: Table 1, 2; Avg: AvgPool; Flex: FlexPool; +Reg: FlexPool + Reg; +Drop: FlexPool + Reg "
                "+ Dropout.")


def summarize(runs: pd.DataFrame, paper: dict[str, pd.Series], skipped: pd.Series | None = None,
              recipes=("suite",), diverged: pd.Series | None = None) -> pd.DataFrame:
    """One row per (recipe, table, dataset, column), every cell of both tables per recipe, in percent: n, mean,
    std, sem, seeds, paper, diff (= mean - paper), skipped (failed or partial records of the cell), diverged (its
    runs that diverged: counted, never averaged), sum_dev (mean |sum - 1| of the final FlexPool, as a fraction).
    Cells without runs: n = 0, mean NaN."""
    cells = pd.MultiIndex.from_product([list(recipes), list(TABLES), DATASET_ORDER, list(COLUMNS)], names=KEYS)
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
    return [DATASET_LABELS[d] for d in DATASET_ORDER if n[d] == 0]


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
            f"skipped){'; ' if diverged(part) else ''}{diverged(part)}; Δ = ours − paper; {SUM_DEV}. The paper's "
            "\"ImageNet\" is Tiny ImageNet at 32x32.")


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
    rows = [[DATASET_LABELS[d] + (f" ({recipe})" if len(recipes) > 1 else ""),
             *md_cells(summary, recipe, table, d, spread)] for d in DATASET_ORDER for recipe in recipes]
    title = f"## Table {table[-1]}: {TABLE_TITLES[table]} ({profile} profile, {' and '.join(recipes)} recipe)"
    lines = [title, "", caption(summary, table, spread, profile, recipes), "",
             *md_table(["Dataset"] + [COLUMN_LABELS[c] for c in COLUMNS], rows)]
    return "\n".join(lines) + "\n"


def latex(text: str) -> str:
    """Markdown caption text -> TeX: escapes, a real minus, TeX quotes, math symbols."""
    text = re.sub(r'"([^"]*)"', r"``\1''", text.replace("%", r"\%").replace("_", r"\_"))
    for plain, tex in (("±", r"$\pm$"), ("|Σw−1|", r"$|\Sigma w-1|$"), ("−", "$-$"), ("Δ", r"$\Delta$"),
                       ("32x32", r"$32\times32$")):
        text = text.replace(plain, tex)
    return text


def _tex(x: float, sign: bool = False) -> str:
    """A number for a TeX cell; signed ones in math mode so that a negative one gets a real minus sign."""
    return "--" if pd.isna(x) else f"${x:+.2f}$" if sign else f"{x:.2f}"


def _stack(label: str) -> str:
    """'FlexPool + Reg + Dropout' as a column head of three short lines, so four columns fit a page."""
    return r"\begin{tabular}[b]{@{}c@{}}" + label.replace(" + ", r"\\+ ") + r"\end{tabular}"


def _tex_rows(cells: pd.DataFrame, spread: str, label: str) -> list[tuple[str, list[str]]]:
    """(row label, one entry per column) rows for one recipe's cells of one dataset: ours, Δ, runs, |Σw−1|."""
    ours, diff, runs, dev = [], [], [], []
    for column, cell in cells.iterrows():
        if cell["n"] == 0:
            ours.append("--")
        else:
            ours.append(f"${cell['mean']:.2f}" + (rf" \pm {cell[spread]:.2f}$" if cell["n"] > 1 else "$"))
        diff.append(_tex(cell["diff"], sign=True))
        runs.append(f"{cell['n']}" + (f" ({left_out(cell)[2:]})" if left_out(cell) else ""))
        dev.append("" if column == "avgpool" else _tex(cell["sum_dev"]))
    return [(label, ours), (r"\quad $\Delta$", diff), (r"\quad runs", runs), (r"\quad $|\Sigma w-1|$", dev)]


def table_latex(summary: pd.DataFrame, table: str, spread: str, profile: str, recipes) -> str:
    """A booktabs table (needs \\usepackage{booktabs}) that fits a portrait article page: a block per dataset
    (its name on a row of its own: as a column it would not fit the page's width) with the published value, then
    per recipe our mean ± spread, Δ, runs and the final FlexPool's |Σw−1|."""
    text = latex(caption(summary, table, spread, profile, recipes))
    lines = [r"\begin{table}[tbp]", r"\centering", f"\\caption{{{TABLE_TITLES[table]}. {text}}}",
             f"\\label{{tab:repro-{table}-{profile}-{'-'.join(recipes)}}}", r"\footnotesize",
             r"\setlength{\tabcolsep}{4pt}", r"\begin{tabular}{@{}l" + "c" * len(COLUMNS) + "@{}}", r"\toprule",
             " & ".join([""] + [_stack(COLUMN_LABELS[c]) for c in COLUMNS]) + r" \\"]
    for d in DATASET_ORDER:
        part = cells_of(summary, table, d)
        rows = [("paper", [_tex(part.loc[(recipes[0], c), "paper"]) for c in COLUMNS])]
        for recipe in recipes:
            rows += _tex_rows(part.loc[recipe].loc[list(COLUMNS)], spread,
                              f"{recipe} recipe" if len(recipes) > 1 else "ours")
        lines += [r"\midrule", rf"\multicolumn{{{len(COLUMNS) + 1}}}{{@{{}}l}}{{\emph{{{DATASET_LABELS[d]}}}}} \\"]
        lines += [" & ".join([label, *cells]) + r" \\" for label, cells in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def claim_summary(part: pd.DataFrame) -> str:
    """'supported 2 (where, where); inconclusive 6 — of 8 comparisons' for one claim's rows."""
    pieces = []
    for verdict in VERDICTS:
        hits = part[part["verdict"] == verdict]
        if len(hits):
            where = ", ".join(f"{DATASET_LABELS.get(r.dataset, r.dataset)} ({r.comparison})"
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
    return [f"({r.claim})", DATASET_LABELS.get(r.dataset, r.dataset), r.comparison, str(r.n),
            fmt(r.mean_diff, sign=True), ci, p, fmt(r.paper_diff, sign=True),
            f"**{r.verdict}** ({r.reason})"]


def claims_md(claims: pd.DataFrame, summary: pd.DataFrame, profile: str, recipes) -> str:
    lines = [f"## Claims ({profile} profile, {' and '.join(recipes)} recipe)", "", claims_intro(profile, recipes)]
    for recipe in recipes:
        part = claims[claims["recipe"] == recipe]
        if len(recipes) > 1:
            lines += ["", f"### {recipe_text([recipe])}"]
        missing, left = untested(summary, recipe), diverged(summary[summary["recipe"] == recipe])
        lines += [""] + ([missing, ""] if missing else []) + ([f"{left[0].upper()}{left[1:]}.", ""] if left else [])
        if part.empty:
            continue
        rows = [claim_cells(r) for r in part.itertuples()]
        lines += [*claim_lines(part), "", *md_table(CLAIM_HEADER, rows)]
    return "\n".join(lines) + "\n"


def _short(cell: str) -> str:
    return SHORT_COLUMNS[cell.split("/")[-1]]


def _compact(row) -> str:
    """'T1: +Reg vs Flex' or 'Avg: T2 vs T1', as stats.comparison_text but with column names that fit a page."""
    (base_table, base), (treat_table, treat) = [(c.split("/")[0][-1], c) for c in (row.baseline, row.treatment)]
    if base_table == treat_table:
        return f"T{base_table}: {_short(treat)} vs {_short(base)}"
    return f"{_short(base)}: T{treat_table} vs T{base_table}"


def _bound(x: float) -> str:
    """A confidence bound in at most 4 digits: with 2 seeds the t interval can pass 100 points, and the column
    must still fit the page."""
    digits = len(str(int(abs(x))))
    return f"{x:.{min(2, max(0, 4 - digits))}f}"


def claims_latex(claims: pd.DataFrame, summary: pd.DataFrame, profile: str, recipes) -> str:
    """Per recipe two booktabs tables, claims (a) and (b) and claim (c): all three would not fit one page, nor a
    data set column beside the comparison its width, so each data set heads a block of rows."""
    tables = []
    for recipe in recipes:
        part = claims[claims["recipe"] == recipe]
        missing = untested(summary, recipe)
        for group in CLAIM_TABLES:
            rows = part[part["claim"].isin(group)]
            named = " and ".join(f"({claim}) {stats.CLAIMS[claim]}" for claim in group)
            text = latex(f"The paper's claim{'s' if len(group) > 1 else ''} {named}, tested. "
                         f"{profile_text(profile).capitalize()}, {recipe_text([recipe])}. {CLAIMS_METHOD} "
                         f"{SHORT_LEGEND}" + (f" {missing}" if missing else ""))
            letter = len(group) > 1  # a column of claim letters only where the table holds two claims
            width = 7 + letter
            lines = [r"\begin{table}[tbp]", r"\centering", f"\\caption{{{text}}}",
                     f"\\label{{tab:repro-claims-{''.join(group)}-{profile}-{recipe}}}", r"\footnotesize",
                     r"\setlength{\tabcolsep}{3pt}", r"\begin{tabular}{@{}" + "c" * letter + "lrrcrrl@{}}",
                     r"\toprule", "Claim & " * letter
                     + r"Comparison & $n$ & $\Delta$ & 95\% CI & $p$ & paper $\Delta$ & Verdict \\"]
            for dataset, block in rows.groupby("dataset", sort=False):
                label = DATASET_LABELS.get(dataset, dataset)
                lines += [r"\midrule", rf"\multicolumn{{{width}}}{{@{{}}l}}{{\emph{{{label}}}}} \\"]
                for r in block.itertuples():
                    ci = "--" if pd.isna(r.ci_low) else f"$[{_bound(r.ci_low)}, {_bound(r.ci_high)}]$"
                    p = "--" if pd.isna(r.p) else "$<0.001$" if r.p < 0.001 else f"{r.p:.3f}"
                    cells = [_compact(r), str(r.n), _tex(r.mean_diff, sign=True), ci, p,
                             _tex(r.paper_diff, sign=True), r.verdict]
                    lines.append(" & ".join([f"({r.claim})"] * letter + cells) + r" \\")
            if rows.empty:
                lines += [r"\midrule", rf"\multicolumn{{{width}}}{{@{{}}l}}{{no runs}} \\"]
            tables.append("\n".join(lines + [r"\bottomrule", r"\end{tabular}", r"\end{table}"]) + "\n")
    return "\n".join(tables)


def render(summary, claims, spread: str, profile: str, recipes) -> dict[str, dict[str, str]]:
    """{format: {file stem: text}} for every output."""
    out = {"md": {}, "latex": {}, "csv": {}}
    for table in TABLES:
        out["md"][table] = table_md(summary, table, spread, profile, recipes)
        out["latex"][table] = table_latex(summary, table, spread, profile, recipes)
        out["csv"][table] = (summary[summary["table"] == table].assign(profile=profile)
                             .to_csv(index=False, float_format="%.4f"))
    out["md"]["claims"] = claims_md(claims, summary, profile, recipes)
    out["latex"]["claims"] = claims_latex(claims, summary, profile, recipes)
    out["csv"]["claims"] = claims.assign(profile=profile).to_csv(index=False, float_format="%.4f")
    return out


def output_parser(prog: str, description: str, out: str) -> argparse.ArgumentParser:
    """The options make_tables and make_figures share: which runs, where to write, which spread."""
    parser = collect.Parser(prog=prog, description=description, epilog=collect.SELECTION_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    collect.add_input_args(parser)
    parser.add_argument("--out", help=f"output folder (default: {out}/<profile>/<recipe>/, so a smoke run or "
                                      "another recipe never overwrites the full profile's suite outputs)")
    parser.add_argument("--spread", default="std", choices=list(SPREADS),
                        help="what ± and error bars show: std = standard deviation over seeds (default), "
                             "sem = standard error")
    parser.set_defaults(out_root=out)
    return parser


def out_dir(args) -> Path:
    return Path(args.out) if args.out else Path(args.out_root) / args.profile / args.recipe


def parse_args(argv=None):
    parser = output_parser("python -m analysis.make_tables", __doc__, "results/tables")
    parser.add_argument("--format", default="all", choices=[*FORMATS, "all"],
                        help="files to write: md, latex, csv or all (default); Markdown always goes to the terminal")
    return parser.parse_args(argv)


class Loaded(NamedTuple):
    """What the command-line tools read: notes are on the runs left out, paper holds its values per table."""

    runs: pd.DataFrame
    skipped: list[dict]
    notes: list[str]
    paper: dict[str, pd.Series]
    summary: pd.DataFrame


def load_summary(args, datasets=DATASET_ORDER) -> Loaded:
    """The runs and skipped records of `datasets` (a record too broken to name its data set counts for all)."""
    runs, skipped, notes = collect.load_from_args(args)
    runs = runs[runs["dataset"].isin(datasets)].reset_index(drop=True)
    others = set(DATASET_ORDER) - set(datasets)
    skipped = [s for s in skipped if not any(f"/{dataset}/" in s["cell"] for dataset in others)]
    paper = {t: collect.load_paper(t, args.paper) for t in TABLES}
    counts, diverged = (collect.skipped_counts(skipped, args.profile, d) for d in (False, True))
    return Loaded(runs, skipped, notes, paper,
                  summarize(runs, paper, counts, collect.recipes(args.recipe), diverged))


def main(argv=None) -> None:
    args = parse_args(argv)
    runs, skipped, _, paper, summary = load_summary(args)
    recipes = collect.recipes(args.recipe)
    claims = stats.evaluate_claims(runs, paper, DATASET_ORDER, recipes)
    outputs = render(summary, claims, args.spread, args.profile, recipes)
    print("\n".join(outputs["md"].values()))
    if runs.empty:
        print(f"note: no completed test runs of profile {args.profile!r}, recipe {args.recipe!r}: every cell is "
              "missing", file=sys.stderr)
    out = out_dir(args)
    for fmt in FORMATS if args.format == "all" else [args.format]:
        for stem, text in outputs[fmt].items():
            atomic_write(out / f"{stem}{FORMATS[fmt]}", lambda f, text=text: f.write(text.encode()))
    print(f"wrote {args.format} output to {out}/ ({len(runs)} runs, {len(skipped)} records skipped)",
          file=sys.stderr)


if __name__ == "__main__":
    collect.run_cli(main)
