"""The budget profile (10 epochs of the full data, named as not the paper's wherever it shows) and the CPU's
precision: bf16 + channels_last where the processor has bf16 units, fp32 elsewhere, named in the record."""

from __future__ import annotations

import itertools
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pandas as pd
import pytest
import torch

from analysis import make_figures, make_tables
from analysis.summary import load_summary
from repro import experiments, launch, status, tracking, train
from repro.config import RunConfig
from tests.helpers import write_run


def test_budget_runs_are_the_full_data_at_the_papers_batch_for_ten_epochs():
    runs = experiments.plan("all", 5, ["fashion_mnist"], profile="budget")
    assert len(runs) == 40 and {r.epochs for r in runs} == {10} and {r.batch_size for r in runs} == {1000}
    assert {(r.train_subset, r.test_subset) for r in runs} == {(0, 0)}
    assert {experiments.profile_of(r) for r in runs} == {"budget"}
    assert {r.run_id for r in runs}.isdisjoint({r.run_id for r in experiments.plan("all", 5, ["fashion_mnist"])})


def test_launch_and_status_take_the_budget_profile_and_say_what_it_is(tmp_path, capsys):
    argv = ["all", "--profile", "budget", "--datasets", "fashion_mnist", "--seeds", "2",
            "--results-dir", str(tmp_path)]
    assert launch.main([*argv, "--dry-run"]) == 0
    assert "(budget profile, paper recipe): 8 cells x 2 seeds = 16 runs" in capsys.readouterr().out
    assert status.main(argv) == 0
    assert "16 pending" in capsys.readouterr().out
    help_text = " ".join(launch.parser().format_help().split())
    assert "budget: 10 epochs of the full data at batch 1000" in help_text and "not the paper's" in help_text


def did_not_learn(record: dict) -> str | None:
    """Why a smoke run did not learn, or None: it must end well above chance (10 %) with its training loss
    falling every epoch (at lr 0.1, FlexPool's jumped in the second epoch on some seeds:
    results/evidence/flexpool-batch128-cpu/)."""
    losses = [epoch["train_loss"] for epoch in record["history"]]
    accuracy = record["metrics"]["accuracy"]
    if accuracy >= 0.5 and all(b < a for a, b in itertools.pairwise(losses)):
        return None
    return f"{record['cell']} seed {record['config']['seed']}: {accuracy:.1%}, training loss " + \
        " -> ".join(f"{loss:.2f}" for loss in losses)


@pytest.mark.parametrize("seed", range(3))
def test_every_column_of_both_tables_learns_under_the_smoke_profile(seed, tmp_path, real_fashion_mnist,
                                                                    monkeypatch):
    """A newcomer's first tables (seed 0: the launcher's default) show every column learning on real data, on
    every seed tried; the runs of a seed train side by side, each with its share of the cores."""
    configs = [c.replace(seed=seed) for c in experiments.plan(
        "all", 1, ["fashion_mnist"], profile="smoke", data_root=str(real_fashion_mnist), results_dir=str(tmp_path),
        wandb="disabled")]
    workers = min(len(configs), len(os.sched_getaffinity(0)))
    threads = launch.cpu_threads(workers)
    if threads:
        monkeypatch.setenv("OMP_NUM_THREADS", str(threads))  # read by torch in each spawned run
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        records = list(pool.map(train.run, configs))
    assert [why for why in map(did_not_learn, records) if why] == []


def test_wandb_tags_name_the_profile_and_recipe():
    config = experiments.cell_config("table2", "fashion_mnist", "flexpool", "budget")
    assert {"profile=budget", "recipe=paper", "sac"} <= set(tracking.tags(config))


def test_budget_tables_and_figures_say_it_is_not_the_papers_experiment(tmp_path):
    for column in experiments.COLUMNS:
        for seed in range(2):
            write_run(tmp_path, "table1", "fashion_mnist", column, seed, 0.88 + seed / 100, profile="budget")
    out = tmp_path / "tables"
    make_tables.main(["--runs", str(tmp_path / "runs"), "--out", str(out), "--profile", "budget"])
    words = "budget profile (10 epochs, not the paper's 100)"
    assert all(words in (out / name).read_text().lower() for name in ("table1.md", "table2.md", "claims.md"))
    assert pd.read_csv(out / "table1.csv").set_index(["dataset", "column"]).loc[
        ("fashion_mnist", "flexpool"), "n"] == 2
    figures = tmp_path / "figures"
    make_figures.main(["--runs", str(tmp_path / "runs"), "--out", str(figures), "--profile", "budget"])
    assert (figures / "figure2.png").stat().st_size > 0
    made = (figures / "README.md").read_text()
    assert "python -m analysis.make_figures --runs" in made and "from 8 run record(s)" in made and "torch:" in made
    assert "- commits: abc (8 runs)\n- dates: 2026-01-01 to 2026-01-01\n" in made  # not a line per record
    loaded = load_summary(make_figures.parse_args(["--runs", str(tmp_path / "runs"), "--profile",
                                                               "budget"]))
    titles = [fig._suptitle.get_text() for *_, fig in make_figures.figures(
        loaded.runs, loaded.summary, "std", "budget", ["paper"])]
    assert len(titles) == 4 and all(words in title for title in titles)  # Figures 2 and 4, the weights, curves


@pytest.mark.parametrize("units,bf16", [("AMX-BF16 + AVX512-BF16", True), ("", False)])
def test_precision_auto_on_a_cpu_is_bf16_channels_last_only_with_bf16_units(monkeypatch, units, bf16):
    monkeypatch.setattr(train, "cpu_bf16_units", lambda: units)
    cpu, config = torch.device("cpu"), RunConfig(dataset="synthetic")
    assert train.uses_bf16(config, cpu) is bf16
    assert train.memory_format(config, cpu) == (torch.channels_last if bf16 else torch.contiguous_format)
    assert not train.uses_bf16(config.replace(precision="fp32"), cpu)
    assert train.uses_bf16(config.replace(precision="bf16"), cpu)


def test_a_cpu_record_names_the_processor_and_its_bf16_units(tmp_path):
    config = RunConfig(dataset="synthetic", epochs=1, batch_size=256, train_subset=512, test_subset=256,
                       wandb="disabled", results_dir=str(tmp_path), device="cpu")
    env = train.run(config)["env"]
    assert env["device_type"] == "cpu" and env["device"] not in ("", "cpu")
    assert env["cpu_bf16_units"] == (train.cpu_bf16_units() or "none") and env["cpus"] >= 1
    assert env["precision"] == ("bf16" if train.cpu_bf16_units() else "fp32")
