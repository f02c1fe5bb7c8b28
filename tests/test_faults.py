"""Faults as real use meets them: numbers in input files, SIGTERM, records that cannot count, full and read-only
disks, and smaller holes. CPU; the disk tests mount a tmpfs or a read-only bind mount, so they need root."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest

from analysis import collect
from repro import experiments, launch, records, status, sweep, train
from repro.config import ConfigError, RunConfig
from tests.test_launch import configs, main, selection, smoke, training_starts, wait_for

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--epochs", "1", "--train-subset", "128", "--test-subset", "64",
        "--batch-size", "64"]


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")  # subprocesses and jobs inherit it


@pytest.fixture
def sigterm_guard():
    """Tests that send this process SIGTERM: should train.run not take it, the test fails instead of pytest ending."""
    def not_taken(signum, frame):
        raise AssertionError("SIGTERM reached the test: train.run did not handle it")

    previous = signal.signal(signal.SIGTERM, not_taken)
    yield
    signal.signal(signal.SIGTERM, previous)


def shell(*argv, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, check=False)


def one_line_error(err: str, *words: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


# ---- 1. numbers in --params, study files and cluster profiles -------------------------------------------------

@pytest.mark.parametrize("name,text", [
    ("best.json", '{"study": "x", "params": {"reg": 1e-05, "dropout": 2e-1, "label_smoothing": 1e-1}}'),
    ("tuned.yaml", "reg: 1e-5\ndropout: 2e-1\nlabel_smoothing: 1E-1\n"),  # YAML 1.1 reads all three as strings
])
def test_params_numbers_are_numbers(capsys, tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    params = experiments.load_params(path)
    assert params == {"reg": 1e-5, "dropout": 0.2, "label_smoothing": 0.1}
    assert all(type(v) is float for v in params.values())
    code, out, _ = main(capsys, launch, "table1", "--params", path, "--results-dir", tmp_path, "--dry-run",
                        "--datasets", "fashion_mnist")
    assert code == 0 and "would submit 4 runs" in out
    (config,) = configs(tmp_path, tmp_path, columns=["flexpool-reg-dropout"], **params)
    assert (config.reg, config.dropout, config.label_smoothing) == (1e-5, 0.2, 0.1)


def test_quoted_numbers_stay_strings(tmp_path):
    path = tmp_path / "quoted.yaml"
    path.write_text("a: '1e-4'\nb: 1e-4\nc: 1.0e9\nd: 12\n")
    assert records.load_file(path, "test file") == {"a": "1e-4", "b": 1e-4, "c": 1e9, "d": 12}


@pytest.mark.parametrize("name,text,message", [
    ("p.json", '{"epochs": 2.5}', "epochs must be an integer, got 2.5"),
    ("p.yaml", "lr: abc\n", "lr must be a number, got 'abc'"),
    ("p.json", '{"sac": "yes"}', "sac must be true or false, got 'yes'"),
    ("p.yaml", "sac_weights: [0.5, 0.5]\n", "sac_weights must be a list of 3 numbers"),
    ("p.json", '{"reg": 1e-4,}', "is not valid JSON"),
    ("p.json", '{"label_smoothing": "0.1"}', "label_smoothing must be a number, got '0.1'"),  # every run failed
])
def test_params_values_are_checked_against_their_fields(capsys, tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    code, out, err = main(capsys, launch, "table1", "--params", path, "--results-dir", tmp_path, "--dry-run")
    assert code == 2 and out == ""
    one_line_error(err, message)


def test_study_and_cluster_profile_read_numbers_alike(tmp_path):
    study = tmp_path / "tiny.yaml"
    study.write_text("trials: 2\nfixed: {dataset: synthetic, epochs: 1, val_fraction: 2e-1}\n"
                     "space:\n  reg: {low: 1e-5, high: 1e-2, log: true}\n")
    loaded = sweep.load_study(str(study))
    assert loaded.fixed["val_fraction"] == 0.2 and loaded.space["reg"] == {"low": 1e-5, "high": 1e-2, "log": True}
    study.write_text(study.read_text().replace("epochs: 1", "epochs: 2.5"))
    with pytest.raises(ConfigError, match="epochs must be an integer, got 2.5"):
        sweep.load_study(str(study))
    profile = tmp_path / "cluster.yaml"
    profile.write_text((ROOT / "slurm" / "example.yaml").read_text().replace("mem_gb: 32", "mem_gb: 1e2"))
    assert launch.load_cluster(str(profile))["mem_gb"] == 100.0


# ---- 2. SIGTERM to a run inside a job: a stop, not a finished task --------------------------------------------

def test_sigterm_to_a_run_stops_its_task_unfinished_and_a_relaunch_resumes(capsys, tmp_path, data_root):
    (config,) = configs(tmp_path, data_root, columns=["avgpool"], epochs=5)
    folder = tmp_path / "results" / "slurm-logs" / "job"
    (job,) = launch.submit([config], "local", None, 1, folder, "sigterm", snapshot=False)
    wait_for(lambda: records.checkpoint_path(config).exists(), what="the first checkpoint")
    os.kill(status.lock_holder(config), signal.SIGTERM)  # as scancel or SLURM's requeue would
    assert launch.follow([job], [config]) == {config: "pending"}
    assert not job.paths.result_pickle.exists()  # submitit would count a task with a result as finished
    assert "RunPack: runs stopped by SIGTERM" in job.stdout()
    log = status.run_log_path(config).read_text()
    assert "stopped: SIGTERM" in log and "run process ended without a record: stopped" in log
    lines = launch.problems([job], {config: "pending"})
    assert lines[0].startswith("NOT FINISHED table1/fashion_mnist/avgpool seed 0: pending")
    assert lines[1] == f"JOB {job.job_id} ended without a result (log: {job.paths.stderr})"

    code, out, _ = main(capsys, launch, "table1", *smoke(tmp_path, data_root, "--columns", "avgpool", "--params",
                                                         write(tmp_path / "p.yaml", "epochs: 5\n"), "--wait",
                                                         "--no-snapshot"))
    assert code == 0 and "1 done" in out
    assert "resuming run" in status.run_log_path(config).read_text()
    record = records.read_record(records.record_path(config))
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3, 4, 5]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- 4. a record that cannot count: one verdict for status, launch and the analysis ----------------------------

def test_completed_record_without_accuracy_is_unusable_and_a_launch_completes_it(capsys, tmp_path, data_root):
    argv = smoke(tmp_path, data_root, "--columns", "avgpool", "--no-snapshot")
    assert main(capsys, launch, "table1", *argv, "--wait")[0] == 0
    (config,) = configs(tmp_path, data_root, columns=["avgpool"])
    path = records.record_path(config)
    record = records.read_record(path)
    records.write_record({**record, "metrics": {**record["metrics"], "accuracy": None}}, path)

    code, out, _ = main(capsys, status, "table1", *selection(tmp_path, data_root, "--columns", "avgpool"))
    assert "1 run: 0 done, 0 running, 0 queued, 0 failed, 1 unusable, 0 pending" in out
    assert "UNUSABLE table1/fashion_mnist/avgpool seed 0: partial record: metrics.accuracy is None" in out
    runs, skipped = collect.load_runs(tmp_path / "results" / "runs")
    assert runs.empty and "partial record" in skipped[0]["reason"]
    code, out, _ = main(capsys, launch, "table1", *argv, "--wait")
    assert code == 0 and "submitting 1 run" in out and "1 done" in out
    assert records.read_record(path)["metrics"]["accuracy"] == record["metrics"]["accuracy"]
    assert training_starts(config) == 1  # completed from its checkpoint, not trained again

    path.write_text('{"schema": 1, "status": "compl')  # cut off
    assert status.run_state(config) == "unusable"
    code, out, _ = main(capsys, launch, "table1", *argv, "--dry-run")
    assert "1 unusable" in out and "would submit 1 run" in out


# ---- 5. full and read-only disks, one line each -----------------------------------------------------------------

@contextlib.contextmanager
def mounted(target: Path, *steps: list[str]):
    """Mount with `steps` (mount commands, target last), unmount afterwards; skip where that is not allowed."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs or a read-only folder needs root")
    done = 0
    try:
        for step in steps:
            result = subprocess.run([*step, str(target)], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                pytest.skip(f"cannot mount here: {result.stderr.strip()}")
            done += 1
        yield target
    finally:
        if done:
            subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB file system: room for locks and records, not for a checkpoint (ResNet20 + momentum: ~2 MB)."""
    with mounted(tmp_path / "small", ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs"]) as path:
        yield path


@pytest.fixture
def read_only(tmp_path):
    (tmp_path / "source").mkdir()
    with mounted(tmp_path / "ro", ["mount", "--bind", str(tmp_path / "source")],
                 ["mount", "-o", "remount,bind,ro"]) as path:
        yield path


def fill(disk: Path) -> None:
    with contextlib.suppress(OSError), open(disk / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def leftovers(results: Path) -> list[Path]:
    return [p for p in results.rglob("*") if p.name.endswith(".tmp")]


def test_full_disk_fails_a_run_in_one_line_naming_enospc(small_disk):
    results = small_disk / "results"
    done = shell("repro.train", *TINY, "--results-dir", results)
    assert done.returncode == 1
    assert not list(results.rglob("*.pt")) and not leftovers(results)  # no checkpoint, not even half of one
    (record,) = (results / "runs").rglob("*.json")
    one_line_error(done.stderr, "No space left on device (ENOSPC)", str(results / "checkpoints"))
    error = records.read_record(record)["error"]
    assert error.startswith("WriteError: cannot write") and "No space left on device (ENOSPC)" in error


@pytest.mark.parametrize("module", ["train", "launch", "sweep"])
def test_read_only_results_fail_in_one_line(capsys, read_only, data_root, module):
    results = read_only / "results"
    argv = {"train": [*TINY, "--results-dir", results],
            "launch": ["table1", *smoke(read_only, data_root, "--columns", "avgpool")],
            "sweep": ["smoke", "--executor", "local", "--results-dir", results]}[module]
    code, _, err = main(capsys, {"train": train, "launch": launch, "sweep": sweep}[module], *argv)
    assert code == 1
    one_line_error(err, "Read-only file system (EROFS)", str(read_only))


@pytest.mark.parametrize("module,argv", [
    ("launch", ["table1", "--columns", "avgpool"]),
    ("launch", ["table1", "--columns", "avgpool", "--no-snapshot"]),
    ("sweep", ["smoke", "--executor", "local"]),
])
def test_full_disk_fails_a_submission_in_one_line(capsys, small_disk, data_root, module, argv):
    fill(small_disk)
    if module == "launch":
        argv = [*argv, *smoke(small_disk, data_root)]
    code, _, err = main(capsys, {"launch": launch, "sweep": sweep}[module], *argv,
                        *(["--results-dir", small_disk / "results"] if module == "sweep" else []))
    assert code == 1
    one_line_error(err, str(small_disk / "results"))
    assert "No space left on device" in err or "disk is full" in err, err


# ---- 6. smaller holes -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["--train-subset", "-5"], "train_subset must be 0 (all) or a number of images, got -5"),
    (["--sac", "--sac-weights", "-1", "0", "2"], "sac_weights must be non-negative"),
    (["--cell", "table1/synthetic/avgpool", "--pool", "flex", "--sac"],
     "cell table1/synthetic/avgpool does not match the run: SAC on (the cell's: off), pool flex (the cell's: avg)"),
    (["--cell", "table2/x/maxpool"], "is not a table cell"),
])
def test_cli_refuses_runs_it_used_to_train(capsys, tmp_path, argv, message):
    assert train.main([*TINY, *argv, "--results-dir", str(tmp_path)]) == 2
    one_line_error(capsys.readouterr().err, message)
    assert not (tmp_path / "runs").exists()


def test_failed_download_is_named_as_such(tmp_path):
    closed = "http://127.0.0.1:9"  # a proxy nobody listens on: every download is refused at once
    root = tmp_path / "nodata"
    done = shell("repro.train", "--dataset", "fashion_mnist", "--download", "--data-root", root,
                 "--results-dir", root / "results", env={k: closed for k in ("http_proxy", "https_proxy",
                                                                          "HTTP_PROXY", "HTTPS_PROXY")})
    assert done.returncode == 2
    one_line_error(done.stderr, f"fashion_mnist: the download into {root / 'FashionMNIST/raw'} failed",
                   "Connection refused", "check the network")
    assert "corrupt" not in done.stderr


def test_sweep_checks_the_cluster_profile_before_creating_the_study(capsys, tmp_path):
    code, _, err = main(capsys, sweep, "smoke", "--executor", "slurm", "--cluster", "nowhere",
                        "--results-dir", tmp_path)
    assert code == 2
    one_line_error(err, "nowhere.yaml does not exist")
    assert not (tmp_path / "sweeps").exists()


def test_summary_of_a_relaunch_with_uneven_seeds(tmp_path):
    runs = experiments.plan("table1", 3, ["fashion_mnist"], results_dir=str(tmp_path))
    states = {c: "pending" for c in runs[2:]}  # 4 cells x 3 seeds, two runs of the first cell done
    assert status.summary(states) == "10 runs in 4 cells, seeds 0-2: 0 done, 0 running, 0 queued, 0 failed, 0 unusable, " \
                                     "10 pending"
    assert status.summary({c: "done" for c in runs}).startswith("4 cells x 3 seeds = 12 runs: 12 done")


def test_sweep_progress_lines_count_up():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="count", direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    lines = [sweep.progress(study, trial, 4) for trial in study.trials]
    assert [re.search(r"\((\d)/4\)$", line).group(1) for line in lines] == ["1", "2", "3"]


def test_wall_time_counts_every_attempt(tmp_path, monkeypatch, sigterm_guard):
    config = RunConfig(dataset="synthetic", epochs=2, train_subset=128, test_subset=64, batch_size=64,
                       wandb="disabled", results_dir=str(tmp_path))
    slow = train.load_data

    def slow_load(*args):
        time.sleep(1.5)  # the first attempt spends a while before its first epoch
        return slow(*args)

    def sigterm_after_first_epoch(entry):
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled by train.run

    monkeypatch.setattr(train, "load_data", slow_load)
    with pytest.raises(train.Stopped):
        train.run(config, on_epoch=sigterm_after_first_epoch)
    monkeypatch.setattr(train, "load_data", slow)
    start = time.time()
    record = train.run(config)
    second = time.time() - start
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert record["timing"]["wall_s"] > second + 1.0  # the first attempt's time counts too
    assert record["timing"]["wall_s"] == pytest.approx(record["history"][-1]["wall_s"], abs=1.0)


def test_adhoc_record_names_the_data_folder_it_used(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLEXPOOL_DATA", str(tmp_path / "data"))
    assert train.main([*TINY, "--results-dir", str(tmp_path)]) == 0
    (path,) = (tmp_path / "runs").rglob("*.json")
    assert json.loads(path.read_text())["config"]["data_root"] == str((tmp_path / "data").resolve())


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_sigterm_to_a_sweep_worker_queues_its_trial_again(tmp_path, sigterm_guard):
    from tests.test_sweep import in_process

    study, runtime, optuna_study = in_process(tmp_path, str(tmp_path / "journal.log"), heartbeat=60)
    study = dataclasses.replace(study, fixed={**study.fixed, "epochs": 20})

    returned = threading.Event()

    def sigterm_after_the_first_checkpoint():
        wait_for(lambda: returned.is_set() or any((tmp_path / "results").rglob("*.pt")), what="a checkpoint")
        if not returned.is_set():
            os.kill(os.getpid(), signal.SIGTERM)  # what SLURM sends every process of a requeued job

    threading.Thread(target=sigterm_after_the_first_checkpoint, daemon=True).start()
    with pytest.raises(SystemExit) as stopped:
        try:
            sweep.Worker()(study, runtime)
        finally:
            returned.set()
    assert stopped.value.code == launch.RUN_STOPPED
    stopped_trial, queued = optuna_study.trials
    assert stopped_trial.state == optuna.trial.TrialState.FAIL and queued.state == optuna.trial.TrialState.WAITING
    assert queued.params == stopped_trial.params
