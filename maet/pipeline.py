"""One job: locate -> extract -> transfer -> evaluate, for each seed, every artifact through the
cache (`maet.stages`), then its outputs: metrics.json (`maet.summary`), tables, plots, tracking.

`run(cfg)` is what `launch.py` calls; `run_job(settings)` is the seed loop without outputs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from maet import distributed, evaluate, transfer, world
from maet.base import resident_base
from maet.cache import ArtifactCache, write_text_atomic
from maet.context import Context, Corpora, load_corpora, uses_world
from maet.model import resolve_device
from maet.settings import Settings
from maet.stages import Artifacts, evaluate_stage, seed_artifacts, transfer_stage, variant_weights
from maet.summary import JobResult, headline, job_summary, results_table, run_plots, stage_artifacts, testbed_flat
from maet.tracking import open_tracker
from maet.validate import check_writable, load_settings

log = logging.getLogger(__name__)


def _mean_metrics(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}


class Testbed:
    """What the seed loop collects per evaluated model: metrics, per-item correctness, predictions."""

    def __init__(self, variants: list[str]):
        self.metrics: dict[str, list[dict]] = {v: [] for v in variants}
        self.items: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        self.predictions: list[dict] = []
        self.first: tuple | None = None  # (similarity, kept, artifacts) of the method's first seed


def evaluate_variants(ctx: Context, model, tokenizer, corpora: Corpora, base: dict[str, torch.Tensor],
                      a: Artifacts, similarity: dict[str, float], testbed: Testbed) -> None:
    """Build and evaluate the method and every reference model for the seed of `ctx`, in place
    in the resident model (θ0 is restored after each)."""
    s, method = ctx.settings, ctx.settings.method.name
    for variant in testbed.metrics:
        start = time.perf_counter()
        weights, model_key = variant_weights(variant, s, base, a)
        transfer.load_weights(model, weights)
        ctx.record("merge" if variant == method else f"merge/{variant}", False, start, model_key)
        name = "evaluate" if variant == method else f"evaluate/{variant}"
        metrics, predictions = evaluate_stage(ctx, model, tokenizer, corpora, model_key, name)
        transfer.load_weights(model, {n: base[n] for n in weights})
        testbed.metrics[variant].append(metrics)
        testbed.items[variant].append(evaluate.correctness(predictions, s.lang.code, s.eval.filter))
        testbed.predictions += [{"model": variant, "seed": s.seed, **p} for p in predictions]
        if testbed.first is None and variant == method:
            testbed.first = (similarity, list(a.kept), a)


def run_job(s: Settings) -> JobResult:
    """All stages of one job, for each seed; artifacts come from the cache when their key is there."""
    if s.threads:
        torch.set_num_threads(s.threads)
    cache = distributed.cache(s.paths.cache_dir)  # one job on N processes: rank 0 publishes, the others read
    device = distributed.setup(s.device, s.train.batch_size) or resolve_device(s.device, _job_num())
    ctx = Context(s, cache, device, world.generate(s.world) if uses_world(s) else None)
    model, tokenizer, base_key, base = resident_base(ctx)
    corpora = load_corpora(s, ctx.world, tokenizer)
    testbed = Testbed(list(dict.fromkeys([s.method.name, *s.report.references])))
    for k in range(s.report.seeds):
        seed_ctx = ctx.for_seed(k)
        torch.manual_seed(seed_ctx.settings.seed)
        a = seed_artifacts(seed_ctx, model, tokenizer, corpora, base_key, list(testbed.metrics))
        similarity, a.kept = transfer_stage(seed_ctx, a.ability, a.language)
        evaluate_variants(seed_ctx, model, tokenizer, corpora, base, a, similarity, testbed)
    similarity, kept, a = testbed.first
    mask_rows = {n: len(rows) for n, rows in (a.mask or {}).items()}
    runs = testbed.metrics[s.method.name]
    return JobResult(_mean_metrics(runs), runs, testbed.metrics, testbed.items, testbed.predictions, ctx.stages,
                     similarity, kept, tensor_rows(a, similarity, kept), mask_rows, model.num_parameters())


def tensor_rows(a: Artifacts, similarity: dict[str, float], kept: list[str]) -> list[dict]:
    """One row per ability tensor t: key rows, cos(R(A)[t], R(Lj)[t]), transferred or not, and the
    Frobenius norms of R(A)[t] and R(Lj)[t]."""
    language = a.language or {}
    return [{"tensor": name, "key_rows": len(rows), "similarity": similarity.get(name, 0.0), "kept": name in kept,
             "ability_norm": float(values.float().norm()),
             "language_norm": float(language[name].float().norm()) if name in language else 0.0}
            for name, (rows, values) in (a.ability or {}).items()]


# ----------------------------------------------------------------------------- Hydra's view of the job
def _job_num() -> int | None:
    """This job's number in a multirun (None in a single run or outside Hydra)."""
    return _hydra_config().job.num if _sweep_group() else None


def _hydra_config():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get()


def _sweep_group() -> str | None:
    """The multirun's sweep dir name (one W&B group per sweep), None outside a multirun."""
    try:
        from hydra.types import RunMode

        hc = _hydra_config()
        return Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    except Exception:
        return None


# ----------------------------------------------------------------------------- the run
def write_outputs(summary: dict, result: JobResult, out: Path) -> dict[str, Path]:
    """metrics.json (atomic: never half a file), results.md, predictions.jsonl and the run's plots."""
    write_text_atomic(out / "metrics.json", json.dumps(summary, indent=2, default=str))
    (out / "results.md").write_text(results_table(summary) + "\n")
    evaluate.write_jsonl(result.predictions, out / "predictions.jsonl")
    return run_plots(summary, out / "plots")


def track(tracker, s: Settings, summary: dict, result: JobResult, images: dict[str, Path]) -> None:
    """Numbers, tables, pictures and (by reference) the cache entries of the job."""
    tracker.log({**summary["metrics"], "headline": summary["metrics"][headline(s)],
                 "train_tokens": summary["train_tokens"],
                 **{f"stages/{n}/seconds": r["seconds"] for n, r in summary["stages"].items()}})
    tracker.log_table("testbed", *testbed_flat(summary))
    if result.tensors:
        columns = list(result.tensors[0])
        tracker.log_table("transfer/tensors", columns, [[r[c] for c in columns] for r in result.tensors])
    tracker.log_images(images)
    if s.tracker.log_artifacts:
        tracker.log_artifacts(stage_artifacts(summary, ArtifactCache(s.paths.cache_dir)))


def run(cfg: DictConfig) -> float:
    """Run one job from a composed config; returns the headline metric (target-language accuracy)."""
    s = load_settings(cfg)
    check_writable("paths.cache_dir", s.paths.cache_dir)
    check_writable("paths.output_dir", s.paths.output_dir)
    if not distributed.is_main():  # rank k > 0 of a multi-process job: its share of the work, no outputs
        run_job(s)
        return float("nan")
    out = Path(s.paths.output_dir)
    tracker_settings = dataclasses.replace(s.tracker, group=s.tracker.group or _sweep_group())  # one group per sweep
    tracker = open_tracker(tracker_settings, OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), str(out),
                           name=f"{s.method.name}-{s.lang.code}-a{s.merge.alpha}")
    try:
        result = run_job(s)
        summary = job_summary(s, result)
        images = write_outputs(summary, result, out)
        if s.save.model:  # the method's merged model (first seed) as a Hugging Face checkpoint
            from maet import export

            export.save_model(s, ArtifactCache(s.paths.cache_dir), {n: r.key for n, r in result.stages.items() if r.key},
                              result.kept, result.per_seed[0])
        track(tracker, s, summary, result, images)
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.finish(exit_code=0)
    print(results_table(summary))
    return float(summary["metrics"][headline(s)])
