"""repro/tracking.py: a tiny training in W&B offline mode, read back from the run's .wandb file. CPU, ~15 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repro import layout, records, train
from repro.config import RunConfig
from repro.tracking import Tracker
from tests.helpers import TINY_LR, history_epochs, inspect, offline_runs

SECRET = "0123456789abcdef0123456789abcdef01234567"  # an API key in the environment must never reach a file


def tiny(tmp_path: Path, **changes) -> RunConfig:
    return RunConfig(dataset="synthetic", pool="flex", reg=1e-3, epochs=2, batch_size=64, lr=TINY_LR, train_subset=128,
                     test_subset=64, cell="table1/synthetic/flexpool-reg", results_dir=str(tmp_path)).replace(**changes)


@pytest.fixture(autouse=True)
def clean_wandb_env(monkeypatch):
    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", SECRET)


def test_offline_run_holds_config_metrics_and_summary(tmp_path):
    config = tiny(tmp_path)
    record = train.run(config)
    assert record["status"] == "completed"
    [run_dir] = offline_runs(tmp_path)
    assert run_dir.name.endswith(config.run_id)  # the W&B id is the run's stable id
    entries = inspect(run_dir)

    run = next(e["run"] for e in entries if e["type"] == "run")
    logged = {k: v["value"] if isinstance(v, dict) and "value" in v else v
              for k, v in run["config"]["update"].items()}
    assert logged["pool"] == "flex" and logged["reg"] == 1e-3 and logged["run_id"] == config.run_id
    assert logged["eval_split"] == "test"
    assert run["run_group"] == config.cell
    assert run["tags"][:3] == ["table1", "synthetic", "flexpool-reg"]
    assert "seed0" in run["display_name"]

    history = [e["history"]["item"] for e in entries if e["type"] == "history"]
    assert [h["epoch"] for h in history] == [1, 2]
    for logged_epoch, recorded in zip(history, record["history"]):
        for key in ("train_loss", "train_accuracy", "eval_accuracy", "lr", "images_per_s"):
            assert logged_epoch[key] == pytest.approx(recorded[key], rel=1e-6), key
        assert logged_epoch["head1_accuracy"] == pytest.approx(recorded["head_accuracies"][0])
        assert any(k.startswith("flexpool/") and k.endswith("/mean") for k in logged_epoch)

    summary = {}
    for e in entries:
        if e["type"] == "summary":
            summary.update(e["summary"]["update"])
    assert summary["accuracy"] == pytest.approx(record["metrics"]["accuracy"])
    assert summary["status"] == "completed"
    assert next(e["exit"]["exit_code"] for e in entries if e["type"] == "exit") == 0

    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_same_config_continues_the_same_wandb_run(tmp_path):
    """A requeued or relaunched run logs into the W&B run of its first attempt (same id, resume allowed)."""
    config = tiny(tmp_path, sac=True)
    for step in (1, 2):
        tracker = Tracker(config)
        assert tracker.run is not None and tracker.run.id == config.run_id
        tracker.log({"train_loss": float(step)}, step=step)
        tracker.finish({"status": "completed"})
    files = [p.name for p in (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")]
    assert files == [f"run-{config.run_id}.wandb"] * 2


def test_disabled_mode_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")  # W&B's own variable is honoured
    tracker = Tracker(tiny(tmp_path))
    tracker.log({"x": 1.0}, step=1)
    tracker.finish()
    assert tracker.run is None and not (tmp_path / "wandb").exists()


def test_tracking_failure_never_costs_the_run(tmp_path, monkeypatch):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("no W&B today")

    monkeypatch.setattr(wandb, "init", broken)
    with pytest.warns(UserWarning, match="W&B init failed"):
        record = train.run(tiny(tmp_path, epochs=1))
    assert record["status"] == "completed"


def train_command(config: RunConfig) -> list[str]:
    # the recipe of `tiny`'s RunConfig defaults: the command trains the run the test names
    return [sys.executable, "-m", "repro.train", "--recipe", "suite", "--dataset", "synthetic", "--pool", "flex",
            "--reg", "1e-3", "--epochs", str(config.epochs), "--batch-size", "64", "--lr", str(config.lr),
            "--train-subset", "128", "--test-subset", "64", "--cell", config.cell, "--results-dir", config.results_dir]


def wait_for_checkpoint(process: subprocess.Popen, config: RunConfig) -> None:
    end = time.time() + 300
    while not layout.checkpoint_path(config).exists() and process.poll() is None and time.time() < end:
        time.sleep(0.02)


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(stat.parent.name))
    return found


def test_run_stopped_by_sigterm_and_resumed_logs_every_epoch_once(tmp_path):
    """SIGTERM (scancel, SLURM's requeue) stops the run with its W&B history written; the resumed run adds the
    rest, so W&B holds epochs 1..N once each, as the record does."""
    config = tiny(tmp_path, epochs=20)  # epochs of a fraction of a second: the signal comes long before the last
    argv = train_command(config)
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = layout.checkpoint_path(config)
    wait_for_checkpoint(first, config)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 143 == records.STOPPED_EXIT, err
    assert err.strip().splitlines()[-1].startswith("stopped: SIGTERM")
    assert not layout.record_path(config).exists()
    stopped_after = len(records.load_checkpoint(checkpoint)["history"])
    assert 1 <= stopped_after < 20

    resumed = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert [h["epoch"] for h in records.read_record(layout.record_path(config))["history"]] == list(range(1, 21))
    attempts = [history_epochs(run_dir) for run_dir in offline_runs(tmp_path)]
    assert attempts == [list(range(1, stopped_after + 1)), list(range(stopped_after + 1, 21))]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds W&B's service process through /proc")
def test_sigterm_to_the_run_and_its_wandb_service_ends_in_one_line(tmp_path):
    """SLURM signals every process of a job, W&B's service too: the run stops with one line, and W&B's exit
    hook, which would talk to the service that is gone, leaves no traceback in the run's log."""
    config = tiny(tmp_path, epochs=500)
    # Its own service, as a launched run has: not the one an earlier test started in this process and named in
    # the environment (WANDB_SERVICE), which a child would otherwise connect to.
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    run = subprocess.Popen(train_command(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for_checkpoint(run, config)
    services = children(run.pid)
    assert services, "W&B's service is a child process of the run"
    for service in services:
        os.killpg(os.getpgid(service), signal.SIGTERM)  # its own session: its group holds its helpers too
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == records.STOPPED_EXIT, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("stopped: SIGTERM"), err
