"""What several test modules share: the repository, tiny inputs, running a command, reading back what it wrote.
Fixtures live in conftest.py. Torch only inside the functions that train: the analysis tests run without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from repro import layout, records, studies, sweep
from repro.experiments import DEFAULT_RECIPE, cell_config, plan, profile_of, recipe_of

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 40, 20  # images in each tiny data set conftest writes
# The learning rate of the tests' tiny runs (batches of 8 to 64): the paper's 0.1 is for batches of 1000, and at
# batch 64 it makes FlexPool's loss jump on some seeds and machines, and such a run ends diverged.
TINY_LR = 0.02
SLURM_OPT_IN = "FLEXPOOL_TEST_SLURM"
WANDB = Path(sys.executable).parent / "wandb"


def wait_for(condition, timeout=300, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ---- launch and status ----------------------------------------------------------------------------------------

def main(capsys, module, *argv):
    """A command's exit code, stdout and stderr."""
    code = module.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def selection(tmp_path, data_root, *argv):
    """Plan arguments for smoke runs of the Fashion-MNIST cells (launch and status take them alike)."""
    return ("--datasets", "fashion_mnist", "--profile", "smoke", "--data-root", data_root,
            "--results-dir", tmp_path / "results", *argv)


def smoke(tmp_path, data_root, *argv):
    """Launch arguments for those runs on this machine."""
    return (*selection(tmp_path, data_root, *argv), "--executor", "local")


def configs(tmp_path, data_root, target="table1", seeds=1, columns=None, **params):
    return plan(target, seeds, ["fashion_mnist"], columns, "smoke", params or None,
                results_dir=str((tmp_path / "results").resolve()), data_root=str(Path(data_root).resolve()))


def training_starts(config) -> int:
    return layout.log_path(config).read_text().count("] epoch 1/")


def fake_squeue(tmp_path, monkeypatch, script: str) -> None:
    """An squeue that runs `script` (sh), first on the PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text(f"#!/bin/sh\n{script}\n")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def sacct_states(job: str, *flags: str) -> set[str]:
    out = subprocess.run(["sacct", "-j", job, "-X", "-n", "-P", "-o", "State", *flags], capture_output=True,
                         text=True, check=True).stdout
    return set(out.split())


# ---- W&B's offline files --------------------------------------------------------------------------------------

def inspect(run_dir: Path) -> list[dict]:
    """The records of an offline run's .wandb file, as W&B's own reader prints them."""
    out = subprocess.run([str(WANDB), "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def offline_runs(results: Path) -> list[Path]:
    return sorted((results / "wandb").glob("offline-run-*"))


def history_epochs(run_dir: Path) -> list[int]:
    return [e["history"]["item"]["epoch"] for e in inspect(run_dir) if e["type"] == "history"]


# ---- records for the analysis ---------------------------------------------------------------------------------

def flexpool_weights(rng, channels=4, size=8) -> dict:
    w = rng.uniform(0.5, 1.5, (channels, size, size)) / size**2
    return {"shape": [channels, size, size], "channel_mean": w.mean(0).tolist(),
            "channels": w[:3].tolist(), "sums": w.sum((1, 2)).tolist()}


def write_run(results: Path, table, dataset, column, seed, accuracy, profile="full", status="completed",
              params=None, recipe=DEFAULT_RECIPE, **extra) -> Path:
    """A realistic record at the path the trainer would use."""
    cfg = cell_config(table, dataset, column, profile, params, recipe).replace(seed=seed, results_dir=str(results))
    rng = np.random.default_rng(seed)
    record = {
        "schema": records.SCHEMA, "run_id": cfg.run_id, "cell": cfg.cell, "status": status,
        "error": None if status == "completed" else "Traceback ...\nRuntimeError: CUDA out of memory",
        "config": cfg.to_dict(), "eval_split": cfg.eval_split, "profile": profile_of(cfg), "recipe": recipe_of(cfg),
        "metrics": {"accuracy": accuracy, "head_accuracies": [0.5, 0.7, accuracy], "train_loss": 0.3},
        "history": [{"epoch": 1, "train_loss": 0.3, "eval_accuracy": accuracy}],
        "timing": {"wall_s": 10.0, "train_s": 9.0, "images_per_s": 5000.0},
        "env": {"device": "cpu", "date": "2026-01-01T00:00:00", "git_commit": "abc"},
        "flexpool": {} if column == "avgpool" else {"pool": flexpool_weights(rng)},
        **extra,
    }
    if cfg.sac and column != "avgpool":
        record["flexpool"].update({"heads.0.pool": flexpool_weights(rng, 2, 32),
                                   "heads.1.pool": flexpool_weights(rng, 2, 16)})
    path = layout.record_path(cfg)
    records.write_record(record, path)
    return path


# ---- sweeps ---------------------------------------------------------------------------------------------------

STUDY_FIXED = {"dataset": "synthetic", "pool": "flex", "epochs": 2, "batch_size": 32, "train_subset": 64,
               "test_subset": 32, "val_fraction": 0.2}
STUDY_SPACE = {"reg": {"low": 1e-5, "high": 1e-2, "log": True}, "dropout": {"low": 0.0, "high": 0.5},
               "lr": {"low": 0.01, "high": 0.3, "log": True}}


def write_study(tmp_path: Path, name: str = "tiny", **changes) -> Path:
    spec = {"description": "test", "trials": 4, "pruner": {"type": "median", "n_startup_trials": 1},
            "fixed": STUDY_FIXED, "space": STUDY_SPACE, **changes}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def in_process(tmp_path: Path, storage: str, heartbeat: int, trials: int = 1):
    """A tiny study, created in `storage`, for a worker run in this process: (study, runtime, optuna study)."""
    quiet_study = studies.load_study(str(write_study(tmp_path, trials=trials)))
    fields = {"results_dir": str(tmp_path / "results"), "wandb": "disabled", "device": "cpu"}
    runtime = sweep.Runtime(storage, heartbeat, fields)
    optuna_study = sweep.create(quiet_study, storage, heartbeat)
    return quiet_study, runtime, optuna_study


# ---- the optimizers' update -----------------------------------------------------------------------------------

def fresh(config, device: torch.device):
    """A new run's model, optimizer and parameters (in the optimizer's order)."""
    from repro import train

    model = train.make_model(config, device)
    optimizer = train.make_optimizer(config, model)
    return model, optimizer, [p for group in optimizer.param_groups for p in group["params"]]


def updated(config, device: torch.device, grads: list, written_out: bool) -> list[torch.Tensor]:
    """The parameters after one update per list of gradients, at learning rates 0.1, 0.05, 0.02: by the compiled
    step's written-out update (run eagerly), or by optimizer.step() with the learning rate set as eager sets it."""
    import torch

    from repro import compiled

    _, optimizer, params = fresh(config, device)
    update = compiled.make_update(optimizer) if written_out else None
    for lr, step_grads in zip((0.1, 0.05, 0.02), grads, strict=True):
        lr = torch.tensor(lr, device=device)
        if written_out:
            with torch.no_grad():
                update(lr, step_grads)
            continue
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        optimizer.step()
    return [p.detach().clone() for p in params]
