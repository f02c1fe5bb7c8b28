"""`python -m repro.status TARGET --seeds N`: per table cell, how many runs are done / running / queued /
failed / unusable / pending (repro.runs says what each means), the training time left, the failed runs' logs,
where unfinished runs resume from and after which epoch, and other records in those cells. Everything comes from
disk, so it works from any shell and for any executor. No torch, no submitit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import re
import sys
from collections import Counter

from repro import layout, records, runs
from repro.config import Parser, RunConfig, plural


def cell_table(states: dict[RunConfig, runs.State]) -> str:
    counts = Counter((config.cell, state) for config, state in states.items())
    cells = dict.fromkeys(config.cell for config in states)  # in plan order
    rows = [("cell", runs.STATES), *((cell, [counts[cell, s] for s in runs.STATES]) for cell in cells)]
    width = max(map(len, cells))
    return "\n".join(f"{cell:<{width}}  " + "  ".join(f"{n:>7}" for n in row) for cell, row in rows)


def other_records(configs: list[RunConfig], profile: str, recipe: str) -> list[str]:
    """Lines on records in the planned cells and seeds that are not the planned runs: another profile or recipe
    (a smoke run does not count for the full profile), or other tuned --params."""
    planned = {layout.record_path(c) for c in configs}
    found: Counter = Counter()
    for path in {path for config in configs for path in layout.seed_records(config)} - planned:
        with contextlib.suppress(records.RecordError):
            record = records.read_record(path)
            found[(record.get("profile") or "custom", record.get("recipe") or "custom")] += 1
    return [f"also here: {n} record(s) of this profile and recipe with other --params" if (p, r) == (profile, recipe)
            else f"also here: {n} record(s) of profile {p}, recipe {r} (see them with --profile {p} --recipe {r})"
            for (p, r), n in sorted(found.items())]


# A run's log (layout.log_path) as train.py writes it: each epoch's line follows that epoch's checkpoint, and a
# resumed run names the epoch it resumes after. No torch here, so the log, not the checkpoint, says the epoch.
EPOCH_IN_LOG = re.compile(r"\] epoch (\d+)/\d+ |^resuming run \S+ after epoch (\d+) ", re.MULTILINE)


def epochs_trained(config: RunConfig) -> int | None:
    """The epochs the run's checkpoint holds, as the last such line of its log says; None without a checkpoint
    (a run --force starts again has none until its first epoch) or without such a line."""
    if not layout.checkpoint_path(config).exists():
        return None
    try:
        found = EPOCH_IN_LOG.findall(layout.log_path(config).read_text(errors="replace"))
    except OSError:
        return None
    return int(found[-1][0] or found[-1][1]) if found else None


def checkpoint_lines(states: dict[RunConfig, runs.State], trained: dict[RunConfig, int | None]) -> list[str]:
    """Where the runs that are not done resume from, and after which epoch: checkpoints may live far from the
    records (scratch space), and a 100-epoch run resumes many times."""
    lines = []
    for config, state in states.items():
        path = layout.checkpoint_path(config)
        with contextlib.suppress(OSError):
            written = datetime.datetime.fromtimestamp(path.stat().st_mtime)
            if state != "done":
                after = "" if trained.get(config) is None else f"after epoch {trained[config]} of {config.epochs}, "
                lines.append(f"checkpoint of {config.cell} seed {config.seed} ({state}): {after}{path}, written "
                             f"{written:%Y-%m-%d %H:%M}")
    return lines


def time_left(states: dict[RunConfig, runs.State], trained: dict[RunConfig, int | None]) -> list[str]:
    """The training time the runs a launch still trains need, at the mean of the done runs' own (their records),
    less the share of their epochs that their checkpoints hold: a campaign of many 100-epoch runs is planned
    around it. Failed runs train again only when asked, so they are not counted."""
    done = []
    for config in (c for c, state in states.items() if state == "done"):
        with contextlib.suppress(records.RecordError, KeyError, TypeError):
            done.append(float(records.read_record(layout.record_path(config))["timing"]["train_s"]))
    todo = [config for config, state in states.items() if state not in ("done", "failed")]
    if not (done and todo):
        return []
    mean = sum(done) / len(done)
    started = sum(trained.get(config) or 0 for config in todo)
    runs_left = len(todo) - sum((trained.get(config) or 0) / config.epochs for config in todo)
    less = f", less the {started} of their {sum(c.epochs for c in todo)} epochs trained so far" if started else ""
    line = (f"training time left: about {runs_left * mean / 3600:.1f} h ({plural(len(todo), 'run')} to train x "
            f"{mean / 3600:.1f} h, the mean of {plural(len(done), 'done run')}{less}); runs trained side by side "
            "share it")
    return [line]


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m repro.status", description=__doc__.split("\n\n")[0])
    runs.add_plan_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return records.command(lambda: show(parser().parse_args(argv)))


def show(args: argparse.Namespace) -> int:
    states, note = runs.states(runs.plan_from_args(args))
    print(cell_table(states))
    print(runs.summary(states, note))
    trained = {config: epochs_trained(config) for config, state in states.items() if state != "done"}
    for line in time_left(states, trained):
        print(line)
    for line in (runs.failure_lines(states) + checkpoint_lines(states, trained)
                 + other_records(list(states), args.profile, args.recipe)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
