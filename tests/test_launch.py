"""The launcher and status on this machine: plans, relaunching, bad input, and real runs through submitit's local
executor (tiny Fashion-MNIST files from conftest, the smoke profile, CPU)."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest

from analysis import make_tables
from repro import executors, launch, layout, records, runs, status, train
from repro.experiments import plan
from tests.helpers import ROOT, configs, fake_squeue, main, selection, smoke, training_starts, wait_for, write_run


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the jobs inherit it


@pytest.mark.parametrize("target,runs,cells", [("table1", 80, 16), ("table2", 80, 16), ("all", 160, 32)])
def test_plan_sizes(capsys, tmp_path, target, runs, cells):
    code, out, _ = main(capsys, launch, target, "--seeds", 5, "--results-dir", tmp_path, "--dry-run")
    assert code == 0
    assert f"{cells} cells x 5 seeds = {runs} runs: 0 done, 0 running, 0 queued, 0 failed, 0 unusable, " \
           f"{runs} pending" in out
    assert f"would submit {runs} runs" in out
    assert not (tmp_path / "slurm-logs").exists()  # a dry run submits nothing and writes nothing


def test_run_ids_and_paths_are_stable(tmp_path):
    five = plan("all", 5, results_dir=str(tmp_path))
    assert [c.run_id for c in five] == [c.run_id for c in plan("all", 5, results_dir=str(tmp_path))]
    assert len({c.run_id for c in five}) == 160
    three = plan("all", 3, results_dir=str(tmp_path / "elsewhere"))  # fewer seeds, other folder: same ids
    assert {c.run_id for c in three} <= {c.run_id for c in five}
    config = five[0]
    assert layout.record_path(config) == tmp_path / "runs" / config.cell / f"seed0-{config.run_id}.json"


def test_status_says_how_much_training_time_is_left_from_the_done_runs(capsys, tmp_path):
    for column, seed, hours in (("avgpool", 0, 1.0), ("flexpool", 0, 2.0)):
        write_run(tmp_path, "table1", "fashion_mnist", column, seed, 0.9, profile="budget",
                  timing={"wall_s": 1.0, "train_s": hours * 3600, "images_per_s": 1.0})
    write_run(tmp_path, "table1", "fashion_mnist", "avgpool", 1, 0.9, profile="budget", status="failed")
    argv = ["table1", "--seeds", "2", "--datasets", "fashion_mnist", "--columns", "avgpool", "flexpool",
            "--profile", "budget", "--results-dir", str(tmp_path)]
    assert status.main(argv) == 0
    # 4 planned: 2 done (1 h and 2 h), 1 failed (trains again only when asked), 1 pending
    out = capsys.readouterr().out
    assert "training time left: about 1.5 h (1 run to train x 1.5 h, the mean of 2 done runs)" in out
    # the pending run was stopped after 4 of its 10 epochs: its checkpoint holds them, its log (as train.py writes
    # it, over two jobs) says how many
    pending = plan("table1", 2, ["fashion_mnist"], ["flexpool"], profile="budget", results_dir=str(tmp_path))[1]
    layout.checkpoint_path(pending).parent.mkdir(parents=True)
    layout.checkpoint_path(pending).write_bytes(b"weights")
    layout.log_path(pending).parent.mkdir(parents=True)
    layout.log_path(pending).write_text(
        "== table1/fashion_mnist/flexpool seed 1\n[table1/fashion_mnist/flexpool seed 1] epoch 1/10 loss 2.000\n"
        "== run process ended without a record: stopped\n== table1/fashion_mnist/flexpool seed 1\n"
        f"resuming run {pending.run_id} after epoch 1 from {layout.checkpoint_path(pending)}\n"
        + "".join(f"[table1/fashion_mnist/flexpool seed 1] epoch {e}/10 loss 1.000\n" for e in (2, 3, 4)))
    assert status.main(argv) == 0
    out = capsys.readouterr().out
    assert "training time left: about 0.9 h (1 run to train x 1.5 h, the mean of 2 done runs, less the 4 of their " \
           "10 epochs trained so far)" in out
    assert f"checkpoint of table1/fashion_mnist/flexpool seed 1 (pending): after epoch 4 of 10, " \
           f"{layout.checkpoint_path(pending)}" in out
    write_run(tmp_path, "table1", "fashion_mnist", "flexpool", 1, 0.9, profile="budget")
    assert status.main(argv) == 0
    assert "training time left" not in capsys.readouterr().out  # nothing left to train


def test_dry_run_submits_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "submit", lambda *a, **k: pytest.fail("a dry run submitted"))
    code, out, _ = main(capsys, launch, "table2", "--seeds", 2, "--results-dir", tmp_path, "--dry-run",
                        "--executor", "slurm", "--cluster", "example")
    assert code == 0 and "would submit 32 runs (slurm, profile example, 1 per GPU)" in out


def test_runs_go_out_seed_by_seed_in_the_compile_mode_asked_for(capsys, tmp_path, data_root, monkeypatch):
    """A campaign cut short must leave whole seeds across the columns; --compile reaches every run, and the
    run ids stay those of the plan (how a run compiles is not what it computes)."""
    submitted = []
    job = SimpleNamespace(job_id="1")
    monkeypatch.setattr(launch, "submit", lambda runs, *a, **k: submitted.extend(runs) or [job])
    code, _, _ = main(capsys, launch, *smoke(tmp_path, data_root, "--columns", "avgpool", "flexpool"), "table1",
                      "--seeds", 3, "--compile", "reduce-overhead")
    assert code == 0
    assert [c.seed for c in submitted] == [0, 0, 1, 1, 2, 2]
    assert {c.compile for c in submitted} == {"reduce-overhead"}
    planned = configs(tmp_path, data_root, seeds=3, columns=["avgpool", "flexpool"])
    assert sorted(c.run_id for c in submitted) == sorted(c.run_id for c in planned)


def write_profile(tmp_path, drop):
    text = (ROOT / "slurm" / "example.yaml").read_text()
    path = tmp_path / "cluster.yaml"
    path.write_text("\n".join(line for line in text.splitlines() if not line.startswith(f"{drop}:")))
    return path


@pytest.mark.parametrize("argv,message", [
    (["tableX"], "unknown target 'tableX'"),
    (["table1", "--datasets", "mnist"], "unknown dataset 'mnist'"),
    (["table1", "--columns", "maxpool"], "unknown column 'maxpool'"),
    (["table1", "--seeds", "0"], "--seeds must be at least 1"),
    (["table1", "--runs-per-gpu", "0"], "--runs-per-gpu must be at least 1"),
    (["table1", "--params", "nowhere.yaml"], "params file nowhere.yaml does not exist"),
    (["table1", "--executor", "slurm", "--cluster", "nowhere"], "nowhere.yaml does not exist"),
    (["table1", "--executor", "slurm", "--cluster", "QOSLESS"], "lacks field(s) qos"),
])
def test_bad_input_is_one_line(capsys, tmp_path, argv, message):
    argv = [str(write_profile(tmp_path, "qos")) if a == "QOSLESS" else a for a in argv]
    code, out, err = main(capsys, launch, *argv, "--results-dir", tmp_path, "--dry-run")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    for module in ("repro.launch", "repro.status"):
        result = subprocess.run([sys.executable, "-m", module, "table3", "--results-dir", str(tmp_path)],
                                check=False, capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: unknown target 'table3'") and result.stderr.count("\n") == 1


def test_smoke_matrix_end_to_end_then_nothing_to_do(capsys, tmp_path, data_root, monkeypatch):
    """Table 1 and Table 2 (Fashion-MNIST cells) through the local executor, two runs at once, from a code
    snapshot; a second launch finds everything done and submits nothing."""
    code, out, _ = main(capsys, launch, "all", *smoke(tmp_path, data_root, "--runs-per-gpu", 2, "--wait"))
    assert code == 0, out
    assert "finished: 8 cells x 1 seed = 8 runs: 8 done, 0 running, 0 queued, 0 failed, 0 unusable, 0 pending" in out
    matrix = configs(tmp_path, data_root, "all")
    for config in matrix:
        record = records.read_record(layout.record_path(config))
        assert record["status"] == "completed" and len(record["history"]) == config.epochs
        if shutil.which("rsync"):  # the run imported the snapshot, not the checkout
            assert "/code/repro" in layout.log_path(config).read_text().splitlines()[0]
    monkeypatch.setattr(launch, "submit", lambda *a, **k: pytest.fail("a finished target submitted runs"))
    code, out, _ = main(capsys, launch, "all", *smoke(tmp_path, data_root))
    assert code == 0 and "8 runs: 8 done" in out and "nothing to submit" in out
    code, out, _ = main(capsys, launch, "all", *smoke(tmp_path, data_root, "--force", "--dry-run"))
    assert "would submit 8 runs" in out and all(records.run_status(c) == "completed" for c in matrix)
    code, out, _ = main(capsys, status, "all", *selection(tmp_path, data_root))
    assert code == 0 and "table2/fashion_mnist/flexpool-reg-dropout" in out and "8 done, 0 running" in out
    # golden: the analysis turns exactly these records into the Fashion-MNIST row of both tables
    make_tables.main(["--runs", str(tmp_path / "results" / "runs"), "--profile", "smoke", "--format", "csv",
                      "--out", str(tmp_path / "tables")])
    for table in ("table1", "table2"):
        cells = pd.read_csv(tmp_path / "tables" / f"{table}.csv").set_index(["dataset", "column"])
        for config in matrix:
            if config.cell.startswith(table):
                cell = cells.loc[("fashion_mnist", config.cell.split("/")[-1])]
                accuracy = records.read_record(layout.record_path(config))["metrics"]["accuracy"]
                assert cell["n"] == 1 and cell["mean"] == pytest.approx(100 * accuracy, abs=1e-3)


def test_returns_at_once_the_local_job_goes_on_and_its_runs_are_not_submitted_twice(capsys, tmp_path, data_root):
    argv = [sys.executable, "-m", "repro.launch", "table1", *map(str, smoke(tmp_path, data_root)),
            "--columns", "avgpool", "flexpool", "--no-snapshot"]
    result = subprocess.run(argv, check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "it goes on after this command returns" in result.stdout
    assert "progress: python -m repro.status" in result.stdout
    planned = configs(tmp_path, data_root, columns=["avgpool", "flexpool"])
    assert {records.run_status(c) for c in planned} == {"missing"}  # it did not wait for the runs
    # One run at a time: the second waits in the job. Neither is pending, so a second launch submits nothing.
    code, out, _ = main(capsys, launch, "table1", *smoke(tmp_path, data_root, "--columns", "avgpool", "flexpool"))
    assert code == 0 and "nothing to submit" in out and " 0 pending" in out
    assert re.search(r"[12] queued", out), out
    for config in planned:
        wait_for(lambda c=config: records.run_status(c) == "completed", what="the records of the detached job")
    assert all(training_starts(c) == 1 for c in planned)


def test_a_run_whose_job_is_gone_is_pending_again(tmp_path, data_root, monkeypatch):
    fake_squeue(tmp_path, monkeypatch, "echo 4242_0")  # the controller answers: job 4294967_0 is gone
    (config,) = configs(tmp_path, data_root, columns=["avgpool"])
    path = layout.queue_path(config)
    path.parent.mkdir(parents=True)
    ended = subprocess.Popen(["true"])
    ended.wait()
    here = socket.gethostname()
    for marker, state in [(f"local {here} {os.getpid()}", "queued"), (f"local {here} {ended.pid}", "pending"),
                          (f"local elsewhere {os.getpid()}", "pending"),  # another machine's: not asked
                          ("slurm here 4294967_0", "pending"), ("cut off", "pending")]:
        path.write_text(marker + "\n")
        assert runs.states([config])[0] == {config: state}, marker


def test_debug_executor_runs_the_job_in_this_process(capsys, tmp_path, data_root):
    code, out, _ = main(capsys, launch, "table2", *selection(tmp_path, data_root, "--columns", "flexpool"),
                        "--executor", "debug", "--wait")
    assert code == 0 and "finished: 1 cell x 1 seed = 1 run: 1 done" in out


def test_local_jobs_get_the_gpus_this_shell_may_use(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert executors.local_gpus() == {"gpus_per_node": 2, "visible_gpus": (2, 3)}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert executors.local_gpus() == {"gpus_per_node": 0, "visible_gpus": ()}


def test_diverging_runs_are_reported_with_cell_seed_and_log_and_not_trained_again(capsys, tmp_path, data_root):
    diverging = tmp_path / "diverging.yaml"
    diverging.write_text("lr: 1.0e+30\n")  # the loss goes non-finite inside the jobs
    select = ("--columns", "avgpool", "--seeds", 2, "--params", diverging)
    code, out, _ = main(capsys, launch, "table1", *smoke(tmp_path, data_root, *select, "--wait", "--no-snapshot"))
    (first, second) = configs(tmp_path, data_root, columns=["avgpool"], seeds=2, lr=1.0e30)
    assert code == 1
    for config in (first, second):
        line = rf"DIVERGED table1/fashion_mnist/avgpool seed {config.seed}: training loss nan in epoch \d \(log: "
        assert re.search(line + re.escape(f"{layout.log_path(config)})"), out)
        assert re.search(r"diverged: training loss nan in epoch \d", layout.log_path(config).read_text())
    code, out, _ = main(capsys, status, "table1", *selection(tmp_path, data_root, *select))
    assert "2 runs: 2 done, 0 running, 0 queued, 0 failed, 0 unusable, 0 pending" in out
    assert out.count("DIVERGED ") == 2
    code, out, _ = main(capsys, launch, "table1", *smoke(tmp_path, data_root, *select))
    assert "nothing to submit" in out  # it would diverge again: a result, not a fault to retry


def test_failed_runs_are_reported_and_run_again_only_when_asked(capsys, tmp_path, data_root, monkeypatch):
    select = ("--columns", "avgpool", "--seeds", 2)
    monkeypatch.setattr(train, "train_epoch", lambda *args: 1 / 0)  # a bug in the training code
    for config in configs(tmp_path, data_root, columns=["avgpool"], seeds=2):
        with pytest.raises(ZeroDivisionError):
            train.run(config)
    code, out, _ = main(capsys, status, "table1", *selection(tmp_path, data_root, *select))
    assert code == 0 and "2 runs: 0 done, 0 running, 0 queued, 2 failed, 0 unusable, 0 pending" in out
    assert "FAILED table1/fashion_mnist/avgpool seed 1: ZeroDivisionError: division by zero (log: " in out
    _, out, _ = main(capsys, launch, "table1", *smoke(tmp_path, data_root, *select))
    assert "nothing to submit" in out  # a failed run has a record: only --retry-failed or --force run it again
    _, out, _ = main(capsys, launch, "table1", "--retry-failed", "--dry-run", *smoke(tmp_path, data_root, *select))
    assert "would submit 2 runs" in out


def test_killed_run_resumes_to_the_record_of_an_unbroken_one(capsys, tmp_path, data_root):
    params = tmp_path / "long.yaml"
    params.write_text("epochs: 20\n")
    argv = smoke(tmp_path, data_root, "--columns", "avgpool", "--params", params, "--no-snapshot")
    assert main(capsys, launch, "table1", *argv)[0] == 0
    (config,) = configs(tmp_path, data_root, columns=["avgpool"], epochs=20)
    wait_for(lambda: layout.checkpoint_path(config).exists(), what="the first checkpoint")
    pid = runs.lock_holder(config)
    os.kill(pid, signal.SIGKILL)  # the run's own process, mid-training
    wait_for(lambda: runs.lock_holder(config) is None, what="the killed run to let go of its lock")
    wait_for(lambda: "ended without a record: crashed (killed by SIGKILL)" in layout.log_path(config).read_text(),
             timeout=60, what="the job to say in the run's own log how the run ended")
    assert records.run_status(config) == "missing"
    # queued while its job still ends; pending, so a launch trains it again, once that job has ended
    wait_for(lambda: runs.states([config])[0] == {config: "pending"}, timeout=60, what="the job to end")

    code, out, _ = main(capsys, launch, "table1", *argv, "--wait")
    assert code == 0 and "submitting 1 run" in out
    assert "resuming run" in layout.log_path(config).read_text()
    resumed = records.read_record(layout.record_path(config))

    unbroken = config.replace(results_dir=str(tmp_path / "unbroken"))
    expected = train.run(unbroken)
    assert resumed["status"] == "completed" and len(resumed["history"]) == 20
    assert resumed["metrics"] == expected["metrics"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in expected["history"]]


def test_two_launches_at_once_train_each_run_once(tmp_path, data_root):
    argv = [sys.executable, "-m", "repro.launch", "table1", *map(str, smoke(tmp_path, data_root)),
            "--columns", "avgpool", "flexpool", "--runs-per-gpu", 2, "--wait", "--no-snapshot"]
    argv = [str(a) for a in argv]
    both = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in both]
    for p, output in zip(both, outputs):
        assert p.returncode == 0, output
    for config in configs(tmp_path, data_root, columns=["avgpool", "flexpool"]):
        assert records.read_record(layout.record_path(config))["status"] == "completed"
        assert training_starts(config) == 1


def test_missing_data_fails_before_anything_is_submitted(capsys, tmp_path):
    code, _, err = main(capsys, launch, "table1", "--datasets", "cifar100", "--profile", "smoke",
                          "--data-root", tmp_path / "nodata", "--results-dir", tmp_path / "results",
                          "--executor", "local")
    assert code == 2 and err.startswith("error: cifar100: no usable data under") and err.count("\n") == 1
    assert "--download" in err and not (tmp_path / "results" / "slurm-logs").exists()
