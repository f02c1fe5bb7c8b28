"""`python -m repro.status TARGET --seeds N`: per table cell, how many runs are done / running / failed / pending.

Everything comes from disk, so it works from any shell and for any executor: a run is done or failed when its
record says so, running while a process holds its lock (records.exclusive), pending otherwise. The launcher
prints its plan with the same functions. No torch and no submitit here.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import struct
import sys
from collections import Counter
from pathlib import Path

from repro import records
from repro.config import ConfigError, RunConfig
from repro.experiments import COLUMNS, DATASETS, PROFILES, RECIPES, TARGETS, load_params, plan

STATES = ("done", "running", "failed", "pending")

# struct flock on 64-bit Linux: l_type, l_whence (short), l_start, l_len (off_t), l_pid (int), padding.
_FLOCK = "hhqqi4x"


def add_plan_args(parser: argparse.ArgumentParser) -> None:
    """The arguments that select runs; launch and status share them so both see the same plan."""
    parser.add_argument("target", help=f"which runs: {', '.join(TARGETS)}")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per table cell (runs 0..N-1; default 1)")
    parser.add_argument("--datasets", nargs="+", metavar="D", help=f"only these data sets: {', '.join(DATASETS)}")
    parser.add_argument("--columns", nargs="+", metavar="C", help=f"only these columns: {', '.join(COLUMNS)}")
    parser.add_argument("--profile", default="full", help=f"{' | '.join(PROFILES)} (default: full; smoke: tiny, to try things)")
    parser.add_argument("--recipe", default="suite", choices=list(RECIPES),
                        help="suite (default): SGD + Nesterov, weight decay 5e-4; paper: the paper's literal Adam, "
                             "no weight decay (README: Deviations)")
    parser.add_argument("--params", metavar="FILE", help="tuned hyper-parameters (YAML/JSON), e.g. from a sweep")
    parser.add_argument("--results-dir", default="results", metavar="DIR", help="records under DIR/runs (default: results)")
    parser.add_argument("--data-root", default="", metavar="DIR", help="data folder ('' = $FLEXPOOL_DATA, else ./data)")


def plan_from_args(args: argparse.Namespace) -> list[RunConfig]:
    # Absolute paths: jobs run from a code snapshot (another working directory) and maybe on other machines.
    data_root = args.data_root or os.environ.get("FLEXPOOL_DATA") or "data"
    return plan(args.target, args.seeds, args.datasets, args.columns, args.profile,
                load_params(args.params) if args.params else None, args.recipe,
                results_dir=str(Path(args.results_dir).resolve()), data_root=str(Path(data_root).resolve()))


def run_log_path(config: RunConfig) -> Path:
    """One log per run, at a path that depends only on the run, so status can point at it from any launch."""
    cell = config.cell or f"adhoc/{config.dataset}"
    return Path(config.results_dir) / "slurm-logs" / "runs" / cell / f"seed{config.seed}-{config.run_id}.log"


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


def run_state(config: RunConfig) -> str:
    if lock_holder(config) is not None:
        return "running"
    return {"completed": "done", "failed": "failed"}.get(records.run_status(config), "pending")


def survey(configs: list[RunConfig]) -> dict[RunConfig, str]:
    return {c: run_state(c) for c in configs}


def summary(states: dict[RunConfig, str]) -> str:
    """'16 cells x 5 seeds = 80 runs: 10 done, 0 running, 2 failed, 68 pending'."""
    cells = {c.cell for c in states}
    seeds = {c.seed for c in states}
    n = Counter(states.values())
    return (f"{len(cells)} cells x {len(seeds)} seeds = {len(states)} runs: "
            + ", ".join(f"{n[s]} {s}" for s in STATES))


def cell_table(states: dict[RunConfig, str]) -> str:
    per_cell: dict[str, Counter] = {}
    for config, state in states.items():
        per_cell.setdefault(config.cell, Counter())[state] += 1
    width = max(len(cell) for cell in per_cell)
    lines = [f"{'cell':<{width}}  " + "  ".join(f"{s:>7}" for s in STATES)]
    lines += [f"{cell:<{width}}  " + "  ".join(f"{n[s]:>7}" for s in STATES) for cell, n in per_cell.items()]
    return "\n".join(lines)


def failure_lines(states: dict[RunConfig, str]) -> list[str]:
    """One line per failed run: its cell, seed, the error from its record and where its log is."""
    return [f"FAILED {c.cell} seed {c.seed}: {_error(c)} (log: {run_log_path(c)})"
            for c, state in states.items() if state == "failed"]


def _error(config: RunConfig) -> str:
    try:
        error = records.read_record(records.record_path(config)).get("error") or ""
    except records.RecordError as e:
        error = str(e)
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else "no error message in the record"  # a traceback ends with the exception


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repro.status", description=__doc__.split("\n\n")[0])
    add_plan_args(parser)
    args = parser.parse_args(argv)
    try:
        states = survey(plan_from_args(args))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(cell_table(states))
    print(summary(states))
    for line in failure_lines(states):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
