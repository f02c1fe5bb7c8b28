"""Tables 1 and 2 in the paper's layout, next to the paper's numbers, and a verdict on each of its claims.

    python -m analysis.make_tables                       # results/runs -> terminal + results/tables/full/paper/
    python -m analysis.make_tables --profile smoke --recipe both --format md

Writes table1.*, table2.* and claims.* (md, tex, csv) to results/tables/<profile>/<recipe>/ (or --out), so runs of
another profile or recipe never overwrite them; every caption names the profile and recipe too. Accuracies print
in percent like the paper. The .tex files are booktabs tables that fit a portrait article page: \\input them.
"""

from __future__ import annotations

import re
import sys

import pandas as pd

from analysis import collect, stats
from analysis.summary import (
    CLAIMS_METHOD,
    TABLE_TITLES,
    caption,
    cells_of,
    claims_block,
    claims_intro,
    label,
    left_out,
    load_summary,
    out_dir,
    output_parser,
    profile_text,
    recipe_text,
    table_md,
    untested,
)
from repro.datasets import table_datasets
from repro.experiments import COLUMNS, TABLES
from repro.records import atomic_write

FORMATS = {"md": ".md", "latex": ".tex", "csv": ".csv"}
CLAIM_TABLES = (("a", "b"), ("c",))  # the claims' LaTeX tables: within a table, and SAC across the two


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
             " & ".join([""] + [_stack(COLUMNS[c].label) for c in COLUMNS]) + r" \\"]
    for d in table_datasets():
        part = cells_of(summary, table, d)
        rows = [("paper", [_tex(part.loc[(recipes[0], c), "paper"]) for c in COLUMNS])]
        for recipe in recipes:
            rows += _tex_rows(part.loc[recipe].loc[list(COLUMNS)], spread,
                              f"{recipe} recipe" if len(recipes) > 1 else "ours")
        lines += [r"\midrule", rf"\multicolumn{{{len(COLUMNS) + 1}}}{{@{{}}l}}{{\emph{{{label(d)}}}}} \\"]
        lines += [" & ".join([label, *cells]) + r" \\" for label, cells in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def claims_md(claims: pd.DataFrame, summary: pd.DataFrame, profile: str, recipes) -> str:
    lines = [f"## Claims ({profile} profile, {' and '.join(recipes)} recipe)", "", claims_intro(profile, recipes)]
    for recipe in recipes:
        if len(recipes) > 1:
            lines += ["", f"### {recipe_text([recipe])}"]
        lines += ["", *claims_block(claims[claims["recipe"] == recipe], summary, recipe)]
    return "\n".join(lines) + "\n"


def _short(cell: str) -> str:
    return COLUMNS[cell.split("/")[-1]].short


def short_legend() -> str:
    """'T1, T2: Table 1, 2; Avg: AvgPool; ...': the compact names the claims' LaTeX tables use."""
    return "; ".join(["T1, T2: Table 1, 2", *(f"{c.short}: {c.label}" for c in COLUMNS.values())]) + "."


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
                         f"{short_legend()}" + (f" {missing}" if missing else ""))
            letter = len(group) > 1  # a column of claim letters only where the table holds two claims
            width = 7 + letter
            lines = [r"\begin{table}[tbp]", r"\centering", f"\\caption{{{text}}}",
                     f"\\label{{tab:repro-claims-{''.join(group)}-{profile}-{recipe}}}", r"\footnotesize",
                     r"\setlength{\tabcolsep}{3pt}", r"\begin{tabular}{@{}" + "c" * letter + "lrrcrrl@{}}",
                     r"\toprule", "Claim & " * letter
                     + r"Comparison & $n$ & $\Delta$ & 95\% CI & $p$ & paper $\Delta$ & Verdict \\"]
            for dataset, block in rows.groupby("dataset", sort=False):
                lines += [r"\midrule", rf"\multicolumn{{{width}}}{{@{{}}l}}{{\emph{{{label(dataset)}}}}} \\"]
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


def parse_args(argv=None):
    parser = output_parser("python -m analysis.make_tables", __doc__, "tables")
    parser.add_argument("--format", default="all", choices=[*FORMATS, "all"],
                        help="files to write: md, latex, csv or all (default); Markdown always goes to the terminal")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    runs, skipped, _, paper, summary = load_summary(args)
    recipes = collect.recipes(args.recipe)
    claims = stats.evaluate_claims(runs, paper, table_datasets(), recipes)
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
