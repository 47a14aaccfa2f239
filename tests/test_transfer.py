import math

import pytest
import torch

from maet.method import merging, transfer
from maet.method.methods import METHODS, Deltas

NAMES = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(4)]
W0, W1, W2, W3 = NAMES


def _world(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = {n: torch.randn(8, 6, generator=g).to(dtype) for n in NAMES}
    language = {n: 0.1 * torch.randn(8, 6, generator=g) for n in base}
    ability = {n: (torch.tensor([1, 5]), 0.1 * torch.randn(2, 6, generator=g)) for n in [W0, W1, W2]}
    return base, language, ability


PARAMS = {"alpha": 0.5, "beta": 1.0, "density": 0.5, "drop": 0.9, "swap_k": 1, "seed": 0}  # merge.* defaults


def _inputs(dtype=torch.float32, **params):
    """(Deltas, the merge.* values every method takes its own parameters from)."""
    base, language, ability = _world(dtype=dtype)
    g = torch.Generator().manual_seed(9)
    full = {n: 0.1 * torch.randn(8, 6, generator=g) for n in base}
    cpt = {n: 0.1 * torch.randn(8, 6, generator=g) for n in base}
    transferred = {W0: ability[W0], W2: (ability[W2][0][:1], ability[W2][1][:1])}  # M_T: a strict subset
    on_rows = {W1: (torch.tensor([0, 7]), full[W1][[0, 7]])}  # a control's M_T ⊙ (θ_A,full − θ0)[rows]
    return Deltas(base, language=language, ability=ability, transferred=transferred, ability_full=full,
                  cpt_all=cpt, theta_a=ability, oracle=full, transferred_key_rows=on_rows,
                  transferred_random_rows=on_rows), PARAMS | params


def _apply(base, weights):
    return {n: weights.get(n, t) for n, t in base.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_alpha_zero_gives_exactly_the_language_model(dtype):
    base, language, ability = _world(dtype=dtype)
    merged = _apply(base, merging.merge_weights(base, language, ability, list(ability), alpha=0.0, beta=1.0))
    language_model = _apply(base, METHODS["language_only"](Deltas(base, language=language, ability=ability), {}))
    for n in base:  # θ0 + R(Lj), written out: the sum in fp32, cast to θ0's dtype once
        expected = (base[n].float() + language[n]).to(dtype)
        assert torch.equal(merged[n], expected) and torch.equal(language_model[n], expected), n
    assert not torch.equal(language_model[W0], base[W0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_alpha_beta_zero_gives_exactly_the_base_model(dtype):
    base, language, ability = _world(dtype=dtype)
    merged = _apply(base, merging.merge_weights(base, language, ability, list(ability), alpha=0.0, beta=0.0))
    assert all(torch.equal(merged[n], base[n]) and merged[n].dtype == dtype for n in base)


def test_merge_matches_the_dense_formula():
    base, language, ability = _world()
    kept = [W0, W2]
    merged = _apply(base, merging.merge_weights(base, language, ability, kept, alpha=0.7, beta=0.5))
    for n in base:
        expected = base[n] + 0.5 * language[n]
        if n in kept:
            rows, values = ability[n]
            expected[rows] += 0.7 * values
        assert torch.allclose(merged[n], expected, atol=1e-6)
    assert torch.allclose(merged[W1], base[W1] + 0.5 * language[W1])  # not kept: no ability


def test_similarity_is_the_cosine_of_the_flattened_tensors():
    base, language, ability = _world()
    sims = transfer.tensor_similarity(ability, language)
    for n, (rows, values) in ability.items():
        dense = torch.zeros(8, 6)
        dense[rows] = values
        expected = torch.nn.functional.cosine_similarity(dense.flatten(), language[n].flatten(), dim=0)
        assert sims[n] == pytest.approx(float(expected), abs=1e-6)
    assert transfer.tensor_similarity(ability, {})[W0] == 0.0


def test_similarity_over_the_key_rows_is_the_cosine_of_those_rows():
    base, language, ability = _world()
    sims = transfer.tensor_similarity(ability, language, over="rows")
    whole = transfer.tensor_similarity(ability, language)
    for n, (rows, values) in ability.items():
        expected = torch.nn.functional.cosine_similarity(values.flatten(), language[n][rows].flatten(), dim=0)
        assert sims[n] == pytest.approx(float(expected), abs=1e-6)
        assert abs(whole[n]) <= abs(sims[n]) + 1e-9  # the whole-tensor norm is the larger one
    aligned = {W0: (ability[W0][0], language[W0][ability[W0][0]].clone())}  # R(A) = R(Lj) on its rows
    assert transfer.tensor_similarity(aligned, language, over="rows")[W0] == pytest.approx(1.0)


def test_tensor_selection_modes():
    sims = {"a": 0.3, "b": -0.2, "c": 0.0, "d": -0.5}
    assert transfer.select_tensors(sims, "threshold", 0.0, 0.5) == ["b", "d"]
    assert transfer.select_tensors(sims, "threshold", 0.31, 0.5) == ["a", "b", "c", "d"]
    assert transfer.select_tensors(sims, "ratio", 0.0, 0.5) == ["b", "d"]
    assert transfer.select_tensors(sims, "ratio", 0.0, 0.75) == ["b", "c", "d"]
    assert transfer.select_tensors(sims, "all", 0.0, 0.5) == ["a", "b", "c", "d"]
    assert transfer.select_tensors(sims, "abs_threshold", 0.25, 0.5) == ["b", "c"]
    assert transfer.select_tensors(sims, "abs_threshold", 0.2, 0.5) == ["c"]  # strictly below: |-0.2| is not
    assert transfer.select_tensors(sims, "threshold", -0.2, 0.5) == ["d"]
    assert transfer.select_tensors(sims, "ratio", 0.0, 0.25) == ["d"]  # round(0.25 * 4) = 1
    assert transfer.select_tensors(sims, "ratio", 0.0, 0.1) == ["d"]  # round(0.4) = 0: at least one
    with pytest.raises(ValueError, match="unknown transfer.select 'lowest'"):
        transfer.select_tensors(sims, "lowest", 0.0, 0.5)


def test_similarity_of_a_tensor_without_a_language_delta_or_with_a_zero_one_is_zero():
    rows, values = torch.tensor([0]), torch.tensor([[1.0, 2.0]])
    ability = {"no_language": (rows, values), "zero": (rows, values), "some": (rows, values)}
    language = {"zero": torch.zeros(3, 2), "some": torch.tensor([[2.0, 4.0], [0.0, 0.0], [0.0, 0.0]])}
    for over in ("tensor", "rows"):
        assert transfer.tensor_similarity(ability, language, over) == {"no_language": 0.0, "zero": 0.0,
                                                                       "some": pytest.approx(1.0)}


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_method_keeps_shapes_dtypes_and_is_finite(name, dtype):
    x, p = _inputs(dtype=dtype)
    weights = METHODS[name](x, p)
    for n, w in weights.items():
        assert w.shape == x.base[n].shape and w.dtype == dtype and torch.isfinite(w.float()).all()
    assert (weights == {}) == (name == "base")
    assert set(weights) <= set(x.base)


@pytest.mark.parametrize("name", [n for n in sorted(METHODS) if n in ("maet", "task_arithmetic")])
def test_alpha_zero_gives_the_language_model_for_additive_merges(name):
    x, p = _inputs(alpha=0.0)
    language_model = METHODS["language_only"](x, p)
    merged = METHODS[name](x, p)
    assert all(torch.equal(merged.get(n, x.base[n]), language_model.get(n, x.base[n])) for n in x.base)


def test_task_arithmetic_adds_the_full_ability_delta():
    x, p = _inputs(alpha=0.7, beta=0.4)
    merged = METHODS["task_arithmetic"](x, p)
    for n in x.base:
        assert torch.allclose(merged[n], x.base[n] + 0.4 * x.language[n] + 0.7 * x.ability_full[n], atol=1e-6)


def test_layer_swap_takes_exactly_the_configured_layers():
    x, p = _inputs(swap_k=1)
    merged = METHODS["layer_swap"](x, p)
    for i, n in enumerate(NAMES):  # 4 layers, k=1: layers 0 and 3 from the language model
        source = x.language if i in (0, 3) else x.ability_full
        assert torch.equal(merged[n], x.base[n] + source[n]), n
    x0, p0 = _inputs(swap_k=0)
    assert all(torch.equal(w, x0.base[n] + x0.ability_full[n]) for n, w in METHODS["layer_swap"](x0, p0).items())


def test_cpt_all_applies_its_delta():
    x, p = _inputs()
    merged = METHODS["cpt_all"](x, p)
    assert all(torch.equal(merged[n], x.base[n] + x.cpt_all[n]) for n in x.base)


def test_load_weights_writes_into_the_model_in_place(tiny_model):
    name, param = next((n, p) for n, p in tiny_model.named_parameters() if "q_proj" in n)
    ptr = param.data_ptr()
    transfer.load_weights(tiny_model, {name: torch.full_like(param, 0.5)})
    assert param.data_ptr() == ptr and math.isclose(float(param.detach().mean()), 0.5)


def test_dare_without_dropping_is_task_arithmetic():
    x, p = _inputs(drop=0.0)
    dare, arithmetic = METHODS["dare"](x, p), METHODS["task_arithmetic"](x, p)
    assert all(torch.allclose(dare[n], arithmetic[n], atol=1e-6) for n in x.base)


def test_each_method_takes_only_its_own_parameters():
    params = {name: method.params for name, method in METHODS.items()}
    assert params["maet"] == params["task_arithmetic"] == ("alpha", "beta")
    assert params["ties"] == ("alpha", "beta", "density") and params["dare"] == ("alpha", "beta", "drop", "seed")
    assert params["layer_swap"] == ("swap_k",) and params["base"] == params["cpt_all"] == ()
    x, p = _inputs()
    assert METHODS["layer_swap"](x, {"swap_k": 1}).keys() == METHODS["layer_swap"](x, p).keys()  # nothing else read


def test_one_arithmetic_for_dense_and_row_deltas():
    from maet.method.merging import merge_tensor

    base, language, ability = _world()
    rows, values = ability[W0]
    merged = merge_tensor(base[W0], [(0.3, language[W0])], [(2.0, rows, values)])
    expected = (base[W0] + 0.3 * language[W0]).index_add(0, rows, 2.0 * values)
    assert torch.equal(merged, expected)
    assert torch.equal(merge_tensor(base[W0]), base[W0])  # no delta: θ0 exactly
    assert torch.equal(merging.merge_weights(base, language, ability, [W0], 2.0, 0.3)[W0], merged)


def test_row_similarity_is_the_cosine_of_each_key_row():
    base, language, ability = _world()
    sims = transfer.row_similarity(ability, language)
    assert len(sims) == sum(len(rows) for rows, _ in ability.values())
    for (name, i), s in sims.items():
        rows, values = ability[name]
        expected = torch.nn.functional.cosine_similarity(values[i], language[name][rows[i]], dim=0)
        assert s == pytest.approx(float(expected), abs=1e-6)
    assert set(transfer.row_similarity(ability, {}).values()) == {0.0}


def test_row_granularity_keeps_single_rows_and_tensor_granularity_whole_tensors():
    base, language, ability = _world()
    by_row = transfer.row_similarity(ability, language)
    chosen = transfer.select_tensors(by_row, "threshold", 0.0, 0.5)
    kept = transfer.masked(ability, transfer.kept_rows(ability, chosen))
    assert sum(len(rows) for rows, _ in kept.values()) == len(chosen)
    for name, (rows, values) in kept.items():
        for row, value in zip(rows, values):
            i = int((ability[name][0] == row).nonzero())
            assert by_row[(name, i)] < 0 and torch.equal(value, ability[name][1][i])
    whole = transfer.masked(ability, transfer.kept_rows(ability, [W0, W2]))
    assert list(whole) == [W0, W2] and all(torch.equal(whole[n][1], ability[n][1]) for n in whole)


def test_same_beta_language_reference_and_ability_full_reference():
    x, p = _inputs(beta=0.25)
    lang = METHODS["language_beta"](x, p)
    assert all(torch.allclose(lang[n], x.base[n] + 0.25 * x.language[n], atol=1e-6) for n in x.base)
    full = METHODS["ability_full"](x, p)
    assert all(torch.equal(full[n], x.base[n] + x.ability_full[n]) for n in x.base)


def test_restrict_cuts_a_dense_delta_to_the_given_rows():
    delta = {W0: torch.arange(12.0).reshape(4, 3), W1: torch.ones(4, 3)}
    cut = transfer.restrict(delta, {W0: torch.tensor([1, 3]), W2: torch.tensor([0])})
    assert list(cut) == [W0]  # W2 has no delta
    rows, values = cut[W0]
    assert rows.tolist() == [1, 3] and values.tolist() == [[3.0, 4.0, 5.0], [9.0, 10.0, 11.0]]


def test_random_rows_keep_the_count_per_tensor_and_follow_the_seed():
    mask = {W0: torch.tensor([0, 1, 2]), W1: torch.tensor([5])}
    shapes = {W0: torch.Size([50, 4]), W1: torch.Size([8, 4])}
    drawn = transfer.random_rows_like(mask, shapes, seed=3)
    assert {n: len(r) for n, r in drawn.items()} == {W0: 3, W1: 1}
    assert all(r.tolist() == sorted(set(r.tolist())) and 0 <= int(r.min()) and int(r.max()) < shapes[n][0]
               for n, r in drawn.items())
    again, other = transfer.random_rows_like(mask, shapes, 3), transfer.random_rows_like(mask, shapes, 4)
    assert all(torch.equal(drawn[n], again[n]) for n in mask)
    assert any(not torch.equal(drawn[n], other[n]) for n in mask)
