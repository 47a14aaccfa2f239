"""Stage 2, extract: ability weights R(A) by key-neuron training, language weights R(Lj) by CPT.

Key-neuron training makes only the selected rows trainable: for each masked weight `W[out, in]`
a zero-initialised row delta `D[k, in]` is scattered into the frozen weight in the forward pass
(`W.index_add(0, rows, D)` through `torch.func.functional_call`), so gradients and optimizer
state exist for `D` alone — proportional to the ratio, not to the model.

A row-sparse delta is `{name: (rows LongTensor[k], values Tensor[k, in])}`; a dense delta is
`{name: Tensor[out, in]}`. Deltas are kept in fp32.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.func import functional_call
from transformers import get_cosine_schedule_with_warmup

from maet.progress import progress
from maet.settings import TrainSettings

RowDelta = dict[str, tuple[torch.Tensor, torch.Tensor]]
DenseDelta = dict[str, torch.Tensor]


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
    """Bytes of every tensor in the optimizer's state."""
    return sum(t.nbytes for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t))


def _optimize(loss_fn: Callable[[torch.Tensor], torch.Tensor], params: list[torch.Tensor],
              batches: Iterable[torch.Tensor], steps: int, lr: float, train: TrainSettings,
              desc: str) -> TrainStats:
    """AdamW with linear warmup and cosine decay over `steps` batches of `[batch, seq]` ids."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=train.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, round(train.warmup_ratio * steps), steps)
    stats, start = TrainStats(), time.perf_counter()
    with progress(total=steps * train.batch_size * train.seq_len, desc=desc, unit="tok", unit_scale=True) as bar:
        for batch in batches:
            loss = loss_fn(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
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
def _frozen(model):
    """Freeze every parameter for the duration (restoring the flags after) and set train mode."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    model.requires_grad_(False)
    model.train()
    try:
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)


def train_rows(model, mask: dict[str, torch.Tensor], batches: Iterable[torch.Tensor], steps: int,
               lr: float, train: TrainSettings, desc: str) -> tuple[RowDelta, TrainStats]:
    """Train only the masked rows; returns their learned deltas. The model is not modified.

    Tensors are taken in the model's order, whatever the mask's order (a mask read back from
    safetensors is sorted by name): the global gradient-norm clip sums over them in that order,
    and another order rounds differently."""
    weights = dict(model.named_parameters())
    device = next(model.parameters()).device
    rows = {n: mask[n].to(device) for n in weights if n in mask}
    deltas = {n: torch.zeros(len(r), weights[n].shape[1], device=device, requires_grad=True)
              for n, r in rows.items()}

    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device)
        patched = {n: weights[n].index_add(0, rows[n], deltas[n].to(weights[n].dtype)) for n in rows}
        return functional_call(model, patched, args=(), kwargs={"input_ids": batch, "labels": batch}).loss

    with _frozen(model):
        stats = _optimize(loss_fn, list(deltas.values()), batches, steps, lr, train, desc)
    return {n: (mask[n].cpu(), d.detach().float().cpu()) for n, d in deltas.items()}, stats


def train_full(model, names: list[str], batches: Iterable[torch.Tensor], steps: int, lr: float,
               train: TrainSettings, desc: str) -> tuple[DenseDelta, TrainStats]:
    """Continual pre-training of the named parameters; returns `θ' − θ0` for them and restores θ0
    in the model (only a CPU copy of the trained tensors is kept)."""
    params = dict(model.named_parameters())
    original = {n: params[n].detach().cpu().clone() for n in names}
    device = next(model.parameters()).device

    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device)
        return model(input_ids=batch, labels=batch).loss

    with _frozen(model):
        for n in names:
            params[n].requires_grad_(True)
        try:
            stats = _optimize(loss_fn, [params[n] for n in names], batches, steps, lr, train, desc)
            delta = {n: params[n].detach().float().cpu() - original[n].float() for n in names}
        finally:
            with torch.no_grad():
                for n in names:
                    params[n].copy_(original[n])
    return delta, stats


def ability_delta(ability: RowDelta, general: RowDelta | None) -> RowDelta:
    """R(A) = θ_A − θ_G on the key rows (or θ_A − θ0 when `general` is None)."""
    if general is None:
        return ability
    return {n: (rows, values - general[n][1]) for n, (rows, values) in ability.items()}


def rows_to_dense(delta: RowDelta, shapes: dict[str, torch.Size]) -> DenseDelta:
    """Scatter a row-sparse delta into full-size zero tensors."""
    dense = {}
    for n, (rows, values) in delta.items():
        dense[n] = torch.zeros(shapes[n], dtype=values.dtype).index_copy_(0, rows, values)
    return dense
