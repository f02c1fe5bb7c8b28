"""analysis/make_report.py: the results page, checked against numbers computed here, not by analysis/."""

from __future__ import annotations

import itertools
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import integrate
from scipy import stats as scipy_stats

from analysis import collect, make_figures, make_report, stats
from tests.helpers import ROOT, write_run

LABELS = {"avgpool": "AvgPool", "flexpool": "FlexPool", "flexpool-reg": "FlexPool + Reg",
          "flexpool-reg-dropout": "FlexPool + Reg + Dropout"}
DATASETS = {"cifar10": "CIFAR10", "fashion_mnist": "Fashion-MNIST"}
GAINS = {"avgpool": 0.0, "flexpool": 0.4, "flexpool-reg": 2.4, "flexpool-reg-dropout": 2.5}  # pp over AvgPool
SAC = {"table1": 0.0, "table2": -0.5}
ENV = {"cifar10": {"device": "NVIDIA H200", "device_type": "cuda", "torch": "2.5.1", "git_commit": "a" * 40,
                   "date": "2026-01-02T09:00:00+00:00", "precision": "bf16"},
       "fashion_mnist": {"device": "Intel Xeon", "device_type": "cpu", "cpu_bf16_units": "AMX-BF16",
                         "torch": "2.6.0", "git_commit": "b" * 40 + "-dirty",
                         "date": "2026-01-05T18:00:00+00:00", "precision": "fp32", "threads": 1}}
STEPS = [("avgpool", "flexpool"), ("flexpool", "flexpool-reg"), ("flexpool-reg", "flexpool-reg-dropout")]
SECTIONS = ["What was run", "The tables", "The claims", "Seeds needed", "Figures",
            "How to reproduce this page"]
PAPER = {t: pd.read_csv(ROOT / f"results/paper/{t}.csv").set_index(["dataset", "column"])["accuracy"]
         for t in SAC}


def one_seed_or_none(table: str, dataset: str, column: str, seed: int) -> bool:
    """Table 2 on Fashion-MNIST has one run, AvgPool seed 0: a one-seed cell beside cells without runs."""
    return table == "table2" and dataset == "fashion_mnist" and (column != "avgpool" or seed > 0)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Two data sets, both tables, 3 seeds, known gains plus noise (accuracies in steps of 0.01 pp, so no mean
    lies on a rounding boundary), a one-seed cell and a failed record; the page made from them."""
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(3)
    known = []
    for table, dataset, column, seed in itertools.product(SAC, DATASETS, LABELS, range(3)):
        if one_seed_or_none(table, dataset, column, seed):
            continue
        acc = round(90 + GAINS[column] + SAC[table] + rng.normal(0, 0.1), 2)
        train_s = 600.0 * (seed + 1)
        write_run(root, table, dataset, column, seed, acc / 100, profile="budget", env=ENV[dataset],
                  timing={"wall_s": train_s + 5, "train_s": train_s, "images_per_s": 1000.0})
        known.append({"table": table, "dataset": dataset, "column": column, "seed": seed, "acc": acc,
                      "train_s": train_s})
    failed = write_run(root, "table1", "cifar100", "avgpool", 0, 0.6, profile="budget", status="failed")
    out = root / "report"
    make_report.main(["--runs", str(root / "runs"), "--profile", "budget", "--out", str(out)])
    page = (out / "README.md").read_text()
    return page, out, pd.DataFrame(known), failed.relative_to(root / "runs").as_posix()


def section(page: str, heading: str) -> str:
    return page.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> dict[tuple[str, str], list[str]]:
    """A page table's rows that start with a claim letter, keyed by (data set, comparison)."""
    rows = [line.strip("| ").split(" | ") for line in text.splitlines() if line.startswith("| (")]
    return {(cells[1], cells[2]): cells for cells in rows}


def comparisons() -> list[tuple[str, str, tuple, tuple]]:
    """(data set, comparison as the page words it, baseline cell, treatment cell): the paper's claims (a), (b)
    and (c), written out here rather than taken from analysis/stats.py."""
    out = []
    for dataset in DATASETS:
        for table in SAC:
            out += [(dataset, f"T{table[-1]}: {LABELS[b]} vs {LABELS[a]}", (table, a), (table, b))
                    for a, b in STEPS]
        out += [(dataset, f"{LABELS[c]}: T2 vs T1", ("table1", c), ("table2", c)) for c in LABELS]
    return out


def power(n: int, effect: float) -> float:
    """A two-sided paired t-test's power at 0.05, from T = (Z + effect * sqrt(n)) / sqrt(V / (n - 1)) with Z
    normal and V chi-square: the probability of |T| above the critical value, integrated over V."""
    dof, shift = n - 1, effect * math.sqrt(n)
    critical = scipy_stats.t.ppf(0.975, dof)

    def rejects(v):
        bound = critical * math.sqrt(v / dof)
        normal = scipy_stats.norm.cdf(shift - bound) + scipy_stats.norm.cdf(-shift - bound)
        return normal * scipy_stats.chi2.pdf(v, dof)

    # over all but 1e-10 of V's mass at each end: on [0, inf) quad misses where it lies for a large dof
    return integrate.quad(rejects, *scipy_stats.chi2.ppf([1e-10, 1 - 1e-10], dof))[0]


def expected_claims(known: pd.DataFrame) -> pd.DataFrame:
    """Each comparison's paired numbers and Holm's adjusted p over a data set's tests."""
    acc = known.set_index(["table", "dataset", "column", "seed"])["acc"]
    rows = []
    for dataset, label, base, treat in comparisons():
        a, b = (acc.get((t, dataset, c), pd.Series(dtype=float)) for t, c in (base, treat))
        seeds = sorted(set(a.index) & set(b.index))
        d = np.array([b[s] - a[s] for s in seeds])
        row = {"dataset": DATASETS[dataset], "comparison": label, "n": len(d),
               "paper": PAPER[treat[0]][dataset, treat[1]] - PAPER[base[0]][dataset, base[1]]}
        if len(d) >= 2:
            sd = d.std(ddof=1)
            half = scipy_stats.t.ppf(0.975, len(d) - 1) * sd / math.sqrt(len(d))
            t = d.mean() / (sd / math.sqrt(len(d)))
            row.update(mean=d.mean(), sd=sd, low=d.mean() - half, high=d.mean() + half,
                       p=2 * scipy_stats.t.sf(abs(t), len(d) - 1))
        rows.append(row)
    claims = pd.DataFrame(rows)
    for _, family in claims.dropna(subset=["p"]).groupby("dataset"):
        ordered = family.sort_values("p")
        m, running = len(ordered), 0.0
        for k, (i, p) in enumerate(ordered["p"].items()):
            running = max(running, min(1.0, (m - k) * p))
            claims.loc[i, "holm"] = running
    return claims


def test_page_has_its_six_parts_in_order(report):
    page = report[0]
    headings = re.findall(r"^## (.+)$", page, flags=re.MULTILINE)
    assert headings == SECTIONS
    assert page.startswith("# FlexPooling reproduction: budget profile, paper recipe\n")


def test_tables_equal_an_independent_computation(report):
    page, _, known, _ = report
    tables = dict(zip(SAC, section(page, "The tables").split("\n### Table 2: ")))
    for (table, dataset, column), cell in known.groupby(["table", "dataset", "column"]):
        value, mean = PAPER[table][dataset, column], cell["acc"].mean()
        ours = f"{mean:.2f} ± {cell['acc'].std(ddof=1):.2f} (n=3)" if len(cell) > 1 else f"{mean:.2f} (n=1)"
        assert f"{ours}; paper {value:.2f}; Δ {mean - value:+.2f}" in tables[table]


def test_claims_holm_and_size_equal_an_independent_computation(report):
    page, _, known, _ = report
    expected = expected_claims(known)
    rows = table_rows(section(page, "The claims"))
    assert len(rows) == len(expected) == 20
    for r in expected.itertuples():
        cells = rows[(r.dataset, r.comparison)]
        assert cells[3] == str(r.n)
        if r.n < 2:
            assert cells[5:7] == ["n/a", "n/a"] and cells[9:] == ["n/a", "—", "n/a"]
            assert f"too few paired seeds (n={r.n})" in cells[8]
            continue
        verdict = "supported" if r.low > 0 else "contradicted" if r.high < 0 else "inconclusive"
        size = "paper above" if r.paper > r.high else "paper below" if r.paper < r.low else "consistent"
        after = "—" if verdict == "inconclusive" else "survives" if r.holm < 0.05 else "does not survive"
        numbers = [f"{r.mean:+.2f}", f"[{r.low:+.2f}, {r.high:+.2f}]", f"{r.p:.3g}", f"{r.paper:+.2f}"]
        assert cells[4:8] == numbers
        assert cells[8].startswith(f"**{verdict}**")
        assert cells[9:] == [f"{r.holm:.3g}", after, size]
    # the records are made so that the page shows every kind of verdict the parts can give
    shown = {cells[-1] for cells in rows.values()} | {cells[-2] for cells in rows.values()}
    assert shown == {"consistent", "paper above", "paper below", "n/a", "survives", "does not survive", "—"}


def test_seeds_needed_are_the_fewest_with_80_percent_power(report):
    """Each value N on the page: power at N seeds reaches 0.8, at N - 1 not ('> 1000': not even at 1000)."""
    page, _, known, _ = report
    rows = table_rows(section(page, "Seeds needed"))
    for r in expected_claims(known).itertuples():
        cells = rows[(r.dataset, r.comparison)]
        assert cells[3:6] == [f"{r.paper:+.2f}", "n/a" if r.n < 2 else f"{r.sd:.2f}", str(r.n)]
        if r.n < 2:
            assert cells[6] == "n/a"
            continue
        effect = abs(r.paper) / r.sd
        if cells[6] == "> 1000":
            assert power(1000, effect) < 0.8
        else:
            needed = int(cells[6])
            assert power(needed, effect) >= 0.8 and (needed == 2 or power(needed - 1, effect) < 0.8)


@pytest.mark.parametrize("effect, seeds", [(0.2, 199), (0.5, 34), (0.8, 15), (1.0, 10), (-0.5, 34)])
def test_seeds_needed_match_published_power_tables(effect, seeds):
    """Paired t-test, two-sided, 0.05, power 0.8: the sample sizes G*Power gives for effect size d."""
    assert stats.seeds_needed(effect * 0.3, 0.3) == seeds


def test_seeds_needed_without_a_spread_or_a_difference():
    assert math.isnan(stats.seeds_needed(1.0, math.nan)) and math.isnan(stats.seeds_needed(1.0, 0.0))
    assert stats.seeds_needed(0.0, 0.3) == math.inf


def test_holm_against_hand_computed_values():
    p = pd.Series([0.01, 0.04, 0.03, 0.005, math.nan])
    np.testing.assert_allclose(stats.holm(p), [0.03, 0.06, 0.06, 0.02, math.nan])
    np.testing.assert_allclose(stats.holm(pd.Series([0.6, 0.7])), [1.0, 1.0])


def test_one_seed_cells_and_data_sets_without_runs_are_shown_as_such(report):
    page, _, known, _ = report
    [one] = known.loc[(known["table"] == "table2") & (known["dataset"] == "fashion_mnist"), "acc"]
    cells = f"{one:.2f} (n=1); paper 93.55; Δ {one - 93.55:+.2f} | missing (n=0); paper 93.65 |"
    assert f"| Fashion-MNIST | {cells}" in section(page, "The tables")
    assert "missing (n=0, 1 skipped); paper 66.18" in page  # CIFAR100 AvgPool: its failed record
    claim = table_rows(section(page, "The claims"))["Fashion-MNIST", "AvgPool: T2 vs T1"]
    assert claim[3] == "1" and "too few paired seeds (n=1)" in claim[8]
    seeds = table_rows(section(page, "Seeds needed"))["Fashion-MNIST", "AvgPool: T2 vs T1"]
    assert seeds[-2:] == ["1", "n/a"]
    assert "No runs, so no claims tested: CIFAR100, Tiny ImageNet." in section(page, "The claims")
    assert "no runs: CIFAR100, Tiny ImageNet" in section(page, "What was run")
    assert "**Seeds per cell**: 3 in 12 cells, 1 in 1 cell, none in 19 cells." in page


def test_what_was_run_names_profile_runs_compute_and_provenance(report):
    page, _, known, failed = report
    part = section(page, "What was run")
    assert "budget profile (10 epochs, not the paper's 100)" in part and "not the paper's 100-epoch" in part
    assert "**Recipe**: paper recipe (Adam, weight decay 0)." in part
    assert f"**Runs**: {len(known)} completed of 96 planned (32 cells × 3 seeds)." in part
    hours = known.assign(cuda=known["dataset"] == "cifar10").groupby("cuda")["train_s"].sum() / 3600
    assert (f"cpu: {hours[False]:.1f} h of training (Intel Xeon, bf16 units AMX-BF16: 13 runs); "
            f"cuda: {hours[True]:.1f} h of training (NVIDIA H200: 24 runs)") in part
    assert "dates 2026-01-02 to 2026-01-05; torch 2.5.1 (24 runs), 2.6.0 (13 runs)" in part
    assert "commits aaaaaaaaaa (24 runs), bbbbbbbbbb-dirty (13 runs)" in part
    assert ("**Regime**: compile auto (37 runs); precision bf16 (24 runs), fp32 (13 runs); "
            "threads per run not recorded (24 runs), 1 (13 runs).") in part
    assert "every cell as planned" in part
    assert f"  - `{failed}`: status 'failed': RuntimeError: CUDA out of memory" in part


def test_every_linked_file_exists_and_is_a_png(report):
    page, out, _, _ = report
    links = re.findall(r"\]\(([^)]+)\)", page)
    assert sorted(links) == ["curves.png", "figure2.png", "figure4.png", "flexpool-table1-cifar10.png",
                             "flexpool-table1-fashion_mnist.png", "flexpool-table2-cifar10.png"]
    for link in links:
        with Image.open(out / link) as image:
            assert image.format == "PNG"
    figures = section(page, "Figures")
    assert figures.count("**Figure") == 2 and figures.count("**Learned FlexPool weights") == 3
    assert figures.count("**Learning curves**") == 1


def test_reproduce_gives_the_commands_of_this_page(report):
    block = section(report[0], "How to reproduce this page").split("```bash\n")[1].split("```")[0]
    commands = block.splitlines()
    assert [c.split("  #")[0].strip() for c in commands] == [
        'pip install -r requirements.lock -e ".[dev]"',  # the environment, exactly
        "python -m repro.launch all --seeds 3 --profile budget --recipe paper --compile auto",
        "python -m repro.status all --seeds 3 --profile budget --recipe paper",
        "python -m analysis.make_report --profile budget --recipe paper --seeds 3 --spread std"]


def fashion_mnist_page(root: Path, threads: int = 1) -> str:
    """The page of --datasets fashion_mnist from its four Table 1 runs (CPU, 2 cores, `threads` each) beside a
    Tiny ImageNet run and a failed Tiny ImageNet record."""
    env = {**ENV["fashion_mnist"], "cpus": 2, "threads": threads}
    for column in LABELS:
        write_run(root, "table1", "fashion_mnist", column, 0, 0.9, profile="budget", env=env)
    write_run(root, "table1", "tiny_imagenet", "avgpool", 0, 0.2, profile="budget", env=env)
    write_run(root, "table1", "tiny_imagenet", "flexpool", 0, 0.2, profile="budget", status="failed")
    make_report.main(["--runs", str(root / "runs"), "--profile", "budget", "--seeds", "1",
                      "--datasets", "fashion_mnist", "--out", str(root / "report")])
    return (root / "report" / "README.md").read_text()


@pytest.mark.parametrize("threads, flags", [(1, " --compile auto --executor local --runs-per-gpu 2"),
                                            (2, " --compile auto")])
def test_launch_command_trains_cpu_runs_side_by_side_as_the_records_did(tmp_path, threads, flags):
    launch = ("python -m repro.launch all --seeds 1 --datasets fashion_mnist --profile budget --recipe paper"
              f"{flags}   # trains")
    assert launch in fashion_mnist_page(tmp_path, threads)


def test_a_page_of_some_data_sets_counts_only_their_records(tmp_path):
    page = fashion_mnist_page(tmp_path)
    assert "**Runs**: 4 completed of 8 planned (8 cells × 1 seed)." in page
    assert "**Data sets**: Fashion-MNIST (4 runs); no runs: CIFAR10, CIFAR100, Tiny ImageNet." in page
    assert "| Tiny ImageNet | missing (n=0); paper 46.50 |" in page and "status 'failed'" not in page


def test_a_page_made_again_keeps_only_the_figures_it_shows(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    stale = out / "flexpool-table1-tiny_imagenet.png"  # drawn when the page still covered Tiny ImageNet
    stale.write_bytes(b"\x89PNG")
    notes = out / "notes.md"  # not a figure of the page's: left alone
    notes.write_text("mine")
    page = fashion_mnist_page(tmp_path)
    assert not stale.exists() and notes.exists()
    assert sorted(p.name for p in out.glob("*.png")) == sorted(re.findall(r"\]\(([^)]+\.png)\)", page))


@pytest.mark.parametrize("option", [["--profile", "any"], ["--recipe", "both"], ["--seeds", "0"]])
def test_options_a_page_cannot_tell_exit_2_in_one_line(report, option, capsys):
    with pytest.raises(SystemExit) as exit:
        collect.run_cli(lambda: make_report.main(["--runs", "unused", *option]))
    assert exit.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_make_report_never_imports_torch():
    code = "import sys, analysis.make_report; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(ROOT))


def test_readme_results_are_the_page_in_brief_between_its_markers(report, tmp_path):
    _, out, known, _ = report
    runs = out.parent / "runs"
    readme = tmp_path / "README.md"
    readme.write_text("# Project\n\n## Results\n\n<!-- results: old -->\nold numbers\n<!-- end of results -->\n\n"
                      "## Next\n")
    argv = ["--runs", str(runs), "--profile", "budget", "--out", str(tmp_path / "page"), "--datasets",
            "cifar10", "fashion_mnist", "--seeds", "3", "--readme", str(readme)]
    make_report.main(argv)
    text = readme.read_text()
    assert text.startswith("# Project\n\n## Results\n\n<!-- results: written by python -m analysis.make_report "
                           "--profile budget --recipe paper --seeds 3 --datasets cifar10 fashion_mnist")
    assert text.endswith("<!-- end of results -->\n\n## Next\n") and "old numbers" not in text
    assert f"{len(known)} completed of 48 planned (16 cells × 3 seeds)" in text
    page = (tmp_path / "page" / "README.md").read_text()
    assert "**Seeds per cell**: 3 in 12 cells, 1 in 1 cell, none in 3 cells." in page  # the 16 planned cells
    assert "`python -m repro.launch all --seeds 3 --datasets cifar10 fashion_mnist --profile budget" in text
    for (table, dataset, column), cell in known.groupby(["table", "dataset", "column"]):
        label = f"| Table {table[-1]}, {DATASETS[dataset]} |"
        row = next(line for line in text.splitlines() if line.startswith(label))
        assert f"{cell['acc'].mean():.2f}" in row.split(" | ")[1 + list(LABELS).index(column)]
    assert text.count("| (a) |") == 4 and "What it cannot say: whether a gain the paper reports after 100" in text
    for link in re.findall(r"\]\(([^)]+)\)", text):
        assert (tmp_path / link).is_file(), link
    readme.write_text("# no block\n")
    with pytest.raises(collect.AnalysisError, match="has no results block"):
        make_report.main(argv)
    assert readme.read_text() == "# no block\n"


# ---- the learning curves; the same claims at two lengths of training; the same cells under two recipes --------

def test_learning_curves_are_the_mean_and_spread_over_seeds_of_each_epoch():
    runs = pd.DataFrame({"curve": [[0.5, 0.7, 0.8], [0.6, 0.8], [0.4, 0.6, 0.9]]})
    curves = make_figures.curves(runs)
    assert curves["n"].tolist() == [3, 3, 2]  # an epoch counts the runs that reached it
    assert curves["mean"].tolist() == pytest.approx([50.0, 70.0, 85.0])
    assert curves["std"].iloc[0] == pytest.approx(np.std([50, 60, 40], ddof=1))


LENGTH_GAINS = {"budget": -1.0, "full": 1.0}  # FlexPool - AvgPool, pp: the sign turns with training length
RECIPE_LEVELS = {"suite": 90.0, "paper": 91.0}
RECIPE_ENV = {"suite": {"device": "Xeon", "device_type": "cpu", "cpu_bf16_units": "AMX-BF16", "cpus": 2,
                        "precision": "bf16"},
              "paper": {"device": "EPYC", "device_type": "cpu", "cpu_bf16_units": "none", "cpus": 2,
                        "precision": "fp32"}}


@pytest.fixture(scope="module")
def two_profiles(tmp_path_factory):
    """Table 1 AvgPool and FlexPool on Fashion-MNIST: the paper recipe at both lengths (seeds 0-2 at 100 epochs,
    0, 1 and 3 at 10, so 0 and 1 pair), and the suite recipe at 10 epochs on seeds 0 and 1."""
    root = tmp_path_factory.mktemp("profiles")
    known = []
    for profile, recipe, seeds in (("full", "paper", (0, 1, 2)), ("budget", "paper", (0, 1, 3)),
                                   ("budget", "suite", (0, 1))):
        for column, seed in itertools.product(("avgpool", "flexpool"), seeds):
            gain = LENGTH_GAINS[profile] if column == "flexpool" else 0.0
            acc = round(RECIPE_LEVELS[recipe] + gain + 0.01 * seed + (0.02 * seed if column == "flexpool" else 0), 2)
            write_run(root, "table1", "fashion_mnist", column, seed, acc / 100, profile=profile, recipe=recipe,
                      env={"date": "2026-01-01T00:00:00", "git_commit": "abc", **RECIPE_ENV[recipe]})
            known.append({"profile": profile, "recipe": recipe, "column": column, "seed": seed, "acc": acc})
    pages = {}
    for profile, recipe in (("full", "paper"), ("budget", "paper")):
        out = root / "report" / profile / recipe
        make_report.main(["--runs", str(root / "runs"), "--profile", profile, "--recipe", recipe, "--out", str(out),
                          "--datasets", "fashion_mnist"])
        pages[profile] = (out / "README.md").read_text()
    return root, pages, pd.DataFrame(known).set_index(["profile", "recipe", "column", "seed"])["acc"]


def test_each_claim_at_two_lengths_pairs_the_seeds_both_profiles_have(two_profiles):
    root, pages, acc = two_profiles
    heading = "10 epochs and 100 epochs: the claims at two lengths of training"
    for page in pages.values():
        part = section(page, heading)
        row = table_rows(part)[("Fashion-MNIST", "T1: FlexPool vs AvgPool")]
        for profile, cell in (("budget", row[4]), ("full", row[6])):
            diff = [acc[profile, "paper", "flexpool", s] - acc[profile, "paper", "avgpool", s] for s in (0, 1)]
            assert cell.startswith(f"{np.mean(diff):+.2f} [")  # the mean over seeds 0 and 1 only
        assert row[3] == "2" and (row[5], row[7]) == ("contradicted", "supported")
        assert row[9] == "direction reversed; contradicted → supported"
        assert "**Reading**: of 1 comparison with seeds at both lengths, 1 changed direction and 1 changed " \
               "verdict from 10 epochs to 100 epochs: Fashion-MNIST (T1: FlexPool vs AvgPool)" in part
        assert "![epochs-budget-full](epochs-budget-full.png)" in part
        # the two lengths pair on seeds 0 and 1: 2 runs of each column each, both in fp32, so no warning
        fp32 = "EPYC (2 cores), bf16 units none (4 runs), precision fp32 (4 runs)"
        assert f"**How each side trained**: 10 epochs: {fp32}; 100 epochs: {fp32}.\n" in part
    assert (root / "report" / "full" / "paper" / "epochs-budget-full.png").is_file()


def test_one_cell_at_both_lengths_is_no_comparison_yet(tmp_path):
    for profile, columns in (("full", ["avgpool", "flexpool"]), ("budget", ["avgpool"])):
        for column in columns:
            write_run(tmp_path, "table1", "fashion_mnist", column, 0, 0.9, profile=profile, recipe="paper")
    out = tmp_path / "report"
    make_report.main(["--runs", str(tmp_path / "runs"), "--profile", "full", "--recipe", "paper", "--datasets",
                      "fashion_mnist", "--out", str(out)])
    page = (out / "README.md").read_text()
    lengths = section(page, "10 epochs and 100 epochs: the claims at two lengths of training")
    assert "No comparison yet has both of its cells at both lengths on the same seeds" in lengths


def test_cells_of_one_paired_seed_are_not_counted_indistinguishable(tmp_path):
    for recipe, accs in (("suite", (0.90, 0.93)), ("paper", (0.92, 0.91))):
        for column, acc in zip(("avgpool", "flexpool"), accs):
            write_run(tmp_path, "table1", "fashion_mnist", column, 0, acc, profile="budget", recipe=recipe)
    out = tmp_path / "report"
    make_report.main(["--runs", str(tmp_path / "runs"), "--profile", "budget", "--recipe", "suite", "--datasets",
                      "fashion_mnist", "--out", str(out)])
    part = section((out / "README.md").read_text(), "The suite recipe against the paper recipe")
    assert ("what the suite recipe (SGD, weight decay 0.0005) gains (or costs) against the paper recipe (Adam, "
            "weight decay 0).") in part
    assert ("**Reading**: 2 cells with one paired seed, no interval yet: there the suite recipe is ahead in 1 and "
            "behind in 1.\n") in part


def test_the_two_recipes_are_compared_cell_by_cell_on_common_seeds(two_profiles):
    _, pages, acc = two_profiles
    part = section(pages["budget"], "The suite recipe against the paper recipe")
    rows = {cells[2]: cells for cells in (line.strip("| ").split(" | ") for line in part.splitlines()
                                          if line.startswith("| Table 1 |"))}
    for column, label in (("avgpool", "AvgPool"), ("flexpool", "FlexPool")):
        diff = [acc["budget", "suite", column, s] - acc["budget", "paper", column, s] for s in (0, 1)]
        assert rows[label][3] == "2" and rows[label][6] == f"{np.mean(diff):+.2f}"
        assert rows[label][9].startswith("**contradicted**")  # the suite recipe is 1 point behind on both seeds
    assert ("the suite recipe is ahead in 0, behind in 2 and indistinguishable in 0 of 2 cells with 2 or more "
            "paired seeds (95% CI).\n") in part
    assert ("**How each side trained**: suite recipe: Xeon (2 cores), bf16 units AMX-BF16 (4 runs), precision bf16 "
            "(4 runs); paper recipe: EPYC (2 cores), bf16 units none (4 runs), precision fp32 (4 runs). The runs "
            "compared trained in bf16 and fp32: part of each Δ may come from the precision, not from the recipe "
            "alone.") in part
    assert "The suite recipe against" not in pages["full"]  # no suite runs at 100 epochs


def test_the_readme_names_the_records_of_other_profiles_and_links_their_page(two_profiles, tmp_path):
    root, _, _ = two_profiles
    readme = root / "README.md"
    readme.write_text("<!-- results: -->\n<!-- end of results -->\n")
    make_report.main(["--runs", str(root / "runs"), "--profile", "budget", "--recipe", "suite", "--out",
                      str(root / "report" / "budget" / "suite"), "--datasets", "fashion_mnist", "--readme",
                      str(readme)])
    text = readme.read_text()
    assert ("Other records: 6 runs of the budget profile (10 epochs, not the paper's 100), paper recipe (their "
            "page: [report/budget/paper/README.md](report/budget/paper/README.md)); 6 runs of the full profile "
            "(100 epochs, the paper's), paper recipe (their page: [report/full/paper/README.md]") in text
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert (root / target).is_file(), target
