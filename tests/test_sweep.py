"""repro/sweep.py: 4-trial studies on tiny synthetic data on the CPU, SQLite and journal storage, two concurrent
local workers, retries of a dead worker's trial, the best-parameter export, W&B sweep files, bad input. ~1 min."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from repro import records, studies, sweep, train, wandb_agent
from repro.config import RunConfig, field_names, flag
from repro.experiments import RUNTIME_FIELDS, load_params, plan
from tests.helpers import ROOT, STUDY_FIXED, in_process, inspect, sacct_states, wait_for, write_study

pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")]
def run_sweep(*argv, timeout=300) -> subprocess.CompletedProcess:
    # One thread per worker: two workers of 2-core-sized thread pools on a small CPU slow each other down 5x.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "repro.sweep", *map(str, argv)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout, check=False)
    print(result.stdout, result.stderr)
    return result


def trial_record(results: Path, name: str, trial) -> dict:
    [path] = (results / "sweeps" / name / "runs" / "sweep" / name / f"trial{trial.number}").glob("*.json")
    assert trial.user_attrs["run_id"] in path.name
    return records.read_record(path)


def check_study(storage: str, name: str, results: Path, budget: int) -> list:
    """Every trial finished and none lost; each trial's state, value and per-epoch values match its record."""
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert Counter(t.state for t in trials) - Counter({TrialState.COMPLETE: budget, TrialState.PRUNED: budget}) \
        == Counter(), [t.state for t in trials]
    assert len(trials) == budget
    for t in trials:
        record = trial_record(results, name, t)
        # a trial whose run diverged is complete, scored 0 (the searched lr reaches values that diverge)
        expected = {TrialState.COMPLETE: ("completed", "diverged"), TrialState.PRUNED: ("pruned",)}[t.state]
        assert record["status"] in expected
        assert record["eval_split"] == "val"
        assert t.intermediate_values == {e["epoch"]: e["eval_accuracy"] for e in record["history"]}
        if t.state == TrialState.COMPLETE:
            assert t.value == (0.0 if record["status"] == "diverged" else record["metrics"]["accuracy"])
        assert record["config"]["reg"] == t.params["reg"] and record["config"]["lr"] == t.params["lr"]
    return trials


def overlapping(trials) -> bool:
    return any(a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete
               for a in trials for b in trials if a.number < b.number)


def test_sqlite_two_local_workers_then_top_up_and_report(tmp_path):
    study, results = write_study(tmp_path), tmp_path / "results"
    result = run_sweep(study, "--workers", 2, "--executor", "local", "--wait", "--no-snapshot",
                       "--results-dir", results, "--wandb", "offline")
    assert result.returncode == 0
    assert result.stdout.count("[tiny] trial ") == 4  # a line per finished trial
    storage = f"sqlite:///{results / 'sweeps' / 'tiny.db'}"
    trials = check_study(storage, "tiny", results, 4)
    assert overlapping(trials), "the two workers did not train at the same time"

    # Each trial is a W&B run (offline here) in the sweep's group, with its parameters in the config.
    wandb_runs = sorted((results / "sweeps" / "tiny" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert {p.stem.removeprefix("run-") for p in wandb_runs} == {t.user_attrs["run_id"] for t in trials}
    run = next(entry["run"] for entry in inspect(wandb_runs[0]) if entry["type"] == "run")
    assert run["run_group"] == "sweep/tiny"
    trial = next(t for t in trials if t.user_attrs["run_id"] == wandb_runs[0].stem.removeprefix("run-"))
    assert run["config"]["update"]["reg"] == trial.params["reg"]

    # Launching again adds nothing: the study holds its budget; raising the budget tops it up.
    again = run_sweep(study, "--executor", "debug", "--results-dir", results)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    write_study(tmp_path, trials=5)
    assert run_sweep(study, "--executor", "debug", "--results-dir", results, "--wandb", "disabled").returncode == 0
    trials = check_study(storage, "tiny", results, 5)

    # The best parameters, as the launcher reads them.
    result = run_sweep(study, "--report", "--results-dir", results)
    assert result.returncode == 0 and "python -m repro.launch TARGET --recipe suite --params" in result.stdout
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    params = load_params(results / "sweeps" / "tiny.best.json")
    assert params == best.params
    assert json.loads((results / "sweeps" / "tiny.best.json").read_text())["recipe"] == "suite"  # the study's SGD
    configs = {c.cell: c for c in plan("table1", 1, ["cifar10"], profile="smoke", params=params, recipe="suite")}
    assert configs["table1/cifar10/flexpool-reg-dropout"].dropout == params["dropout"]
    assert configs["table1/cifar10/flexpool-reg"].reg == params["reg"]
    assert configs["table1/cifar10/avgpool"].reg == 0.0  # tuned values only where the column uses them
    # a tuned lr is one for the paper's batch of 1000: the smoke profile's 128 keeps its lr per image
    assert configs["table1/cifar10/flexpool"].lr == pytest.approx(params["lr"] * 128 / 1000)
    dry = subprocess.run([sys.executable, "-m", "repro.launch", "table1", "--profile", "smoke", "--recipe", "suite",
                          "--datasets", "cifar10", "--params", results / "sweeps" / "tiny.best.json", "--results-dir",
                          tmp_path / "tables", "--executor", "local", "--dry-run"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert dry.returncode == 0, dry.stderr


def test_journal_two_local_workers_prune(tmp_path):
    """A journal file (the storage for NFS); a pruner that stops every trial after its first epoch."""
    study = write_study(tmp_path, pruner={"type": "threshold", "lower": 1.01})
    results, journal = tmp_path / "results", tmp_path / "journal.log"
    result = run_sweep(study, "--workers", 2, "--executor", "local", "--wait", "--no-snapshot", "--storage",
                       journal, "--results-dir", results, "--wandb", "disabled")
    assert result.returncode == 0
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = check_study(storage, "tiny", results, 4)
    assert all(t.state == TrialState.PRUNED and list(t.intermediate_values) == [1] for t in trials)
    assert overlapping(trials)
    # Nothing completed, nothing to report: one line saying so.
    report = run_sweep(study, "--report", "--storage", journal, "--results-dir", results)
    assert report.returncode == 2 and report.stderr.strip().splitlines() == [
        "error: study tiny has no completed trial yet"]


def check_retried(optuna_study) -> None:
    dead, retried = optuna_study.trials
    assert dead.state == TrialState.FAIL and retried.state == TrialState.COMPLETE
    assert retried.params == dead.params and retried.system_attrs["failed_trial"] == 0


def test_journal_heartbeat_retries_a_dead_workers_trial(tmp_path):
    study, runtime, optuna_study = in_process(tmp_path, str(tmp_path / "journal.log"), heartbeat=1)
    dead = optuna_study.ask()  # a worker drew this trial, then died: RUNNING, its heartbeat silent
    studies.sample(study.space, lambda n, s: studies.suggest(dead, n, s))
    time.sleep(2.5)
    assert sweep.Worker()(study, runtime) == 1
    check_retried(optuna_study)


def test_trials_checkpoint_in_their_studys_folder_of_the_checkpoint_dir(tmp_path):
    study, runtime, _ = in_process(tmp_path, f"sqlite:///{tmp_path / 'study.db'}", heartbeat=60)
    runtime = dataclasses.replace(runtime, fields={**runtime.fields, "checkpoint_dir": str(tmp_path / "scratch")})
    assert sweep.Worker()(study, runtime) == 1
    assert len(list((tmp_path / "scratch" / "sweeps" / study.name).glob("*.pt"))) == 1
    assert not list((tmp_path / "results").rglob("*.pt"))


def test_preempted_worker_requeues_and_retries_its_trial(tmp_path):
    study, runtime, optuna_study = in_process(tmp_path, f"sqlite:///{tmp_path / 'study.db'}", heartbeat=60)
    worker = sweep.Worker()
    trial = optuna_study.ask()
    studies.sample(study.space, lambda n, s: studies.suggest(trial, n, s))
    worker.current = trial.number  # preempted while training it
    requeued = worker.checkpoint(study, runtime)
    assert requeued.result() == 1  # the next job: retries the trial at once, not after its heartbeat goes stale
    check_retried(optuna_study)


@pytest.mark.parametrize("content, message", [
    ("trials: [4\n", "is not valid YAML"),
    ("trials: 4\nfixed: {val_fraction: 0.1}\nspace: {learning_rate: {low: 0.1, high: 1}}\n",
     "'learning_rate' is not a repro.train option"),
    ("trials: 4\nfixed: {val_fraction: 0.1}\nspace: {results_dir: {choices: [a]}}\n", "pass it on the command line"),
    ("trials: 4\nspace: {lr: {low: 0.01, high: 0.1}}\n", "fixed val_fraction must be > 0"),
    ("trials: 4\nfixed: {val_fraction: 0.1}\nspace: {dropout: {low: 0.0, high: 1.5}}\n", "dropout must be in"),
    ("trials: 4\nfixed: {val_fraction: 0.1}\nspace: {lr: {low: 0.1, high: 0.01}}\n", "low < high"),
    ("trials: 4\nfixed: {val_fraction: 0.1}\nspace: {sac_weights: [{low: 0, high: 1}]}\n", "list of 3"),
    ("trials: 4\npruner: {type: median, bogus: 1}\nfixed: {val_fraction: 0.1}\nspace: {lr: {low: 0.01, high: 0.1}}\n",
     "pruner median"),
    ("trials: 0\nfixed: {val_fraction: 0.1}\nspace: {lr: {low: 0.01, high: 0.1}}\n", "trials must be"),
])
def test_bad_study_files_give_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert sweep.main([str(path), "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_unknown_study_from_the_command_line(tmp_path):
    result = run_sweep("no-such-study", "--results-dir", tmp_path, timeout=60)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: unknown study 'no-such-study'") and "reg-dropout-fashion_mnist" in line


def test_slurm_workers_refuse_sqlite(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/" + name)  # as if on a SLURM login node
    argv = [str(write_study(tmp_path)), "--executor", "slurm", "--storage", f"sqlite:///{tmp_path}/x.db"]
    assert sweep.main(argv) == 2
    assert "journal file" in capsys.readouterr().err


def test_studies_in_the_repository_load():
    names = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
    assert "reg-dropout-fashion_mnist" in names and "sac-cifar10" in names
    for name in names:
        study = studies.load_study(name)
        assert RunConfig.from_dict(study.fixed).eval_split == "val"
    assert "sac_weights" in studies.load_study("sac-cifar10").space


def sample_value(parameter: dict):
    return parameter["values"][0] if "values" in parameter else parameter["min"]


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps" / "wandb-agent").glob("*.yaml")), ids=lambda p: p.stem)
def test_wandb_sweep_files_match_their_study_and_the_trainer(path):
    """The agent's command gives repro.train the study's fixed values (as its Optuna trials take them) and
    W&B's picks of the searched ones, through the options every command shares: the run an agent trains is the
    Optuna trial's, recipe included, whatever repro.train's default recipe."""
    study = studies.load_study(path.stem)
    assert path.read_text() == wandb_agent.text(study), f"regenerate: python -m repro.sweep {path.stem} --export-wandb"
    spec = yaml.safe_load(path.read_text())
    command = spec["command"]
    assert command[:4] == ["${env}", "${interpreter}", "-m", "repro.train"]
    args = [f"--{name}={sample_value(p)}" for name, p in spec["parameters"].items()]
    argv = [a for c in command[4:] for a in (args if c == "${args_no_boolean_flags}" else [c])]
    config = train.parse_config(argv)
    for name, parameter in spec["parameters"].items():
        assert getattr(config, name.replace("-", "_")) == sample_value(parameter)
    fixed = RunConfig.from_dict(study.fixed)
    same = [n for n in field_names() if n not in RUNTIME_FIELDS and flag(n)[2:] not in spec["parameters"]]
    assert {n: getattr(config, n) for n in same} == {n: getattr(fixed, n) for n in same}
    assert config.eval_split == "val" and config.wandb == "online"


def test_a_wandb_sweep_command_trains(tmp_path):
    """The smoke study's W&B command, as an agent would run it, on tiny data (no W&B server here)."""
    spec = yaml.safe_load((ROOT / "sweeps" / "wandb-agent" / "smoke.yaml").read_text())
    args = [f"--{name}={sample_value(p)}" for name, p in spec["parameters"].items()]
    argv = [a for c in spec["command"][2:] for a in (args if c == "${args_no_boolean_flags}" else [c])]
    argv += ["--epochs", "1", "--train-subset", "64", "--results-dir", str(tmp_path)]
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}, check=False)
    assert result.returncode == 0, result.stderr
    [record] = (tmp_path / "runs").rglob("*.json")
    config = records.read_record(record)["config"]
    assert config["reg"] == spec["parameters"]["reg"]["min"] and config["dataset"] == "synthetic"
    assert config["wandb"] == "online"  # an agent's run reports to the sweep (W&B is off in this test only)


@pytest.mark.slurm
def test_preempted_slurm_worker_is_requeued_and_its_trial_resumes(tmp_path, slurm, monkeypatch):
    """On the local SLURM (tests/test_slurm.py): a worker preempted mid-trial is requeued, retries that trial with
    the same parameters, and the run resumes from its checkpoint; the journal file is the default storage."""
    monkeypatch.setenv("WANDB_MODE", "disabled")  # sbatch hands the environment to the jobs
    study = write_study(tmp_path, trials=2, pruner="none", fixed={**STUDY_FIXED, "epochs": 20},
                        space={"lr": {"low": 0.01, "high": 0.02}})
    results = tmp_path / "results"
    assert sweep.main([str(study), "--executor", "slurm", "--cluster", "local", "--results-dir", str(results)]) == 0
    checkpoints = results / "sweeps" / "tiny" / "checkpoints"
    wait_for(lambda: list(checkpoints.glob("*.pt")), 120, "the first trial's first checkpoint")
    job = subprocess.run(["squeue", "-h", "-o", "%i", "-n", "sweep-tiny"], capture_output=True, text=True,
                         check=True).stdout.split()[0]
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what SLURM sends before preempting
    journal = str(results / "sweeps" / "tiny.log")
    wait_for(lambda: len(sweep.existing(studies.load_study(str(study)), journal, results, 60).get_trials(
        states=sweep.FINISHED)) == 2, 600, "two finished trials")
    first, retried, second = optuna.load_study(study_name="tiny", storage=sweep.open_storage(journal, 60)).trials
    assert first.state == TrialState.FAIL and retried.system_attrs["failed_trial"] == 0
    assert retried.params == first.params and retried.user_attrs["run_id"] == first.user_attrs["run_id"]
    assert retried.state == second.state == TrialState.COMPLETE
    log = "".join(p.read_text() for p in (results / "slurm-logs").rglob("*_log.out"))
    assert f"resuming run {first.user_attrs['run_id']}" in log
    # SLURM's own account of the requeue. submitit's "Requeued job" line is not asked for: the SIGTERM that
    # `scontrol requeue` sends can stop the trial (and the job) before submitit writes that line.
    wait_for(lambda: sacct_states(job, "-D") == {"REQUEUED", "COMPLETED"}, 30,
             "sacct to show the requeued and the completed attempt")
