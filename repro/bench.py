"""Training speed on this device, and the device-hours of the tables: `python -m repro.bench --survey`.

A regime is a compile mode and a precision: off/fp32 is eager fp32 (the plain reference), off/bf16 eager bf16
with channels_last, and default/bf16, reduce-overhead/bf16 (CUDA graphs), max-autotune/bf16 compile the whole
training step. The survey times the heaviest column (Table 2, FlexPool + SAC + Reg + Dropout) in every regime
with 1, 2, 4 and 8 runs side by side on the device, each run a process of its own as the launcher packs them
(with --mps the packed ones again under CUDA MPS, started and stopped here), and how long a run takes to get
ready (build, compile, capture; cold, then warm from the compile cache as the launcher's later runs find it).
It names the fastest for whole runs: the most images/s over the shortest full-profile run (Fashion-MNIST),
its preparation counted, so that compiling is chosen only where it pays for itself. Then it times every
column in that regime and projects the device-hours of table1, table2 and all from each column's own speed,
each data set's size and the preparation. Without --survey it does the same for one regime (--regimes) and
fewer runs side by side.

What is timed is repro.train's real step (batch by index, augmentation, forward, Eq. 3 + Eq. 2 loss, backward,
optimizer, one-cycle schedule) with the epoch's random numbers drawn as in training, on CIFAR-shaped synthetic
data; evaluation, checkpoints and starting a run's process are not. One table goes to stdout and a JSON with
provenance (device, torch, commit, date, command) to results/bench/. On a CPU the defaults make a tiny smoke test
of the machinery, not a speed figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import queue
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from repro import data, experiments, records, train
from repro.config import COMPILE_MODES, ConfigError, RunConfig, check, plural

# Training images of each data set (CIFAR 50k, Fashion-MNIST 60k, Tiny ImageNet 100k): what an epoch trains on.
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "fashion_mnist": 60_000, "tiny_imagenet": 100_000}
HEAVIEST = "table2/flexpool-reg-dropout"  # FlexPool + SAC + Reg + Dropout
CELLS = [f"{table}/{column}" for table in experiments.TABLES for column in experiments.COLUMNS]
SCHEDULE_EPOCHS = 100  # the learning rates and random numbers of this many epochs repeat as timing goes on
# The shortest run of the full profile, in images: the one a slow compile costs most (the regime is chosen by it).
SHORTEST_RUN = "fashion_mnist"
SURVEY_REGIMES = {"cuda": ["off/fp32", "off/bf16", "default/bf16", "reduce-overhead/bf16"],
                  "cpu": ["off/fp32", "off/bf16"]}  # compiling takes minutes on a CPU
# (default on a GPU, default on a CPU) of the options whose default depends on the device
DEFAULTS = {"batch_size": (1000, 8), "steps": (10, 2), "seconds": (3.0, 0.0),
            "survey_packing": ([1, 2, 4, 8], [1, 2]), "packing": ([1, 4], [1, 2])}
PREPARE_TIMEOUT_S = 900  # building and compiling one run's step (max-autotune takes minutes)
MPS_CONTROL = "nvidia-cuda-mps-control"
CORES = len(os.sched_getaffinity(0))
WIDTH = 30  # of the first column of the printed table


class BenchError(RuntimeError):
    """A measurement failed (a worker's error, a crash, a time-out): the survey records it and goes on."""


# --- one worker process: one or more runs' steps, timed on command --------------------------------------------

@dataclass
class Prepared:
    config: RunConfig
    device: torch.device
    step: object
    model: torch.nn.Module
    lrs: torch.Tensor
    n: int
    epoch: int = 0

    def train_epoch(self) -> torch.Tensor:
        """One training epoch; returns its mean loss (on the device)."""
        loss, _ = train.train_epoch(self.step, self.model, self.lrs, self.config, self.epoch % SCHEDULE_EPOCHS,
                                    self.n, self.device)
        self.epoch += 1
        return loss


def prepare(config: RunConfig, steps: int) -> Prepared:
    """A run's data (`steps` batches an epoch), model, optimizer, schedule and step, as repro.train.run builds
    them, warmed up: compiled and, in CUDA-graph modes, captured."""
    device = train.resolve_device(config.device)
    images, labels = data.synthetic("train")
    n = steps * config.batch_size
    repeats = -(-n // len(labels))
    images, labels = images.repeat(repeats, 1, 1, 1)[:n].to(device), labels.repeat(repeats)[:n].to(device)
    model = train.make_model(config, device)
    optimizer = train.make_optimizer(config, model)
    lrs = train.lr_schedule(config, SCHEDULE_EPOCHS * steps, device)
    step = train.make_step(config, model, optimizer, images, labels)
    prepared = Prepared(config, device, step, model, lrs, n)
    for _ in range(2):  # the first steps compile, the next ones record CUDA graphs
        prepared.train_epoch().item()
    return prepared


def timed(prepared: Prepared, seconds: float, barrier) -> float:
    """Images per second of whole epochs over at least `seconds` (at least one epoch), after one untimed
    epoch; runs side by side start together at the barrier."""
    prepared.train_epoch().item()
    if barrier is not None:
        barrier.wait(timeout=PREPARE_TIMEOUT_S)
    start, images = time.perf_counter(), 0
    while not images or time.perf_counter() - start < seconds:
        prepared.train_epoch().item()  # one host sync an epoch, as in training
        images += prepared.n
    return images / (time.perf_counter() - start)


def _worker(index: int, commands, replies, barriers: dict) -> None:
    """Commands: ("prepare", key, (config, steps, compile threads)), ("time", key, (seconds, runs side by
    side)), None to end. Replies: (index, key, seconds it took to prepare, or images/s), the value "error: ..."
    where the command failed."""
    cores = torch.get_num_threads()
    prepared: dict[str, Prepared] = {}
    while (command := commands.get()) is not None:
        kind, key, payload = command
        try:
            if kind == "prepare":
                config, steps, torch._inductor.config.compile_threads = payload
                start = time.perf_counter()
                prepared[key] = prepare(config, steps)
                replies.put((index, key, time.perf_counter() - start))
            else:
                seconds, runs = payload
                if prepared[key].device.type == "cpu":  # as the launcher: a share of the cores each
                    torch.set_num_threads(max(1, cores // runs))
                replies.put((index, key, timed(prepared[key], seconds, barriers.get(runs))))
        except Exception as e:  # noqa: BLE001 - every failure is reported, and the survey goes on
            replies.put((index, key, "error: " + data.one_line(e)))


class Pool:
    """`size` worker processes spawned fresh on the device (as the launcher spawns its runs), each holding the
    steps it has prepared; `env` is added to their environment (CUDA MPS)."""

    def __init__(self, size: int, packing: list[int], env: dict | None = None):
        ctx = multiprocessing.get_context("spawn")
        self.replies = ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(size)]
        self.barriers = {k: ctx.Barrier(k) for k in packing if k > 1}  # kept: the workers open them by name
        with _environment(env or {}):
            # not daemons: a daemon may not start processes, and inductor compiles in a pool of its own
            self.procs = [ctx.Process(target=_worker, args=(i, q, self.replies, self.barriers))
                          for i, q in enumerate(self.commands)]
            for proc in self.procs:
                proc.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for q in self.commands:
            q.put(None)
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()

    def ask(self, orders: list[tuple[int, tuple]], timeout: float) -> dict:
        """Send each (worker, command), wait for every reply: {(worker, key): value}."""
        for worker, command in orders:
            self.commands[worker].put(command)
        answers, deadline = {}, time.monotonic() + timeout
        while len(answers) < len(orders):
            try:
                worker, key, value = self.replies.get(timeout=5)
            except queue.Empty:
                dead = [p.exitcode for p in self.procs if p.exitcode is not None]
                if dead:
                    raise BenchError(f"a worker process died (exit code {dead[0]})") from None
                if time.monotonic() > deadline:
                    raise BenchError(f"no answer within {timeout:.0f} s") from None
                continue
            if isinstance(value, str) and value.startswith("error: "):
                raise BenchError(value[len("error: "):])
            answers[worker, key] = value
        return answers


@contextlib.contextmanager
def _environment(env: dict):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def mps_daemon():
    """A CUDA MPS control daemon of this command's own (its own pipe folder, so nothing else on the machine
    joins it), stopped at the end; yields the environment its clients need."""
    folder = Path(tempfile.mkdtemp(prefix="flexpool-mps-"))
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}
    for path in env.values():
        Path(path).mkdir()
    started = subprocess.run([MPS_CONTROL, "-d"], env=os.environ | env, capture_output=True, text=True,
                             timeout=60, check=False)
    if started.returncode:
        raise BenchError(f"{MPS_CONTROL} -d failed: {(started.stderr or started.stdout).strip()}")
    try:
        yield env
    finally:
        subprocess.run([MPS_CONTROL], input="quit\n", env=os.environ | env, capture_output=True, text=True,
                       timeout=120, check=False)
        shutil.rmtree(folder, ignore_errors=True)


# --- the survey ----------------------------------------------------------------------------------------------

def bench_config(cell: str, regime: str, args) -> RunConfig:
    table, column = cell.split("/")
    compile_mode, precision = regime.split("/")
    return experiments.cell_config(table, "cifar10", column).replace(
        cell="", dataset="synthetic", batch_size=args.batch_size, device=args.device, compile=compile_mode,
        precision=precision, wandb="disabled")


def measure_regime(regime: str, packing: list[int], args, env: dict | None = None) -> tuple[dict, dict]:
    """({runs side by side: summed images/s}, {"cold": s, "warm": s} to prepare a run) of the heaviest column
    in one regime. Warm is the slowest of the runs prepared side by side after the first (cold where there is
    only one)."""
    config, size = bench_config(HEAVIEST, regime, args), max(packing)
    with Pool(size, packing, env) as pool:
        # the first alone with every core, the others side by side then find its compiled code in the cache
        [cold] = pool.ask([(0, ("prepare", HEAVIEST, (config, args.steps, CORES)))], PREPARE_TIMEOUT_S).values()
        threads = max(1, CORES // max(1, size - 1))
        warm = pool.ask([(i, ("prepare", HEAVIEST, (config, args.steps, threads))) for i in range(1, size)],
                        PREPARE_TIMEOUT_S).values()
        prepare_s = {"cold": cold, "warm": max(warm, default=cold)}
        print(f"  {regime + (' + MPS' if env else ''):<{WIDTH}} ready in {cold:.1f} s cold, "
              f"{prepare_s['warm']:.1f} s warm", flush=True)
        rates = {}
        for k in packing:
            answers = pool.ask([(i, ("time", HEAVIEST, (args.seconds, k))) for i in range(k)],
                               PREPARE_TIMEOUT_S)
            rates[k] = sum(answers.values())
            name = regime + (" + MPS" if env else "")
            print(f"  {name:<{WIDTH}} {plural(k, 'run'):>7}: {rates[k]:>12,.0f} images/s", flush=True)
    return rates, prepare_s


def measure_columns(regime: str, workers: int, args) -> dict:
    """{cell: images/s of one run} of every column in one regime: prepared side by side, timed one at a time."""
    owner, threads = {cell: i % workers for i, cell in enumerate(CELLS)}, max(1, CORES // workers)
    orders = [(owner[c], ("prepare", c, (bench_config(c, regime, args), args.steps, threads))) for c in CELLS]
    with Pool(workers, [1]) as pool:
        pool.ask(orders, PREPARE_TIMEOUT_S * len(CELLS) / workers)
        rates = {}
        for cell in CELLS:
            [rate] = pool.ask([(owner[cell], ("time", cell, (args.seconds, 1)))], PREPARE_TIMEOUT_S).values()
            rates[cell] = rate
            print(f"  {cell:<{WIDTH}} {rates[cell]:>12,.0f} images/s", flush=True)
    return rates


def survey(args) -> dict:
    """Every regime (and, with --mps, packed again under MPS), then every column in the fastest."""
    results = []
    for regime in args.regimes:
        results.append(_attempt(regime, False, lambda r=regime: measure_regime(r, args.packing, args)))
    if args.mps:
        results += mps_results(args)
    single = {r["regime"]: r["images_per_s"][1] for r in results if not r["mps"] and r["images_per_s"]}
    if not single:
        raise BenchError("every regime failed: " + "; ".join(f"{r['regime']}: {r['error']}" for r in results))
    best = max(({"regime": r["regime"], "mps": r["mps"], "runs": k, "images_per_s": rate,
                 "prepare_s": r["prepare_s"]["warm"], "whole_run_images_per_s": whole_run_rate(rate, k, r)}
                for r in results if r["regime"] in single for k, rate in r["images_per_s"].items()),
               key=lambda b: b["whole_run_images_per_s"])
    gain = best["images_per_s"] / single[best["regime"]]
    if args.no_columns:  # every column at the heaviest one's speed: an upper bound on the hours
        print(f"fastest: {describe(best)}", flush=True)
        columns, speeds = {}, {cell: single[best["regime"]] for cell in CELLS}
    else:
        print(f"fastest: {describe(best)}; every column in {best['regime']}, one run at a time:", flush=True)
        columns = speeds = measure_columns(best["regime"], max(args.packing), args)
    return {"regimes": results, "best": best, "packing_gain": gain, "columns": columns,
            "projected_device_hours": projected_hours(speeds, gain, best, args.seeds)}


def run_images(dataset: str) -> int:
    return experiments.PROFILES["full"]["epochs"] * TRAIN_IMAGES[dataset]


def whole_run_rate(rate: float, runs: int, result: dict) -> float:
    """Summed images/s of `runs` full-profile runs of the shortest data set side by side, each first getting
    ready (warm), then training its share of `rate`."""
    images = run_images(SHORTEST_RUN)
    return runs * images / (result["prepare_s"]["warm"] + runs * images / rate)


def mps_results(args) -> list[dict]:
    packed = [k for k in args.packing if k > 1]
    if shutil.which(MPS_CONTROL) is None or not packed:
        print(f"  MPS: skipped ({MPS_CONTROL} not found)" if packed else "  MPS: skipped (no packed runs)")
        return []
    results = []
    try:
        with mps_daemon() as env:
            for regime in args.regimes:
                results.append(_attempt(regime, True, lambda r=regime: measure_regime(r, packed, args, env)))
    except BenchError as e:
        results.append({"regime": "MPS", "mps": True, "images_per_s": {}, "prepare_s": {}, "error": str(e)})
    return results


def _attempt(regime: str, mps: bool, measure) -> dict:
    try:
        rates, prepare_s = measure()
        return {"regime": regime, "mps": mps, "images_per_s": rates, "prepare_s": prepare_s, "error": None}
    except BenchError as e:
        print(f"  {regime + (' + MPS' if mps else ''):<{WIDTH}} failed: {e}", flush=True)
        return {"regime": regime, "mps": mps, "images_per_s": {}, "prepare_s": {}, "error": str(e)}


def describe(best: dict) -> str:
    mps = " under MPS" if best["mps"] else ""
    return (f"{best['regime']}, {plural(best['runs'], 'run')} side by side{mps}, {best['images_per_s']:,.0f} "
            f"images/s training, {best['whole_run_images_per_s']:,.0f} over whole {SHORTEST_RUN} runs "
            f"(each ready in {best['prepare_s']:.1f} s)")


def projected_hours(columns: dict, gain: float, best: dict, seeds: int) -> dict:
    """Device-hours of each target with the full profile: every cell's epochs over each data set's training
    images at that cell's own measured speed times the packing gain of the fastest regime, and each run's
    preparation (warm) shared by the runs side by side."""
    per_cell_images = sum(run_images(d) for d in TRAIN_IMAGES)
    per_cell_prepare = len(TRAIN_IMAGES) * best["prepare_s"] / best["runs"]
    cell_hours = {cell: seeds * (per_cell_images / (rate * gain) + per_cell_prepare) / 3600
                  for cell, rate in columns.items()}
    return {target: sum(cell_hours[f"{table}/{column}"] for table in tables for column in experiments.COLUMNS)
            for target, tables in experiments.TARGETS.items()}


# --- the report ----------------------------------------------------------------------------------------------

def table(result: dict, args, device: torch.device) -> str:
    packing = sorted({k for r in result["regimes"] for k in r["images_per_s"]} | set(args.packing))
    lines = [f"heaviest column ({HEAVIEST}), images/s summed over the runs side by side:",
             f"  {'regime':<{WIDTH}}" + "".join(f"{plural(k, 'run'):>12}" for k in packing)]
    for r in result["regimes"]:
        name = r["regime"] + (" + MPS" if r["mps"] else "")
        cells = "".join(f"{r['images_per_s'][k]:>12,.0f}" if k in r["images_per_s"] else f"{'-':>12}"
                        for k in packing)
        ready = f"  ready in {r['prepare_s']['cold']:.1f} s cold, {r['prepare_s']['warm']:.1f} s warm" \
            if r["prepare_s"] else ""
        lines.append(f"  {name:<{WIDTH}}{cells}" + (f"  failed: {r['error']}" if r["error"] else ready))
    best = result["best"]
    lines.append(f"fastest: {describe(best)}; {result['packing_gain']:.2f} x one run's training")
    if result["columns"]:
        lines.append(f"every column in {best['regime']}, one run, images/s:")
        lines += [f"  {cell:<{WIDTH}}{rate:>12,.0f}" for cell, rate in result["columns"].items()]
    what = (f"at the speeds above (batch {args.batch_size}, CIFAR's 32x32x3 images; Fashion-MNIST's "
            f"28x28x1 train no slower)")
    if device.type == "cpu":
        what = f"from this CPU smoke test at batch {args.batch_size}: a test of the machinery, not a speed figure"
    epochs = experiments.PROFILES["full"]["epochs"]
    speeds = "each column's own speed" if result["columns"] else "every column at the heaviest one's speed " \
        "(--no-columns: an upper bound)"
    lines.append(f"projected device-hours, {args.seeds} seeds, the full profile ({epochs} epochs over each data "
                 f"set's training images at {speeds}, and each run's preparation; not evaluation), {what}:")
    lines += [f"  {target:<7}{hours:>12,.2f} device-hours"
              for target, hours in result["projected_device_hours"].items()]
    if device.type == "cuda":
        compile_mode, precision = best["regime"].split("/")
        lines.append(f"to adopt it: python -m repro.launch ... --compile {compile_mode} --runs-per-gpu "
                     f"{best['runs']}" + (" with CUDA MPS running" if best["mps"] else "")
                     + (" and precision fp32" if precision == "fp32" else "")
                     + f"; as the default: CUDA_COMPILE = {compile_mode!r} in repro/train.py")
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m repro.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--survey", action="store_true",
                   help=f"every regime ({' '.join(SURVEY_REGIMES['cuda'])} on a GPU; "
                        f"{' '.join(SURVEY_REGIMES['cpu'])} on a CPU) and more runs side by side")
    modes = ", ".join(m for m in COMPILE_MODES if m != "auto")
    p.add_argument("--regimes", nargs="+", metavar="COMPILE/PRECISION",
                   help=f"regimes to time: COMPILE one of {modes}, PRECISION bf16 or fp32 (default: --survey's "
                        f"list, else the one --compile auto and --precision auto train in: "
                        f"{train.CUDA_COMPILE}/bf16 on a GPU, off/fp32 on a CPU); max-autotune/bf16 autotunes "
                        f"for minutes")
    p.add_argument("--packing", nargs="+", type=int, metavar="K",
                   help=f"numbers of runs side by side, each a process of its own (default: "
                        f"{both('survey_packing')} with --survey, else {both('packing')})")
    p.add_argument("--mps", action="store_true",
                   help=f"also time the packed runs under CUDA MPS, which this command starts and stops "
                        f"(needs {MPS_CONTROL})")
    p.add_argument("--no-columns", action="store_true",
                   help="do not time every column in the fastest regime (compiling each takes a while); the "
                        "projection then takes every column at the heaviest one's speed")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--batch-size", type=int,
                   help=f"images per step (default: {both('batch_size')}; paper: 1000)")
    p.add_argument("--steps", type=int, help=f"steps per epoch (default: {both('steps')})")
    p.add_argument("--seconds", type=float,
                   help=f"timed seconds per measurement, in whole epochs, at least one "
                        f"(default: {both('seconds')})")
    p.add_argument("--seeds", type=int, default=5, help="seeds per cell in the projected device-hours "
                                                         "(default: 5)")
    p.add_argument("--out", default="results/bench", help="folder for the JSON result (default: results/bench)")
    return p


def both(name: str) -> str:
    """The GPU's and the CPU's default of an option, for --help."""
    gpu, cpu = (" ".join(map(str, d)) if isinstance(d, list) else d for d in DEFAULTS[name])
    return f"{gpu} on a GPU, {cpu} on a CPU"


def settle(args: argparse.Namespace) -> torch.device:
    """Fill in the defaults that depend on the device; check the rest."""
    device = train.resolve_device(args.device)
    gpu = device.type == "cuda"
    pick = (lambda name: DEFAULTS[name][0 if gpu else 1])
    args.device = str(device)
    for name in ("batch_size", "steps", "seconds"):
        if getattr(args, name) is None:
            setattr(args, name, pick(name))
    args.packing = sorted(set(args.packing or pick("survey_packing" if args.survey else "packing")))
    own = f"{train.compile_mode(RunConfig(), device)}/{'bf16' if gpu else 'fp32'}"
    args.regimes = args.regimes or (SURVEY_REGIMES[device.type] if args.survey else [own])
    check(min(args.batch_size, args.steps, args.seeds, *args.packing) >= 1 and args.seconds >= 0,
          "--batch-size, --steps, --seeds and --packing must be positive, --seconds not negative")
    check(1 in args.packing, "--packing must include 1: the packing gain is against one run")
    for regime in args.regimes:
        compile_mode, _, precision = regime.partition("/")
        check(compile_mode in COMPILE_MODES and compile_mode != "auto" and precision in ("bf16", "fp32"),
              f"unknown regime {regime!r}: COMPILE/PRECISION, e.g. reduce-overhead/bf16")
    return device


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    try:
        device = settle(args)
        print(f"timing repro.train's step: batch {args.batch_size}, epochs of {args.steps} steps, "
              f"{args.seconds:g} s a measurement; regimes {' '.join(args.regimes)}; "
              f"{' '.join(map(str, args.packing))} run(s) side by side", flush=True)
        result = survey(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    env = train.environment(device)  # after the workers: with MPS, nothing here held the GPU before them
    report = table(result, args, device)
    print(f"device: {env['device']}, torch {env['torch']}, commit {env['git_commit']}\n{report}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = Path(args.out) / f"{device.type}-{stamp}.json"
    command = "python -m repro.bench " + " ".join(shlex.quote(a) for a in argv)
    text = json.dumps({"env": env | {"command": command}, "settings": vars(args), "heaviest": HEAVIEST,
                       "seeds": args.seeds, "train_images": TRAIN_IMAGES, **result}, indent=1) + "\n"
    records.atomic_write(path, lambda f: f.write(text.encode()))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
