"""The merge-method registry: what each `method=` builds from θ0 and the deltas.

A method is a small function from `MergeInputs` to the new values of the tensors it touches
(see `maet.transfer.merge_weights`), plus the artifacts it needs, so that a baseline never
pays for a stage it does not use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from maet import merging
from maet.extract import DenseDelta, RowDelta
from maet.model import layer_of
from maet.transfer import merge_weights


@dataclass
class MergeInputs:
    base: dict[str, torch.Tensor]     # θ0 tensors by name
    language: DenseDelta | None       # R(Lj)
    ability: RowDelta | None          # R(A) on the key rows
    kept: list[str]                   # tensors of R(A) selected by the transfer stage
    alpha: float
    beta: float
    ability_full: DenseDelta | None = None  # θ_A,full − θ0: full-parameter CPT on C(L0,A)
    cpt_all: DenseDelta | None = None       # full CPT on C(Lj) ∪ C(L0,A), same total budget
    density: float = 0.5
    drop: float = 0.9
    swap_k: int = 1
    seed: int = 0


@dataclass(frozen=True)
class Method:
    build: Callable[[MergeInputs], dict[str, torch.Tensor]]
    needs: frozenset[str]  # subset of {"ability", "language", "ability_full", "cpt_all"}
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


def _per_tensor(x: MergeInputs, combine) -> dict[str, torch.Tensor]:
    """θ0 + combine(β·R(Lj)[t], α·R(A,full)[t]) for every tensor either delta touches."""
    out = {}
    for name in dict.fromkeys([*x.language, *x.ability_full]):
        zero = torch.zeros_like(x.base[name], dtype=torch.float32)
        lang = x.beta * x.language.get(name, zero)
        ability = x.alpha * x.ability_full.get(name, zero)
        out[name] = (x.base[name].float() + combine(name, lang, ability)).to(x.base[name].dtype)
    return out


@register("task_arithmetic", {"language", "ability_full"}, "θ0 + β·R(Lj) + α·(θ_A,full − θ0)", tunable=True)
def _task_arithmetic(x: MergeInputs) -> dict[str, torch.Tensor]:
    return _per_tensor(x, lambda name, lang, ability: lang + ability)


@register("ties", {"language", "ability_full"}, "TIES merge of β·R(Lj) and α·(θ_A,full − θ0)", tunable=True)
def _ties(x: MergeInputs) -> dict[str, torch.Tensor]:
    return _per_tensor(x, lambda name, lang, ability: merging.ties([lang, ability], x.density))


@register("dare", {"language", "ability_full"}, "DARE (drop, rescale) of β·R(Lj) and α·(θ_A,full − θ0)", tunable=True)
def _dare(x: MergeInputs) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(x.seed)
    return _per_tensor(x, lambda name, lang, ability: merging.dare(lang, x.drop, generator)
                       + merging.dare(ability, x.drop, generator))


@register("layer_swap", {"language", "ability_full"},
          "the k bottom and top layers of θ0 + R(Lj), the middle layers of θ_A,full")
def _layer_swap(x: MergeInputs) -> dict[str, torch.Tensor]:
    layers = sorted({layer_of(n) for n in [*x.language, *x.ability_full]})
    _, middle, _ = merging.swapped_layers(len(layers), x.swap_k)
    from_ability = {layers[i] for i in middle}
    out = {}
    for name in dict.fromkeys([*x.language, *x.ability_full]):
        source = x.ability_full if layer_of(name) in from_ability else x.language
        if name in source:
            out[name] = (x.base[name].float() + source[name]).to(x.base[name].dtype)
    return out


@register("cpt_all", {"cpt_all"}, "θ0 fully trained on C(Lj) ∪ C(L0,A) with MAET's total token budget")
def _cpt_all(x: MergeInputs) -> dict[str, torch.Tensor]:
    return merge_weights(x.base, x.cpt_all, None, [], alpha=0.0, beta=1.0)
