"""The merge-method registry: what each `method=` (and each reference model of the testbed)
builds from θ0 and the deltas.

A method is a small function from `Deltas` (θ0 and the artifacts it `needs`) and its own typed
parameters (keyword arguments named after the `merge.*` keys it reads, plus `seed`) to the new
values of the tensors it touches; tensors it leaves out are θ0. A baseline never pays for a
stage it does not use, and never sees a parameter it does not read. A linear method is declared
by its terms, `θ0 + Σ coefficient·artifact`: the same terms build it in memory
(`maet.method.merging.linear_merge`) and write it out of core (`maet.scale.export`). Every
method's arithmetic is `maet.method.merging.merge_tensor`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from maet.method import merging
from maet.method.merging import linear_merge, merge_tensor
from maet.method.types import layer_of

Weights = dict[str, torch.Tensor]


class Deltas:
    """θ0 (`base`: tensors by name) and the artifacts of one replication by name, e.g. `language`
    (R(Lj)), `ability` (R(A) on the key rows), `transferred` (M_T ⊙ R(A)), `ability_full`,
    `cpt_all`, `theta_a`, `oracle` (`maet.stages` declares them); an absent artifact reads None."""

    def __init__(self, base: Weights, **artifacts):
        self.base, self._artifacts = base, artifacts

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return self._artifacts.get(name)


# M_T ⊙ R(A) is not a stage's artifact: the transfer step makes it from R(A) (and R(Lj)).
MADE_FROM = {"transferred": "ability"}
# The controls' transferred deltas, made by the transfer step as M_T ⊙ R(A) is, from θ_A,full − θ0
# restricted to MAET's key rows or to as many random rows per tensor (`maet.engine.runner.row_sources`).
CONTROLS = {"full_key_rows": "transferred_key_rows", "full_random_rows": "transferred_random_rows"}
Term = tuple[str, "str | float"]  # (artifact, coefficient: a merge.* key such as "alpha", or a number)


@dataclass(frozen=True)
class Method:
    build: Callable[..., Weights]
    needs: frozenset[str]   # the artifacts it reads, by the name a stage yields them (`maet.stages`)
    doc: str
    tunable: bool           # reads merge.alpha, merge.beta and transfer.* (else they do not matter)
    params: tuple[str, ...]  # keyword arguments of `build`: merge.* keys (and `seed`)
    terms: tuple[Term, ...] | None = None  # a linear method: θ0 + Σ coefficient·artifact (None: not linear)
    reference: bool = False  # a reference model of the testbed (`report.references`), not a `method=` choice

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


def register_linear(name: str, terms: list[Term], doc: str, tunable: bool = False, reference: bool = False) -> None:
    """A linear method (or reference model) from its terms: it needs the artifacts they name (or
    what those are made from) and reads the merge.* keys among their coefficients."""
    params = tuple(sorted({w for _, w in terms if isinstance(w, str)}))

    def build(d: Deltas, **values) -> Weights:
        return linear_merge(d.base, [(values[w] if isinstance(w, str) else w, getattr(d, artifact) or {})
                                     for artifact, w in terms])

    needs = frozenset(MADE_FROM.get(artifact, artifact) for artifact, _ in terms)
    METHODS[name] = Method(build, needs, doc, tunable, params, tuple(terms), reference)


def choices() -> list[str]:
    """The names `method=` accepts (the reference models are not among them)."""
    return sorted(name for name, m in METHODS.items() if not m.reference)


register_linear("base", [], "θ0")
register_linear("language_only", [("language", 1.0)], "θ0 + R(Lj)")
register_linear("language_beta", [("language", "beta")], "θ0 + β·R(Lj): the language model at the merge's β")
register_linear("ability_full", [("ability_full", 1.0)],
                "θ_A,full: θ0 fully trained on C(L0,A) (the ability model of the baselines)")
register_linear("ability_only", [("ability", 1.0)], "θ0 + R(A) on the key rows")
register_linear("maet", [("language", "beta"), ("transferred", "alpha")], "θ0 + β·R(Lj) + α·(M_T ⊙ R(A))",
                tunable=True)
register_linear("ability_transferred", [("transferred", "alpha")],
                "θ0 + α·(M_T ⊙ R(A)): MAET's merge without the language delta", tunable=True)
register_linear("task_arithmetic", [("language", "beta"), ("ability_full", "alpha")],
                "θ0 + β·R(Lj) + α·(θ_A,full − θ0)", tunable=True)
register_linear("cpt_all", [("cpt_all", 1.0)], "θ0 fully trained on C(Lj) ∪ C(L0,A) with MAET's total token budget")


def _control(row_delta: str):
    def build(d: Deltas, alpha: float, beta: float) -> Weights:
        return linear_merge(d.base, [(beta, d.language or {}), (alpha, getattr(d, row_delta) or {})])
    return build


for _name, _rows, _doc in [("full_key_rows", "MAET's key rows", "the control of restricted training"),
                           ("full_random_rows", "as many random rows per tensor", "the control of localisation")]:
    register(_name, {"language", "ability_full", "mask"}, f"θ0 + β·R(Lj) + α·(M_T ⊙ (θ_A,full − θ0) on {_rows}): "
             f"{_doc}, merged as MAET merges", tunable=True)(_control(CONTROLS[_name]))


def _two_deltas(d: Deltas, alpha: float, beta: float, combine: merging.Combine | None = None) -> Weights:
    """θ0 + combine(β·R(Lj)[t], α·R(A,full)[t]) for every tensor either delta touches."""
    out = {}
    for name in dict.fromkeys([*d.language, *d.ability_full]):
        zero = torch.zeros_like(d.base[name], dtype=torch.float32)
        dense = [(beta, d.language.get(name, zero)), (alpha, d.ability_full.get(name, zero))]
        out[name] = merge_tensor(d.base[name], dense, combine=combine)
    return out


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
