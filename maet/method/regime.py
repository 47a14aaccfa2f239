"""How far the deltas move the model, and how well they add: method-agnostic measures of the
weight-arithmetic regime of a testbed (docs/testbed.md).

- relative norm ‖Δ‖ / ‖θ0‖ of a delta, over the entries it touches (the key rows of a row delta);
- weight disentanglement error (Ortiz-Jimenez et al., 2023, "Task Arithmetic in the Tangent
  Space", Eq. 5 with α = 1): how often θ0 + τ_A + τ_L disagrees with θ0 + τ_A on ability inputs
  and with θ0 + τ_L on language inputs, as next-token argmax over every non-pad token.
  0 means the two deltas act on their inputs as if the other were absent; 2 is the maximum.
"""

from __future__ import annotations

import torch

from maet.method.merging import merge_tensor
from maet.method.transfer import load_weights
from maet.method.types import DenseDelta, RowDelta


def relative_norm(base: dict[str, torch.Tensor], delta: DenseDelta | RowDelta) -> float:
    """‖Δ‖ / ‖θ0‖ over the entries the delta touches (fp64 sums; 0 for an empty delta)."""
    num = den = 0.0
    for name, value in delta.items():
        if isinstance(value, tuple):
            rows, value = value
            theta0 = base[name].index_select(0, rows)
        else:
            theta0 = base[name]
        num += float(value.double().pow(2).sum())
        den += float(theta0.double().pow(2).sum())
    return (num / den) ** 0.5 if den > 0 else 0.0


def added(base: dict[str, torch.Tensor], *deltas: DenseDelta | RowDelta) -> dict[str, torch.Tensor]:
    """`θ0 + Σ Δ` on every tensor a delta touches (the tensors not returned stay θ0)."""
    out = {}
    for name in dict.fromkeys(n for d in deltas for n in d):
        dense = [(1.0, d[name]) for d in deltas if name in d and not isinstance(d[name], tuple)]
        rows = [(1.0, *d[name]) for d in deltas if name in d and isinstance(d[name], tuple)]
        out[name] = merge_tensor(base[name], dense, rows)
    return out


@torch.no_grad()
def argmax_tokens(model, weights: dict[str, torch.Tensor], base: dict[str, torch.Tensor],
                  batch: torch.Tensor) -> torch.Tensor:
    """Next-token argmax `[batch, seq]` of the model with `weights` loaded (θ0 and the mode restored after)."""
    device, was_training = next(model.parameters()).device, model.training
    try:
        load_weights(model, weights)
        model.eval()
        return model(input_ids=batch.to(device)).logits.argmax(-1).cpu()
    finally:
        load_weights(model, {n: base[n] for n in weights})
        model.train(was_training)


def disentanglement_error(model, base: dict[str, torch.Tensor], ability: DenseDelta | RowDelta,
                          language: DenseDelta | RowDelta, ability_batch: torch.Tensor,
                          language_batch: torch.Tensor) -> dict[str, float]:
    """{"ability": disagreement of θ0+τ_A+τ_L with θ0+τ_A on ability tokens, "language": of
    θ0+τ_A+τ_L with θ0+τ_L on language tokens, "error": their sum}; batches are `[n, seq]` ids."""
    both = added(base, ability, language)
    on_ability = argmax_tokens(model, both, base, ability_batch) != argmax_tokens(
        model, added(base, ability), base, ability_batch)
    on_language = argmax_tokens(model, both, base, language_batch) != argmax_tokens(
        model, added(base, language), base, language_batch)
    ability_error, language_error = float(on_ability.float().mean()), float(on_language.float().mean())
    return {"ability": ability_error, "language": language_error, "error": ability_error + language_error}
