"""Stage 2, extract: ability weights R(A) by key-neuron training, language weights R(Lj) by CPT.

Key-neuron training makes only the selected rows trainable: for each masked weight `W[out, in]`
a zero-initialised row delta `D[k, in]` is scattered into the frozen weight in the forward pass
(`W.index_add(0, rows, D)` through `torch.func.functional_call`), so gradients and optimizer
state exist for `D` alone — proportional to the ratio, not to the model.

Pure functions over a model, batches and plain numbers; the loop is `maet.train.optimize`
(its keyword arguments `warmup_ratio`, `weight_decay`, `grad_clip` pass through `**loop`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.func import functional_call

from maet.train import TrainStats, frozen, optimize
from maet.types import DenseDelta, Mask, RowDelta


def train_rows(model, mask: Mask, batches: Iterable[torch.Tensor], steps: int, lr: float, desc: str,
               **loop: float | str) -> tuple[RowDelta, TrainStats]:
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

    with frozen(model):
        stats = optimize(loss_fn, list(deltas.values()), batches, steps, lr, desc, **loop)
    return {n: (mask[n].cpu(), d.detach().float().cpu()) for n, d in deltas.items()}, stats


def train_full(model, names: list[str], batches: Iterable[torch.Tensor], steps: int, lr: float, desc: str,
               **loop: float) -> tuple[DenseDelta, TrainStats]:
    """Continual pre-training of the named parameters; returns `θ' − θ0` for them and restores θ0
    in the model (only a CPU copy of the trained tensors is kept)."""
    device = next(model.parameters()).device

    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device)
        return model(input_ids=batch, labels=batch).loss

    with frozen(model, trainable=names) as params:
        original = {n: params[n].detach().cpu().clone() for n in names}
        try:
            stats = optimize(loss_fn, [params[n] for n in names], batches, steps, lr, desc, **loop)
            delta = {n: params[n].detach().float().cpu() - original[n].float() for n in names}
        finally:
            with torch.no_grad():
                for n in names:
                    params[n].copy_(original[n])
    return delta, stats


def ability_delta(ability: RowDelta, general: RowDelta | None, how: str = "subtract") -> RowDelta:
    """R(A) from θ_A − θ0 and θ_G − θ0 on the key rows (`[k, in]` values per tensor).

    subtract: θ_A − θ_G (Eq. 2 as read by default); project: θ_A − θ0 without its component along
    θ_G − θ0, per tensor (only what the general-text training also moves is removed, not the
    general move itself); none (or `general` None): θ_A − θ0.
    """
    if general is None or how == "none":
        return ability
    if how == "subtract":
        return {n: (rows, values - general[n][1]) for n, (rows, values) in ability.items()}
    return {n: (rows, project_out(values, general[n][1])) for n, (rows, values) in ability.items()}


def project_out(values: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """`values − (⟨values, d⟩ / ‖d‖²) d` over the flattened tensors (fp64 dot, values' dtype)."""
    norm2 = direction.double().pow(2).sum()
    if norm2 == 0:
        return values.clone()
    coef = (values.double() * direction.double()).sum() / norm2
    return (values.double() - coef * direction.double()).to(values.dtype)
