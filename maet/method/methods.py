"""The merge-method registry: what each `method=` builds from θ0 and the deltas.

A method is a small function from `Deltas` (θ0 and the artifacts it `needs`) and its own typed
parameters (keyword arguments named after the `merge.*` keys it reads, plus `seed`) to the new
values of the tensors it touches; tensors it leaves out are θ0. A baseline never pays for a
stage it does not use, and never sees a parameter it does not read. Every method's arithmetic
is `maet.method.merging.merge_tensor`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from maet.method import merging
from maet.method.merging import merge_tensor
from maet.method.transfer import merge_weights
from maet.method.types import DenseDelta, RowDelta, layer_of

Weights = dict[str, torch.Tensor]


@dataclass
class Deltas:
    base: Weights                           # θ0 tensors by name
    language: DenseDelta | None = None      # R(Lj)
    ability: RowDelta | None = None         # R(A) on the key rows
    transferred: RowDelta | None = None     # M_T ⊙ R(A): the key rows the transfer stage kept
    ability_full: DenseDelta | None = None  # θ_A,full − θ0: full-parameter CPT on C(L0,A)
    cpt_all: DenseDelta | None = None       # full CPT on C(Lj) ∪ C(L0,A), same total budget


@dataclass(frozen=True)
class Method:
    build: Callable[..., Weights]
    needs: frozenset[str]   # subset of {"ability", "language", "ability_full", "cpt_all"}
    doc: str
    tunable: bool           # reads merge.alpha, merge.beta and transfer.* (else they do not matter)
    params: tuple[str, ...]  # keyword arguments of `build`: merge.* keys (and `seed`)

    def __call__(self, deltas: Deltas, values: dict[str, float | int]) -> Weights:
        """The method's weights; `values` holds at least its `params` (others are ignored)."""
        return self.build(deltas, **{p: values[p] for p in self.params})


METHODS: dict[str, Method] = {}


def register(name: str, needs: set[str], doc: str, tunable: bool = False):
    def wrap(fn):
        params = tuple(list(inspect.signature(fn).parameters)[1:])
        METHODS[name] = Method(fn, frozenset(needs), doc, tunable, params)
        return fn
    return wrap


@register("base", set(), "θ0")
def _base(d: Deltas) -> Weights:
    return {}


@register("language_only", {"language"}, "θ0 + R(Lj)")
def _language_only(d: Deltas) -> Weights:
    return merge_weights(d.base, d.language, None, [], alpha=0.0, beta=1.0)


@register("language_beta", {"language"}, "θ0 + β·R(Lj): the language model at the merge's β")
def _language_beta(d: Deltas, beta: float) -> Weights:
    return merge_weights(d.base, d.language, None, [], alpha=0.0, beta=beta)


@register("ability_full", {"ability_full"}, "θ_A,full: θ0 fully trained on C(L0,A) (the ability model of the baselines)")
def _ability_full(d: Deltas) -> Weights:
    return merge_weights(d.base, d.ability_full, None, [], alpha=0.0, beta=1.0)


@register("ability_only", {"ability"}, "θ0 + R(A) on the key rows")
def _ability_only(d: Deltas) -> Weights:
    return merge_weights(d.base, None, d.ability, list(d.ability), alpha=1.0, beta=0.0)


@register("maet", {"ability", "language"}, "θ0 + β·R(Lj) + α·(M_T ⊙ R(A))", tunable=True)
def _maet(d: Deltas, alpha: float, beta: float) -> Weights:
    return merge_weights(d.base, d.language, d.transferred, list(d.transferred), alpha, beta)


def _two_deltas(d: Deltas, alpha: float, beta: float, combine: merging.Combine | None = None) -> Weights:
    """θ0 + combine(β·R(Lj)[t], α·R(A,full)[t]) for every tensor either delta touches."""
    out = {}
    for name in dict.fromkeys([*d.language, *d.ability_full]):
        zero = torch.zeros_like(d.base[name], dtype=torch.float32)
        dense = [(beta, d.language.get(name, zero)), (alpha, d.ability_full.get(name, zero))]
        out[name] = merge_tensor(d.base[name], dense, combine=combine)
    return out


@register("task_arithmetic", {"language", "ability_full"}, "θ0 + β·R(Lj) + α·(θ_A,full − θ0)", tunable=True)
def _task_arithmetic(d: Deltas, alpha: float, beta: float) -> Weights:
    return _two_deltas(d, alpha, beta)


@register("ties", {"language", "ability_full"}, "TIES merge of β·R(Lj) and α·(θ_A,full − θ0)", tunable=True)
def _ties(d: Deltas, alpha: float, beta: float, density: float) -> Weights:
    return _two_deltas(d, alpha, beta, lambda deltas: merging.ties(deltas, density))


@register("dare", {"language", "ability_full"}, "DARE (drop, rescale) of β·R(Lj) and α·(θ_A,full − θ0)", tunable=True)
def _dare(d: Deltas, alpha: float, beta: float, drop: float, seed: int) -> Weights:
    generator = torch.Generator().manual_seed(seed)
    return _two_deltas(d, alpha, beta, lambda deltas: merging.dare(deltas[0], drop, generator)
                       + merging.dare(deltas[1], drop, generator))


@register("layer_swap", {"language", "ability_full"},
          "the k bottom and top layers of θ0 + R(Lj), the middle layers of θ_A,full")
def _layer_swap(d: Deltas, swap_k: int) -> Weights:
    layers = sorted({layer_of(n) for n in [*d.language, *d.ability_full]})
    _, middle, _ = merging.swapped_layers(len(layers), swap_k)
    from_ability = {layers[i] for i in middle}
    out = {}
    for name in dict.fromkeys([*d.language, *d.ability_full]):
        source = d.ability_full if layer_of(name) in from_ability else d.language
        if name in source:
            out[name] = merge_tensor(d.base[name], [(1.0, source[name])])
    return out


@register("cpt_all", {"cpt_all"}, "θ0 fully trained on C(Lj) ∪ C(L0,A) with MAET's total token budget")
def _cpt_all(d: Deltas) -> Weights:
    return merge_weights(d.base, d.cpt_all, None, [], alpha=0.0, beta=1.0)
