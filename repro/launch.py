"""`python -m repro.launch TARGET --seeds N`: every run of a table, through submitit, on SLURM or on this machine.

Runs that are done, failed, running or queued (repro.runs) are skipped, so a launch can be repeated at any time.
The others go out as one job whose tasks each train a pack of runs side by side, --runs-per-gpu on each GPU:
  slurm  a job array, one task per pack; resources from the profile slurm/NAME.yaml (--cluster)
  local  one background job on this machine that works through all of them the same way
  debug  that job inside this process (submitit's DebugExecutor), to step through the launcher
A task preempted, out of time or stopped by SIGTERM runs again when SLURM requeues it, and its runs resume from
their checkpoints. Jobs run a snapshot of the code taken at submission: editing the checkout never changes
queued or running jobs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import multiprocessing
import os
import queue
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import submitit
from tqdm import tqdm

from repro import executors, experiments, layout, records, runs
from repro.config import Parser, RunConfig, add_options, check, plural
from repro.data import DataError, prepare
from repro.runs import State

RUN_LOGGED = 3  # exit code of a run process that logged why it left no record (lock held elsewhere, disk)


def profile_label(config: RunConfig, profile: str) -> str:
    """The plan's profile as its records name it: 'smoke profile', or 'custom profile: smoke with epochs=20 from
    --params' when tuned values change a field that the profiles set (a record's 'profile')."""
    if experiments.profile_of(config) == profile:
        return f"{profile} profile"
    base = experiments.cell_config(**experiments.parse_cell(config.cell), profile=profile)
    keys = sorted({k for fields in experiments.PROFILES.values() for k in fields})
    changed = ", ".join(f"{k}={getattr(config, k)}" for k in keys if getattr(config, k) != getattr(base, k))
    return f"custom profile: {profile} with {changed} from --params"


def to_run(states: dict[RunConfig, State], force: bool, retry_failed: bool) -> list[RunConfig]:
    """The runs to submit, never running ones; seed 0 of every cell first, then seed 1, ...: a campaign
    cut short (a GPU held for minutes, a queue that preempts) leaves whole seeds across the columns, which the
    paired comparisons need."""
    wanted = {"pending", "unusable"} | ({"failed"} if retry_failed or force else set()) \
        | ({"done", "queued"} if force else set())
    return sorted((c for c, state in states.items() if state in wanted), key=lambda c: c.seed)


# ---- inside a job --------------------------------------------------------------------------------------------

def cpu_threads(side_by_side: int) -> int | None:
    """Torch threads for each of that many runs side by side on a CPU: a share of the cores each, not all each.
    None (torch's own choice) on GPUs, and where OMP_NUM_THREADS says how many: torch follows it."""
    if executors.visible_gpus() or os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, len(os.sched_getaffinity(0)) // side_by_side)


def _train(config: dict, log: str, gpu: str | None, threads: int | None) -> None:
    """Entry of one run's process: its output goes to its own log, it sees one GPU (or a share of the CPU)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout.reconfigure(line_buffering=True)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before CUDA starts, which reads it
    # SLURM signals every process of the job; the task's process handles preemption (submitit), not the runs.
    signal.signal(getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG), signal.SIG_IGN)
    import torch

    from repro import train

    if threads:
        torch.set_num_threads(threads)
    print(f"== {config['cell']} seed {config['seed']}, {datetime.datetime.now():%Y-%m-%d %H:%M:%S}, "
          f"code from {Path(train.__file__).parent}", flush=True)
    try:
        record = train.run(RunConfig.from_dict(config))
    except records.Stopped as e:
        print(f"stopped: {e}", flush=True)
        sys.exit(records.STOPPED_EXIT)
    except (records.WriteError, DataError) as e:  # the disk's or the data's fault, not the run's: no record
        print(f"error: {e}; nothing recorded, launching again resumes the run", flush=True)
        sys.exit(RUN_LOGGED)
    if record is None:
        print("another process holds this run's lock: it is trained there", flush=True)
        sys.exit(RUN_LOGGED)


class RunPack(submitit.helpers.Checkpointable):
    """One job task: train `configs`, `runs_per_gpu` at a time on each GPU of the task (or on the CPU), each in a
    process of its own (a crash takes only that run down; it logs to layout.log_path), spawned fresh (no CUDA state
    inherited) with the task's sys.path, so it imports the code snapshot the task runs from. Returns each run's
    state; the records are the results."""

    def __call__(self, configs: list[RunConfig], runs_per_gpu: int) -> list[State]:
        self._started, self._job_id = time.time(), submitit.JobEnvironment().job_id
        self._lock = threading.Lock()
        self._stopping = False  # SIGTERM stopped a run, or the task's signal came: start no more runs
        self._procs: list[multiprocessing.Process] = []
        slots: queue.SimpleQueue = queue.SimpleQueue()
        gpus = executors.visible_gpus() or [None]
        for gpu in gpus * runs_per_gpu:
            slots.put(gpu)
        self._threads = cpu_threads(runs_per_gpu)
        print(f"RunPack: {len(configs)} runs, {len(gpus) * runs_per_gpu} at a time, GPUs {gpus}, "
              f"code from {Path(__file__).parent}", flush=True)
        with ThreadPoolExecutor(len(gpus) * runs_per_gpu) as pool:
            states = list(pool.map(lambda c: self._run(c, slots), configs))
        for config, state in zip(configs, states, strict=True):
            print(f"{state:>9}  {config.cell} seed {config.seed}  log: {layout.log_path(config)}")
        if self._stopping:
            # SIGTERM: SLURM requeues the job (scontrol requeue, preemption) or cancels it. The task must not end
            # as finished. SystemExit, not an Exception: submitit would write any Exception as the job's result,
            # and a result file, even an error, makes the job count as ended while its requeued run trains on.
            print("RunPack: runs stopped by SIGTERM; they resume from their checkpoints when the task runs again",
                  flush=True)
            raise SystemExit(records.STOPPED_EXIT)
        return states

    def _run(self, config: RunConfig, slots: queue.SimpleQueue) -> State:
        """Train the run in a process of its own on a free slot; its state once that process has ended."""
        if runs.state(config) == "done":  # e.g. trained before this array task was requeued
            return "done"
        log = layout.log_path(config)
        gpu = slots.get()
        try:
            with self._lock:
                if self._stopping:
                    return runs.state(config)
                log.parent.mkdir(parents=True, exist_ok=True)
                proc = multiprocessing.get_context("spawn").Process(
                    target=_train, args=(config.to_dict(), str(log), gpu, self._threads), name=config.run_id)
                proc.start()
                self._procs.append(proc)
            proc.join()
        finally:
            slots.put(gpu)
        state, code = runs.state(config), proc.exitcode
        if state in ("done", "failed") or code == RUN_LOGGED:
            ended = ""  # its process said so in its log
        elif self._stopping or code in (records.STOPPED_EXIT, -signal.SIGTERM):  # -SIGTERM: before train.run ran
            ended, self._stopping = "stopped", True
        else:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            ended = f"crashed ({how})"
        if ended != "stopped":  # this array task is done with the run, even if it ended unfinished
            runs.release(config, self._job_id)
        if ended:  # it could not say so itself (kill -9)
            with open(log, "a") as f:
                f.write(f"== {datetime.datetime.now():%Y-%m-%d %H:%M:%S} run process ended without a record: "
                        f"{ended}\n")
        return state

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
    for path in (layout.checkpoint_path(config), layout.record_path(config)):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime >= since:
                return True
    return False


# ---- submission and following --------------------------------------------------------------------------------

def submit(configs: list[RunConfig], kind: str, profile: dict | None, runs_per_gpu: int, folder: Path,
           name: str, snapshot: bool = True) -> list:
    """Submit the runs as one job (an array on SLURM); submitit's jobs, one per task."""
    per_task = max(1, profile["gpus_per_node"]) * runs_per_gpu if kind == "slurm" else len(configs)
    packs = [configs[i:i + per_task] for i in range(0, len(configs), per_task)]
    with executors.submitting(kind, folder, profile, name, snapshot) as executor:
        jobs = executor.map_array(RunPack(), packs, [runs_per_gpu] * len(packs))
        if kind != "debug":  # the debug executor runs its job only when asked for the result
            for job, pack in zip(jobs, packs, strict=True):
                for config in pack:
                    runs.mark_queued(config, kind, job.job_id)
    return jobs


def follow(jobs: list, configs: list[RunConfig]) -> tuple[dict[RunConfig, State], str]:
    """Show progress from the records until every job has ended; returns the final state of each run and its
    note (runs.states)."""
    if executors.run_debug(jobs):
        return runs.states(configs)
    start, last = time.time(), ""
    with tqdm(total=len(configs), unit="run", desc="runs", dynamic_ncols=True,
              disable=not sys.stderr.isatty()) as bar:
        while True:
            states, note = runs.states(configs)
            finished = sum(s in ("done", "failed") for s in states.values())
            counts = runs.counts(states, note)
            bar.update(finished - bar.n)
            bar.set_postfix_str(counts)
            if bar.disable and counts != last:  # a log file, not a terminal: a line per change
                print(f"[{datetime.datetime.now():%H:%M:%S}] {counts}", flush=True)
                last = counts
            # submitit polls the scheduler less often as jobs age: force a look once every run has a record. Runs
            # that another launch trains or holds are waited for too; once our jobs have ended, the states are read
            # again, as a run of a job that just ended is no longer queued.
            if all(job.done(force_check=finished == len(configs)) for job in jobs):
                states, note = runs.states(configs)
                if not {"running", "queued"} & set(states.values()):
                    return states, note
            time.sleep(min(30.0, 1.0 + (time.time() - start) / 20))


def problems(jobs: list, states: dict[RunConfig, State]) -> list[str]:
    """Failed runs, runs that never finished, and jobs that ended with an error of their own."""
    unfinished = [f"NOT FINISHED {c.cell} seed {c.seed}: {state}{last_words(c)} (log: {layout.log_path(c)})"
                  for c, state in states.items() if state not in ("done", "failed")]
    lines = runs.failure_lines(states) + unfinished
    for job in jobs:
        # submitit gives a result file 15 s to appear (slow file systems) before it calls a job failed; with runs
        # unfinished, a task without one (stopped by SIGTERM, cancelled, killed) is expected: no wait for it
        if unfinished and not job.paths.result_pickle.exists():
            lines.append(f"JOB {job.job_id} ended without a result (log: {job.paths.stderr})")
        elif job.exception() is not None:
            lines.append(f"JOB {job.job_id} failed: {executors.job_cause(job.exception())} (log: {job.paths.stderr})")
    return lines


def last_words(config: RunConfig) -> str:
    """': ' and the last line of the run's log, which says how its process ended ('' without a log)."""
    with contextlib.suppress(OSError):
        last = records.last_line(layout.log_path(config).read_text(errors="replace"), "")
        return f": {last}" if last else ""
    return ""


# ---- command line --------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m repro.launch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runs.add_plan_args(p)
    executors.add_args(p)
    p.add_argument("--runs-per-gpu", type=int, default=1, metavar="K",
                   help="runs trained side by side per GPU (default 1)")
    add_options(p, ["compile"], compile="how the runs compile their training step (auto: eager on a CPU, "
                "repro.train.CUDA_COMPILE on a GPU); what `python -m repro.bench --survey` names (README: Speed). "
                "It changes speed, not what a run computes: not part of the run id")
    p.add_argument("--force", action="store_true", help="delete the runs' records and checkpoints; run all again")
    p.add_argument("--retry-failed", action="store_true", help="run the failed runs again (from their checkpoint)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    p.add_argument("--wait", action="store_true", help="follow the jobs with a progress bar, end with a summary")
    add_options(p, ["download"], download="download missing data sets here before submitting (compute nodes often "
                                          "have no internet)")
    return p


def main(argv: list[str] | None = None) -> int:
    return records.command(lambda: launch(parser().parse_args(argv)), bad_input=(DataError,))


def launch(args: argparse.Namespace) -> int:
    check(args.runs_per_gpu >= 1, f"--runs-per-gpu must be at least 1, got {args.runs_per_gpu}")
    kind, profile = executors.from_args(args)
    configs = runs.plan_from_args(args, "compile")
    states, note = runs.states(configs)
    print(f"plan: {args.target} ({profile_label(configs[0], args.profile)}, {args.recipe} recipe): "
          f"{runs.summary(states, note)}")
    todo = to_run(states, args.force, args.retry_failed)
    where = f"slurm, profile {args.cluster}" if kind == "slurm" else kind
    if not todo:
        print("nothing to submit")
        return 0
    print(f"{'would submit' if args.dry_run else 'submitting'} {plural(len(todo), 'run')} ({where}, "
          f"{args.runs_per_gpu} per GPU)")
    if args.dry_run:
        return 0
    check(kind != "slurm" or shutil.which("sbatch") is not None, "--executor slurm: no sbatch on the PATH")
    for dataset in sorted({c.dataset for c in todo}):
        prepare(dataset, todo[0].data_root, args.download)  # a missing data set fails here, not in every job
    for config in todo if args.force else []:  # from scratch, and no job takes them as done
        layout.record_path(config).unlink(missing_ok=True)
        layout.checkpoint_path(config).unlink(missing_ok=True)
    results = configs[0].results_dir
    folder = layout.job_folder(results, args.target)
    jobs = submit(todo, kind, profile, args.runs_per_gpu, folder, f"flexpool-{args.target}", not args.no_snapshot)
    job = jobs[0].job_id.split("_")[0]
    print(f"submitted: job {job}, {len(jobs)} task(s)" + (
        f", in the background on this machine: it goes on after this command returns; stop it: kill -- -{job}"
        if kind == "local" else ""))
    print(f"job logs: {folder}\nrun logs: {layout.run_logs_dir(results)}\nrecords:  {layout.runs_dir(results)}")
    if not args.wait:
        print(f"progress: {runs.status_command(args)}")
        return 0
    try:
        final, note = follow(jobs, todo)
    except KeyboardInterrupt:  # Ctrl-C stops the following, not the jobs (the debug executor's is this process)
        if kind == "debug":
            raise
        print(f"still running: {runs.status_command(args)} to follow", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell says
    print(f"finished: {runs.summary(final, note)}")
    lines = problems(jobs, final)
    for line in lines:
        print(line)
    return 1 if lines else 0


if __name__ == "__main__":
    # Run through the imported module, not __main__: submitit pickles __main__'s classes by value, and then
    # the job would neither import the code snapshot nor find _train for the run processes.
    from repro import launch as _launch  # noqa: PLW0406

    sys.exit(_launch.main())
