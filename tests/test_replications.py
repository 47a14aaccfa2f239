"""A replication redraws everything random: the stage seed and a scratch base's pre-training seed;
a shared or pretrained base stays one, and the tables say which."""

import pytest
from conftest import load

from maet.engine.context import base_is_random, replication_settings
from maet.reporting.summary import base_note


@pytest.mark.parametrize("seed,k", [(0, 0), (0, 2), (5, 1)])
def test_each_replication_draws_its_own_base_and_stage_seeds(seed, k):
    s = load(f"seed={seed}", "model.scratch.seed=100")
    rep = replication_settings(s, k)
    assert rep.seed == seed + k and rep.model.scratch.seed == 100 + seed + k
    assert rep.model.scratch.pretrain_tokens == s.model.scratch.pretrain_tokens  # only the seed moves


def test_jobs_with_other_seeds_draw_other_bases():
    bases = {replication_settings(load(f"seed={seed}"), k).model.scratch.seed for seed in (0, 3) for k in range(3)}
    assert bases == {0, 1, 2, 3, 4, 5}


def test_a_shared_or_pretrained_base_is_one_base_and_the_note_says_so():
    shared = load("report.shared_base=true", "report.seeds=3")
    assert not base_is_random(shared)
    assert {replication_settings(shared, k).model.scratch.seed for k in range(3)} == {0}
    assert [replication_settings(shared, k).seed for k in range(3)] == [0, 1, 2]
    assert "the base's variance is not in these intervals" in base_note(shared)
    hub = load("model=qwen2_5_0_5b", "report.seeds=2")
    assert not base_is_random(hub) and "not a random factor" in base_note(hub)
    assert "base seeds 0..2" in base_note(load("report.seeds=3"))
