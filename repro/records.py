"""Run records and checkpoints on disk: where they live (from the run's id) and how they are written safely.

A record is one JSON file per run, written atomically (temp file + rename), so a crash or a preempted job
never leaves half a record. Record fields (SCHEMA = 1):
  schema, run_id, cell, status ("completed" | "failed" | "pruned" | "diverged"), error, diverged ({epoch,
  train_loss, rule} when it diverged, else null), config (RunConfig as a dict),
  eval_split ("test" | "val"), profile and recipe (experiments.PROFILES / RECIPES the config matches, or
  "custom"), metrics {accuracy, head_accuracies, train_loss},
  history [{epoch, train_loss, train_accuracy, eval_accuracy, head_accuracies, lr, images, images_per_s, seconds,
  precision ("bf16" | "fp32"), threads (torch's CPU threads), wall_s (of the run so far, across resumes); the
  first also start_loss (its first step's)}], timing {wall_s, train_s, images_per_s}, env {device, device_type,
  cpu_bf16_units and cpus (a CPU), threads (of the job that finished the run; a resumed run's earlier epochs may
  have had others, see history), torch, torchvision, python, git_commit, host, date, precision (its epochs',
  "fp32+bf16" if mixed)},
  flexpool {"<module name>": {"shape", "channel_mean" (H x W), "channels" (first few, C' x H x W), "sums"}}.
Accuracies are fractions in [0, 1]. `record_state` is the one judge of a record: the run's state
(repro.runs) and the analysis both take it. Input files (--params, studies, cluster profiles) are read here too,
so all read numbers alike, and how a run or a command ends (Stopped, STOPPED_EXIT, `command`: the exit codes of
every command, analysis's too). No torch at import time: analysis reads records without it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import math
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

import yaml

from repro import layout
from repro.config import ConfigError, RunConfig

# The exit code of a run's process that SIGTERM stopped (its checkpoint kept, no record), as a shell says.
STOPPED_EXIT = 128 + signal.SIGTERM


class Stopped(BaseException):
    """SIGTERM (scancel, SLURM's requeue or preemption, RunPack stopping its runs) stopped the run: its last
    epoch's checkpoint stays, no record is written, and running it again resumes. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way takes it for a failed run."""


def command(body, bad_input: tuple[type[Exception], ...] = (), faults: tuple[type[Exception], ...] = ()) -> int:
    """Run a command's body and return its exit code (None: 0); every command ends alike, in one line, never a
    traceback: bad input (ConfigError, `bad_input`) exits 2; the machine's fault (an OSError: a full disk, a
    read-only folder; `faults`) 1; SIGTERM (Stopped) STOPPED_EXIT."""
    try:
        return body() or 0
    except (ConfigError, *bad_input) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, *faults) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Stopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        return STOPPED_EXIT

# When a run counts as diverged (train.py judges, the record keeps the loss and epoch): a recipe that diverges
# is a finding, shown beside a cell's n and never averaged as if the run had trained.
DIVERGED_RULE = ("a non-finite training loss, or a last epoch's above twice the loss the run started from (its first "
                 "step's, and at least ln(classes))")

SCHEMA = 1
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class RecordError(ValueError):
    """A record or checkpoint file that cannot be read (truncated, not JSON, wrong schema)."""


class WriteError(OSError):
    """A file that could not be written (disk full, read-only folder, ...): the message names the path and the
    cause, for a one-line error."""


class _Loader(yaml.SafeLoader):
    """YAML with numbers as YAML 1.2 and JSON read them: PyYAML follows YAML 1.1, where 1e-4 and 1.0e9 (no dot,
    or no exponent sign) are strings, and `repro.sweep --report` writes numbers like 1e-05."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_file(path: Path, what: str):
    """A JSON (.json) or YAML file's content; ConfigError naming `what` and the path when it does not parse."""
    path = Path(path)
    try:
        text = path.read_text()
        return json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_Loader)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path} cannot be read: {e}") from None
    except (ValueError, yaml.YAMLError) as e:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ConfigError(f"{what} {path} is not valid {kind}: {' '.join(str(e).split())}") from None








def atomic_write(path: Path, write) -> None:
    """`write(binary file)` into a temp file beside `path`, then rename: readers never see half a file.
    A failing file system (disk full, read-only) raises WriteError naming the path and the cause."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes files private; records are shared with the team as usual
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise write_error(path, e) from None
        raise


def write_error(path: Path, error: OSError) -> WriteError:
    """'cannot write PATH: No space left on device (ENOSPC)'."""
    cause = f"{error.strerror} ({errno.errorcode.get(error.errno, error.errno)})" if error.errno else str(error)
    return WriteError(f"cannot write {path}: {cause}")


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


def last_line(text: str, default: str = "?") -> str:
    """The last line that is not blank, stripped: a traceback's exception, a command's error."""
    return ([line.strip() for line in text.splitlines() if line.strip()] or [default])[-1]


def record_state(record: dict) -> tuple[str, str]:
    """(status, reason): 'completed' (usable: a valid config and a main accuracy in [0, 1]; no reason), 'failed'
    or 'pruned' (a sweep stopped it; the reason is the record's error), 'diverged' (DIVERGED_RULE: finished, never
    averaged; the reason names the loss and epoch), or 'unusable' (partial or malformed: it counts as neither done
    nor failed, and a launch trains it again from its checkpoint)."""
    status = record.get("status")
    if status in ("failed", "pruned"):
        return status, last_line(str(record.get("error") or "no error message"))[:200]
    if status == "diverged":
        where = record.get("diverged") if isinstance(record.get("diverged"), dict) else {}
        return status, f"training loss {where.get('train_loss')} in epoch {where.get('epoch')}"
    if status != "completed":
        return "unusable", f"status {status!r}"
    try:
        RunConfig.from_dict(record["config"])
        accuracy = (record.get("metrics") or {}).get("accuracy")
    except (ConfigError, KeyError, TypeError) as e:
        return "unusable", f"bad config ({e})"
    except (AttributeError, ValueError) as e:
        return "unusable", f"malformed record ({type(e).__name__}: {e})"
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or math.isnan(accuracy) \
            or not 0 <= accuracy <= 1:
        return "unusable", f"partial record: metrics.accuracy is {accuracy!r}, not a fraction in [0, 1]"
    return "completed", ""


def run_record_state(config: RunConfig) -> tuple[str, str]:
    """record_state of the run's record on disk; ('missing', '') when there is none."""
    path = layout.record_path(config)
    if not path.exists():
        return "missing", ""
    try:
        return record_state(read_record(path))
    except RecordError as e:
        return "unusable", str(e)


def run_status(config: RunConfig) -> str:
    """'completed', 'failed', 'pruned', 'unusable' or 'missing': the record's status, not the run's state
    (repro.runs.state makes that of it)."""
    return run_record_state(config)[0]


# What a checkpoint holds (train.save writes it): a file that loads but holds something else is none.
CHECKPOINT = {"run_id": str, "model": dict, "optimizer": dict, "history": list}


def save_checkpoint(state: dict, path: Path) -> None:
    import torch

    # Serialised in memory first: a full disk then fails as an OSError naming ENOSPC, not deep in torch's writer.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(Path(path), lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: Path) -> dict | None:
    """The saved state, or None when there is none; a corrupt file, or one that holds something else than a
    checkpoint, raises RecordError."""
    import torch

    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a truncated or foreign file
        raise RecordError(f"{path}: corrupt checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise RecordError(f"{path}: not a checkpoint (a {type(state).__name__}, not a dict)")
    wrong = [key for key, kind in CHECKPOINT.items() if not isinstance(state.get(key), kind)]
    if wrong:
        raise RecordError(f"{path}: not a checkpoint ({', '.join(wrong)} missing or of another type)")
    return state


@contextlib.contextmanager
def exclusive(config: RunConfig):
    """Hold the run's lock while it trains; yields False when another process already holds it, so two launches
    of one target never train the same run at once or race on its record."""
    path = layout.lock_path(config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a")  # noqa: SIM115 - the with below closes it; opening may fail on a read-only disk
    except OSError as e:
        raise write_error(path, e) from None
    with f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True  # closing the file lets go of the lock
