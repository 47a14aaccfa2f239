"""The merge arithmetic, one tensor at a time: `θ0 + combine(w_i·δ_i) + Σ w_j·R_j[rows]`, used
by every method in memory (`maet.method.methods`) and by the out-of-core merge
(`maet.scale.streaming`); the general linear merge of whole deltas; and the merge operators of the
baselines.

TIES (Yadav et al., 2023): trim each task vector to its largest-magnitude entries, elect a
sign per entry, and average the entries that agree with it. DARE (Yu et al., 2024): drop each
entry with probability p and rescale the survivors by 1/(1-p), which keeps the expected value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from maet.method.types import DenseDelta, RowDelta

Combine = Callable[[list[torch.Tensor]], torch.Tensor]


def merge_tensor(theta0: torch.Tensor, dense: Sequence[tuple[float, torch.Tensor]] = (),
                 rows: Sequence[tuple[float, torch.Tensor, torch.Tensor]] = (),
                 combine: Combine | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`θ0 + combine([w·δ for dense deltas]) + Σ w·values scattered into `rows``, in fp32, cast to
    `dtype` (default θ0's). `combine` defaults to the sum in the given order (TIES and DARE pass
    theirs); a row delta is `(w, rows[k], values[k, in])`. With no deltas the result is θ0 exactly."""
    out = theta0.float()
    scaled = [w * delta.to(out.device).float() for w, delta in dense]
    if scaled:
        out = out + (combine(scaled) if combine is not None else _sum(scaled))
    for w, index, values in rows:
        out = out.index_add(0, index.to(out.device), w * values.to(out.device))
    return out.to(dtype or theta0.dtype)


def linear_merge(base: dict[str, torch.Tensor], terms: Sequence[tuple[float, DenseDelta | RowDelta]]
                 ) -> dict[str, torch.Tensor]:
    """New values of every tensor the terms touch: `θ0 + Σ w·δ`, each `δ` a dense delta
    `{name: [out, in]}` or a row delta `{name: (rows[k], values[k, in])}`. Per tensor the dense
    terms are summed first, in the given order, then the row terms are added in theirs
    (`merge_tensor`); tensors no term touches are left out (they stay θ0)."""
    merged = {}
    for name in dict.fromkeys(n for _, delta in terms for n in delta):
        dense = [(w, d[name]) for w, d in terms if name in d and not isinstance(d[name], tuple)]
        rows = [(w, *d[name]) for w, d in terms if name in d and isinstance(d[name], tuple)]
        merged[name] = merge_tensor(base[name], dense, rows)
    return merged


def merge_weights(base: dict[str, torch.Tensor], language: DenseDelta | None, ability: RowDelta | None,
                  kept: list[str], alpha: float, beta: float) -> dict[str, torch.Tensor]:
    """The paper's Eq. 3, `θ0 + β·R(Lj) + α·(M_T ⊙ R(A))`, with M_T the `kept` tensors of R(A):
    the new values of every tensor it touches (θ0's dtypes). α = 0 gives exactly θ0 + β·R(Lj);
    α = β = 0 gives exactly θ0."""
    return linear_merge(base, [(beta, language or {}), (alpha, {n: ability[n] for n in kept})])


def _sum(tensors: list[torch.Tensor]) -> torch.Tensor:
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the `ceil(density * numel)` entries of largest magnitude, zero the rest."""
    k = max(1, int(torch.ceil(torch.tensor(density * delta.numel())).item()))
    if k >= delta.numel():
        return delta.clone()
    threshold = delta.abs().flatten().kthvalue(delta.numel() - k + 1).values
    return torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta))


def ties(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES merge of same-shape task vectors (already scaled by their coefficients).

    trim each to `density`; elected sign = sign of the sum of the trimmed vectors; result =
    per entry, the mean of the trimmed values whose sign agrees with the elected one (0 if none).
    """
    trimmed = torch.stack([trim(d.float(), density) for d in deltas])
    sign = torch.sign(trimmed.sum(dim=0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    total = (trimmed * agree).sum(dim=0)
    count = agree.sum(dim=0)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def dare(delta: torch.Tensor, drop: float, generator: torch.Generator) -> torch.Tensor:
    """Drop entries with probability `drop`, rescale the kept ones by 1/(1-drop)."""
    if drop == 0:
        return delta.clone()
    keep = torch.rand(delta.shape, generator=generator) >= drop
    return torch.where(keep, delta.float() / (1 - drop), torch.zeros_like(delta, dtype=torch.float32))


def swapped_layers(num_layers: int, k: int) -> tuple[range, range, range]:
    """(bottom, middle, top) layer indices: the k lowest and k highest layers, and the rest."""
    if not 0 <= 2 * k <= num_layers:
        raise ValueError(f"layer swap needs 0 <= 2*k <= num_layers (k={k}, num_layers={num_layers})")
    return range(0, k), range(k, num_layers - k), range(num_layers - k, num_layers)
