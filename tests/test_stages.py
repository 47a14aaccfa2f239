"""A stage is declared once (`maet.stages.registry`): declaring a toy stage, and nothing else, makes a
job run it through the cache, key it by its config and inputs, evaluate the reference model it
yields, count its training tokens and list its artifact; the settings accept its reference model.
Expectations (keys, weights, tokens) are written out here."""

import pytest
import torch
from conftest import load
from test_wiring import FAST

from maet.config.validate import validate
from maet.engine import base, pipeline
from maet.method.methods import METHODS
from maet.method.train import TrainStats
from maet.reporting import summary
from maet.schema.settings import ConfigError
from maet.stages import keys
from maet.stages.registry import PRODUCER, STAGES, Reference, Stage, register_stage, stages_for, unregister_stage
from maet.store.cache import ArtifactCache, artifact_key

TOY_TENSOR = "model.layers.0.mlp.down_proj.weight"


def toy_config(s) -> dict:
    return {"seed": s.seed, "scale": 0.5}


def produce_toy(s, model, tokenizer, corpora, inputs):
    """A 'trained' delta of 0.5 on one tensor (as if from 12 tokens in 3 steps)."""
    weight = dict(model.named_parameters())[TOY_TENSOR]
    return {TOY_TENSOR: torch.full(weight.shape, 0.5)}, TrainStats(tokens=12, steps=3), {"toy": True}


@pytest.fixture
def toy():
    stage = register_stage(Stage("toy", ("toy",), ("base",), toy_config, produce_toy,
                                 reference=Reference("toy_model", "toy", "θ0 + the toy delta")))
    yield stage
    unregister_stage("toy")
    assert "toy" not in STAGES and "toy" not in PRODUCER and "toy_model" not in METHODS


def test_a_declared_stage_runs_through_the_job_and_its_outputs(toy, tmp_path):
    s = load(*FAST, f"paths.cache_dir={tmp_path}", "method=language_only", "report.references=[base,toy_model]")
    validate(s)  # the reference model the stage yields is a valid `report.references` entry
    assert [st.name for st in stages_for(s, METHODS["toy_model"].needs)] == ["toy"]

    result = pipeline.run_job(s)
    base_key = result.replications[0]["base"]
    toy_key = artifact_key("toy", {"seed": s.seed, "scale": 0.5}, {"base": base_key})
    assert result.stages["toy"].key == toy_key and not result.stages["toy"].cached
    assert result.stages["toy"].train_tokens == 12 and result.stages["toy"].steps == 3
    assert result.stages["merge/toy_model"].key == artifact_key("model", {"variant": "toy"},
                                                                {"base": base_key, "toy": toy_key})
    assert set(result.testbed) == {"language_only", "base", "toy_model"}
    cache = ArtifactCache(s.paths.cache_dir)
    assert cache.meta("toy", toy_key)["toy"] is True
    saved = cache.tensors("toy", toy_key)
    assert list(saved) == [TOY_TENSOR] and torch.equal(saved[TOY_TENSOR], torch.full_like(saved[TOY_TENSOR], 0.5))
    entries = summary.stage_artifacts(summary.job_summary(s, result), cache)
    assert (f"toy-{toy_key}", "delta", cache.path("toy", toy_key), True) in entries
    again = pipeline.run_job(s)  # from the cache the second time
    assert again.stages["toy"].cached and again.stages["toy"].cost_tokens == 12
    base.forget_resident()


def test_a_reference_model_needs_its_stage_declared():
    with pytest.raises(ConfigError) as info:
        load("report.references=[base,toy_model]")
    assert info.value.key == "report.references"


def test_a_stage_must_read_only_what_earlier_stages_yield(toy):
    with pytest.raises(ValueError, match="which no earlier stage yields"):
        register_stage(Stage("late", ("late",), ("nothing",), toy_config, produce_toy))
    with pytest.raises(ValueError, match="declared twice"):
        register_stage(toy)


def test_the_builtin_stages_read_what_method_md_says():
    """locate reads θ0; R(A) the mask; R(Lj) θ0, and the mask only when it trains the key neurons."""
    assert list(STAGES) == ["locate", "ability", "language", "oracle", "ability_full", "cpt_all"]
    assert {name: STAGES[name].inputs for name in STAGES} == {
        "locate": ("base",), "ability": ("mask",), "language": ("base", "mask"), "oracle": ("base",),
        "ability_full": ("base",), "cpt_all": ("base",)}
    full, key_rows = load(), load("language.train=key_neurons")
    assert [st.name for st in stages_for(full, {"language"})] == ["language"]
    assert [st.name for st in stages_for(key_rows, {"language"})] == ["locate", "language"]
    assert [st.name for st in stages_for(full, {"theta_a"})] == ["locate", "ability"]
    assert STAGES["language"].input_keys(full, {"base": "b", "mask": "m"}) == {"base": "b", "mask": None}
    assert STAGES["language"].input_keys(key_rows, {"base": "b", "mask": "m"}) == {"base": "b", "mask": "m"}
    assert STAGES["ability"].config is keys.ability_config
