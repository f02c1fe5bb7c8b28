"""Run records and checkpoints on disk: where they live (from the run's id) and how they are written safely.

A record is one JSON file per run, written atomically (temp file + rename), so a crash or a preempted job
never leaves half a record. Record fields (SCHEMA = 1):
  schema, run_id, cell, status ("completed" | "failed"), error, config (RunConfig as a dict),
  eval_split ("test" | "val"), profile and recipe (experiments.PROFILES / RECIPES the config matches, or
  "custom"), metrics {accuracy, head_accuracies, train_loss},
  history [{epoch, train_loss, train_accuracy, eval_accuracy, head_accuracies, lr, images_per_s, seconds}],
  timing {wall_s, train_s, images_per_s}, env {device, torch, torchvision, python, git_commit, host, date},
  flexpool {"<module name>": {"shape", "channel_mean" (H x W), "channels" (first few, C' x H x W), "sums"}}.
Accuracies are fractions in [0, 1]. No torch at import time: analysis reads records without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path

from repro.config import RunConfig

SCHEMA = 1
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class RecordError(ValueError):
    """A record or checkpoint file that cannot be read (truncated, not JSON, wrong schema)."""


def record_path(config: RunConfig) -> Path:
    """results/runs/<table>/<dataset>/<column>/seed<k>-<run id>.json; runs outside a table go to adhoc/."""
    cell = config.cell or f"adhoc/{config.dataset}"
    return Path(config.results_dir) / "runs" / cell / f"seed{config.seed}-{config.run_id}.json"


def checkpoint_path(config: RunConfig) -> Path:
    return Path(config.results_dir) / "checkpoints" / f"{config.run_id}.pt"


def lock_path(config: RunConfig) -> Path:
    return Path(config.results_dir) / "locks" / f"{config.run_id}.lock"


def atomic_write(path: Path, write) -> None:
    """`write(binary file)` into a temp file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes files private; records are shared with the team as usual
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_record(record: dict, path: Path) -> None:
    atomic_write(Path(path), lambda f: f.write(json.dumps(record, indent=1).encode()))


def read_record(path: Path) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{path}: not a readable run record ({e})") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA or "config" not in record:
        raise RecordError(f"{path}: not a run record of schema {SCHEMA}")
    return record


def run_status(config: RunConfig) -> str:
    """'completed', 'failed', 'corrupt' or 'missing': what the record on disk says about this run."""
    path = record_path(config)
    if not path.exists():
        return "missing"
    try:
        return read_record(path)["status"]
    except (RecordError, KeyError):
        return "corrupt"


def save_checkpoint(state: dict, path: Path) -> None:
    import torch

    atomic_write(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict | None:
    """The saved state, or None when there is none; a corrupt file raises RecordError."""
    import torch

    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a truncated or foreign file
        raise RecordError(f"{path}: corrupt checkpoint ({type(e).__name__}: {e})") from None


@contextlib.contextmanager
def exclusive(config: RunConfig):
    """Hold the run's lock while it trains; yields False when another process already holds it.

    Two launches of one target can then never train the same run at once or race on its record.
    """
    path = lock_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)
