"""In-memory transfer across the jobs of one process (a sweep): θ0 is loaded once, each job's
merges are built in place from it, and every job starts from exactly θ0. Per-stage memory."""

import torch
from conftest import compose_config, load

from maet import world
from maet.engine import base, context
from maet.store.cache import ArtifactCache

SMALL = ["world.general_per_lang=200", "world.pretrain_general_per_lang=100", "world.parallel_per_lang=50",
         "world.ability_per_lang=50",
         "world.benchmark_per_lang=8", "world.pretrain_equations=20", "world.pretrain_ability_en=10",
         "model.scratch.vocab_size=300", "model.scratch.hidden_size=32", "model.scratch.intermediate_size=64",
         "model.scratch.num_layers=2", "model.scratch.max_position_embeddings=64", "model.scratch.pretrain_tokens=0"]


def _context(tmp_path, *overrides):
    s = load(*SMALL, f"paths.cache_dir={tmp_path}", *overrides)
    return context.Context(s, ArtifactCache(tmp_path), torch.device("cpu"), world.generate(s.world))


def test_the_next_job_reuses_the_model_in_memory_reset_to_theta0(tmp_path):
    base.forget_resident()
    first = _context(tmp_path)
    model, _, key, theta0 = base.resident_base(first)
    assert first.stages["base"].in_memory is False and first.stages["base"].peak_rss_mib > 0
    name = next(iter(theta0))
    with torch.no_grad():  # a job that died with a merge loaded
        dict(model.named_parameters())[name].add_(1.0)
    second = _context(tmp_path, "lang=bn", "merge.alpha=0.5")
    model2, _, key2, theta0_2 = base.resident_base(second)
    assert model2 is model and key2 == key and second.stages["base"].in_memory is True
    assert all(torch.equal(p, theta0[n]) for n, p in model2.named_parameters() if n in theta0)
    other = _context(tmp_path, "model.scratch.hidden_size=16")  # another base: loaded, not reused
    model3, _, key3, _ = base.resident_base(other)
    assert model3 is not model and key3 != key and other.stages["base"].in_memory is False
    base.forget_resident()


def test_stage_peak_memory_is_per_stage():
    context.stage_peak_memory()
    big = torch.ones(64 * 2**20 // 4)  # a stage that touches 64 MiB and frees it
    del big
    peak_of_that_stage, _ = context.stage_peak_memory()
    peak_of_an_idle_stage, _ = context.stage_peak_memory()
    assert peak_of_that_stage - peak_of_an_idle_stage > 48


def test_threads_is_validated_and_defaults_to_torchs_own():
    import pytest

    from maet.schema.settings import ConfigError

    with pytest.raises(ConfigError, match="threads=-1.*>= 0"):
        load("threads=-1")
    assert load().threads == 0 and compose_config("experiment=shared_data", "paths.data_dir=/none").threads == 0  # torch's default
    assert load("threads=1").threads == 1
