"""The stage wiring on a tiny built-in world (a base without pre-training, a few training steps):
what the pipeline passes from stage to stage reaches the merge as METHOD.md says, replications
are independent, and paired comparisons pair an item with itself. Expectations are trained or
written out here, not taken from the code that wires the stages."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import load
from test_resident import SMALL

from maet import world
from maet.corpora.roles import load_corpora
from maet.engine import base, context
from maet.engine.runner import Artifacts, run_stage, seed_artifacts, transfer_step, variant_weights
from maet.method import extract
from maet.method.methods import METHODS, Deltas, choices
from maet.reporting import summary
from maet.stages import training
from maet.stages.registry import STAGES
from maet.store.cache import ArtifactCache

FAST = [*SMALL, "train.batch_size=2", "train.seq_len=16", "locate.tokens=64", "extract.tokens=128",
        "language.tokens=64", "report.seeds=1"]


def _job(tmp_path, *overrides):
    """(context, model, tokenizer, corpora, base key, θ0) of one replication of a tiny job."""
    s = load(*FAST, f"paths.cache_dir={tmp_path}", *overrides)
    ctx = context.Context(s, ArtifactCache(tmp_path), torch.device("cpu"), world.generate(s.world))
    model, tokenizer, base_key, theta0 = base.resident_base(ctx)
    return ctx, model, tokenizer, load_corpora(s, ctx.world, tokenizer), base_key, theta0


def stage_alone(ctx, name: str, model, tokenizer, corpora, a: Artifacts):
    """(the stage's main artifact, its key) from running it alone on the artifacts `a` holds."""
    run_stage(ctx, STAGES[name], model, tokenizer, corpora, a)
    return a.get(STAGES[name].yields[0]), a.keys[name]


def artifacts(**named) -> Artifacts:
    """Artifacts from `artifact=value` and `<stage>_key=key` pairs (`base_key`: θ0's key)."""
    return Artifacts({n: v for n, v in named.items() if not n.endswith("_key")},
                     {n.removesuffix("_key"): v for n, v in named.items() if n.endswith("_key")})


def _dense(rows: torch.Tensor, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like, dtype=torch.float32).index_copy(0, rows, values)


@pytest.mark.parametrize("general", ["subtract", "project"])
def test_r_a_is_theta_a_less_the_model_trained_on_general_text(tmp_path, general):
    ctx, model, tokenizer, corpora, key, _ = _job(tmp_path, f"extract.general={general}")
    s = ctx.settings
    a = seed_artifacts(ctx, model, tokenizer, corpora, key, ["maet"])
    # θ_G trained here as METHOD.md says: the key rows, on English general text, θ_A's budget and lr
    batches = training.batches(s, corpora.general, tokenizer, s.extract.tokens)
    theta_g, _ = extract.train_rows(model, a.mask, batches, training.steps(s, s.extract.tokens), s.extract.lr, "θ_G",
                                    **training.loop(s), optimizer=s.extract.optimizer)
    for name, (rows, values) in a.ability.items():
        ability, general_move = a.theta_a[name][1].double(), theta_g[name][1].double()
        if general == "subtract":  # Eq. 2: θ_A − θ_G
            expected = ability - general_move
        else:  # θ_A − θ0 less its projection on θ_G − θ0, over the whole tensor's key rows
            expected = ability - (ability * general_move).sum() / general_move.pow(2).sum() * general_move
        assert torch.equal(rows, a.theta_a[name][0])
        assert torch.allclose(values.double(), expected, atol=1e-6), name
    assert any(theta_g[n][1].abs().max() > 0 for n in theta_g)  # θ_G moved: the subtraction matters
    base.forget_resident()


def test_without_general_subtraction_r_a_is_theta_a_minus_theta_0(tmp_path):
    ctx, model, tokenizer, corpora, key, _ = _job(tmp_path, "extract.general=none")
    a = seed_artifacts(ctx, model, tokenizer, corpora, key, ["maet"])
    assert all(torch.equal(a.ability[n][1], a.theta_a[n][1]) for n in a.ability)
    s = ctx.settings  # θ_G is not trained either: the stage trains θ_A's budget once
    assert ctx.stages["ability"].train_tokens == training.steps(s, s.extract.tokens) * s.train.batch_size * s.train.seq_len
    base.forget_resident()


def test_the_full_ability_model_trains_its_own_budget(tmp_path):
    ctx, model, tokenizer, corpora, key, _ = _job(tmp_path, "extract.full_tokens=256")
    stage_alone(ctx, "ability_full", model, tokenizer, corpora, Artifacts.on(key))
    assert ctx.stages["ability_full"].train_tokens == 256  # 8 steps of 2 x 16 tokens, not extract.tokens (128)
    base.forget_resident()


def test_key_row_language_training_moves_only_the_rows_of_the_mask(tmp_path):
    ctx, model, tokenizer, corpora, key, _ = _job(tmp_path, "language.train=key_neurons")
    a = seed_artifacts(ctx, model, tokenizer, corpora, key, ["maet"])
    assert set(a.language) <= set(a.mask)
    for name, delta in a.language.items():
        outside = delta.clone()
        outside[a.mask[name]] = 0
        assert outside.abs().max() == 0, name
    assert all(a.language[n][a.mask[n]].abs().max() > 0 for n in a.language)
    base.forget_resident()


@pytest.mark.parametrize("params", ["blocks", "linear", "all"])
def test_full_language_training_moves_the_parameters_language_params_names(tmp_path, params):
    """R(Lj) by full CPT covers what `language.params` says: every block parameter, the block
    matrices only (no norms), or every parameter (embeddings and final norm too)."""
    ctx, model, tokenizer, corpora, key, theta0 = _job(tmp_path, f"language.params={params}")
    delta, _ = stage_alone(ctx, "language", model, tokenizer, corpora, Artifacts.on(key))
    in_blocks = {n for n in theta0 if ".layers." in n}
    expected = {"blocks": in_blocks, "linear": {n for n in in_blocks if theta0[n].ndim == 2}, "all": set(theta0)}
    assert {n for n, d in delta.items() if d.abs().max() > 0} == expected[params]
    base.forget_resident()


def test_the_merge_adds_only_the_rows_the_transfer_rule_kept(tmp_path):
    ctx, model, tokenizer, corpora, key, theta0 = _job(tmp_path, "transfer.select=ratio", "transfer.keep=0.5",
                                                       "merge.alpha=0.7", "merge.beta=0.9")
    a = seed_artifacts(ctx, model, tokenizer, corpora, key, ["maet"])
    transfer_step(ctx, a)
    weights, _ = variant_weights("maet", ctx.settings, theta0, a)
    # M_T written out: the half of the ability tensors with the lowest cosine of R(A) (scattered) and R(Lj)
    cosine = {n: float(torch.nn.functional.cosine_similarity(
        _dense(rows, values, a.language[n]).double().flatten(), a.language[n].double().flatten(), dim=0))
        for n, (rows, values) in a.ability.items()}
    kept = sorted(cosine, key=cosine.get)[:round(0.5 * len(cosine))]
    assert 0 < len(kept) < len(cosine) and sorted(a.kept) == sorted(kept)
    for name in set(a.language) | set(kept):
        expected = theta0[name] + 0.9 * a.language[name]
        if name in kept:
            expected = expected + 0.7 * _dense(*a.ability[name], theta0[name])
        assert torch.allclose(weights[name], expected, atol=1e-6), name
    base.forget_resident()


@pytest.mark.parametrize("control", ["full_key_rows", "full_random_rows"])
def test_the_controls_merge_the_full_ability_delta_on_key_or_random_rows(tmp_path, control):
    """θ0 + β·R(Lj) + α·(θ_A,full − θ0) on MAET's key rows (or on as many other rows per tensor),
    every tensor transferred (transfer.select=all), written out from the stages' own artifacts."""
    ctx, model, tokenizer, corpora, key, theta0 = _job(tmp_path, f"method={control}", "transfer.select=all",
                                                       "merge.alpha=0.7", "merge.beta=0.9")
    a = seed_artifacts(ctx, model, tokenizer, corpora, key, [control])
    assert a.ability is None  # the controls never train θ_A or θ_G
    transfer_step(ctx, a)
    weights, _ = variant_weights(control, ctx.settings, theta0, a)
    rows = a.transferred_key_rows if control == "full_key_rows" else a.transferred_random_rows
    assert sorted(a.kept) == sorted(a.mask) == sorted(rows)
    for name in a.mask:
        merged_rows = rows[name][0]
        assert len(merged_rows) == len(a.mask[name]) == len(set(merged_rows.tolist()))
        if control == "full_key_rows":
            assert torch.equal(merged_rows, a.mask[name])
        on_rows = torch.zeros_like(theta0[name])
        on_rows[merged_rows] = a.ability_full[name][merged_rows]
        expected = theta0[name] + 0.9 * a.language[name] + 0.7 * on_rows
        assert torch.allclose(weights[name], expected, atol=1e-6), name
    if control == "full_random_rows":  # random rows, not the key rows again
        assert any(not torch.equal(rows[n][0], a.mask[n]) for n in a.mask)
    base.forget_resident()


def test_replications_draw_their_own_batches_masks_deltas_and_base(tmp_path):
    ctx, model, tokenizer, corpora, key, theta0 = _job(tmp_path, "report.shared_base=true")
    first = seed_artifacts(ctx, model, tokenizer, corpora, key, ["maet"])
    second_ctx = ctx.for_replication(1)  # the same base (shared): only the stage seed differs
    second = seed_artifacts(second_ctx, model, tokenizer, corpora, key, ["maet"])
    batch = [next(iter(training.batches(c.settings, corpora.language, tokenizer, 64))) for c in (ctx, second_ctx)]
    assert not torch.equal(*batch)
    assert any(not torch.equal(first.mask[n], second.mask[n]) for n in first.mask)
    assert all(not torch.equal(first.language[n], second.language[n]) for n in first.language)
    assert all(not torch.equal(first.theta_a[n][1], second.theta_a[n][1]) for n in first.theta_a)
    own = dataclasses.replace(ctx, settings=dataclasses.replace(ctx.settings, report=dataclasses.replace(
        ctx.settings.report, shared_base=False))).for_replication(1)
    _, _, other_key, other_theta0 = base.resident_base(own)  # without shared_base: a base of its own
    assert other_key != key and any(not torch.equal(theta0[n], other_theta0[n]) for n in theta0)
    base.forget_resident()


def test_a_replication_computes_what_its_variants_need_and_nothing_else(tmp_path):
    """`seed_artifacts` runs the stages the variants need (a reference model by its own name), each on
    the job's base, and hands on exactly what the stage, called on its own, gives."""
    ctx, model, tokenizer, corpora, key, _ = _job(tmp_path, "oracle.tokens=64")
    a = seed_artifacts(ctx, model, tokenizer, corpora, key, ["oracle", "ability_full", "cpt_all"])
    assert a.mask is None and a.ability is None and a.language is None
    for name in ("oracle", "ability_full", "cpt_all"):
        delta, stage_key = stage_alone(ctx, name, model, tokenizer, corpora, Artifacts.on(key))  # a cache hit
        assert getattr(a, f"{name}_key") == stage_key and getattr(a, name).keys() == delta.keys()
        assert all(torch.equal(getattr(a, name)[n], delta[n]) for n in delta)
    assert len({a.oracle_key, a.ability_full_key, a.cpt_all_key}) == 3
    only_language = seed_artifacts(ctx, model, tokenizer, corpora, key, ["language_only"])
    assert only_language.mask is None and only_language.oracle is None and only_language.ability is None
    key_rows_ctx = dataclasses.replace(ctx, settings=dataclasses.replace(
        ctx.settings, language=dataclasses.replace(ctx.settings.language, train="key_neurons")))
    key_rows = seed_artifacts(key_rows_ctx, model, tokenizer, corpora, key, ["language_only"])
    alone = Artifacts.on(key)
    stage_alone(key_rows_ctx, "locate", model, tokenizer, corpora, alone)
    assert key_rows.mask is not None and key_rows.ability is None
    language, language_key = stage_alone(key_rows_ctx, "language", model, tokenizer, corpora, alone)
    assert key_rows.language_key == language_key != only_language.language_key
    theta_a = seed_artifacts(ctx, model, tokenizer, corpora, key, ["ability"])  # the reference model θ_A
    alone = Artifacts.on(key)
    stage_alone(ctx, "locate", model, tokenizer, corpora, alone)
    assert theta_a.ability_key == stage_alone(ctx, "ability", model, tokenizer, corpora, alone)[1]
    assert theta_a.language is None and {a.base_key, theta_a.base_key} == {key}
    base.forget_resident()


def test_paired_tables_align_items_by_id_whatever_their_order():
    items = {"maet": {"sw": [{"q1": 1.0, "q2": 0.0, "q3": 1.0}, {"q3": 0.0, "q1": 1.0, "q2": 1.0}]},
             "base": {"sw": [{"q3": 1.0, "q2": 1.0, "q1": 0.0, "q9": 1.0}, {"q2": 0.0, "q1": 0.0, "q3": 0.0}]}}
    ids, tables = summary.target_tables(SimpleNamespace(lang=SimpleNamespace(code="sw")),
                                        SimpleNamespace(items=items))
    assert ids == ["q1", "q2", "q3"]  # q9: not scored by every model in every replication
    np.testing.assert_array_equal(tables["maet"], [[1, 0, 1], [1, 1, 0]])
    np.testing.assert_array_equal(tables["base"], [[0, 1, 1], [0, 0, 0]])


A, B = "model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"
# s_t of A: 0.0995 over the tensor, 1 over its key row; of B: 0 (its rows: cosines -1 and +1)
ABILITY = {A: (torch.tensor([0]), torch.tensor([[1.0, 0.0]])),
           B: (torch.tensor([0, 1]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))}
LANGUAGE = {A: torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 10.0]]), B: torch.tensor([[-1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])}


@pytest.mark.parametrize("overrides, kept_rows", [
    (["transfer.tau=0.05"], {B: [0, 1]}),
    (["transfer.tau=0.2"], {A: [0], B: [0, 1]}),
    (["transfer.tau=0.2", "transfer.similarity=rows"], {B: [0, 1]}),
    (["transfer.tau=0.0", "transfer.granularity=row"], {B: [0]}),
])
def test_the_transfer_stage_applies_every_transfer_setting(tmp_path, overrides, kept_rows):
    s = load("transfer.select=threshold", *overrides)
    ctx = context.Context(s, ArtifactCache(tmp_path), torch.device("cpu"))
    a = artifacts(ability=ABILITY, language=LANGUAGE)
    similarity = transfer_step(ctx, a)
    kept, transferred = a.kept, a.transferred
    assert similarity[A] == pytest.approx(1.0 if s.transfer.similarity == "rows" else 1 / 101 ** 0.5)
    assert similarity[B] == pytest.approx(0.0)
    assert sorted(kept) == sorted(kept_rows) and {n: rows.tolist() for n, (rows, _) in transferred.items()} == kept_rows
    assert ctx.stages["transfer"].cached is False


def test_reference_models_and_their_keys():
    """θ_A (the key rows' ability model) and the oracle, by hand; a model key follows its inputs and,
    for a tunable method, its coefficients."""
    s = load("method=maet")
    base_w = {A: torch.zeros(3, 2), B: torch.ones(3, 2)}
    theta_a = {A: (torch.tensor([2]), torch.tensor([[5.0, 6.0]]))}
    oracle = {B: torch.full((3, 2), 2.0)}
    named = dict(base_key="b0", theta_a=theta_a, ability_key="ka", oracle=oracle, oracle_key="ko", ability=ABILITY,
                 transferred=ABILITY, language=LANGUAGE, language_key="kl")
    a = artifacts(**named)
    ability, ability_key = variant_weights("ability", s, base_w, a)
    assert list(ability) == [A] and torch.equal(ability[A], torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 6.0]]))
    oracle_w, oracle_key = variant_weights("oracle", s, base_w, a)
    assert list(oracle_w) == [B] and torch.equal(oracle_w[B], torch.full((3, 2), 3.0))
    _, maet_key = variant_weights("maet", s, base_w, a)
    assert len({ability_key, oracle_key, maet_key}) == 3

    def key(name, settings=s, **changes):
        return variant_weights(name, settings, base_w, artifacts(**named | changes))[1]

    assert key("ability", ability_key="kb") != ability_key and key("ability", base_key="b1") != ability_key
    assert key("ability", oracle_key="kp") == ability_key and key("oracle", ability_key="kb") == oracle_key
    assert key("oracle", oracle_key="kp") != oracle_key and key("oracle", base_key="b1") != oracle_key
    alpha = dataclasses.replace(s, merge=dataclasses.replace(s.merge, alpha=0.3))
    assert key("maet", alpha) != maet_key
    assert key("language_only", alpha) == key("language_only")  # not tunable: α is not its input


NEED_KEYS = {"ability": "ability_key", "language": "language_key", "ability_full": "ability_full_key",
             "cpt_all": "cpt_all_key", "mask": "locate_key"}


def test_every_method_gets_the_deltas_it_needs_and_a_key_of_its_own_that_follows_them():
    """Through `variant_weights` (the pipeline's call), each registered method computes from the
    deltas of its artifacts (each delta its own tensor here) what it computes from those deltas
    handed to it directly; its model key differs from every other model's and changes with the base
    and with each input it needs, and with no other."""
    s = load("method=maet")
    base_w = {A: torch.zeros(3, 2), B: torch.ones(3, 2)}
    transferred = {B: ABILITY[B]}  # M_T ⊙ R(A): a strict subset of R(A)
    full, cpt = {A: torch.full((3, 2), 3.0), B: torch.full((3, 2), -2.0)}, {A: torch.full((3, 2), 7.0)}
    named = dict(base_key="b0", ability=ABILITY, theta_a={A: ABILITY[A]}, ability_key="ka", language=LANGUAGE,
                 language_key="kl", oracle={B: torch.ones(3, 2)}, oracle_key="ko", ability_full=full,
                 ability_full_key="kf", cpt_all=cpt, cpt_all_key="kc", transferred=transferred,
                 mask={A: torch.tensor([1])}, locate_key="km", transferred_key_rows={A: (torch.tensor([1]), full[A][1:2])},
                 transferred_random_rows={B: (torch.tensor([0]), full[B][:1])})  # the controls' M_T ⊙ restricted deltas
    a = artifacts(**named)
    direct = Deltas(base_w, language=LANGUAGE, ability=ABILITY, transferred=transferred, ability_full=full,
                    cpt_all=cpt, transferred_key_rows=named["transferred_key_rows"],
                    transferred_random_rows=named["transferred_random_rows"])
    model_keys = {}
    for name in choices():  # the methods (the reference models: test_reference_models_and_their_keys)
        method = METHODS[name]
        weights, model_keys[name] = variant_weights(name, s, base_w, a)
        expected = method(direct, dataclasses.asdict(s.merge) | {"seed": s.seed})
        assert weights.keys() == expected.keys() and all(torch.equal(weights[n], expected[n]) for n in weights), name
        assert variant_weights(name, s, base_w, artifacts(**named | {"base_key": "b1"}))[1] != model_keys[name]
        for need, field in NEED_KEYS.items():
            other = variant_weights(name, s, base_w, artifacts(**named | {field: "changed"}))[1]
            assert (other != model_keys[name]) == (need in method.needs), (name, need)
    model_keys |= {ref: variant_weights(ref, s, base_w, a)[1] for ref in ("ability", "oracle")}
    assert len(set(model_keys.values())) == len(model_keys)
