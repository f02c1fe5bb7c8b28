import json

import pytest

from repro import bench


def test_bench_smoke_on_cpu_writes_provenance_and_projection(tmp_path, capsys):
    argv = ["--device", "cpu", "--batch-size", "8", "--epochs", "1", "--warmup", "0", "--packed", "2",
            "--seeds", "5", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    [path] = tmp_path.glob("cpu-*.json")
    result = json.loads(path.read_text())
    rates = result["images_per_s"]
    assert len(rates["one_run"]) == 8 and all(r > 0 for r in rates["one_run"].values())
    assert rates["packed"] > 0 and rates["packed_runs"] == 2
    assert {"device", "torch", "git_commit", "date", "command"} <= set(result["env"])
    assert result["env"]["command"].startswith("python -m repro.bench --device cpu")
    # both tables: 32 cells x 5 seeds x 100 epochs over 50k/50k/60k/100k images = 1.04 billion images
    rate = max(rates["one_run"]["table2/flexpool-reg-dropout"], rates["packed"])
    assert result["projected_hours"]["all"] == pytest.approx(1.04e9 / rate / 3600)
    assert result["projected_hours"]["table1"] == pytest.approx(result["projected_hours"]["all"] / 2)
    assert "device-hours" in capsys.readouterr().out


def test_bench_rejects_bad_sizes(tmp_path, capsys):
    assert bench.main(["--device", "cpu", "--batch-size", "0", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
