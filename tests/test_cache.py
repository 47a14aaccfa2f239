import dataclasses
import hashlib
import importlib.metadata
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import load

from maet import world
from maet.method.types import pack_rows, unpack_rows
from maet.schema import derived
from maet.stages import builtin, keys
from maet.store.cache import ArtifactCache, artifact_key


def test_artifacts_round_trip_bit_exactly(tmp_path):
    cache = ArtifactCache(tmp_path)
    g = torch.Generator().manual_seed(0)
    delta = {"a.weight": (torch.tensor([0, 3]), torch.randn(2, 5, generator=g)),
             "b.weight": (torch.tensor([1]), torch.randn(1, 5, generator=g).to(torch.bfloat16))}
    tensors = pack_rows(delta) | {"dense": torch.randn(4, 4, generator=g, dtype=torch.float64)}
    cache.save("ability", "k1", {"stage": "ability", "tokens": 3}, tensors)
    assert cache.exists("ability", "k1") and cache.meta("ability", "k1")["tokens"] == 3
    loaded = cache.tensors("ability", "k1")
    assert set(loaded) == set(tensors)
    assert all(torch.equal(loaded[n], tensors[n]) and loaded[n].dtype == tensors[n].dtype for n in tensors)
    back = unpack_rows(loaded)
    assert all(torch.equal(back[n][0], delta[n][0]) and torch.equal(back[n][1], delta[n][1]) for n in delta)
    assert not [p for p in (tmp_path / "ability").iterdir() if p.name.startswith(".tmp")]


def test_first_publisher_wins_and_no_temp_is_left(tmp_path):
    cache = ArtifactCache(tmp_path)
    cache.save("locate", "k", {"n": 1}, {"x": torch.zeros(2)})
    cache.save("locate", "k", {"n": 2}, {"x": torch.ones(2)})
    assert cache.meta("locate", "k")["n"] == 1 and torch.equal(cache.tensors("locate", "k")["x"], torch.zeros(2))
    assert [p.name for p in (tmp_path / "locate").iterdir()] == ["k"]


def test_a_failed_write_publishes_nothing(tmp_path):
    cache = ArtifactCache(tmp_path)

    def boom(folder):
        (folder / "partial").write_text("half")
        raise RuntimeError("killed")

    try:
        cache.save("language", "k", {}, {"x": torch.zeros(1)}, write_extra=boom)
    except RuntimeError:
        pass
    assert not cache.exists("language", "k") and list((tmp_path / "language").iterdir()) == []


def test_key_depends_on_config_and_inputs():
    assert artifact_key("s", {"a": 1}) == artifact_key("s", {"a": 1})
    assert artifact_key("s", {"a": 1}) != artifact_key("s", {"a": 2})
    assert artifact_key("s", {"a": 1}, {"in": "x"}) != artifact_key("s", {"a": 1}, {"in": "y"})
    assert artifact_key("s", {"a": 1}) != artifact_key("t", {"a": 1})
    assert artifact_key("s", {"a": 1, "b": {"c": 2, "d": 3}}) == artifact_key("s", {"b": {"d": 3, "c": 2}, "a": 1})
    assert artifact_key("s", {"a": 1}, {"x": "k", "y": "l"}) == artifact_key("s", {"a": 1}, {"y": "l", "x": "k"})
    assert artifact_key("s", {"p": Path("a")}) == artifact_key("s", {"p": "a"}) != artifact_key("s", {"p": Path("b")})


def test_lang_and_alpha_do_not_change_locate_or_ability_keys():
    a = load()
    b = load("lang=bn", "merge.alpha=0.5", "merge.beta=0.3", "transfer.select=all")
    for fn in (keys.base_config, keys.locate_config, keys.ability_config):
        assert fn(a) == fn(b), fn.__name__
    assert keys.language_config(a) != keys.language_config(b)
    c = load("merge.alpha=0.5", "extract.lr=0.02")
    assert keys.language_config(a) == keys.language_config(c)
    assert keys.ability_config(a) != keys.ability_config(c)
    assert keys.locate_config(a) != keys.locate_config(load(f"locate.ratio={a.locate.ratio / 2}"))
    d = load("extract.full_lr=0.1")  # the baselines' full-parameter ability CPT only
    assert keys.ability_config(a) == keys.ability_config(d)
    assert keys.ability_full_config(a) != keys.ability_full_config(d)
    # θ_A,full's own budget: null is θ_A's (the same key as naming that budget); another moves only θ_A,full
    same, other = load(f"extract.full_tokens={a.extract.tokens}"), load(f"extract.full_tokens={2 * a.extract.tokens}")
    assert keys.ability_full_config(same) == keys.ability_full_config(a) != keys.ability_full_config(other)
    assert keys.ability_config(other) == keys.ability_config(a)


def test_tensors_that_share_memory_are_saved_as_copies(tmp_path):
    rows = torch.tensor([0, 2])
    values = torch.randn(2, 3)
    cache = ArtifactCache(tmp_path)
    cache.save("ability", "k", {}, {"rows:a": rows, "values:a": values, "theta_a:a": values, "rows:b": rows,
                                     "values:b": values})  # three names on one storage
    loaded = cache.tensors("ability", "k")
    assert torch.equal(loaded["theta_a:a"], values) and torch.equal(loaded["rows:b"], rows)
    assert torch.equal(loaded["values:b"], values)


def test_an_entry_is_written_beside_its_place_under_a_name_the_cleanup_finds(tmp_path):
    """The temporary folder of a write sits in the stage's folder (one rename publishes it) and is
    named `.tmp-<key>-*`, the name a later writer of the key removes if a killed writer left it;
    the cache's folders are made as needed."""
    cache, seen = ArtifactCache(tmp_path / "not" / "yet"), []
    cache.save("locate", "k1", {"config": {"path": Path("a")}}, {"w": torch.ones(1)}, write_extra=seen.append)
    assert seen[0].parent == cache.path("locate", "k1").parent and seen[0].name.startswith(".tmp-k1-")
    assert not seen[0].exists() and cache.exists("locate", "k1")
    assert cache.meta("locate", "k1")["config"] == {"path": "a"}  # what JSON cannot hold, as text


def test_cached_says_whether_the_value_was_loaded_or_computed(tmp_path):
    cache = ArtifactCache(tmp_path)

    def compute():
        cache.save("locate", "k", {}, {"w": torch.ones(2)})
        return "computed"

    assert cache.cached("locate", "k", lambda: "loaded", compute) == ("computed", False)
    assert cache.cached("locate", "k", lambda: "loaded", compute) == ("loaded", True)


def test_cpt_all_trains_on_the_same_total_tokens_as_maet():
    s = load("extract.tokens=1000", "language.tokens=300")
    assert keys.cpt_all_config(s)["tokens"] == 2 * 1000 + 300 == derived.maet_training_tokens(s)
    s = load("extract.tokens=1000", "language.tokens=300", "extract.general=none")
    assert keys.cpt_all_config(s)["tokens"] == 1000 + 300
    assert keys.cpt_all_config(load("lang=bn")) != keys.cpt_all_config(load("lang=sw"))


def test_cpt_all_mixes_the_ability_text_at_theta_a_budget_and_the_language_text_for_the_rest(monkeypatch, tmp_path):
    """extract.tokens = 1000, language.tokens = 300, θ_G trained: 2,300 tokens in all, of which
    1,000 of English ability text and 1,300 of C(Lj)."""
    class Drawn(Exception):
        pass

    def mixed_batches(parts, tokenizer, **kwargs):
        raise Drawn([(docs, tokens) for docs, tokens in parts])

    monkeypatch.setattr(builtin.data, "mixed_batches", mixed_batches)
    s = load("extract.tokens=1000", "language.tokens=300")
    corpora = SimpleNamespace(ability=["ability text"], language=["language text"])
    with pytest.raises(Drawn) as drawn:
        builtin.produce_cpt_all(s, None, None, corpora, {})
    assert drawn.value.args[0] == [(["ability text"], 1000), (["language text"], 1300)]


def test_keys_follow_the_runtime_that_changes_numbers(monkeypatch):
    """θ0's key (and through it every other key) changes with the resolved device type and dtype
    and the torch / transformers versions; the evaluation's key with lm-eval's version."""
    s, cpu = load(), torch.device("cpu")
    key = keys.base_artifact_key(s, cpu)
    assert key == keys.base_artifact_key(s, cpu)
    assert key == keys.base_artifact_key(load("model.dtype=float32"), cpu)  # auto resolves to fp32 on cpu
    assert key != keys.base_artifact_key(load("model.dtype=bfloat16"), cpu)
    assert key != keys.base_artifact_key(s, torch.device("cuda"))  # auto: bf16 on cuda
    evaluate = keys.evaluate_config(s)
    assert keys.runtime(s, cpu)["transformers"] == importlib.metadata.version("transformers")
    hub = load("model.source=hub", "model.path=org/model")
    hub_key = keys.base_artifact_key(hub, cpu)  # a loaded base: where it comes from, in which dtype, and the runtime
    for override in ("model.path=org/other", "model.dtype=bfloat16", "model.gguf_file=m.gguf"):
        assert keys.base_artifact_key(load("model.source=hub", "model.path=org/model", override), cpu) != hub_key
    assert keys.base_artifact_key(hub, torch.device("cuda")) != hub_key
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert key != keys.base_artifact_key(s, cpu) and hub_key != keys.base_artifact_key(hub, cpu)
    monkeypatch.setattr(keys, "package_version", lambda name: "0.0.1")
    assert evaluate != keys.evaluate_config(s)


def test_a_corpus_enters_a_key_by_its_content_or_its_world(tmp_path):
    """A file corpus by the sha256 of its bytes (a hand-computed digest), a world corpus by the
    world's fingerprint and its name: the corpus fingerprint that every training stage's key holds."""
    text = tmp_path / "sw.txt"
    text.write_text("habari\n")
    s = load()
    file_corpus = dataclasses.replace(s.lang.corpus, source="local", path=str(text), format="text")
    assert keys.fingerprint(s, file_corpus)["sha256"] == hashlib.sha256(b"habari\n").hexdigest()
    world_corpus = dataclasses.replace(s.lang.corpus, source="world", path="general:sw")
    assert keys.fingerprint(s, world_corpus) == {"source": "world", "world": world.world_fingerprint(s.world),
                                                 "name": "general:sw"}
