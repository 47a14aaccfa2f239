"""The merge-method registry: what each `method=` builds from θ0 and the deltas.

A method is a small function from `MergeInputs` to the new values of the tensors it touches
(see `maet.transfer.merge_weights`), plus the artifacts it needs, so that a baseline never
pays for a stage it does not use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from maet.extract import DenseDelta, RowDelta
from maet.transfer import merge_weights


@dataclass
class MergeInputs:
    base: dict[str, torch.Tensor]     # θ0 tensors by name
    language: DenseDelta | None       # R(Lj)
    ability: RowDelta | None          # R(A) on the key rows
    kept: list[str]                   # tensors of R(A) selected by the transfer stage
    alpha: float
    beta: float


@dataclass(frozen=True)
class Method:
    build: Callable[[MergeInputs], dict[str, torch.Tensor]]
    needs: frozenset[str]  # subset of {"ability", "language"}
    doc: str
    tunable: bool          # reads merge.alpha, merge.beta and transfer.* (else they do not matter)


METHODS: dict[str, Method] = {}


def register(name: str, needs: set[str], doc: str, tunable: bool = False):
    def wrap(fn):
        METHODS[name] = Method(fn, frozenset(needs), doc, tunable)
        return fn
    return wrap


@register("base", set(), "θ0")
def _base(x: MergeInputs) -> dict[str, torch.Tensor]:
    return {}


@register("language_only", {"language"}, "θ0 + R(Lj)")
def _language_only(x: MergeInputs) -> dict[str, torch.Tensor]:
    return merge_weights(x.base, x.language, None, [], alpha=0.0, beta=1.0)


@register("ability_only", {"ability"}, "θ0 + R(A) on the key rows")
def _ability_only(x: MergeInputs) -> dict[str, torch.Tensor]:
    return merge_weights(x.base, None, x.ability, list(x.ability), alpha=1.0, beta=0.0)


@register("maet", {"ability", "language"}, "θ0 + β·R(Lj) + α·(M_T ⊙ R(A))", tunable=True)
def _maet(x: MergeInputs) -> dict[str, torch.Tensor]:
    return merge_weights(x.base, x.language, x.ability, x.kept, x.alpha, x.beta)
