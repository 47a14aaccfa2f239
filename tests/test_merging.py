import pytest
import torch

from maet.method.merging import dare, swapped_layers, ties, trim


def test_trim_keeps_the_largest_magnitudes():
    d = torch.tensor([0.1, -0.5, 0.3, -0.05, 0.9, 0.0, -0.2, 0.4])
    assert torch.equal(trim(d, 0.25), torch.tensor([0, -0.5, 0, 0, 0.9, 0, 0, 0]))
    assert torch.equal(trim(d, 1.0), d)
    assert torch.equal(trim(d, 0.01), torch.tensor([0, 0, 0, 0, 0.9, 0, 0, 0]))  # at least one entry, and only one


def test_ties_elects_sign_and_averages_the_agreeing_entries():
    a = torch.tensor([1.0, -2.0, 3.0, 0.5])
    b = torch.tensor([3.0, 1.0, -1.0, -0.5])
    merged = ties([a, b], density=1.0)
    # entry 0: both positive -> mean 2; entry 1: sum -1 -> negative elected -> only a (-2)
    # entry 2: sum +2 -> positive -> only a (3); entry 3: sum 0 -> sign 0 -> nothing agrees -> 0
    assert torch.equal(merged, torch.tensor([2.0, -2.0, 3.0, 0.0]))
    # with trimming to half, b loses its two smallest entries before the election
    trimmed = ties([a, b], density=0.5)
    assert torch.equal(trimmed, torch.tensor([3.0, -2.0, 3.0, 0.0]))


def test_dare_keeps_the_expected_value():
    g = torch.Generator().manual_seed(0)
    d = torch.linspace(-1, 1, 1000)
    samples = torch.stack([dare(d, 0.9, g) for _ in range(400)])
    assert ((samples != 0).float().mean() - 0.1).abs() < 0.01  # about 10% kept
    # unbiased per entry: within 5 standard errors, sd of one sample = |d| * sqrt(p / (1 - p))
    standard_error = d.abs() * (0.9 / 0.1) ** 0.5 / len(samples) ** 0.5
    assert ((samples.mean(dim=0) - d).abs() <= 5 * standard_error + 1e-6).all()
    assert abs(samples.mean() - d.mean()) < 0.01
    kept = samples[samples != 0]
    assert torch.allclose(kept.abs().max(), torch.tensor(10.0), atol=1e-4)  # rescaled by 1/(1-p)


def test_dare_is_seeded():
    d = torch.randn(50)
    assert torch.equal(dare(d, 0.5, torch.Generator().manual_seed(1)), dare(d, 0.5, torch.Generator().manual_seed(1)))
    assert not torch.equal(dare(d, 0.5, torch.Generator().manual_seed(1)), dare(d, 0.5, torch.Generator().manual_seed(2)))


def test_layer_swap_takes_exactly_k_layers_at_each_end():
    bottom, middle, top = swapped_layers(8, 2)
    assert list(bottom) == [0, 1] and list(middle) == [2, 3, 4, 5] and list(top) == [6, 7]
    assert list(swapped_layers(4, 0)[1]) == [0, 1, 2, 3]
    assert [list(r) for r in swapped_layers(4, 2)] == [[0, 1], [], [2, 3]]  # every layer swapped, none in the middle
    with pytest.raises(ValueError, match=r"0 <= 2\*k <= num_layers \(k=3, num_layers=4\)"):
        swapped_layers(4, 3)
