"""The artifact cache: each stage's output under a key that hashes exactly what it depends on.

Layout: `<cache_dir>/<stage>/<key>/` holding `tensors.safetensors` (optional), `meta.json`
(config, inputs, versions, timings, token counts, and the sha256 of every other file of the
entry) and any extra files a stage saves (a model folder). Safe against crashes and races:

- an entry is written into a temporary folder, fsynced and published by one atomic rename, so
  a killed run never leaves a half-written entry under its final name;
- `ready()` verifies every file's checksum before an entry is used; a corrupted entry is
  removed with one warning and its stage computes it again;
- `lock()` is a per-entry file lock (released by the OS if the holder is killed): two jobs that
  need the same artifact compute it once, the second waits and then reads it.

Never pickle: tensors are safetensors, metadata is JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

META, TENSORS = "meta.json", "tensors.safetensors"
CHECKSUMS = "sha256"  # meta.json key: {relative file path: sha256 hex digest}

log = logging.getLogger(__name__)
T = TypeVar("T")


def artifact_key(stage: str, config: Any, inputs: dict[str, str] | None = None) -> str:
    """Hash of the stage name, the config it depends on (JSON-able) and its inputs' keys."""
    payload = json.dumps({"stage": stage, "config": config, "inputs": inputs or {}},
                         sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's content (read in chunks)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` except meta.json, by relative path."""
    return {p.relative_to(folder).as_posix(): file_sha256(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != META}


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

    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Hold the entry's lock: whoever holds it is the only one to compute or check the entry."""
        folder = self.root / stage
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(folder / f".{key}.lock")
        try:
            lock.acquire(timeout=0)
        except TimeoutError:
            log.info("waiting for another job that holds %s/%s", stage, key)
            lock.acquire()
        try:
            _remove_stale_temps(folder, key)  # left by a killed writer: only a lock holder writes temps
            yield
        finally:
            lock.release()

    def cached(self, stage: str, key: str, load: Callable[[], T], compute: Callable[[], T]) -> tuple[T, bool]:
        """(load(), True) when a verified entry is under `key`, else (compute(), False), where
        `compute` publishes the entry (`save`). Under the entry's lock: a parallel job that needs
        the same entry waits, then loads it. Every stage goes through here."""
        with self.lock(stage, key):
            if self.ready(stage, key):
                return load(), True
            return compute(), False

    def problem(self, stage: str, key: str) -> str | None:
        """Why the published entry cannot be trusted (unreadable meta, missing or changed file), or None."""
        folder = self.path(stage, key)
        try:
            meta = json.loads((folder / META).read_text())
        except (OSError, ValueError) as err:
            return f"{META} unreadable ({type(err).__name__}: {err})"
        if not isinstance(meta, dict):
            return f"{META} is not an object"
        # entries published before checksums existed have none (they were published atomically)
        for name, digest in meta.get(CHECKSUMS, {}).items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if file_sha256(path) != digest:
                return f"{name} does not match its sha256 in {META}"
        return None

    def ready(self, stage: str, key: str) -> bool:
        """True if a verified entry is there; a corrupted one is removed with a warning (-> False)."""
        folder = self.path(stage, key)
        if not folder.exists():
            return False
        problem = self.problem(stage, key)
        if problem is None:
            return True
        warnings.warn(f"cache entry {folder} is corrupted ({problem}); removing it and computing it again")
        self.discard(stage, key)
        return False

    def discard(self, stage: str, key: str) -> None:
        """Remove an entry: renamed away first (atomic), then deleted."""
        folder = self.path(stage, key)
        aside = folder.with_name(f".discard-{key}-{os.getpid()}")
        os.rename(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)

    def save(self, stage: str, key: str, meta: dict, tensors: dict[str, torch.Tensor] | None = None,
             write_extra: Callable[[Path], None] | None = None) -> Path:
        """Publish an entry atomically, with the sha256 of its files in meta.json; if another
        writer published a valid entry first, keep theirs."""
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=final.parent))
        try:
            if tensors is not None:
                save_file(_unshared(tensors), tmp / TENSORS)
            if write_extra is not None:
                write_extra(tmp)
            meta = {**meta, CHECKSUMS: checksums(tmp)}
            (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
            _fsync_tree(tmp)
            if final.exists():
                self.ready(stage, key)  # removes a corrupted entry in the way
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.exists(stage, key):
                    raise
            _fsync_dir(final.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final


def _remove_stale_temps(folder: Path, key: str) -> None:
    for stale in folder.glob(f".tmp-{key}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write a text file (UTF-8) through a temporary file of this process and one rename: a reader
    never sees half of it, and parallel jobs writing the same path never share a temporary."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


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
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        _fsync_dir(path)


def _fsync_dir(folder: Path) -> None:
    """Make a rename or new file in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
