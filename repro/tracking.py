"""Weights & Biases for every run. Tracking must never cost a training run: every failure is a warning.

Offline by default (no network, ~1 s); `--wandb online` or W&B's own WANDB_MODE opts in. The W&B run id is the
run's stable id, so a resumed, requeued or manually relaunched run continues the same W&B run.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from repro.config import RunConfig


def _warn(what: str, error: Exception) -> None:
    warnings.warn(f"W&B {what} failed, training goes on without it: {type(error).__name__}: {error}",
                  stacklevel=3)


def wandb_run_id(config: RunConfig) -> str:
    return config.run_id


def tags(config: RunConfig) -> list[str]:
    parts = config.cell.split("/") if config.cell else ["adhoc", config.dataset]
    return parts + [f"pool={config.pool}"] + (["sac"] if config.sac else [])


class Tracker:
    def __init__(self, config: RunConfig):
        self.run = None
        mode = os.environ.get("WANDB_MODE") or config.wandb
        if mode == "disabled":
            return
        try:
            import wandb

            directory = Path(config.results_dir)  # W&B adds its own wandb/ folder inside
            directory.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=config.wandb_project, entity=config.wandb_entity or None, mode=mode,
                id=wandb_run_id(config), resume="allow", dir=str(directory),
                group=config.wandb_group or config.cell or f"adhoc/{config.dataset}",
                name=f"{config.cell or config.dataset}/seed{config.seed}", tags=tags(config),
                config={**config.to_dict(), "run_id": config.run_id, "eval_split": config.eval_split},
                reinit="finish_previous",
                settings=wandb.Settings(silent=True, init_timeout=60),
            )
        except Exception as e:  # noqa: BLE001 - any tracking error is only a warning
            _warn("init", e)

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None:
            try:
                self.run.log(metrics, step=step)
            except Exception as e:  # noqa: BLE001
                _warn("log", e)

    def finish(self, summary: dict | None = None, exit_code: int = 0) -> None:
        if self.run is None:
            return
        try:
            if summary:
                self.run.summary.update(summary)
            self.run.finish(exit_code=exit_code)
        except Exception as e:  # noqa: BLE001
            _warn("finish", e)
        self.run = None
