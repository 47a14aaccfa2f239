"""`save.model=true`: the method's merged model (first seed) as a standard Hugging Face checkpoint,
written by the out-of-core merge (`maet.scale.streaming`: one tensor at a time, from θ0's checkpoint
and the deltas in the artifact cache), with the tokenizer, a model card (`README.md`: method,
coefficients, source artifacts, metrics) and `maet_merge.json` (the same, machine-readable);
uploaded with `huggingface_hub` when `save.push_to_hub` names a repo.

Linear merges only (the streaming merge is `θ0 + Σ w·δ + Σ w·R[rows]`): the methods the registry
declares by their terms (`maet.method.methods.register_linear`), written from those same terms.
The written tensors equal the evaluated model's (the same `maet.method.merging.merge_tensor`, same order).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from maet.method.methods import MADE_FROM, METHODS
from maet.scale.streaming import Delta, merge_to_checkpoint
from maet.schema.settings import Settings
from maet.stages.registry import stage_of
from maet.store.cache import TENSORS, ArtifactCache


def exportable() -> list[str]:
    """The methods the out-of-core merge can write: the linear ones of the registry."""
    return [name for name, m in METHODS.items() if m.terms is not None and not m.reference]


def deltas(s: Settings, cache: ArtifactCache, keys: dict[str, str], kept: list[str]) -> list[Delta]:
    """The delta files of the method's linear terms with their coefficients (`keys`: stage -> cache
    key); M_T ⊙ R(A) is R(A)'s file read on the kept tensors only."""
    merge = dataclasses.asdict(s.merge)
    return [Delta(cache.path(stage_of(artifact), keys[stage_of(artifact)]) / TENSORS,
                  merge[w] if isinstance(w, str) else w, set(kept) if artifact in MADE_FROM else None)
            for artifact, w in METHODS[s.method.name].terms]


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
arithmetic, `{METHODS[s.method.name].doc}`, written tensor by tensor from the artifacts below
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
              "artifacts": {stage: keys[stage] for stage in
                            ["base", *dict.fromkeys(stage_of(a) for a, _ in METHODS[s.method.name].terms)]}}
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
