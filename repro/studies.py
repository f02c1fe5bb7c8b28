"""A study, sweeps/NAME.yaml (or any path to one): what `repro.sweep` tunes and how, read and checked before any
trial, and the trials' parameters drawn from its space."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna

from repro import records
from repro.config import ConfigError, RunConfig, check

SWEEPS_DIR = Path(__file__).resolve().parents[1] / "sweeps"
STUDY_KEYS = {"description", "trials", "pruner", "sampler", "fixed", "space"}
PRUNERS = {
    "median": optuna.pruners.MedianPruner,  # below the median of earlier trials at the same epoch
    "hyperband": optuna.pruners.HyperbandPruner,  # successive halving over brackets of epochs
    "threshold": optuna.pruners.ThresholdPruner,  # e.g. still at chance level after the warm-up
    "none": optuna.pruners.NopPruner,
}
SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    path: str
    fixed: dict  # RunConfig fields of every trial
    space: dict  # RunConfig field -> distribution; a tuple field -> a list of distributions or fixed numbers
    trials: int  # budget: finished (complete or pruned) trials
    pruner: dict  # {"type": one of PRUNERS, **its keyword arguments}
    sampler: str = "tpe"
    description: str = ""


def load_study(name: str) -> Study:
    """sweeps/NAME.yaml (or a path to a .yaml file), checked before any worker starts."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else SWEEPS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown study {name!r}: no file {path} (studies: {', '.join(known) or 'none'})")
    spec = records.load_file(path, "study")
    check(isinstance(spec, dict), f"{path} must be a mapping with keys {', '.join(sorted(STUDY_KEYS))}")
    unknown = sorted(set(spec) - STUDY_KEYS)
    check(not unknown, f"{path}: unknown key(s) {', '.join(unknown)}; a study has {', '.join(sorted(STUDY_KEYS))}")
    fixed, space = spec.get("fixed") or {}, spec.get("space") or {}
    check(isinstance(fixed, dict) and isinstance(space, dict), f"{path}: fixed and space must be mappings")
    check(space, f"{path}: the space is empty: nothing to tune")
    check(isinstance(spec.get("trials"), int) and spec["trials"] >= 1, f"{path}: trials must be a positive integer")
    pruner = spec.get("pruner", "median")
    pruner = {"type": pruner} if isinstance(pruner, str) else pruner
    check(isinstance(pruner, dict) and pruner.get("type") in PRUNERS,
          f"{path}: pruner must be one of {', '.join(PRUNERS)} (or a mapping with type: and its options)")
    check(spec.get("sampler", "tpe") in SAMPLERS, f"{path}: sampler must be one of {', '.join(SAMPLERS)}")
    study = Study(path.stem, str(path.resolve()), fixed, space, spec["trials"], pruner, spec.get("sampler", "tpe"),
                  spec.get("description", ""))
    check_fields(study)
    make_pruner(study)  # its options are checked here, not in a worker
    return study


def check_fields(study: Study) -> None:
    """Every name a field that changes the result, every value one RunConfig accepts, scored on validation data."""
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    where = study.path
    for name in list(study.fixed) + list(study.space):
        check(name in fields, f"{where}: {name!r} is not a repro.train option (options: {', '.join(fields)})")
        check(fields[name].metadata["id"], f"{where}: {name!r} says where a run executes; pass it on the command line")
    both = sorted(set(study.fixed) & set(study.space))
    check(not both, f"{where}: {', '.join(both)} both fixed and searched")
    ends = {name: extremes(name, spec, fields[name].default, where) for name, spec in study.space.items()}
    try:
        base = RunConfig.from_dict(study.fixed)
        for name, values in ends.items():
            for value in values:
                RunConfig.from_dict({**study.fixed, name: value})
    except (TypeError, ConfigError) as e:
        raise ConfigError(f"{where}: {e}") from None
    check(base.val_fraction > 0, f"{where}: fixed val_fraction must be > 0: trials are scored on a validation split "
                                 "carved from the training set, never on the test set")


def extremes(name: str, spec, default, where: str) -> list:
    """The values at the ends of a searched field's range (or each choice), to check them before any trial."""
    if isinstance(default, tuple):
        check(isinstance(spec, list) and len(spec) == len(default),
              f"{where}: {name} needs a list of {len(default)} distributions or numbers")
        ends = [extremes(f"{name}[{i}]", s, 0.0, where) if isinstance(s, dict) else [s] for i, s in enumerate(spec)]
        return [[e[0] for e in ends], [e[-1] for e in ends]]
    check(isinstance(spec, dict), f"{where}: {name} needs a distribution: {{low:, high:}} or {{choices: [...]}}")
    if "choices" in spec:
        check(set(spec) == {"choices"} and isinstance(spec["choices"], list) and spec["choices"],
              f"{where}: {name}: choices must be a non-empty list and alone")
        return spec["choices"]
    check({"low", "high"} <= set(spec) <= {"low", "high", "log", "step"},
          f"{where}: {name}: a range has low, high and optionally log or step")
    low, high = spec["low"], spec["high"]
    check(all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) and low < high,
          f"{where}: {name}: low and high must be numbers with low < high")
    check(not spec.get("log") or low > 0, f"{where}: {name}: a log range needs low > 0")
    check(not (spec.get("log") and spec.get("step")), f"{where}: {name}: a range takes log or step, not both")
    check(not isinstance(default, int) or isinstance(default, bool) or (isinstance(low, int) and isinstance(high, int)),
          f"{where}: {name} is an integer option: low and high must be integers")
    return [low, high]


def sample(space: dict, pick) -> dict:
    """RunConfig fields from the space; pick(parameter name, distribution) gives each searched value."""
    fields = {}
    for name, spec in space.items():
        if isinstance(spec, list):  # a tuple field (sac_weights): one parameter per searched element
            fields[name] = [pick(f"{name}[{i}]", s) if isinstance(s, dict) else s for i, s in enumerate(spec)]
        else:
            fields[name] = pick(name, spec)
    return fields


def integer(name: str) -> bool:
    """Searched as integers: epochs, batch_size, ... (elements of sac_weights are named sac_weights[i]: floats)."""
    default = getattr(RunConfig, name, None)
    return isinstance(default, int) and not isinstance(default, bool)


def suggest(trial: optuna.Trial, name: str, spec: dict):
    if "choices" in spec:
        return trial.suggest_categorical(name, spec["choices"])
    if integer(name):
        return trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False))
    return trial.suggest_float(name, spec["low"], spec["high"], step=spec.get("step"), log=spec.get("log", False))


def make_pruner(study: Study) -> optuna.pruners.BasePruner:
    options = {k: v for k, v in study.pruner.items() if k != "type"}
    if study.pruner["type"] == "hyperband":
        options.setdefault("max_resource", RunConfig.from_dict(study.fixed).epochs)
    try:
        return PRUNERS[study.pruner["type"]](**options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{study.path}: pruner {study.pruner['type']}: {e}") from None
