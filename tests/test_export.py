"""save.model=true (`maet.scale.export`): the merged model as a Hugging Face checkpoint with a model card,
equal to the evaluated model; push_to_hub through a stand-in for the hub; eval.backend (`maet.models.backends`)."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import load
from safetensors.torch import load_file
from test_launch import LEAN, SMALL
from transformers import AutoModelForCausalLM, AutoTokenizer

from maet.method.types import unpack_rows
from maet.models import backends
from maet.scale import export
from maet.schema.resolvers import PROJECT_ROOT
from maet.schema.settings import ConfigError, EvalSettings
from maet.store.cache import ArtifactCache


@pytest.mark.slow
def test_saved_model_is_the_merge_formula_on_the_jobs_artifacts(tmp_path):
    cache, run = tmp_path / "cache", tmp_path / "run"
    args = [*SMALL, *LEAN, "tracker=none", "save.model=true", "merge.alpha=0.5", "merge.beta=0.75",
            "transfer.select=threshold",  # a selection that keeps some tensors and leaves others
            f"paths.cache_dir={cache}", f"hydra.run.dir={run}"]
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "launch.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads((run / "metrics.json").read_text())
    folder = run / "model"
    saved = AutoModelForCausalLM.from_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder)("12 apples")["input_ids"]

    # the evaluated model, rebuilt in memory as the job built it: θ0 from the cache, the method on the deltas
    stages = summary["stages"]
    base = AutoModelForCausalLM.from_pretrained(cache / "base" / stages["base"]["key"] / "model")
    theta0 = {n: p.detach() for n, p in base.named_parameters() if ".layers." in n}
    language = load_file(cache / "language" / stages["language"]["key"] / "tensors.safetensors")
    ability = unpack_rows(load_file(cache / "ability" / stages["ability"]["key"] / "tensors.safetensors"))
    # M_T by the rule written out: tensors whose R(A), scattered into its tensor, has a cosine < 0 with R(Lj)
    dense = {n: torch.zeros_like(language[n]).index_copy(0, rows, values) for n, (rows, values) in ability.items()}
    cosine = {n: float(torch.nn.functional.cosine_similarity(d.double().flatten(), language[n].double().flatten(), dim=0))
              for n, d in dense.items()}
    kept = {n for n, c in cosine.items() if c < 0}
    assert 0 < len(kept) < len(ability)  # the test covers tensors transferred and left out
    record = json.loads((folder / "maet_merge.json").read_text())
    assert sorted(record["kept"]) == sorted(kept)
    expected = {n: p.detach().clone() for n, p in base.named_parameters()}
    for n in theta0:  # θ0 + 0.75·R(Lj) + 0.5·(M_T ⊙ R(A)), in fp32 (the base's dtype here)
        expected[n] = theta0[n] + 0.75 * language[n] if n in language else expected[n]
        if n in kept:
            rows, values = ability[n]
            expected[n][rows] += 0.5 * values
    got = dict(saved.named_parameters())
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    assert any(not torch.equal(got[n], theta0[n]) for n in theta0)

    card = (folder / "README.md").read_text()
    assert card.startswith("---\nbase_model:") and "θ0 + β·R(Lj) + α·(M_T ⊙ R(A))" in card
    assert "| `merge.alpha` | 0.5 |" in card and stages["ability"]["key"] in card and stages["language"]["key"] in card
    headline = summary["headline"]
    assert record["metrics"][headline] == summary["metrics"][headline] and f"| {headline} |" in card
    assert record["artifacts"] == {s: stages[s]["key"] for s in ("base", "language", "ability")}


def test_push_uploads_the_folder(tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload", repo_id, folder_path))
            return f"https://hub.example/{repo_id}/commit/1"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = export.push(tmp_path, "someone/maet-sw", private=True)
    assert calls == [("create", "someone/maet-sw", True, True), ("upload", "someone/maet-sw", str(tmp_path))]
    assert url.endswith("/commit/1")


def test_the_export_writes_each_linear_method_from_the_files_and_coefficients_of_its_terms(tmp_path):
    """The out-of-core merge reads, for each linear method of the registry, the cache files of the
    artifacts its formula adds, with its coefficients (written out here per method); M_T ⊙ R(A) is
    R(A)'s file read on the kept tensors only. TIES, DARE and layer swap are not linear."""
    assert sorted(export.exportable()) == ["ability_full", "ability_only", "ability_transferred", "base", "cpt_all",
                                           "language_beta", "language_only", "maet", "task_arithmetic"]
    keys = {"base": "k0", "ability": "ka", "language": "kl", "ability_full": "kf", "cpt_all": "kc"}
    cache = ArtifactCache(tmp_path)

    def files(method):
        s = load(f"method={method}", "merge.alpha=0.7", "merge.beta=0.9")
        return [(d.path.relative_to(tmp_path).as_posix(), d.weight, d.names)
                for d in export.deltas(s, cache, keys, kept=["t1"])]

    assert files("maet") == [("language/kl/tensors.safetensors", 0.9, None),
                             ("ability/ka/tensors.safetensors", 0.7, {"t1"})]
    assert files("task_arithmetic") == [("language/kl/tensors.safetensors", 0.9, None),
                                        ("ability_full/kf/tensors.safetensors", 0.7, None)]
    assert files("ability_transferred") == [("ability/ka/tensors.safetensors", 0.7, {"t1"})]
    assert files("language_beta") == [("language/kl/tensors.safetensors", 0.9, None)]
    assert files("ability_only") == [("ability/ka/tensors.safetensors", 1.0, None)]
    assert files("cpt_all") == [("cpt_all/kc/tensors.safetensors", 1.0, None)]
    assert files("base") == []


def test_vllm_model_args_and_checks(monkeypatch):
    settings = EvalSettings(batch_size="auto", seed=7, backend="vllm", vllm={"tensor_parallel_size": 2})
    args = backends.vllm_model_args("/ckpt", settings, torch.bfloat16)
    assert args == {"pretrained": "/ckpt", "tokenizer": "/ckpt", "dtype": "bfloat16", "batch_size": "auto",
                    "seed": 7, "tensor_parallel_size": 2}
    monkeypatch.setattr(backends, "vllm_installed", lambda: False)
    with pytest.raises(ConfigError) as info:
        backends.check_vllm(settings)
    assert info.value.key == "eval.backend" and "pip install -e '.[vllm]'" in info.value.allowed
    monkeypatch.setattr(backends, "vllm_installed", lambda: True)
    backends.check_vllm(settings)
    with pytest.raises(ConfigError) as info:
        backends.check_vllm(EvalSettings(backend="vllm", vllm={"dtype": "float16"}))
    assert info.value.key == "eval.vllm.dtype"
    backends.check_vllm(EvalSettings(backend="hf", vllm={"dtype": "x"}))  # ignored unless backend=vllm


@pytest.mark.parametrize("override,ok", [("eval.batch_size=8", True), ("eval.batch_size=auto", True),
                                         ("eval.batch_size=auto:4", True), ("eval.batch_size=0", False),
                                         ("eval.batch_size=big", False), ("eval.batch_size=auto:0", False),
                                         ("eval.batch_size=true", False)])
def test_eval_batch_size_accepts_auto(override, ok):
    if ok:
        assert str(load(override).eval.batch_size) == override.split("=")[1]
        return
    with pytest.raises(ConfigError) as info:
        load(override)
    assert info.value.key == "eval.batch_size" and "auto:N" in info.value.allowed


def test_save_model_needs_a_linear_method():
    assert load("save.model=true").save.model is True
    with pytest.raises(ConfigError) as info:
        load("save.model=true", "method=ties")
    assert info.value.key == "save.model" and "maet" in info.value.allowed
