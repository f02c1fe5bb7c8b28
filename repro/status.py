"""`python -m repro.status TARGET --seeds N`: per table cell, how many runs are done / running / queued /
failed / unusable / pending.

Everything comes from disk, so it works from any shell and for any executor: a run is running while a process
holds its lock (records.exclusive), else what records.record_state says of its record: done, failed, or unusable
(partial or corrupt: a launch trains it again from its checkpoint); without a record it is pending. A run not
done or failed is queued while the job it was submitted in still waits or runs (SLURM's squeue says so, or the
local job's process lives), so a second launch does not submit it again. The launcher prints its plan with the
same functions. No torch and no submitit here.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import os
import socket
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

from repro import records
from repro.config import ConfigError, RunConfig, default_data_root, plural
from repro.experiments import COLUMNS, DATASETS, PROFILES, RECIPES, TARGETS, load_params, plan, profiles_help

STATES = ("done", "running", "queued", "failed", "unusable", "pending")

# struct flock on 64-bit Linux: l_type, l_whence (short), l_start, l_len (off_t), l_pid (int), padding.
_FLOCK = "hhqqi4x"


def add_plan_args(parser: argparse.ArgumentParser) -> None:
    """The arguments that select runs; launch and status share them so both see the same plan."""
    parser.add_argument("target", help=f"which runs: {', '.join(TARGETS)}")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per table cell (runs 0..N-1; default 1)")
    parser.add_argument("--datasets", nargs="+", metavar="D", help=f"only these data sets: {', '.join(DATASETS)}")
    parser.add_argument("--columns", nargs="+", metavar="C", help=f"only these columns: {', '.join(COLUMNS)}")
    parser.add_argument("--profile", default="full", choices=list(PROFILES),
                        help=f"{profiles_help()} (default: full)")
    parser.add_argument("--recipe", default="suite", choices=list(RECIPES),
                        help="suite (default): SGD + Nesterov, weight decay 5e-4; paper: the paper's literal Adam, "
                             "no weight decay (README: Deviations)")
    parser.add_argument("--params", metavar="FILE", help="tuned hyper-parameters (YAML/JSON), e.g. from a sweep")
    parser.add_argument("--results-dir", default="results", metavar="DIR", help="records under DIR/runs (default: results)")
    parser.add_argument("--data-root", default="", metavar="DIR", help="data folder ('' = $FLEXPOOL_DATA, else ./data)")


def plan_from_args(args: argparse.Namespace) -> list[RunConfig]:
    # Absolute paths: jobs run from a code snapshot (another working directory) and maybe on other machines.
    data_root = args.data_root or default_data_root()
    return plan(args.target, args.seeds, args.datasets, args.columns, args.profile,
                load_params(args.params) if args.params else None, args.recipe,
                results_dir=str(Path(args.results_dir).resolve()), data_root=str(Path(data_root).resolve()))


def run_log_path(config: RunConfig) -> Path:
    """One log per run, at a path that depends only on the run, so status can point at it from any launch."""
    return Path(config.results_dir) / "slurm-logs" / "runs" / config.folder / f"seed{config.seed}-{config.run_id}.log"


def lock_holder(config: RunConfig) -> int | None:
    """PID of the process that holds the run's lock (it trains the run), else None. Asks with F_GETLK rather
    than taking the lock: taking it, even briefly, could make a run starting at that moment skip itself.
    (On a network file system the PID may be another machine's.)"""
    path = records.lock_path(config)
    if not path.exists():
        return None
    with open(path, "rb") as f:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(f, fcntl.F_GETLK, query))
    return None if kind == fcntl.F_UNLCK else pid


def run_state(config: RunConfig, queued: bool = False) -> str:
    if lock_holder(config) is not None:
        return "running"
    state = {"completed": "done", "failed": "failed", "missing": "pending"}.get(records.run_status(config), "unusable")
    return "queued" if queued and state in ("pending", "unusable") else state


class Survey(dict):
    """RunConfig -> state, and `note`: why some states are a guess ('' when none is), for the summary line."""

    note = ""


def run_states(configs: list[RunConfig]) -> Survey:
    jobs = {}
    for config in configs:
        with contextlib.suppress(OSError, ValueError):
            kind, host, job = records.queue_path(config).read_text().split()
            jobs[config] = (kind, host, job)
    submitted = [config for config, (kind, _, _) in jobs.items() if kind == "slurm"]
    try:
        held = queued(jobs, slurm_jobs() if submitted else set())
        note = ""
    except QueueUnreadable as e:
        # Their jobs may wait or run: counted as pending, they would be submitted a second time.
        held = queued(jobs, set()) | set(submitted)
        note = f"SLURM's queue could not be read ({e}): {plural(len(submitted), 'run')} submitted to SLURM " \
               "counted as queued"
    states = Survey({c: run_state(c, c in held) for c in configs})
    states.note = note
    return states


def queued(jobs: dict[RunConfig, tuple[str, str, str]], slurm: set[str]) -> set[RunConfig]:
    """The runs whose job (records.queue_path: kind, host, id) is still alive: in `slurm`, SLURM's jobs waiting
    or running, or a local job whose process lives on this machine."""
    here = socket.gethostname()
    return {config for config, (kind, host, job) in jobs.items()
            if (kind == "slurm" and job in slurm) or (kind == "local" and host == here and process_lives(job))}


class QueueUnreadable(OSError):
    """squeue failed (the controller does not answer, no squeue here): the message is its error, one line."""


def slurm_jobs() -> set[str]:
    """This user's SLURM jobs, waiting or running, one id per array task (12345_3)."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    except subprocess.CalledProcessError as e:
        lines = [line.strip() for line in e.stderr.splitlines() if line.strip()] or [f"exit code {e.returncode}"]
        raise QueueUnreadable(f"squeue: {lines[-1]}") from None
    except (OSError, subprocess.SubprocessError) as e:
        raise QueueUnreadable(f"squeue: {e}") from None
    return set(out.split())


def process_lives(pid: str) -> bool:
    """Whether the process runs: a zombie (ended, not yet reaped by its parent) does not. Linux's /proc; where
    there is none, local runs never count as queued."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (ValueError, OSError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # the state follows the command name, which may hold spaces


def summary(states: dict[RunConfig, str]) -> str:
    """'16 cells x 5 seeds = 80 runs: 10 done, 0 running, 0 queued, 2 failed, 0 unusable, 68 pending'; when not
    every cell has every seed (a relaunch of some runs), '10 runs in 4 cells, seeds 0-2: ...'; then the run states'
    note, if it has one."""
    cells = {c.cell for c in states}
    seeds = sorted({c.seed for c in states})
    n = Counter(states.values())
    counts = ", ".join(f"{n[s]} {s}" for s in STATES)
    counts += f"; {states.note}" if getattr(states, "note", "") else ""
    if len(states) == len(cells) * len(seeds):
        return f"{plural(len(cells), 'cell')} x {plural(len(seeds), 'seed')} = {plural(len(states), 'run')}: {counts}"
    seed_range = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
    return f"{plural(len(states), 'run')} in {plural(len(cells), 'cell')}, {seed_range}: {counts}"


def cell_table(states: dict[RunConfig, str]) -> str:
    per_cell: dict[str, Counter] = {}
    for config, state in states.items():
        per_cell.setdefault(config.cell, Counter())[state] += 1
    width = max(len(cell) for cell in per_cell)
    lines = [f"{'cell':<{width}}  " + "  ".join(f"{s:>7}" for s in STATES)]
    lines += [f"{cell:<{width}}  " + "  ".join(f"{n[s]:>7}" for s in STATES) for cell, n in per_cell.items()]
    return "\n".join(lines)


def failure_lines(states: dict[RunConfig, str]) -> list[str]:
    """One line per failed or unusable run: its cell, seed, what went wrong (records.record_state) and its log."""
    return [f"{state.upper()} {c.cell} seed {c.seed}: {records.run_record_state(c)[1]} (log: {run_log_path(c)})"
            for c, state in states.items() if state in ("failed", "unusable")]


def other_records(configs: list[RunConfig], profile: str, recipe: str) -> list[str]:
    """Lines on records in the planned cells and seeds that are not the planned runs: another profile or recipe
    (a smoke run does not count for the full profile), or other tuned --params."""
    planned = {records.record_path(c) for c in configs}
    found: Counter = Counter()
    for results_dir, cell, seed in {(c.results_dir, c.cell, c.seed) for c in configs}:
        for path in (Path(results_dir) / "runs" / cell).glob(f"seed{seed}-*.json"):
            if path not in planned:
                with contextlib.suppress(records.RecordError):
                    record = records.read_record(path)
                    found[(record.get("profile") or "custom", record.get("recipe") or "custom")] += 1
    lines = []
    for (other_profile, other_recipe), n in sorted(found.items()):
        if (other_profile, other_recipe) == (profile, recipe):
            lines.append(f"also here: {n} record(s) of this profile and recipe with other --params")
        else:
            lines.append(f"also here: {n} record(s) of profile {other_profile}, recipe {other_recipe} "
                         f"(see them with --profile {other_profile} --recipe {other_recipe})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repro.status", description=__doc__.split("\n\n")[0])
    add_plan_args(parser)
    args = parser.parse_args(argv)
    try:
        states = run_states(plan_from_args(args))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(cell_table(states))
    print(summary(states))
    for line in failure_lines(states) + other_records(list(states), args.profile, args.recipe):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
