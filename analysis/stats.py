"""The paper's claims as paired comparisons between table cells, each with a verdict.

Runs of different columns share seeds (seed k of every cell starts from the same seed), so a claim compares the
two cells seed by seed: the differences' mean, a 95% confidence interval from the t distribution and a paired
t-test. Verdict: supported if the interval lies above 0, contradicted if below, inconclusive otherwise (or with
fewer than 2 seeds in both cells, where no interval exists). Runs of two recipes are never paired.

How sure, and how to be surer (`assess`): Holm's adjustment of p over the comparisons of one recipe and data
set (a table holds many, and some would pass at 0.05 by chance alone); where the paper's own difference lies
against the interval (its size, not only its direction); and how many paired seeds a two-sided paired t-test
at 0.05 needs for 80% power against the paper's difference, given the measured spread of the paired
differences.
"""

from __future__ import annotations

import bisect
import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats

from repro.experiments import COLUMNS, DEFAULT_RECIPE, TABLES

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE  # the tests' level: a verdict survives Holm when its adjusted p is below it
POWER = 0.8
MAX_SEEDS = 1000  # the seeds-needed search ends here: more is beyond any campaign of this suite

CLAIMS = {
    "a": "FlexPool beats AvgPool",
    "b": "each added ingredient (Reg, then Dropout) helps",
    "c": "SAC (Table 2) beats the same column without it (Table 1)",
}

CLAIM_COLUMNS = ["recipe", "claim", "dataset", "comparison", "baseline", "treatment", "n", "mean_diff", "sd",
                 "ci_low", "ci_high", "p", "verdict", "reason", "paper_diff"]


def paired(baseline: pd.Series, treatment: pd.Series, confidence: float = CONFIDENCE) -> dict:
    """treatment - baseline over the seeds (the index) both have: n, mean_diff, sd (of the differences),
    ci_low, ci_high, p, verdict, reason."""
    seeds = baseline.index.intersection(treatment.index)
    diff = (treatment[seeds] - baseline[seeds]).to_numpy(dtype=float)
    n = len(diff)
    result = {"n": n, "mean_diff": float(diff.mean()) if n else math.nan, "sd": math.nan,
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
    return {**result, "sd": float(sd), "ci_low": low, "ci_high": high, "p": p, "verdict": verdict,
            "reason": reason}


def comparisons(datasets) -> list[dict]:
    """Every (claim, baseline cell, treatment cell) the paper's claims imply, per dataset: (a) AvgPool to
    FlexPool and (b) each next column within a table, (c) each column from Table 1 to Table 2."""
    out = []
    for d in datasets:
        for table in TABLES:
            for base, treat in itertools.pairwise(COLUMNS):
                out.append({"claim": "a" if base == "avgpool" else "b", "dataset": d,
                            "base": (table, d, base), "treat": (table, d, treat)})
        for column in COLUMNS:
            out.append({"claim": "c", "dataset": d, "base": ("table1", d, column), "treat": ("table2", d, column)})
    return out


def comparison_text(base: tuple, treat: tuple) -> str:
    """'T1: FlexPool vs AvgPool' or 'AvgPool: T2 vs T1', the comparison in words."""
    if base[0] == treat[0]:
        return f"T{base[0][-1]}: {COLUMNS[treat[2]].label} vs {COLUMNS[base[2]].label}"
    return f"{COLUMNS[base[2]].label}: T{treat[0][-1]} vs T{base[0][-1]}"


def evaluate_claims(runs: pd.DataFrame, paper: dict[str, pd.Series], datasets,
                    recipes=(DEFAULT_RECIPE,)) -> pd.DataFrame:
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
                         "comparison": comparison_text(c["base"], c["treat"]), "baseline": "/".join(c["base"]),
                         "treatment": "/".join(c["treat"]), **result, "paper_diff": paper_diff})
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def holm(p: pd.Series) -> pd.Series:
    """Holm's step-down adjustment: the k-th smallest of m p-values times m - k + 1, never below the one
    before, at most 1. NaN p-values (no test: under 2 paired seeds) stay NaN and do not count in m."""
    tested = p.dropna().sort_values()
    adjusted = (tested * np.arange(len(tested), 0, -1)).cummax().clip(upper=1)
    return adjusted.reindex(p.index)


def size_verdict(paper_diff: float, ci_low: float, ci_high: float) -> str:
    """Where the paper's difference lies against our interval: a supported direction can still be a far
    smaller gain than the paper's."""
    if pd.isna(paper_diff) or pd.isna(ci_low):
        return "n/a"
    if paper_diff > ci_high:
        return "paper above"
    return "paper below" if paper_diff < ci_low else "consistent"


def paired_power(n: int, effect: float) -> float:
    """Power of a two-sided paired t-test at ALPHA on n seeds when the true mean difference is `effect`
    standard deviations of the differences: its t statistic then follows a noncentral t (n - 1 dof,
    noncentrality effect * sqrt(n))."""
    dof, shift = n - 1, effect * math.sqrt(n)
    critical = stats.t.ppf(1 - ALPHA / 2, dof)
    # P(T < -critical) as the mirrored upper tail: scipy's nct.cdf is NaN that far out at large noncentrality
    return float(stats.nct.sf(critical, dof, shift) + stats.nct.sf(critical, dof, -shift))


def seeds_needed(diff: float, sd: float) -> float:
    """The fewest paired seeds (at least 2) that give POWER against a true difference `diff` when the
    differences spread with standard deviation `sd`: inf beyond MAX_SEEDS (or for a difference of 0), NaN
    without a measured spread."""
    if pd.isna(diff) or not sd > 0:
        return math.nan
    seeds = range(2, MAX_SEEDS + 1)
    # power grows with n, so the first n that reaches POWER is found by bisection
    i = bisect.bisect_left(seeds, True, key=lambda n: paired_power(n, abs(diff) / sd) >= POWER)
    return seeds[i] if i < len(seeds) else math.inf


def assess(claims: pd.DataFrame) -> pd.DataFrame:
    """evaluate_claims' rows plus p_holm (Holm over the comparisons of one recipe and data set), survives (a
    supported or contradicted verdict whose p_holm is below ALPHA), size (size_verdict) and seeds_needed (for
    POWER against the paper's difference at the measured spread)."""
    p_holm = claims.groupby(["recipe", "dataset"])["p"].transform(holm)
    rows = list(claims.itertuples())
    return claims.assign(
        p_holm=p_holm, survives=(claims["verdict"] != "inconclusive") & (p_holm < ALPHA),
        size=[size_verdict(r.paper_diff, r.ci_low, r.ci_high) for r in rows],
        seeds_needed=[seeds_needed(r.paper_diff, r.sd) for r in rows])


# ---- the same claims at two lengths of training, the same cells under two recipes --------------------------------

CELL_KEYS = ["table", "dataset", "column"]


def on_common_seeds(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """a's and b's runs of the cells and seeds both have: two profiles or recipes compared on the same seeds."""
    keys = [*CELL_KEYS, "seed"]
    both = a[keys].merge(b[keys]).drop_duplicates()
    return a.merge(both), b.merge(both)


def change(r) -> str:
    """What became of a comparison from the shorter training to the longer: its direction and its verdict."""
    if not (r.n_short and r.n_long):
        return "n/a"
    changes = ["direction reversed"] if r.mean_diff_short * r.mean_diff_long < 0 else []
    if r.verdict_short != r.verdict_long:
        changes.append(f"{r.verdict_short} → {r.verdict_long}")
    return "; ".join(changes) or "same direction and verdict"


def across_profiles(short: pd.DataFrame, long: pd.DataFrame, paper: dict[str, pd.Series], datasets,
                    recipe: str) -> pd.DataFrame:
    """Each claim's comparison, paired by seed as evaluate_claims does, under the shorter and the longer profile on
    the cells and seeds both have: evaluate_claims' columns with _short and _long suffixes, and `change`."""
    short, long = on_common_seeds(short, long)
    keys = ["recipe", "claim", "dataset", "comparison", "baseline", "treatment", "paper_diff"]
    merged = evaluate_claims(short, paper, datasets, [recipe]).merge(
        evaluate_claims(long, paper, datasets, [recipe]), on=keys, suffixes=("_short", "_long"))
    merged = merged[(merged["n_short"] > 0) & (merged["n_long"] > 0)]
    return merged.assign(change=[change(r) for r in merged.itertuples()]).reset_index(drop=True)


def across_recipes(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """Per cell both recipes ran on common seeds: the first recipe's accuracy minus the second's, in points,
    paired by seed (`paired`), with each recipe's mean."""
    first, second = on_common_seeds(first, second)
    rows = []
    for cell, a in first.groupby(CELL_KEYS, sort=False):
        b = second.merge(pd.DataFrame([cell], columns=CELL_KEYS))
        a, b = a.set_index("seed")["accuracy"] * 100, b.set_index("seed")["accuracy"] * 100
        rows.append({**dict(zip(CELL_KEYS, cell)), "first": a.mean(), "second": b.mean(), **paired(b, a)})
    return pd.DataFrame(rows, columns=[*CELL_KEYS, "first", "second", "n", "mean_diff", "sd", "ci_low", "ci_high",
                                       "p", "verdict", "reason"])
