"""Tables 1 and 2 in the paper's layout, next to the paper's numbers, and a verdict on each of its claims.

    python -m analysis.make_tables                       # results/runs -> terminal + results/tables/
    python -m analysis.make_tables --profile smoke --format md --out /tmp/tables

Writes table1.*, table2.* and claims.* (md, tex, csv) to --out. Accuracies print in percent like the paper.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from analysis import collect, stats
from repro.experiments import COLUMN_LABELS, COLUMNS, TABLES
from repro.records import atomic_write

DATASET_ORDER = ("cifar10", "fashion_mnist", "cifar100", "tiny_imagenet")  # the paper's row order
DATASET_LABELS = {"cifar10": "CIFAR10", "fashion_mnist": "Fashion-MNIST", "cifar100": "CIFAR100",
                  "tiny_imagenet": "Tiny ImageNet"}
TABLE_TITLES = {"table1": "Table 1: FlexPooling (ResNet20, no SAC)",
                "table2": "Table 2: FlexPooling with Simple Auxiliary Classifiers (SAC)"}
SPREADS = {"std": "the sample standard deviation over seeds (ddof=1)",
           "sem": "the standard error of the mean over seeds (std / sqrt(n))"}
FORMATS = {"md": ".md", "latex": ".tex", "csv": ".csv"}
VERDICTS = ("supported", "contradicted", "inconclusive")


def summarize(runs: pd.DataFrame, paper: dict[str, pd.Series], skipped: pd.Series | None = None) -> pd.DataFrame:
    """One row per (table, dataset, column), every cell of both tables, in percent: n, mean, std, sem, seeds,
    paper, diff (= mean - paper), skipped (failed or partial records of the cell). Cells without runs: n = 0,
    mean NaN."""
    cells = pd.MultiIndex.from_product([list(TABLES), DATASET_ORDER, list(COLUMNS)],
                                       names=["table", "dataset", "column"])
    grouped = runs.assign(acc=runs["accuracy"] * 100).groupby(["table", "dataset", "column"])
    out = grouped["acc"].agg(n="size", mean="mean", std="std").reindex(cells)
    out["n"] = out["n"].fillna(0).astype(int)
    out["sem"] = out["std"] / out["n"].pow(0.5)
    seeds = grouped["seed"].agg(lambda s: " ".join(map(str, sorted(s))))
    out["seeds"] = [seeds.get(cell, "") for cell in cells]
    out["paper"] = [paper[t].get((d, c), math.nan) for t, d, c in cells]
    out["diff"] = out["mean"] - out["paper"]
    skipped = skipped if skipped is not None else pd.Series(dtype=int)
    out["skipped"] = [int(skipped.get("/".join(cell), 0)) for cell in cells]
    return out.reset_index()


def _fmt(x: float, sign: bool = False) -> str:
    return "n/a" if pd.isna(x) else f"{x:+.2f}" if sign else f"{x:.2f}"


def _count(cell: dict) -> str:
    skipped = f", {cell['skipped']} skipped" if cell["skipped"] else ""
    return f"n={cell['n']}{skipped}"


def md_cell(cell: dict, spread: str) -> str:
    paper = f"paper {_fmt(cell['paper'])}"
    if cell["n"] == 0:
        return f"missing ({_count(cell)}); {paper}"
    ours = f"{cell['mean']:.2f}" + (f" ± {cell[spread]:.2f}" if cell["n"] > 1 else "")
    return f"{ours} ({_count(cell)}); {paper}; Δ {_fmt(cell['diff'], sign=True)}"


def latex_cell(cell: dict, spread: str) -> str:
    paper = f"paper {_fmt(cell['paper'])}"
    if cell["n"] == 0:
        return f"-- {{\\scriptsize (missing, {_count(cell)}; {paper})}}"
    ours = f"${cell['mean']:.2f}" + (f" \\pm {cell[spread]:.2f}$" if cell["n"] > 1 else "$")
    return f"{ours} {{\\scriptsize ({_count(cell)}; {paper}, ${_fmt(cell['diff'], sign=True)}$)}}"


def grid(summary: pd.DataFrame, table: str, cell) -> list[list[str]]:
    """The paper's layout: one row per dataset (label first), one entry per column, each made by cell(dict)."""
    rows = []
    for d in DATASET_ORDER:
        part = summary[(summary["table"] == table) & (summary["dataset"] == d)].set_index("column")
        rows.append([DATASET_LABELS[d]] + [cell(part.loc[c].to_dict()) for c in COLUMNS])
    return rows


def caption(summary: pd.DataFrame, table: str, spread: str, profile: str) -> str:
    n = summary.loc[summary["table"] == table, "n"]
    return (f"Test accuracy (%), {profile} profile, {n.sum()} runs in {(n > 0).sum()} of {len(n)} cells. "
            f"Each cell: our mean ± spread (n = runs averaged, skipped = failed or partial records), where ± is "
            f"{SPREADS[spread]}; the paper's value; Δ = ours − paper. "
            f"The paper's 'ImageNet' row is Tiny ImageNet at 32x32.")


def table_md(summary: pd.DataFrame, table: str, spread: str, profile: str) -> str:
    header = ["Dataset"] + [COLUMN_LABELS[c] for c in COLUMNS]
    lines = [f"## {TABLE_TITLES[table]}", "", caption(summary, table, spread, profile), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in grid(summary, table, lambda c: md_cell(c, spread))]
    return "\n".join(lines) + "\n"


def table_latex(summary: pd.DataFrame, table: str, spread: str, profile: str) -> str:
    """A booktabs table, ready to paste (needs \\usepackage{booktabs})."""
    text = caption(summary, table, spread, profile).replace("%", "\\%").replace("±", "$\\pm$")
    text = text.replace("−", "$-$").replace("Δ", "$\\Delta$")
    lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{TABLE_TITLES[table]}. {text}}}",
             f"\\label{{tab:repro-{table}}}", "\\begin{tabular}{l" + "c" * len(COLUMNS) + "}", "\\toprule",
             " & ".join(["Dataset"] + [COLUMN_LABELS[c] for c in COLUMNS]) + " \\\\", "\\midrule"]
    lines += [" & ".join(r) + " \\\\" for r in grid(summary, table, lambda c: latex_cell(c, spread))]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _claim_where(row) -> str:
    return f"{DATASET_LABELS.get(row.dataset, row.dataset)} ({row.comparison})"


def claim_summary(part: pd.DataFrame) -> str:
    """'supported 2 (where, where); inconclusive 6 — of 8 comparisons' for one claim's rows."""
    pieces = []
    for verdict in VERDICTS:
        hits = part[part["verdict"] == verdict]
        if len(hits):
            where = "" if verdict == "inconclusive" else f" ({', '.join(map(_claim_where, hits.itertuples()))})"
            pieces.append(f"{verdict} {len(hits)}{where}")
    return "; ".join(pieces) + f" — of {len(part)} comparisons"


def claims_md(claims: pd.DataFrame) -> str:
    lines = ["## Claims", "",
             ("Paired over the seeds both cells have: Δ = treatment − baseline in percentage points, "
              f"{stats.CONFIDENCE:.0%} confidence interval from the t distribution, p from a paired t-test "
              "(scipy.stats.ttest_rel). supported: interval above 0; contradicted: interval below 0; "
              "inconclusive: interval contains 0, or fewer than 2 paired seeds. 'paper Δ' is the same difference "
              "in the paper's tables (single numbers, no test possible)."), ""]
    for claim, text in stats.CLAIMS.items():
        lines.append(f"- **({claim}) {text}**: {claim_summary(claims[claims['claim'] == claim])}")
    header = ["Claim", "Dataset", "Comparison", "n", "Δ (pp)", "95% CI", "p", "paper Δ", "Verdict"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in claims.itertuples():
        ci = "n/a" if pd.isna(r.ci_low) else f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
        p = "n/a" if pd.isna(r.p) else f"{r.p:.3g}"
        cells = [f"({r.claim})", DATASET_LABELS.get(r.dataset, r.dataset), r.comparison, str(r.n),
                 _fmt(r.mean_diff, sign=True), ci, p, _fmt(r.paper_diff, sign=True), f"**{r.verdict}** ({r.reason})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def claims_latex(claims: pd.DataFrame) -> str:
    lines = ["\\begin{tabular}{llllrrrrl}", "\\toprule",
             "Claim & Dataset & Comparison & $n$ & $\\Delta$ (pp) & 95\\% CI & $p$ & paper $\\Delta$ & Verdict \\\\",
             "\\midrule"]
    for r in claims.itertuples():
        ci = "--" if pd.isna(r.ci_low) else f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
        p = "--" if pd.isna(r.p) else f"{r.p:.3g}"
        lines.append(" & ".join([f"({r.claim})", DATASET_LABELS.get(r.dataset, r.dataset), r.comparison, str(r.n),
                                 _fmt(r.mean_diff, sign=True), ci, p, _fmt(r.paper_diff, sign=True), r.verdict])
                     + " \\\\")
    return "\n".join(lines + ["\\bottomrule", "\\end{tabular}"]) + "\n"


def render(summary, claims, spread: str, profile: str) -> dict[str, dict[str, str]]:
    """{format: {file stem: text}} for every output."""
    out = {"md": {}, "latex": {}, "csv": {}}
    for table in TABLES:
        out["md"][table] = table_md(summary, table, spread, profile)
        out["latex"][table] = table_latex(summary, table, spread, profile)
        out["csv"][table] = summary[summary["table"] == table].to_csv(index=False, float_format="%.4f")
    out["md"]["claims"], out["latex"]["claims"] = claims_md(claims), claims_latex(claims)
    out["csv"]["claims"] = claims.to_csv(index=False, float_format="%.4f")
    return out


def output_parser(prog: str, description: str, out: str) -> argparse.ArgumentParser:
    """The options make_tables and make_figures share: which runs, where to write, which spread."""
    parser = collect.Parser(prog=prog, description=description, epilog=collect.SELECTION_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    collect.add_input_args(parser)
    parser.add_argument("--out", default=out, help="output folder (default: %(default)s)")
    parser.add_argument("--spread", default="std", choices=list(SPREADS),
                        help="what ± and error bars show: std = standard deviation over seeds (default), "
                             "sem = standard error")
    return parser


def parse_args(argv=None):
    parser = output_parser("python -m analysis.make_tables", __doc__, "results/tables")
    parser.add_argument("--format", default="all", choices=[*FORMATS, "all"],
                        help="files to write: md, latex, csv or all (default); Markdown always goes to the terminal")
    return parser.parse_args(argv)


def load_summary(args):
    """(runs, skipped records, the paper's values, per-cell summary) for the CLI's input arguments."""
    runs, skipped, _ = collect.load_from_args(args)
    paper = {t: collect.load_paper(t, args.paper) for t in TABLES}
    return runs, skipped, paper, summarize(runs, paper, collect.skipped_counts(skipped, args.profile))


def main(argv=None) -> None:
    args = parse_args(argv)
    runs, skipped, paper, summary = load_summary(args)
    claims = stats.evaluate_claims(runs, paper, DATASET_ORDER)
    outputs = render(summary, claims, args.spread, args.profile)
    print("\n".join(outputs["md"].values()))
    if runs.empty:
        print(f"note: no completed test runs of profile {args.profile!r}: every cell is missing", file=sys.stderr)
    for fmt in FORMATS if args.format == "all" else [args.format]:
        for stem, text in outputs[fmt].items():
            atomic_write(Path(args.out) / f"{stem}{FORMATS[fmt]}", lambda f, text=text: f.write(text.encode()))
    print(f"wrote {args.format} output to {args.out}/ ({len(runs)} runs, {len(skipped)} records skipped)",
          file=sys.stderr)


if __name__ == "__main__":
    collect.run_cli(main)
