"""A study as a W&B sweep for W&B's own agents, sweeps/wandb-agent/NAME.yaml (`repro.sweep NAME --export-wandb`):
an agent runs `python -m repro.train` with the study's fixed fields as flags and W&B's picks of the searched ones."""

from __future__ import annotations

from pathlib import Path

import yaml

from repro import layout
from repro.config import RunConfig, flag, flags
from repro.experiments import DEFAULT_RECIPE, RECIPES
from repro.studies import Study, integer


def parameter(name: str, spec: dict) -> dict:
    if "choices" in spec:
        return {"values": spec["choices"]}
    if spec.get("step"):
        return {"distribution": "q_uniform", "min": spec["low"], "max": spec["high"], "q": spec["step"]}
    kind = ("q_log_uniform_values", "log_uniform_values") if spec.get("log") else ("int_uniform", "uniform")
    return {"distribution": kind[0] if integer(name) else kind[1], "min": spec["low"], "max": spec["high"]}


def sweep(study: Study) -> tuple[dict, list[str]]:
    """W&B's form of the study: fixed fields become literal flags, searched ones W&B parameters named by their
    flags. Tuple fields (sac_weights) cannot be searched there: W&B passes one value per flag. Returns the sweep
    and the fields left out."""
    parameters = {flag(n)[2:]: parameter(n, s) for n, s in study.space.items() if not isinstance(s, list)}
    left_out = [n for n, s in study.space.items() if isinstance(s, list)]
    # repro.train would take what the study leaves to RunConfig's defaults from its own default recipe: given
    # here, the agent trains the run an Optuna trial of the study trains
    trial = RunConfig.from_dict(study.fixed)
    fixed = {name: getattr(trial, name) for name in RECIPES[DEFAULT_RECIPE]} | study.fixed
    spec = {
        "name": study.name,
        "project": RunConfig.wandb_project,
        "description": study.description,
        "method": "bayes",
        "metric": {"name": "eval_accuracy", "goal": "maximize"},  # logged each epoch; the val split here
        "run_cap": study.trials,
        "parameters": parameters,
        "command": ["${env}", "${interpreter}", "-m", "repro.train", *flags(fixed), *flags({
            "wandb": "online", "wandb_group": f"wandb-sweep/{study.name}",
            "results_dir": str(layout.trials_dir(RunConfig.results_dir, f"{study.name}-wandb"))}),
                    "${args_no_boolean_flags}"],
    }
    if study.pruner["type"] != "none":
        spec["early_terminate"] = {"type": "hyperband",
                                   "min_iter": study.pruner.get("min_resource",
                                                                study.pruner.get("n_warmup_steps", 0) + 1)}
    return spec, left_out


def text(study: Study) -> str:
    spec, left_out = sweep(study)
    header = [(f"# W&B sweep for the study sweeps/{study.name}.yaml, written by `python -m repro.sweep "
               f"{study.name} --export-wandb`: edit the study, not this file."),
              (f"# Start it from the repository root: wandb sweep sweeps/wandb-agent/{study.name}.yaml, then wandb "
               f"agent ENTITY/{RunConfig.wandb_project}/SWEEP_ID (as printed) on each machine.")]
    if left_out:
        header.append(f"# Not searched here: {', '.join(left_out)} (W&B passes one value per flag); "
                      "the study in Optuna searches it.")
    return "\n".join(header) + "\n" + yaml.safe_dump(spec, sort_keys=False, width=200)


def export(study: Study) -> Path:
    out = Path(study.path).parent / "wandb-agent" / f"{study.name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text(study))
    return out
