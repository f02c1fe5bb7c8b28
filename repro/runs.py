"""Which runs a command means and the state of each, as `repro.launch` and `repro.status` both see them.

A run's state comes from disk only (no torch, no submitit here), so it holds for any executor and from any shell:
  running   a process holds its lock (records.exclusive): it trains now
  done      its record is completed and usable, or says it diverged (records.record_state)
  failed    its record says so; only --retry-failed or --force run it again
  queued    not done or failed, but the job it was submitted in still waits or runs (in SLURM's queue, or the
            local job's process lives): a second launch must not submit it again
  unusable  a record that cannot count (partial, corrupt): a launch completes it from its checkpoint
  pending   no record: a launch trains it (from its checkpoint, if any)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import os
import shlex
import socket
import struct
import subprocess
from collections import Counter
from pathlib import Path
from typing import Literal, get_args

from repro import layout, records
from repro.config import RunConfig, absolute_checkpoint_dir, add_options, default_data_root, flags, plural
from repro.datasets import table_datasets
from repro.experiments import (
    COLUMNS,
    DEFAULT_RECIPE,
    PROFILES,
    RECIPES,
    TARGETS,
    load_params,
    plan,
    profiles_help,
    recipes_help,
)

State = Literal["done", "running", "queued", "failed", "unusable", "pending"]
STATES: tuple[State, ...] = get_args(State)
# struct flock on 64-bit Linux: l_type, l_whence (short), l_start, l_len (off_t), l_pid (int), padding.
_FLOCK = "hhqqi4x"






def mark_queued(config: RunConfig, kind: str, job_id: str) -> None:
    """At submission: the run is queued (not pending) while that job waits or runs."""
    path = layout.queue_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{kind} {socket.gethostname()} {job_id}\n")


def release(config: RunConfig, job_id: str) -> None:
    """Drop the run's queue file if `job_id` wrote it (not a later launch): a run that ended unfinished (kill -9, a
    full disk) is then pending at once, for a relaunch to take, not queued until its whole job has ended."""
    path = layout.queue_path(config)
    with contextlib.suppress(OSError, IndexError):
        if path.read_text().split()[-1] == job_id:
            path.unlink()


def lock_holder(config: RunConfig) -> int | None:
    """PID of the process that holds the run's lock (it trains the run), else None. Asks with F_GETLK rather
    than taking the lock: taking it, even briefly, could make a run starting at that moment skip itself.
    (On a network file system the PID may be another machine's.)"""
    path = layout.lock_path(config)
    if not path.exists():
        return None
    with open(path, "rb") as f:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(f, fcntl.F_GETLK, query))
    return None if kind == fcntl.F_UNLCK else pid


def state(config: RunConfig, queued: bool = False) -> State:
    """The run's state (module docstring); `queued`: whether the job it was submitted in still waits or runs."""
    if lock_holder(config) is not None:
        return "running"
    recorded = records.run_status(config)
    if recorded in ("completed", "diverged", "failed"):  # a diverged run is a result: training it again repeats it
        return "failed" if recorded == "failed" else "done"
    return "queued" if queued else "pending" if recorded == "missing" else "unusable"


def states(configs: list[RunConfig]) -> tuple[dict[RunConfig, State], str]:
    """The state of each run, SLURM's queue asked once for all of them, and a note saying why some states are a
    guess ('' when none is), for the summary line."""
    jobs = {}
    for config in configs:
        with contextlib.suppress(OSError, ValueError):
            kind, host, job = layout.queue_path(config).read_text().split()
            jobs[config] = (kind, host, job)
    submitted = [job for kind, _, job in jobs.values() if kind == "slurm"]
    note = ""
    try:
        slurm = slurm_jobs() if submitted else set()
    except OSError as e:
        slurm = set(submitted)  # their jobs may wait or run: counted as pending, they would be submitted again
        note = f"SLURM's queue could not be read ({e}): {plural(len(submitted), 'run')} submitted to SLURM " \
               "counted as queued"
    here = socket.gethostname()
    alive = {config for config, (kind, host, job) in jobs.items()
             if (kind == "slurm" and job in slurm) or (kind == "local" and host == here and process_lives(job))}
    return {c: state(c, c in alive) for c in configs}, note


def slurm_jobs() -> set[str]:
    """This user's SLURM jobs, waiting or running, one id per array task (12345_3); OSError with squeue's error in
    one line when it fails (the controller does not answer, no squeue here)."""
    try:
        return set(subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"], capture_output=True,
                                  text=True, timeout=60, check=True).stdout.split())
    except subprocess.CalledProcessError as e:
        raise OSError(f"squeue: {records.last_line(e.stderr, f'exit code {e.returncode}')}") from None
    except (OSError, subprocess.SubprocessError) as e:
        raise OSError(f"squeue: {e}") from None


def process_lives(pid: str) -> bool:
    """Whether the process runs: a zombie (ended, not yet reaped by its parent) does not. Linux's /proc; where
    there is none, local runs never count as queued."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (ValueError, OSError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # the state follows the command name, which may hold spaces


def counts(states: dict[RunConfig, State], note: str = "") -> str:
    """'10 done, 0 running, 0 queued, 2 failed, 0 unusable, 68 pending', then the note of runs.states, if any."""
    n = Counter(states.values())
    return ", ".join(f"{n[s]} {s}" for s in STATES) + (f"; {note}" if note else "")


def summary(states: dict[RunConfig, State], note: str = "") -> str:
    """'16 cells x 5 seeds = 80 runs: ' (or '10 runs in 4 cells, seeds 0-2: ' when not every cell has every seed),
    then the counts."""
    cells = {c.cell for c in states}
    seeds = sorted({c.seed for c in states})
    if len(states) == len(cells) * len(seeds):
        planned = f"{plural(len(cells), 'cell')} x {plural(len(seeds), 'seed')} = {plural(len(states), 'run')}"
    else:
        seed_range = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
        planned = f"{plural(len(states), 'run')} in {plural(len(cells), 'cell')}, {seed_range}"
    return f"{planned}: {counts(states, note)}"


def failure_lines(states: dict[RunConfig, State]) -> list[str]:
    """One line per failed, unusable or diverged run: its cell, seed, what went wrong (records.record_state) and
    its log."""
    lines = []
    for c, s in states.items():
        recorded, reason = records.run_record_state(c) if s in ("failed", "unusable", "done") else ("", "")
        if s in ("failed", "unusable") or recorded == "diverged":
            lines.append(f"{'DIVERGED' if recorded == 'diverged' else s.upper()} {c.cell} seed {c.seed}: {reason} "
                         f"(log: {layout.log_path(c)})")
    return lines


# ---- the runs a command means: its plan arguments and RunConfig fields ----------------------------------------

def field_values(args: argparse.Namespace, fields) -> dict:
    """The named fields' values from `args`, the paths absolute ('' data_root: the default folder): jobs run from
    a code snapshot (another working directory), maybe on other machines."""
    return {**{name: getattr(args, name) for name in fields}, "results_dir": str(Path(args.results_dir).resolve()),
            "data_root": str(Path(args.data_root or default_data_root()).resolve()),
            "checkpoint_dir": absolute_checkpoint_dir(args.checkpoint_dir)}


def add_plan_args(parser: argparse.ArgumentParser) -> None:
    """The arguments that select runs; launch and status share them so both see the same plan."""
    parser.add_argument("target", help=f"which runs: {', '.join(TARGETS)}")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per table cell (runs 0..N-1; default 1)")
    parser.add_argument("--datasets", nargs="+", metavar="D",
                        help=f"only these data sets: {', '.join(table_datasets())}")
    parser.add_argument("--columns", nargs="+", metavar="C", help=f"only these columns: {', '.join(COLUMNS)}")
    parser.add_argument("--profile", default="full", choices=list(PROFILES),
                        help=f"{profiles_help()} (default: full)")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, choices=list(RECIPES),
                        help=f"{recipes_help()} (README: Deviations)")
    parser.add_argument("--params", metavar="FILE", help="tuned hyper-parameters (YAML/JSON), e.g. from a sweep")
    add_options(parser, ("results_dir", "data_root", "checkpoint_dir"))


def plan_from_args(args: argparse.Namespace, *fields: str) -> list[RunConfig]:
    """The runs the plan arguments select, with the named RunConfig fields (beside the paths) from `args`."""
    params = load_params(args.params, args.recipe) if args.params else None
    return plan(args.target, args.seeds, args.datasets, args.columns, args.profile, params, args.recipe,
                **field_values(args, fields))


def status_command(args: argparse.Namespace) -> str:
    """`python -m repro.status` with the plan arguments of `args` that are not at their default."""
    plan_args = argparse.ArgumentParser()
    add_plan_args(plan_args)
    defaults = vars(plan_args.parse_args([args.target]))
    changed = {name: getattr(args, name) for name, default in defaults.items() if getattr(args, name) != default}
    return "python -m repro.status " + shlex.join([args.target, *flags(changed)])
