"""Train one run of the paper's recipe and write its record: `python -m repro.train --help`.

The loop reads top to bottom: data on the device, model, optimizer and the one-cycle schedule as a tensor, then
per epoch the epoch's random numbers drawn ahead (order, augmentation, dropout masks: one stream each), one step
function per batch (augmentation, the Eq. 3 loss + Eq. 2 regulariser, backward, optimizer; eager, or compiled
whole with --compile), evaluation, the W&B entry and a checkpoint. The host synchronises once per epoch, never
per step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.optim.adam import adam as functional_adam
from torch.optim.sgd import sgd as functional_sgd
from tqdm import tqdm

from repro import data, experiments, pooling, records
from repro.config import ConfigError, RunConfig, default_data_root
from repro.models import STAGE_CHANNELS, resnet20, sac_loss
from repro.tracking import Tracker

EVAL_BATCH = 2000
FLEXPOOL_CHANNELS_KEPT = 4  # single channels of each FlexPool kept in the record for the heatmap figures
FEATURES = STAGE_CHANNELS[-1]  # width of the pooled features that dropout acts on
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # compile modes that replay the step as a CUDA graph
# What --compile auto means on a GPU. Unmeasured: eager until `python -m repro.bench --survey` on the GPU that
# trains the tables names a faster mode (README: Speed).
CUDA_COMPILE = "off"


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


def memory_format(config: RunConfig, device: torch.device) -> torch.memory_format:
    """channels_last goes with bf16 (NHWC is the layout of the tensor cores' and oneDNN's bf16 convolutions);
    fp32 stays the plain reference layout."""
    return torch.channels_last if uses_bf16(config, device) else torch.contiguous_format


def compile_mode(config: RunConfig, device: torch.device) -> str:
    if config.compile != "auto":
        return config.compile
    return CUDA_COMPILE if device.type == "cuda" else "off"  # compiling on a CPU costs more than it saves


def make_model(config: RunConfig, device: torch.device) -> torch.nn.Module:
    info = data.INFO[config.dataset]
    torch.manual_seed(config.seed)
    model = resnet20(info.num_classes, info.in_channels, info.size, config.pool, config.sac, config.dropout)
    return model.to(device, memory_format=memory_format(config, device))


def make_optimizer(config: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Three parameter groups: conv and linear weights (weight decay), BatchNorm parameters and biases (none),
    FlexPool weights (none: the paper's own regulariser, Eq. 2, governs them; learning rate x flex_lr_scale).
    The state is made up front, so a compiled step sees the same tensors from its first call on."""
    flex = [p for m in model.modules() if isinstance(m, pooling.FlexPool2d) for p in m.parameters()]
    is_flex = {id(p) for p in flex}
    decay = [p for p in model.parameters() if p.dim() > 1 and id(p) not in is_flex]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay, "lr_scale": 1.0},
              {"params": rest, "weight_decay": 0.0, "lr_scale": 1.0},
              {"params": flex, "weight_decay": 0.0, "lr_scale": config.flex_lr_scale}]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "adam":
        # capturable: Adam's step counts stay on the GPU, as CUDA graphs need; the CPU has no capturable Adam
        capturable = next(model.parameters()).is_cuda
        optimizer = torch.optim.Adam(groups, lr=config.lr, betas=(config.momentum, 0.999), capturable=capturable)
        for p in model.parameters():
            optimizer.state[p] = {"step": torch.zeros((), device=p.device), "exp_avg": torch.zeros_like(p),
                                  "exp_avg_sq": torch.zeros_like(p)}
    else:
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
        for p in model.parameters():  # a zero buffer's first step equals torch's clone of the first gradient
            optimizer.state[p] = {"momentum_buffer": torch.zeros_like(p)}
    return optimizer


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


def make_update(optimizer: torch.optim.Optimizer):
    """update(lr, grads): one step of the optimizer's algorithm with the learning rate a tensor (a float would
    be baked into a compiled graph, and Optimizer.step() breaks one on purpose). Eager, it is torch.optim's own
    functional implementation (fused kernels on CUDA): the reference. Compiled, the same algorithm written out
    in plain tensor arithmetic (_sgd_written_out, _adam_written_out), because inductor miscompiles
    torch.optim's: its post-grad pattern that fuses add(mm(a, b), x) into addmm(x, a, b) drops add's `alpha`
    (seen in torch 2.14; pytorch#167313 is the same bug the other way round), so the weight decay
    `grad.add(param, alpha=weight_decay)` on a Linear weight's gradient, an mm, became a weight decay of 1
    instead of 5e-4. The written-out form passes no alpha anywhere; tests/test_compile.py holds it to the
    eager reference."""
    groups = [(g, [optimizer.state[p] for p in g["params"]]) for g in optimizer.param_groups]
    adam = isinstance(optimizer, torch.optim.Adam)

    def update(lr: torch.Tensor, grads) -> None:
        grads = iter(grads)
        for group, state in groups:
            group_grads, rate = [next(grads) for _ in group["params"]], lr * group["lr_scale"]
            if torch.compiler.is_compiling():
                (_adam_written_out if adam else _sgd_written_out)(group, state, group_grads, rate)
            else:
                _torch_optim(group, state, group_grads, rate, adam)
    return update


def _torch_optim(group: dict, state: list[dict], grads: list[torch.Tensor], lr: torch.Tensor, adam: bool):
    params = group["params"]
    kwargs = {"lr": lr, "weight_decay": group["weight_decay"], "maximize": False,
              "fused": params[0].is_cuda or None}
    if adam:
        beta1, beta2 = group["betas"]
        functional_adam(params, grads, [s["exp_avg"] for s in state], [s["exp_avg_sq"] for s in state], [],
                        [s["step"] for s in state], amsgrad=False, beta1=beta1, beta2=beta2, eps=group["eps"],
                        capturable=group["capturable"], **kwargs)
    else:
        functional_sgd(params, grads, [s["momentum_buffer"] for s in state], momentum=group["momentum"],
                       dampening=0.0, nesterov=True, **kwargs)


def _sgd_written_out(group: dict, state: list[dict], grads: list[torch.Tensor], lr: torch.Tensor) -> None:
    """torch.optim.SGD with Nesterov momentum and no dampening."""
    decay, momentum = group["weight_decay"], group["momentum"]
    for p, g, s in zip(group["params"], grads, state):
        g = g + decay * p
        buf = s["momentum_buffer"]
        buf.mul_(momentum).add_(g)
        p.sub_(lr * (g + momentum * buf))


def _adam_written_out(group: dict, state: list[dict], grads: list[torch.Tensor], lr: torch.Tensor) -> None:
    """torch.optim.Adam (L2 weight decay, no amsgrad) with its step count a tensor."""
    (beta1, beta2), decay, eps = group["betas"], group["weight_decay"], group["eps"]
    for p, g, s in zip(group["params"], grads, state):
        g = g + decay * p
        s["step"].add_(1)
        s["exp_avg"].mul_(beta1).add_((1 - beta1) * g)
        s["exp_avg_sq"].mul_(beta2).add_((1 - beta2) * g * g)
        corrected_sq = s["exp_avg_sq"] / (1 - beta2 ** s["step"])
        p.sub_(lr / (1 - beta1 ** s["step"]) * s["exp_avg"] / (corrected_sq.sqrt() + eps))


def make_step(config: RunConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              images: torch.Tensor, labels: torch.Tensor):
    """step(idx, aug, mask, lr) -> (loss, correct): one whole training step (batch by index, normalisation,
    augmentation, forward, Eq. 3 + Eq. 2 loss, backward, optimizer step at learning rate `lr`) as a function of
    tensors only, so torch.compile(fullgraph=True) takes it whole and nothing in it waits for the host. The
    random numbers it uses (aug, mask) are drawn per epoch by epoch_draws."""
    info = data.INFO[config.dataset]
    device = images.device
    params = [p for group in optimizer.param_groups for p in group["params"]]
    update = make_update(optimizer)
    bf16, layout = uses_bf16(config, device), memory_format(config, device)

    def step(idx, aug, mask, lr):
        x, y = data.normalize(images[idx], info), labels[idx]
        if aug is not None:
            x = data.augment(x, aug)
        x = x.contiguous(memory_format=layout)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = model(x, mask)
            loss = loss_fn(outputs, y, model, config)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            update(lr, grads)
        final = outputs[-1] if isinstance(outputs, tuple) else outputs
        return loss.detach(), (final.argmax(1) == y).sum()

    if device.type == "cuda":  # a seed gives the same run: no convolution backward that adds in varying order
        torch.backends.cudnn.deterministic = True
    mode = compile_mode(config, device)
    if mode == "off":
        return step
    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        raise ConfigError(f"--compile {mode} needs torch 2.11 or newer, which traces the backward into the "
                          f"compiled step; this is torch {torch.__version__}")
    torch._dynamo.reset()  # a new run's model and optimizer: compile afresh, not against the last run's guards
    torch._dynamo.config.trace_autograd_ops = True  # the backward inside the step joins the graph
    # A CUDA graph replays fixed addresses and may write only to inputs marked static: everything that lives
    # from step to step is, so it is neither copied in at each replay nor a reason to skip the graph.
    state = [t for s in optimizer.state.values() for t in s.values()]
    for t in [*model.parameters(), *model.buffers(), *state, images, labels]:
        torch._dynamo.mark_static_address(t)
    return torch.compile(step, mode=None if mode == "default" else mode, fullgraph=True)


def _generator(config: RunConfig, epoch: int, stream: int, device: torch.device) -> torch.Generator:
    seed = int(np.random.SeedSequence((config.seed, epoch, stream)).generate_state(1)[0])
    return torch.Generator(device).manual_seed(seed)


def epoch_draws(config: RunConfig, epoch: int, n: int, device: torch.device):
    """(order, aug, masks): the epoch's batches of indices (steps x batch), augmentation numbers and dropout
    masks (None when unused), drawn before the epoch. Each comes from a generator of its own seeded by
    (seed, epoch, stream): the data order and augmentation of a seed are the same in every column, the dropout
    masks draw from neither's stream, and a resumed run draws exactly what an unbroken one would."""
    batch, steps = min(config.batch_size, n), steps_per_epoch(n, config.batch_size)
    order = torch.randperm(n, device=device, generator=_generator(config, epoch, 0, device))
    order = order[:steps * batch].view(steps, batch)
    aug = masks = None
    if config.augment:
        aug = torch.rand(steps, batch, data.AUGMENT_DRAWS, device=device,
                         generator=_generator(config, epoch, 1, device))
    if config.dropout:
        keep = torch.rand(steps, batch, FEATURES, device=device, generator=_generator(config, epoch, 2, device))
        masks = (keep >= config.dropout).float() / (1 - config.dropout)
    return order, aug, masks


def train_epoch(step, model, lrs: torch.Tensor, config: RunConfig, epoch: int, n: int, device: torch.device):
    """One pass in the epoch's seeded order; returns (mean loss, accuracy) as device tensors (no host sync)."""
    order, aug, masks = epoch_draws(config, epoch, n, device)
    steps = order.shape[0]
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    graphed = compile_mode(config, device) in CUDA_GRAPH_MODES
    model.train()
    for k in range(steps):
        if graphed:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are consumed: replay freely
        loss, hits = step(order[k], None if aug is None else aug[k], None if masks is None else masks[k],
                          lrs[epoch * steps + k])
        loss_sum += loss
        correct += hits
    return loss_sum / steps, correct / order.numel()


@torch.no_grad()
def evaluate(model, images, labels, config: RunConfig) -> list[float]:
    """Accuracy of each head (the last is the model's prediction), in one host sync."""
    device = images.device
    info, layout = data.INFO[config.dataset], memory_format(config, device)
    model.eval()
    correct = None
    for start in range(0, len(labels), EVAL_BATCH):
        x = data.normalize(images[start:start + EVAL_BATCH], info).contiguous(memory_format=layout)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(config, device)):
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
        name, bf16_units = torch.cuda.get_device_name(device), {}
    else:  # the CPU's model and bf16 units decide its speed and the last digits of its results
        name, bf16_units = cpu_model(), {"cpu_bf16_units": cpu_bf16_units() or "none", "cpus": len(os.sched_getaffinity(0))}
    # the threads, like the device, change results in their last digits (README: One run)
    return {"device": name, "device_type": device.type, **bf16_units, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
            "git_commit": git_commit(),
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
        # `started` is moved back by the wall time of the run's earlier attempts (see _run_locked)
        "timing": {"wall_s": time.time() - started, "train_s": train_s,
                   "images_per_s": images / train_s if train_s else None},
        "env": environment(device) | {"precision": "bf16" if uses_bf16(config, device) else "fp32"},  # as trained
        "flexpool": flexpool_summary(model) if model is not None else {},
    }


# --- the run -----------------------------------------------------------------------------------------------



class Stopped(BaseException):
    """SIGTERM (scancel, SLURM's requeue or preemption, RunPack stopping its runs) stopped the run: its last
    epoch's checkpoint stays, no record is written, and running it again resumes. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way takes it for a failed run."""


class _StopOnSigterm:
    """The SIGTERM handler while a run trains: raise Stopped at once, except inside `held()` (an epoch's
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
        raise Stopped("SIGTERM; the checkpoint of its last finished epoch stays, running it again resumes")

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
    """Train one run (resuming from its checkpoint), write its record and return it.

    Returns the existing record if the run is already completed, and None if another process is training it.
    `on_epoch(entry) -> bool` sees each epoch's history entry; True stops the run early as "pruned" (sweeps).
    SIGTERM stops it with Stopped (W&B finished, checkpoint kept, no record).
    """
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
                return records.read_record(records.record_path(config))
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
        model = make_model(config, device)
        optimizer = make_optimizer(config, model)
        lrs = lr_schedule(config, config.epochs * steps_per_epoch(len(labels), config.batch_size), device)
        history = resume(config, model, optimizer)
        started -= history[-1].get("wall_s", 0.0) if history else 0.0  # wall time counts every attempt's epochs
        step = make_step(config, model, optimizer, images, labels)  # after resume: it holds the state tensors
        status = "completed"
        bar = tqdm(range(len(history), config.epochs), initial=len(history), total=config.epochs,
                   desc=config.cell or config.dataset, unit="epoch", disable=not sys.stderr.isatty())
        for epoch in bar:
            entry = run_epoch(config, step, model, lrs, len(labels), eval_images, eval_labels, epoch)
            entry["wall_s"] = time.time() - started  # the run's wall time so far, across resumes
            history.append(entry)
            with stop.held():  # an epoch's W&B entry and its checkpoint: both or neither
                logged = tracker.log({k: v for k, v in entry.items() if k != "head_accuracies"}
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
        record = make_record(config, status, history, started, device, model=model)
        records.write_record(record, records.record_path(config))
    except Exception as e:
        # A full or read-only disk is not the run's failure: no record, so a launch resumes the run once the disk
        # takes writes again (a failed record would make it skip the run).
        if not isinstance(e, records.WriteError):
            failed = make_record(config, "failed", history, started, device, error=f"{type(e).__name__}: {e}",
                                 model=model)
            with contextlib.suppress(OSError):  # the disk failed just now: the error raised below says so
                records.write_record(failed, records.record_path(config))
        tracker.finish(exit_code=1)
        raise
    except BaseException:  # Stopped (SIGTERM), KeyboardInterrupt: the checkpoint stays, no record yet
        tracker.finish(exit_code=1)
        raise
    tracker.finish({"accuracy": record["metrics"]["accuracy"], "status": status,
                    "images_per_s": record["timing"]["images_per_s"]})
    return record


def run_epoch(config, step, model, lrs: torch.Tensor, n: int, eval_images, eval_labels, epoch: int) -> dict:
    device = eval_images.device
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss, accuracy = train_epoch(step, model, lrs, config, epoch, n, device)
    loss, accuracy = loss.item(), accuracy.item()  # the one host sync of the epoch
    seconds = time.perf_counter() - start
    if not math.isfinite(loss):
        raise TrainingError(f"non-finite training loss ({loss}) in epoch {epoch + 1}; lower --lr or check the data")
    heads = evaluate(model, eval_images, eval_labels, config)
    steps = steps_per_epoch(n, config.batch_size)
    trained = steps * min(config.batch_size, n)
    return {"epoch": epoch + 1, "train_loss": loss, "train_accuracy": accuracy, "eval_accuracy": heads[-1],
            "head_accuracies": heads, "lr": lrs[(epoch + 1) * steps - 1].item(), "images": trained,
            "images_per_s": trained / seconds, "seconds": seconds}


def report(bar, entry: dict, config: RunConfig) -> None:
    text = (f"loss {entry['train_loss']:.3f} train {entry['train_accuracy']:.2%} "
            f"{config.eval_split} {entry['eval_accuracy']:.2%} {entry['images_per_s']:.0f} img/s")
    if bar.disable:  # logs of batch jobs: one plain line per epoch
        print(f"[{config.cell or config.dataset} seed {config.seed}] epoch {entry['epoch']}/{config.epochs} {text}",
              flush=True)
    else:
        bar.set_postfix_str(text)


def save(config, model, optimizer, history) -> None:
    records.save_checkpoint({"run_id": config.run_id, "model": model.state_dict(),
                             "optimizer": optimizer.state_dict(), "history": history},
                            records.checkpoint_path(config))


def resume(config, model, optimizer) -> list[dict]:
    """The history so far, with model and optimizer restored (the schedule follows from the epoch); [] when
    starting fresh."""
    path = records.checkpoint_path(config)
    try:
        state = records.load_checkpoint(path)
    except records.RecordError as e:
        print(f"warning: {e}; starting run {config.run_id} from scratch", file=sys.stderr)
        return []
    if state is None or state.get("run_id") != config.run_id:
        return []
    unfit = misfit(model, state["model"])
    if unfit:  # e.g. the model's code changed since: its weights cannot go on, as an unreadable file cannot
        print(f"warning: {path}: does not fit the model ({unfit}); starting run {config.run_id} from scratch",
              file=sys.stderr)
        return []
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    print(f"resuming run {config.run_id} after epoch {len(state['history'])} from {path}")
    return state["history"]


def misfit(model: torch.nn.Module, saved: dict) -> str:
    """Why saved weights do not fit the model ('' when they do), checked before loading: load_state_dict fills
    what fits before it raises, which would leave a half-restored model."""
    own = model.state_dict()
    wrong = sorted(set(own) ^ set(saved)) + sorted(k for k in own.keys() & saved.keys()
                                                    if own[k].shape != saved[k].shape)
    return f"{len(wrong)} tensor(s) missing, extra or of another shape, e.g. {wrong[0]}" if wrong else ""


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
        # the record names the data folder used, not '' (the launcher and sweeps resolve it the same way)
        config = config.replace(data_root=str(Path(config.data_root or default_data_root()).resolve()))
        record = run(config)
    except (ConfigError, data.DataError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine's fault, not the command's: a full disk, a read-only results folder
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Stopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        return records.STOPPED_EXIT
    if record is None:
        return 1
    m = record["metrics"]
    heads = " ".join(f"{a:.2%}" for a in m["head_accuracies"] or [])
    print(f"{record['status']}: {config.eval_split} accuracy {m['accuracy']:.2%} (heads: {heads}), "
          f"{record['timing']['images_per_s']:.0f} img/s; record {records.record_path(config)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
