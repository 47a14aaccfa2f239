from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from conftest import load, random_batches

from maet.engine import context
from maet.engine.runner import Artifacts, run_stage
from maet.method import locate
from maet.method.train import TrainStats
from maet.method.types import layer_of
from maet.models.model import block_linear_names
from maet.schema.settings import MODULES
from maet.stages import builtin, training
from maet.stages.registry import STAGES
from maet.store.cache import ArtifactCache


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


# ----------------------------------------------------------------------------- the locate stage's wiring
ABILITY_DOCS, GENERAL_DOCS = ["ability text"], ["general text"]


def _fake_scores(shapes, docs):
    """Row scores that order the rows one way on ability text and the other way in the difference:
    ability: row index; general: twice the row index (ability − general: minus the row index)."""
    factor = 1.0 if docs == ABILITY_DOCS else 2.0
    return {n: factor * torch.arange(shape[0], dtype=torch.float32) for n, shape in shapes.items()}


@pytest.mark.parametrize("score, contrast", [("grad", False), ("grad", True), ("activation", False),
                                             ("weight_change", False), ("weight_change", True), ("random", False)])
def test_the_locate_stage_scores_the_ability_text_by_the_configured_score_less_general_text_when_contrastive(
        tiny_model, tokenizer, tmp_path, monkeypatch, score, contrast):
    """The stage reads `locate.score` (which scores: gradients, activations, a short CPT's weight change,
    or random), subtracts the general text's scores where the score is contrastive (activation always,
    the others with locate.contrast), and selects `locate.ratio` rows of the result; the scoring
    functions are replaced by ones whose output says which text they scored."""
    s = load(f"locate.score={score}", f"locate.contrast={str(contrast).lower()}", "locate.ratio=0.25",
             "locate.tokens=64", "train.batch_size=2", "train.seq_len=16")
    shapes = _shapes(tiny_model)
    calls = []

    def scored(model, batches, names, steps):
        calls.append((batches, steps))
        assert model is tiny_model and sorted(names) == sorted(shapes)
        return _fake_scores(shapes, batches)

    def train_full(model, names, batches, steps, lr, desc, **loop):
        calls.append((batches, steps))
        assert model is tiny_model and sorted(names) == sorted(shapes)
        assert lr == s.extract.full_lr and loop == {**training.full(s), **training.loop(s)}
        delta = {n: v[:, None] for n, v in _fake_scores(shapes, batches).items()}  # row change: |v|
        return delta, TrainStats(tokens=64, steps=2)

    monkeypatch.setattr(builtin, "batches", lambda settings, docs, tok, tokens: docs)
    monkeypatch.setattr(builtin.locate, "grad_scores" if score != "activation" else "activation_scores", scored)
    monkeypatch.setattr(builtin.extract, "train_full", train_full)
    ctx = context.Context(s, ArtifactCache(tmp_path), torch.device("cpu"))
    corpora = SimpleNamespace(ability=ABILITY_DOCS, general=GENERAL_DOCS)
    a = Artifacts.on("b0")
    run_stage(ctx, STAGES["locate"], tiny_model, tokenizer, corpora, a)
    mask = a.mask

    if score == "random":
        expected, texts = locate.random_scores(shapes, s.seed), []
    elif contrast or score == "activation":
        expected, texts = {n: -torch.arange(shape[0], dtype=torch.float32) for n, shape in shapes.items()}, [
            ABILITY_DOCS, GENERAL_DOCS]
    else:
        expected, texts = _fake_scores(shapes, ABILITY_DOCS), [ABILITY_DOCS]
    want = locate.select_rows(expected, 0.25, s.locate.scope)
    assert mask.keys() == want.keys() and all(torch.equal(mask[n], want[n]) for n in want)
    assert calls == [(docs, 2) for docs in texts]  # 64 tokens in steps of 2 x 16
    trained = ctx.stages["locate"]
    assert (trained.train_tokens, trained.steps) == (64 * len(texts), 2 * len(texts))
