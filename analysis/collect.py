"""Run records -> one pandas DataFrame, one row per usable run; everything else is listed, never counted.

Reads only what the run records hold (repro/records.py docstring), so it works on a laptop without torch.
A record is usable when it reads, is "completed" and has a main accuracy; a failed, corrupt or partial record is
reported as (file, cell, reason) and left out.

Which runs go into a table (`select`):
- eval_split "test" only (val records come from tuning);
- one profile (experiments.PROFILES; default "full", the paper's 100 epochs): a record's profile is the one whose
  fields its config matches, so smoke and full runs are never averaged together;
- one recipe (experiments.RECIPES; default experiments.DEFAULT_RECIPE), or each recipe apart ("both"), derived
  from the config in the same way: runs of two recipes never share a cell, a mean or a paired comparison;
- per cell and recipe one config "variant" (the run id without the seed): if a cell holds runs of two configs
  (e.g. before and after tuned --params), the one with more seeds is kept (newest on a tie), the other reported.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import pandas as pd

from repro import layout
from repro.config import RunConfig, field_names
from repro.experiments import (
    DEFAULT_RECIPE,
    PROFILES,
    RECIPES,
    TABLES,
    parse_cell,
    profile_of,
    profiles_help,
    recipe_of,
    recipes_help,
)
from repro.records import RecordError, command, read_record, record_state

DEFAULT_RUNS = layout.runs_dir(RunConfig.results_dir)
PAPER_DIR = Path(__file__).resolve().parent.parent / "results" / "paper"
PROFILE_CHOICES = (*PROFILES, "any")
RECIPE_CHOICES = (*RECIPES, "both")
MAIN_POOL = "pool"  # the final FlexPool's module name in a record's "flexpool"
TIMING_KEYS = ("wall_s", "train_s", "images_per_s")  # the record's "timing" and "env" entries its row keeps
ENV_KEYS = ("date", "git_commit", "torch", "device", "device_type", "cpu_bf16_units", "cpus", "precision",
            "threads")
ROW_COLUMNS = [  # the keys of record_row, so an empty DataFrame still has them
    "file", "run_id", "cell", "table", "dataset", "column", "seed", "accuracy", "head_accuracies", "train_loss",
    "eval_split", "profile", "variant", *TIMING_KEYS, *ENV_KEYS, "config", "flexpool", "recipe", "sum_dev", "curve",
]


class AnalysisError(Exception):
    """Bad input (no runs, unknown option value): the command-line tools print it as one line and exit 2."""


def record_row(record: dict, name: str) -> dict:
    """One DataFrame row from a record; raises RecordError saying why the record cannot count. Profile and
    recipe are derived from the config (older records lack the keys)."""
    state, reason = record_state(record)  # the launcher's and status's reading of a record too
    if state != "completed":
        raise RecordError(reason if state == "unusable" else f"status {state!r}: {reason}")
    config = RunConfig.from_dict(record["config"])
    metrics = record["metrics"]
    accuracy = metrics["accuracy"]
    cell = str(record.get("cell") or config.cell)
    where = parse_cell(cell) if cell.count("/") == 2 else {"table": None, "dataset": config.dataset, "column": None}
    env, timing = record.get("env") or {}, record.get("timing") or {}
    flexpool = record.get("flexpool") if isinstance(record.get("flexpool"), dict) else {}
    return {
        "file": name, "run_id": record.get("run_id", config.run_id), "cell": cell, **where,
        "seed": config.seed, "accuracy": float(accuracy),
        "head_accuracies": metrics.get("head_accuracies"), "train_loss": metrics.get("train_loss"),
        "eval_split": record.get("eval_split", config.eval_split),
        "profile": profile_of(config), "variant": config.replace(seed=0).run_id,
        **{key: timing.get(key) for key in TIMING_KEYS}, **{key: env.get(key) for key in ENV_KEYS},
        "config": config.to_dict(), "flexpool": flexpool, "recipe": recipe_of(config),
        "sum_dev": sum_dev(flexpool), "curve": curve(record),
    }


def curve(record: dict) -> list[float]:
    """The eval accuracy after each epoch, from the record's history (its learning curve)."""
    history = record.get("history") if isinstance(record.get("history"), list) else []
    return [float(h["eval_accuracy"]) for h in history
            if isinstance(h, dict) and h.get("eval_accuracy") is not None]


def recipes(choice: str) -> list[str]:
    """The recipes a --recipe choice shows, each on its own."""
    return list(RECIPES) if choice == "both" else [choice]


def sum_dev(flexpool: dict) -> float:
    """Mean over channels of |sum of a channel's final FlexPool weights - 1|: how far the run is from Eq. 2's
    weighted average (0: exactly). NaN without a final FlexPool (AvgPool, or a record without weights)."""
    sums = pd.Series((flexpool.get(MAIN_POOL) or {}).get("sums", []), dtype=float)
    return float((sums - 1).abs().mean()) if len(sums) else math.nan


def _skip(name: str, record, reason: str) -> dict:
    """A skipped record's entry; its cell, profile and recipe when still readable, so the right cell shows it,
    and whether it is a run that diverged (a result, counted apart from failed and partial records)."""
    cell = record.get("cell") if isinstance(record, dict) else ""
    try:
        config = RunConfig.from_dict(record["config"])
        profile, recipe = profile_of(config), recipe_of(config)
    except Exception:  # noqa: BLE001 - whatever is wrong with it, the reason is already known
        profile = recipe = None
    return {"file": name, "cell": cell if isinstance(cell, str) else "", "profile": profile, "recipe": recipe,
            "reason": reason, "diverged": isinstance(record, dict) and record.get("status") == "diverged"}


def load_runs(runs_dir: str | Path) -> tuple[pd.DataFrame, list[dict]]:
    """Every *.json under runs_dir: (usable runs, skipped [{file, cell, reason}]). Raises AnalysisError when the
    folder is missing or holds no record files at all."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise AnalysisError(f"runs folder {runs_dir} does not exist (launch runs first, or pass --runs DIR)")
    if layout.runs_dir(runs_dir).is_dir():  # accept results/ as well as results/runs/
        runs_dir = layout.runs_dir(runs_dir)
    files = sorted(runs_dir.rglob("*.json"))
    if not files:
        raise AnalysisError(f"no run records (*.json) under {runs_dir}: nothing to analyse yet")
    rows, skipped = [], []
    for path in files:
        name = str(path.relative_to(runs_dir))
        record = None
        try:
            record = read_record(path)
            rows.append(record_row(record, name))
        except RecordError as e:
            skipped.append(_skip(name, record, str(e).removeprefix(f"{path}: ")))
        except (AttributeError, TypeError, ValueError) as e:  # a field of the wrong type: skip it, never crash
            skipped.append(_skip(name, record, f"malformed record ({type(e).__name__}: {e})"))
    return pd.DataFrame(rows, columns=ROW_COLUMNS), skipped


def load_wandb(path: str) -> tuple[pd.DataFrame, list[dict]]:
    """The same DataFrame from W&B runs (online only; untested here: the test machines have no network).

    tracking.py logs the RunConfig as the W&B config and status/accuracy in the summary; W&B holds no FlexPool
    weights, so the heatmaps need the records."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", path):
        raise AnalysisError(f"--from-wandb wants ENTITY/PROJECT, got {path!r}")
    try:
        import wandb

        runs = list(wandb.Api().runs(path))
    except Exception as e:  # noqa: BLE001 - no wandb, no network, no login: one clear line, not a traceback
        raise AnalysisError(f"cannot read W&B project {path}: {type(e).__name__}: {e}") from None
    rows, skipped = [], []
    for run in runs:
        summary = dict(run.summary)
        config = {k: v for k, v in dict(run.config).items() if k in field_names()}  # W&B adds keys of its own
        record = {  # tracking.py puts the record's status and accuracy in the summary when a run ends
            "status": summary.get("status") or run.state, "error": f"W&B state {run.state}",
            "cell": config.get("cell", ""), "config": config,
            "metrics": {k: summary.get(k) for k in ("accuracy", "head_accuracies", "train_loss")},
        }
        try:
            rows.append(record_row(record, f"wandb:{run.id}"))
        except RecordError as e:
            skipped.append(_skip(f"wandb:{run.id}", record, str(e)))
    if not rows and not skipped:
        raise AnalysisError(f"W&B project {path} has no runs")
    return pd.DataFrame(rows, columns=ROW_COLUMNS), skipped


def select(runs: pd.DataFrame, profile: str = "full", recipe: str = DEFAULT_RECIPE) -> tuple[pd.DataFrame, list[str]]:
    """Runs that go into Tables 1 and 2 (see module docstring), and notes on what was left out and why."""
    if profile not in PROFILE_CHOICES:
        raise AnalysisError(f"unknown profile {profile!r}; choose from {', '.join(PROFILE_CHOICES)}")
    if recipe not in RECIPE_CHOICES:
        raise AnalysisError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPE_CHOICES)}")
    notes = []
    table_runs = runs[runs["table"].isin(list(TABLES)) & (runs["eval_split"] == "test")]
    if len(table_runs) < len(runs):
        notes.append(f"{len(runs) - len(table_runs)} run(s) outside the tables or on the val split left out")
    if profile != "any":
        wanted = table_runs["profile"] == profile
        for name, count in table_runs.loc[~wanted, "profile"].value_counts().items():
            notes.append(f"{count} test run(s) of profile {name!r} left out (use --profile {name} or any)")
        table_runs = table_runs[wanted]
    wanted = table_runs["recipe"].isin(recipes(recipe))
    for name, count in table_runs.loc[~wanted, "recipe"].value_counts().items():
        notes.append(f"{count} test run(s) of recipe {name!r} left out (use --recipe {name} or both)")
    table_runs = table_runs[wanted]
    kept = [_one_variant(cell_runs, notes) for _, cell_runs in table_runs.groupby(["recipe", "cell"], sort=True)]
    chosen = pd.concat(kept) if kept else table_runs.iloc[0:0]
    return chosen.reset_index(drop=True), notes


def _one_variant(cell_runs: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """The cell's config variant with the most seeds (newest on a tie): two configs are never averaged."""
    if cell_runs["variant"].nunique() == 1:
        return cell_runs
    stats = cell_runs.groupby("variant").agg(n=("seed", "size"), date=("date", lambda d: str(d.max())))
    best = stats.sort_values(["n", "date"], ascending=False).index[0]
    for variant, row in stats.drop(best).iterrows():
        profile = cell_runs.loc[cell_runs["variant"] == variant, "profile"].iloc[0]
        notes.append(f"{cell_runs['cell'].iloc[0]}: {row['n']} run(s) of another config {variant} "
                     f"({profile}, {cell_runs['recipe'].iloc[0]} recipe) left out; kept {best}")
    return cell_runs[cell_runs["variant"] == best]


def load_paper(table: str, paper_dir: str | Path = PAPER_DIR) -> pd.Series:
    """The paper's accuracy (percent) for one table, indexed by (dataset, column)."""
    path = Path(paper_dir) / f"{table}.csv"
    if not path.is_file():
        raise AnalysisError(f"paper numbers {path} are missing")
    return pd.read_csv(path).set_index(["dataset", "column"])["accuracy"]


def skipped_counts(skipped: list[dict], profile: str = "any", diverged: bool = False) -> pd.Series:
    """How many skipped records of this profile each (recipe, cell) has, failed or partial ones, or with
    `diverged` the runs that diverged: the tables show both beside n."""
    entries = [(s["recipe"], s["cell"]) for s in skipped
               if s["cell"] and profile in ("any", s["profile"]) and s["diverged"] == diverged]
    return pd.DataFrame(entries, columns=["recipe", "cell"]).value_counts()


# Command-line plumbing shared by make_tables and make_figures.

SELECTION_HELP = """which runs count:
  completed records of a table cell evaluated on the test split (val records come from tuning), whose config
  matches --profile and --recipe (each recipe apart with both: never averaged or paired across recipes); if a
  cell holds runs of two configs (e.g. before and after tuned --params), the one with more seeds is kept and the
  other is named on stderr. Failed, partial or unreadable records are listed on
  stderr (file and reason) and never counted; the tables show their number beside n."""

def add_input_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", default=str(DEFAULT_RUNS),
                        help="folder of run records, searched recursively (default: %(default)s)")
    parser.add_argument("--from-wandb", metavar="ENTITY/PROJECT",
                        help="read runs from the W&B API instead of --runs (needs network and a W&B login)")
    parser.add_argument("--profile", default="full", choices=PROFILE_CHOICES,
                        help=f"which runs count: those whose config matches this profile ({profiles_help()}); "
                             "'any' takes every profile but still one config per cell, so no mixing (default: full)")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, choices=RECIPE_CHOICES,
                        help=f"which runs count: {recipes_help()}; both: each recipe apart, side by side")
    parser.add_argument("--paper", default=str(PAPER_DIR), help="folder of the paper's table1.csv/table2.csv")


def load_from_args(args) -> tuple[pd.DataFrame, list[dict], list[str]]:
    """(selected runs, skipped records, notes), after printing one line per skipped record to stderr."""
    runs, skipped = load_wandb(args.from_wandb) if args.from_wandb else load_runs(args.runs)
    for s in skipped:
        print(f"skipped {s['file']}: {s['reason']}", file=sys.stderr)
    chosen, notes = select(runs, args.profile, args.recipe)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return chosen, skipped, notes


def run_cli(main):
    """Run a CLI body and exit as every command does (records.command): bad input, an AnalysisError too, one line
    and exit status 2; a file that cannot be written (read-only folder, full disk: records.WriteError names it and
    the cause) one line and 1."""
    sys.exit(command(main, bad_input=(AnalysisError,)))
