"""The artifact cache: each stage's output under a key that hashes exactly what it depends on.

Layout: `<cache_dir>/<stage>/<key>/` holding `tensors.safetensors` (optional), `meta.json`
(config, inputs, versions, timings, token counts) and any extra files a stage saves (a model
folder). An entry is written into a temporary folder and published by one atomic rename, so a
killed run never leaves a half-written entry that a later run trusts. Never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

META, TENSORS = "meta.json", "tensors.safetensors"


def artifact_key(stage: str, config: Any, inputs: dict[str, str] | None = None) -> str:
    """Hash of the stage name, the config it depends on (JSON-able) and its inputs' keys."""
    payload = json.dumps({"stage": stage, "config": config, "inputs": inputs or {}},
                         sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


class ArtifactCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def exists(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / META).is_file()

    def meta(self, stage: str, key: str) -> dict:
        return json.loads((self.path(stage, key) / META).read_text())

    def tensors(self, stage: str, key: str) -> dict[str, torch.Tensor]:
        return load_file(self.path(stage, key) / TENSORS)

    def save(self, stage: str, key: str, meta: dict, tensors: dict[str, torch.Tensor] | None = None,
             write_extra: Callable[[Path], None] | None = None) -> Path:
        """Publish an entry atomically; if another writer published it first, keep theirs."""
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=final.parent))
        try:
            if tensors is not None:
                save_file(_unshared(tensors), tmp / TENSORS)
            if write_extra is not None:
                write_extra(tmp)
            (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
            _fsync_tree(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.exists(stage, key):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, copying any that shares memory with an earlier one (safetensors refuses those)."""
    seen, out = set(), {}
    for name, t in tensors.items():
        t = t.contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        out[name] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def pack_rows(delta: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Row-sparse delta `{name: (rows[k], values[k, in])}` as flat safetensors entries."""
    packed = {}
    for name, (rows, values) in delta.items():
        packed[f"rows:{name}"], packed[f"values:{name}"] = rows, values
    return packed


def unpack_rows(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Inverse of `pack_rows`."""
    names = [k.split(":", 1)[1] for k in tensors if k.startswith("rows:")]
    return {n: (tensors[f"rows:{n}"], tensors[f"values:{n}"]) for n in names}
