"""Adding a data set or a column is one entry each (repro.datasets, repro.experiments.COLUMNS): from there it
reaches the plan, the training, the tables, the figures and the results page with no other edit."""

import shutil

import pytest

from analysis import make_figures, make_report, make_tables
from analysis.summary import load_summary
from repro import datasets, experiments, layout, train
from repro.datasets import DatasetInfo
from repro.experiments import Column


@pytest.fixture
def mnist_and_a_softmax_column(monkeypatch, data_root):
    """MNIST (the tiny IDX files conftest writes, in MNIST's folder) and the authors' softmax FlexPool as a column."""
    shutil.copytree(data_root / "FashionMNIST", data_root / "MNIST")
    monkeypatch.setitem(datasets.DATASETS, "mnist", DatasetInfo(
        "MNIST", 10, 1, 28, (0.1307,), (0.3081,), 60_000, "MNIST/raw", torchvision="MNIST"))
    monkeypatch.setitem(experiments.COLUMNS, "flexpool-softmax", Column(
        "FlexPool (softmax)", "Soft", "softmax", {"pool": "flex-softmax"}))
    return data_root


def test_a_data_set_and_a_column_added_in_one_place_each_reach_every_output(tmp_path, mnist_and_a_softmax_column):
    results = tmp_path / "results"
    plan = experiments.plan("table1", 2, ["mnist"], ["avgpool", "flexpool-softmax"], "smoke", wandb="disabled",
                            data_root=str(mnist_and_a_softmax_column), results_dir=str(results))
    assert sorted({c.cell for c in plan}) == ["table1/mnist/avgpool", "table1/mnist/flexpool-softmax"]
    assert {c.pool for c in plan if c.cell.endswith("softmax")} == {"flex-softmax"}
    for config in plan:
        assert train.run(config)["status"] in ("completed", "diverged")
        assert layout.record_path(config).is_file()

    runs = ["--runs", str(results / "runs"), "--profile", "smoke"]
    make_tables.main([*runs, "--out", str(tmp_path / "tables")])
    table = (tmp_path / "tables" / "table1.md").read_text()
    assert "| MNIST |" in table and "| FlexPool (softmax) |" in table
    assert "T1: FlexPool (softmax) vs FlexPool + Reg + Dropout" in (tmp_path / "tables" / "claims.md").read_text()
    legend = "+Drop: FlexPool + Reg + Dropout; Soft: FlexPool (softmax)."
    assert legend in (tmp_path / "tables" / "claims.tex").read_text()

    make_figures.main([*runs, "--out", str(tmp_path / "figures")])
    assert (tmp_path / "figures" / "figure2.png").is_file()
    loaded = load_summary(make_figures.parse_args(runs))
    trend = make_figures.trend_figure(loaded.runs, loaded.summary, "table1", "std", "smoke", ["paper"])
    assert "MNIST" in [ax.get_title().split("\n")[0] for ax in trend.axes]
    assert [t.get_text() for t in trend.axes[0].get_xticklabels()][-1] == "softmax"

    make_report.main([*runs, "--out", str(tmp_path / "report"), "--datasets", "mnist"])
    page = (tmp_path / "report" / "README.md").read_text()
    assert "MNIST (" in page and "FlexPool (softmax)" in page and "curves.png" in page
