from collections import defaultdict

import pytest
import torch

from conftest import random_batches
from maet import locate
from maet.model import block_linear_names
from maet.types import layer_of
from maet.settings import MODULES


def _shapes(model):
    names = block_linear_names(model, list(MODULES))
    return {n: p.shape for n, p in model.named_parameters() if n in names}


@pytest.mark.parametrize("ratio", [0.05, 0.25, 0.5, 1.0])
def test_tensor_scope_takes_the_ratio_of_every_tensor(tiny_model, ratio):
    shapes = _shapes(tiny_model)
    mask = locate.select_rows(locate.random_scores(shapes, seed=1), ratio, "tensor")
    assert set(mask) == set(shapes)
    for name, rows in mask.items():
        assert len(rows) == max(1, round(ratio * shapes[name][0]))
        assert len(set(rows.tolist())) == len(rows) and rows.max() < shapes[name][0]


@pytest.mark.parametrize("ratio", [0.05, 0.3])
def test_layer_scope_takes_the_ratio_of_every_layer(tiny_model, ratio):
    shapes = _shapes(tiny_model)
    mask = locate.select_rows(locate.random_scores(shapes, seed=2), ratio, "layer")
    rows_per_layer, chosen_per_layer = defaultdict(int), defaultdict(int)
    for name, shape in shapes.items():
        rows_per_layer[layer_of(name)] += shape[0]
        chosen_per_layer[layer_of(name)] += len(mask.get(name, []))
    for layer, total in rows_per_layer.items():
        assert chosen_per_layer[layer] == round(ratio * total)


@pytest.mark.parametrize("ratio", [0.01, 0.05, 0.3])
def test_global_scope_takes_the_ratio_of_the_model(tiny_model, ratio):
    shapes = _shapes(tiny_model)
    mask = locate.select_rows(locate.random_scores(shapes, seed=3), ratio, "global")
    total = sum(s[0] for s in shapes.values())
    assert sum(len(r) for r in mask.values()) == round(ratio * total)
    assert locate.mask_fraction(mask, shapes) == pytest.approx(round(ratio * total) / total)


def test_selected_rows_are_the_highest_scored(tiny_model):
    scores = locate.random_scores(_shapes(tiny_model), seed=4)
    mask = locate.select_rows(scores, 0.2, "global")
    chosen = torch.cat([scores[n][r] for n, r in mask.items()])
    others = torch.cat([scores[n][[i for i in range(len(s)) if i not in set(mask.get(n, torch.tensor([])).tolist())]]
                        for n, s in scores.items()])
    assert chosen.min() > others.max()


def test_random_scores_are_seeded(tiny_model):
    shapes = _shapes(tiny_model)
    a, b, c = (locate.random_scores(shapes, seed) for seed in (7, 7, 8))
    assert all(torch.equal(a[n], b[n]) for n in shapes)
    assert not all(torch.equal(a[n], c[n]) for n in shapes)


def test_grad_scores_accumulate_signed_gradients_then_take_abs(tiny_model):
    names = block_linear_names(tiny_model, ["up_proj", "q_proj"])
    batches = random_batches(tiny_model.config.vocab_size, 2)
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    scores = locate.grad_scores(tiny_model, batches, names)

    grads = []
    for batch in batches:  # reference: per-batch gradients, summed with their sign
        tiny_model.zero_grad()
        tiny_model(input_ids=batch, labels=batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in tiny_model.named_parameters() if n in names})
    for name in names:
        expected = (grads[0][name] + grads[1][name]).abs().sum(dim=1)
        assert torch.allclose(scores[name], expected, rtol=1e-4, atol=1e-7)
        assert not torch.allclose(scores[name], grads[0][name].abs().sum(1) + grads[1][name].abs().sum(1))
    assert all(torch.equal(before[n], p) for n, p in tiny_model.named_parameters()), "locate changed weights"


def test_only_configured_modules_hold_neurons(tiny_model):
    names = block_linear_names(tiny_model, ["gate_proj", "up_proj", "down_proj"])
    assert names and all(".mlp." in n for n in names)
    assert not any("embed" in n or "norm" in n or "lm_head" in n for n in block_linear_names(tiny_model, list(MODULES)))


def test_activation_scores_are_mean_absolute_outputs(tiny_model):
    names = block_linear_names(tiny_model, ["up_proj"])
    batches = random_batches(tiny_model.config.vocab_size, 2)
    scores = locate.activation_scores(tiny_model, batches, names)
    captured = []
    module = dict(tiny_model.named_modules())[names[0].rsplit(".", 1)[0]]
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o.detach().abs()))
    with torch.no_grad():
        for batch in batches:
            tiny_model(input_ids=batch)
    handle.remove()
    expected = torch.cat([c.reshape(-1, c.shape[-1]) for c in captured]).mean(dim=0)
    assert torch.allclose(scores[names[0]], expected, atol=1e-6)
    assert scores[names[0]].shape == (tiny_model.config.intermediate_size,)


def test_weight_change_scores_sum_the_row_changes():
    delta = {"w": torch.tensor([[1.0, -2.0], [0.0, 0.5]])}
    assert torch.equal(locate.weight_change_scores(delta)["w"], torch.tensor([3.0, 0.5]))
