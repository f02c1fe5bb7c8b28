"""Where the jobs of `repro.launch` and `repro.sweep` run: submitit's executors for SLURM (resources from a cluster
profile, slurm/NAME.yaml), a detached job on this machine, or this process (debug), from a snapshot of the code."""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import submitit

from repro import records
from repro.config import check

ROOT = Path(__file__).resolve().parents[1]
# Cluster profile field -> submitit AutoExecutor parameter. Every field must be present (null = SLURM's default).
PROFILE_FIELDS = {"partition": "slurm_partition", "gpus_per_node": "gpus_per_node", "cpus_per_task": "cpus_per_task",
                  "mem_gb": "mem_gb", "timeout_min": "timeout_min", "account": "slurm_account", "qos": "slurm_qos",
                  "constraint": "slurm_constraint", "array_parallelism": "slurm_array_parallelism",
                  "timeout_requeues": "slurm_max_num_timeout"}
# A local job has no scheduler limit; submitit's local default (2 minutes) would interrupt every run.
LOCAL_TIMEOUT_MIN = 30 * 24 * 60


class SubmitError(OSError):
    """The job could not be submitted (sbatch failed, the code snapshot failed): one line, exit 1."""


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=("auto", "local", "slurm", "debug"), default="auto",
                        help="auto (default): slurm when sbatch is on the PATH, else local; debug: in this process")
    parser.add_argument("--cluster", default=os.environ.get("FLEXPOOL_CLUSTER", "example"), metavar="NAME",
                        help="SLURM resources: slurm/NAME.yaml or a .yaml path (default: $FLEXPOOL_CLUSTER or example)")
    parser.add_argument("--no-snapshot", action="store_true", help="jobs import the live checkout, not a snapshot")


def from_args(args: argparse.Namespace) -> tuple[str, dict | None]:
    """The executor's kind ('auto' resolved) and, for SLURM, the cluster profile, checked."""
    kind = args.executor if args.executor != "auto" else "slurm" if shutil.which("sbatch") else "local"
    return kind, load_cluster(args.cluster) if kind == "slurm" else None


def load_cluster(name: str) -> dict:
    """The profile slurm/NAME.yaml (or a path to a .yaml file), checked field by field."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else ROOT / "slurm" / f"{name}.yaml"
    check(path.is_file(), f"cluster profile {path} does not exist")
    profile = records.load_file(path, "cluster profile")
    check(isinstance(profile, dict), f"cluster profile {path} must be a mapping of field: value")
    missing = [k for k in PROFILE_FIELDS if k not in profile]
    check(not missing, f"cluster profile {path} lacks field(s) {', '.join(missing)}; see slurm/example.yaml")
    unknown = sorted(set(profile) - set(PROFILE_FIELDS))
    check(not unknown, f"cluster profile {path}: unknown field(s) {', '.join(unknown)}")
    for key, least in (("gpus_per_node", 0), ("cpus_per_task", 1), ("timeout_min", 1), ("array_parallelism", 1),
                       ("timeout_requeues", 0)):
        check(isinstance(profile[key], int) and not isinstance(profile[key], bool) and profile[key] >= least,
              f"cluster profile {path}: {key} must be an integer >= {least}, got {profile[key]!r}")
    check(isinstance(profile["mem_gb"], (int, float)) and profile["mem_gb"] > 0,
          f"cluster profile {path}: mem_gb must be a positive number, got {profile['mem_gb']!r}")
    return profile




@contextlib.contextmanager
def submitting(kind: str, folder: Path, profile: dict | None, name: str, snapshot: bool):
    """The executor to submit with, from a code snapshot unless `snapshot` is off; a failed submission raises one
    line: sbatch's error (SubmitError) or the file system's (WriteError)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's error output, then raises it
            executor = make(kind, folder, profile, name)
            with code_snapshot(folder, kind, snapshot):
                yield executor
    except submitit.core.utils.FailedJobError as e:
        cause = records.last_line(str(e), "no message").removeprefix("sbatch: error: ")
        raise SubmitError(f"sbatch failed: {cause} (job files: {folder})") from None
    except (SubmitError, records.WriteError):
        raise
    except OSError as e:
        raise records.write_error(Path(e.filename or folder), e) from None


def make(kind: str, folder: Path, profile: dict | None, name: str) -> submitit.Executor:
    if kind == "local":  # LocalExecutor itself: AutoExecutor does not pass visible_gpus on
        executor = submitit.LocalExecutor(folder)
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, setup=detached(executor.folder), **local_gpus())
        return executor
    resources = {PROFILE_FIELDS[k]: v for k, v in (profile or {}).items()}
    # submitit takes the number of time-outs when the executor is made, the other resources after
    timeouts = {"slurm_max_num_timeout": resources.pop("slurm_max_num_timeout")} if profile else {}
    executor = submitit.AutoExecutor(folder=folder, cluster=kind, **timeouts)
    executor.update_parameters(name=name, **resources)
    return executor


def detached(folder: Path) -> list[str]:
    """The local job's setup: the job outlives this command, so it runs in a session of its own, away from the
    terminal (Ctrl-C and hang-ups reach only this command), and its process group, whose id is the job's, stops
    all of it: `kill -- -ID`, as scancel stops a SLURM job. submitit starts `sh -c "SETUP && CONTROLLER"`; the
    setup's last line execs that controller itself through setsid (the pid, the job's id, stays; what follows
    never runs), told it was not started from a shell, so it takes its own pid for the job's, not its parent's."""
    controller = [sys.executable, "-m", "submitit.local._local", str(folder)]
    return [f"exec </dev/null >>{shlex.quote(str(folder / 'local-job.log'))} 2>&1",
            f"exec env SUBMITIT_LOCAL_WITH_SHELL= setsid {shlex.join(controller)}"]


def visible_gpus() -> list[str]:
    return [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]


def local_gpus() -> dict:
    """submitit gives a local job the GPUs 0..n-1 unless told which: hand on those this shell may use."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        gpus = visible_gpus()
        check(all(g.strip().isdigit() for g in gpus), "the local executor needs CUDA_VISIBLE_DEVICES as indices")
        return {"gpus_per_node": len(gpus), "visible_gpus": tuple(int(g) for g in gpus)}
    import torch  # only here: planning and SLURM submission stay free of torch

    return {"gpus_per_node": torch.cuda.device_count()}


@contextlib.contextmanager
def code_snapshot(folder: Path, kind: str, enabled: bool):
    """Submit from a copy of the code, so jobs run it as it is now. The debug executor runs in this process."""
    if not enabled or kind == "debug":
        yield
        return
    if not (submitit.helpers.RsyncSnapshot.available() and (ROOT / ".git").exists()):
        check(kind != "slurm", "the code snapshot needs rsync and a git checkout; install rsync or pass --no-snapshot")
        print("note: no code snapshot (needs rsync and a git checkout): runs import the code as it is when they start")
        yield
        return
    snapshot = submitit.helpers.RsyncSnapshot(folder / "code", root_dir=ROOT)
    with tempfile.TemporaryFile() as output:
        saved = os.dup(2)
        os.dup2(output.fileno(), 2)  # git and rsync write to fd 2 themselves: keep their lines for one error
        try:
            snapshot.__enter__()
        except subprocess.CalledProcessError as e:
            output.seek(0)  # one line of theirs; a full disk named as every write names it (records.write_error)
            lines = [line for line in output.read().decode(errors="replace").splitlines()
                     if line.strip() and not line.startswith("Cloning into")]
            cause, code = lines[0] if lines else str(e), folder / "code"
            # their words first: a tool that fails deletes its partial file, and the disk has room again
            if any(os.strerror(errno.ENOSPC) in line for line in lines) or shutil.disk_usage(folder).free == 0:
                raise records.write_error(code, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from None
            raise SubmitError(f"the code snapshot into {code} failed: {cause}") from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    try:
        yield
    finally:
        snapshot.__exit__()


def run_debug(jobs: list) -> bool:
    """Whether these are the debug executor's jobs, which run in this process when their result is asked for: then
    they have run (an error is raised here, where a debugger wants it)."""
    if not (jobs and isinstance(jobs[0], submitit.DebugJob)):
        return False
    for job in jobs:
        job.result()
    return True


def job_cause(error: Exception) -> str:
    """Why a job failed: the last line of its task's traceback (submitit's error quotes it between dashed
    lines), without the exception's module path; not the task log's last line, which may be srun's noise."""
    parts = str(error).split("-" * 22 + "\n")
    return re.sub(r"^[\w.]+: ", "", records.last_line(parts[1] if len(parts) > 2 else str(error)))
