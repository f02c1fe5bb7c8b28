"""Training speed on this device, and the device-hours of the tables: `python -m repro.bench --survey`.

A regime is a compile mode and a precision: off/fp32 is eager fp32 (the plain reference), off/bf16 eager bf16
with channels_last, and default/bf16, reduce-overhead/bf16 (CUDA graphs), max-autotune/bf16 compile the whole
training step. The survey times the heaviest column (Table 2, FlexPool + SAC + Reg + Dropout) in every regime
with 1, 2, 4 and 8 runs side by side on a GPU (1 and one per core on a CPU, each with its share of the cores),
each run a process of its own as the launcher packs them (with --mps the packed ones again under CUDA MPS,
started and stopped here), and how long a run takes to get ready (build, compile, capture; cold, then warm from
the compile cache as the launcher's later runs find it). It names the fastest for whole runs: the most images/s
over the shortest run of the profile (--profile, --datasets), its preparation counted, so that compiling is
chosen only where it pays for itself. Then it times every column in that regime and projects the device-hours
of table1, table2 and all from each column's own speed, each data set's size and the preparation. Beside the
suite's regimes it times `plain/bf16`: the AvgPool network trained by a plain PyTorch loop as one writes it in
ten minutes (bf16 autocast, channels_last, torch.optim, a random crop and flip), the yardstick for the suite's
own AvgPool column. Without --survey it does the same for one regime (--regimes) and fewer runs side by side.

What is timed is repro.train's real step (batch by index, augmentation, forward, Eq. 3 + Eq. 2 loss, backward,
optimizer, one-cycle schedule) with the epoch's random numbers drawn as in training, at the profile's batch size
on random images shaped like the first data set's; evaluation, checkpoints and starting a run's process are
not. One table goes to stdout and a JSON with provenance (device, torch, commit, date, command) to
results/bench/.
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
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from repro import data, experiments, layout, records, train
from repro.config import COMPILE_MODES, Parser, RunConfig, check, plural
from repro.datasets import DATASETS, table_datasets

HEAVIEST = "table2/flexpool-reg-dropout"  # FlexPool + SAC + Reg + Dropout
CELLS = [f"{table}/{column}" for table in experiments.TABLES for column in experiments.COLUMNS]
SCHEDULE_EPOCHS = 100  # the learning rates and random numbers of this many epochs repeat as timing goes on
PLAIN = "plain"  # the compile mode that names the plain-loop yardstick; it trains the AvgPool column's network
PLAIN_CELL = "table1/avgpool"
SURVEY_REGIMES = {"cuda": ["off/fp32", "off/bf16", "default/bf16", "reduce-overhead/bf16"],
                  "cpu": ["off/fp32", "off/bf16", "default/bf16", "plain/bf16"]}
CORES = len(os.sched_getaffinity(0))
# (default on a GPU, default on a CPU) of the options whose default depends on the device; a CPU packs at most
# one run per core
DEFAULTS = {"steps": (10, 3), "seconds": (3.0, 8.0),
            "survey_packing": ([1, 2, 4, 8], sorted({1, CORES})), "packing": ([1, 4], sorted({1, CORES}))}
PREPARE_TIMEOUT_S = 900  # building and compiling one run's step (max-autotune takes minutes)
MPS_CONTROL = "nvidia-cuda-mps-control"
WIDTH = 30  # of the first column of the printed table


class BenchError(RuntimeError):
    """A measurement failed (a worker's error, a crash, a time-out): the survey records it and goes on."""


@dataclass(frozen=True)
class Settings:
    """What the bench times and projects: its options (`parser`), those that depend on the device filled in."""
    survey: bool
    regimes: list[str]
    packing: list[int]
    mps: bool
    no_columns: bool
    device: str  # resolved: cpu, cuda, cuda:1, ...
    profile: str
    datasets: list[str]
    batch_size: int
    steps: int
    seconds: float
    seeds: int
    out: str


# --- one worker process: one or more runs' steps, timed on command --------------------------------------------

@dataclass
class Prepared:
    config: RunConfig
    step: object
    model: torch.nn.Module
    lrs: torch.Tensor
    n: int
    epoch: int = 0

    def train_epoch(self) -> torch.Tensor:
        loss, *_ = train.train_epoch(self.config, self.step, self.model, self.lrs, self.epoch % SCHEDULE_EPOCHS,
                                    self.n)
        self.epoch += 1
        return loss



def train_images() -> dict[str, int]:
    """An epoch's images of each data set of the tables (repro.datasets), for the projections."""
    return {name: DATASETS[name].train_images for name in table_datasets()}

def prepare(config: RunConfig, steps: int, plain: bool = False) -> Prepared:
    """A run's data (`steps` batches an epoch of random images shaped like its data set's), model, optimizer,
    schedule and step, as repro.train.run builds them (or the plain loop's), warmed up: compiled and, in
    CUDA-graph modes, captured."""
    device, info = train.resolve_device(config.device), DATASETS[config.dataset]
    n, g = steps * config.batch_size, torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, info.in_channels, info.size, info.size), dtype=torch.uint8, generator=g)
    images, labels = images.to(device), torch.randint(0, info.num_classes, (n,), generator=g).to(device)
    model = train.make_model(config, device)
    lrs = train.lr_schedule(config, SCHEDULE_EPOCHS * steps, device)
    if plain:
        step = plain_step(config, model, images, labels)
    else:
        step = train.make_step(config, model, train.make_optimizer(config, model), images, labels)
    prepared = Prepared(config, step, model, lrs, n)
    for _ in range(2):  # the first steps compile, the next ones record CUDA graphs
        prepared.train_epoch().item()
    return prepared


def plain_step(config: RunConfig, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor):
    """The yardstick: a training step as a plain PyTorch loop writes it (bf16 autocast and channels_last where
    the suite uses them, the recipe's torch.optim optimizer at a fixed learning rate, one random crop offset a
    batch and a flip per image), in repro.train's step signature so that it is timed alike; it ignores the
    suite's draws."""
    device, info, pad = images.device, DATASETS[config.dataset], 4
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                                    weight_decay=config.weight_decay)
    bf16, memory = train.uses_bf16(config, device), train.memory_format(config, device)
    stats = data.mean_std(info, device)

    def step(idx, aug, mask, lr):
        x, y = data.normalize(images[idx], stats), labels[idx]
        i, j = torch.randint(0, 2 * pad + 1, (2,)).tolist()
        x = F.pad(x, (pad,) * 4, mode="reflect")[:, :, i:i + info.size, j:j + info.size]
        x = torch.where(torch.rand(len(x), 1, 1, 1, device=device) < 0.5, x.flip(3), x)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x.contiguous(memory_format=memory))
        loss = F.cross_entropy(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), (out.argmax(1) == y).sum()
    return step


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


def _worker(index: int, commands, replies, barriers: dict, env: dict) -> None:
    """Commands: ("prepare", key, (config, steps, compile threads, torch threads, plain loop?)), ("time", key,
    (seconds, runs side by side)), None to end. Replies: (index, key, seconds it took to prepare, or images/s),
    the value "error: ..." where the command failed. On a CPU the step trains with the torch threads it was
    prepared with: inductor writes its CPU kernels for the thread count they are compiled at. `env` joins the
    environment first, before anything starts CUDA, which reads it then (CUDA MPS's pipe folder)."""
    os.environ.update(env)
    prepared: dict[str, Prepared] = {}
    while (command := commands.get()) is not None:
        kind, key, payload = command
        try:
            if kind == "prepare":
                config, steps, torch._inductor.config.compile_threads, threads, plain = payload
                torch.set_num_threads(threads)
                start = time.perf_counter()
                prepared[key] = prepare(config, steps, plain)
                replies.put((index, key, time.perf_counter() - start))
            else:
                seconds, runs = payload
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
        # not daemons: a daemon may not start processes, and inductor compiles in a pool of its own
        self.procs = [ctx.Process(target=_worker, args=(i, q, self.replies, self.barriers, env or {}))
                      for i, q in enumerate(self.commands)]
        for proc in self.procs:
            proc.start()

    def __enter__(self):
        return self

    def __exit__(self, error, *exc) -> None:
        for q in self.commands:
            q.put(None)
        for proc in self.procs:
            proc.join(timeout=0 if error else 30)  # after a failure or a stop, a busy worker is not waited for
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
def mps_daemon():
    """A CUDA MPS control daemon of this command's own (its own pipe folder, so nothing else on the machine
    joins it), stopped at the end; yields the environment its clients need."""
    with tempfile.TemporaryDirectory(prefix="flexpool-mps-", ignore_cleanup_errors=True) as folder:
        env = {"CUDA_MPS_PIPE_DIRECTORY": f"{folder}/pipe", "CUDA_MPS_LOG_DIRECTORY": f"{folder}/log"}
        for path in env.values():
            os.mkdir(path)
        started = subprocess.run([MPS_CONTROL, "-d"], env=os.environ | env, capture_output=True, text=True,
                                 timeout=60, check=False)
        if started.returncode:
            raise BenchError(f"{MPS_CONTROL} -d failed: {(started.stderr or started.stdout).strip()}")
        try:
            yield env
        finally:
            subprocess.run([MPS_CONTROL], input="quit\n", env=os.environ | env, capture_output=True, text=True,
                           timeout=120, check=False)


# --- the survey ----------------------------------------------------------------------------------------------

def is_plain(regime: str) -> bool:
    return regime.split("/")[0] == PLAIN


def bench_config(cell: str, regime: str, settings: Settings) -> RunConfig:
    table, column = cell.split("/")
    compile_mode, precision = regime.split("/")
    return experiments.cell_config(table, settings.datasets[0], column, settings.profile).replace(
        cell="", batch_size=settings.batch_size, device=settings.device,
        compile="off" if is_plain(regime) else compile_mode, precision=precision, wandb="disabled")


def measure_regime(regime: str, packing: list[int], settings: Settings, env: dict | None = None) -> tuple[dict, dict]:
    """({runs side by side: summed images/s}, {"cold": s, "warm": s, "warm_by_runs": {runs: s}} to prepare a
    run) of the heaviest column (the plain loop: the AvgPool network) in one regime. Cold: the first run alone;
    warm: the slowest of the runs prepared side by side after it (from the compile cache). On a GPU the runs are
    prepared once for every packing; on a CPU again for each, with the share of the cores each run trains with
    (the launcher's), for which inductor writes its kernels."""
    plain, cpu = is_plain(regime), settings.device == "cpu"
    cell = PLAIN_CELL if plain else HEAVIEST
    config, name = bench_config(cell, regime, settings), regime + (" + MPS" if env else "")

    def order(worker: int, compile_threads: int, runs: int) -> tuple:
        threads = max(1, CORES // runs) if cpu else torch.get_num_threads()
        return worker, ("prepare", cell, (config, settings.steps, compile_threads, threads, plain))

    rates, warm, cold = {}, {}, None
    with Pool(max(packing), packing, env) as pool:
        for k in packing:
            if cpu or not warm:
                # worker 0 alone, with every core to compile; then `runs` again side by side, finding its compiled
                # code in the cache: the slowest of them
                runs = k if cpu else max(packing)
                [first] = pool.ask([order(0, CORES, runs)], PREPARE_TIMEOUT_S).values()
                again = pool.ask([order(i, max(1, CORES // runs), runs) for i in range(runs)], PREPARE_TIMEOUT_S)
                cold, warm[k] = first if cold is None else cold, max(again.values())
                print(f"  {name:<{WIDTH}} ready in {cold:.1f} s cold, {warm[k]:.1f} s warm", flush=True)
            answers = pool.ask([(i, ("time", cell, (settings.seconds, k))) for i in range(k)], PREPARE_TIMEOUT_S)
            rates[k] = sum(answers.values())
            print(f"  {name:<{WIDTH}} {plural(k, 'run'):>7}: {rates[k]:>12,.0f} images/s", flush=True)
    by_runs = {k: warm.get(k, warm[packing[0]]) for k in packing}
    return rates, {"cold": cold, "warm": by_runs[packing[0]], "warm_by_runs": by_runs}


def measure_columns(regime: str, workers: int, settings: Settings) -> dict:
    """{cell: images/s of one run} of every column in one regime: prepared side by side, timed one at a time."""
    owner, threads = {cell: i % workers for i, cell in enumerate(CELLS)}, max(1, CORES // workers)
    orders = [(owner[c], ("prepare", c, (bench_config(c, regime, settings), settings.steps, threads, CORES,
                                         False))) for c in CELLS]
    with Pool(workers, [1]) as pool:
        pool.ask(orders, PREPARE_TIMEOUT_S * len(CELLS) / workers)
        rates = {}
        for cell in CELLS:
            [rates[cell]] = pool.ask([(owner[cell], ("time", cell, (settings.seconds, 1)))],
                                     PREPARE_TIMEOUT_S).values()
            print(f"  {cell:<{WIDTH}} {rates[cell]:>12,.0f} images/s", flush=True)
    return rates


def survey(settings: Settings) -> dict:
    """Every regime (and, with --mps, packed again under MPS), then every column in the fastest."""
    results = [_attempt(r, False, lambda r=r: measure_regime(r, settings.packing, settings))
               for r in settings.regimes]
    if settings.mps:
        results += mps_results(settings)
    single = {r["regime"]: r["images_per_s"][1] for r in results if not r["mps"] and r["images_per_s"]}
    suite = {regime: rate for regime, rate in single.items() if not is_plain(regime)}
    if not suite:
        raise BenchError("every regime failed: " + "; ".join(f"{r['regime']}: {r['error']}" for r in results))
    shortest = run_images(min(settings.datasets, key=train_images().get), settings.profile)
    best = max(({"regime": r["regime"], "mps": r["mps"], "runs": k, "images_per_s": rate,
                 "prepare_s": warm_s(r, k), "whole_run_images_per_s": whole_run_rate(rate, k, r, shortest)}
                for r in results if r["regime"] in suite for k, rate in r["images_per_s"].items()),
               key=lambda b: b["whole_run_images_per_s"])
    gain = best["images_per_s"] / single[best["regime"]]
    if settings.no_columns:  # every column at the heaviest one's speed: an upper bound on the hours
        print(f"fastest: {best_text(best, settings)}", flush=True)
        columns, speeds = {}, {cell: single[best["regime"]] for cell in CELLS}
    else:
        print(f"fastest: {best_text(best, settings)}; every column in {best['regime']}, one run at a time:", flush=True)
        columns = speeds = measure_columns(best["regime"], max(settings.packing), settings)
    return {"regimes": results, "best": best, "packing_gain": gain, "columns": columns,
            "speedups": speedups(single, best, gain, columns),
            "projected_device_hours": projected_hours(speeds, gain, best, settings)}


def speedups(single: dict, best: dict, gain: float, columns: dict) -> dict:
    """The fastest regime over its yardsticks, the ratios SPEEDUP_WORDS names; "the fastest way" is one run's
    speed x the packing gain of the heaviest column, the plain loop as written is one process on every core."""
    out = {}
    if "off/fp32" in single:
        out["over_eager_fp32"] = best["images_per_s"] / single["off/fp32"]
    plain = next((rate for regime, rate in single.items() if is_plain(regime)), None)
    if plain and PLAIN_CELL in columns:
        out["avgpool_over_plain_loop"] = columns[PLAIN_CELL] / plain
        out["avgpool_packed_over_plain_loop"] = columns[PLAIN_CELL] * gain / plain
    return out


def run_images(dataset: str, profile: str) -> int:
    return experiments.PROFILES[profile]["epochs"] * train_images()[dataset]


def whole_run_rate(rate: float, runs: int, result: dict, images: int) -> float:
    """Summed images/s of `runs` runs of `images` images side by side, each first getting ready (warm), then
    training its share of `rate`."""
    return runs * images / (warm_s(result, runs) + runs * images / rate)


def warm_s(result: dict, runs: int) -> float:
    """Seconds a run takes to get ready (warm) with `runs` side by side: measured for each on a CPU."""
    return result["prepare_s"].get("warm_by_runs", {}).get(runs, result["prepare_s"]["warm"])


def mps_results(settings: Settings) -> list[dict]:
    packed = [k for k in settings.packing if k > 1]
    if shutil.which(MPS_CONTROL) is None or not packed:
        print(f"  MPS: skipped ({MPS_CONTROL} not found)" if packed else "  MPS: skipped (no packed runs)")
        return []
    try:
        with mps_daemon() as env:
            return [_attempt(regime, True, lambda r=regime: measure_regime(r, packed, settings, env))
                    for regime in settings.regimes]
    except BenchError as e:  # the daemon did not start
        return [{"regime": "MPS", "mps": True, "images_per_s": {}, "prepare_s": {}, "error": str(e)}]


def _attempt(regime: str, mps: bool, measure) -> dict:
    result = {"regime": regime, "mps": mps, "images_per_s": {}, "prepare_s": {}, "error": None}
    try:
        result["images_per_s"], result["prepare_s"] = measure()
    except BenchError as e:
        print(f"  {regime + (' + MPS' if mps else ''):<{WIDTH}} failed: {e}", flush=True)
        result["error"] = str(e)
    return result


def best_text(best: dict, settings: Settings) -> str:
    mps = " under MPS" if best["mps"] else ""
    shortest = min(settings.datasets, key=train_images().get)
    return (f"{best['regime']}, {plural(best['runs'], 'run')} side by side{mps}, {best['images_per_s']:,.0f} "
            f"images/s training, {best['whole_run_images_per_s']:,.0f} over whole {shortest} runs of the "
            f"{settings.profile} profile (each ready in {best['prepare_s']:.1f} s)")


def projected_hours(columns: dict, gain: float, best: dict, settings: Settings) -> dict:
    """Device-hours of each target with the profile over the data sets: every cell's epochs over each data
    set's training images at that cell's own measured speed times the packing gain of the fastest regime, and
    each run's preparation (warm) shared by the runs side by side."""
    per_cell_images = sum(run_images(d, settings.profile) for d in settings.datasets)
    per_cell_prepare = len(settings.datasets) * best["prepare_s"] / best["runs"]
    cell_hours = {cell: settings.seeds * (per_cell_images / (rate * gain) + per_cell_prepare) / 3600
                  for cell, rate in columns.items()}
    return {target: sum(cell_hours[f"{table}/{column}"] for table in tables for column in experiments.COLUMNS)
            for target, tables in experiments.TARGETS.items()}


# --- the report ----------------------------------------------------------------------------------------------

def table(result: dict, settings: Settings, device: torch.device) -> str:
    packing = sorted({k for r in result["regimes"] for k in r["images_per_s"]} | set(settings.packing))
    title = f"heaviest column ({HEAVIEST}; {PLAIN}: the plain loop on {PLAIN_CELL}'s network)"
    lines = [f"{title}, images/s summed over the runs side by side:",
             f"  {'regime':<{WIDTH}}" + "".join(f"{plural(k, 'run'):>12}" for k in packing)]
    for r in result["regimes"]:
        name = r["regime"] + (" + MPS" if r["mps"] else "")
        cells = "".join(f"{r['images_per_s'][k]:>12,.0f}" if k in r["images_per_s"] else f"{'-':>12}"
                        for k in packing)
        ready = f"  ready in {r['prepare_s']['cold']:.1f} s cold, {r['prepare_s']['warm']:.1f} s warm" \
            if r["prepare_s"] else ""
        lines.append(f"  {name:<{WIDTH}}{cells}" + (f"  failed: {r['error']}" if r["error"] else ready))
    best = result["best"]
    lines.append(f"fastest: {best_text(best, settings)}; {result['packing_gain']:.2f} x one run's training")
    if result["columns"]:
        lines.append(f"every column in {best['regime']}, one run, images/s:")
        lines += [f"  {cell:<{WIDTH}}{rate:>12,.0f}" for cell, rate in result["columns"].items()]
    lines += [f"{SPEEDUP_WORDS[name]}: {ratio:.2f} x" for name, ratio in result["speedups"].items()]
    speeds = "each column's own speed" if result["columns"] else "every column at the heaviest one's speed " \
        "(--no-columns: an upper bound)"
    lines.append(f"projected device-hours, {settings.seeds} seeds, {' '.join(settings.datasets)}, "
                 f"{experiments.profile_words(settings.profile)}: its epochs over each data set's training images at "
                 f"{speeds}, and each run's preparation (not evaluation), at the speeds above:")
    lines += [f"  {target:<7}{hours:>12,.2f} device-hours"
              for target, hours in result["projected_device_hours"].items()]
    compile_mode, precision = best["regime"].split("/")
    executor = "--executor local " if device.type == "cpu" else ""
    lines.append(f"to adopt it: python -m repro.launch ... --profile {settings.profile} {executor}--compile "
                 f"{compile_mode} --runs-per-gpu {best['runs']}" + (" with CUDA MPS running" if best["mps"] else "")
                 + (" and precision fp32" if precision == "fp32" else "")
                 + (f"; as the default: CUDA_COMPILE = {compile_mode!r} in repro/train.py"
                    if device.type == "cuda" else ""))
    return "\n".join(lines)


SPEEDUP_WORDS = {
    "over_eager_fp32": "fastest regime (heaviest column, its runs side by side) over one eager fp32 run",
    "avgpool_over_plain_loop": "AvgPool column in the fastest regime over the plain loop, one run each",
    "avgpool_packed_over_plain_loop": "AvgPool column run the fastest way (x the packing gain) over the plain "
                                      "loop in one process",
}


# --- command line --------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m repro.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--survey", action="store_true",
                   help=f"every regime ({' '.join(SURVEY_REGIMES['cuda'])} on a GPU; "
                        f"{' '.join(SURVEY_REGIMES['cpu'])} on a CPU) and more runs side by side")
    modes = ", ".join(m for m in COMPILE_MODES if m != "auto")
    p.add_argument("--regimes", nargs="+", metavar="COMPILE/PRECISION",
                   help=f"regimes to time: COMPILE one of {modes}, or {PLAIN} (the plain-loop yardstick), "
                        f"PRECISION bf16 or fp32 (default: --survey's list, else the one --compile auto and "
                        f"--precision auto train in: {train.CUDA_COMPILE}/bf16 on a GPU, off/bf16 on a CPU with "
                        f"bf16 units, else off/fp32); max-autotune/bf16 autotunes for minutes")
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
    p.add_argument("--profile", default="full", choices=list(experiments.PROFILES),
                   help=f"the runs to project: {experiments.profiles_help()} (default: full)")
    p.add_argument("--datasets", nargs="+", default=list(train_images()), metavar="D",
                   help=f"the data sets to project, timed on images shaped like the first's "
                        f"(default: {' '.join(train_images())})")
    p.add_argument("--batch-size", type=int, help="images per step (default: the profile's; paper: 1000)")
    p.add_argument("--steps", type=int, help=f"steps per epoch (default: {both('steps')})")
    p.add_argument("--seconds", type=float,
                   help=f"timed seconds per measurement, in whole epochs, at least one "
                        f"(default: {both('seconds')})")
    p.add_argument("--seeds", type=int, default=5, help="seeds per cell in the projected device-hours "
                                                         "(default: 5)")
    out = layout.bench_dir(RunConfig.results_dir)
    p.add_argument("--out", default=str(out), help=f"folder for the JSON result (default: {out})")
    return p


def both(name: str) -> str:
    """The GPU's and the CPU's default of an option, for --help."""
    gpu, cpu = (" ".join(map(str, d)) if isinstance(d, list) else d for d in DEFAULTS[name])
    return f"{gpu} on a GPU, {cpu} on a CPU"


def settle(args: argparse.Namespace) -> Settings:
    """The options with the defaults that depend on the device filled in; checked."""
    device = train.resolve_device(args.device)
    pick = (lambda name: DEFAULTS[name][0 if device.type == "cuda" else 1])
    unknown = sorted(set(args.datasets) - set(train_images()))
    check(not unknown, f"unknown data set(s) {', '.join(unknown)}; choose from {', '.join(train_images())}")
    default = RunConfig()
    own = f"{train.compile_mode(default, device)}/{train.precision(default, device)}"
    settings = Settings(**vars(args) | {
        "device": str(device),
        "steps": pick("steps") if args.steps is None else args.steps,
        "seconds": pick("seconds") if args.seconds is None else args.seconds,
        "batch_size": experiments.PROFILES[args.profile]["batch_size"] if args.batch_size is None else args.batch_size,
        "packing": sorted(set(args.packing or pick("survey_packing" if args.survey else "packing"))),
        "regimes": args.regimes or (SURVEY_REGIMES[device.type] if args.survey else [own])})
    check(min(settings.batch_size, settings.steps, settings.seeds, *settings.packing) >= 1 and settings.seconds >= 0,
          "--batch-size, --steps, --seeds and --packing must be positive, --seconds not negative")
    check(1 in settings.packing, "--packing must include 1: the packing gain is against one run")
    for regime in settings.regimes:
        compile_mode, _, precision = regime.partition("/")
        check((compile_mode in COMPILE_MODES or compile_mode == PLAIN) and compile_mode != "auto"
              and precision in ("bf16", "fp32"),
              f"unknown regime {regime!r}: COMPILE/PRECISION, e.g. reduce-overhead/bf16")
    return settings


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return records.command(lambda: bench(argv), faults=(BenchError,))


def bench(argv: list[str]) -> int:
    settings = settle(parser().parse_args(argv))
    print(f"timing repro.train's step: batch {settings.batch_size}, epochs of {settings.steps} steps, "
          f"{settings.seconds:g} s a measurement; regimes {' '.join(settings.regimes)}; "
          f"{' '.join(map(str, settings.packing))} run(s) side by side", flush=True)
    result = survey(settings)
    device = torch.device(settings.device)
    env = train.environment(device)  # after the workers: with MPS, nothing here held the GPU before them
    report = table(result, settings, device)
    print(f"device: {env['device']}, torch {env['torch']}, commit {env['git_commit']}\n{report}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = Path(settings.out) / f"{device.type}-{stamp}.json"
    command = "python -m repro.bench " + " ".join(shlex.quote(a) for a in argv)
    text = json.dumps({"env": env | {"command": command}, "settings": asdict(settings), "heaviest": HEAVIEST,
                       "seeds": settings.seeds, "train_images": train_images(), **result}, indent=1) + "\n"
    records.atomic_write(path, lambda f: f.write(text.encode()))
    print(f"wrote {path}")
    return 0


def stop(signum, frame) -> None:
    raise records.Stopped("SIGTERM")  # unwinds through the pools, which stop their workers


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop)
    sys.exit(main())
