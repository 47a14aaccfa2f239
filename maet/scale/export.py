"""`save.model=true`: the method's merged model (first seed) as a standard Hugging Face checkpoint,
written by the out-of-core merge (`maet.scale.streaming`: one tensor at a time, from θ0's checkpoint
and the deltas in the artifact cache), with the tokenizer, a model card (`README.md`: method,
coefficients, source artifacts, metrics) and `maet_merge.json` (the same, machine-readable);
uploaded with `huggingface_hub` when `save.push_to_hub` names a repo.

Linear merges only (the streaming merge is `θ0 + Σ w·δ + Σ w·R[rows]`): the methods in LINEAR.
The written tensors equal the evaluated model's (the same `maet.method.merging.merge_tensor`, same order).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from maet.scale.streaming import Delta, merge_to_checkpoint
from maet.schema.settings import Settings
from maet.store.cache import TENSORS, ArtifactCache

# method -> the artifacts it adds to θ0, each as (stage, coefficient: "alpha" | "beta" | 1.0, kept tensors only)
LINEAR: dict[str, list[tuple[str, str | float, bool]]] = {
    "base": [],
    "language_only": [("language", 1.0, False)],
    "ability_only": [("ability", 1.0, False)],
    "maet": [("language", "beta", False), ("ability", "alpha", True)],
    "task_arithmetic": [("language", "beta", False), ("ability_full", "alpha", False)],
    "cpt_all": [("cpt_all", 1.0, False)],
}
FORMULA = {"base": "θ0", "language_only": "θ0 + R(Lj)", "ability_only": "θ0 + R(A) on the key rows",
           "maet": "θ0 + β·R(Lj) + α·(M_T ⊙ R(A))", "task_arithmetic": "θ0 + β·R(Lj) + α·(θ_A,full − θ0)",
           "cpt_all": "θ0 + (θ_cpt_all − θ0)"}


def deltas(s: Settings, cache: ArtifactCache, keys: dict[str, str], kept: list[str]) -> list[Delta]:
    """The delta files of the method's merge with their coefficients (`keys`: stage -> cache key)."""
    weight = {"alpha": s.merge.alpha, "beta": s.merge.beta}
    return [Delta(cache.path(stage, keys[stage]) / TENSORS, weight.get(w, w), set(kept) if only_kept else None)
            for stage, w, only_kept in LINEAR[s.method.name]]


def base_folder(s: Settings, cache: ArtifactCache, base_key: str) -> Path:
    """θ0's checkpoint folder: the cached scratch base, the local folder, or the hub snapshot
    already in the local Hugging Face cache (the job loaded it from there)."""
    if s.model.source == "scratch":
        return cache.path("base", base_key) / "model"
    if s.model.source == "local":
        return Path(s.model.path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(s.model.path, local_files_only=True))


def model_card(s: Settings, record: dict) -> str:
    """README.md of the checkpoint: YAML front matter for the hub, then what it is and how it scored."""
    base = s.model.path or s.model.name
    rows = "\n".join(f"| `{k}` | {v} |" for k, v in record["coefficients"].items())
    sources = "\n".join(f"| {stage} | `{key}` |" for stage, key in record["artifacts"].items())
    metrics = "\n".join(f"| {k} | {v:.4g} |" for k, v in record["metrics"].items() if isinstance(v, (int, float)))
    return f"""---
base_model: {base}
library_name: transformers
tags: [maet, merge, multilingual]
language: [{s.lang.code}, {s.source_lang.code}]
---
# {s.model.name}: `{s.method.name}` for {s.lang.name} ({s.lang.code})

Built by [maet](https://arxiv.org/abs/2410.07825) (Multi-lingual Ability Extraction and Transfer):
the ability `{s.ability.name}` learnt from {s.source_lang.name} text, moved to {s.lang.name} by weight
arithmetic, `{FORMULA[s.method.name]}`, written tensor by tensor from the artifacts below
(seed {s.seed}; {len(record['kept'])} ability tensors transferred).

| coefficient | value |
| --- | --- |
{rows}

Source artifacts (maet's cache keys; `base` is θ0):

| artifact | key |
| --- | --- |
{sources}

Metrics of this model in the job that built it (`eval.benchmark={s.eval.benchmark}`, split `{s.eval.split}`,
limit {s.eval.limit}; accuracies in [0, 1]):

| metric | value |
| --- | --- |
{metrics}
"""


def save_model(s: Settings, cache: ArtifactCache, keys: dict[str, str], kept: list[str], metrics: dict) -> Path:
    """Write the checkpoint into `save.dir` (and push it when configured); returns the folder."""
    out = Path(s.save.dir)
    dtype = None if s.save.dtype == "auto" else getattr(torch, s.save.dtype)
    stats = merge_to_checkpoint(base_folder(s, cache, keys["base"]), out, deltas=deltas(s, cache, keys, kept),
                                dtype=dtype)
    coefficients = {"method": s.method.name, "merge.alpha": s.merge.alpha, "merge.beta": s.merge.beta,
                    "transfer.select": s.transfer.select, "transfer.tau": s.transfer.tau,
                    "transfer.similarity": s.transfer.similarity, "locate.ratio": s.locate.ratio}
    record = {"coefficients": coefficients, "kept": sorted(kept), "metrics": metrics, "merge": stats,
              "artifacts": {stage: keys[stage] for stage in ["base", *(st for st, _, _ in LINEAR[s.method.name])]}}
    (out / "maet_merge.json").write_text(json.dumps(record, indent=2, default=str))
    (out / "README.md").write_text(model_card(s, record))
    if s.save.push_to_hub:
        push(out, s.save.push_to_hub, s.save.private)
    return out


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Upload the folder to the hub repo (created if missing); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    return str(api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="maet: merged model"))
