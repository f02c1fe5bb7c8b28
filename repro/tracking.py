"""Weights & Biases for every run. Tracking must never cost a training run: every failure is a warning.

Offline by default (no network, ~1 s); `--wandb online` or W&B's own WANDB_MODE opts in. The W&B run id is the
run's stable id, so a resumed, requeued or manually relaunched run continues the same W&B run.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
import warnings
from pathlib import Path

from repro.config import RunConfig
from repro.experiments import profile_of, recipe_of

# W&B's service process buffers a run's records and writes them to the run's .wandb file every this many seconds
# (W&B's default: 15). SLURM's SIGTERM (requeue, preemption) ends the service together with the run, and whatever
# it had not written is lost; `Tracker.log` returns once W&B has written the epoch.
FLUSH_INTERVAL_S = 0.01
WRITE_TIMEOUT_S = 2.0
# A .wandb file: 7 bytes of file header, then LevelDB's log format: 32 KiB blocks of chunks, each a 7-byte header
# (checksum, length, type) and its bytes; a record is one whole chunk or a first, middles and a last one.
FILE_HEADER, BLOCK, CHUNK_HEADER = 7, 32768, 7
WHOLE, LAST = 1, 4


def _warn(what: str, error: Exception) -> None:
    warnings.warn(f"W&B {what} failed, training goes on without it: {type(error).__name__}: {error}",
                  stacklevel=3)


def tags(config: RunConfig) -> list[str]:
    parts = config.folder.split("/")
    return parts + [f"pool={config.pool}", f"profile={profile_of(config)}", f"recipe={recipe_of(config)}"] + (
        ["sac"] if config.sac else [])


def wandb_settings(wandb):
    """W&B's settings for a run. `x_transaction_log_flush_interval` is a private setting (W&B 0.31 on, capped below
    1.0 in pyproject.toml); tests/test_dependencies.py fails with a clear message if W&B drops it."""
    return wandb.Settings(silent=True, init_timeout=60, x_transaction_log_flush_interval=FLUSH_INTERVAL_S)


class Tracker:
    def __init__(self, config: RunConfig):
        self.run = None
        self.log_file: Path | None = None  # the run's .wandb file, which W&B's service appends to
        self.read_to = FILE_HEADER  # how far log_file has been read back, at a record's end
        self.written: set[int] = set()  # steps whose history W&B has written to log_file
        self.confirm = False  # wait for each epoch to be written; off after W&B failed to confirm one
        mode = os.environ.get("WANDB_MODE") or config.wandb
        if mode == "disabled":
            return
        try:
            import wandb

            directory = Path(config.results_dir)  # W&B adds its own wandb/ folder inside
            directory.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=config.wandb_project, entity=config.wandb_entity or None, mode=mode,
                id=config.run_id, resume="allow", dir=str(directory),
                group=config.wandb_group or config.folder,
                name=f"{config.cell or config.dataset}/seed{config.seed}", tags=tags(config),
                config={**config.to_dict(), "run_id": config.run_id, "eval_split": config.eval_split},
                reinit="finish_previous", settings=wandb_settings(wandb),
            )
            self.log_file, self.confirm = Path(self.run.settings.sync_file), True
        except Exception as e:  # noqa: BLE001 - any tracking error is only a warning
            _warn("init", e)

    def log(self, metrics: dict, step: int) -> bool:
        """Log one epoch and wait until W&B has written it to its file: True when it has (or there is no W&B
        run), False when W&B did not confirm it within WRITE_TIMEOUT_S (later epochs then do not wait)."""
        if self.run is None:
            return True
        try:
            self.run.log(metrics, step=step, commit=True)  # commit: now, not when the next step is logged
        except Exception as e:  # noqa: BLE001
            _warn("log", e)
            return False
        end = time.monotonic() + WRITE_TIMEOUT_S
        try:
            while self.confirm:
                self.read_to = history_steps(self.log_file, self.read_to, self.written)
                if step in self.written:
                    return True
                if time.monotonic() > end:
                    raise TimeoutError(f"no history record of step {step} in {self.log_file} after "
                                       f"{WRITE_TIMEOUT_S} s")
                time.sleep(0.002)
        except Exception as e:  # noqa: BLE001
            _warn("confirming an epoch", e)
            self.confirm = False
        return False

    def finish(self, summary: dict | None = None, exit_code: int = 0) -> None:
        if self.run is None:
            return
        try:
            if summary:
                self.run.summary.update(summary)
            self.run.finish(exit_code=exit_code)
        except Exception as e:  # noqa: BLE001
            _warn("finish", e)
            # Let go of the W&B service that is gone (SLURM's SIGTERM ends it with the run): teardown
            # unregisters W&B's exit hook, which would otherwise talk to it and print a ConnectionResetError
            # traceback into the run's log. Its errors are ignored: there is nothing left to tell the service.
            import wandb

            with contextlib.suppress(Exception):
                wandb.teardown()
        self.run = None


def history_steps(path: Path, start: int, steps: set[int]) -> int:
    """Add the steps of the history records in the .wandb file `path` after offset `start` (a record's end) to
    `steps`; returns the offset where its last whole record ends. The file's format and W&B's `Record` message are
    W&B's own, not a public API: tests/test_dependencies.py fails with a clear message if W&B changes them."""
    from wandb.proto.wandb_internal_pb2 import Record

    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    pos, record, end = start, b"", start
    while True:
        if BLOCK - pos % BLOCK < CHUNK_HEADER:  # a block's tail too short for a chunk is padding
            pos += BLOCK - pos % BLOCK
        if pos + CHUNK_HEADER > start + len(data):
            return end
        _, length, kind = struct.unpack("<IHB", data[pos - start:pos - start + CHUNK_HEADER])
        if pos + CHUNK_HEADER + length > start + len(data):
            return end
        record += data[pos - start + CHUNK_HEADER:pos - start + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind in (WHOLE, LAST):
            parsed = Record.FromString(record)
            if parsed.WhichOneof("record_type") == "history":
                steps.add(parsed.history.step.num)
            record, end = b"", pos
