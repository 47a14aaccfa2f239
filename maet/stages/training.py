"""How a stage trains, from the settings: its batches, its number of steps and the keyword
arguments of the one training loop (`maet.method.train.optimize`)."""

from __future__ import annotations

from maet.corpora import data
from maet.schema.settings import Settings


def batches(s: Settings, docs: list[str], tokenizer, tokens: int):
    """`tokens` tokens of `docs` as `[train.batch_size, train.seq_len]` batches, in the order of `seed`."""
    return data.batches(docs, tokenizer, tokens=tokens, batch_size=s.train.batch_size,
                        seq_len=s.train.seq_len, seed=s.seed)


def steps(s: Settings, tokens: int) -> int:
    return data.num_steps(tokens, s.train.batch_size, s.train.seq_len)


def full(s: Settings) -> dict[str, bool]:
    """How a full-parameter stage trains on the job's processes (`distributed.*`): sharded, offloaded."""
    return {"shard": s.distributed.shard, "offload": s.distributed.offload}


def loop(s: Settings) -> dict[str, float]:
    """The keyword arguments of the training loop (`maet.method.train.optimize`) from `train.*` and
    `tracker.curve_every`."""
    return {"warmup_ratio": s.train.warmup_ratio, "weight_decay": s.train.weight_decay, "grad_clip": s.train.grad_clip,
            "curve_every": s.tracker.curve_every}
