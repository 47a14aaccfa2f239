"""The base model θ0 and its lifetime: built (and pre-trained) once into the cache, or loaded
from the hub or a folder; and kept resident between the jobs of a sweep that runs in one process.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from maet import world
from maet.corpora import data
from maet.corpora.roles import documents
from maet.engine.context import Context, checkpoints, every, stored_curves
from maet.method import extract, transfer
from maet.method.train import TrainStats
from maet.models.model import build_scratch_model, load_pretrained, train_tokenizer
from maet.runtime import checkpoint, live
from maet.schema.settings import CorpusSettings, Settings
from maet.stages import keys
from maet.stages.training import full, loop, steps


def scratch_text(s: Settings, w: world.World | None) -> tuple[list[str], list[str]]:
    """(tokenizer text, pre-training text) of a scratch base."""
    sc = s.model.scratch
    if sc.corpus == "world":
        mix = world.pretraining_mix(w)
        return mix + w.ability["en"], mix
    general = []
    for path in sc.tokenizer_files:
        general += data.load_documents(CorpusSettings(path=path))[:sc.tokenizer_max_docs]
    return documents(s.ability.corpus, w)[:sc.tokenizer_max_docs] + general, general


# θ0 of the previous job in this process (a sweep with Hydra's basic launcher runs its jobs in one
# process): (identity, model, tokenizer, θ0 of the block tensors). The next job's merges are
# built in place from it and the deltas, without reloading the model from disk.
_RESIDENT: dict[str, tuple] = {}


def resident_base(ctx: Context):
    """(model, tokenizer, key, θ0 of every parameter), reusing the previous job's model when it is
    the same base on the same device (its block tensors are reset to θ0 first)."""
    start, s = time.perf_counter(), ctx.settings
    ident = (keys.base_artifact_key(s, ctx.device), str(ctx.device), s.model.gradient_checkpointing)
    held = _RESIDENT.get("base")
    if held is not None and held[0] == ident:
        _, model, tokenizer, theta0 = held
        transfer.load_weights(model, theta0)
        ctx.record("base", cached=True, start=start, key=ident[0], curves=stored_curves(ctx.cache, "base", ident[0]))
        ctx.stages["base" + ctx.suffix].in_memory = True
        return model, tokenizer, ident[0], theta0
    _RESIDENT.clear()  # free the previous job's model before loading another
    model, tokenizer, key = base_model(ctx)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}  # every tensor a merge may touch
    _RESIDENT["base"] = (ident, model, tokenizer, theta0)
    return model, tokenizer, key, theta0


def base_model(ctx: Context):
    """(model, tokenizer, key) of θ0; a scratch model is built (and pre-trained) once and cached."""
    s, start = ctx.settings, time.perf_counter()
    m = s.model
    key = keys.base_artifact_key(s, ctx.device)
    if m.source != "scratch":
        model, tokenizer = load_pretrained(m.path, m, ctx.device)
        if m.gradient_checkpointing:
            model.gradient_checkpointing_enable()  # active in training mode only
        ctx.record("base", cached=True, start=start, key=key)
        return model, tokenizer, key

    saved = checkpoints(ctx, "base", key)
    with live.stage("base" + ctx.suffix), checkpoint.stage(saved, **every(s)):
        stats, cached = ctx.cache.cached("base", key, load=TrainStats, compute=lambda: build_base(ctx, key))
    checkpoint.clear(saved)
    folder = ctx.cache.path("base", key) / "model"
    model, tokenizer = load_pretrained(str(folder), dataclasses.replace(m, trust_remote_code=False), ctx.device)
    ctx.record("base", cached=cached, start=start, key=key, trained=None if cached else stats,
               curves=stored_curves(ctx.cache, "base", key) if cached else None)
    return model, tokenizer, key


def build_base(ctx: Context, key: str) -> TrainStats:
    """Build (and pre-train) a scratch base and publish it in the cache under `key`."""
    s, m, stats = ctx.settings, ctx.settings.model, TrainStats()
    sc = m.scratch
    tokenizer_text, pretrain_text = scratch_text(s, ctx.world)
    tokenizer = train_tokenizer(tokenizer_text, sc.vocab_size, str(sc.pretokenizer))
    model = build_scratch_model(sc, tokenizer, sc.seed).to(ctx.device)
    if sc.pretrain_tokens:
        names = [n for n, _ in model.named_parameters()]
        batches = data.batches(pretrain_text, tokenizer, tokens=sc.pretrain_tokens, batch_size=s.train.batch_size,
                               seq_len=s.train.seq_len, seed=sc.seed)
        delta, stats = extract.train_full(model, names, batches, steps(s, sc.pretrain_tokens), sc.pretrain_lr,
                                          "base: pre-training", **full(s), **loop(s))
        if delta:  # sharded on N processes: rank 0 alone holds the delta, and alone publishes the base
            transfer.load_weights(model, {n: p.detach() + delta[n].to(p.device) for n, p in model.named_parameters()})

    def write(folder: Path) -> None:
        model.save_pretrained(folder / "model")
        tokenizer.save_pretrained(folder / "model")

    meta = {"stage": "base", "name": m.name, "params": model.num_parameters(), "config": keys.base_config(s),
            "train_tokens": stats.tokens, "steps": stats.steps, "train_seconds": stats.seconds, "curves": stats.curves}
    ctx.cache.save("base", key, meta, write_extra=write)
    return stats


def forget_resident() -> None:
    """Drop the resident θ0 (the next job loads its base again)."""
    _RESIDENT.clear()
