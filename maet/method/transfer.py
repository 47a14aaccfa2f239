"""Stage 3, transfer: which ability tensors to keep (M_T, from the cosine of R(A) and R(Lj) per
tensor or per row); the merge `θ* = θ0 + β·R(Lj) + α·(M_T ⊙ R(A))` (the paper's Eq. 3) is
`maet.method.merging.merge_weights`. All functions are pure: tensors in, tensors out.
"""

from __future__ import annotations

import torch

from maet.method.types import DenseDelta, Mask, RowDelta


def tensor_similarity(ability: RowDelta, language: DenseDelta, over: str = "tensor") -> dict[str, float]:
    """`s_t = cos(vec R(A)[t], vec R(Lj)[t])` for every tensor t where R(A) is defined.

    R(A)[t] (`[k, in]` values on k rows of a `[out, in]` tensor) is zero outside its rows, so the
    dot product only reads those rows of R(Lj)[t]. over="tensor": the norm of R(Lj)[t] is over the
    whole tensor (the cosine of the two flattened tensors; |s_t| ≤ ‖R(Lj)[t][rows]‖ / ‖R(Lj)[t]‖);
    over="rows": over the key rows only (the cosine of the two `[k, in]` blocks, in [-1, 1]).
    A tensor without language delta gets 0.
    """
    sims = {}
    for name, (rows, values) in ability.items():
        lang = language.get(name)
        if lang is None:
            sims[name] = 0.0
            continue
        lang_rows = lang.index_select(0, rows).double()
        dot = (values.double() * lang_rows).sum()
        norms = values.double().norm() * (lang_rows if over == "rows" else lang.double()).norm()
        sims[name] = float(dot / norms) if norms > 0 else 0.0
    return sims


def row_similarity(ability: RowDelta, language: DenseDelta) -> dict[tuple[str, int], float]:
    """`s_r = cos(R(A)[r], R(Lj)[r])` for every key row r (key `(tensor name, index in its k rows)`);
    0 for a row without language delta."""
    sims = {}
    for name, (rows, values) in ability.items():
        lang = language.get(name)
        lang_rows = lang.index_select(0, rows).double() if lang is not None else torch.zeros_like(values.double())
        dots = (values.double() * lang_rows).sum(1)
        norms = values.double().norm(dim=1) * lang_rows.norm(dim=1)
        cos = torch.where(norms > 0, dots / norms.clamp_min(1e-300), torch.zeros_like(dots))
        sims |= {(name, i): float(c) for i, c in enumerate(cos)}
    return sims


def kept_rows(ability: RowDelta, kept: list) -> dict[str, torch.Tensor]:
    """M_T as a boolean `[k]` per ability tensor, from kept tensor names or kept `(name, row)` keys."""
    chosen = set(kept)
    return {name: torch.tensor([name in chosen or (name, i) in chosen for i in range(len(rows))], dtype=torch.bool)
            for name, (rows, _) in ability.items()}


def masked(ability: RowDelta, keep: dict[str, torch.Tensor]) -> RowDelta:
    """M_T ⊙ R(A): the kept rows of every tensor that keeps any."""
    return {name: (rows[keep[name]], values[keep[name]]) for name, (rows, values) in ability.items()
            if bool(keep[name].any())}


def select_tensors(similarity: dict[str, float], select: str, tau: float, keep: float) -> list[str]:
    """Keys of the ability tensors (or rows) to transfer (least entangled with the language first).

    threshold: s_t < tau; abs_threshold: |s_t| < tau (tensors that point against R(Lj) are
    entangled too); ratio: the `max(1, round(keep*n))` lowest s_t; all: every tensor.
    """
    if select == "all":
        return list(similarity)
    if select == "threshold":
        return [n for n, s in similarity.items() if s < tau]
    if select == "abs_threshold":
        return [n for n, s in similarity.items() if abs(s) < tau]
    if select == "ratio":
        ranked = sorted(similarity, key=lambda n: (similarity[n], n))
        chosen = set(ranked[:max(1, round(keep * len(ranked)))])
        return [n for n in similarity if n in chosen]
    raise ValueError(f"unknown transfer.select {select!r}")


def restrict(delta: DenseDelta, rows: Mask) -> RowDelta:
    """A dense delta `{t: [out, in]}` cut to the rows of `rows` (`{t: LongTensor[k]}`): `{t: (rows[k], delta[t][rows] [k, in])}`."""
    return {name: (r, delta[name].index_select(0, r)) for name, r in rows.items() if name in delta}


def random_rows_like(mask: Mask, shapes: dict[str, torch.Size], seed: int) -> Mask:
    """As many rows per tensor as `mask` selects, drawn uniformly without replacement from the
    tensor's `shapes[t][0]` rows (sorted), by a generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randperm(shapes[name][0], generator=generator)[:len(rows)].sort().values
            for name, rows in sorted(mask.items())}


@torch.no_grad()
def load_weights(model, weights: dict[str, torch.Tensor]) -> None:
    """Copy `weights` into the model's parameters in place (no reload from disk)."""
    params = dict(model.named_parameters())
    for name, value in weights.items():
        params[name].copy_(value)
