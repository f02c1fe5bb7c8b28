"""Train one run of the paper's recipe and write its record: `python -m repro.train --help`.

The loop reads top to bottom (_run_locked): data on the device, model, optimizer and the one-cycle schedule as a
tensor of learning rates, then per epoch the epoch's random numbers drawn ahead (order, augmentation, dropout
masks: one stream each), one step per batch (augmentation, forward, the Eq. 3 loss + Eq. 2 regulariser, backward,
optimizer.step()), evaluation, the W&B entry and a checkpoint. The host synchronises once per epoch, never per
step. --compile swaps in the same step compiled whole (repro/compiled.py); eager is the reference.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from repro import compiled, data, experiments, layout, pooling, records
from repro.config import (
    ConfigError,
    Parser,
    RunConfig,
    absolute_checkpoint_dir,
    add_options,
    default_data_root,
    field_names,
)
from repro.datasets import DATASETS
from repro.models import STAGE_CHANNELS, resnet20, sac_loss
from repro.tracking import Tracker

EVAL_BATCH = 2000
FLEXPOOL_CHANNELS_KEPT = 4  # single channels of each FlexPool kept in the record for the heatmap figures
FEATURES = STAGE_CHANNELS[-1]  # width of the pooled features that dropout acts on
# history fields W&B does not chart: a list (the heads get one key each), a string, a constant of the job
NOT_LOGGED = ("head_accuracies", "precision", "threads")
# What --compile auto means on a GPU. Unmeasured: eager until `python -m repro.bench --survey` on the GPU that
# trains the tables names a faster mode (README: Speed).
CUDA_COMPILE = "off"
# tqdm's default lock holds a multiprocessing semaphore, registered with the resource tracker of the process that
# started this one (RunPack's task). SLURM's signal to every process of a task kills that tracker, and this
# process's exit would then relaunch one that ends the run's log in "KeyError: '/mp-...'". One bar a process
# needs only a thread lock.
tqdm.set_lock(threading.RLock())


class TrainingError(RuntimeError):
    """The run itself went wrong; its record is marked failed."""


# records.DIVERGED_RULE: a run ends diverged above this many times the loss it started from (start_loss).
DIVERGED_LOSS = 2.0


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


def cpu_bf16_units() -> str:
    """This CPU's bf16 matrix units as torch sees them ('AMX-BF16', 'AVX512-BF16', or '' for none: there bf16 is
    emulated and slower than fp32)."""
    units = [name for name, has in (("AMX-BF16", torch.cpu._is_amx_tile_supported()),
                                    ("AVX512-BF16", torch.cpu._is_avx512_bf16_supported())) if has]
    return " + ".join(units)


def uses_bf16(config: RunConfig, device: torch.device) -> bool:
    if config.precision != "auto":
        return config.precision == "bf16"
    return device.type == "cuda" or bool(cpu_bf16_units())


def precision(config: RunConfig, device: torch.device) -> str:
    return "bf16" if uses_bf16(config, device) else "fp32"


def memory_format(config: RunConfig, device: torch.device) -> torch.memory_format:
    """channels_last goes with bf16 (NHWC is the layout of the tensor cores' and oneDNN's bf16 convolutions);
    fp32 stays the plain reference layout."""
    return torch.channels_last if uses_bf16(config, device) else torch.contiguous_format


def compile_mode(config: RunConfig, device: torch.device) -> str:
    if config.compile != "auto":
        return config.compile
    return CUDA_COMPILE if device.type == "cuda" else "off"  # compiling on a CPU costs more than it saves


def make_model(config: RunConfig, device: torch.device) -> torch.nn.Module:
    info = DATASETS[config.dataset]
    torch.manual_seed(config.seed)
    model = resnet20(info.num_classes, info.in_channels, info.size, config.pool, config.sac, config.dropout)
    return model.to(device, memory_format=memory_format(config, device))


def make_optimizer(config: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Three parameter groups: conv and linear weights (weight decay), BatchNorm parameters and biases (none),
    FlexPool weights (none: the paper's own regulariser, Eq. 2, governs them; learning rate x flex_lr_scale)."""
    flex = [p for m in model.modules() if isinstance(m, pooling.FlexPool2d) for p in m.parameters()]
    is_flex = {id(p) for p in flex}
    decay = [p for p in model.parameters() if p.dim() > 1 and id(p) not in is_flex]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay, "lr_scale": 1.0},
              {"params": rest, "weight_decay": 0.0, "lr_scale": 1.0},
              {"params": flex, "weight_decay": 0.0, "lr_scale": config.flex_lr_scale}]
    groups = [g for g in groups if g["params"]]
    # fused kernels on a GPU; capturable: Adam's step counts stay on the GPU, as CUDA graphs need (a CPU has no
    # capturable Adam)
    cuda = next(model.parameters()).is_cuda
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, betas=(config.momentum, 0.999), capturable=cuda,
                                fused=cuda or None)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True, fused=cuda or None)


def lr_schedule(config: RunConfig, total_steps: int, device: torch.device) -> torch.Tensor:
    """The learning rate of every step, as one tensor on the device: torch's OneCycleLR peaking at config.lr
    (30% warm-up, cosine annealing, from peak/25 down to peak/25e4). Momentum is not cycled: the paper names only
    a one-cycle learning rate, and --momentum keeps its meaning."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps,
                                                   cycle_momentum=False)
    rates = []
    for _ in range(total_steps):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    return torch.tensor(rates, device=device)


def steps_per_epoch(n: int, batch_size: int) -> int:
    # The last partial batch is dropped: fixed shapes let compiled / CUDA-graphed steps run without recompiling.
    return max(n // batch_size, 1)


# --- one step, one epoch -----------------------------------------------------------------------------------

def loss_fn(outputs, labels: torch.Tensor, model: torch.nn.Module, config: RunConfig) -> torch.Tensor:
    """Eq. 3 (lambda-weighted cross-entropy of each SAC head; one head without SAC) + reg * Eq. 2."""
    heads = outputs if isinstance(outputs, tuple) else (outputs,)
    loss = sac_loss(heads, labels, config.sac_weights if config.sac else (1.0,), config.label_smoothing)
    if config.reg:
        loss = loss + config.reg * pooling.regularization(model)
    return loss


def make_step(config: RunConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              images: torch.Tensor, labels: torch.Tensor):
    """step(idx, aug, mask, lr) -> (loss, correct): one training step on the batch images[idx], with the
    augmentation numbers and dropout mask epoch_draws drew for it, at learning rate `lr` (a tensor: no host
    sync)."""
    info, device = DATASETS[config.dataset], images.device
    bf16, memory = uses_bf16(config, device), memory_format(config, device)
    stats = data.mean_std(info, device)
    if device.type == "cuda":  # a seed gives the same run: no convolution backward that adds in varying order
        torch.backends.cudnn.deterministic = True

    def forward(idx, aug, mask):
        x, y = data.normalize(images[idx], stats), labels[idx]
        if aug is not None:
            x = data.augment(x, aug)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = model(x.contiguous(memory_format=memory), mask)
            loss = loss_fn(outputs, y, model, config)
        final = outputs[-1] if isinstance(outputs, tuple) else outputs
        return loss, (final.argmax(1) == y).sum()

    mode = compile_mode(config, device)
    if mode != "off":
        return compiled.make_step(forward, model, optimizer, [images, labels], mode)

    def step(idx, aug, mask, lr):
        loss, correct = forward(idx, aug, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:  # a tensor, which torch.optim takes without a host sync
            group["lr"] = lr * group["lr_scale"]
        optimizer.step()
        return loss.detach(), correct
    return step


def epoch_draws(config: RunConfig, epoch: int, n: int, device: torch.device):
    """(order, aug, masks): the epoch's batches of indices (steps x batch), augmentation numbers and dropout
    masks (None when unused), drawn before the epoch. Each comes from a generator of its own seeded by
    (seed, epoch, stream): the data order and augmentation of a seed are the same in every column, the dropout
    masks draw from neither's stream, and a resumed run draws exactly what an unbroken one would."""
    def stream(k: int) -> torch.Generator:
        seed = int(np.random.SeedSequence((config.seed, epoch, k)).generate_state(1)[0])
        return torch.Generator(device).manual_seed(seed)

    batch, steps = min(config.batch_size, n), steps_per_epoch(n, config.batch_size)
    order = torch.randperm(n, device=device, generator=stream(0))[:steps * batch].view(steps, batch)
    aug = masks = None
    if config.augment:
        aug = torch.rand(steps, batch, data.AUGMENT_DRAWS, device=device, generator=stream(1))
    if config.dropout:
        keep = torch.rand(steps, batch, FEATURES, device=device, generator=stream(2))
        masks = (keep >= config.dropout).float() / (1 - config.dropout)
    return order, aug, masks


def start_loss(config: RunConfig, history: list[dict]) -> float:
    """The loss a run started from: its first step's, and at least a uniform guess's, ln(classes) (Eq. 3's SAC
    weights sum to 1). A small network at initialisation may start above ln(classes); a run judged against that
    alone would be called diverged for not having learned in a short run."""
    uniform_guess = math.log(DATASETS[config.dataset].num_classes)
    return max(uniform_guess, history[0].get("start_loss", uniform_guess))


def train_epoch(config: RunConfig, step, model: torch.nn.Module, lrs: torch.Tensor, epoch: int, n: int):
    """One pass over the n training images in the epoch's seeded order; returns (mean loss, accuracy, the first
    step's loss) as device tensors (no host sync)."""
    order, aug, masks = epoch_draws(config, epoch, n, lrs.device)
    steps = order.shape[0]
    loss_sum = torch.zeros((), device=lrs.device)
    correct = torch.zeros((), device=lrs.device, dtype=torch.int64)
    first = None
    model.train()
    for k in range(steps):
        loss, hits = step(order[k], None if aug is None else aug[k], None if masks is None else masks[k],
                          lrs[epoch * steps + k])
        first = loss.clone() if first is None else first  # a compiled step may reuse its output's memory
        loss_sum += loss
        correct += hits
    return loss_sum / steps, correct / order.numel(), first


@torch.no_grad()
def evaluate(model, images, labels, config: RunConfig) -> list[float]:
    """Accuracy of each head (the last is the model's prediction), in one host sync."""
    device = images.device
    stats, memory = data.mean_std(DATASETS[config.dataset], device), memory_format(config, device)
    model.eval()
    correct = 0
    for start in range(0, len(labels), EVAL_BATCH):
        x = data.normalize(images[start:start + EVAL_BATCH], stats).contiguous(memory_format=memory)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(config, device)):
            outputs = model(x)
        heads = outputs if isinstance(outputs, tuple) else (outputs,)
        hits = torch.stack([(h.argmax(1) == labels[start:start + EVAL_BATCH]).sum() for h in heads])
        correct = correct + hits
    return (correct.double() / len(labels)).tolist()


# --- what a record holds besides metrics -------------------------------------------------------------------

def flexpool_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.pooling_weights().detach().float() for name, m in model.named_modules()
            if isinstance(m, pooling.FlexPool2d)}


def flexpool_summary(model: torch.nn.Module) -> dict:
    """Each FlexPool's learned weights, small enough for the record: channel mean and a few single channels."""
    summary = {}
    for name, w in flexpool_weights(model).items():
        w = w.cpu()
        summary[name] = {"shape": list(w.shape), "channel_mean": w.mean(0).tolist(),
                         "channels": w[:FLEXPOOL_CHANNELS_KEPT].tolist(), "sums": w.sum((1, 2)).tolist()}
    return summary


def flexpool_stats(model: torch.nn.Module) -> dict:
    return {f"flexpool/{name}/{k}": float(v) for name, w in flexpool_weights(model).items() for k, v in {
        "mean": w.mean(), "std": w.std(), "min": w.min(), "max": w.max(),
        "channel_sum_dev": (w.sum((1, 2)) - 1).abs().mean()}.items()}


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


def cpu_model() -> str:
    """The processor's model name as the OS reports it (/proc/cpuinfo on Linux), else platform's guess."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def environment(device: torch.device) -> dict:
    import torchvision

    if device.type == "cuda":
        name, cpu = torch.cuda.get_device_name(device), {}
    else:  # the CPU's model and bf16 units decide its speed and the last digits of its results
        name = cpu_model()
        cpu = {"cpu_bf16_units": cpu_bf16_units() or "none", "cpus": len(os.sched_getaffinity(0))}
    # the threads, like the device, change results in their last digits (README: One run)
    return {"device": name, "device_type": device.type, **cpu, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
            "git_commit": git_commit(), "host": socket.gethostname(),
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


def trained_in(config: RunConfig, device: torch.device, history: list) -> str:
    """The precision of the run's epochs, both in the order they came ('fp32+bf16') where it resumed on a machine
    that trains in another (auto picks by the hardware); an epoch checkpointed by code that did not record its
    precision counts as this machine's."""
    current = precision(config, device)
    return "+".join(dict.fromkeys(h.get("precision", current) for h in history)) or current


def make_record(config: RunConfig, status: str, history: list, started: float, device, model,
                error=None, diverged=None) -> dict:
    last = history[-1] if history else {}
    train_s = sum(h["seconds"] for h in history)
    images = sum(h["images"] for h in history)
    return {
        "schema": records.SCHEMA, "run_id": config.run_id, "cell": config.cell, "status": status,
        "error": error, "diverged": diverged, "config": config.to_dict(), "eval_split": config.eval_split,
        "profile": experiments.profile_of(config), "recipe": experiments.recipe_of(config),
        "metrics": {"accuracy": last.get("eval_accuracy"), "head_accuracies": last.get("head_accuracies"),
                    "train_loss": last.get("train_loss")},
        "history": history,
        # `started` is moved back by the wall time of the run's earlier attempts (see _run_locked)
        "timing": {"wall_s": time.time() - started, "train_s": train_s,
                   "images_per_s": images / train_s if train_s else None},
        "env": environment(device) | {"precision": trained_in(config, device, history)},
        "flexpool": flexpool_summary(model) if model is not None else {},
    }


# --- the run -----------------------------------------------------------------------------------------------

class _StopOnSigterm:
    """The SIGTERM handler while a run trains: raise records.Stopped at once, except inside `held()` (an epoch's
    checkpoint and its W&B entry), where it waits for the end of the block, so the two hold the same epochs.
    Later signals are ignored: W&B must be allowed to finish."""

    def __init__(self):
        self.holding = self.pending = self.stopped = False

    def __call__(self, signum, frame) -> None:
        if self.holding or self.stopped:
            self.pending = True
        else:
            self.stop()

    def stop(self) -> None:
        self.stopped = True
        raise records.Stopped("SIGTERM; the checkpoint of its last finished epoch stays, running it again resumes")

    @contextlib.contextmanager
    def held(self):
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending and not self.stopped:
            self.stop()


def run(config: RunConfig, on_epoch=None) -> dict | None:
    """Train one run (resuming from its checkpoint), write its record and return it; the existing record if the
    run is already completed, None if another process is training it. `on_epoch(entry) -> bool` sees each epoch's
    history entry; True stops the run early as "pruned" (sweeps). SIGTERM stops it with records.Stopped (W&B finished,
    checkpoint kept, no record)."""
    experiments.check_cell(config)
    stop = _StopOnSigterm()
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    previous = signal.getsignal(signal.SIGTERM)
    if main_thread:
        signal.signal(signal.SIGTERM, stop)
    try:
        with records.exclusive(config) as mine:
            if not mine:
                print(f"run {config.run_id} ({config.cell or config.dataset}) is being trained by another process")
                return None
            if records.run_status(config) == "completed":
                return records.read_record(layout.record_path(config))
            return _run_locked(config, on_epoch, stop)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _run_locked(config: RunConfig, on_epoch, stop: _StopOnSigterm) -> dict:
    started = time.time()
    device = resolve_device(config.device)
    history: list[dict] = []
    tracker = Tracker(config)
    model = None
    try:
        images, labels, eval_images, eval_labels = load_data(config, device)
        model, optimizer, history = resume(config, device)
        steps = steps_per_epoch(len(labels), config.batch_size)
        trained = steps * min(config.batch_size, len(labels))  # images an epoch
        lrs = lr_schedule(config, config.epochs * steps, device)
        started -= history[-1].get("wall_s", 0.0) if history else 0.0  # wall time counts every attempt's epochs
        step = make_step(config, model, optimizer, images, labels)  # after resume: a compiled one holds the state
        status, diverged = "completed", None
        bar = tqdm(range(len(history), config.epochs), initial=len(history), total=config.epochs,
                   desc=config.cell or config.dataset, unit="epoch", disable=not sys.stderr.isatty())
        for epoch in bar:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss, accuracy, first = train_epoch(config, step, model, lrs, epoch, len(labels))
            # the one host sync of the epoch
            loss, accuracy, first = torch.stack([loss.float(), accuracy.float(), first.float()]).tolist()
            seconds = time.perf_counter() - start
            if not math.isfinite(loss):  # no epoch after it can mean anything: the run ends here, diverged
                status, diverged = "diverged", {"epoch": epoch + 1, "train_loss": str(loss)}
                model = None  # nor are its weights finite: the record holds no FlexPool summary
                break
            heads = evaluate(model, eval_images, eval_labels, config)
            entry = {"epoch": epoch + 1, "train_loss": loss, "train_accuracy": accuracy, "eval_accuracy": heads[-1],
                     "head_accuracies": heads, "lr": lrs[(epoch + 1) * steps - 1].item(), "images": trained,
                     "images_per_s": trained / seconds, "seconds": seconds, "precision": precision(config, device),
                     "threads": torch.get_num_threads(),
                     "wall_s": time.time() - started}  # the run's wall time so far, across resumes
            if epoch == 0:
                entry["start_loss"] = first  # what DIVERGED_LOSS measures against
            history.append(entry)
            with stop.held():  # an epoch's W&B entry and its checkpoint: both or neither
                logged = tracker.log({k: v for k, v in entry.items() if k not in NOT_LOGGED}
                                     | {f"head{i + 1}_accuracy": a for i, a in enumerate(entry["head_accuracies"])}
                                     | flexpool_stats(model), step=entry["epoch"])
                # SLURM's SIGTERM ends W&B's service too: an epoch it did not write is not checkpointed either,
                # so the resumed run trains and logs it again
                if logged or not stop.pending:
                    save(config, model, optimizer, history)
            report(bar, entry, config)
            if on_epoch is not None and on_epoch(entry):
                status = "pruned"
                break
        bar.close()
        if status == "completed" and history[-1]["train_loss"] > DIVERGED_LOSS * start_loss(config, history):
            status, diverged = "diverged", {"epoch": len(history), "train_loss": history[-1]["train_loss"]}
        record = make_record(config, status, history, started, device, model,
                             diverged=diverged and {**diverged, "rule": records.DIVERGED_RULE})
        records.write_record(record, layout.record_path(config))
        if diverged:
            print(f"diverged: {records.record_state(record)[1]} ({records.DIVERGED_RULE}); record "
                  f"{layout.record_path(config)}", file=sys.stderr)
    except BaseException as e:
        # Stopped (SIGTERM), KeyboardInterrupt: the checkpoint stays, no record yet. A full or read-only disk
        # or missing or corrupt data is not the run's failure either: no record, so a launch resumes the run
        # once the disk takes writes again or the data is mended (a failed record would make it skip the run).
        if isinstance(e, Exception) and not isinstance(e, (records.WriteError, data.DataError)):
            failed = make_record(config, "failed", history, started, device, model,
                                 error=f"{type(e).__name__}: {e}")
            with contextlib.suppress(OSError):  # the disk failed just now: the error raised below says so
                records.write_record(failed, layout.record_path(config))
        tracker.finish(exit_code=1)
        raise
    tracker.finish({"accuracy": record["metrics"]["accuracy"], "status": status,
                    "images_per_s": record["timing"]["images_per_s"]})
    return record


def report(bar, entry: dict, config: RunConfig) -> None:
    text = (f"loss {entry['train_loss']:.3f} train {entry['train_accuracy']:.2%} "
            f"{config.eval_split} {entry['eval_accuracy']:.2%} {entry['images_per_s']:.0f} img/s")
    if bar.disable:  # logs of batch jobs: one plain line per epoch
        print(f"[{config.cell or config.dataset} seed {config.seed}] epoch {entry['epoch']}/{config.epochs} {text}",
              flush=True)
    else:
        bar.set_postfix_str(text)


def save(config, model, optimizer, history) -> None:
    state = optimizer.state_dict()
    for group in state["param_groups"]:  # the float it was built with, not the last step's tensor: as ever
        group["lr"] = optimizer.defaults["lr"]
    records.save_checkpoint({"run_id": config.run_id, "model": model.state_dict(), "optimizer": state,
                             "history": history}, layout.checkpoint_path(config))


def resume(config: RunConfig, device: torch.device):
    """(model, optimizer, history so far): restored from the run's checkpoint (the schedule follows from the
    epoch), or fresh with [] where there is none. A checkpoint that cannot be read or does not fit (a model or
    optimizer whose code changed since) is a warning and a fresh start: the run cannot go on from it."""
    path = layout.checkpoint_path(config)
    model = make_model(config, device)
    optimizer = make_optimizer(config, model)
    try:
        state = records.load_checkpoint(path)
        if state is None:
            return model, optimizer, []
        restore(state, model, optimizer, config)
    except records.RecordError as e:
        print(f"warning: {e}; starting run {config.run_id} from scratch", file=sys.stderr)
        model = make_model(config, device)  # restore may have filled part of it before it failed
        return model, make_optimizer(config, model), []
    print(f"resuming run {config.run_id} after epoch {len(state['history'])} from {path}")
    return model, optimizer, state["history"]


def restore(state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: RunConfig) -> None:
    """A checkpoint's weights and optimizer state into the run's own; RecordError where they do not fit."""
    path = layout.checkpoint_path(config)
    if state["run_id"] != config.run_id:
        raise records.RecordError(f"{path}: the checkpoint of run {state['run_id']}, not of this one")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except Exception as e:  # noqa: BLE001 - torch's checks raise RuntimeError, ValueError, KeyError, ... for a misfit
        raise records.RecordError(f"{path}: does not fit the model or its optimizer ({data.one_line(e)})") from None


# --- command line ------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    """--recipe, and every RunConfig field as an option."""
    p = Parser(
        prog="python -m repro.train",
        description="Train ResNet20 once with the paper's recipe (100 epochs, batch 1000, one-cycle LR to 0.1, "
                    "flips and scaling) and write a JSON run record under RESULTS_DIR/runs/. Every column of "
                    "Tables 1 and 2 is reachable: --pool avg|flex, --reg W, --dropout 0.25, --sac. "
                    "Re-running the same command resumes from the last epoch's checkpoint.")
    p.add_argument("--recipe", choices=list(experiments.RECIPES), default=experiments.DEFAULT_RECIPE,
                   help=f"start from this recipe's optimizer and weight decay ({experiments.recipes_help()}); "
                        "flags given explicitly override it")
    add_options(p)
    return p


def main(argv=None) -> int:
    return records.command(lambda: train_command(argv), bad_input=(data.DataError, TrainingError))


def parse_config(argv) -> RunConfig:
    """The run a `python -m repro.train` command line describes: its recipe's values where no flag sets them."""
    options = parser()
    recipe = options.parse_known_args(argv)[0].recipe
    options.set_defaults(**experiments.RECIPES[recipe])
    args = vars(options.parse_args(argv))
    return RunConfig(**{name: args[name] for name in field_names()})


def train_command(argv) -> int:
    config = parse_config(argv)
    # the record names the data folder used, not '' (the launcher and sweeps resolve it the same way)
    config = config.replace(data_root=str(Path(config.data_root or default_data_root()).resolve()),
                            checkpoint_dir=absolute_checkpoint_dir(config.checkpoint_dir))
    record = run(config)
    if record is None:
        return 1
    if record["status"] == "diverged":  # a finding, recorded (run said so); but no model came of it
        return 1
    m = record["metrics"]
    heads = " ".join(f"{a:.2%}" for a in m["head_accuracies"] or [])
    print(f"{record['status']}: {config.eval_split} accuracy {m['accuracy']:.2%} (heads: {heads}), "
          f"{record['timing']['images_per_s']:.0f} img/s; record {layout.record_path(config)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
