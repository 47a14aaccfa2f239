"""One job on N processes (GPUs): `torchrun`, `accelerate launch` or SLURM tasks.

Data parallelism with DDP's arithmetic, over the process group that accelerate sets up
(`PartialState`: nccl on GPUs, gloo on CPU): every process holds the whole model; each training
step splits the global batch `[train.batch_size, seq]` into N contiguous shares
`[batch_size / N, seq]`, and torch's DDP averages the gradients of the trained tensors (whole
weights, or MAET's row deltas) over the processes before clipping and the AdamW step, so every
process makes the same update and the job trains on the same global batches as a single
process. DDP broadcasts the trained tensors from rank 0 at the start of each stage, and
AdamW's state is sharded across the processes (ZeRO stage 1): weights and gradients are
replicated, the two moments are not. That is how key-row stages train; full-parameter stages
train a copy sharded with FSDP2 instead (`maet.runtime.sharded`, `distributed.shard`). An
accelerate config that asks for DeepSpeed is refused with a message rather than silently ignored.

Rank 0 is the only writer: it decides whether a cache entry is there, holds its lock and
publishes it; the other ranks compute with it (training is collective) and then read what rank 0
published, so every rank continues from the same bytes. Evaluation is data-parallel through
lm-eval (each rank generates for its share of the requests, rank 0 gathers and scores); metrics,
plots, W&B and the merged checkpoint are rank 0's. Single process (no WORLD_SIZE > 1): every
function here is a no-op and nothing changes.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from maet.store.cache import ArtifactCache

T = TypeVar("T")
log = logging.getLogger(__name__)


def _adopt_slurm_tasks() -> None:
    """Under hydra-submitit with several tasks per job (`hydra/launcher=slurm_multigpu`): export
    RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT from SLURM's variables (submitit's helper)."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def world_size() -> int:
    """Processes of this job (WORLD_SIZE set by torchrun / accelerate launch / submitit; else 1)."""
    _adopt_slurm_tasks()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    _adopt_slurm_tasks()
    return int(os.environ.get("RANK", "0"))


def active() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """True on rank 0 (and in a single-process job): the process that writes."""
    return rank() == 0


def check_launch(batch_size: int) -> str | None:
    """Why this launch cannot run (a message naming the key, the value and what is allowed), or None."""
    n = world_size()
    if n > 1 and batch_size % n:
        return (f"Bad config value train.batch_size={batch_size!r}: allowed is a multiple of the {n} processes of "
                f"this launch (each process takes batch_size / {n} sequences of every global batch).")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        return ("ACCELERATE_USE_DEEPSPEED is set (an accelerate config with DeepSpeed): maet shards its "
                "full-parameter stages with torch FSDP2 (distributed.shard=true, the default); launch with an "
                "FSDP or a plain multi-GPU config (`accelerate launch --multi_gpu`, or torchrun). See docs/scale.md.")
    return None


def setup(device: str, batch_size: int) -> torch.device | None:
    """Join the job's process group; returns this process's device (`cuda:<local rank>` or cpu),
    or None when the job is one process. Raises SystemExit with one line when the launch is bad."""
    if not active():
        return None
    problem = check_launch(batch_size)
    if problem:
        raise SystemExit(f"Error: {problem}")
    from accelerate import PartialState

    cpu = device == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    log.info("process %d of %d on %s (%s backend)", rank(), world_size(), state.device, state.backend)
    return state.device


def barrier() -> None:
    if active() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def share(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not active():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- the training loop
def local_batch(batch: torch.Tensor) -> torch.Tensor:
    """This process's contiguous share `[batch / N, seq]` of a global batch `[batch, seq]`."""
    n = world_size()
    return batch if n == 1 else batch.chunk(n)[rank()]


def adamw(params: list[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; on N processes with its state sharded (ZeRO stage 1, torch's ZeroRedundancyOptimizer):
    each process keeps the two moments of ~1/N of the trained entries, steps them, and broadcasts
    the new values, so the optimizer state per GPU shrinks N-fold and every process ends equal."""
    if not active():
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, lr=lr, weight_decay=weight_decay)


class _Loss(torch.nn.Module):
    """The trained tensors as one module whose forward is the loss of a batch (what DDP wraps)."""

    def __init__(self, params: list[torch.nn.Parameter], loss_fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.trained = torch.nn.ParameterList(params)  # the same tensor objects: DDP hooks their gradients
        self.loss_fn = loss_fn

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(batch)


def data_parallel(params: list[torch.nn.Parameter],
                  loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """`loss_fn` made data-parallel over the job's processes with torch's DDP: rank 0's values of
    `params` broadcast once, and in every backward their gradients averaged over the processes
    (equal shares of a batch whose loss is a mean over tokens: the mean of the local gradients is
    the gradient of the global batch, up to float rounding). On one process: `loss_fn` itself."""
    if not active():
        return loss_fn
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(_Loss(params, loss_fn), find_unused_parameters=True)


# ----------------------------------------------------------------------------- evaluation
def share_evaluation(lm) -> None:
    """Make lm-eval's HFLM over an in-memory model data-parallel: lm-eval splits the requests by
    rank and gathers on rank 0 (its accelerate integration); `simple_evaluate` returns None on
    the other ranks."""
    if not active():
        return
    from accelerate import Accelerator

    lm.accelerator = Accelerator(cpu=lm.device.type == "cpu")
    lm._rank, lm._world_size = rank(), world_size()


# ----------------------------------------------------------------------------- the cache
class SharedCache(ArtifactCache):
    """The artifact cache of one job on N processes: rank 0 checks an entry, holds its lock and
    publishes it; every rank runs `compute` (training and evaluation are collective), then the
    other ranks read what rank 0 published. On one process: the plain `ArtifactCache`."""

    def cached(self, stage: str, key: str, load: Callable[[], T], compute: Callable[[], T]) -> tuple[T, bool]:
        with self.lock(stage, key) if is_main() else nullcontext():
            if share(self.ready(stage, key) if is_main() else None):
                return load(), True
            value = compute()
            barrier()  # rank 0 has published the entry
        return (value if is_main() else load()), False

    def save(self, stage: str, key: str, meta: dict, tensors: dict[str, torch.Tensor] | None = None,
             write_extra: Callable[[Path], None] | None = None) -> Path:
        if is_main():
            return super().save(stage, key, meta, tensors, write_extra)
        return self.path(stage, key)


def cache(root: str | Path) -> ArtifactCache:
    """The job's cache: shared across its processes when there are several."""
    return SharedCache(root) if active() else ArtifactCache(root)
