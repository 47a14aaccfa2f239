"""Out-of-core merge: `θ* = θ0 + Σ w_i·(θ_i − θ0) + Σ w_j·R_j` from checkpoints and deltas on
disk, tensor by tensor, into a standard Hugging Face checkpoint (sharded safetensors + index).

Memory is a few tensors, not models: tensors are read with plain `seek` + `readinto` (the
safetensors library maps whole files, so every page it touches counts in the resident set) and
written by a streaming safetensors writer (`safetensors.torch.save_file` needs a shard's
tensors in memory at once). The file format is the documented one: an 8-byte little-endian
header length, a JSON header `{name: {dtype, shape, data_offsets}}` padded to 8 bytes, raw data.

    python -m maet.scale.streaming --base BASE_DIR --model FT_DIR:0.5 --delta DELTA.safetensors:1.0 --out OUT

A delta file holds dense deltas `{name: Tensor[out, in]}` or MAET's row-sparse deltas
(`rows:<name>` LongTensor[k], `values:<name>` Tensor[k, in], see `maet.method.types.pack_rows`);
other `prefix:name` entries of a cache artifact (e.g. `theta_a:`) are ignored.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from maet.method.merging import merge_tensor
from maet.method.types import ROWS, VALUES
from maet.reporting.metrics import kept_tensors
from maet.runtime.progress import progress

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
CODES = {v: k for k, v in DTYPES.items()}
INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in the file
    end: int


class SafetensorsFile:
    """One .safetensors file, read one tensor at a time without mapping the file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fh = open(self.path, "rb")
        (length,) = struct.unpack("<Q", self.fh.read(8))
        header = json.loads(self.fh.read(length))
        header.pop("__metadata__", None)
        self.entries = {name: Entry(DTYPES[h["dtype"]], tuple(h["shape"]), 8 + length + h["data_offsets"][0],
                                    8 + length + h["data_offsets"][1]) for name, h in header.items()}

    def get(self, name: str) -> torch.Tensor:
        """A fresh tensor with the stored dtype and shape (a copy; the file is not mapped)."""
        e = self.entries[name]
        if e.end == e.start:
            return torch.empty(e.shape, dtype=e.dtype)
        buf = bytearray(e.end - e.start)
        self.fh.seek(e.start)
        self.fh.readinto(buf)
        return torch.frombuffer(buf, dtype=e.dtype).reshape(e.shape)

    def close(self) -> None:
        self.fh.close()


class Checkpoint:
    """A Hugging Face model folder (`model.safetensors`, or shards + index), or one file."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_file():
            files = [path]
        elif (path / INDEX).is_file():
            weight_map = json.loads((path / INDEX).read_text())["weight_map"]
            files = [path / f for f in dict.fromkeys(weight_map.values())]
        elif (path / "model.safetensors").is_file():
            files = [path / "model.safetensors"]
        else:
            raise FileNotFoundError(f"no safetensors checkpoint at {path} (model.safetensors or {INDEX})")
        self.files = [SafetensorsFile(f) for f in files]
        self.where = {name: f for f in self.files for name in f.entries}

    def names(self) -> list[str]:
        """Tensor names in file and offset order (sequential reads)."""
        return [n for f in self.files for n in sorted(f.entries, key=lambda n: f.entries[n].start)]

    def entry(self, name: str) -> Entry:
        return self.where[name].entries[name]

    def get(self, name: str) -> torch.Tensor:
        return self.where[name].get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def close(self) -> None:
        for f in self.files:
            f.close()


def write_safetensors(path: str | Path, specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
                      tensors: Iterable[torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Write tensors one at a time, in the order of `specs` (name, dtype, shape); returns bytes of data."""
    header, offset = {}, 0
    for name, dtype, shape in specs:
        size = _nbytes(dtype, shape)
        header[name] = {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = metadata or {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for (name, dtype, shape), t in zip(specs, tensors, strict=True):
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise ValueError(f"{name}: got {t.dtype} {tuple(t.shape)}, header says {dtype} {tuple(shape)}")
            if t.numel():
                fh.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return offset


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    return torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()


def _counted(tensors: Iterable[torch.Tensor], bar) -> Iterator[torch.Tensor]:
    for t in tensors:
        yield t
        bar.update(t.nbytes)


def plan_shards(specs: list[tuple[str, torch.dtype, tuple[int, ...]]], shard_bytes: int) -> list[list[int]]:
    """Consecutive spec indices per shard, each shard at most `shard_bytes` (or one tensor)."""
    shards, size = [[]], 0
    for i, (_, dtype, shape) in enumerate(specs):
        n = _nbytes(dtype, shape)
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += n
    return shards


@dataclass
class Delta:
    """A delta file with its coefficient; `names` restricts row-sparse entries (MAET's kept tensors)."""
    path: Path
    weight: float
    names: set[str] | None = None


def _row_delta(d: SafetensorsFile, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    if ROWS + name in d.entries:
        return d.get(ROWS + name), d.get(VALUES + name)
    return None


def merged_tensors(base: Checkpoint, names: list[str], models: list[tuple[Checkpoint, float]],
                   deltas: list[tuple[SafetensorsFile, Delta]], dtype: torch.dtype | None) -> Iterator[torch.Tensor]:
    """For each name: `θ0 + Σ w·(θ_i − θ0) + Σ w·R` (`maet.method.merging.merge_tensor`), cast to `dtype`
    (default: θ0's)."""
    for name in names:
        theta0 = base.get(name)
        if not theta0.is_floating_point():
            yield theta0
            continue
        base32 = theta0.float()
        dense = [(w, ckpt.get(name).float().sub_(base32)) for ckpt, w in models]
        rows = []
        for f, spec in deltas:
            if name in f.entries:
                dense.append((spec.weight, f.get(name)))
            elif (row := _row_delta(f, name)) is not None and (spec.names is None or name in spec.names):
                rows.append((spec.weight, *row))
        yield merge_tensor(theta0, dense, rows, dtype=dtype)


def _check_names(base: Checkpoint, models: list[tuple[Checkpoint, float]], deltas: list[tuple[SafetensorsFile, Delta]]):
    """Fail before writing anything when an input has a tensor the base lacks (or a different shape)."""
    for ckpt, _ in models:
        for name in ckpt.names():
            if name not in base or ckpt.entry(name).shape != base.entry(name).shape:
                raise ValueError(f"model tensor {name} {ckpt.entry(name).shape} does not match the base")
        if missing := [n for n in base.names() if n not in ckpt]:
            raise ValueError(f"model lacks {len(missing)} base tensors, e.g. {missing[0]}")
    for f, spec in deltas:
        for key, e in f.entries.items():
            prefix, _, name = key.rpartition(":")
            if prefix == "" and (key not in base or e.shape != base.entry(key).shape):
                raise ValueError(f"delta {spec.path}: tensor {key} {e.shape} does not match the base")
            if prefix in ("rows", "values") and name not in base:
                raise ValueError(f"delta {spec.path}: row delta of {name}, which the base lacks")


def merge_to_checkpoint(base_dir: str | Path, out_dir: str | Path, models: list[tuple[str | Path, float]] = (),
                        deltas: list[Delta] = (), dtype: torch.dtype | None = None,
                        shard_bytes: int = 5 * 2**30) -> dict:
    """Merge into `out_dir` (safetensors shards, index, and the base folder's other files such as
    config.json and the tokenizer); returns {tensors, bytes, shards, seconds}."""
    start = time.perf_counter()
    base_dir, out = Path(base_dir), Path(out_dir)
    base = Checkpoint(base_dir)
    opened = [(Checkpoint(p), w) for p, w in models]
    delta_files = [(SafetensorsFile(d.path), d) for d in deltas]
    try:
        _check_names(base, opened, delta_files)
        names = base.names()
        specs = []
        for n in names:
            e = base.entry(n)
            specs.append((n, dtype if dtype is not None and e.dtype.is_floating_point else e.dtype, e.shape))
        out.mkdir(parents=True, exist_ok=True)
        shards = plan_shards(specs, shard_bytes)
        files = ["model.safetensors"] if len(shards) == 1 else \
            [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        total, weight_map = 0, {}
        with progress(total=sum(_nbytes(*s[1:]) for s in specs), desc="merge", unit="B", unit_scale=True) as bar:
            for file, members in zip(files, shards, strict=True):
                chunk = [specs[i] for i in members]
                tensors = merged_tensors(base, [s[0] for s in chunk], opened, delta_files, dtype)
                total += write_safetensors(out / file, chunk, _counted(tensors, bar))
                weight_map |= {s[0]: file for s in chunk}
        if len(shards) > 1:
            (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        if base_dir.is_dir():
            _copy_side_files(base_dir, out, dtype)
    finally:
        for ckpt in [base, *(c for c, _ in opened)]:
            ckpt.close()
        for f, _ in delta_files:
            f.close()
    return {"tensors": len(specs), "bytes": total, "shards": len(shards), "seconds": time.perf_counter() - start}


def _copy_side_files(src: Path, dst: Path, dtype: torch.dtype | None) -> None:
    """config.json, tokenizer and the like (not the weights); config's dtype set to the output's."""
    for path in src.iterdir():
        if path.is_file() and not path.name.endswith(".safetensors") and path.name != INDEX:
            shutil.copy2(path, dst / path.name)
    config = dst / "config.json"
    if dtype is not None and config.is_file():
        cfg = json.loads(config.read_text())
        name = str(dtype).removeprefix("torch.")
        cfg |= {k: name for k in ("dtype", "torch_dtype") if k in cfg} or {"dtype": name}
        config.write_text(json.dumps(cfg, indent=2))


def _path_weight(text: str) -> tuple[str, float]:
    path, sep, weight = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected PATH:WEIGHT, got {text!r}")
    try:
        return path, float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"weight of {text!r} is not a number") from None


def _kept(path: str | None) -> set[str] | None:
    """Tensor names from a JSON list, or the kept tensors of a job's metrics.json."""
    if path is None:
        return None
    value = json.loads(Path(path).read_text())
    return set(kept_tensors(value) if isinstance(value, dict) else value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maet.scale.streaming", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="θ0: a Hugging Face model folder or a .safetensors file")
    parser.add_argument("--model", action="append", type=_path_weight, default=[],
                        help="DIR:WEIGHT, a fine-tuned checkpoint; adds WEIGHT·(θ_i − θ0)")
    parser.add_argument("--delta", action="append", type=_path_weight, default=[],
                        help="FILE:WEIGHT, a delta .safetensors (dense or MAET row-sparse); adds WEIGHT·R")
    parser.add_argument("--kept", help="JSON list of tensors (or a job's metrics.json) that row-sparse deltas are limited to")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="output dtype (default: the base's)")
    parser.add_argument("--shard-size", type=float, default=5.0, help="max shard size in GiB")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    kept = _kept(args.kept)
    stats = merge_to_checkpoint(args.base, args.out, args.model, [Delta(Path(p), w, kept) for p, w in args.delta],
                                getattr(torch, args.dtype) if args.dtype else None, int(args.shard_size * 2**30))
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
