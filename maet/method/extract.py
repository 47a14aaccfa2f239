"""Stage 2, extract: ability weights R(A) by key-neuron training, language weights R(Lj) by CPT.

Key-neuron training makes only the selected rows trainable: for each masked weight `W[out, in]`
a zero-initialised fp32 row delta `D[k, in]` is the only trainable tensor, so gradients and
optimizer state exist for `D` alone — proportional to the ratio, not to the model. A masked
`nn.Linear` computes `y = x @ W'.T` with `W' = W` whose rows `r` are `W[r] + D`
(`PatchedRowsLinear`): the key rows are patched in place for one product at a time and restored
exactly, the weight gradient is formed in one buffer per weight shape, so no full-size copy or
gradient exists per weight, and the arithmetic is that of patching every weight up front
(bit-identical deltas in fp32). Any other masked tensor (an embedding, a tied or
hooked weight, a norm) is patched up front through `torch.func.functional_call`.

Full training (`train_full`) of a half-precision model keeps fp32 master weights
(`maet.method.train.optimize(masters=...)`); deltas are fp32 either way.

Pure functions over a model, batches and plain numbers; the loop is `maet.method.train.optimize`
(its keyword arguments `warmup_ratio`, `weight_decay`, `grad_clip` pass through `**loop`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch.func import functional_call

from maet.method.train import TrainStats, fp32_masters, frozen, optimize
from maet.runtime import distributed, sharded
from maet.method.types import DenseDelta, Mask, RowDelta


def patch_rows(weight: torch.Tensor, rows: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """`W'`: a copy of `weight` `[out, ...]` whose rows `rows[k]` are `weight[rows] + delta`
    (`delta` `[k, ...]`, fp32), added in fp32 and rounded once to the weight's dtype."""
    return weight.index_copy(0, rows, (weight[rows].float() + delta).to(weight.dtype))


@contextmanager
def rows_patched(weight: torch.Tensor, rows: torch.Tensor, delta: torch.Tensor) -> Iterator[None]:
    """For the duration, `weight`'s rows `rows` hold `patch_rows`'s values, written in place into
    its storage (untracked by autograd) and restored exactly from a copy of the `k` original rows
    afterwards: no full-size copy of the weight."""
    data = weight.data
    original = data.index_select(0, rows)
    data.index_copy_(0, rows, (original.float() + delta).to(data.dtype))
    try:
        yield
    finally:
        data.index_copy_(0, rows, original)


class PatchedRowsLinear(torch.autograd.Function):
    """`y = x @ W'.T (+ b)` with `W' = patch_rows(W, rows, D)`; only `D` gets a gradient.

    `W'` is `W` with its key rows patched in place for the duration of one product (forward, and
    the input gradient in the backward); the weight gradient `[out, in]` is formed in a buffer
    shared by the layers of its shape to take its rows. These are the products autograd forms for
    `F.linear` with a patched copy of the weight: bit-identical results, no copy of any weight."""

    @staticmethod
    def forward(ctx, x, weight, bias, rows, delta, buffers):  # x [..., in], weight [out, in], delta [k, in]
        ctx.save_for_backward(x, rows, delta)
        ctx.weight, ctx.buffers = weight, buffers  # the frozen weight is not saved: its storage changes in place
        with rows_patched(weight, rows, delta):
            return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # grad [..., out]
        x, rows, delta = ctx.saved_tensors
        weight, grad_x = ctx.weight, None
        grad2d = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[0]:
            with rows_patched(weight, rows, delta):
                grad_x = grad2d.mm(weight).view(x.shape)
        key = (tuple(weight.shape), grad.dtype, grad.device)
        if key not in ctx.buffers:
            ctx.buffers[key] = torch.empty(weight.shape, dtype=grad.dtype, device=grad.device)
        grad_weight = torch.mm(grad2d.t(), x.reshape(-1, x.shape[-1]), out=ctx.buffers[key])
        return grad_x, None, None, None, grad_weight.index_select(0, rows).to(delta.dtype), None


def _patched_forward(module: torch.nn.Linear, rows: torch.Tensor, delta: torch.Tensor, buffers: dict,
                     x: torch.Tensor):
    return PatchedRowsLinear.apply(x, module.weight, module.bias, rows, delta, buffers)


def lean_linears(model, names: Iterable[str]) -> dict[str, torch.nn.Linear]:
    """The named weights that are the own, unshared weight of a plain `nn.Linear` (no instance
    forward of its own, e.g. an accelerate hook) -> that module; the rest are patched up front."""
    modules = dict(model.named_modules())
    owners: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        owners[id(p)] = owners.get(id(p), 0) + 1
    out = {}
    for name in names:
        prefix, _, leaf = name.rpartition(".")
        module = modules.get(prefix)
        if (leaf == "weight" and isinstance(module, torch.nn.Linear) and "forward" not in vars(module)
                and owners[id(module.weight)] == 1):
            out[name] = module
    return out


@contextmanager
def patched_linears(linears: dict[str, torch.nn.Linear], rows: Mask, deltas: dict[str, torch.Tensor]) -> Iterator[None]:
    """For the duration, each module of `linears` computes `PatchedRowsLinear` with its rows and delta."""
    buffers: dict = {}  # weight-gradient buffers by shape, dtype and device
    try:
        for name, module in linears.items():
            module.forward = partial(_patched_forward, module, rows[name], deltas[name], buffers)
        yield
    finally:
        for module in linears.values():
            vars(module).pop("forward", None)


def train_rows(model, mask: Mask, batches: Iterable[torch.Tensor], steps: int, lr: float, desc: str,
               **loop: float | str) -> tuple[RowDelta, TrainStats]:
    """Train only the masked rows; returns their learned fp32 deltas. The model is not modified.

    Tensors are taken in the model's order, whatever the mask's order (a mask read back from
    safetensors is sorted by name): the global gradient-norm clip sums over them in that order,
    and another order rounds differently."""
    weights = dict(model.named_parameters())
    device = next(model.parameters()).device
    rows = {n: mask[n].to(device) for n in weights if n in mask}
    deltas = {n: torch.nn.Parameter(torch.zeros(len(r), *weights[n].shape[1:], device=device))
              for n, r in rows.items()}
    linears = lean_linears(model, rows)
    upfront = [n for n in rows if n not in linears]

    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device)
        kwargs = {"input_ids": batch, "labels": batch}
        if not upfront:
            return model(**kwargs).loss
        patched = {n: patch_rows(weights[n], rows[n], deltas[n]) for n in upfront}
        return functional_call(model, patched, args=(), kwargs=kwargs).loss

    with frozen(model), patched_linears(linears, rows, deltas):
        stats = optimize(loss_fn, list(deltas.values()), batches, steps, lr, desc, **loop)
    return {n: (mask[n].cpu(), d.detach().float().cpu()) for n, d in deltas.items()}, stats


def train_full(model, names: list[str], batches: Iterable[torch.Tensor], steps: int, lr: float, desc: str,
               fp32_master: bool = True, shard: bool = False, offload: bool = False,
               **loop: float) -> tuple[DenseDelta, TrainStats]:
    """Continual pre-training of the named parameters; returns `θ' − θ0` (fp32) for them and
    restores θ0 in the model (only a CPU copy of the trained tensors is kept). Half-precision
    parameters train through fp32 master copies (`fp32_master=False`: AdamW updates them in their
    own dtype, as maet did before; for comparison only). `shard` (with N processes) or `offload`:
    on a sharded copy instead (`train_full_sharded`)."""
    if (shard and distributed.active()) or offload:
        return train_full_sharded(model, names, batches, steps, lr, desc, offload, **loop)
    device = next(model.parameters()).device

    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device)
        return model(input_ids=batch, labels=batch).loss

    with frozen(model, trainable=names) as params:
        original = {n: params[n].detach().cpu().clone() for n in names}
        trainable = [params[n] for n in names]
        masters = fp32_masters(trainable) if fp32_master else None
        try:
            stats = optimize(loss_fn, trainable, batches, steps, lr, desc, masters=masters, **loop)
            final = dict(zip(names, masters or trainable))
            delta = {n: final[n].detach().float().cpu() - original[n].float() for n in names}
        finally:
            with torch.no_grad():
                for n in names:
                    params[n].copy_(original[n])
    return delta, stats


def train_full_sharded(model, names: list[str], batches: Iterable[torch.Tensor], steps: int, lr: float, desc: str,
                       offload: bool = False, **loop: float) -> tuple[DenseDelta, TrainStats]:
    """`train_full` under FSDP2 (`maet.runtime.sharded`): a sharded fp32 copy of the model trains,
    θ0 is not touched; the delta is made on rank 0's host ({} on the other ranks, which read the
    published stage from the cache)."""
    device = next(model.parameters()).device
    trainee = sharded.sharded_copy(model, names, offload)
    params = dict(trainee.named_parameters())

    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device)
        return trainee(input_ids=batch, labels=batch).loss

    stats = optimize(loss_fn, [params[n] for n in names], batches, steps, lr, desc, module=trainee, **loop)
    final = sharded.gathered(trainee, names)
    return {n: t - model.get_parameter(n).detach().float().cpu() for n, t in final.items()}, stats


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
