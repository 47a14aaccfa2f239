"""The regime measures: relative delta norms and the weight disentanglement error."""

import pytest
import torch
from conftest import random_batches

from maet.method import regime


def _base(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_relative_norm_is_over_the_touched_entries():
    base = {"w": torch.full((4, 3), 2.0), "v": torch.ones(2, 2)}
    assert regime.relative_norm(base, {"w": torch.full((4, 3), 0.2)}) == pytest.approx(0.1)
    rows = {"w": (torch.tensor([1]), torch.full((1, 3), 1.0))}  # against the norm of row 1 only
    assert regime.relative_norm(base, rows) == pytest.approx(0.5)
    assert regime.relative_norm(base, {}) == 0.0


def test_disentanglement_error_is_zero_for_a_zero_delta_and_positive_for_interfering_ones(tiny_model):
    base = _base(tiny_model)
    names = [n for n in base if "mlp" in n]
    g = torch.Generator().manual_seed(0)
    big = {n: 5 * torch.randn(base[n].shape, generator=g) for n in names}
    zero = {n: torch.zeros_like(base[n]) for n in names}
    batch = random_batches(tiny_model.config.vocab_size, 1, batch=4, seq=16)[0]
    none = regime.disentanglement_error(tiny_model, base, big, zero, batch, batch)
    assert none["ability"] == 0.0 and none["error"] == none["language"]
    clash = regime.disentanglement_error(tiny_model, base, big, {n: -d for n, d in big.items()}, batch, batch)
    assert clash["ability"] > 0 and clash["language"] > 0 and clash["error"] <= 2
    assert all(torch.equal(p, base[n]) for n, p in tiny_model.named_parameters()), "θ0 not restored"


def test_added_handles_row_and_dense_deltas_together():
    base = {"w": torch.zeros(3, 2)}
    out = regime.added(base, {"w": torch.ones(3, 2)}, {"w": (torch.tensor([2]), torch.full((1, 2), 4.0))})
    assert torch.equal(out["w"], torch.tensor([[1.0, 1.0], [1.0, 1.0], [5.0, 5.0]]))
