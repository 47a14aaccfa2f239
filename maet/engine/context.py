"""What every stage of one job shares: the context (settings, cache, device, the built-in world,
and the records of every stage), the corpora, and the one way a stage goes through the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from maet import world
from maet.method.train import TrainStats
from maet.reporting.metrics import StageRecord
from maet.runtime import checkpoint, live
from maet.schema.derived import base_is_random
from maet.schema.settings import Settings
from maet.store.cache import ArtifactCache, artifact_key


def stage_peak_memory() -> tuple[float, float]:
    """(peak RSS MiB, peak CUDA MiB) since the last call, which resets both peaks.

    Linux: VmHWM of /proc/self/status, reset through /proc/self/clear_refs; elsewhere the
    process's lifetime peak (getrusage)."""
    rss = 0.0
    try:
        status = Path("/proc/self/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
        Path("/proc/self/clear_refs").write_text("5")
    except (OSError, StopIteration, ValueError):
        import resource

        rss = rss or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = 0.0
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gpu = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    return rss, gpu


@dataclass
class Context:
    """What every stage of one job reads: settings, cache, device, and the records it appends."""
    settings: Settings
    cache: ArtifactCache
    device: torch.device
    world: world.World | None = None
    stages: dict[str, StageRecord] = field(default_factory=dict)
    curves: dict[str, dict[str, list]] = field(default_factory=dict)  # stage -> loop desc -> [[step, loss, lr]]
    suffix: str = ""  # "/seed<k>" for every replication but the first

    def for_replication(self, k: int) -> "Context":
        """The context of the k-th replication (same cache, device, world and stage records): stage
        seed `seed + k` and, for a scratch base, its own pre-training seed (`replication_settings`)."""
        return dataclasses.replace(self, settings=replication_settings(self.settings, k),
                                   suffix=f"/seed{self.settings.seed + k}" if k else "")

    def record(self, stage: str, cached: bool, start: float, key: str | None = None,
               trained: TrainStats | None = None, cost_tokens: int | None = None,
               curves: dict[str, list] | None = None) -> None:
        """The stage's record; `curves` are the loss curves of a cached artifact (from its meta.json)."""
        trained = trained or TrainStats()
        cost = trained.tokens if cost_tokens is None else cost_tokens
        curves = curves or trained.curves
        rss, gpu = stage_peak_memory()
        self.stages[stage + self.suffix] = StageRecord(cached, round(time.perf_counter() - start, 3),
                                                       trained.tokens, trained.steps, key, cost, round(rss, 1),
                                                       round(gpu, 1), round(trained.optimizer_bytes / 2**20, 3),
                                                       final_loss=final_loss(curves))
        if curves:
            self.curves[stage + self.suffix] = curves


def replication_settings(s: Settings, k: int) -> Settings:
    """The settings of replication k of a job: stage seed `seed + k` and, when the base is random,
    base seed `model.scratch.seed + seed + k`, so that a job with another `seed` draws new
    replications (base included) rather than reusing the bases of seed 0."""
    replication = dataclasses.replace(s, seed=s.seed + k)
    if base_is_random(s):
        scratch = dataclasses.replace(s.model.scratch, seed=s.model.scratch.seed + s.seed + k)
        replication = dataclasses.replace(replication, model=dataclasses.replace(s.model, scratch=scratch))
    return replication


def final_loss(curves: dict[str, list] | None) -> float | None:
    """The loss at the last recorded step of the last training loop, None without a curve."""
    last = [points for points in (curves or {}).values() if points]
    return round(last[-1][-1][1], 4) if last else None


def stored_curves(cache: ArtifactCache, stage: str, key: str) -> dict[str, list] | None:
    """The loss curves a cache entry was made with (entries made before curves existed have none)."""
    return cache.meta(stage, key).get("curves") if cache.exists(stage, key) else None


def reseed(seed: int, stage: str) -> None:
    """Seed torch's global RNG from (seed, stage), so that what a stage computes never depends
    on which earlier stages ran in this process and which came from the cache."""
    torch.manual_seed(int.from_bytes(hashlib.sha256(f"{seed}:{stage}".encode()).digest()[:7], "little"))


def checkpoints(ctx: Context, stage: str, key: str) -> Path:
    """Where a training stage keeps its checkpoints until its cache entry is published."""
    return ctx.cache.path(stage, key).parent / f".checkpoints-{key}"


def every(s: Settings) -> dict:
    """How often a training loop saves a checkpoint (`checkpoint.*`)."""
    return {"every_steps": s.checkpoint.every_steps, "every_minutes": s.checkpoint.every_minutes}


def cached_stage(ctx: Context, stage: str, config: dict, inputs: dict, compute) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors, key) of a stage: from the cache when its key is there, else from
    `compute() -> (tensors, TrainStats, extra meta)`, saved before they are returned.
    Tensors come sorted by name either way, so that nothing downstream (DARE's random drops,
    the order of a sum) depends on whether they were computed or read."""
    start = time.perf_counter()
    key = artifact_key(stage, config, inputs)

    def load():
        return dict(sorted(ctx.cache.tensors(stage, key).items())), None

    def make():
        reseed(ctx.settings.seed, stage)
        saved = checkpoints(ctx, stage, key)
        with live.stage(stage + ctx.suffix), checkpoint.stage(saved, **every(ctx.settings)):
            tensors, trained, extra = compute()
        tensors = dict(sorted(tensors.items()))
        meta = {"stage": stage, "config": config, "inputs": inputs, "train_tokens": trained.tokens,
                "steps": trained.steps, "train_seconds": trained.seconds, "curves": trained.curves, **extra}
        ctx.cache.save(stage, key, meta, tensors)
        checkpoint.clear(saved)
        return tensors, trained

    (tensors, trained), cached = ctx.cache.cached(stage, key, load, make)
    if cached:
        meta = ctx.cache.meta(stage, key)
        ctx.record(stage, True, start, key, cost_tokens=meta.get("train_tokens", 0), curves=meta.get("curves"))
    else:
        ctx.record(stage, False, start, key, trained)
    return tensors, key
