"""Full-parameter training sharded across the job's processes with torch's FSDP2 (`fully_shard`).

The resident θ0 stays as it is (every stage reads it); a training copy is built on the meta
device, sharded per transformer block and at the root, materialised shard by shard and filled
from θ0 (no process ever holds a second whole copy). The copy's sharded parameters are fp32 (the
master weights); forward and backward compute in θ0's dtype when that is half precision, and
gradients are reduced in fp32 (`MixedPrecisionPolicy`). Gradients and AdamW's moments exist only
for each process's shards; FSDP averages the gradients over the processes (as DDP does for the
replicated stages), so a step is the step of the whole global batch. With `offload`, the shards,
their gradients and the optimizer state live on the host (`CPUOffloadPolicy`), so one GPU holds
only the layers it is computing. After training, the trained tensors are gathered onto rank 0's
host, one state dict with no GPU copy of the whole (`get_model_state_dict(full_state_dict=True,
cpu_offload=True)`), and the delta against θ0 is computed there.
"""

from __future__ import annotations

import logging
import socket

import torch

from maet.runtime import distributed

log = logging.getLogger(__name__)

def ensure_group(device: torch.device) -> None:
    """A process group for a single-process job that shards (offload on one GPU): FSDP2 needs one."""
    if torch.distributed.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def block_types(model) -> tuple[type, ...]:
    """The classes of the model's transformer blocks (Hugging Face's `_no_split_modules`)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return tuple({type(m) for m in model.modules() if type(m).__name__ in names})


def sharded_copy(model, names: list[str], offload: bool = False):
    """A copy of `model` for training `names`, sharded across the job's processes: built on the
    meta device, every block and the root `fully_shard`ed (fp32 shards, compute in θ0's dtype,
    fp32 gradient reduction), materialised on θ0's device (or the host with `offload`) and
    filled from θ0's state dict and buffers. Every other parameter is frozen."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    device = next(model.parameters()).device
    ensure_group(device)
    dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        copy = type(model)(model.config).float()
    trainable = set(names)
    for name, p in copy.named_parameters():
        p.requires_grad_(name in trainable)
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    policy = {"mesh": mesh, "mp_policy": MixedPrecisionPolicy(param_dtype=None if dtype == torch.float32 else dtype,
                                                                reduce_dtype=torch.float32)}
    if offload:
        policy["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")  # pinning needs a GPU
    for block in [m for m in copy.modules() if isinstance(m, block_types(model))]:
        fully_shard(block, **policy)
    fully_shard(copy, **policy)
    copy.to_empty(device="cpu" if offload else device)
    set_model_state_dict(copy, {n: t.float() for n, t in model.state_dict().items()},
                         options=StateDictOptions(full_state_dict=True))
    with torch.no_grad():
        for name, buffer in model.named_buffers():  # non-persistent ones (rotary frequencies) are in no state dict
            copy.get_buffer(name).copy_(buffer)
    copy.train(model.training)
    log.info("training a copy of %d tensors sharded over %d process(es) with FSDP2%s", len(names),
             torch.distributed.get_world_size(), ", offloaded to the host" if offload else "")
    return copy


def gathered(copy, names: list[str]) -> dict[str, torch.Tensor]:
    """The whole fp32 tensors `names` of a sharded copy on rank 0's host ({} on the other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(copy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {n: state[n].float() for n in names} if distributed.is_main() else {}
