"""Where everything lives in a results folder, written once; every module asks here:

    runs/<table>/<dataset>/<column>/seed<k>-<run id>.json   a run's record (runs outside a table: adhoc/<dataset>/)
    checkpoints/<run id>.pt                                 its last epoch (--checkpoint-dir: anywhere else)
    locks/<run id>.lock                                     held while a process trains it
    queued/<run id>.job                                     the job that holds it until it starts
    slurm-logs/runs/<as runs/>.log                          its log, over every job that trained it
    slurm-logs/<date>/<time>-<name>-<pid>/                  one submission's job files, logs and code snapshot
    wandb/                                                  W&B's offline runs
    sweeps/<study>.db, .log, .best.json                     a study's storage and its best parameters
    sweeps/<study>/                                         its trials, a results folder of their own
    tables/, figures/, report/ <profile>/<recipe>/          what analysis writes from runs/
    bench/                                                  repro.bench's measurements

No torch, nothing but paths: the analysis and the launcher's planning use it too.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from repro.config import RunConfig, default_checkpoint_dir

RUNS, LOGS, SWEEPS = "runs", "slurm-logs", "sweeps"
OUTPUTS = {"tables": "tables", "figures": "figures", "report": "report"}  # analysis command -> its folder


def runs_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / RUNS


def record_path(config: RunConfig) -> Path:
    return runs_dir(config.results_dir) / config.folder / f"seed{config.seed}-{config.run_id}.json"


def seed_records(config: RunConfig) -> list[Path]:
    """Every record of the run's cell and seed, whatever its run id (another profile, recipe or --params)."""
    return sorted(record_path(config).parent.glob(f"seed{config.seed}-*.json"))


def checkpoint_path(config: RunConfig) -> Path:
    folder = config.checkpoint_dir or default_checkpoint_dir() or Path(config.results_dir) / "checkpoints"
    return Path(folder) / f"{config.run_id}.pt"


def lock_path(config: RunConfig) -> Path:
    return Path(config.results_dir) / "locks" / f"{config.run_id}.lock"


def queue_path(config: RunConfig) -> Path:
    """Names the job that holds the run until it starts: 'slurm HOST 12345_3' or 'local HOST PID'."""
    return Path(config.results_dir) / "queued" / f"{config.run_id}.job"


def run_logs_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / LOGS / "runs"


def log_path(config: RunConfig) -> Path:
    """One log per run, at a path that depends only on the run, so status can point at it from any launch."""
    return run_logs_dir(config.results_dir) / config.folder / f"seed{config.seed}-{config.run_id}.log"


def job_folder(results_dir: str | Path, name: str) -> Path:
    now = datetime.datetime.now()
    return Path(results_dir) / LOGS / f"{now:%Y-%m-%d}" / f"{now:%H%M%S}-{name}-{os.getpid()}"


def study_files(results_dir: str | Path, study: str) -> tuple[Path, Path]:
    """A study's default storage: its SQLite file and its journal file (one machine; SLURM)."""
    return Path(results_dir) / SWEEPS / f"{study}.db", Path(results_dir) / SWEEPS / f"{study}.log"


def best_params_path(results_dir: str | Path, study: str) -> Path:
    return Path(results_dir) / SWEEPS / f"{study}.best.json"


def trials_dir(folder: str | Path, study: str) -> Path:
    """A study's own part of a results or checkpoint folder: two studies never train one run id into one
    checkpoint under two locks."""
    return Path(folder) / SWEEPS / study


def bench_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "bench"


def output_dir(results_dir: str | Path, command: str, profile: str, recipe: str) -> Path:
    return Path(results_dir) / OUTPUTS[command] / profile / recipe
