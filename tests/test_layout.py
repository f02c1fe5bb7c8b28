"""repro/layout.py is the one place that knows where things go in a results folder. CPU, no torch, milliseconds."""

import re

from repro import layout
from repro.experiments import cell_config
from tests.helpers import ROOT


def test_every_path_of_a_run_lies_in_its_results_folder_or_its_checkpoint_folder(tmp_path):
    results = tmp_path / "results"
    config = cell_config("table2", "fashion_mnist", "flexpool", "smoke", results_dir=str(results)).replace(seed=3)
    paths = {"record": layout.record_path(config), "lock": layout.lock_path(config),
             "queue": layout.queue_path(config), "log": layout.log_path(config),
             "checkpoint": layout.checkpoint_path(config), "job": layout.job_folder(results, "table2"),
             "study": layout.study_files(results, "tiny")[0], "journal": layout.study_files(results, "tiny")[1],
             "best": layout.best_params_path(results, "tiny"), "trials": layout.trials_dir(results, "tiny"),
             "bench": layout.bench_dir(results), "report": layout.output_dir(results, "report", "full", "paper")}
    assert all(p.is_relative_to(results) for p in paths.values()), paths
    assert paths["record"] == results / "runs" / "table2" / "fashion_mnist" / "flexpool" / f"seed3-{config.run_id}.json"
    assert paths["log"].is_relative_to(layout.run_logs_dir(results))
    assert layout.checkpoint_path(config.replace(checkpoint_dir=str(tmp_path / "scratch"))) == \
        tmp_path / "scratch" / f"{config.run_id}.pt"


def test_a_seeds_records_are_found_whatever_their_run_id(tmp_path):
    config = cell_config("table1", "cifar10", "avgpool", "budget", results_dir=str(tmp_path)).replace(seed=1)
    other = cell_config("table1", "cifar10", "avgpool", "smoke", results_dir=str(tmp_path)).replace(seed=1)
    for c in (config, other, other.replace(seed=2)):
        layout.record_path(c).parent.mkdir(parents=True, exist_ok=True)
        layout.record_path(c).write_text("{}")
    assert layout.seed_records(config) == sorted([layout.record_path(config), layout.record_path(other)])


def test_no_other_module_spells_a_results_folder_part():
    """A folder of the layout named anywhere else would drift from it: the code asks layout instead."""
    parts = re.compile(r"""/ *["'](runs|slurm-logs|checkpoints|locks|queued|sweeps|tables|figures|report|bench)["']""")
    spelled = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
               for folder in ("repro", "analysis") for path in sorted((ROOT / folder).glob("*.py"))
               if path.name != "layout.py"
               for n, line in enumerate(path.read_text().splitlines(), 1)
               if parts.search(line.split("#")[0]) and "__file__" not in line]  # the repository's own folders
    assert spelled == []
