"""--compile: repro.train's step compiled whole (torch.compile, fullgraph) so that nothing in it waits for the
host, replayed as one CUDA graph in the CUDA-graph modes. Eager (repro.train.make_step) is the reference: the same
forward and loss; where this differs, the comments say why. tests/test_compile.py holds it to eager."""

from __future__ import annotations

import torch

from repro.config import ConfigError

CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # compile modes that replay the step as a CUDA graph


def make_step(forward, model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: list, mode: str):
    """Eager's step(idx, aug, mask, lr) -> (loss, correct), compiled in `mode`, around eager's own
    forward(idx, aug, mask) -> (loss, correct); `inputs`: the tensors the step indexes (the training set)."""
    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        raise ConfigError(f"--compile {mode} needs torch 2.11 or newer, which traces the backward into the "
                          f"compiled step; this is torch {torch.__version__}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    update = make_update(optimizer)

    def step(idx, aug, mask, lr):
        loss, correct = forward(idx, aug, mask)
        grads = torch.autograd.grad(loss, params)  # as values: loss.backward() and optimizer.step() break graphs
        with torch.no_grad():
            update(lr, grads)
        return loss.detach(), correct

    torch._dynamo.reset()  # a new run's model and optimizer: compile afresh, not against the last run's guards
    torch._dynamo.config.trace_autograd_ops = True  # the backward inside the step joins the graph
    # A CUDA graph replays fixed addresses and may write only to inputs marked static: everything that lives
    # from step to step is, so it is neither copied in at each replay nor a reason to skip the graph.
    state = [t for s in optimizer.state.values() for t in s.values()]
    for t in [*model.parameters(), *model.buffers(), *state, *inputs]:
        torch._dynamo.mark_static_address(t)
    compiled = torch.compile(step, mode=None if mode == "default" else mode, fullgraph=True)
    if mode not in CUDA_GRAPH_MODES:
        return compiled

    def graphed(*args):
        torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are consumed: replay freely
        return compiled(*args)
    return graphed


def make_update(optimizer: torch.optim.Optimizer):
    """update(lr, grads): a step of torch.optim's SGD (Nesterov) or Adam (no amsgrad) in plain tensor arithmetic,
    the learning rate a tensor (a float would be baked into the graph). Not torch.optim's own: inductor's
    post-grad pattern that fuses add(mm(a, b), x) into addmm(x, a, b) drops add's `alpha` (seen in torch 2.14;
    pytorch#167313 is the same bug the other way round), so torch.optim's weight decay `grad.add(param,
    alpha=weight_decay)` on a Linear weight's gradient, an mm, became 1 instead of 5e-4. This passes no alpha."""
    adam = isinstance(optimizer, torch.optim.Adam)
    for group in optimizer.param_groups:
        for p in group["params"]:
            # Made now, where eager lets torch.optim make it at the first step: the graph holds these tensors
            # from its first call on. A zero momentum buffer's first step is torch's clone of the gradient.
            optimizer.state[p] = optimizer.state[p] or (
                {"step": torch.zeros((), device=p.device), "exp_avg": torch.zeros_like(p),
                 "exp_avg_sq": torch.zeros_like(p)} if adam else {"momentum_buffer": torch.zeros_like(p)})
    groups = [(group, [optimizer.state[p] for p in group["params"]]) for group in optimizer.param_groups]

    def update(lr: torch.Tensor, grads) -> None:
        grads = iter(grads)
        for group, states in groups:
            rate = lr * group["lr_scale"]
            for p, s in zip(group["params"], states):
                g = next(grads) + group["weight_decay"] * p
                if adam:  # its step count a tensor, as capturable Adam's
                    (beta1, beta2), eps = group["betas"], group["eps"]
                    s["step"].add_(1)
                    s["exp_avg"].mul_(beta1).add_((1 - beta1) * g)
                    s["exp_avg_sq"].mul_(beta2).add_((1 - beta2) * g * g)
                    corrected_sq = s["exp_avg_sq"] / (1 - beta2 ** s["step"])
                    p.sub_(rate / (1 - beta1 ** s["step"]) * s["exp_avg"] / (corrected_sq.sqrt() + eps))
                else:
                    s["momentum_buffer"].mul_(group["momentum"]).add_(g)
                    p.sub_(rate * (g + group["momentum"] * s["momentum_buffer"]))
    return update
