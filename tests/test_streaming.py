"""The out-of-core merge: a streaming safetensors writer/reader, and merges from checkpoints and
deltas on disk that equal the in-memory merge and load as a standard Hugging Face checkpoint."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from maet.method import merging
from maet.method.types import pack_rows
from maet.scale import streaming


def test_writer_output_is_read_back_exactly_by_the_safetensors_library(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 5, generator=g), "b": torch.randn(7, generator=g).to(torch.bfloat16),
               "c": torch.arange(6).reshape(2, 3), "scalar": torch.tensor(2.5, dtype=torch.float16),
               "empty": torch.zeros(0, 4), "flag": torch.tensor([True, False])}
    specs = [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    streaming.write_safetensors(tmp_path / "x.safetensors", specs, iter(tensors.values()))
    loaded = load_file(tmp_path / "x.safetensors")
    assert loaded.keys() == tensors.keys()
    assert all(loaded[n].dtype == t.dtype and torch.equal(loaded[n], t) for n, t in tensors.items())
    ours = streaming.SafetensorsFile(tmp_path / "x.safetensors")
    assert all(torch.equal(ours.get(n), t) for n, t in tensors.items())


def test_writer_refuses_a_tensor_that_does_not_match_its_header(tmp_path):
    with pytest.raises(ValueError, match="header says"):
        streaming.write_safetensors(tmp_path / "x.safetensors", [("a", torch.float32, (2, 2))], [torch.zeros(2, 3)])


def _save(model, folder, shard="20KB"):
    model.save_pretrained(folder, max_shard_size=shard)
    return folder


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_merge_of_checkpoints_and_deltas_equals_the_in_memory_merge(tiny_model, tmp_path, dtype):
    base_dir = _save(tiny_model, tmp_path / "base")
    assert (base_dir / streaming.INDEX).is_file()  # the base is sharded
    theta0 = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    names = [n for n in theta0 if ".layers." in n and theta0[n].ndim == 2]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a fine-tuned model θ1
        for p in tiny_model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    theta1 = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    model_dir = _save(tiny_model, tmp_path / "ft", shard="1GB")
    language = {n: 0.1 * torch.randn(theta0[n].shape, generator=g) for n in names}
    ability = {n: (torch.tensor([0, 3]), 0.1 * torch.randn(2, theta0[n].shape[1], generator=g)) for n in names}
    kept = names[::2]
    save_file(language, tmp_path / "language.safetensors")
    save_file(pack_rows(ability) | {"theta_a:" + names[0]: torch.zeros(1)}, tmp_path / "ability.safetensors")

    stats = streaming.merge_to_checkpoint(
        base_dir, tmp_path / "out", models=[(model_dir, 0.5)],
        deltas=[streaming.Delta(tmp_path / "language.safetensors", 0.7),
                streaming.Delta(tmp_path / "ability.safetensors", 1.5, set(kept))],
        dtype=dtype, shard_bytes=30_000)
    assert stats["shards"] > 1 and (tmp_path / "out" / streaming.INDEX).is_file()

    task = {n: theta0[n] + 0.5 * (theta1[n] - theta0[n]) for n in theta0}
    expected = {n: task[n] for n in theta0} | merging.merge_weights(task, language, ability, kept, alpha=1.5, beta=0.7)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=dtype or torch.float32)
    got = dict(merged.named_parameters())
    for n, value in expected.items():
        assert got[n].dtype == (dtype or torch.float32)
        torch.testing.assert_close(got[n], value.to(got[n].dtype), rtol=1e-6 if dtype is None else 1e-2, atol=1e-6)
    not_kept = names[1]
    assert not torch.allclose(got[not_kept].float(), (task[not_kept] + 0.7 * language[not_kept]).index_add(
        0, ability[not_kept][0], 1.5 * ability[not_kept][1]).to(got[not_kept].dtype).float())
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == ("bfloat16" if dtype else "float32")


def test_a_delta_with_a_tensor_the_base_lacks_fails_before_writing(tiny_model, tmp_path):
    base_dir = _save(tiny_model, tmp_path / "base", shard="1GB")
    save_file({"model.layers.9.mlp.up_proj.weight": torch.zeros(2, 2)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="does not match the base"):
        streaming.merge_to_checkpoint(base_dir, tmp_path / "out", deltas=[streaming.Delta(tmp_path / "bad.safetensors", 1.0)])
    assert not (tmp_path / "out").exists()


def test_cli_parses_path_weight_pairs(tiny_model, tmp_path, capsys):
    base_dir = _save(tiny_model, tmp_path / "base", shard="1GB")
    streaming.main(["--base", str(base_dir), "--model", f"{base_dir}:2.0", "--out", str(tmp_path / "out")])
    assert json.loads(capsys.readouterr().out)["shards"] == 1
    out = load_file(tmp_path / "out" / "model.safetensors")
    assert all(torch.equal(out[n], p.detach()) for n, p in tiny_model.named_parameters() if n in out)
    with pytest.raises(SystemExit):
        streaming.main(["--base", str(base_dir), "--delta", "nocolon", "--out", str(tmp_path / "o2")])
