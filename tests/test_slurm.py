"""The launcher through a real SLURM: slurm/local-cluster.sh installs (Debian) and starts a single-node cluster
with two fake GPUs for this session and stops it at the end."""

import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from repro import launch, layout, records, runs, sweep
from tests.helpers import ROOT, configs, history_epochs, offline_runs, sacct_states, selection, wait_for

pytestmark = pytest.mark.slurm


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")  # sbatch hands the environment to the jobs


def main(capsys, module, *argv):
    code = module.main([str(a) for a in argv])
    return code, capsys.readouterr().out


def job_id(out: str) -> str:
    return re.search(r"submitted: job (\d+)", out).group(1)


def test_table_as_a_job_array_on_gpus(capsys, tmp_path, data_root, slurm):
    """Four Table 2 runs, two per (fake) GPU: a two-task array, each task with a GPU, from a code snapshot."""
    argv = ("table2", "--seeds", 2, *selection(tmp_path, data_root, "--columns", "avgpool", "flexpool"),
            "--cluster", "local", "--runs-per-gpu", 2)
    code, out = main(capsys, launch, *argv, "--wait")  # --executor auto: sbatch is on the PATH
    assert code == 0, out
    assert "submitting 4 runs (slurm, profile local, 2 per GPU)" in out and "2 task(s)" in out
    assert "finished: 2 cells x 2 seeds = 4 runs: 4 done" in out
    for config in configs(tmp_path, data_root, "table2", seeds=2, columns=["avgpool", "flexpool"]):
        assert records.read_record(layout.record_path(config))["status"] == "completed"
    folder = Path(re.search(r"job logs: (\S+)", out).group(1))
    assert "#SBATCH --gpus-per-node=1" in next(folder.glob("*_submission.sh")).read_text()
    task_logs = [p.read_text() for p in folder.glob("*_log.out")]
    assert len(task_logs) == 2
    for log in task_logs:
        assert re.search(r"RunPack: 2 runs, 2 at a time, GPUs \['[01]'\]", log)  # SLURM gave it a GPU
        if shutil.which("rsync"):
            assert f"code from {folder / 'code' / 'repro'}" in log
    # submitit counts a job done once its result file is written; SLURM's accounting says so a moment later
    wait_for(lambda: sacct_states(job_id(out)) == {"COMPLETED"}, timeout=30, what="sacct to show COMPLETED")
    code, out = main(capsys, launch, *argv)
    assert code == 0 and "nothing to submit" in out


def test_preempted_task_is_requeued_and_its_run_resumes(capsys, tmp_path, data_root, slurm):
    """With its checkpoints on scratch space, as on a cluster: the requeued task finds them there."""
    params = tmp_path / "long.yaml"
    params.write_text("epochs: 20\n")
    argv = ("table1", *selection(tmp_path, data_root, "--columns", "avgpool", "--params", params),
            "--cluster", "local", "--checkpoint-dir", tmp_path / "scratch")
    code, out = main(capsys, launch, *argv)
    assert code == 0 and "progress: python -m repro.status" in out
    (config,) = configs(tmp_path, data_root, columns=["avgpool"], epochs=20)
    config = config.replace(checkpoint_dir=str(tmp_path / "scratch"))
    code, again = main(capsys, launch, *argv)  # its job waits in SLURM's queue or runs: queued, not pending
    assert code == 0 and "nothing to submit" in again and "0 pending" in again
    wait_for(lambda: layout.checkpoint_path(config).exists(), what="the first checkpoint")
    # What SLURM does before a time limit or a preemption: the job's signal (submitit's USR2) to its processes.
    subprocess.run(["scancel", "--signal=USR2", job_id(out)], check=True)
    wait_for(lambda: records.run_status(config) == "completed", timeout=600, what="the requeued run's record")
    record = records.read_record(layout.record_path(config))
    assert [h["epoch"] for h in record["history"]] == list(range(1, 21))
    log = layout.log_path(config).read_text()
    # the signal reaches multiprocessing's resource tracker too: no KeyError of a relaunched one in the run's log
    assert f"resuming run {config.run_id} after epoch" in log and "Traceback" not in log, log
    assert f"from {tmp_path / 'scratch'}" in layout.log_path(config).read_text()
    assert not (tmp_path / "results" / "checkpoints").exists()
    task_log = next(Path(re.search(r"job logs: (\S+)", out).group(1)).glob("*_log.out")).read_text()
    assert "Requeued job" in task_log
    wait_for(lambda: sacct_states(job_id(out)) == {"COMPLETED"}, timeout=30, what="sacct to show COMPLETED")


def test_requeue_by_sigterm_is_followed_to_its_end_with_every_epoch_in_wandb(tmp_path, data_root, slurm,
                                                                             monkeypatch):
    """`scontrol requeue` (and PreemptMode=REQUEUE) sends SIGTERM to every process of the job, W&B's service
    included: the run stops with its checkpoint and its W&B history, the task ends unfinished, SLURM starts it
    again, the run resumes, and --wait follows the task to its real end."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    params = tmp_path / "long.yaml"
    params.write_text("epochs: 8\n")
    argv = [sys.executable, "-m", "repro.launch", "table1", "--cluster", "local", "--wait",
            *map(str, selection(tmp_path, data_root, "--columns", "avgpool", "--params", params))]
    launched = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # One reader owns the pipe: mixing readline() with communicate() loses what readline had buffered.
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(launched.stdout), daemon=True)
    reader.start()
    wait_for(lambda: "submitted: job" in "".join(lines) or launched.poll() is not None, what="the submission")
    assert "submitted: job" in "".join(lines), "".join(lines)
    (config,) = configs(tmp_path, data_root, columns=["avgpool"], epochs=8)
    wait_for(lambda: layout.checkpoint_path(config).exists(), what="the first checkpoint")
    subprocess.run(["scontrol", "requeue", job_id("".join(lines))], check=True)
    launched.wait(timeout=600)
    reader.join(timeout=30)
    out = "".join(lines)
    assert launched.returncode == 0, out
    assert "finished: 1 cell x 1 seed = 1 run: 1 done" in out and "NOT FINISHED" not in out

    record = records.read_record(layout.record_path(config))
    assert [h["epoch"] for h in record["history"]] == list(range(1, 9))
    log = layout.log_path(config).read_text()
    assert "stopped: SIGTERM" in log and "resuming run" in log and "Traceback" not in log, log
    task_log = next(Path(re.search(r"job logs: (\S+)", out).group(1)).glob("*_log.out")).read_text()
    assert "RunPack: runs stopped by SIGTERM" in task_log
    wait_for(lambda: sacct_states(job_id(out), "-D") == {"REQUEUED", "COMPLETED"}, timeout=30,
             what="sacct to show the requeued and the completed attempt")
    attempts = [history_epochs(run_dir) for run_dir in offline_runs(tmp_path / "results")]
    first, second = attempts
    assert first and first + second == list(range(1, 9)), attempts


def test_unreachable_controller_is_one_line(capsys, tmp_path, data_root, slurm, monkeypatch):
    """sbatch's own error, from the real sbatch, when the controller does not answer (a config naming a port
    where nothing listens; the running test cluster is left alone)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = Path("/etc/slurm/slurm.conf").read_text()
    conf = re.sub(r"(?m)^SlurmctldHost=.*$", f"SlurmctldHost=nowhere(127.0.0.1)\nSlurmctldPort={port}\n"
                                              "MessageTimeout=1", conf)
    (tmp_path / "slurm.conf").write_text(conf)
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    expected = "sbatch failed: Batch job submission failed: Unable to contact slurm controller"
    for module, argv in ((launch, ["table1", *selection(tmp_path, data_root, "--columns", "avgpool"),
                                   "--cluster", "local"]),
                         (sweep, ["smoke", "--cluster", "local", "--results-dir", tmp_path / "results"])):
        code = module.main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith(f"error: {expected}") and err.count("\n") == 1, err


def test_time_limits_requeue_a_run_that_progresses_past_submitits_default_of_three(capsys, tmp_path, data_root,
                                                                                    slurm):
    """Four time-outs, one more than submitit's default max_num_timeout: the profile's timeout_requeues decides.
    Under 10 minutes of limit, submitit takes every signal for a time-out."""
    profile = tmp_path / "short.yaml"
    profile.write_text((ROOT / "slurm" / "local.yaml").read_text().replace("timeout_min: 60", "timeout_min: 5"))
    params = tmp_path / "long.yaml"
    params.write_text("epochs: 40\n")
    argv = ("table1", *selection(tmp_path, data_root, "--columns", "avgpool", "--params", params),
            "--cluster", profile)
    code, out = main(capsys, launch, *argv)
    assert code == 0
    (config,) = configs(tmp_path, data_root, columns=["avgpool"], epochs=40)
    for _ in range(4):
        written = layout.checkpoint_path(config).stat().st_mtime if layout.checkpoint_path(config).exists() else 0
        wait_for(lambda w=written: layout.checkpoint_path(config).exists()
                 and layout.checkpoint_path(config).stat().st_mtime > w, what="an epoch of this allocation")
        subprocess.run(["scancel", "--signal=USR2", job_id(out)], check=True)
        wait_for(lambda: runs.lock_holder(config) is None, what="the run to stop")
    wait_for(lambda: records.run_status(config) == "completed", timeout=600, what="the requeued run's record")
    task_log = next(Path(re.search(r"job logs: (\S+)", out).group(1)).glob("*_log.out")).read_text()
    assert task_log.count("this job is timed-out") == 4
