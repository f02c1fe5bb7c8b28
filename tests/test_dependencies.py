"""What pyproject.toml promises about the dependencies: requirements.lock follows it, and the private parts of
optuna and W&B the suite relies on (each behind one function) still work as that function expects. A change in
either library fails here, saying which part changed. CPU, ~10 s."""

from __future__ import annotations

import re
import time
import tomllib
import warnings
from pathlib import Path

import pytest
from packaging.requirements import Requirement  # pytest's own dependency
from packaging.utils import canonicalize_name

from repro.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_lock_file_pins_every_requirement_within_pyproject():
    """A requirement added to pyproject.toml, or a floor raised past its pin, without requirements.lock following
    (CI also recompiles the lock and fails on any difference: tests/README.md)."""
    text = LOCK.read_text()
    command = re.search(r"^#\s+(uv pip compile .*)$", text, re.MULTILINE)
    assert command, "requirements.lock has no `uv pip compile` header: regenerate it as tests/README.md says"
    pins = {canonicalize_name(name): version
            for name, version in re.findall(r"^([A-Za-z0-9._-]+)==([^\s;]+)", text, re.MULTILINE)}
    stale = [f"{r} (locked: {pins.get(canonicalize_name(r.name), 'missing')})" for r in requirements()
             if not r.specifier.contains(pins.get(canonicalize_name(r.name), "0.dev0"), prereleases=True)]
    assert not stale, f"requirements.lock does not follow pyproject.toml: {'; '.join(stale)}; run `{command[1]}`"


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning", "ignore:Heartbeat of storage")
def test_optuna_still_fails_a_silent_trial_of_the_journal_storage(tmp_path):
    """repro.sweep.heartbeat_interface: optuna's private heartbeat interface, implemented by the journal storage."""
    import optuna
    from optuna.trial import TrialState

    from repro import sweep

    interface = sweep.heartbeat_interface()
    implemented = {name for name in vars(sweep.HeartbeatJournalStorage) if callable(getattr(interface, name, None))}
    assert set(interface.__abstractmethods__) <= implemented, (
        f"optuna {optuna.__version__} changed its private heartbeat interface (optuna.storages._heartbeat."
        f"BaseHeartbeat): it asks for {sorted(interface.__abstractmethods__)}, repro.sweep.HeartbeatJournalStorage "
        f"implements {sorted(implemented)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = sweep.HeartbeatJournalStorage(str(tmp_path / "journal.log"), 1, sweep.retry_callback())
    study = optuna.create_study(storage=storage)
    study.ask()  # its worker died: RUNNING, no heartbeat
    time.sleep(2.2)  # twice the interval
    optuna.storages.fail_stale_trials(study)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [TrialState.FAIL, TrialState.WAITING], (
        f"optuna {optuna.__version__} no longer fails and retries a silent trial of repro.sweep."
        f"HeartbeatJournalStorage (trial states {states}): its private heartbeat interface changed")


@pytest.fixture
def offline_wandb(monkeypatch):
    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)


def test_wandb_takes_the_private_flush_setting(offline_wandb):
    """repro.tracking.wandb_settings: W&B's private x_transaction_log_flush_interval."""
    import wandb

    from repro import tracking

    try:
        settings = tracking.wandb_settings(wandb)
    except Exception as e:  # noqa: BLE001 - pydantic's ValidationError, or whatever W&B raises instead
        pytest.fail(f"W&B {wandb.__version__} refuses its private setting x_transaction_log_flush_interval, which "
                    f"repro.tracking.wandb_settings passes so that SLURM's SIGTERM loses no epoch: "
                    f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
    assert settings.x_transaction_log_flush_interval == tracking.FLUSH_INTERVAL_S


def test_wandb_writes_each_epoch_to_its_file_in_the_format_history_steps_reads(tmp_path, offline_wandb):
    """repro.tracking.history_steps: the .wandb file's format (LevelDB log of W&B's Record messages)."""
    import wandb

    from repro import tracking

    config = RunConfig(dataset="synthetic", results_dir=str(tmp_path), wandb="offline")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker = tracking.Tracker(config)
        assert tracker.run is not None, f"W&B {wandb.__version__} did not start: {[str(w.message) for w in caught]}"
        path = tracker.log_file
        confirmed = [tracker.log({"train_loss": 1.0 / step}, step=step) for step in (1, 2)]
        tracker.finish({"status": "completed"})
    steps: set[int] = set()
    end = tracking.history_steps(path, tracking.FILE_HEADER, steps)
    assert confirmed == [True, True] and steps == {1, 2}, (
        f"W&B {wandb.__version__} changed its .wandb file format or stopped writing each step at once: "
        f"repro.tracking.history_steps read steps {sorted(steps)} of 1, 2 from {path} (up to byte {end} of "
        f"{path.stat().st_size}); Tracker.log confirmed {confirmed}; warnings: {[str(w.message) for w in caught]}")
