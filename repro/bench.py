"""Training speed of each column's model on this device, one run and K packed runs: `python -m repro.bench`.

It times the real training step of repro.train (augmentation, forward, backward, optimizer, one-cycle schedule)
on CIFAR-shaped synthetic data, and projects the GPU-hours of the paper's tables from the measured images/s.
Results go to results/bench/<device>-<date>.json with provenance. On a CPU it runs a small size: a smoke test
of the machinery, not a speed figure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from repro import data, experiments, train
from repro.config import ConfigError, RunConfig

# Images per epoch of each data set's training split (CIFAR 50k, Fashion-MNIST 60k, Tiny ImageNet 100k).
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "fashion_mnist": 60_000, "tiny_imagenet": 100_000}
HEAVIEST = ("table2", "flexpool-reg-dropout")  # FlexPool + SAC + Reg + Dropout
STEPS_PER_EPOCH = 10


def bench_config(table: str, column: str, args) -> RunConfig:
    return experiments.cell_config(table, "cifar10", column).replace(
        dataset="synthetic", batch_size=args.batch_size, device=args.device, compile=args.compile,
        wandb="disabled")


def measure(config: RunConfig, epochs: int, warmup: int, barrier=None) -> float:
    """Images per second of whole training epochs, after `warmup` untimed epochs (compilation, caches)."""
    device = train.resolve_device(config.device)
    images, labels = data.synthetic("train")
    n = STEPS_PER_EPOCH * config.batch_size
    repeats = -(-n // len(labels))
    images, labels = images.repeat(repeats, 1, 1, 1)[:n].to(device), labels.repeat(repeats)[:n].to(device)
    model = train.make_model(config, device)
    optimizer = train.make_optimizer(config, model)
    steps = train.steps_per_epoch(len(labels), config.batch_size)
    lrs = train.lr_schedule(config, (warmup + epochs) * steps, device)
    step = train.make_step(config, model, optimizer, images, labels)
    for epoch in range(warmup):
        train.train_epoch(step, model, lrs, config, epoch, len(labels), device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    if barrier is not None:
        barrier.wait()  # packed runs start timing together
    start = time.perf_counter()
    for epoch in range(warmup, warmup + epochs):
        loss, _ = train.train_epoch(step, model, lrs, config, epoch, len(labels), device)
    loss.item()
    sync()
    return epochs * steps * config.batch_size / (time.perf_counter() - start)


def _packed_worker(config, epochs, warmup, barrier, results):
    if config.device == "cpu":
        torch.set_num_threads(1)  # packed CPU runs would otherwise fight over every core
    results.put(measure(config, epochs, warmup, barrier))


def measure_packed(config: RunConfig, k: int, epochs: int, warmup: int) -> float:
    """Summed images/s of k runs side by side on one device, each in its own process (as the launcher packs)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_packed_worker, args=(config, epochs, warmup, barrier, results)) for _ in range(k)]
    for p in procs:
        p.start()
    rates = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def projected_hours(images_per_s: float, seeds: int) -> dict:
    """Hours of this device for each target with the full recipe, at the given training rate."""
    epochs = experiments.PROFILES["full"]["epochs"]
    hours = {}
    for target, tables in experiments.TARGETS.items():
        images = len(tables) * len(experiments.COLUMNS) * seeds * epochs * sum(TRAIN_IMAGES.values())
        hours[target] = images / images_per_s / 3600
    return hours


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m repro.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--batch-size", type=int, default=1000 if gpu else 32, help="paper: 1000")
    parser.add_argument("--epochs", type=int, default=3 if gpu else 1, help=f"timed epochs of {STEPS_PER_EPOCH} steps each")
    parser.add_argument("--warmup", type=int, default=2 if gpu else 1, help="untimed epochs first")
    parser.add_argument("--packed", type=int, default=4 if gpu else 2, help="K runs side by side (0: skip)")
    parser.add_argument("--compile", default="default" if gpu else "off",
                        help="torch.compile the model (CUDA only)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per cell for the projected GPU-hours")
    parser.add_argument("--out", default="results/bench", help="folder for the JSON result")
    args = parser.parse_args(argv)
    try:
        if args.batch_size < 1 or args.epochs < 1 or args.warmup < 0 or args.packed < 0 or args.seeds < 1:
            raise ConfigError("--batch-size, --epochs and --seeds must be positive; --warmup, --packed >= 0")
        result = run_bench(args, argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = out / f"{result['env']['device_type']}-{stamp}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


def run_bench(args, argv) -> dict:
    device = train.resolve_device(args.device)
    print(f"device: {train.environment(device)['device']}, batch {args.batch_size}, compile {args.compile}")
    single = {}
    for table in experiments.TABLES:
        for column in experiments.COLUMNS:
            rate = measure(bench_config(table, column, args), args.epochs, args.warmup)
            single[f"{table}/{column}"] = rate
            print(f"  one run   {table}/{column:<22} {rate:>10,.0f} images/s")
    heaviest = single["/".join(HEAVIEST)]
    packed = None
    if args.packed:
        packed = measure_packed(bench_config(*HEAVIEST, args), args.packed, args.epochs, args.warmup)
        print(f"  {args.packed} packed  {'/'.join(HEAVIEST):<29} {packed:>10,.0f} images/s together")
    best = max(heaviest, packed or 0)
    hours = projected_hours(best, args.seeds)
    for target, h in hours.items():
        print(f"  projected {target:<6} with {args.seeds} seeds, full recipe: {h:,.2f} device-hours")
    return {"env": {**train.environment(device), "command": "python -m repro.bench " + " ".join(argv)},
            "settings": vars(args), "images_per_s": {"one_run": single, "packed": packed,
                                                     "packed_runs": args.packed},
            "projected_hours": hours, "seeds": args.seeds}


if __name__ == "__main__":
    sys.exit(main())
