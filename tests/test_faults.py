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
from repro import executors, experiments, launch, layout, records, runs, status, studies, sweep, train
from repro.config import ConfigError, RunConfig
from tests.helpers import (
    ROOT,
    TINY_LR,
    configs,
    fake_squeue,
    in_process,
    main,
    selection,
    smoke,
    training_starts,
    wait_for,
    write_run,
)

TINY = ["--dataset", "synthetic", "--epochs", "1", "--train-subset", "128", "--test-subset", "64",
        "--batch-size", "64", "--lr", str(TINY_LR)]


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
    ("p.json", '{"augment": "yes"}', "augment must be true or false, got 'yes'"),
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
    loaded = studies.load_study(str(study))
    assert loaded.fixed["val_fraction"] == 0.2 and loaded.space["reg"] == {"low": 1e-5, "high": 1e-2, "log": True}
    study.write_text(study.read_text().replace("epochs: 1", "epochs: 2.5"))
    with pytest.raises(ConfigError, match="epochs must be an integer, got 2.5"):
        studies.load_study(str(study))
    profile = tmp_path / "cluster.yaml"
    profile.write_text((ROOT / "slurm" / "example.yaml").read_text().replace("mem_gb: 32", "mem_gb: 1e2"))
    assert executors.load_cluster(str(profile))["mem_gb"] == 100.0


# ---- 2. SIGTERM to a run inside a job: a stop, not a finished task --------------------------------------------

def test_sigterm_to_a_run_stops_its_task_unfinished_and_a_relaunch_resumes(capsys, tmp_path, data_root):
    # epochs of a few milliseconds: enough of them that the signal comes before the last, however the two
    # processes are scheduled
    (config,) = configs(tmp_path, data_root, columns=["avgpool"], epochs=20)
    folder = tmp_path / "results" / "slurm-logs" / "job"
    (job,) = launch.submit([config], "local", None, 1, folder, "sigterm", snapshot=False)
    wait_for(lambda: layout.checkpoint_path(config).exists(), what="the first checkpoint")
    os.kill(runs.lock_holder(config), signal.SIGTERM)  # as scancel or SLURM's requeue would
    assert launch.follow([job], [config])[0] == {config: "pending"}
    assert not job.paths.result_pickle.exists()  # submitit would count a task with a result as finished
    assert "RunPack: runs stopped by SIGTERM" in job.stdout()
    log = layout.log_path(config).read_text()
    assert "stopped: SIGTERM" in log and "run process ended without a record: stopped" in log
    # status reads the epoch the checkpoint holds from the log, torch-free: the two agree
    held = len(records.load_checkpoint(layout.checkpoint_path(config))["history"])
    assert status.epochs_trained(config) == held >= 1
    lines = launch.problems([job], {config: "pending"})
    assert lines[0].startswith("NOT FINISHED table1/fashion_mnist/avgpool seed 0: pending")
    assert lines[1] == f"JOB {job.job_id} ended without a result (log: {job.paths.stderr})"

    code, out, _ = main(capsys, launch, "table1", *smoke(tmp_path, data_root, "--columns", "avgpool", "--params",
                                                         write(tmp_path / "p.yaml", "epochs: 20\n"), "--wait",
                                                         "--no-snapshot"))
    assert code == 0 and "1 done" in out
    assert "resuming run" in layout.log_path(config).read_text()
    record = records.read_record(layout.record_path(config))
    assert [h["epoch"] for h in record["history"]] == list(range(1, 21))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- 3. checkpoints outside the results folder (scratch space) ------------------------------------------------

def stop_after(epochs: int):
    """An on_epoch that sends this process SIGTERM after that many epochs: train.run stops as SLURM makes it."""
    def on_epoch(entry):
        if entry["epoch"] == epochs:
            os.kill(os.getpid(), signal.SIGTERM)
    return on_epoch


def test_a_run_stopped_by_sigterm_resumes_from_a_checkpoint_outside_the_results_folder(
        capsys, tmp_path, data_root, monkeypatch, sigterm_guard):
    monkeypatch.setenv("FLEXPOOL_CHECKPOINTS", str(tmp_path / "scratch"))
    (config,) = configs(tmp_path, data_root, columns=["avgpool"], epochs=4)
    with pytest.raises(records.Stopped):
        train.run(config, on_epoch=stop_after(2))
    assert layout.checkpoint_path(config) == tmp_path / "scratch" / f"{config.run_id}.pt"
    assert layout.checkpoint_path(config).exists() and not (tmp_path / "results" / "checkpoints").exists()

    code, out, _ = main(capsys, status, "table1", *selection(tmp_path, data_root, "--columns", "avgpool",
                                                               "--params", write(tmp_path / "p.yaml", "epochs: 4\n")))
    assert code == 0 and "1 pending" in out
    assert f"checkpoint of table1/fashion_mnist/avgpool seed 0 (pending): {layout.checkpoint_path(config)}" in out

    record = train.run(config)
    assert f"resuming run {config.run_id} after epoch 2 from {tmp_path / 'scratch'}" in capsys.readouterr().out
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3, 4]


def test_two_checkpoint_folders_never_mix_one_runs_state(capsys, tmp_path, data_root, sigterm_guard):
    (config,) = configs(tmp_path, data_root, columns=["avgpool"], epochs=4)
    in_a, in_b = (config.replace(checkpoint_dir=str(tmp_path / name)) for name in ("a", "b"))
    assert in_a.run_id == in_b.run_id == config.run_id  # where it checkpoints is not what it computes
    with pytest.raises(records.Stopped):
        train.run(in_a, on_epoch=stop_after(2))
    saved_in_a = layout.checkpoint_path(in_a).read_bytes()
    capsys.readouterr()
    with pytest.raises(records.Stopped):
        train.run(in_b, on_epoch=stop_after(1))
    assert "resuming" not in capsys.readouterr().out  # b starts afresh: it never reads a's checkpoint
    assert len(records.load_checkpoint(layout.checkpoint_path(in_b))["history"]) == 1
    assert layout.checkpoint_path(in_a).read_bytes() == saved_in_a  # nor writes it
    record = train.run(in_a)
    assert f"after epoch 2 from {layout.checkpoint_path(in_a)}" in capsys.readouterr().out
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3, 4]


@pytest.mark.parametrize("flag,env", [(True, False), (False, True)])
def test_launch_carries_the_checkpoint_folder_into_its_jobs_absolute(tmp_path, data_root, monkeypatch, flag, env):
    """A job runs from a code snapshot, maybe on another node with another environment: the folder travels in
    each run's config, absolute, whether it came from --checkpoint-dir or from $FLEXPOOL_CHECKPOINTS."""
    monkeypatch.chdir(tmp_path)
    if env:
        monkeypatch.setenv("FLEXPOOL_CHECKPOINTS", "scratch")
    args = status.parser().parse_args(["table1", *map(str, selection(tmp_path, data_root)),
                                       *(["--checkpoint-dir", "scratch"] if flag else [])])
    planned = runs.plan_from_args(args)
    monkeypatch.delenv("FLEXPOOL_CHECKPOINTS", raising=False)  # as on a node without it
    assert {c.checkpoint_dir for c in planned} == {str(tmp_path / "scratch")}
    assert {layout.checkpoint_path(c).parent for c in planned} == {tmp_path / "scratch"}
    assert [c.run_id for c in planned] == [c.run_id for c in configs(tmp_path, data_root)]


# ---- 4. a record that cannot count: one verdict for status, launch and the analysis ----------------------------

def test_completed_record_without_accuracy_is_unusable_and_a_launch_completes_it(capsys, tmp_path, data_root):
    argv = smoke(tmp_path, data_root, "--columns", "avgpool", "--no-snapshot")
    assert main(capsys, launch, "table1", *argv, "--wait")[0] == 0
    (config,) = configs(tmp_path, data_root, columns=["avgpool"])
    path = layout.record_path(config)
    record = records.read_record(path)
    records.write_record({**record, "metrics": {**record["metrics"], "accuracy": None}}, path)

    code, out, _ = main(capsys, status, "table1", *selection(tmp_path, data_root, "--columns", "avgpool"))
    assert "1 run: 0 done, 0 running, 0 queued, 0 failed, 1 unusable, 0 pending" in out
    assert "UNUSABLE table1/fashion_mnist/avgpool seed 0: partial record: metrics.accuracy is None" in out
    rows, skipped = collect.load_runs(tmp_path / "results" / "runs")
    assert rows.empty and "partial record" in skipped[0]["reason"]
    code, out, _ = main(capsys, launch, "table1", *argv, "--wait")
    assert code == 0 and "submitting 1 run" in out and "1 done" in out
    assert records.read_record(path)["metrics"]["accuracy"] == record["metrics"]["accuracy"]
    assert training_starts(config) == 1  # completed from its checkpoint, not trained again

    path.write_text('{"schema": 1, "status": "compl')  # cut off
    assert runs.state(config) == "unusable"
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


def test_full_disk_stops_a_run_in_one_line_naming_enospc_and_records_nothing(small_disk):
    """The disk's fault, not the run's: no failed record, which a relaunch would skip; running it again resumes."""
    results = small_disk / "results"
    done = shell("repro.train", *TINY, "--results-dir", results)
    assert done.returncode == 1
    assert not list(results.rglob("*.pt")) and not leftovers(results)  # no checkpoint, not even half of one
    assert not list((results / "runs").rglob("*.json"))
    one_line_error(done.stderr, "No space left on device (ENOSPC)", str(results / "checkpoints"))


@pytest.mark.parametrize("module", ["train", "launch", "sweep"])
def test_read_only_results_fail_in_one_line(capsys, read_only, data_root, module):
    results = read_only / "results"
    argv = {"train": [*TINY, "--results-dir", results],
            "launch": ["table1", *smoke(read_only, data_root, "--columns", "avgpool")],
            "sweep": ["smoke", "--executor", "local", "--results-dir", results]}[module]
    code, _, err = main(capsys, {"train": train, "launch": launch, "sweep": sweep}[module], *argv)
    assert code == 1
    one_line_error(err, "Read-only file system (EROFS)", str(read_only))


@pytest.mark.parametrize("command", ["make_tables", "make_figures", "make_report"])
def test_analysis_into_a_read_only_folder_fails_in_one_line(read_only, command):
    runs = read_only.parent / "records"
    write_run(runs, "table1", "cifar10", "avgpool", 0, 0.9)
    done = shell(f"analysis.{command}", "--runs", runs / "runs", "--out", read_only / "out")
    assert done.returncode == 1
    one_line_error(done.stderr.splitlines()[-1] + "\n", "Read-only file system (EROFS)", str(read_only / "out"))
    assert "Traceback" not in done.stderr


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


def test_full_disk_during_the_code_snapshot_names_enospc(capsys, small_disk, data_root):
    """The snapshot (the checkout, megabytes) fills the disk part way; git or rsync deletes its partial file as it
    fails, so the disk has room again when the error is read: the cause is in their words, not the disk's state."""
    if not executors.submitit.helpers.RsyncSnapshot.available():
        pytest.skip("no rsync: no code snapshot")
    code, _, err = main(capsys, launch, "table1", *smoke(small_disk, data_root, "--columns", "avgpool"))
    assert code == 1
    one_line_error(err, f"cannot write {small_disk / 'results'}", "/code: No space left on device (ENOSPC)")


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


@pytest.mark.parametrize("cell", ["../../escaped", "sweep/../../../escaped", "ABSOLUTE/escaped", "adhoc//x"])
def test_a_cell_never_leaves_the_results_folder(capsys, tmp_path, cell):
    cell = cell.replace("ABSOLUTE", str(tmp_path))
    assert train.main([*TINY, "--cell", cell, "--results-dir", str(tmp_path / "results")]) == 2
    one_line_error(capsys.readouterr().err, f"cell {cell!r} must be a folder below the results folder")
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.log"))


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
    planned = experiments.plan("table1", 3, ["fashion_mnist"], results_dir=str(tmp_path))
    states = {c: "pending" for c in planned[2:]}  # 4 cells x 3 seeds, two runs of the first cell done
    assert runs.summary(states) == "10 runs in 4 cells, seeds 0-2: 0 done, 0 running, 0 queued, 0 failed, " \
                                   "0 unusable, 10 pending"
    assert runs.summary({c: "done" for c in planned}).startswith("4 cells x 3 seeds = 12 runs: 12 done")
    assert runs.summary(states, "why") == runs.summary(states) + "; why" == \
        f"10 runs in 4 cells, seeds 0-2: {runs.counts(states, 'why')}"


def test_sweep_progress_lines_count_up():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="count", direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    lines = [sweep.progress(study, trial, 4) for trial in study.trials]
    assert [re.search(r"\((\d)/4\)$", line).group(1) for line in lines] == ["1", "2", "3"]


def test_wall_time_counts_every_attempt(tmp_path, monkeypatch, sigterm_guard):
    config = RunConfig(dataset="synthetic", epochs=2, train_subset=128, test_subset=64, batch_size=64,
                       wandb="disabled", results_dir=str(tmp_path))
    slow, now, hour = train.load_data, time.time, 3600.0
    clock = {"ahead": 0.0}

    def slow_load(*args):
        # The first attempt spends an hour before its first epoch: on a clock moved on, not in a sleep, so how
        # busy the machine is cannot blur it.
        clock["ahead"] = hour
        return slow(*args)

    def sigterm_after_first_epoch(entry):
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled by train.run

    monkeypatch.setattr(time, "time", lambda: now() + clock["ahead"])
    monkeypatch.setattr(train, "load_data", slow_load)
    with pytest.raises(records.Stopped):
        train.run(config, on_epoch=sigterm_after_first_epoch)
    monkeypatch.setattr(train, "load_data", slow)
    start = time.time()
    record = train.run(config)
    second = time.time() - start
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert record["history"][0]["wall_s"] > hour  # the first attempt's time
    assert record["history"][-1]["wall_s"] <= record["timing"]["wall_s"] <= record["history"][0]["wall_s"] + second


def test_adhoc_record_names_the_data_folder_it_used(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLEXPOOL_DATA", str(tmp_path / "data"))
    assert train.main([*TINY, "--results-dir", str(tmp_path)]) == 0
    (path,) = (tmp_path / "runs").rglob("*.json")
    assert json.loads(path.read_text())["config"]["data_root"] == str((tmp_path / "data").resolve())


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_sigterm_to_a_sweep_worker_queues_its_trial_again(tmp_path, sigterm_guard):
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
    assert stopped.value.code == records.STOPPED_EXIT
    stopped_trial, queued = optuna_study.trials
    assert stopped_trial.state == optuna.trial.TrialState.FAIL and queued.state == optuna.trial.TrialState.WAITING
    assert queued.params == stopped_trial.params


# ---- 7. the accidents of a long campaign: Ctrl-C, kill -9, full disk, dead controller, bad params --------------

def test_ctrl_c_stops_only_the_following_and_kill_of_the_printed_group_stops_the_job(tmp_path, data_root):
    """Ctrl-C signals the terminal's foreground process group: the launcher's, which the local job must not be in.
    The job id printed is the job's own process group: `kill -- -ID` stops its runs as scancel would, with their
    checkpoints and no W&B traceback in their logs."""
    def launched(epochs, *flags):
        argv = smoke(tmp_path, data_root, "--columns", "avgpool", "--params",
                     write(tmp_path / f"p{epochs}.yaml", f"epochs: {epochs}\n"), "--no-snapshot", *flags)
        return subprocess.Popen([sys.executable, "-m", "repro.launch", "table1", *map(str, argv)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)  # a terminal of its own: its foreground group

    following = launched(500, "--wait")  # far more epochs than the test lasts, however slow the machine
    (config,) = configs(tmp_path, data_root, columns=["avgpool"], epochs=500)
    wait_for(lambda: layout.checkpoint_path(config).exists(), what="the first checkpoint")
    os.killpg(following.pid, signal.SIGINT)  # Ctrl-C
    out, err = following.communicate(timeout=60)
    assert following.returncode == 130 and "Traceback" not in err, err
    assert err.count("\n") == 1 and "still running: python -m repro.status" in err, err
    assert runs.states([config])[0] == {config: "running"}, "Ctrl-C must not reach the job"

    group = int(re.search(r"stop it: kill -- -(\d+)", out).group(1))
    os.killpg(group, signal.SIGTERM)
    wait_for(lambda: runs.states([config])[0] == {config: "pending"}, timeout=60, what="the job to end")
    log = layout.log_path(config).read_text()
    assert "stopped: SIGTERM" in log and layout.checkpoint_path(config).exists()


def test_a_killed_run_is_pending_at_once_while_its_job_goes_on(tmp_path, data_root):
    first, second = configs(tmp_path, data_root, columns=["avgpool", "flexpool"], epochs=200)
    folder = tmp_path / "results" / "slurm-logs" / "job"
    (job,) = launch.submit([first, second], "local", None, 1, folder, "kill", snapshot=False)
    try:
        wait_for(lambda: layout.checkpoint_path(first).exists(), what="the first checkpoint")
        os.kill(runs.lock_holder(first), signal.SIGKILL)
        wait_for(lambda: runs.lock_holder(second) is not None, what="the job to go on with the next run")
        assert runs.states([first, second])[0] == {first: "pending", second: "running"}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(job.job_id), signal.SIGTERM)  # the job's own process group: all of it


def test_full_disk_leaves_the_runs_of_a_job_resumable(capsys, small_disk, data_root):
    argv = smoke(small_disk, data_root, "--columns", "avgpool", "flexpool", "--no-snapshot", "--wait")
    code, out, _ = main(capsys, launch, "table1", *argv)
    assert code == 1 and "FAILED" not in out
    planned = configs(small_disk, data_root, columns=["avgpool", "flexpool"])
    for config in planned:
        assert records.run_status(config) == "missing"
        assert re.search(rf"NOT FINISHED {config.cell} seed 0: pending: error: cannot write \S+: No space left "
                         r"on device \(ENOSPC\); nothing recorded, launching again resumes the run", out), out
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # the space is freed
    code, out, _ = main(capsys, launch, "table1", *argv)
    assert code == 0 and "submitting 2 runs" in out and "2 done" in out


def test_status_says_when_the_queue_cannot_be_read(capsys, tmp_path, data_root, monkeypatch):
    fake_squeue(tmp_path, monkeypatch, "echo 'slurm_load_jobs error: Unable to contact slurm controller "
                                       "(connect failure)' >&2; exit 1")
    first, _ = configs(tmp_path, data_root, columns=["avgpool", "flexpool"])
    layout.queue_path(first).parent.mkdir(parents=True)
    layout.queue_path(first).write_text("slurm somewhere 4242_0\n")
    code, out, _ = main(capsys, status, "table1", *selection(tmp_path, data_root, "--columns", "avgpool",
                                                             "flexpool"))
    assert code == 0 and "0 done, 0 running, 1 queued, 0 failed, 0 unusable, 1 pending" in out
    (line,) = [line for line in out.splitlines() if "squeue" in line]
    assert line.endswith("; SLURM's queue could not be read (squeue: slurm_load_jobs error: Unable to contact "
                         "slurm controller (connect failure)): 1 run submitted to SLURM counted as queued")


@pytest.mark.parametrize("text,message", [
    ("pool: flex\n", "pool says what a cell is"),
    ("sac: true\n", "sac says what a cell is"),
    ("dataset: cifar10\n", "dataset says what a cell is"),
    ("seed: 3\n", "seed says what a cell is"),
    ("cell: table1/cifar10/avgpool\n", "cell says where or how a run executes"),
    ("results_dir: /tmp\n", "results_dir says where or how a run executes"),
    ("data_root: /tmp\n", "data_root says where or how a run executes"),
])
def test_params_file_sets_only_what_tunes_a_cell(capsys, tmp_path, text, message):
    path = write(tmp_path / "p.yaml", text)
    for module in (launch, status):
        code, out, err = main(capsys, module, "table1", "--params", path, "--results-dir", tmp_path,
                              *(["--dry-run"] if module is launch else []))
        assert code == 2 and out == ""
        one_line_error(err, f"params file {path}: {message}")


def test_a_sweep_report_applies_only_to_the_recipe_it_was_tuned_under(capsys, tmp_path):
    path = write(tmp_path / "best.json", json.dumps({"study": "s", "recipe": "suite", "params": {"lr": 0.05}}))
    for module in (launch, status):
        code, out, err = main(capsys, module, "table1", "--params", path, "--results-dir", tmp_path, "--recipe",
                              "paper", *(["--dry-run"] if module is launch else []))
        assert code == 2 and out == ""
        one_line_error(err, f"params file {path} was tuned under recipe 'suite', not 'paper': launch with --recipe "
                            "suite, or tune the paper recipe's runs")
    code, _, _ = main(capsys, launch, "table1", "--params", path, "--results-dir", tmp_path, "--recipe", "suite",
                      "--dry-run")
    assert code == 0 and experiments.load_params(path, "suite") == {"lr": 0.05}


def test_plan_names_a_profile_changed_by_params_as_the_records_do(capsys, tmp_path):
    path = write(tmp_path / "p.yaml", "epochs: 20\nreg: 1e-4\n")
    code, out, _ = main(capsys, launch, "table1", "--params", path, "--results-dir", tmp_path, "--dry-run",
                        "--profile", "smoke")
    (config,) = configs(tmp_path, tmp_path, columns=["avgpool"], epochs=20)
    assert experiments.profile_of(config) == "custom"
    assert code == 0 and "plan: table1 (custom profile: smoke with epochs=20 from --params, paper recipe)" in out


@pytest.mark.parametrize("space,message", [
    ("reg: {low: 1e-5, high: 1e-2, log: true, step: 1e-5}", "reg: a range takes log or step, not both"),
    ("dropout: {low: 0.5, high: 0.1}", "dropout: low and high must be numbers with low < high"),
])
def test_study_ranges_are_checked_in_one_line_naming_the_file_once(tmp_path, space, message):
    study = write(tmp_path / "tiny.yaml", "trials: 2\nfixed: {dataset: synthetic, epochs: 1, val_fraction: 0.2}\n"
                                          f"space:\n  {space}\n")
    with pytest.raises(ConfigError) as error:
        studies.load_study(str(study))
    assert str(error.value) == f"{study.resolve()}: {message}"


def test_a_checkpoint_that_does_not_fit_the_model_is_a_warning_and_a_fresh_start(tmp_path, capsys):
    config = RunConfig(dataset="synthetic", epochs=1, train_subset=128, test_subset=64, batch_size=64,
                       wandb="disabled", results_dir=str(tmp_path))
    other = config.replace(pool="flex")  # another model: its weights do not fit this one
    model = train.make_model(other, train.torch.device("cpu"))
    train.save(config, model, train.make_optimizer(other, model), [{"epoch": 1, "wall_s": 1.0}])
    record = train.run(config)
    assert record["status"] == "completed" and [h["epoch"] for h in record["history"]] == [1]
    err = capsys.readouterr().err
    assert f"warning: {layout.checkpoint_path(config)}: does not fit the model" in err
    assert "starting run" in err and "Traceback" not in err


def task_pid(job) -> int:
    """The process of a local job's one task: the job's controller starts it."""
    return int(Path(f"/proc/{job.job_id}/task/{job.job_id}/children").read_text().split()[0])


def test_a_task_signalled_before_any_epoch_says_so_instead_of_requeueing(tmp_path, data_root):
    """The job's signal (the time limit) to a task in which no run has finished an epoch: another allocation of
    the same length would end alike, so it is not requeued, and --wait's summary names that as the cause."""
    (config,) = configs(tmp_path, data_root, columns=["avgpool"], epochs=500)
    folder = tmp_path / "results" / "slurm-logs" / "job"
    (job,) = launch.submit([config], "local", None, 1, folder, "limit", snapshot=False)
    wait_for(lambda: "RunPack: 1 runs" in (job.stdout() or ""), what="the task to start its run")
    os.kill(task_pid(job), signal.SIGUSR2)  # before the run's first epoch: it is still importing torch
    states, _ = launch.follow([job], [config])
    assert states == {config: "pending"} and not layout.checkpoint_path(config).exists()
    cause = launch.problems([job], states)[-1]
    assert re.fullmatch(rf"JOB {job.job_id} failed: not requeued: no run finished an epoch in this allocation; .*"
                        r"raise timeout_min in the cluster profile \(log: .*\)", cause), cause


def processes_of(pid: int) -> list[int]:
    """A process and those it started, theirs too, the deepest first: the processes of a task, as SLURM signals
    them."""
    children = []
    with contextlib.suppress(OSError):  # a process that ended meanwhile started none
        for thread in Path(f"/proc/{pid}/task").iterdir():
            children += map(int, (thread / "children").read_text().split())
    return [p for child in children for p in processes_of(child)] + [pid]


def test_a_task_signalled_after_progress_is_requeued_and_its_run_completes(tmp_path, data_root):
    """SLURM gives the job's signal to every process of the task: multiprocessing's resource tracker, which the
    task starts for its run processes, dies of it. A run that had registered a semaphore there then ended its log
    in a relaunched tracker's KeyError, not in the line that says it stopped."""
    (config,) = configs(tmp_path, data_root, columns=["avgpool"], epochs=30)
    folder = tmp_path / "results" / "slurm-logs" / "job"
    (job,) = launch.submit([config], "local", None, 1, folder, "limit", snapshot=False)
    wait_for(lambda: layout.checkpoint_path(config).exists(), what="the first checkpoint")
    for pid in processes_of(task_pid(job)):  # the task last: its handler stops the runs
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR2)
    assert launch.follow([job], [config])[0] == {config: "done"}
    log = layout.log_path(config).read_text()
    assert "resuming run" in log and "Traceback" not in log, log
    lines = log.splitlines()
    stopped = next(i for i, line in enumerate(lines) if line.startswith("stopped: SIGTERM"))
    assert lines[stopped + 1].endswith("run process ended without a record: stopped"), log
