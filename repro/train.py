"""Train one run of the paper's recipe and write its record: `python -m repro.train --help`.

The loop reads top to bottom: data on the device, model, optimizer and one-cycle schedule, then per epoch a
seeded shuffle, batched augmentation, the Eq. 3 loss (+ Eq. 2 regulariser), evaluation and a checkpoint. The
host synchronises once per epoch, never per step.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from repro import data, experiments, pooling, records
from repro.config import ConfigError, RunConfig
from repro.models import resnet20
from repro.tracking import Tracker

EVAL_BATCH = 2000
FLEXPOOL_CHANNELS_KEPT = 4  # single channels of each FlexPool kept in the record for the heatmap figures


class TrainingError(RuntimeError):
    """The run itself went wrong (e.g. a non-finite loss); its record is marked failed."""


# --- setup -------------------------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def load_data(config: RunConfig, device: torch.device):
    """(train images, train labels, eval images, eval labels) on the device; eval = val split or test set."""
    images, labels = data.load(config.dataset, config.data_root, "train", config.download)
    if config.val_fraction > 0:
        train_idx, val_idx = data.train_val_split(len(labels), config.val_fraction)
        eval_images, eval_labels = images[val_idx], labels[val_idx]
        images, labels = images[train_idx], labels[train_idx]
    else:
        eval_images, eval_labels = data.load(config.dataset, config.data_root, "test", config.download)
    # Subsets take a fixed random sample, not the first images: Tiny ImageNet's files are sorted by class.
    if config.train_subset:
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))[: config.train_subset]
        images, labels = images[keep], labels[keep]
    if config.test_subset:
        keep = torch.randperm(len(eval_labels), generator=torch.Generator().manual_seed(2))[: config.test_subset]
        eval_images, eval_labels = eval_images[keep], eval_labels[keep]
    return [t.to(device) for t in (images, labels, eval_images, eval_labels)]


def make_model(config: RunConfig, device: torch.device) -> torch.nn.Module:
    info = data.INFO[config.dataset]
    torch.manual_seed(config.seed)
    model = resnet20(info.num_classes, info.in_channels, info.size, config.pool, config.sac, config.dropout)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return model.to(device, memory_format=memory_format)


def make_optimizer(config: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Weight decay on conv and linear weights only: not on BatchNorm, biases, or FlexPool weights (which the
    paper's own regulariser, Eq. 2, governs)."""
    flex = {id(p) for m in model.modules() if isinstance(m, pooling.FlexPool2d) for p in m.parameters()}
    decay = [p for p in model.parameters() if p.dim() > 1 and id(p) not in flex]
    rest = [p for p in model.parameters() if not (p.dim() > 1 and id(p) not in flex)]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    fused = next(model.parameters()).device.type == "cuda"
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, betas=(config.momentum, 0.999), fused=fused)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True, fused=fused)


def make_scheduler(config: RunConfig, optimizer, total_steps: int):
    """The one-cycle LR schedule peaking at config.lr (torch's defaults: 30% warm-up, cosine annealing).
    Momentum is not cycled: the paper names only a one-cycle learning rate, and --momentum keeps its meaning."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps,
                                               cycle_momentum=False)


def steps_per_epoch(n: int, batch_size: int) -> int:
    # The last partial batch is dropped: fixed shapes let compiled / CUDA-graphed steps run without recompiling.
    return max(n // batch_size, 1)


# --- one epoch ---------------------------------------------------------------------------------------------

def loss_fn(outputs, labels: torch.Tensor, model: torch.nn.Module, config: RunConfig) -> torch.Tensor:
    """Eq. 3 (lambda-weighted cross-entropy of each SAC head; one head without SAC) + reg * Eq. 2."""
    heads = outputs if isinstance(outputs, tuple) else (outputs,)
    weights = config.sac_weights if config.sac else (1.0,)
    loss = sum(w * F.cross_entropy(h.float(), labels, label_smoothing=config.label_smoothing)
               for w, h in zip(weights, heads))
    if config.reg:
        loss = loss + config.reg * pooling.regularization(model)
    return loss


def train_epoch(model, optimizer, scheduler, images, labels, config: RunConfig, epoch: int):
    """One pass in a seeded order; returns (mean loss, accuracy) as device tensors (no host sync here)."""
    device = images.device
    info = data.INFO[config.dataset]
    # Seeding per epoch (not once per run) makes a run resumed from any checkpoint identical to an unbroken one.
    torch.manual_seed(config.seed * 1_000_003 + epoch)
    generator = torch.Generator(device).manual_seed(config.seed * 1_000_003 + epoch)
    batch = min(config.batch_size, len(labels))
    steps = steps_per_epoch(len(labels), config.batch_size)
    order = torch.randperm(len(labels), device=device, generator=generator)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    model.train()
    for step in range(steps):
        idx = order[step * batch:(step + 1) * batch]
        x, y = data.normalize(images[idx], info), labels[idx]
        if config.augment:
            x = data.augment(x, generator)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs = model(x)
            loss = loss_fn(outputs, y, model, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        final = outputs[-1] if isinstance(outputs, tuple) else outputs
        loss_sum += loss.detach()
        correct += (final.argmax(1) == y).sum()
    return loss_sum / steps, correct / (steps * batch)


@torch.no_grad()
def evaluate(model, images, labels, config: RunConfig) -> list[float]:
    """Accuracy of each head (the last is the model's prediction), in one host sync."""
    device = images.device
    info = data.INFO[config.dataset]
    model.eval()
    correct = None
    for start in range(0, len(labels), EVAL_BATCH):
        x = data.normalize(images[start:start + EVAL_BATCH], info)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs = model(x)
        heads = outputs if isinstance(outputs, tuple) else (outputs,)
        hits = torch.stack([(h.argmax(1) == labels[start:start + EVAL_BATCH]).sum() for h in heads])
        correct = hits if correct is None else correct + hits
    return (correct.double() / len(labels)).tolist()


# --- what a record holds besides metrics -------------------------------------------------------------------

def flexpool_summary(model: torch.nn.Module) -> dict:
    """Each FlexPool's learned weights, small enough for the record: channel mean and a few single channels."""
    summary = {}
    for name, m in model.named_modules():
        if isinstance(m, pooling.FlexPool2d):
            w = m.pooling_weights().detach().float().cpu()
            summary[name] = {
                "shape": list(w.shape),
                "channel_mean": w.mean(0).tolist(),
                "channels": w[:FLEXPOOL_CHANNELS_KEPT].tolist(),
                "sums": w.sum((1, 2)).tolist(),
            }
    return summary


def flexpool_stats(model: torch.nn.Module) -> dict:
    stats = {}
    for name, m in model.named_modules():
        if isinstance(m, pooling.FlexPool2d):
            w = m.pooling_weights().detach().float()
            stats.update({f"flexpool/{name}/{k}": v for k, v in {
                "mean": w.mean(), "std": w.std(), "min": w.min(), "max": w.max(),
                "channel_sum_dev": (w.sum((1, 2)) - 1).abs().mean()}.items()})
    return {k: float(v) for k, v in stats.items()}


def git_commit() -> str:
    """The commit of the code that runs; the launcher passes it on when jobs run from a code snapshot."""
    if os.environ.get("FLEXPOOL_GIT_COMMIT"):
        return os.environ["FLEXPOOL_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict:
    import torchvision

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {"device": name, "device_type": device.type, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version(), "git_commit": git_commit(),
            "host": socket.gethostname(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def make_record(config: RunConfig, status: str, history: list, started: float, device, error=None,
                model=None) -> dict:
    last = history[-1] if history else {}
    train_s = sum(h["seconds"] for h in history)
    images = sum(h["images"] for h in history)
    return {
        "schema": records.SCHEMA, "run_id": config.run_id, "cell": config.cell, "status": status,
        "error": error, "config": config.to_dict(), "eval_split": config.eval_split,
        "profile": experiments.profile_of(config), "recipe": experiments.recipe_of(config),
        "metrics": {"accuracy": last.get("eval_accuracy"), "head_accuracies": last.get("head_accuracies"),
                    "train_loss": last.get("train_loss")},
        "history": history,
        "timing": {"wall_s": time.time() - started, "train_s": train_s,
                   "images_per_s": images / train_s if train_s else None},
        "env": environment(device),
        "flexpool": flexpool_summary(model) if model is not None else {},
    }


# --- the run -----------------------------------------------------------------------------------------------

def run(config: RunConfig, on_epoch=None) -> dict | None:
    """Train one run (resuming from its checkpoint), write its record and return it.

    Returns the existing record if the run is already completed, and None if another process is training it.
    `on_epoch(entry) -> bool` sees each epoch's history entry; True stops the run early as "pruned" (sweeps).
    """
    with records.exclusive(config) as mine:
        if not mine:
            print(f"run {config.run_id} ({config.cell or config.dataset}) is being trained by another process")
            return None
        if records.run_status(config) == "completed":
            return records.read_record(records.record_path(config))
        return _run_locked(config, on_epoch)


def _run_locked(config: RunConfig, on_epoch) -> dict:
    started = time.time()
    device = resolve_device(config.device)
    history: list[dict] = []
    tracker = Tracker(config)
    model = None
    try:
        images, labels, eval_images, eval_labels = load_data(config, device)
        model = make_model(config, device)
        optimizer = make_optimizer(config, model)
        total_steps = config.epochs * steps_per_epoch(len(labels), config.batch_size)
        scheduler = make_scheduler(config, optimizer, total_steps)
        history = resume(config, model, optimizer, scheduler)
        step_model = torch.compile(model) if config.compile != "off" and device.type == "cuda" else model
        status = "completed"
        bar = tqdm(range(len(history), config.epochs), initial=len(history), total=config.epochs,
                   desc=config.cell or config.dataset, unit="epoch", disable=not sys.stderr.isatty())
        for epoch in bar:
            entry = run_epoch(config, step_model, model, optimizer, scheduler, images, labels, eval_images,
                              eval_labels, epoch)
            history.append(entry)
            save(config, model, optimizer, scheduler, history)
            tracker.log({k: v for k, v in entry.items() if k != "head_accuracies"}
                        | {f"head{i + 1}_accuracy": a for i, a in enumerate(entry["head_accuracies"])}
                        | flexpool_stats(model), step=entry["epoch"])
            report(bar, entry, config)
            if on_epoch is not None and on_epoch(entry):
                status = "pruned"
                break
        bar.close()
        record = make_record(config, status, history, started, device, model=model)
    except (KeyboardInterrupt, SystemExit):
        tracker.finish(exit_code=1)  # preempted or stopped: the checkpoint stays, no record yet
        raise
    except Exception as e:
        record = make_record(config, "failed", history, started, device, error=f"{type(e).__name__}: {e}",
                             model=model)
        records.write_record(record, records.record_path(config))
        tracker.finish(exit_code=1)
        raise
    records.write_record(record, records.record_path(config))
    tracker.finish({"accuracy": record["metrics"]["accuracy"], "status": status,
                    "images_per_s": record["timing"]["images_per_s"]})
    return record


def run_epoch(config, step_model, model, optimizer, scheduler, images, labels, eval_images, eval_labels,
              epoch: int) -> dict:
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss, accuracy = train_epoch(step_model, optimizer, scheduler, images, labels, config, epoch)
    loss, accuracy = loss.item(), accuracy.item()  # the one host sync of the epoch
    seconds = time.perf_counter() - start
    if not math.isfinite(loss):
        raise TrainingError(f"non-finite training loss ({loss}) in epoch {epoch + 1}; lower --lr or check the data")
    heads = evaluate(step_model, eval_images, eval_labels, config)
    trained = steps_per_epoch(len(labels), config.batch_size) * min(config.batch_size, len(labels))
    return {"epoch": epoch + 1, "train_loss": loss, "train_accuracy": accuracy, "eval_accuracy": heads[-1],
            "head_accuracies": heads, "lr": scheduler.get_last_lr()[0], "images": trained,
            "images_per_s": trained / seconds, "seconds": seconds}


def report(bar, entry: dict, config: RunConfig) -> None:
    text = (f"loss {entry['train_loss']:.3f} train {entry['train_accuracy']:.2%} "
            f"{config.eval_split} {entry['eval_accuracy']:.2%} {entry['images_per_s']:.0f} img/s")
    if bar.disable:  # logs of batch jobs: one plain line per epoch
        print(f"[{config.cell or config.dataset} seed {config.seed}] epoch {entry['epoch']}/{config.epochs} {text}",
              flush=True)
    else:
        bar.set_postfix_str(text)


def save(config, model, optimizer, scheduler, history) -> None:
    records.save_checkpoint({"run_id": config.run_id, "model": model.state_dict(),
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "history": history}, records.checkpoint_path(config))


def resume(config, model, optimizer, scheduler) -> list[dict]:
    """The history so far, with model, optimizer and schedule restored; [] when starting fresh."""
    path = records.checkpoint_path(config)
    try:
        state = records.load_checkpoint(path)
    except records.RecordError as e:
        print(f"warning: {e}; starting run {config.run_id} from scratch", file=sys.stderr)
        return []
    if state is None or state.get("run_id") != config.run_id:
        return []
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    print(f"resuming run {config.run_id} after epoch {len(state['history'])} from {path}")
    return state["history"]


# --- command line ------------------------------------------------------------------------------------------

def add_config_arguments(parser: argparse.ArgumentParser, skip=()) -> None:
    """One flag per RunConfig field (underscores become dashes), its help from the field."""
    for f in dataclasses.fields(RunConfig):
        if f.name in skip:
            continue
        flag, help_ = "--" + f.name.replace("_", "-"), f"{f.metadata['help']} (default: {f.default})"
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        elif isinstance(f.default, tuple):
            parser.add_argument(flag, type=float, nargs=len(f.default), default=f.default, help=help_)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default, help=help_)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    names = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(**{k: v for k, v in vars(args).items() if k in names})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m repro.train",
        description="Train ResNet20 once with the paper's recipe (100 epochs, batch 1000, one-cycle LR to 0.1, "
                    "flips and scaling) and write a JSON run record under RESULTS_DIR/runs/. Every column of "
                    "Tables 1 and 2 is reachable: --pool avg|flex, --reg W, --dropout 0.25, --sac. "
                    "Re-running the same command resumes from the last epoch's checkpoint.")
    parser.add_argument("--recipe", choices=list(experiments.RECIPES), default="suite",
                        help="start from this recipe's optimizer and weight decay (suite: SGD + Nesterov, 5e-4; "
                             "paper: Adam, 0); flags given explicitly override it (default: suite)")
    add_config_arguments(parser)
    recipe = parser.parse_known_args(argv)[0].recipe
    parser.set_defaults(**experiments.RECIPES[recipe])
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        record = run(config)
    except (ConfigError, data.DataError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if record is None:
        return 1
    m = record["metrics"]
    heads = " ".join(f"{a:.2%}" for a in m["head_accuracies"] or [])
    print(f"{record['status']}: {config.eval_split} accuracy {m['accuracy']:.2%} (heads: {heads}), "
          f"{record['timing']['images_per_s']:.0f} img/s; record {records.record_path(config)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
