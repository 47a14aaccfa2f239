import torch
from conftest import random_batches

from maet.method import extract, locate
from maet.method.types import rows_to_dense
from maet.models.model import block_linear_names, block_param_names
from maet.schema.settings import MODULES

LOOP = {"warmup_ratio": 0.0, "weight_decay": 0.0, "grad_clip": 1.0}  # train.* defaults, no warmup


def _mask(model, ratio=0.25, seed=0):
    names = block_linear_names(model, list(MODULES))
    shapes = {n: p.shape for n, p in model.named_parameters() if n in names}
    return locate.select_rows(locate.random_scores(shapes, seed), ratio, "tensor"), shapes


def _train_rows(model, mask, seed=0, steps=3):
    batches = random_batches(model.config.vocab_size, steps, seed=seed)
    return extract.train_rows(model, mask, batches, steps, 1e-2, "test", **LOOP)


def test_key_neuron_training_changes_only_the_selected_rows(tiny_model):
    mask, shapes = _mask(tiny_model)
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    delta, stats = _train_rows(tiny_model, mask)
    assert stats.steps == 3 and stats.tokens == 3 * 2 * 16
    assert all(torch.equal(before[n], p) for n, p in tiny_model.named_parameters()), "θ0 was modified"
    assert all(p.requires_grad for p in tiny_model.parameters()), "requires_grad flags not restored"
    dense = rows_to_dense(delta, shapes)
    for name, d in dense.items():
        changed = d.abs().sum(dim=1) > 0
        selected = torch.zeros(shapes[name][0], dtype=torch.bool)
        selected[mask[name]] = True
        assert not changed[~selected].any(), f"{name}: a row outside the mask changed"
        assert changed[selected].any(), f"{name}: no key row was trained"


def test_key_neuron_optimizer_state_is_proportional_to_the_ratio(tiny_model, monkeypatch):
    mask, shapes = _mask(tiny_model, ratio=0.25)
    seen = {}
    real = torch.optim.AdamW

    def spy(params, **kw):
        params = list(params)
        seen["numel"] = sum(p.numel() for p in params)
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    _train_rows(tiny_model, mask, steps=1)
    expected = sum(len(mask[n]) * shapes[n][1] for n in mask)
    assert seen["numel"] == expected
    assert expected / sum(s.numel() for s in shapes.values()) <= 0.3


def test_key_neuron_training_is_deterministic(tiny_model):
    mask, _ = _mask(tiny_model)
    a, _ = _train_rows(tiny_model, mask, seed=5)
    b, _ = _train_rows(tiny_model, mask, seed=5)
    assert all(torch.equal(a[n][1], b[n][1]) for n in a)


def test_ability_delta_subtracts_general_and_is_zero_outside_key_rows(tiny_model):
    mask, shapes = _mask(tiny_model)
    theta_a, _ = _train_rows(tiny_model, mask, seed=1)
    theta_g, _ = _train_rows(tiny_model, mask, seed=2)
    r_a = extract.ability_delta(theta_a, theta_g)
    dense = rows_to_dense(r_a, shapes)
    for name in mask:
        assert torch.equal(r_a[name][1], theta_a[name][1] - theta_g[name][1])
        outside = torch.ones(shapes[name][0], dtype=torch.bool)
        outside[mask[name]] = False
        assert torch.count_nonzero(dense[name][outside]) == 0


def test_without_general_subtraction_ability_delta_is_theta_a_minus_theta_0(tiny_model):
    mask, shapes = _mask(tiny_model)
    theta_a, _ = _train_rows(tiny_model, mask, seed=1)
    r_a = extract.ability_delta(theta_a, None)
    params = dict(tiny_model.named_parameters())
    for name, (rows, values) in r_a.items():
        trained = params[name].detach().index_add(0, rows, values)  # θ_A
        assert torch.allclose(trained - params[name].detach(), rows_to_dense(r_a, shapes)[name], atol=1e-6)


def test_full_cpt_returns_delta_and_restores_theta_0(tiny_model):
    names = block_param_names(tiny_model)
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    batches = random_batches(tiny_model.config.vocab_size, 2)
    delta, stats = extract.train_full(tiny_model, names, batches, 2, 1e-2, "test", **LOOP)
    assert set(delta) == set(names) and stats.steps == 2
    assert all(torch.equal(before[n], p) for n, p in tiny_model.named_parameters())
    assert all(delta[n].abs().sum() > 0 for n in names if "proj" in n)
    assert all(p.requires_grad for p in tiny_model.parameters()), "requires_grad flags not restored"


def test_projecting_out_the_general_direction_leaves_an_orthogonal_ability_delta(tiny_model):
    mask, _ = _mask(tiny_model)
    theta_a, _ = _train_rows(tiny_model, mask, seed=1)
    theta_g, _ = _train_rows(tiny_model, mask, seed=2)
    r_a = extract.ability_delta(theta_a, theta_g, "project")
    for name, (_, values) in r_a.items():
        general, ability = theta_g[name][1].double(), theta_a[name][1].double()
        assert abs(float((values.double() * general).sum())) <= 1e-6 * float(ability.norm() * general.norm())
        along = ability - values.double()  # what was removed lies along θ_G − θ0
        assert torch.allclose(along, (along * general).sum() / general.pow(2).sum() * general, atol=1e-6)
    assert extract.ability_delta(theta_a, theta_g, "none") is theta_a
    zero = {n: (rows, torch.zeros_like(v)) for n, (rows, v) in theta_g.items()}
    assert all(torch.equal(extract.ability_delta(theta_a, zero, "project")[n][1], theta_a[n][1]) for n in theta_a)


def test_sgd_moves_the_key_rows_by_lr_times_the_accumulated_gradient(tiny_model):
    mask, shapes = _mask(tiny_model)
    batches = random_batches(tiny_model.config.vocab_size, 1, seed=3)
    loop = LOOP | {"grad_clip": 1e9}  # one step, no clipping, no warmup: Δ = −lr·g exactly
    delta, _ = extract.train_rows(tiny_model, mask, batches, 1, 0.5, "test", optimizer="sgd", **loop)
    batch = random_batches(tiny_model.config.vocab_size, 1, seed=3)[0]
    tiny_model.zero_grad(set_to_none=True)
    tiny_model(input_ids=batch, labels=batch).loss.backward()
    params = dict(tiny_model.named_parameters())
    for name, (rows, values) in delta.items():
        assert torch.allclose(values, -0.5 * params[name].grad[rows], atol=1e-6), name
    tiny_model.zero_grad(set_to_none=True)


def _upfront_train_rows(model, mask, batches, steps):
    """Key-neuron training as maet did it before the lean layers: every masked weight patched up
    front (`W.index_add(0, rows, D)` through functional_call), a full-size copy and gradient each."""
    from torch.func import functional_call

    from maet.method.train import frozen, optimize

    weights = dict(model.named_parameters())
    rows = {n: mask[n] for n in weights if n in mask}
    deltas = {n: torch.zeros(len(r), weights[n].shape[1], requires_grad=True) for n, r in rows.items()}

    def loss_fn(batch):
        patched = {n: weights[n].index_add(0, rows[n], deltas[n].to(weights[n].dtype)) for n in rows}
        return functional_call(model, patched, args=(), kwargs={"input_ids": batch, "labels": batch}).loss

    with frozen(model):
        optimize(loss_fn, list(deltas.values()), batches, steps, 1e-2, "reference", **LOOP)
    return {n: d.detach() for n, d in deltas.items()}


def test_lean_key_neuron_training_is_bit_identical_to_patching_weights_up_front(tiny_model):
    mask, _ = _mask(tiny_model)
    reference = _upfront_train_rows(tiny_model, mask, random_batches(tiny_model.config.vocab_size, 4, seed=3), 4)
    delta, _ = _train_rows(tiny_model, mask, seed=3, steps=4)
    assert set(extract.lean_linears(tiny_model, mask)) == set(mask)  # every masked weight took the lean path
    for name in mask:
        assert torch.equal(delta[name][1], reference[name]), name


def test_lean_key_neuron_training_saves_no_copy_of_a_weight(tiny_model):
    """Autograd keeps no full-size tensor of a masked weight's shape other than the frozen
    parameter itself (the up-front patching kept a patched copy of every masked weight)."""
    mask, shapes = _mask(tiny_model)
    params = {p.data_ptr() for p in tiny_model.parameters()}  # a transposed view shares its pointer
    weight_shapes = {tuple(s) for s in shapes.values()} | {tuple(s)[::-1] for s in shapes.values()}  # or transposed
    copies = []

    def pack(t):  # a trainable leaf (a row delta D) may happen to have a weight's shape
        trainable_leaf = t.requires_grad and t.grad_fn is None
        if tuple(t.shape) in weight_shapes and t.data_ptr() not in params and not trainable_leaf:
            copies.append(tuple(t.shape))
        return t

    batches = random_batches(tiny_model.config.vocab_size, 1, batch=3, seq=8)  # 24 tokens: no activation of a weight's shape
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        extract.train_rows(tiny_model, mask, batches, 1, 1e-2, "test", **LOOP)
    assert copies == []
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # the check sees the up-front copies
        _upfront_train_rows(tiny_model, mask, batches, 1)
    assert copies


def test_masked_tensors_outside_plain_linears_are_patched_up_front(tiny_model):
    """An embedding (tied to the LM head here) and a norm weight train through functional_call."""
    mask = {"model.embed_tokens.weight": torch.tensor([3, 5, 7]), "model.norm.weight": torch.tensor([0, 2])}
    assert extract.lean_linears(tiny_model, mask) == {}
    delta, _ = _train_rows(tiny_model, mask, steps=2)
    assert delta["model.embed_tokens.weight"][1].shape == (3, tiny_model.config.hidden_size)
    assert delta["model.norm.weight"][1].shape == (2,)
    assert all(v.abs().sum() > 0 for _, v in delta.values())


def _delta_norm(delta):
    return torch.sqrt(sum((v.double() ** 2).sum() for v in delta.values()))


def _cosine(a, b):
    return sum((a[n].double() * b[n].double()).sum() for n in a) / (_delta_norm(a) * _delta_norm(b))


def test_half_precision_training_keeps_the_fp32_delta_through_master_weights(tiny_model):
    """A bf16 model at a small lr (weights of std 0.02, lr 2e-5): with fp32 master weights its
    delta keeps >= 95% of the fp32 run's norm, in the same direction; AdamW on the bf16 weights
    themselves (what maet did before) loses most of it to rounding."""
    bf16 = tiny_model.to(torch.bfloat16)
    fp32 = type(tiny_model)(tiny_model.config)
    fp32.load_state_dict({n: p.float() for n, p in bf16.state_dict().items()})
    names = block_param_names(bf16)
    batches = random_batches(bf16.config.vocab_size, 20, seed=4)
    reference, _ = extract.train_full(fp32, names, batches, 20, 2e-5, "fp32", **LOOP)
    master, _ = extract.train_full(bf16, names, batches, 20, 2e-5, "bf16", **LOOP)
    plain, _ = extract.train_full(bf16, names, batches, 20, 2e-5, "bf16", fp32_master=False, **LOOP)
    assert all(d.dtype == torch.float32 for d in master.values())
    assert _delta_norm(master) / _delta_norm(reference) >= 0.95 and _cosine(master, reference) >= 0.95
    assert _delta_norm(plain) / _delta_norm(reference) < 0.95  # the check can fail
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())


def test_half_precision_key_neuron_training_keeps_the_fp32_delta(tiny_model):
    mask, _ = _mask(tiny_model)
    fp32, _ = _train_rows(tiny_model, mask, seed=6)
    bf16, _ = _train_rows(tiny_model.to(torch.bfloat16), mask, seed=6)
    a, b = ({n: v for n, (_, v) in d.items()} for d in (bf16, fp32))
    assert _delta_norm(a) / _delta_norm(b) >= 0.95 and _cosine(a, b) >= 0.95


def test_bf16_key_rows_train_the_weights_the_merge_rebuilds():
    """On a bf16 model the forward of key-row training uses bf16(W[r] + D) (added in fp32, rounded
    once), which is exactly what the merge builds for θ_A = θ0 + R: the model as trained."""
    from maet.method.merging import merge_tensor

    g = torch.Generator().manual_seed(0)
    weight = (0.02 * torch.randn(12, 8, generator=g)).to(torch.bfloat16)
    rows, delta = torch.tensor([1, 4, 9]), 1e-4 * torch.randn(3, 8, generator=g)
    patched = extract.patch_rows(weight, rows, delta)
    assert torch.equal(patched, merge_tensor(weight, rows=[(1.0, rows, delta)]))
    with extract.rows_patched(weight, rows, delta):
        assert torch.equal(weight, patched)
    assert torch.equal(weight, merge_tensor(weight))  # restored exactly


def test_a_lean_linear_with_a_bias_computes_the_patched_layer_and_its_row_gradient():
    """Qwen-style projections carry a bias: the lean path gives F.linear(x, W', b) with
    W' = W with its key rows + D, and D's gradient autograd gives for that expression."""
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(5, 6, bias=True)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(6, 5, generator=g))
        layer.bias.copy_(torch.randn(6, generator=g))
    layer.requires_grad_(False)
    rows, x = torch.tensor([1, 4]), torch.randn(3, 5, generator=g)
    delta = torch.randn(2, 5, generator=g).requires_grad_()
    patched = layer.weight.clone().index_add(0, rows, delta)
    expected = torch.nn.functional.linear(x, patched, layer.bias)
    expected_grad, = torch.autograd.grad(expected.square().sum(), delta)
    with extract.patched_linears({"w": layer}, {"w": rows}, {"w": delta}):
        out = layer(x)
    grad, = torch.autograd.grad(out.square().sum(), delta)
    assert torch.allclose(out, expected, atol=1e-6) and torch.allclose(grad, expected_grad, atol=1e-5)


def test_only_a_plain_linear_that_owns_its_weight_takes_the_lean_path():
    shared, own, hooked = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    tied = torch.nn.Linear(4, 4)
    tied.weight = shared.weight  # one parameter, two modules (as a tied LM head)
    hooked.forward = hooked.forward  # an instance forward of its own (as accelerate's hooks set)
    model = torch.nn.ModuleDict({"shared": shared, "tied": tied, "own": own, "hooked": hooked})
    names = ["shared.weight", "tied.weight", "own.weight", "hooked.weight", "own.bias"]
    assert extract.lean_linears(model, names) == {"own.weight": own}
