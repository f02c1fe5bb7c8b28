"""One description of one training run, shared by train, launch, sweeps and analysis.

No torch here: the launcher's planning and the analysis import this on machines without a GPU stack.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field

from repro.datasets import DATASETS

POOLS = ("avg", "flex", "flex-softmax")
OPTIMIZERS = ("sgd", "adam")
WANDB_MODES = ("offline", "online", "disabled")
# torch.compile modes for the whole training step; "off" is eager, the reference path; "auto" is off on a CPU
# and repro.train.CUDA_COMPILE on a GPU (set from `python -m repro.bench --survey`).
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PRECISIONS = ("auto", "bf16", "fp32")


def knob(default, help: str, id: bool = True, choices: tuple[str, ...] = ()):
    """A RunConfig field with its --help text and, for a string, the values it may take. id=False: it says where
    or how a run executes, not what it computes, so it stays out of the run id."""
    return field(default=default, metadata={"help": help, "id": id, "choices": choices})


@dataclass(frozen=True)
class RunConfig:
    # What is trained.
    dataset: str = knob("cifar10", f"data set: {', '.join(DATASETS)}; the paper's 'ImageNet' is Tiny ImageNet at 32x32",
                        choices=DATASETS)
    pool: str = knob("avg", "global pool: avg (baseline), flex (paper, Fig. 1), flex-softmax (authors' code)",
                     choices=POOLS)
    sac: bool = knob(False, "Simple Auxiliary Classifiers after each stage (paper Sec. 3.2, Table 2)")
    sac_weights: tuple[float, float, float] = knob((0.1, 0.2, 0.7), "SAC loss weights lambda1..3 (Eq. 3, Sec. 4)")
    reg: float = knob(0.0, "weight of the FlexPool regulariser (Eq. 2) in the loss; the paper gives none")
    dropout: float = knob(0.0, "dropout before the classifier; the paper's +Dropout column uses 0.25")
    # How it is trained (paper Sec. 4: 100 epochs, batch 1000, one-cycle LR peaking at 0.1, flips and scaling).
    optimizer: str = knob("sgd", "sgd (Nesterov momentum) or adam (named by the paper); see README",
                          choices=OPTIMIZERS)
    lr: float = knob(0.1, "peak learning rate of the one-cycle schedule (paper: 0.1)")
    momentum: float = knob(0.9, "SGD momentum / Adam beta1 (not in the paper)")
    weight_decay: float = knob(5e-4, "on conv and linear weights only (not in the paper)")
    flex_lr_scale: float = knob(1.0, "FlexPool weights learn at lr x this (1 = the paper); see README")
    epochs: int = knob(100, "training epochs (paper: 100)")
    batch_size: int = knob(1000, "images per step (paper: 1000)")
    augment: bool = knob(True, "random horizontal flip and random scaling (paper Sec. 4)")
    label_smoothing: float = knob(0.0, "cross-entropy label smoothing (not in the paper; 0)")
    # Which data.
    seed: int = knob(0, "seeds the model, data order, augmentation and dropout")
    val_fraction: float = knob(0.0, ">0: hold out this share of the training set and evaluate on it (tuning)")
    train_subset: int = knob(0, ">0: train on only this many images (smoke profile, tests)")
    test_subset: int = knob(0, ">0: evaluate on only this many images (smoke profile, tests)")
    # Where and how it runs: not part of the run id.
    cell: str = knob("", "table cell, e.g. table2/cifar10/flexpool-reg-dropout ('' = ad hoc run)", id=False)
    data_root: str = knob("", "data folder ('' = $FLEXPOOL_DATA, else ./data)", id=False)
    download: bool = knob(False, "download missing data sets (needs internet)", id=False)
    results_dir: str = knob("results", "records go to <results_dir>/runs, checkpoints to .../checkpoints", id=False)
    checkpoint_dir: str = knob("", "checkpoint folder, e.g. scratch space ('' = $FLEXPOOL_CHECKPOINTS, else "
                               "<results_dir>/checkpoints)", id=False)
    device: str = knob("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...", id=False)
    compile: str = knob("auto", f"torch.compile the whole training step: {', '.join(COMPILE_MODES)} (auto: off on "
                        f"a CPU, repro.train.CUDA_COMPILE on a GPU; README: Speed)", id=False, choices=COMPILE_MODES)
    precision: str = knob("auto", "auto (bf16 autocast + channels_last on CUDA and on a CPU with bf16 units, "
                          "else fp32), bf16, fp32", id=False, choices=PRECISIONS)
    wandb: str = knob("offline", "W&B mode: offline (default, no network), online, disabled", id=False,
                      choices=WANDB_MODES)
    wandb_project: str = knob("flexpool-repro", "W&B project", id=False)
    wandb_entity: str = knob("", "W&B entity ('' = your default)", id=False)
    wandb_group: str = knob("", "W&B group ('' = the cell name)", id=False)

    def __post_init__(self):
        for f in dataclasses.fields(self):  # types first: values from YAML, JSON or a sweep may be anything
            value, default = getattr(self, f.name), f.default
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if isinstance(default, bool):
                ok, kind = isinstance(value, bool), "true or false"
            elif isinstance(default, int):
                ok, kind = number and isinstance(value, int), "an integer"
            elif isinstance(default, float):
                ok, kind = number, "a number"
            elif isinstance(default, tuple):
                ok = isinstance(value, (tuple, list)) and len(value) == len(default) and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                kind = f"a list of {len(default)} numbers"
            else:
                ok, kind = isinstance(value, str), "a string"
            check(ok, f"{f.name} must be {kind}, got {value!r}")
            if isinstance(default, float):  # 1 and 1.0 are one setting: one run id
                object.__setattr__(self, f.name, float(value))
        check(self.dataset in DATASETS, f"unknown dataset {self.dataset!r}; choose from {', '.join(DATASETS)}")
        check(self.pool in POOLS, f"unknown pool {self.pool!r}; choose from {', '.join(POOLS)}")
        check(self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; choose from {OPTIMIZERS}")
        check(self.compile in COMPILE_MODES, f"unknown compile mode {self.compile!r}; choose from {COMPILE_MODES}")
        check(self.precision in PRECISIONS, f"unknown precision {self.precision!r}; choose from {PRECISIONS}")
        check(self.flex_lr_scale > 0, f"flex_lr_scale must be positive, got {self.flex_lr_scale}")
        check(self.wandb in WANDB_MODES, f"unknown wandb mode {self.wandb!r}; choose from {WANDB_MODES}")
        check(self.epochs >= 1, f"epochs must be positive, got {self.epochs}")
        check(self.batch_size >= 1, f"batch size must be positive, got {self.batch_size}")
        check(self.lr > 0, f"learning rate must be positive, got {self.lr}")
        check(self.seed >= 0, f"seed must be non-negative, got {self.seed}")
        check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        check(self.reg >= 0, f"regulariser weight must be non-negative, got {self.reg}")
        check(0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        check(self.train_subset >= 0, f"train_subset must be 0 (all) or a number of images, got {self.train_subset}")
        check(self.test_subset >= 0, f"test_subset must be 0 (all) or a number of images, got {self.test_subset}")
        check(self.weight_decay >= 0, f"weight_decay must be non-negative, got {self.weight_decay}")
        check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        check(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        # the cell names the folder of the run's record and log (folder): '..' or a leading '/' would leave it
        check(not self.cell or all(part not in ("", ".", "..") for part in self.cell.split("/")),
              f"cell {self.cell!r} must be a folder below the results folder: names separated by '/', none of "
              f"them empty, '.' or '..'")
        check(min(self.sac_weights) >= 0 and self.sac_weights[-1] > 0,
              f"sac_weights must be non-negative with the last (the prediction's head) positive, "
              f"got {list(self.sac_weights)}")
        object.__setattr__(self, "sac_weights", tuple(float(w) for w in self.sac_weights))

    @property
    def run_id(self) -> str:
        """Hash of every field that says what is computed: same config and seed, same id, same record path.
        Where it runs is left out, although the device (GPU model, CPU) and the number of CPU threads change
        the result in its last digits; the record's env names both."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("id", True)}
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def folder(self) -> str:
        """Where the run's record, log and W&B group live: its table cell, or adhoc/<dataset> outside a table."""
        return self.cell or f"adhoc/{self.dataset}"

    @property
    def eval_split(self) -> str:
        return "val" if self.val_fraction > 0 else "test"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        check(not unknown, f"unknown RunConfig field(s): {', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)


class ConfigError(ValueError):
    """Bad user input: the command-line tools print its message as one line and exit 2 (records.command)."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def plural(n: int, word: str) -> str:
    """'1 seed', '5 seeds': counts in messages, tables and figures."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def default_data_root() -> str:
    return os.environ.get("FLEXPOOL_DATA") or "./data"


def default_checkpoint_dir() -> str:
    """'' when unset: then a run checkpoints under its own results folder."""
    return os.environ.get("FLEXPOOL_CHECKPOINTS", "")


def absolute_checkpoint_dir(value: str) -> str:
    """--checkpoint-dir as a run carries it: $FLEXPOOL_CHECKPOINTS filled in where it is given, and absolute, so a
    job that runs from a code snapshot or on another node with another environment checkpoints where it was told."""
    folder = value or default_checkpoint_dir()
    return os.path.abspath(os.path.expanduser(folder)) if folder else ""


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def flag(field: str) -> str:
    """A RunConfig field's command-line flag: results_dir -> --results-dir."""
    return "--" + field.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, names=None, **helps: str) -> None:
    """The named RunConfig fields (all by default) as options, alike in every command: the field's flag, type,
    choices and default, and its help unless `helps` gives one. A bool is --x / --no-x, a tuple that many
    numbers."""
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    for name in fields if names is None else names:
        default = fields[name].default
        common = {"default": default,
                  "help": f"{helps.get(name, fields[name].metadata['help'])} (default: {default!r})"}
        if isinstance(default, bool):
            parser.add_argument(flag(name), action=argparse.BooleanOptionalAction, **common)
        elif isinstance(default, tuple):
            parser.add_argument(flag(name), type=float, nargs=len(default), **common)
        else:
            parser.add_argument(flag(name), type=type(default), choices=fields[name].metadata["choices"] or None,
                                **common)


def flags(values: dict) -> list[str]:
    """The command-line words that set these options to these values, as add_options reads them back:
    {"sac": False, "sac_weights": [0.1, 0.2, 0.7]} -> --no-sac --sac-weights 0.1 0.2 0.7."""
    words = []
    for name, value in values.items():
        if isinstance(value, bool):
            words.append(flag(name) if value else f"--no-{flag(name)[2:]}")
        else:
            words += [flag(name), *map(str, value if isinstance(value, (list, tuple)) else [value])]
    return words


class Parser(argparse.ArgumentParser):
    """argparse for the commands: a bad option is bad input like any other, a ConfigError (one line, exit 2),
    not usage and message."""

    def error(self, message):
        raise ConfigError(f"{message} (see --help)")
