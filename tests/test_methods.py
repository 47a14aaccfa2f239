"""Every registered method, called through `method=`'s registry, computes its own formula: the
expectations are hand-computed tensors or the formula written out here, on inputs where the
method's own choices (M_T, TIES's election, DARE's drops) change the result."""

import pytest
import torch

from maet.method.methods import METHODS, Deltas

W = "model.layers.0.mlp.up_proj.weight"
V = "model.layers.1.mlp.up_proj.weight"


def test_maet_merges_only_the_transferred_rows():
    base = {W: torch.ones(3, 2), V: torch.zeros(3, 2)}
    language = {W: torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), V: torch.ones(3, 2)}
    ability = {W: (torch.tensor([0, 2]), torch.tensor([[10.0, 20.0], [30.0, 40.0]])),
               V: (torch.tensor([1]), torch.tensor([[7.0, 7.0]]))}
    transferred = {W: (torch.tensor([2]), torch.tensor([[30.0, 40.0]]))}  # M_T kept row 2 of W only
    merged = METHODS["maet"](Deltas(base, language=language, ability=ability, transferred=transferred), {"alpha": 0.5, "beta": 2.0})
    # θ0 + 2·R(Lj) + 0.5·(M_T ⊙ R(A)), by hand
    assert torch.equal(merged[W], torch.tensor([[3.0, 5.0], [7.0, 9.0], [26.0, 33.0]]))
    assert torch.equal(merged[V], torch.full((3, 2), 2.0))  # R(A) of V not transferred: θ0 + 2·R(Lj)


def test_ability_only_adds_every_key_row_of_r_a():
    base = {W: torch.zeros(3, 2)}
    ability = {W: (torch.tensor([1]), torch.tensor([[4.0, -4.0]]))}
    merged = METHODS["ability_only"](Deltas(base, ability=ability, transferred={}), {})
    assert torch.equal(merged[W], torch.tensor([[0.0, 0.0], [4.0, -4.0], [0.0, 0.0]]))


def test_ties_scales_then_trims_elects_signs_and_averages_the_agreeing_entries():
    base = {W: torch.full((1, 4), 100.0)}
    language = {W: torch.tensor([[1.0, -2.0, 3.0, 0.5]])}
    ability_full = {W: torch.tensor([[6.0, 2.0, -2.0, -1.0]])}  # α = 0.5: [3, 1, -1, -0.5]
    deltas = Deltas(base, language=language, ability_full=ability_full)
    merged = METHODS["ties"](deltas, {"alpha": 0.5, "beta": 1.0, "density": 1.0})
    # entry 0: 1 and 3 agree -> 2; entry 1: -2 + 1 < 0 -> -2; entry 2: 3 - 1 > 0 -> 3; entry 3: 0.5 - 0.5 = 0 -> 0
    assert torch.equal(merged[W], torch.tensor([[102.0, 98.0, 103.0, 100.0]]))
    # density 0.5 keeps the 2 largest magnitudes of each: [0, -2, 3, 0] and [3, 0, 0, 0] -> [3, -2, 3, 0]
    trimmed = METHODS["ties"](deltas, {"alpha": 0.5, "beta": 1.0, "density": 0.5})
    assert torch.equal(trimmed[W], torch.tensor([[103.0, 98.0, 103.0, 100.0]]))


def _dare(drop, seed, alpha=0.5, beta=1.0):
    base = {W: torch.zeros(100, 80)}
    language, ability_full = {W: torch.ones(100, 80)}, {W: torch.full((100, 80), 10.0)}  # β·1 = 1, α·10 = 5
    deltas = Deltas(base, language=language, ability_full=ability_full)
    return METHODS["dare"](deltas, {"alpha": alpha, "beta": beta, "drop": drop, "seed": seed})[W]


def test_dare_drops_each_delta_on_its_own_and_rescales_the_survivors():
    merged = _dare(drop=0.5, seed=0)
    # per entry: each scaled delta (1 and 5) survives with probability 1/2, rescaled by 1/(1-0.5) = 2
    fractions = {value: float((merged == value).float().mean()) for value in (0.0, 2.0, 10.0, 12.0)}
    assert sum(fractions.values()) == pytest.approx(1.0)
    assert all(abs(f - 0.25) < 0.03 for f in fractions.values()), fractions  # 8000 entries: SD 0.005
    assert float(merged.mean()) == pytest.approx(6.0, abs=0.15)  # the expected value θ0 + 1 + 5


def test_dare_draws_its_drops_from_its_seed():
    assert torch.equal(_dare(0.5, seed=3), _dare(0.5, seed=3))
    assert not torch.equal(_dare(0.5, seed=3), _dare(0.5, seed=4))


def test_layer_swap_takes_the_ends_from_the_language_model_and_the_middle_from_the_ability_model():
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(5)]
    base = {n: torch.zeros(1) for n in names}
    language = {n: torch.full((1,), 1.0) for n in names}
    ability_full = {n: torch.full((1,), 2.0) for n in names}
    merged = METHODS["layer_swap"](Deltas(base, language=language, ability_full=ability_full), {"swap_k": 2})
    assert [float(merged[n]) for n in names] == [1.0, 1.0, 2.0, 1.0, 1.0]  # 5 layers, k = 2: only layer 2 swapped
    merged = METHODS["layer_swap"](Deltas(base, language=language, ability_full=ability_full), {"swap_k": 1})
    assert [float(merged[n]) for n in names] == [1.0, 2.0, 2.0, 2.0, 1.0]


def test_task_arithmetic_takes_a_tensor_only_one_delta_touches():
    base = {W: torch.zeros(2), V: torch.ones(2)}
    language = {W: torch.tensor([1.0, 2.0])}  # V: no language delta (e.g. a weight R(Lj) does not train)
    ability_full = {W: torch.tensor([4.0, 4.0]), V: torch.tensor([2.0, -2.0])}
    merged = METHODS["task_arithmetic"](Deltas(base, language=language, ability_full=ability_full), {"alpha": 0.5, "beta": 2.0})
    assert torch.equal(merged[W], torch.tensor([4.0, 6.0])) and torch.equal(merged[V], torch.tensor([2.0, 0.0]))
    only_language = METHODS["task_arithmetic"](Deltas(base, language={V: torch.tensor([1.0, 3.0])}, ability_full={W: torch.ones(2)}),
                                               {"alpha": 0.5, "beta": 2.0})  # and the other way round
    assert torch.equal(only_language[V], torch.tensor([3.0, 7.0])) and torch.equal(only_language[W], torch.full((2,), 0.5))
