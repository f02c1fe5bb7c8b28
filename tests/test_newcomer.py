"""A newcomer's first hour: the README's commands do what it says, status points at records of another profile,
the launcher respects OMP_NUM_THREADS, the SLURM tests wait to be asked. CPU, a few seconds."""

from __future__ import annotations

import os
import re
import shlex

import pytest

from repro import launch, status, train
from repro.config import RunConfig
from repro.tracking import Tracker
from tests.helpers import ROOT, SLURM_OPT_IN, TINY_LR, write_run

README = (ROOT / "README.md").read_text()


def readme_section(title: str, readme: str = README) -> str:
    return readme.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def smoke_command() -> list[str]:
    [line] = [m for m in re.findall(r"`(python -m repro\.launch [^`]*)`", README) if "--profile smoke" in m]
    return shlex.split(line)


def test_readme_smoke_command_stays_on_this_machine_with_sbatch_on_the_path(tmp_path, monkeypatch, capsys):
    """The tests (and a cluster's login node) put sbatch on the PATH; the laptop command must not go to SLURM."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text("#!/bin/sh\nexit 1\n")
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    argv = [a for a in smoke_command()[3:] if a not in ("--download", "--wait")]
    assert launch.main([*argv, "--dry-run", "--results-dir", str(tmp_path / "results")]) == 0
    assert "would submit 8 runs (local, 1 per GPU)" in capsys.readouterr().out


def test_status_names_the_smoke_records_when_asked_for_the_full_profile(tmp_path, capsys):
    results = tmp_path / "results"
    for column in ("avgpool", "flexpool"):
        write_run(results, "table1", "fashion_mnist", column, 0, 0.5, profile="smoke")
    argv = ["table1", "--datasets", "fashion_mnist", "--results-dir", str(results)]
    assert status.main(argv) == 0
    out = capsys.readouterr().out
    assert "0 done" in out and "4 pending" in out
    assert ("also here: 2 record(s) of profile smoke, recipe paper (see them with --profile smoke --recipe paper)"
            in out)
    assert status.main([*argv, "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "2 done" in out and "also here" not in out


def test_cpu_threads_share_the_cores_unless_omp_num_threads_says(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert launch.cpu_threads(1) == cores
    assert launch.cpu_threads(cores * 2) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert launch.cpu_threads(1) is None  # torch then takes OMP_NUM_THREADS, which the run processes inherit
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert launch.cpu_threads(2) is None  # on a GPU torch's own choice


def test_slurm_tests_skip_unless_asked(monkeypatch, capsys):
    monkeypatch.delenv(SLURM_OPT_IN, raising=False)
    code = pytest.main(["-q", "-rs", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_slurm.py")])
    out = capsys.readouterr().out
    assert code == 0 and re.search(r"^\d+ skipped in ", out, re.MULTILINE), out  # nothing ran, nothing failed
    reason = f"installs and starts a local SLURM cluster: run with {SLURM_OPT_IN}=1"
    assert re.search(rf"^SKIPPED \[\d+\] tests/test_slurm.py: {reason}$", out, re.MULTILINE), out
    assert f"{SLURM_OPT_IN}=1" in readme_section("The three commands")
    assert f"{SLURM_OPT_IN}=1 pytest" in (ROOT / ".ci" / "run").read_text()


def test_readme_lists_every_key_a_run_logs_to_wandb(tmp_path, monkeypatch):
    logged = set()
    monkeypatch.setattr(Tracker, "log", lambda self, metrics, step: logged.update(metrics) or True)
    config = RunConfig(dataset="synthetic", pool="flex", epochs=1, batch_size=64, lr=TINY_LR, train_subset=128,
                       test_subset=64, sac=True, cell="table2/synthetic/flexpool", results_dir=str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    train.run(config)
    text = readme_section("Tracking with Weights & Biases", (ROOT / "repro" / "README.md").read_text())
    per_epoch = text.split("Per epoch", 1)[1].split("Summary:", 1)[0]
    # every kind of key, or the check below passes on what was never logged
    assert {"train_loss", "eval_accuracy", "head3_accuracy"} <= logged, sorted(logged)
    assert any(key.startswith("flexpool/") for key in logged), sorted(logged)
    for key in logged:
        if key.startswith("flexpool/"):
            assert "`flexpool/<layer>/{mean,std,min,max,channel_sum_dev}`" in per_epoch
            assert key.rsplit("/", 1)[1] in ("mean", "std", "min", "max", "channel_sum_dev"), key
        elif re.fullmatch(r"head\d_accuracy", key):
            assert "`head1..3_accuracy`" in per_epoch
        else:
            assert f"`{key}`" in per_epoch, f"W&B key {key} is not in the README"


def test_readme_is_short_and_every_folder_readme_it_names_exists():
    assert len(README.splitlines()) <= 150, "the details belong in the folders' READMEs"
    named = re.findall(r"`((?:[\w.]+/)+(?:README\.md)?)`", readme_section("More"))
    assert len(named) >= 6 and all((ROOT / path).exists() for path in named), named
