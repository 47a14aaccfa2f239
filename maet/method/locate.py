"""Stage 1, locate: score every neuron (output row of a block linear weight) and keep the top
`ratio` of rows per tensor, per layer or over the whole model.

A neuron mask is a `maet.method.types.Mask`. Pure functions: a model and batches in, scores and masks out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch

from maet.method.train import counted, frozen
from maet.method.types import Mask, layer_of


def grad_scores(model, batches: Iterable[torch.Tensor], names: list[str], total: int | None = None) -> dict[str, torch.Tensor]:
    """Row scores `Σ_in |Σ_batches ∂L/∂W|` -> `{name: [out]}`; weights are not updated.

    `batches` yields `[batch, seq]` token ids; only the named weights get gradients.
    """
    with frozen(model, trainable=names, train=False) as params:
        for batch in counted(batches, total, "locate: gradients"):
            batch = batch.to(model.device)
            model(input_ids=batch, labels=batch).loss.backward()
        return {name: params[name].grad.abs().sum(dim=1).float().cpu() for name in names}


@torch.no_grad()
def activation_scores(model, batches: Iterable[torch.Tensor], names: list[str], total: int | None = None) -> dict[str, torch.Tensor]:
    """Mean |activation| of every output unit of the named linear layers -> `{name: [out]}`."""
    modules = dict(model.named_modules())
    sums = {n: None for n in names}
    count = 0

    def hook(name):
        def record(module, inputs, output):
            value = output.detach().abs().float().sum(dim=tuple(range(output.ndim - 1))).cpu()
            sums[name] = value if sums[name] is None else sums[name] + value
        return record

    handles = [modules[n.rsplit(".", 1)[0]].register_forward_hook(hook(n)) for n in names]
    try:
        with frozen(model, train=False):
            for batch in counted(batches, total, "locate: activations"):
                model(input_ids=batch.to(model.device))
                count += batch.numel()
    finally:
        for handle in handles:
            handle.remove()
    return {n: sums[n] / count for n in names}


def weight_change_scores(delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Row scores `Σ_in |θ' − θ0|` of a short CPT's weight change -> `{name: [out]}`."""
    return {n: d.abs().sum(dim=1).float() for n, d in delta.items()}


def random_scores(shapes: dict[str, torch.Size], seed: int) -> dict[str, torch.Tensor]:
    """Uniform random row scores `{name: [out]}` (the random-neuron ablation)."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(shape[0], generator=generator) for name, shape in shapes.items()}


def _top_rows(scores: dict[str, torch.Tensor], ratio: float) -> Mask:
    """Top `max(1, round(ratio * rows))` rows over the concatenation of the given tensors."""
    names = list(scores)
    flat = torch.cat([scores[n] for n in names])
    k = max(1, round(ratio * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.topk(flat, k, sorted=False).indices] = True
    mask, start = {}, 0
    for name in names:
        n = scores[name].numel()
        rows = chosen[start:start + n].nonzero().flatten()
        start += n
        if rows.numel():
            mask[name] = rows
    return mask


def select_rows(scores: dict[str, torch.Tensor], ratio: float, scope: str) -> Mask:
    """Neuron mask: the top `ratio` rows ranked within each tensor, each layer, or globally."""
    if scope == "tensor":
        groups = {name: [name] for name in scores}
    elif scope == "layer":
        groups = defaultdict(list)
        for name in scores:
            groups[layer_of(name)].append(name)
    elif scope == "global":
        groups = {"all": list(scores)}
    else:
        raise ValueError(f"unknown locate.scope {scope!r}")
    mask: Mask = {}
    for members in groups.values():
        mask.update(_top_rows({n: scores[n] for n in members}, ratio))
    return {name: mask[name] for name in scores if name in mask}


def mask_fraction(mask: Mask, shapes: dict[str, torch.Size]) -> float:
    """Selected rows / all candidate rows."""
    return sum(len(r) for r in mask.values()) / sum(s[0] for s in shapes.values())
