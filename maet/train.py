"""The one training loop (AdamW, linear warmup, cosine decay, gradient clipping), and the
helper that freezes a model's parameters for the duration of a stage.

Flat arguments only: no settings objects reach the math.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import get_cosine_schedule_with_warmup

from maet import distributed
from maet.progress import progress


@dataclass
class TrainStats:
    tokens: int = 0
    steps: int = 0
    seconds: float = 0.0
    optimizer_bytes: int = 0  # AdamW state after the last step (two moments per trainable entry)

    def __add__(self, other: "TrainStats") -> "TrainStats":
        return TrainStats(self.tokens + other.tokens, self.steps + other.steps, self.seconds + other.seconds,
                          max(self.optimizer_bytes, other.optimizer_bytes))


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (this process's shard on N processes)."""
    local = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer keeps its shard's state in .optim
    return sum(t.nbytes for state in local.state.values() for t in state.values() if torch.is_tensor(t))


def optimize(loss_fn: Callable[[torch.Tensor], torch.Tensor], params: list[torch.Tensor],
             batches: Iterable[torch.Tensor], steps: int, lr: float, desc: str, *,
             warmup_ratio: float, weight_decay: float, grad_clip: float) -> TrainStats:
    """AdamW with linear warmup and cosine decay over `steps` batches of `[batch, seq]` ids."""
    optimizer = distributed.adamw(params, lr=lr, weight_decay=weight_decay)  # state sharded on N processes
    schedule = get_cosine_schedule_with_warmup(optimizer, round(warmup_ratio * steps), steps)
    stats, start = TrainStats(), time.perf_counter()
    distributed.broadcast_(params)  # one job on N processes: rank 0's start, the same update everywhere
    with progress(desc=desc, unit="tok", unit_scale=True) as bar:
        for batch in batches:
            if bar.total is None:
                bar.total = steps * batch.numel()
            loss = loss_fn(distributed.local_batch(batch))  # [batch / N, seq] on N processes
            loss.backward()
            distributed.average_gradients(params)
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            stats.steps += 1
            stats.tokens += batch.numel()
            bar.update(batch.numel())
            if stats.steps % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    stats.seconds = time.perf_counter() - start
    stats.optimizer_bytes = optimizer_bytes(optimizer)
    return stats


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
