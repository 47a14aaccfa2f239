"""Bad input gets a clear error (key, value, what is allowed) before any expensive work and leaves
nothing in the cache; a corrupted cache entry is recomputed with one warning; secrets are not
logged; no pickle. The table below is summarized in docs/robustness.md."""

import json
import re
import subprocess
import sys
import warnings

import pytest
from conftest import DATA_DIR, compose_config, load

from maet.config.compose import check_group_overrides
from maet.config.validate import script_fraction
from maet.engine import context, pipeline
from maet.reporting import tracking
from maet.reporting.tracking import redact
from maet.schema.resolvers import PROJECT_ROOT
from maet.schema.settings import ConfigError
from maet.store.cache import ArtifactCache

SHARED = "experiment=shared_data"
# name, overrides ({tmp}: a scratch folder holding empty.txt, a_file and model folders), key, part of "allowed"
BAD_INPUTS = [
    ("group option typo", "method=maett", "method", "did you mean 'maet'?"),
    ("unknown language", "lang=xx", "lang", "bn, en, es, sw, te, th, zh"),
    ("ablation typo", "+ablation=contrat", "ablation", "did you mean 'contrast'?"),
    ("model typo in a sweep", "model=tiny,qwen2_5_0_5", "model", "did you mean 'qwen2_5_0_5b'?"),
    ("ratio not a number", "locate.ratio=abc", "locate.ratio", "schema's type"),
    ("batch size not an int", "train.batch_size=2.5", "train.batch_size", "schema's type"),
    ("seeds not an int", "report.seeds=many", "report.seeds", "schema's type"),
    ("alpha nan", "merge.alpha=nan", "merge.alpha", "a finite number"),
    ("alpha -inf", "merge.alpha=-inf", "merge.alpha", "a finite number"),
    ("beta inf", "merge.beta=inf", "merge.beta", "a finite number"),
    ("ratio 0", "locate.ratio=0.0", "locate.ratio", "(0, 1]"),
    ("ratio > 1", "locate.ratio=1.01", "locate.ratio", "(0, 1]"),
    ("ratio < 0", "locate.ratio=-0.5", "locate.ratio", "(0, 1]"),
    ("locate budget 0", "locate.tokens=0", "locate.tokens", "an integer > 0"),
    ("ability budget < 0", "extract.tokens=-5", "extract.tokens", "an integer > 0"),
    ("language budget 0", "language.tokens=0", "language.tokens", "an integer > 0"),
    ("oracle budget < 0", "oracle.tokens=-1", "oracle.tokens", "an integer > 0"),
    ("pre-training budget < 0", "model.scratch.pretrain_tokens=-1", "model.scratch.pretrain_tokens", ">= 0"),
    ("corpus token cap 0", "experiment=hub lang.corpus.max_tokens=0", "lang.corpus.max_tokens", "> 0"),
    ("eval.limit 0", "eval.limit=0", "eval.limit", "an integer >= 1"),
    ("eval.limit < 0", "eval.limit=-3", "eval.limit", "an integer >= 1"),
    ("language not in MGSM", f"{SHARED} eval.langs=[sw,xx]", "eval.langs", "benchmark file"),
    ("language not in the world", "eval.langs=[sw,fr]", "eval.langs", "languages of the built-in world"),
    ("target not in eval.langs", "eval.langs=[en]", "eval.langs", "contains lang.code='sw'"),
    ("corpus file missing", f"{SHARED} lang.corpus.path={{tmp}}/missing.txt", "lang.corpus.path", "an existing file"),
    ("corpus file empty", f"{SHARED} lang.corpus.path={{tmp}}/empty.txt", "lang.corpus.path", "a non-empty file"),
    ("ability corpus missing", f"{SHARED} ability.corpus.path={{tmp}}/gsm8k.jsonl", "ability.corpus.path",
     "an existing file"),
    ("data dir missing", f"{SHARED} paths.data_dir={{tmp}}/nodata", "paths.data_dir", "an existing directory"),
    ("model path not found", f"{SHARED} model=local model.path={{tmp}}/nomodel", "model.path", "an existing model folder"),
    ("model path unset", f"{SHARED} model=local", "model.path", "a hub id or folder"),
    ("model folder without config", f"{SHARED} model=local model.path={{tmp}}", "model.path", "config.json"),
    ("tokenizer/model mismatch", f"{SHARED} model=local model.path={{tmp}}/mismatch", "model.path",
     "fits its model's embedding (vocab_size=64)"),
    ("checkpoint steps < 0", "checkpoint.every_steps=-1", "checkpoint.every_steps", "an integer >= 0"),
    ("checkpoint minutes nan", "checkpoint.every_minutes=nan", "checkpoint.every_minutes", "a number >= 0"),
    ("sequence beyond the world model's window", "train.seq_len=512", "train.seq_len",
     "an integer <= 256, the context window of model=world-tiny-llama"),
    ("sequence beyond a local model's window", f"{SHARED} model=local model.path={{tmp}}/short train.seq_len=256",
     "train.seq_len", "an integer <= 128, the context window"),
    ("cache dir not writable", "paths.cache_dir={tmp}/a_file/cache", "paths.cache_dir", "a writable directory"),
    ("language code escapes the cache", "lang.code=../../etc", "lang.code", "letters, digits"),
    ("eval language escapes the cache", "eval.langs=[sw,../x]", "eval.langs", "letters, digits"),
    ("tracker mode typo", "tracker.mode=onlin", "tracker.mode", "did you mean 'online'?"),
]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, tokenizer):
    """A folder with an empty file, a plain file, a local model whose tokenizer (about 320 tokens)
    does not fit its declared embedding of 64 rows, and a local model of 128 positions."""
    from conftest import TINY

    from maet.models.model import build_scratch_model

    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "empty.txt").write_text("")
    (tmp / "a_file").write_text("not a folder")
    folder = tmp / "mismatch"
    build_scratch_model(TINY, tokenizer, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"vocab_size": 64}))
    short = tmp / "short"  # a model of 128 positions (TINY's max_position_embeddings)
    build_scratch_model(TINY, tokenizer, seed=0).save_pretrained(short)
    tokenizer.save_pretrained(short)
    return tmp


@pytest.mark.parametrize("name, overrides, key, allowed", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_fails_early_naming_key_value_and_allowed(name, overrides, key, allowed, scratch, monkeypatch):
    args = overrides.format(tmp=scratch).split()
    cache = scratch / "cache" / re.sub(r"\W", "_", name)
    args = [f"paths.cache_dir={cache}", "tracker=none", *args]  # a later paths.cache_dir wins
    monkeypatch.setattr(pipeline, "run_job", lambda s: pytest.fail("work started before the input was checked"))
    with pytest.raises(ConfigError) as info:
        check_group_overrides(args, PROJECT_ROOT / "conf")  # what launch.py checks before Hydra composes
        pipeline.run(compose_config(*args))
    err, message = info.value, str(info.value)
    assert err.key == key and allowed in err.allowed, message
    assert f"{key}={err.value!r}" in message and allowed in message, message
    if isinstance(err.value, (str, int, float)):  # the value as given (lists and unset values aside)
        assert str(err.value) in " ".join(args), message
    assert not cache.exists() or not any(cache.iterdir()), "a bad input left something in the cache"


def test_the_table_has_at_least_25_cases_and_the_doc_lists_them():
    assert len(BAD_INPUTS) >= 25
    doc = (PROJECT_ROOT / "docs" / "robustness.md").read_text()
    for _, overrides, key, _ in BAD_INPUTS:
        assert f"`{key}`" in doc, key


def test_launch_names_a_mistyped_group_option_with_a_suggestion(tmp_path):
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "launch.py"), "method=maett",
                           f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "method='maett'" in proc.stderr and "did you mean 'maet'?" in proc.stderr and "ties" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "cache").exists()


def test_group_choices_that_exist_and_sweep_functions_pass():
    check_group_overrides(["-m", "lang=sw,bn", "method=maet", "+ablation=contrast", "lang@source_lang=en",
                           "merge.alpha=0.5,1.0", "model=glob(*)", "hydra.run.dir=x", "--cfg", "job",
                           "hydra/launcher=submitit_local", "hydra/sweeper=optuna"],  # plugins' options
                          PROJECT_ROOT / "conf")


def test_a_corpus_in_the_wrong_script_warns():
    with pytest.warns(UserWarning, match=r"lang.corpus.path=.*sw.txt.*lang.script='Bengali'"):
        s = load(SHARED, "lang=bn", f"lang.corpus.path={DATA_DIR / 'text' / 'sw.txt'}")
    assert s.lang.code == "bn"  # a warning, not an error: mixed-script text exists
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for code in ("sw", "bn", "te", "th", "zh"):
            load(SHARED, f"lang={code}")


def test_script_fraction():
    assert script_fraction("mchana mzuri 12", "Latin") == 1.0
    assert script_fraction("আমি ভাত খাই", "Bengali") == 1.0
    assert script_fraction("আমি ভাত খাই", "Latin") == 0.0
    assert script_fraction("我们 ab", "Han") == 0.5
    assert script_fraction("123 .", "Thai") == 1.0


def test_a_corrupted_entry_is_removed_with_one_warning(tmp_path):
    import torch

    cache = ArtifactCache(tmp_path)
    cache.save("ability", "k", {"n": 1}, {"x": torch.arange(1000.0)})
    assert cache.ready("ability", "k")
    tensors = cache.path("ability", "k") / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-8] ^= 0xFF  # one flipped byte in the tensor data: still loadable, silently wrong
    tensors.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupted.*tensors.safetensors does not match its sha256") as record:
        assert not cache.ready("ability", "k")
    assert len(record) == 1 and not cache.path("ability", "k").exists()
    assert [p.name for p in (tmp_path / "ability").iterdir()] == []  # the removed entry is gone, not set aside
    cache.save("ability", "k", {"n": 2}, {"x": torch.arange(1000.0)})
    assert cache.ready("ability", "k") and cache.meta("ability", "k")["n"] == 2


@pytest.mark.parametrize("damage", ["truncate_meta", "delete_tensors", "no_meta"])
def test_other_damage_is_detected(tmp_path, damage):
    import torch

    cache = ArtifactCache(tmp_path)
    cache.save("language", "k", {}, {"x": torch.zeros(3)})
    folder = cache.path("language", "k")
    if damage == "truncate_meta":
        (folder / "meta.json").write_text((folder / "meta.json").read_text()[:10])
    elif damage == "delete_tensors":
        (folder / "tensors.safetensors").unlink()
    else:
        (folder / "meta.json").unlink()
    reason = {"truncate_meta": "meta.json unreadable (JSONDecodeError", "delete_tensors": "tensors.safetensors is missing",
              "no_meta": "meta.json unreadable (FileNotFoundError"}[damage]
    assert cache.problem("language", "k").startswith(reason)
    with pytest.warns(UserWarning, match="corrupted"):
        assert not cache.ready("language", "k")
    cache.save("language", "k", {}, {"x": torch.ones(3)})  # publishing over the removed entry works
    assert torch.equal(cache.tensors("language", "k")["x"], torch.ones(3))


def test_a_killed_writers_temp_folder_is_never_read_and_is_cleaned(tmp_path):
    cache = ArtifactCache(tmp_path)
    stale = tmp_path / "locate" / ".tmp-k-abc"
    stale.mkdir(parents=True)
    (stale / "meta.json").write_text("{}")
    assert not cache.exists("locate", "k") and not cache.ready("locate", "k")
    with cache.lock("locate", "k"):
        assert not stale.exists()


def test_secrets_are_not_logged():
    config = {"tracker": {"api_key": "abc123", "project": "maet"}, "hub": {"token": "hf_x", "HF_TOKEN": "y"},
              "locate": {"tokens": 16384}, "corpus": {"max_tokens": 5}, "eval": {"max_gen_toks": 64},
              "db": [{"password": "p"}], "wandb_api_key": "k", "secret": None}
    flat = tracking.flatten(redact(config))
    assert flat["tracker.api_key"] == flat["hub.token"] == flat["hub.HF_TOKEN"] == flat["wandb_api_key"] == "<redacted>"
    assert flat["db"] == [{"password": "<redacted>"}]
    assert flat["locate.tokens"] == 16384 and flat["corpus.max_tokens"] == 5 and flat["eval.max_gen_toks"] == 64
    assert flat["tracker.project"] == "maet" and flat["secret"] is None
    assert "abc123" not in json.dumps(flat) and "hf_x" not in json.dumps(flat)


def test_the_tracker_gets_the_config_without_secrets(monkeypatch):
    import wandb

    seen = {}

    def fake_init(**kwargs):
        seen.update(kwargs["config"])
        raise ConnectionError("offline")

    monkeypatch.setattr(wandb, "init", fake_init)
    with pytest.warns(UserWarning, match="W&B could not start"):
        tracking.open_tracker(tracking.TrackerSettings(), {"tracker": {"api_key": "s3cret"}, "seed": 0}, "/tmp")
    assert seen == {"tracker.api_key": "<redacted>", "seed": 0}


def test_no_pickle_and_no_unsafe_torch_load_in_the_code():
    for path in [*(PROJECT_ROOT / "maet").rglob("*.py"), PROJECT_ROOT / "launch.py"]:
        code = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(pickle|cPickle|dill|joblib)\b", code, re.M), path
        for call in re.findall(r"torch\.load\([^)]*\)", code):
            assert "weights_only=True" in call, (path, call)
        assert "trust_remote_code=True" not in code, path


def test_remote_code_is_off_unless_the_config_says_so():
    for overrides in ([], [SHARED, "model=qwen2_5_0_5b"], [SHARED, "model=llama3_8b"], [SHARED, "model=gemma3_270m"]):
        assert load(*overrides).model.trust_remote_code is False
    assert load(SHARED, "model=qwen2_5_0_5b", "model.trust_remote_code=true").model.trust_remote_code is True


@pytest.mark.parametrize("error", ["unreachable", "not logged in"])
def test_wandb_that_cannot_start_gives_one_warning(monkeypatch, error):
    import wandb
    from wandb.errors import UsageError

    def refuse(**kwargs):
        raise ConnectionError("api.wandb.ai unreachable") if error == "unreachable" else \
            UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])")

    monkeypatch.setattr(wandb, "init", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker = tracking.open_tracker(tracking.TrackerSettings(mode="online"), {}, "/tmp")
        tracker.log({"a": 1.0})
        tracker.finish()
    assert isinstance(tracker, tracking.NoTracker)
    assert [str(w.message).split(" (")[0] for w in caught] == ["W&B could not start"]


def test_entries_from_before_checksums_are_still_used(tmp_path):
    import torch

    cache = ArtifactCache(tmp_path)
    cache.save("base", "k", {"n": 1}, {"x": torch.zeros(2)})
    meta = cache.path("base", "k") / "meta.json"
    old = json.loads(meta.read_text())
    del old["sha256"]  # as published by the cache before checksums (atomically, so complete)
    meta.write_text(json.dumps(old))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.ready("base", "k") and cache.meta("base", "k")["n"] == 1


def test_key_neuron_training_does_not_depend_on_the_masks_order(tiny_model):
    """A mask read from the cache (safetensors: sorted by name) and one computed in-process
    (model order) give the same bits: the gradient-norm clip once summed in mask order."""
    import torch
    from conftest import random_batches

    from maet.method import extract, locate
    from maet.models.model import block_linear_names
    from maet.schema.settings import MODULES

    names = block_linear_names(tiny_model, list(MODULES))
    shapes = {n: p.shape for n, p in tiny_model.named_parameters() if n in names}
    mask = locate.select_rows(locate.random_scores(shapes, 0), 0.25, "tensor")
    loop = {"warmup_ratio": 0.0, "weight_decay": 0.0, "grad_clip": 1e-3}  # the clip is active

    def run(m):
        batches = random_batches(tiny_model.config.vocab_size, 4, seed=0)
        return extract.train_rows(tiny_model, m, batches, 4, 1e-2, "test", **loop)[0]

    in_model_order, sorted_by_name = run(mask), run(dict(sorted(mask.items())))
    assert list(mask) != sorted(mask)  # the two orders differ
    for n in mask:
        assert torch.equal(in_model_order[n][1], sorted_by_name[n][1]), n


def test_a_stage_returns_its_tensors_in_one_order_computed_or_cached(tmp_path):
    """DARE draws its random drops tensor by tensor: the order must not depend on the cache."""
    import torch

    from maet.method.train import TrainStats

    ctx = context.Context(load(), ArtifactCache(tmp_path), torch.device("cpu"))
    model_order = {"model.layers.1.mlp.up_proj.weight": torch.ones(2), "model.layers.0.self_attn.q_proj.weight":
                   torch.zeros(2), "model.layers.0.mlp.up_proj.weight": torch.full((2,), 2.0)}
    computed, key = context.cached_stage(ctx, "language", {"c": 1}, {}, lambda: (model_order, TrainStats(), {}))
    cached, same_key = context.cached_stage(ctx, "language", {"c": 1}, {}, lambda: pytest.fail("recomputed"))
    assert key == same_key and list(computed) == list(cached) == sorted(model_order)
    assert all(torch.equal(computed[n], cached[n]) for n in model_order)
