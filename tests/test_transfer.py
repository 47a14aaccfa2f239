import math

import pytest
import torch

from maet import transfer
from maet.methods import METHODS, MergeInputs


def _world(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = {f"w{i}": torch.randn(8, 6, generator=g).to(dtype) for i in range(4)}
    language = {n: 0.1 * torch.randn(8, 6, generator=g) for n in base}
    ability = {n: (torch.tensor([1, 5]), 0.1 * torch.randn(2, 6, generator=g)) for n in ["w0", "w1", "w2"]}
    return base, language, ability


def _apply(base, weights):
    return {n: weights.get(n, t) for n, t in base.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_alpha_zero_gives_exactly_the_language_model(dtype):
    base, language, ability = _world(dtype=dtype)
    merged = _apply(base, transfer.merge_weights(base, language, ability, list(ability), alpha=0.0, beta=1.0))
    language_model = _apply(base, METHODS["language_only"].build(MergeInputs(base, language, ability, [], 1.0, 1.0)))
    assert all(torch.equal(merged[n], language_model[n]) for n in base)
    assert not torch.equal(language_model["w0"], base["w0"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_alpha_beta_zero_gives_exactly_the_base_model(dtype):
    base, language, ability = _world(dtype=dtype)
    merged = _apply(base, transfer.merge_weights(base, language, ability, list(ability), alpha=0.0, beta=0.0))
    assert all(torch.equal(merged[n], base[n]) and merged[n].dtype == dtype for n in base)


def test_merge_matches_the_dense_formula():
    base, language, ability = _world()
    kept = ["w0", "w2"]
    merged = _apply(base, transfer.merge_weights(base, language, ability, kept, alpha=0.7, beta=0.5))
    for n in base:
        expected = base[n] + 0.5 * language[n]
        if n in kept:
            rows, values = ability[n]
            expected[rows] += 0.7 * values
        assert torch.allclose(merged[n], expected, atol=1e-6)
    assert torch.allclose(merged["w1"], base["w1"] + 0.5 * language["w1"])  # not kept: no ability


def test_similarity_is_the_cosine_of_the_flattened_tensors():
    base, language, ability = _world()
    sims = transfer.tensor_similarity(ability, language)
    for n, (rows, values) in ability.items():
        dense = torch.zeros(8, 6)
        dense[rows] = values
        expected = torch.nn.functional.cosine_similarity(dense.flatten(), language[n].flatten(), dim=0)
        assert sims[n] == pytest.approx(float(expected), abs=1e-6)
    assert transfer.tensor_similarity(ability, {})["w0"] == 0.0


def test_tensor_selection_modes():
    sims = {"a": 0.3, "b": -0.2, "c": 0.0, "d": -0.5}
    assert transfer.select_tensors(sims, "threshold", 0.0, 0.5) == ["b", "d"]
    assert transfer.select_tensors(sims, "threshold", 0.31, 0.5) == ["a", "b", "c", "d"]
    assert transfer.select_tensors(sims, "ratio", 0.0, 0.5) == ["b", "d"]
    assert transfer.select_tensors(sims, "ratio", 0.0, 0.75) == ["b", "c", "d"]
    assert transfer.select_tensors(sims, "all", 0.0, 0.5) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_keeps_shapes_dtypes_and_is_finite(name):
    base, language, ability = _world(dtype=torch.bfloat16)
    weights = METHODS[name].build(MergeInputs(base, language, ability, list(ability), 0.5, 1.0))
    for n, w in weights.items():
        assert w.shape == base[n].shape and w.dtype == base[n].dtype and torch.isfinite(w.float()).all()
    if name == "base":
        assert weights == {}


def test_load_weights_writes_into_the_model_in_place(tiny_model):
    name, param = next((n, p) for n, p in tiny_model.named_parameters() if "q_proj" in n)
    ptr = param.data_ptr()
    transfer.load_weights(tiny_model, {name: torch.full_like(param, 0.5)})
    assert param.data_ptr() == ptr and math.isclose(float(param.detach().mean()), 0.5)
