"""`python -m repro.sweep NAME`: tune what the paper leaves open with Optuna; `--report` exports the best values.

A study (sweeps/NAME.yaml, repro.studies) fixes some RunConfig fields and searches others. A trial trains one run,
scored by its accuracy on a validation split carved from the training set (never the test set); the accuracy of
every epoch goes to the pruner, which stops hopeless trials early.
  storage  SQLite RESULTS/sweeps/NAME.db (one machine); a journal file, NAME.log (safe on NFS, the default with
           --executor slurm); or a database server's SQLAlchemy URL (--storage)
  workers  --workers K jobs, one GPU each, pull trials until the study holds its budget of finished trials:
           launching again tops it up, raising `trials:` adds more
  retries  the trial of a preempted (or dead: heartbeats) worker is retried with the same parameters, hence the
           same run id: it resumes from its last epoch's checkpoint
Trials' records, checkpoints and W&B runs (group sweep/NAME) go to RESULTS/sweeps/NAME/. --export-wandb writes the
study for W&B's own agents (repro.wandb_agent).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sqlite3
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import optuna
import submitit
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from repro import executors, layout, records, runs, wandb_agent
from repro.config import ConfigError, Parser, RunConfig, add_options, check
from repro.experiments import RUNTIME_FIELDS, recipe_of
from repro.studies import SAMPLERS, Study, load_study, make_pruner, sample, suggest

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_RETRY = 3  # a trial that keeps killing its worker is given up after this many retries
RESULTS_HELP = "the study's storage goes to DIR/sweeps/NAME.db, its trials' records, checkpoints and W&B runs to " \
               "DIR/sweeps/NAME/ (checkpoints to CHECKPOINT_DIR/sweeps/NAME/ with --checkpoint-dir)"
RUNTIME = [f for f in RUNTIME_FIELDS if f not in ("cell", "wandb_group")]  # where and how trials run: train's flags


class RunBusy(RuntimeError):
    """Two trials drew the same parameters at once: one run id, trained by the other trial."""


# ---- storage -------------------------------------------------------------------------------------------------

def heartbeat_interface() -> type:
    """optuna's heartbeat interface, which its stale-trial handling looks for in a storage. Private
    (optuna.storages._heartbeat, public only through RDBStorage; optuna capped below 6 in pyproject.toml):
    tests/test_dependencies.py fails with a clear message if optuna changes it."""
    try:
        from optuna.storages._heartbeat import BaseHeartbeat
    except ImportError as e:
        raise ImportError(f"optuna {optuna.__version__} has no optuna.storages._heartbeat.BaseHeartbeat, which "
                          "repro.sweep's journal storage implements: install the optuna of requirements.lock") from e
    return BaseHeartbeat


class HeartbeatJournalStorage(JournalStorage, heartbeat_interface()):
    """A journal file with heartbeats, which optuna 5 gives RDB storages only: a running trial records the time
    every `interval` seconds, and a RUNNING trial silent for twice as long lost its worker; optuna then fails it
    and the callback queues it again."""

    def __init__(self, path: str, interval: int, callback):
        super().__init__(JournalFileBackend(path))
        self.interval, self.callback = interval, callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, "heartbeat", time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        limit = time.time() - 2 * self.interval
        # A retried trial inherits its original's old heartbeat: its own start time counts as its first beat.
        return [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if max(t.system_attrs.get("heartbeat", 0.0), t.datetime_start.timestamp()) < limit]

    def get_heartbeat_interval(self) -> int:
        return self.interval

    def get_heartbeat_stale_trial_callback(self):
        return self.callback


def storage_url(arg: str, root: Path, name: str, kind: str | None) -> str:
    """'' -> the study's SQLite file (its journal file with slurm, or whichever of the two exists); a path ->
    SQLite if it ends in .db, else a journal file; else a SQLAlchemy URL. Paths absolute: workers run in a code
    snapshot, maybe elsewhere."""
    if arg:
        if "://" not in arg:  # a file: SQLite by its suffix, else a journal
            path = Path(arg).resolve()
            return f"sqlite:///{path}" if path.suffix in (".db", ".sqlite", ".sqlite3") else str(path)
        if arg.startswith("sqlite:///") and not arg.startswith("sqlite:////"):
            return "sqlite:///" + str(Path(arg[len("sqlite:///"):]).resolve())
        return arg
    db, journal = layout.study_files(root, name)
    if not db.exists() and (journal.exists() or kind == "slurm"):
        return str(journal)
    return f"sqlite:///{db}"


def storage_file(url: str) -> Path | None:
    """The file a storage lives in (a journal or SQLite); None for a database server."""
    if "://" not in url:
        return Path(url)
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def storage_error(url: str, error: Exception) -> records.WriteError | None:
    """A storage file the file system refused (disk full, read-only folder) as WriteError; None for other errors."""
    path = storage_file(url)
    if isinstance(error, records.WriteError):
        return error
    if isinstance(error, OSError):
        return records.write_error(error.filename or path or url, error)
    if path is not None and isinstance(getattr(error, "orig", None), sqlite3.OperationalError):
        return records.WriteError(f"cannot write {path}: {error.orig}")  # SQLAlchemy's wrapper of SQLite's error
    return None


def retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """A failed or stale trial enqueued again with its epochs so far; built when needed, as optuna warns that
    it is experimental whenever one is made."""
    return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY, inherit_intermediate_values=True)


def open_storage(url: str, heartbeat: int):
    retry = retry_callback()
    path = storage_file(url)
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        if "://" not in url:
            return HeartbeatJournalStorage(url, heartbeat, retry)
        # Two local workers share one SQLite file: wait for its lock instead of failing at once.
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                          heartbeat_stale_trial_callback=retry)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy and drivers raise many kinds for a bad URL
        error = storage_error(url, e) or ConfigError(f"cannot open storage {url}: {' '.join(str(e).split())}")
        raise error from None


def create(study: Study, url: str, heartbeat: int) -> optuna.Study:
    """Create the study once, before any worker starts (two processes creating one fresh SQLite study at once
    crash one of them); refuse a storage whose study of this name was made from a different file."""
    storage = open_storage(url, heartbeat)
    try:
        optuna_study = optuna.create_study(study_name=study.name, storage=storage, direction="maximize",
                                           load_if_exists=True)
        stored, definition = optuna_study.user_attrs.get("definition"), json.loads(json.dumps(
            {"fixed": study.fixed, "space": study.space}))
        if stored is None:
            optuna_study.set_user_attr("definition", definition)
    except Exception as e:  # noqa: BLE001 - the storage's file on a full or read-only disk: one line
        raise (storage_error(url, e) or e) from None
    check(stored in (None, definition),
          f"study {study.name!r} in this storage was created from a different search space or fixed fields; "
          "give the changed study a new name or a new --storage")
    return optuna_study


def existing(study: Study, storage_arg: str, root: Path, heartbeat: int) -> optuna.Study:
    url = storage_url(storage_arg, root, study.name, None)
    path = storage_file(url)
    check(path is None or path.exists(),
          f"no storage {path} yet: launch the study first (python -m repro.sweep {study.name})")
    try:
        return optuna.load_study(study_name=study.name, storage=open_storage(url, heartbeat))
    except KeyError:
        raise ConfigError(f"storage {url} holds no study {study.name!r}") from None


# ---- a worker ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Runtime:
    storage: str  # SQLAlchemy URL or journal file path, absolute
    heartbeat: int  # seconds between a running trial's heartbeats
    fields: dict  # RunConfig fields that do not change results: results_dir (the root), data_root, wandb, ...


def wanted(optuna_study: optuna.Study, budget: int) -> bool:
    """More to do: a retry waits, or finished and running trials fall short of the budget."""
    optuna.storages.fail_stale_trials(optuna_study)
    states = Counter(t.state for t in optuna_study.get_trials(deepcopy=False))
    return states[TrialState.WAITING] > 0 or sum(states[s] for s in (*FINISHED, TrialState.RUNNING)) < budget


def retry(optuna_study: optuna.Study, number: int) -> None:
    """The trial this worker was training when it was preempted: fail it and queue it again, now, rather than
    after its heartbeat goes stale."""
    if optuna_study.trials[number].state == TrialState.RUNNING:
        optuna_study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        retry_callback()(optuna_study, optuna_study.trials[number])


class Worker(submitit.helpers.Checkpointable):
    """One job: train trial after trial until the study holds its budget."""

    def __init__(self, orphan: int | None = None):
        self.orphan = orphan  # the trial a preempted predecessor of this job was training
        self.current: int | None = None

    def __call__(self, study: Study, runtime: Runtime) -> int:
        quiet()
        storage = open_storage(runtime.storage, runtime.heartbeat)
        optuna_study = optuna.load_study(study_name=study.name, storage=storage, sampler=SAMPLERS[study.sampler](),
                                         pruner=make_pruner(study))
        if self.orphan is not None:
            retry(optuna_study, self.orphan)
        trained = 0
        while wanted(optuna_study, study.trials):
            try:
                optuna_study.optimize(lambda trial: self.objective(trial, study, runtime), n_trials=1,
                                      catch=(RunBusy,), callbacks=[lambda s, t: print(progress(s, t, study.trials),
                                                                                        flush=True)])
            except records.Stopped:
                # SIGTERM (SLURM's requeue or preemption, scancel): the trial is queued again at once, not after
                # its heartbeat goes stale, and the job ends unfinished, like a launch's task (RunPack)
                retry(optuna_study, self.current)
                print(f"[{study.name}] stopped by SIGTERM: trial {self.current} is queued again", flush=True)
                raise SystemExit(records.STOPPED_EXIT) from None
            trained += 1
        print(f"[{study.name}] worker done after {trained} trial(s): the study holds its budget", flush=True)
        return trained

    def objective(self, trial: optuna.Trial, study: Study, runtime: Runtime) -> float:
        from repro import train  # torch only where trials train

        self.current = trial.number
        params = sample(study.space, lambda n, s: suggest(trial, n, s))
        folders = {key: str(layout.trials_dir(runtime.fields[key], study.name))
                   for key in ("results_dir", "checkpoint_dir") if runtime.fields.get(key)}
        config = RunConfig.from_dict({
            **study.fixed, **params, **runtime.fields, **folders, "cell": f"sweep/{study.name}/trial{trial.number}",
            "wandb_group": f"sweep/{study.name}"})
        trial.set_user_attr("run_id", config.run_id)

        def on_epoch(entry: dict) -> bool:
            trial.report(entry["eval_accuracy"], entry["epoch"])
            # Pruning after the last epoch would save nothing and hide a finished result.
            return entry["epoch"] < config.epochs and trial.should_prune()

        record = train.run(config, on_epoch)
        if record is None:
            raise RunBusy(f"run {config.run_id} is trained by another trial with the same parameters")
        if record["status"] == "diverged":
            # It learned nothing: scoring it 0 (not failing it) teaches the sampler to avoid such values.
            trial.set_user_attr("diverged", records.record_state(record)[1])
            return 0.0
        if record["status"] == "pruned":
            raise optuna.TrialPruned(f"pruned after epoch {record['history'][-1]['epoch']}")
        return record["metrics"]["accuracy"]

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Preempted or out of time: requeue; the next job first retries the trial this one was training."""
        return submitit.helpers.DelayedSubmission(Worker(self.current), *args, **kwargs)


def quiet() -> None:
    """One line per trial is ours to print; optuna's own log lines and experimental-feature notes are noise."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def params_text(params: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def progress(optuna_study: optuna.Study, trial, budget: int) -> str:
    """A finished trial's line; its count is of the trials finished by then, so lines printed together differ."""
    trials = optuna_study.get_trials(deepcopy=False)
    done = sum(t.state in FINISHED and t.datetime_complete <= trial.datetime_complete for t in trials)
    if trial.state == TrialState.COMPLETE:
        outcome = f"{trial.value:.2%}" + (" (diverged)" if "diverged" in trial.user_attrs else "")
    elif trial.state == TrialState.PRUNED:
        outcome = f"pruned at epoch {max(trial.intermediate_values, default=0)}"
    else:
        outcome = trial.state.name.lower()
    return (f"[{optuna_study.study_name}] trial {trial.number}: {outcome}  {params_text(trial.params)}  "
            f"({done}/{budget})")


# ---- launching workers ---------------------------------------------------------------------------------------

def submit(study: Study, runtime: Runtime, workers: int, kind: str, profile: dict | None, snapshot: bool) -> list:
    name = f"sweep-{study.name}"
    if profile is not None:  # a worker trains one trial at a time: one GPU each
        profile = {**profile, "gpus_per_node": min(profile["gpus_per_node"], 1)}
    folder = layout.job_folder(runtime.fields["results_dir"], name)
    with executors.submitting(kind, folder, profile, name, snapshot) as executor:
        if kind == "slurm":
            return executor.map_array(Worker(), [study] * workers, [runtime] * workers)
        available = executors.local_gpus() if kind == "local" else {"gpus_per_node": 0}
        gpus = list(available.get("visible_gpus", range(available["gpus_per_node"])))
        jobs = []
        for i in range(workers):
            if gpus:  # spread local workers over the GPUs, not all on the first
                executor.update_parameters(gpus_per_node=1, visible_gpus=(gpus[i % len(gpus)],))
            jobs.append(executor.submit(Worker(), study, runtime))
        return jobs


def follow(jobs: list, optuna_study: optuna.Study, budget: int) -> int:
    """Print each trial as it finishes until every worker has ended; 1 if a worker failed."""
    if executors.run_debug(jobs):
        return 0  # its workers printed their trials here
    seen: set[int] = set()
    while True:
        ended = all(job.done() for job in jobs)
        finished = optuna_study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL))
        for trial in sorted(finished, key=lambda t: t.datetime_complete):
            if trial.number not in seen:
                seen.add(trial.number)
                print(progress(optuna_study, trial, budget), flush=True)
        if ended:
            break
        time.sleep(2)
    failed = [job for job in jobs if job.exception() is not None]
    for job in failed:
        print(f"worker {job.job_id} failed: {executors.job_cause(job.exception())} (log: {job.paths.stderr})",
              file=sys.stderr)
    return 1 if failed else 0


def run_study(study: Study, args: argparse.Namespace, runtime_fields: dict) -> int:
    check(args.workers >= 1, f"--workers must be at least 1, got {args.workers}")
    kind, profile = executors.from_args(args)  # before anything is created
    url = storage_url(args.storage, Path(runtime_fields["results_dir"]), study.name, kind)
    check(not (kind == "slurm" and url.startswith("sqlite")),
          f"SQLite ({url}) is for one machine and breaks on NFS: give SLURM workers a journal file "
          f"(--storage {layout.study_files(args.results_dir, study.name)[1]}) or a database server URL")
    runtime = Runtime(url, args.heartbeat, runtime_fields)
    optuna_study = create(study, url, args.heartbeat)
    print(f"study {study.name}: {counts(optuna_study)}, budget {study.trials}; storage {url}")
    if not wanted(optuna_study, study.trials):
        print(f"nothing to do: the study holds its budget (raise trials: in {study.path} to add more)")
        return 0
    jobs = submit(study, runtime, args.workers, kind, profile, not args.no_snapshot)
    print(f"started {len(jobs)} worker(s) ({kind}): job(s) {' '.join(str(j.job_id) for j in jobs)}; logs in "
          f"{jobs[0].paths.folder}; trial records under {layout.trials_dir(runtime_fields['results_dir'], study.name)}")
    if kind == "debug" or args.wait:
        status = follow(jobs, optuna_study, study.trials)
        print(f"study {study.name}: {counts(optuna_study)}")
        return status
    where = f" --results-dir {args.results_dir}" if args.results_dir != RunConfig.results_dir else ""
    where += f" --storage {args.storage}" if args.storage else ""
    print(f"progress and results: python -m repro.sweep {args.study} --report{where}")
    return 0


def counts(optuna_study: optuna.Study) -> str:
    states = Counter(t.state.name.lower() for t in optuna_study.get_trials(deepcopy=False))
    return ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no trials"


# ---- results -------------------------------------------------------------------------------------------------

def report(study: Study, optuna_study: optuna.Study, out: Path, top: int) -> dict:
    """Print the best trials; write the best one's RunConfig values for `repro.launch --params`."""
    complete = sorted(optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value,
                      reverse=True)
    print(f"study {study.name}: {counts(optuna_study)}, budget {study.trials}")
    check(complete, f"study {study.name} has no completed trial yet")
    base = RunConfig.from_dict(study.fixed)
    split = f"{base.dataset} validation accuracy ({base.val_fraction:.0%} of the training set held out)"
    print(f"best {min(top, len(complete))} by {split}:")
    for t in complete[:top]:
        print(f"  trial {t.number:>4}  {t.value:.2%}  {params_text(t.params)}  run {t.user_attrs.get('run_id', '?')}")
    best = complete[0]
    result = {"study": study.name, "objective": split, "recipe": recipe_of(base),
              "value": best.value, "trial": best.number, "run_id": best.user_attrs.get("run_id"),
              "finished_trials": sum(t.state in FINISHED for t in optuna_study.get_trials(deepcopy=False)),
              "params": sample(study.space, lambda name, spec: best.params[name])}
    records.atomic_write(out, lambda f: f.write((json.dumps(result, indent=1) + "\n").encode()))
    print(f"best parameters: {out}\nrun the tables with them: "
          f"python -m repro.launch TARGET --recipe {result['recipe']} --params {out}")
    return result


# ---- command line --------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m repro.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="a study: NAME of sweeps/NAME.yaml, or a path to a .yaml file")
    p.add_argument("--report", action="store_true", help="print the best trials, write the best parameters")
    p.add_argument("--out", metavar="FILE", help="--report: where (default RESULTS/sweeps/NAME.best.json)")
    p.add_argument("--top", type=int, default=10, help="--report: how many trials to list (default 10)")
    p.add_argument("--export-wandb", action="store_true",
                   help="write the study as a W&B sweep, sweeps/wandb-agent/NAME.yaml")
    p.add_argument("--workers", type=int, default=1, metavar="K", help="workers pulling trials (default 1)")
    executors.add_args(p)
    p.add_argument("--storage", default="", metavar="URL|FILE",
                   help="SQLAlchemy URL, a .db file (SQLite) or another file (a journal: safe on NFS); default "
                        "RESULTS/sweeps/NAME.db (NAME.log with slurm)")
    p.add_argument("--heartbeat", type=int, default=60, metavar="S",
                   help="a running trial's heartbeat, seconds; silent for 2*S its worker counts as dead (default 60)")
    p.add_argument("--wait", action="store_true", help="follow the workers, one line per finished trial")
    add_options(p, RUNTIME, results_dir=RESULTS_HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    return records.command(lambda: sweep(parser().parse_args(argv)))


def sweep(args: argparse.Namespace) -> int:
    quiet()
    study = load_study(args.study)
    if args.export_wandb:
        print(f"W&B sweep: {wandb_agent.export(study)}")
        return 0
    fields = runs.field_values(args, RUNTIME)
    if args.report:
        root = Path(fields["results_dir"])
        out = Path(args.out) if args.out else layout.best_params_path(root, study.name)
        report(study, existing(study, args.storage, root, args.heartbeat), out, args.top)
        return 0
    return run_study(study, args, fields)


if __name__ == "__main__":
    # Through the imported module, not __main__: submitit pickles __main__'s classes by value, and the workers
    # would then not import the code snapshot.
    from repro import sweep as _sweep  # noqa: PLW0406

    sys.exit(_sweep.main())
