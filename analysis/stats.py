"""The paper's claims as paired comparisons between table cells, each with a verdict.

Runs of different columns share seeds (seed k of every cell starts from the same seed), so a claim compares the
two cells seed by seed: the differences' mean, a 95% confidence interval from the t distribution and a paired
t-test. Verdict: supported if the interval lies above 0, contradicted if below, inconclusive otherwise (or with
fewer than 2 seeds in both cells, where no interval exists). Runs of two recipes are never paired.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from repro.experiments import COLUMN_LABELS, COLUMNS, TABLES

CONFIDENCE = 0.95

CLAIMS = {
    "a": "FlexPool beats AvgPool",
    "b": "each added ingredient (Reg, then Dropout) helps",
    "c": "SAC (Table 2) beats the same column without it (Table 1)",
}

CLAIM_COLUMNS = ["recipe", "claim", "dataset", "comparison", "baseline", "treatment", "n", "mean_diff", "ci_low",
                 "ci_high", "p", "verdict", "reason", "paper_diff"]


def paired(baseline: pd.Series, treatment: pd.Series, confidence: float = CONFIDENCE) -> dict:
    """treatment - baseline over the seeds (the index) both have: n, mean_diff, ci_low, ci_high, p, verdict, reason."""
    seeds = baseline.index.intersection(treatment.index)
    diff = (treatment[seeds] - baseline[seeds]).to_numpy(dtype=float)
    n = len(diff)
    result = {"n": n, "mean_diff": float(diff.mean()) if n else math.nan,
              "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
    if n < 2:
        return {**result, "verdict": "inconclusive", "reason": f"too few paired seeds (n={n})"}
    sd = diff.std(ddof=1)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    if sd > 0:
        p = float(stats.ttest_rel(treatment[seeds], baseline[seeds]).pvalue)
    else:  # identical differences on every seed: the t statistic is undefined, the sign is not
        p = 1.0 if diff[0] == 0 else 0.0
    low, high = result["mean_diff"] - half, result["mean_diff"] + half
    if low > 0:
        verdict, reason = "supported", f"{confidence:.0%} CI above 0"
    elif high < 0:
        verdict, reason = "contradicted", f"{confidence:.0%} CI below 0"
    else:
        verdict, reason = "inconclusive", f"{confidence:.0%} CI contains 0"
    return {**result, "ci_low": low, "ci_high": high, "p": p, "verdict": verdict, "reason": reason}


def comparisons(datasets) -> list[dict]:
    """Every (claim, baseline cell, treatment cell) the paper's claims imply, per dataset."""
    out = []
    for d in datasets:
        for table in TABLES:
            out.append({"claim": "a", "dataset": d, "base": (table, d, "avgpool"), "treat": (table, d, "flexpool")})
            out.append({"claim": "b", "dataset": d, "base": (table, d, "flexpool"),
                        "treat": (table, d, "flexpool-reg")})
            out.append({"claim": "b", "dataset": d, "base": (table, d, "flexpool-reg"),
                        "treat": (table, d, "flexpool-reg-dropout")})
        for column in COLUMNS:
            out.append({"claim": "c", "dataset": d, "base": ("table1", d, column), "treat": ("table2", d, column)})
    return out


def describe(base: tuple, treat: tuple) -> str:
    """'T1: FlexPool vs AvgPool' or 'AvgPool: T2 vs T1', the comparison in words."""
    if base[0] == treat[0]:
        return f"T{base[0][-1]}: {COLUMN_LABELS[treat[2]]} vs {COLUMN_LABELS[base[2]]}"
    return f"{COLUMN_LABELS[base[2]]}: T{treat[0][-1]} vs T{base[0][-1]}"


def evaluate_claims(runs: pd.DataFrame, paper: dict[str, pd.Series], datasets, recipes=("suite",)) -> pd.DataFrame:
    """One row per comparison, per recipe and per dataset that has runs of that recipe, claim by claim. runs:
    recipe, table, dataset, column, seed, accuracy (fraction), profile; paper: percent per table indexed by
    (dataset, column). Differences are in percentage points; two runs of different recipes are never paired."""
    by_cell = {key: cell.set_index("seed") for key, cell in runs.groupby(["recipe", "table", "dataset", "column"])}
    empty = pd.DataFrame({"accuracy": pd.Series(dtype=float), "profile": pd.Series(dtype=object)})
    rows = []
    for recipe in recipes:
        ran = [d for d in datasets if ((runs["recipe"] == recipe) & (runs["dataset"] == d)).any()]
        for c in sorted(comparisons(ran), key=lambda c: list(CLAIMS).index(c["claim"])):
            base, treat = by_cell.get((recipe, *c["base"]), empty), by_cell.get((recipe, *c["treat"]), empty)
            result = paired(base["accuracy"] * 100, treat["accuracy"] * 100)
            profiles = set(base["profile"]) | set(treat["profile"])
            if len(profiles) > 1:  # only possible with --profile any: a smoke run is no baseline for a full one
                result.update(verdict="inconclusive", reason=f"cells from different profiles ({', '.join(profiles)})")
            paper_diff = (paper[c["treat"][0]].get(c["treat"][1:], np.nan)
                          - paper[c["base"][0]].get(c["base"][1:], np.nan))
            rows.append({"recipe": recipe, "claim": c["claim"], "dataset": c["dataset"],
                         "comparison": describe(c["base"], c["treat"]), "baseline": "/".join(c["base"]),
                         "treatment": "/".join(c["treat"]), **result, "paper_diff": paper_diff})
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)
