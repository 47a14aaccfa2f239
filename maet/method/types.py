"""The tensor types every stage passes around, their safetensors packing, and tensor names.

- `Mask`: neuron mask `{tensor name -> LongTensor[k] of sorted row indices}` (stage 1);
- `RowDelta`: row-sparse delta `{name: (rows LongTensor[k], values Tensor[k, in])}` (R(A));
- `DenseDelta`: `{name: Tensor[out, in]}` (R(Lj), full CPT deltas). Deltas are kept in fp32.
"""

from __future__ import annotations

import re

import torch

Mask = dict[str, torch.Tensor]
RowDelta = dict[str, tuple[torch.Tensor, torch.Tensor]]
DenseDelta = dict[str, torch.Tensor]

ROWS, VALUES = "rows:", "values:"  # safetensors entry prefixes of a packed RowDelta
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def pack_rows(delta: RowDelta) -> dict[str, torch.Tensor]:
    """Row-sparse delta `{name: (rows[k], values[k, in])}` as flat safetensors entries."""
    packed = {}
    for name, (rows, values) in delta.items():
        packed[ROWS + name], packed[VALUES + name] = rows, values
    return packed


def unpack_rows(tensors: dict[str, torch.Tensor]) -> RowDelta:
    """Inverse of `pack_rows` (other entries are ignored)."""
    names = [k.split(":", 1)[1] for k in tensors if k.startswith(ROWS)]
    return {n: (tensors[ROWS + n], tensors[VALUES + n]) for n in names}


def rows_to_dense(delta: RowDelta, shapes: dict[str, torch.Size]) -> DenseDelta:
    """Scatter a row-sparse delta into full-size zero tensors."""
    dense = {}
    for n, (rows, values) in delta.items():
        dense[n] = torch.zeros(shapes[n], dtype=values.dtype).index_copy_(0, rows, values)
    return dense


def layer_of(name: str) -> int | None:
    """Block index of a parameter name like `model.layers.3.mlp.up_proj.weight` (None outside the blocks)."""
    match = _LAYER.search(name)
    return int(match[1]) if match else None


def layer_module(name: str) -> tuple[int, str] | None:
    """`model.layers.3.mlp.down_proj.weight` -> (3, "down_proj"); None outside the blocks."""
    layer = layer_of(name)
    if layer is None or not name.endswith(".weight") or name.endswith(f"layers.{layer}.weight"):
        return None
    return layer, name.split(".")[-2]
