"""`python -m repro.launch TARGET --seeds N`: every run of a table, through submitit, on SLURM or on this machine.

The plan (experiments.plan) is compared with the records on disk first: done and running runs are skipped, so a
launch can be repeated at any time and a finished target submits nothing. The pending runs go out as one job
whose tasks each train a pack of runs side by side, --runs-per-gpu on each GPU the task has:
  slurm  a job array, one task per pack; resources from the profile slurm/NAME.yaml (--cluster)
  local  one background job on this machine that works through all pending runs the same way
  debug  that job inside this process (submitit's DebugExecutor), to step through the launcher
Each run trains in a process of its own (a crash takes only that run down) that logs to
<results>/slurm-logs/runs/<cell>/seed<k>-<run id>.log. Runs checkpoint every epoch; a task that is preempted
or reaches its time limit is requeued by submitit (RunPack is Checkpointable) and its runs resume. SIGTERM
(scontrol requeue, PreemptMode=REQUEUE, scancel) stops the runs at once, their checkpoints kept, and the task
ends without a result, so SLURM's requeue runs it again and --wait follows it to its end.
Jobs run a snapshot of the code taken at submission (submitit's RsyncSnapshot: the git-tracked files as they
are in the working tree), so editing the checkout never changes queued or running jobs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import multiprocessing
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import submitit
from tqdm import tqdm

from repro import experiments, records
from repro.config import COMPILE_MODES, ConfigError, RunConfig, check, plural
from repro.data import DataError, prepare
from repro.status import add_plan_args, failure_lines, plan_from_args, run_log_path, run_states, summary

ROOT = Path(__file__).resolve().parents[1]
SLURM_DIR = ROOT / "slurm"

# Cluster profile field -> submitit AutoExecutor parameter. Every field must be present (null = SLURM's default).
PROFILE_FIELDS = {
    "partition": "slurm_partition",
    "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb",
    "timeout_min": "timeout_min",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "array_parallelism": "slurm_array_parallelism",
    "timeout_requeues": "slurm_max_num_timeout",
}
# A local job has no scheduler limit; submitit's local default (2 minutes) would interrupt every run.
LOCAL_TIMEOUT_MIN = 30 * 24 * 60
RUN_LOCKED = 3  # exit code of a run process whose run another process is training
RUN_UNWRITABLE = 4  # exit code of a run process whose files could not be written (disk full, read-only)


class SubmitError(OSError):
    """The job could not be submitted (sbatch failed, the code snapshot failed): one line, exit 1."""


def load_cluster(name: str) -> dict:
    """The profile slurm/NAME.yaml (or a path to a .yaml file), checked field by field."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else SLURM_DIR / f"{name}.yaml"
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


def profile_label(config: RunConfig, profile: str) -> str:
    """The plan's profile as its records name it: 'smoke profile', or 'custom profile: smoke with epochs=20 from
    --params' when tuned values change a field that the profiles set (a record's 'profile')."""
    if experiments.profile_of(config) == profile:
        return f"{profile} profile"
    base = experiments.cell_config(**experiments.parse_cell(config.cell), profile=profile)
    keys = sorted({k for fields in experiments.PROFILES.values() for k in fields})
    changed = ", ".join(f"{k}={getattr(config, k)}" for k in keys if getattr(config, k) != getattr(base, k))
    return f"custom profile: {profile} with {changed} from --params"


def executor_kind(choice: str) -> str:
    if choice == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return choice


def to_run(states: dict[RunConfig, str], force: bool, retry_failed: bool) -> list[RunConfig]:
    """Pending and unusable runs (those resume from their checkpoint), plus failed ones with --retry-failed, plus
    done and queued ones with --force; never running ones. Seed 0 of every cell first, then seed 1, ...: a
    campaign cut short (a GPU held for minutes, a queue that preempts) leaves whole seeds across the columns,
    which the paired comparisons need."""
    wanted = {"pending", "unusable"} | ({"failed"} if retry_failed or force else set()) \
        | ({"done", "queued"} if force else set())
    return sorted((c for c, state in states.items() if state in wanted), key=lambda c: c.seed)


def forget(configs: list[RunConfig]) -> None:
    """--force: drop records and checkpoints, so the runs train from scratch and no job takes them as done."""
    for config in configs:
        for path in (records.record_path(config), records.checkpoint_path(config)):
            path.unlink(missing_ok=True)


def packs(configs: list[RunConfig], size: int) -> list[list[RunConfig]]:
    return [configs[i:i + size] for i in range(0, len(configs), size)]


# ---- inside a job --------------------------------------------------------------------------------------------

def visible_gpus() -> list[str]:
    return [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]


def cpu_threads(runs: int) -> int | None:
    """Torch threads for each of `runs` runs side by side on a CPU: a share of the cores each, not all each.
    None (torch's own choice) on GPUs, and where OMP_NUM_THREADS says how many: torch follows it."""
    if visible_gpus() or os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, len(os.sched_getaffinity(0)) // runs)


def _train(config: dict, log: str, gpu: str | None, threads: int | None) -> None:
    """Entry of one run's process: its output goes to its own log, it sees one GPU (or a share of the CPU)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout.reconfigure(line_buffering=True)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before torch is imported
    # SLURM signals every process of the job; the task's process handles preemption (submitit), not the runs.
    signal.signal(getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG), signal.SIG_IGN)
    from repro import train

    if threads:
        train.torch.set_num_threads(threads)
    print(f"== {config['cell']} seed {config['seed']}, {datetime.datetime.now():%Y-%m-%d %H:%M:%S}, "
          f"code from {Path(train.__file__).parent}", flush=True)
    try:
        record = train.run(RunConfig.from_dict(config))
    except train.Stopped as e:
        print(f"stopped: {e}", flush=True)
        sys.exit(records.STOPPED_EXIT)
    except records.WriteError as e:  # the disk's fault, not the run's: no record, a launch resumes it later
        print(f"error: {e}; nothing recorded, launching again resumes the run", flush=True)
        sys.exit(RUN_UNWRITABLE)
    if record is None:
        print("another process holds this run's lock: it is trained there", flush=True)
        sys.exit(RUN_LOCKED)


class RunPack(submitit.helpers.Checkpointable):
    """One job task: train `configs`, `runs_per_gpu` at a time on each GPU of the task (or on the CPU).

    Runs are processes of their own, spawned fresh (no CUDA state inherited) with the task's sys.path, so they
    import the code snapshot the task runs from. Returns one outcome per run; the records are the results.
    """

    def __call__(self, configs: list[RunConfig], runs_per_gpu: int) -> list[dict]:
        self._started = time.time()
        self._lock = threading.Lock()
        self._stopping = False
        self._procs: list[multiprocessing.Process] = []
        slots: queue.SimpleQueue = queue.SimpleQueue()
        gpus = visible_gpus() or [None]
        for gpu in gpus * runs_per_gpu:
            slots.put(gpu)
        self._threads = cpu_threads(runs_per_gpu)
        print(f"RunPack: {len(configs)} runs, {len(gpus) * runs_per_gpu} at a time, GPUs {gpus}, "
              f"code from {Path(__file__).parent}", flush=True)
        with ThreadPoolExecutor(len(gpus) * runs_per_gpu) as pool:
            outcomes = list(pool.map(lambda c: self._run(c, slots), configs))
        for outcome in outcomes:
            print(f"{outcome['state']:>12}  {outcome['cell']} seed {outcome['seed']}  log: {outcome['log']}")
        if any(o["state"] in ("stopped", "interrupted") for o in outcomes):
            # SIGTERM: SLURM requeues the job (scontrol requeue, preemption) or cancels it. The task must not end
            # as finished. SystemExit, not an Exception: submitit would write any Exception as the job's result,
            # and a result file, even an error, makes the job count as ended while its requeued run trains on.
            print("RunPack: runs stopped by SIGTERM; they resume from their checkpoints when the task runs again",
                  flush=True)
            raise SystemExit(records.STOPPED_EXIT)
        return outcomes

    def _run(self, config: RunConfig, slots: queue.SimpleQueue) -> dict:
        outcome = {"cell": config.cell, "seed": config.seed, "run_id": config.run_id,
                   "log": str(run_log_path(config))}
        if records.run_status(config) == "completed":  # e.g. trained before this array task was requeued
            return {**outcome, "state": "done"}
        gpu = slots.get()
        try:
            with self._lock:
                if self._stopping:
                    return {**outcome, "state": "interrupted"}
                run_log_path(config).parent.mkdir(parents=True, exist_ok=True)
                proc = multiprocessing.get_context("spawn").Process(
                    target=_train, args=(config.to_dict(), outcome["log"], gpu, self._threads), name=config.run_id)
                proc.start()
                self._procs.append(proc)
            proc.join()
        finally:
            slots.put(gpu)
        state = _state(config, proc.exitcode, self._stopping)
        if state == "stopped":
            self._stopping = True  # the whole task is being stopped: start no more runs
        if state not in ("stopped", "interrupted"):  # this array task is done with the run, even if it ended unfinished
            release(config)
        if state not in ("done", "failed", "elsewhere", "unwritable"):  # it could not say so itself (kill -9)
            with open(outcome["log"], "a") as log:
                log.write(f"== {datetime.datetime.now():%Y-%m-%d %H:%M:%S} run process ended without a record: "
                          f"{state}\n")
        return {**outcome, "state": state}

    def checkpoint(self, configs: list[RunConfig], runs_per_gpu: int) -> submitit.helpers.DelayedSubmission:
        """Preempted or out of time: stop the runs (each resumes from its last epoch's checkpoint) and requeue
        the same pack; a fresh RunPack, because processes and locks do not pickle. A task in which no run
        finished an epoch is not requeued: another allocation as long would end alike, for ever."""
        with self._lock:
            self._stopping = True
            for proc in self._procs:
                proc.terminate()
        for proc in self._procs:
            proc.join(timeout=60)
        if not any(progressed(c, self._started) for c in configs):
            raise NoProgress("not requeued: no run finished an epoch in this allocation; the time limit is "
                             "shorter than start-up plus one epoch: raise timeout_min in the cluster profile")
        return submitit.helpers.DelayedSubmission(RunPack(), configs, runs_per_gpu)


class NoProgress(RuntimeError):
    """A task's signal (its time limit) came before any of its runs finished an epoch: the task's error."""


def progressed(config: RunConfig, since: float) -> bool:
    """Whether the run wrote a checkpoint (each epoch does) or its record since `since`."""
    for path in (records.checkpoint_path(config), records.record_path(config)):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime >= since:
                return True
    return False


def release(config: RunConfig) -> None:
    """Drop the run's queue file if it names this array task: a run that ended unfinished (kill -9, a full disk) is
    then pending at once, for a relaunch to take, not queued until the whole job has ended. A queue file
    another launch has written since stays."""
    path = records.queue_path(config)
    with contextlib.suppress(OSError, IndexError):
        if path.read_text().split()[-1] == submitit.JobEnvironment().job_id:
            path.unlink()


def _state(config: RunConfig, exitcode: int | None, stopping: bool) -> str:
    recorded = records.run_status(config)
    if recorded in ("completed", "failed"):
        return {"completed": "done", "failed": "failed"}[recorded]
    if exitcode == RUN_LOCKED:
        return "elsewhere"
    if exitcode == RUN_UNWRITABLE:
        return "unwritable"
    if exitcode in (records.STOPPED_EXIT, -signal.SIGTERM):  # -SIGTERM: it came before train.run could handle it
        return "interrupted" if stopping else "stopped"
    if stopping:
        return "interrupted"
    how = f"killed by {signal.Signals(-exitcode).name}" if exitcode and exitcode < 0 else f"exit code {exitcode}"
    return f"crashed ({how})"


# ---- submission ----------------------------------------------------------------------------------------------

def launch_folder(results_dir: str, target: str) -> Path:
    now = datetime.datetime.now()
    return Path(results_dir) / "slurm-logs" / f"{now:%Y-%m-%d}" / f"{now:%H%M%S}-{target}-{os.getpid()}"


def make_executor(kind: str, folder: Path, profile: dict | None, name: str) -> submitit.Executor:
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
    terminal (Ctrl-C and hang-ups reach only this command, no output goes to a closed tty), and its process group,
    whose id is the job's, stops all of it: `kill -- -ID`, as scancel stops a SLURM job.

    submitit starts `sh -c "SETUP && CONTROLLER"` in this command's process group; the setup's last line execs
    the same controller through setsid (the pid, the job's id, stays), so what follows it never runs. The
    controller, told it was not started from a shell, then takes its own pid for the job's, not its parent's."""
    controller = [sys.executable, "-m", "submitit.local._local", str(folder)]
    return [f"exec </dev/null >>{shlex.quote(str(folder / 'local-job.log'))} 2>&1",
            f"exec env SUBMITIT_LOCAL_WITH_SHELL= setsid {shlex.join(controller)}"]


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
            output.seek(0)
            raise snapshot_error(folder / "code", output.read().decode(errors="replace"), e) from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    try:
        yield
    finally:
        snapshot.__exit__()


def snapshot_error(code: Path, output: str, error: Exception) -> OSError:
    """One line from git's and rsync's output; a full disk named as such, since they name only the file."""
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("Cloning into")]
    cause = lines[0] if lines else str(error)
    if shutil.disk_usage(code.parent).free == 0:
        return records.WriteError(f"cannot write {code}: No space left on device (ENOSPC); {cause}")
    return SubmitError(f"the code snapshot into {code} failed: {cause}")


def submit(configs: list[RunConfig], kind: str, profile: dict | None, runs_per_gpu: int, folder: Path,
           name: str, snapshot: bool = True) -> list:
    """Submit the runs as one job (an array on SLURM); returns submitit's jobs, one per task. A submission
    that fails (sbatch's error, no room for the job files) raises SubmitError or WriteError: one line."""
    per_task = max(1, profile["gpus_per_node"]) * runs_per_gpu if kind == "slurm" else len(configs)
    groups = packs(configs, per_task)
    with submission(folder):
        executor = make_executor(kind, folder, profile, name)
        with code_snapshot(folder, kind, snapshot):
            jobs = executor.map_array(RunPack(), groups, [runs_per_gpu] * len(groups))
        if kind != "debug":  # the debug executor runs its job only when asked for the result
            for job, group in zip(jobs, groups, strict=True):
                for config in group:
                    path = records.queue_path(config)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(f"{kind} {socket.gethostname()} {job.job_id}\n")
    return jobs


@contextlib.contextmanager
def submission(folder: Path):
    """A failed submission as one line: sbatch's error (SubmitError) or the file system's (WriteError)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's error output, then raises it
            yield
    except submitit.core.utils.FailedJobError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or ["no message"]
        cause = lines[-1].removeprefix("sbatch: error: ")
        raise SubmitError(f"sbatch failed: {cause} (job files: {folder})") from None
    except (SubmitError, records.WriteError):
        raise
    except OSError as e:
        raise records.write_error(Path(e.filename or folder), e) from None


def follow(jobs: list, configs: list[RunConfig]) -> dict[RunConfig, str]:
    """Show progress from the records until every job has ended; returns the final state of each run."""
    if jobs and isinstance(jobs[0], submitit.DebugJob):
        for job in jobs:  # the debug executor runs a job when its result is asked for
            with contextlib.suppress(Exception):
                job.result()
        return run_states(configs)
    start, last = time.time(), ""
    bar = tqdm(total=len(configs), unit="run", desc="runs", dynamic_ncols=True, disable=not sys.stderr.isatty())
    with bar:
        while True:
            states = run_states(configs)
            finished = sum(s in ("done", "failed") for s in states.values())
            counts = summary(states).split(": ", 1)[1]
            bar.update(finished - bar.n)
            bar.set_postfix_str(counts)
            if bar.disable and counts != last:  # a log file, not a terminal: a line per change
                print(f"[{datetime.datetime.now():%H:%M:%S}] {counts}", flush=True)
                last = counts
            # submitit polls the scheduler less often as jobs age; force a look once every run has a record.
            # Runs that another launch trains or holds ("running" or "queued" once our job has ended) are waited
            # for too; the states are read again after: a run of a job that just ended is no longer queued.
            if all(job.done(force_check=finished == len(configs)) for job in jobs):
                states = run_states(configs)
                if not {"running", "queued"} & set(states.values()):
                    return states
            time.sleep(min(30.0, 1.0 + (time.time() - start) / 20))


def problems(jobs: list, states: dict[RunConfig, str]) -> list[str]:
    """Failed runs, runs that never finished, and jobs that ended with an error of their own."""
    unfinished = [f"NOT FINISHED {c.cell} seed {c.seed}: {state}{last_words(c)} (log: {run_log_path(c)})"
                  for c, state in states.items() if state not in ("done", "failed")]
    lines = failure_lines(states) + unfinished
    for job in jobs:
        # submitit gives a result file 15 s to appear (slow file systems) before it calls a job failed; with runs
        # unfinished, a task without one (stopped by SIGTERM, cancelled, killed) is expected: no wait for it
        if unfinished and not job.paths.result_pickle.exists():
            lines.append(f"JOB {job.job_id} ended without a result (log: {job.paths.stderr})")
        elif job.exception() is not None:
            lines.append(f"JOB {job.job_id} failed: {job_cause(job.exception())} (log: {job.paths.stderr})")
    return lines


def job_cause(error: Exception) -> str:
    """Why a job failed: the last line of its task's traceback (submitit's error quotes it between dashed
    lines), without the exception's module path; not the task log's last line, which may be srun's noise."""
    parts = str(error).split("-" * 22 + "\n")
    trace = parts[1] if len(parts) > 2 else str(error)
    last = ([line.strip() for line in trace.splitlines() if line.strip()] or ["?"])[-1]
    return re.sub(r"^[\w.]+: ", "", last)


def last_words(config: RunConfig) -> str:
    """': ' and the last line of the run's log, which says how its process ended ('' without a log)."""
    with contextlib.suppress(OSError):
        lines = [line for line in run_log_path(config).read_text(errors="replace").splitlines() if line.strip()]
        return f": {lines[-1].strip()}" if lines else ""
    return ""


def status_command(args: argparse.Namespace) -> str:
    words = ["python -m repro.status", args.target, "--seeds", str(args.seeds)]
    for flag in ("datasets", "columns"):
        if getattr(args, flag):
            words += [f"--{flag}", *getattr(args, flag)]
    for flag in ("profile", "recipe", "params", "results_dir", "data_root"):
        value = getattr(args, flag)
        if value and value != parser().get_default(flag):
            words += [f"--{flag.replace('_', '-')}", value]
    return " ".join(shlex.quote(w) if w != words[0] else w for w in words)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m repro.launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plan_args(p)
    p.add_argument("--executor", choices=("auto", "local", "slurm", "debug"), default="auto",
                   help="auto (default): slurm when sbatch is on the PATH, else local")
    p.add_argument("--cluster", default=os.environ.get("FLEXPOOL_CLUSTER", "example"), metavar="NAME",
                   help="SLURM resources: slurm/NAME.yaml or a .yaml path (default: $FLEXPOOL_CLUSTER or example)")
    p.add_argument("--runs-per-gpu", type=int, default=1, metavar="K", help="runs trained side by side per GPU (default 1)")
    p.add_argument("--compile", default="auto", choices=COMPILE_MODES,
                   help="how the runs compile their training step (default auto: eager on a CPU, "
                        "repro.train.CUDA_COMPILE on a GPU); what `python -m repro.bench --survey` names (README: "
                        "Speed). It changes speed, not what a run computes: not part of the run id")
    p.add_argument("--force", action="store_true", help="delete the runs' records and checkpoints; run all again")
    p.add_argument("--retry-failed", action="store_true", help="run the failed runs again (from their checkpoint)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    p.add_argument("--wait", action="store_true", help="follow the jobs with a progress bar, end with a summary")
    p.add_argument("--no-snapshot", action="store_true", help="jobs import the live checkout, not a snapshot")
    p.add_argument("--download", action="store_true",
                   help="download missing data sets here before submitting (compute nodes often have no internet)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return launch(args)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine's fault, not the command's: disk, permissions, sbatch
        print(f"error: {e}", file=sys.stderr)
        return 1


def launch(args: argparse.Namespace) -> int:
    check(args.runs_per_gpu >= 1, f"--runs-per-gpu must be at least 1, got {args.runs_per_gpu}")
    kind = executor_kind(args.executor)
    profile = load_cluster(args.cluster) if kind == "slurm" else None
    configs = [c.replace(compile=args.compile) for c in plan_from_args(args)]
    states = run_states(configs)
    print(f"plan: {args.target} ({profile_label(configs[0], args.profile)}, {args.recipe} recipe): {summary(states)}")
    runs = to_run(states, args.force, args.retry_failed)
    where = f"slurm, profile {args.cluster}" if kind == "slurm" else kind
    if not runs:
        print("nothing to submit")
        return 0
    print(f"{'would submit' if args.dry_run else 'submitting'} {plural(len(runs), 'run')} ({where}, "
          f"{args.runs_per_gpu} per GPU)")
    if args.dry_run:
        return 0
    check(kind != "slurm" or shutil.which("sbatch") is not None, "--executor slurm: no sbatch on the PATH")
    for dataset in sorted({c.dataset for c in runs}):
        prepare(dataset, runs[0].data_root, args.download)  # a missing data set fails here, not in every job
    if args.force:
        forget(runs)
    folder = launch_folder(configs[0].results_dir, args.target)
    jobs = submit(runs, kind, profile, args.runs_per_gpu, folder, f"flexpool-{args.target}", not args.no_snapshot)
    job = jobs[0].job_id.split("_")[0]
    print(f"submitted: job {job}, {len(jobs)} task(s)" + (
        f", in the background on this machine: it goes on after this command returns; stop it: kill -- -{job}"
        if kind == "local" else ""))
    print(f"job logs: {folder}\nrun logs: {Path(configs[0].results_dir) / 'slurm-logs' / 'runs'}\n"
          f"records:  {Path(configs[0].results_dir) / 'runs'}")
    if not args.wait:
        print(f"progress: {status_command(args)}")
        return 0
    try:
        final = follow(jobs, runs)
    except KeyboardInterrupt:  # Ctrl-C stops the following, not the jobs (the debug executor's is this process)
        if kind == "debug":
            raise
        print(f"still running: {status_command(args)} to follow", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell says
    print(f"finished: {summary(final)}")
    lines = problems(jobs, final)
    for line in lines:
        print(line)
    return 1 if lines else 0


if __name__ == "__main__":
    # Run through the imported module, not __main__: submitit pickles __main__'s classes by value, and then
    # the job would neither import the code snapshot nor find _train for the run processes.
    from repro import launch as _launch  # noqa: PLW0406

    sys.exit(_launch.main())
