"""The paper's Tables 1 and 2 as data: each cell is a set of RunConfig fields, each seed one run.

Cell names are stable ("table2/cifar10/flexpool-reg-dropout"), and so are run ids (a hash of the config), so the
same run always lands on the same record path and a relaunch knows what is done. No torch here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from repro import records
from repro.config import ConfigError, RunConfig, check, field_names
from repro.datasets import table_datasets

# The paper does not give the regulariser weight: this default is documented in README and tunable by sweep.
# Eq. 2's curvature along a channel's weight sum is 2*H*W*reg, so the large SAC head is the first to diverge:
# with SGD (Nesterov 0.9) at lr 0.1, reg = 1e-2 blew the Table 2 loss up to 25,089 while Table 1 trained, and 1e-3
# trains cleanly (results/evidence/flexpool-conditioning-cpu/).
DEFAULT_REG = 1e-3
PAPER_DROPOUT = 0.25  # paper Sec. 4.1: "adding 25 % dropout"



@dataclass(frozen=True)
class Column:
    """A column of both tables: what makes its runs, and how tables and figures name it."""

    label: str  # as the paper heads it
    short: str  # in the claims' LaTeX tables, where the long ones do not fit a page
    tick: str  # under a figure's axis: on two lines where one is too wide
    fields: dict  # the RunConfig fields that make a run of it


COLUMNS = {  # the paper's order: each column adds one ingredient to the one before
    "avgpool": Column("AvgPool", "Avg", "AvgPool", {"pool": "avg"}),
    "flexpool": Column("FlexPool", "Flex", "FlexPool", {"pool": "flex"}),
    "flexpool-reg": Column("FlexPool + Reg", "+Reg", "+ Reg", {"pool": "flex", "reg": DEFAULT_REG}),
    "flexpool-reg-dropout": Column("FlexPool + Reg + Dropout", "+Drop", "+ Reg\n+ Dropout",
                                   {"pool": "flex", "reg": DEFAULT_REG, "dropout": PAPER_DROPOUT}),
}
TABLES = {"table1": {"sac": False}, "table2": {"sac": True}}
TARGETS = {"table1": ("table1",), "table2": ("table2",), "all": ("table1", "table2")}

PROFILES = {
    "full": {"epochs": 100, "batch_size": 1000},  # the paper's recipe (Sec. 4)
    # 64 steps on a small subset: a data set's matrix runs on a laptop CPU in minutes, and its runs learn (a
    # newcomer's first table must not say the network does not), which half as many steps did not. Its smaller
    # batch keeps the paper's learning rate per image (cell_config).
    "smoke": {"epochs": 4, "batch_size": 128, "train_subset": 2048, "test_subset": 1024},
    # The paper's data, batch, schedule and augmentation in a tenth of its epochs: what a CPU trains in hours.
    "budget": {"epochs": 10, "batch_size": 1000},
}
# What each profile is, in words, for --help, tables, figures and the report.
PROFILE_NOTES = {
    "full": "the paper's experiment: 100 epochs, batch 1000",
    "smoke": "4 epochs on 2,048 images at batch 128 and lr 0.0128 (the paper's lr per image), to try the whole "
             "path in minutes: its runs learn, but their accuracies say nothing about the paper's claims",
    "budget": "10 epochs of the full data at batch 1000, the paper's schedule compressed: not the paper's "
              "100-epoch experiment",
}


def profile_words(profile: str) -> str:
    """'budget profile (10 epochs, not the paper's 100)': how titles and captions name a profile."""
    fields, paper = PROFILES.get(profile), PROFILES["full"]["epochs"]
    if fields is None:
        return f"{profile} profile"
    if profile == "full":
        return f"full profile ({paper} epochs, the paper's)"
    subset = ", a subset of the images" if fields.get("train_subset") else ""
    return f"{profile} profile ({fields['epochs']} epochs{subset}, not the paper's {paper})"


def profiles_help() -> str:
    return "; ".join(f"{name}: {note}" for name, note in PROFILE_NOTES.items())

# How the network is optimised. Both use the paper's one-cycle schedule peaking at lr 0.1, batch 1000, 100 epochs.
RECIPES = {
    # SGD with Nesterov momentum 0.9 and weight decay, as the authors' public code (aliman80/FlexPoolU) and the
    # standard ResNet20 recipe train; Adam at a one-cycle peak of 0.1 is far above Adam's usual range.
    "suite": {"optimizer": "sgd", "weight_decay": 5e-4},
    # The paper's text taken literally (Sec. 4): Adam (beta1 0.9, beta2 0.999), no weight decay.
    "paper": {"optimizer": "adam", "weight_decay": 0.0},
}
RECIPE_NOTES = {"suite": "SGD + Nesterov, weight decay 5e-4", "paper": "the paper's literal Adam, no weight decay"}
# A reproduction runs the paper's protocol unless it fails. Paired by seed on Fashion-MNIST's budget runs, it trained
# cleanly in every cell and was not behind the suite recipe (repro/README.md: Deviations).
DEFAULT_RECIPE = "paper"


def recipes_help() -> str:
    return "; ".join(f"{name}{' (default)' * (name == DEFAULT_RECIPE)}: {note}" for name, note in RECIPE_NOTES.items())

# A params file tunes the cells of the plan: it may not make them other cells, nor pick their seeds.
CELL_FIELDS = ("dataset", "pool", "sac", "seed")
RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig) if not f.metadata["id"])

# Tuned values only replace a knob where the column uses it: a tuned "reg" must not switch on the
# regulariser in the plain FlexPool column, nor dropout in the columns without it, and a FlexPool learning-rate
# multiplier must not make the AvgPool column a run of its own.
_ONLY_WHERE_USED = {"reg": lambda f: f.get("reg"), "dropout": lambda f: f.get("dropout"),
                    "sac_weights": lambda f: f.get("sac"), "flex_lr_scale": lambda f: f.get("pool") != "avg"}


def cell_name(table: str, dataset: str, column: str) -> str:
    return f"{table}/{dataset}/{column}"


def parse_cell(cell: str) -> dict:
    table, dataset, column = cell.split("/")
    return {"table": table, "dataset": dataset, "column": column}


def _named_set(config: RunConfig, sets: dict[str, dict]) -> str:
    """The name of the set of fields the config matches ('custom' if none). A field that some set fixes but
    this one does not must keep RunConfig's default, so a full-recipe run on a train subset is not 'full'."""
    keys = {k for fields in sets.values() for k in fields}
    defaults = RunConfig()
    for name, fields in sets.items():
        if all(getattr(config, k) == fields.get(k, getattr(defaults, k)) for k in keys):
            return name
    return "custom"


def profile_of(config: RunConfig) -> str:
    return _named_set(config, PROFILES)


def recipe_of(config: RunConfig) -> str:
    return _named_set(config, RECIPES)


def load_params(path: str | Path, recipe: str | None = None) -> dict:
    """Tuned hyper-parameters (JSON or YAML mapping of RunConfig field -> value), e.g. from `repro.sweep --report`;
    each value checked against its field here, so a bad one fails in one line before anything is planned. A sweep
    report names the recipe its trials trained with: values tuned for one optimizer are not applied to the other's
    runs."""
    path = Path(path)
    check(path.is_file(), f"params file {path} does not exist")
    params = records.load_file(path, "params file")
    if isinstance(params, dict) and "params" in params:  # a sweep report: the values sit under "params"
        tuned = params.get("recipe", recipe)  # reports written before they named it: not known
        check(recipe is None or tuned == recipe, f"params file {path} was tuned under recipe {tuned!r}, not "
                                                 f"{recipe!r}: launch with --recipe {tuned}, or tune the {recipe} "
                                                 "recipe's runs")
        params = params["params"]
    check(isinstance(params, dict), f"params file {path} must hold a mapping of field -> value")
    unknown = sorted(set(params) - set(field_names()))
    check(not unknown, f"params file {path}: unknown field(s) {', '.join(unknown)}")
    for name in params:
        check(name not in CELL_FIELDS, f"params file {path}: {name} says what a cell is (or which of its runs); "
                                       "choose it with --datasets, --columns, --seeds or the target")
        check(name not in RUNTIME_FIELDS, f"params file {path}: {name} says where or how a run executes, not what "
                                          "it computes: a params file holds tuned values only")
    try:
        RunConfig().replace(**params)
    except ConfigError as e:
        raise ConfigError(f"params file {path}: {e}") from None
    return params


def check_cell(config: RunConfig) -> None:
    """A run named after a table cell must be a run of that cell: the table's SAC setting, the data set, the
    column's pool, and its regulariser and dropout on or off (their values may be tuned). Other names (ad hoc
    runs, sweep trials) are free."""
    parts = config.cell.split("/")
    if parts[0] not in TABLES:
        return
    check(len(parts) == 3 and parts[2] in COLUMNS,
          f"cell {config.cell!r} is not a table cell: TABLE/DATASET/COLUMN, the column one of {', '.join(COLUMNS)}")
    table, dataset, column = parts
    on = {True: "on", False: "off"}
    have = {"dataset": config.dataset, "SAC": on[config.sac], "pool": config.pool,
            "reg": on[config.reg > 0], "dropout": on[config.dropout > 0]}
    fields = COLUMNS[column].fields
    want = {"dataset": dataset, "SAC": on[TABLES[table]["sac"]], "pool": fields["pool"],
            "reg": on["reg" in fields], "dropout": on["dropout" in fields]}
    wrong = [f"{k} {have[k]} (the cell's: {want[k]})" for k in want if have[k] != want[k]]
    check(not wrong, f"cell {config.cell} does not match the run: {', '.join(wrong)}")


def cell_config(table: str, dataset: str, column: str, profile: str = "full", params: dict | None = None,
                recipe: str = DEFAULT_RECIPE, **runtime) -> RunConfig:
    fields = {"dataset": dataset, **TABLES[table], **COLUMNS[column].fields, **PROFILES[profile], **RECIPES[recipe]}
    for key, value in (params or {}).items():
        used = _ONLY_WHERE_USED.get(key)
        if used is None or used(fields):
            fields[key] = tuple(value) if isinstance(value, list) else value
    # A smaller batch than the paper's keeps the paper's learning rate per image (linear scaling; a tuned lr too):
    # at batch 128 and lr 0.1, FlexPool's loss jumped on some seeds (results/evidence/flexpool-batch128-cpu/).
    fields["lr"] = fields.get("lr", RunConfig.lr) * (PROFILES[profile]["batch_size"] / PROFILES["full"]["batch_size"])
    config = RunConfig(cell=cell_name(table, dataset, column), **fields, **runtime)
    changed = {k: getattr(config, k) for k in RECIPES[recipe] if getattr(config, k) != RECIPES[recipe][k]}
    check(not changed, f"tuned params set {', '.join(f'{k}={v}' for k, v in changed.items())}, which recipe "
                       f"{recipe!r} fixes; drop it from the params file or choose another --recipe")
    return config


def plan(target: str, seeds: int, datasets=None, columns=None, profile: str = "full", params=None,
         recipe: str = DEFAULT_RECIPE, **runtime) -> list[RunConfig]:
    """All runs of a target, in table, dataset, column, seed order. `runtime` sets non-id fields (paths...)."""
    check(target in TARGETS, f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    check(seeds >= 1, f"--seeds must be at least 1, got {seeds}")
    check(profile in PROFILES, f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    check(recipe in RECIPES, f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    datasets = list(datasets or table_datasets())
    columns = list(columns or COLUMNS)
    for d in datasets:
        check(d in table_datasets(), f"unknown dataset {d!r}; choose from {', '.join(table_datasets())}")
    for c in columns:
        check(c in COLUMNS, f"unknown column {c!r}; choose from {', '.join(COLUMNS)}")
    return [
        cell_config(table, d, c, profile, params, recipe, **runtime).replace(seed=s)
        for table in TARGETS[target] for d in datasets for c in columns for s in range(seeds)
    ]
