"""The one training loop (AdamW, linear warmup, cosine decay, gradient clipping, fp32 master
weights for half-precision parameters), and the helper that freezes a model's parameters for
the duration of a stage.

Flat arguments only: no settings objects reach the math.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import get_cosine_schedule_with_warmup

from maet.runtime import checkpoint, distributed, live
from maet.runtime.progress import progress

log = logging.getLogger(__name__)


@dataclass
class TrainStats:
    tokens: int = 0
    steps: int = 0
    seconds: float = 0.0
    optimizer_bytes: int = 0  # optimizer state after the last step (AdamW: two moments per trainable entry)
    curves: dict[str, list[list[float]]] = field(default_factory=dict)  # desc -> [[step, loss, lr], ...]

    def __add__(self, other: "TrainStats") -> "TrainStats":
        return TrainStats(self.tokens + other.tokens, self.steps + other.steps, self.seconds + other.seconds,
                          max(self.optimizer_bytes, other.optimizer_bytes), joined_curves(self.curves, other.curves))


def joined_curves(a: dict[str, list], b: dict[str, list]) -> dict[str, list]:
    """Both loops' curves; a name that is already there gets a suffix ` #2`, ` #3`, ..."""
    out = dict(a)
    for name, points in b.items():
        unique, k = name, 2
        while unique in out:
            unique, k = f"{name} #{k}", k + 1
        out[unique] = points
    return out


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (this process's shard on N processes)."""
    local = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer keeps its shard's state in .optim
    return sum(local_tensor(t).nbytes for state in local.state.values() for t in state.values() if torch.is_tensor(t))


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor (an FSDP2 shard's local tensor; a plain tensor itself)."""
    return t.to_local() if hasattr(t, "to_local") else t


def make_optimizer(name: str, params: list[torch.Tensor], lr: float, weight_decay: float,
                   sharded: bool = False) -> torch.optim.Optimizer:
    """adamw: AdamW; sgd: plain SGD (no momentum), under which a parameter's change is lr times its
    accumulated (clipped, scheduled) gradient — the quantity the locate score sums. `sharded`:
    the params are FSDP2 shards, so plain AdamW keeps state for this process's shards only."""
    if name == "sgd":  # no state to shard
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if sharded:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return distributed.adamw(params, lr=lr, weight_decay=weight_decay)  # state sharded on N processes


def optimize(loss_fn: Callable[[torch.Tensor], torch.Tensor], params: list[torch.Tensor],
             batches: Iterable[torch.Tensor], steps: int, lr: float, desc: str, *,
             warmup_ratio: float, weight_decay: float, grad_clip: float, curve_every: int = 10,
             optimizer: str = "adamw", masters: list[torch.Tensor] | None = None, module=None) -> TrainStats:
    """AdamW (or plain SGD) with linear warmup and cosine decay over `steps` batches of `[batch, seq]`
    ids. The loss and learning rate of every `curve_every`-th step (and the last) go to
    `stats.curves[desc]`, and to the job's live sink as they are made (`maet.runtime.live`).
    Inside a checkpointed stage (`maet.runtime.checkpoint`) the loop resumes from, and saves, its state.

    `masters`: fp32 master copies of `params` (for half-precision params): the gradients are
    moved onto them, clipped and stepped in fp32, and `params` get the rounded values back.
    `module`: the FSDP2-sharded module whose shards `params` are (`maet.runtime.sharded`): its
    engine averages the gradients and keeps the processes equal."""
    trained = params if masters is None else masters
    optimizer = make_optimizer(optimizer, trained, lr, weight_decay, sharded=module is not None)
    schedule = get_cosine_schedule_with_warmup(optimizer, round(warmup_ratio * steps), steps)
    stats, start, name = TrainStats(), time.perf_counter(), live.loop(desc)
    # one job on N processes: DDP (rank 0's start, gradients averaged) unless FSDP2 shards `module`
    forward = distributed.data_parallel(params, loss_fn) if module is None else loss_fn
    saved = checkpoint.for_loop(name)
    state = resume(saved, module, params, masters, optimizer, schedule, stats)  # what an earlier try saved
    curve = state["curve"] if state else []
    if state:
        log.info("%s: resumed at step %d of %d from its checkpoint in %s", desc, stats.steps, steps, saved.path.parent)
    with progress(desc=desc, unit="tok", unit_scale=True) as bar, checkpoint.saving_on_sigterm(saved is not None):
        for index, batch in enumerate(batches):
            if bar.total is None:
                bar.total = steps * batch.numel()
            if index < stats.steps:  # trained before the checkpoint: skip to the saved data position
                bar.update(batch.numel())
                continue
            if state:  # the first step after a resume: the RNG as it was when the checkpoint was saved
                torch.set_rng_state(state.pop("rng"))
                state = None
            loss = forward(distributed.local_batch(batch))  # [batch / N, seq] on N processes
            loss.backward()
            if masters is not None:
                grads_to_masters(params, masters)
            torch.nn.utils.clip_grad_norm_(trained, grad_clip)
            optimizer.step()
            lr_used = schedule.get_last_lr()[0]
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if masters is not None:
                masters_to_params(masters, params)
            stats.steps += 1
            stats.tokens += batch.numel()
            bar.update(batch.numel())
            if stats.steps % curve_every == 0 or stats.steps == steps:
                curve.append([stats.steps, loss.item(), lr_used])
                live.point(name, *curve[-1])
                bar.set_postfix(loss=f"{curve[-1][1]:.3f}", refresh=False)
            if saved and (stats.steps == steps or saved.due(stats.steps)):
                keep(saved, module, params, masters, optimizer, schedule, stats, curve)
    stats.curves = {desc: curve} if curve else {}
    stats.seconds = time.perf_counter() - start
    stats.optimizer_bytes = optimizer_bytes(optimizer)
    return stats


def loop_state(schedule, stats: TrainStats, curve: list[list[float]]) -> dict:
    """What a checkpoint holds besides tensors: step and token counts, curve, schedule, RNG."""
    return {"steps": stats.steps, "tokens": stats.tokens, "curve": [list(point) for point in curve],
            "schedule": schedule.state_dict(), "rng": torch.get_rng_state()}


def keep(saved: checkpoint.Checkpoint, module, params: list[torch.Tensor], masters: list[torch.Tensor] | None,
         optimizer: torch.optim.Optimizer, schedule, stats: TrainStats, curve: list[list[float]]) -> None:
    """Save the loop's state: through DCP for FSDP2 shards (`module`), else one file of rank 0
    (tensors on the host; a ZeRO-1 optimizer's shards consolidated there first)."""
    if module is not None:
        saved.save_sharded(module, optimizer, loop_state(schedule, stats, curve))
        return
    if hasattr(optimizer, "consolidate_state_dict"):  # ZeroRedundancyOptimizer: every rank takes part
        optimizer.consolidate_state_dict(to=0)
    saved.save({**loop_state(schedule, stats, curve), "params": [p.detach().cpu().clone() for p in params],
                "masters": None if masters is None else [m.detach().cpu().clone() for m in masters],
                "optimizer": optimizer.state_dict() if distributed.is_main() else None})


@torch.no_grad()
def resume(saved: checkpoint.Checkpoint | None, module, params: list[torch.Tensor],
           masters: list[torch.Tensor] | None, optimizer: torch.optim.Optimizer, schedule,
           stats: TrainStats) -> dict | None:
    """The state an earlier try saved, put back into the loop's tensors, optimizer, schedule and
    counts (None when there is none); its `curve` and `rng` are for the loop to use."""
    state = None if saved is None else saved.load_sharded(module, optimizer) if module is not None else saved.load()
    if state is None:
        return None
    if module is None:
        for p, value in zip(params, state["params"], strict=True):
            p.copy_(value)
        for m, value in zip(masters or [], state["masters"] or [], strict=True):
            m.copy_(value)
        optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    stats.steps, stats.tokens = state["steps"], state["tokens"]
    return state


def fp32_masters(params: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """fp32 copies of `params` (on their device) when any is in half precision, else None."""
    if all(p.dtype == torch.float32 for p in params):
        return None
    return [p.detach().float().clone() for p in params]


def grads_to_masters(params: list[torch.Tensor], masters: list[torch.Tensor]) -> None:
    """Each param's gradient, in fp32, becomes its master's; the param's own is dropped."""
    for p, m in zip(params, masters):
        m.grad = None if p.grad is None else p.grad.float()
        p.grad = None


@torch.no_grad()
def masters_to_params(masters: list[torch.Tensor], params: list[torch.Tensor]) -> None:
    """Each param <- its master, rounded to the param's dtype."""
    for p, m in zip(params, masters):
        p.copy_(m)


@contextmanager
def frozen(model, trainable: Iterable[str] = (), train: bool = True) -> Iterator[dict[str, torch.nn.Parameter]]:
    """For the duration: every parameter but the `trainable` ones frozen, the model in train (or
    eval) mode, no stale gradients; afterwards the flags, the mode and empty gradients restored.
    Yields the parameters by name."""
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    was_training, trainable = model.training, set(trainable)
    for name, p in params.items():
        p.requires_grad_(name in trainable)
        p.grad = None
    model.train(train)
    try:
        yield params
    finally:
        for name, p in params.items():
            p.grad = None
            p.requires_grad_(flags[name])
        model.train(was_training)


def counted(batches: Iterable[torch.Tensor], steps: int | None, desc: str) -> Iterator[torch.Tensor]:
    """Yield the batches under a progress bar in tokens (tokens/s, ETA from `steps` batches)."""
    with progress(desc=desc, unit="tok", unit_scale=True) as bar:
        for batch in batches:
            if bar.total is None and steps is not None:
                bar.total = steps * batch.numel()
            yield batch
            bar.update(batch.numel())
