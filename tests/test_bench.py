import contextlib
import dataclasses
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repro import bench


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """A CPU survey at a tiny batch (one suite regime and the plain loop, to stay short): its JSON and what it
    printed."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["--survey", "--device", "cpu", "--batch-size", "4", "--seconds", "0", "--regimes", "off/fp32",
            "plain/bf16", "--out", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert bench.main(argv) == 0
    [path] = out.glob("cpu-*.json")
    return json.loads(path.read_text()), printed.getvalue()


def test_survey_on_a_cpu_times_packed_runs_and_every_column_with_provenance(survey):
    result, _ = survey
    assert result["settings"]["packing"] == sorted({1, bench.CORES}) and result["settings"]["seconds"] == 0
    regime, plain = result["regimes"]
    assert regime["regime"] == "off/fp32" and regime["error"] is None
    packing = {str(k) for k in result["settings"]["packing"]}
    assert set(regime["images_per_s"]) == packing and all(r > 0 for r in regime["images_per_s"].values())
    assert plain["regime"] == "plain/bf16" and set(plain["images_per_s"]) == packing
    assert result["best"]["regime"] == "off/fp32", "the plain loop is a yardstick, never the suite's regime"
    assert result["packing_gain"] == pytest.approx(result["best"]["images_per_s"] / regime["images_per_s"]["1"])
    warm = regime["prepare_s"]["warm_by_runs"]
    assert set(warm) == packing, "on a CPU every packing is prepared again, with its share of the cores"
    assert 0 < regime["prepare_s"]["cold"] and 0 < warm[str(result["best"]["runs"])] == result["best"]["prepare_s"]
    assert list(result["columns"]) == bench.CELLS and all(r > 0 for r in result["columns"].values())
    assert {"device", "torch", "git_commit", "date", "command"} <= set(result["env"])
    assert result["env"]["command"].startswith("python -m repro.bench --survey --device cpu")
    assert result["env"]["device_type"] == "cpu" and result["env"]["cpu_bf16_units"]


def test_speedups_compare_the_fastest_regime_with_eager_fp32_and_the_avgpool_column_with_the_plain_loop(survey):
    result, printed = survey
    regime, plain = result["regimes"]
    best, speedups = result["best"], result["speedups"]
    assert speedups["over_eager_fp32"] == pytest.approx(best["images_per_s"] / regime["images_per_s"]["1"])
    avgpool = result["columns"]["table1/avgpool"]
    assert speedups["avgpool_over_plain_loop"] == pytest.approx(avgpool / plain["images_per_s"]["1"])
    assert speedups["avgpool_packed_over_plain_loop"] == pytest.approx(
        avgpool * result["packing_gain"] / plain["images_per_s"]["1"])
    assert f"one run each: {speedups['avgpool_over_plain_loop']:.2f} x" in printed


def test_projection_takes_each_column_at_its_own_speed_and_counts_each_runs_preparation(survey):
    result, _ = survey
    images = 5 * 100 * (50_000 + 50_000 + 60_000 + 100_000)  # seeds x epochs x the four training sets
    best = result["best"]
    prepare = 5 * 4 * best["prepare_s"] / best["runs"]  # seeds x data sets, shared by the runs side by side
    hours = {cell: (images / (rate * result["packing_gain"]) + prepare) / 3600
             for cell, rate in result["columns"].items()}
    projected = result["projected_device_hours"]
    assert projected["table1"] == pytest.approx(sum(h for c, h in hours.items() if c.startswith("table1/")))
    assert projected["table2"] == pytest.approx(sum(h for c, h in hours.items() if c.startswith("table2/")))
    assert projected["all"] == pytest.approx(projected["table1"] + projected["table2"])


def test_the_fastest_regime_is_the_fastest_over_whole_runs_its_compiling_counted():
    """Four 6M-image runs side by side: eager, ready in 5 s and 400k images/s summed (60 s of training), beats
    a compiled regime 50 % faster that takes 100 s to get ready, and loses to it when that takes 10 s."""
    eager = {"prepare_s": {"warm": 5.0}}
    compiled = {"prepare_s": {"warm": 100.0}}
    images = 100 * 60_000
    assert bench.whole_run_rate(400_000, 4, eager, images) == pytest.approx(4 * images / (5 + 4 * images / 400_000))
    assert bench.whole_run_rate(600_000, 4, compiled, images) < bench.whole_run_rate(400_000, 4, eager, images)
    assert bench.whole_run_rate(600_000, 4, {"prepare_s": {"warm": 10.0}}, images) > bench.whole_run_rate(
        400_000, 4, eager, images)


def test_survey_prints_one_table_that_says_what_the_projection_is(survey):
    _, printed = survey
    assert "fastest: off/fp32" in printed and "every column in off/fp32" in printed
    assert "over whole cifar10 runs of the full profile (each ready in" in printed and "s cold," in printed
    assert "device-hours" in printed and "GPU-hours" not in printed
    assert "to adopt it: python -m repro.launch ... --profile full --executor local --compile off" in printed
    assert "full recipe" not in printed


def test_without_columns_the_projection_says_it_takes_the_heaviest_speed_for_all(tmp_path, capsys):
    argv = ["--survey", "--device", "cpu", "--batch-size", "4", "--regimes", "off/fp32", "--packing", "1",
            "--no-columns", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    [path] = tmp_path.glob("cpu-*.json")
    result = json.loads(path.read_text())
    assert result["columns"] == {} and result["packing_gain"] == 1
    rate, prepare = result["regimes"][0]["images_per_s"]["1"], result["best"]["prepare_s"]
    cell_hours = 5 * (100 * (50_000 + 50_000 + 60_000 + 100_000) / rate + 4 * prepare) / 3600
    assert result["projected_device_hours"]["all"] == pytest.approx(8 * cell_hours)  # 2 tables x 4 columns
    printed = capsys.readouterr().out
    assert "at every column at the heaviest one's speed (--no-columns: an upper bound)" in printed
    assert "every column in off/fp32" not in printed


def test_a_budget_projection_covers_its_data_sets_at_its_epochs_and_batch(tmp_path, capsys):
    argv = ["--survey", "--device", "cpu", "--profile", "budget", "--datasets", "fashion_mnist"]
    settings = bench.settle(bench.parser().parse_args(argv))
    assert settings.batch_size == 1000 and settings.regimes == bench.SURVEY_REGIMES["cpu"], "a real CPU figure"
    argv += ["--batch-size", "8", "--steps", "1", "--seconds", "0", "--regimes", "off/fp32", "--packing", "1",
             "--no-columns", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    [path] = tmp_path.glob("cpu-*.json")
    result = json.loads(path.read_text())
    rate, prepare = result["regimes"][0]["images_per_s"]["1"], result["best"]["prepare_s"]
    cell_hours = 5 * (10 * 60_000 / rate + prepare) / 3600
    assert result["projected_device_hours"]["all"] == pytest.approx(8 * cell_hours)
    assert "budget profile (10 epochs, not the paper's 100)" in capsys.readouterr().out


def test_help_gives_the_gpu_and_the_cpu_default():
    text = " ".join(bench.parser().format_help().split())
    assert "images per step (default: the profile's" in text and "3.0 on a GPU, 8.0 on a CPU" in text
    assert f"1 2 4 8 on a GPU, {' '.join(map(str, sorted({1, bench.CORES})))} on a CPU" in text
    assert "device-hours" in text and "GPU-hours" not in text


def test_a_failing_regime_is_recorded_and_named(capsys):
    settings = bench.settle(bench.parser().parse_args(["--device", "cpu", "--batch-size", "4", "--steps", "2",
                                                       "--seconds", "0", "--datasets", "cifar10"]))
    settings = dataclasses.replace(settings, device="cuda")  # where there is none
    failed = bench._attempt("off/bf16", False, lambda: bench.measure_regime("off/bf16", [1], settings))
    assert failed["images_per_s"] == {} and "CUDA is not available" in failed["error"]
    assert "off/bf16" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "0"], "must be positive"),
    (["--packing", "2", "4"], "must include 1"),
    (["--regimes", "fast/bf16"], "unknown regime 'fast/bf16'"),
    (["--datasets", "mnist"], "unknown data set(s) mnist"),
])
def test_bench_rejects_bad_options(tmp_path, capsys, argv, message):
    assert bench.main(["--device", "cpu", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and not list(tmp_path.iterdir())


def in_session(sid: int) -> list[int]:
    """The processes of a session, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == sid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the bench's workers through /proc")
def test_sigterm_stops_the_bench_and_its_workers_in_one_line(tmp_path):
    argv = [sys.executable, "-m", "repro.bench", "--device", "cpu", "--batch-size", "4", "--steps", "2",
            "--seconds", "600", "--regimes", "off/fp32", "--packing", "1", "--no-columns", "--out", str(tmp_path)]
    bench_process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
    for line in bench_process.stdout:  # prepared: its worker now times for 600 s
        if "warm" in line:
            break
    assert len(in_session(bench_process.pid)) >= 2, "the bench and its worker"
    bench_process.send_signal(signal.SIGTERM)
    assert bench_process.wait(timeout=60) == 143
    assert bench_process.stderr.read().strip().splitlines() == ["stopped: SIGTERM"]
    end = time.time() + 30
    while in_session(bench_process.pid) and time.time() < end:
        time.sleep(0.2)
    assert not in_session(bench_process.pid), "no worker outlives the bench"
    assert not list(tmp_path.iterdir()), "a stopped bench writes no result"


@pytest.mark.parametrize("recipe", ["paper", "suite"])
def test_the_plain_loop_trains_with_the_recipes_optimizer(recipe):
    """The yardstick times the optimizer the suite's column trains with: Adam's first step moves each weight by
    about lr whatever its gradient's size, SGD's by lr times the gradient."""
    import torch

    from repro import experiments, train
    config = experiments.cell_config("table1", "fashion_mnist", "avgpool", "smoke", recipe=recipe).replace(
        device="cpu", precision="fp32", lr=1e-3, weight_decay=0.0)
    torch.manual_seed(0)
    model = train.make_model(config, torch.device("cpu"))
    images, labels = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (8,))
    weight = model.fc.weight.detach().clone()
    bench.plain_step(config, model, images, labels)(torch.arange(8), None, None, None)
    moved = (model.fc.weight.detach() - weight).abs()
    by_lr = ((moved[moved > 0] / 1e-3 - 1).abs() < 0.05).float().mean().item()  # share moved by lr, +-5 %
    assert by_lr > 0.9 if recipe == "paper" else by_lr < 0.1
