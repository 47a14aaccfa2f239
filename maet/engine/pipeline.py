"""One job: locate -> extract -> transfer -> evaluate, for each seed, every artifact through the
cache (`maet.engine.runner`), then its outputs: metrics.json (`maet.reporting.summary`), tables, plots, tracking.

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

from maet import world
from maet.config.compose import load_settings
from maet.config.validate import check_writable
from maet.corpora import data
from maet.corpora.roles import Corpora, load_corpora, uses_world
from maet.engine.base import resident_base
from maet.engine.context import Context
from maet.engine.runner import Artifacts, evaluate_stage, job_variants, seed_artifacts, transfer_step, variant_weights
from maet.evaluation import evaluate
from maet.method import regime, transfer
from maet.models.model import resolve_device
from maet.reporting import dashboard
from maet.reporting.summary import (
    JobResult,
    headline,
    job_summary,
    results_table,
    run_plots,
    stage_artifacts,
    testbed_flat,
)
from maet.reporting.tracking import open_tracker
from maet.runtime import console, distributed, live
from maet.runtime.progress import progress
from maet.schema.settings import Settings
from maet.stages.registry import STAGES
from maet.store.cache import ArtifactCache, write_text_atomic

log = logging.getLogger(__name__)


def _mean_metrics(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}


class Testbed:
    """What the seed loop collects per evaluated model: metrics, per-item correctness, predictions."""

    def __init__(self, variants: list[str]):
        self.metrics: dict[str, list[dict]] = {v: [] for v in variants}
        # variant -> eval language -> per replication: item -> correct
        self.items: dict[str, dict[str, list[dict[str, float]]]] = {v: {} for v in variants}
        self.predictions: list[dict] = []
        self.first: tuple | None = None  # (similarity, kept, artifacts) of the method's first seed
        self.regime: dict = {}  # maet.method.regime's measures of the first seed
        self.replications: list[dict] = []  # per replication: stage seed, base seed, base key


def evaluate_variants(ctx: Context, model, tokenizer, corpora: Corpora, base: dict[str, torch.Tensor],
                      a: Artifacts, similarity: dict[str, float], testbed: Testbed) -> None:
    """Build and evaluate the method and every reference model for the seed of `ctx`, in place
    in the resident model (θ0 is restored after each)."""
    s, method = ctx.settings, ctx.settings.method.name
    for variant in progress(iterable=list(testbed.metrics), desc=f"evaluate: seed {s.seed}", unit="model"):
        start = time.perf_counter()
        weights, model_key = variant_weights(variant, s, base, a)
        transfer.load_weights(model, weights)
        ctx.record("merge" if variant == method else f"merge/{variant}", False, start, model_key)
        name = "evaluate" if variant == method else f"evaluate/{variant}"
        metrics, predictions = evaluate_stage(ctx, model, tokenizer, corpora, model_key, name)
        transfer.load_weights(model, {n: base[n] for n in weights})
        testbed.metrics[variant].append(metrics)
        for code in s.eval.langs:
            testbed.items[variant].setdefault(code, []).append(evaluate.correctness(predictions, code, s.eval.filter))
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
    testbed = Testbed(job_variants(s))
    corpora = None
    for k in range(s.report.seeds):  # replication k: its own base (unless shared or fixed) and stage seeds
        rep = ctx.for_replication(k)
        model, tokenizer, base_key, base = resident_base(rep)
        corpora = corpora or load_corpora(s, ctx.world, tokenizer)  # the tokenizer does not depend on the seed
        torch.manual_seed(rep.settings.seed)
        a = seed_artifacts(rep, model, tokenizer, corpora, base_key, list(testbed.metrics))
        similarity = transfer_step(rep, a)
        if k == 0:
            testbed.regime = measure_regime(rep, model, tokenizer, corpora, base, a)
        evaluate_variants(rep, model, tokenizer, corpora, base, a, similarity, testbed)
        testbed.replications.append({"seed": rep.settings.seed, "base_seed": rep.settings.model.scratch.seed
                                     if rep.settings.model.source == "scratch" else None, "base": base_key})
    similarity, kept, a = testbed.first
    mask_rows = {n: len(rows) for n, rows in (a.get("mask") or {}).items()}
    runs = testbed.metrics[s.method.name]
    return JobResult(_mean_metrics(runs), runs, testbed.metrics, testbed.items, testbed.predictions, ctx.stages,
                     similarity, kept, tensor_rows(a, similarity, kept), mask_rows, model.num_parameters(),
                     testbed.regime, ctx.curves, testbed.replications)


MASKS = {artifact for stage in STAGES.values() if stage.kind == "mask" for artifact in stage.yields}
REGIME_DOCS = 16  # sequences of train.seq_len tokens per input set of the disentanglement error


def measure_regime(ctx: Context, model, tokenizer, corpora: Corpora, base: dict[str, torch.Tensor],
                   a: Artifacts) -> dict:
    """‖Δ‖/‖θ0‖ of every delta of the seed, and the weight disentanglement error of the ability
    deltas with R(Lj) (θ_A − θ0 on the key rows; the full ability delta of the merging baselines)
    on English ability text and held-out target-language text (`maet.method.regime`)."""
    start, s = time.perf_counter(), ctx.settings
    deltas = {k: d for k, d in a.values.items() if k not in MASKS and d}  # every delta of the replication
    out = {"relative_norm": {k: regime.relative_norm(base, d) for k, d in deltas.items()}}
    if a.get("language") and corpora.heldout and (a.get("theta_a") or a.get("ability_full")):
        def batch(docs):
            return next(data.batches(docs, tokenizer, tokens=REGIME_DOCS * s.train.seq_len, batch_size=REGIME_DOCS,
                                     seq_len=s.train.seq_len, seed=0))
        inputs = batch(corpora.ability), batch(corpora.heldout)
        out["disentanglement"] = {k: regime.disentanglement_error(model, base, deltas[k], a.get("language"), *inputs)
                                  for k in ("theta_a", "ability_full") if k in deltas}
    ctx.record("regime", False, start)
    return out


def tensor_rows(a: Artifacts, similarity: dict[str, float], kept: list[str]) -> list[dict]:
    """One row per ability tensor t: key rows, cos(R(A)[t], R(Lj)[t]), transferred or not, and the
    Frobenius norms of R(A)[t] and R(Lj)[t]."""
    language = a.get("language") or {}
    transferred = a.get("transferred") or {}
    return [{"tensor": name, "key_rows": len(rows), "similarity": similarity.get(name, 0.0), "kept": name in kept,
             "kept_rows": len(transferred[name][0]) if name in transferred else 0,
             "ability_norm": float(values.float().norm()),
             "language_norm": float(language[name].float().norm()) if name in language else 0.0}
            for name, (rows, values) in (a.get("ability") or {}).items()]


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


def track(tracker, s: Settings, summary: dict, result: JobResult, images: dict[str, Path], out: Path) -> None:
    """Curves, summary scalars, tables, pictures, predictions, lineage and the job's own files."""
    tracker.log_curves(*dashboard.curve_rows(result.curves))
    tracker.set_summary(dashboard.summary_scalars(summary))
    tracker.log_table("testbed", *testbed_flat(summary))
    if result.tensors:
        columns = list(result.tensors[0])
        tracker.log_table("transfer/tensors", columns, [[r[c] for c in columns] for r in result.tensors])
    tracker.log_table("predictions", dashboard.PREDICTION_COLUMNS,
                      dashboard.prediction_rows(result.predictions, s.eval.filter))
    tracker.log_images(images)
    if s.tracker.log_artifacts:
        entries = stage_artifacts(summary, ArtifactCache(s.paths.cache_dir))
        tracker.update_config({"lineage": dashboard.lineage(entries)})
        tracker.log_artifacts([(n, k, p) for n, k, p, made in entries if made])
        tracker.use_artifacts([(n, k, p) for n, k, p, made in entries if not made])
    tracker.log_files("results", "results", dashboard.result_files(out), out)


def run(cfg: DictConfig) -> float:
    """Run one job from a composed config; returns the headline metric (target-language accuracy)."""
    s = load_settings(cfg)
    check_writable("paths.cache_dir", s.paths.cache_dir)
    check_writable("paths.output_dir", s.paths.output_dir)
    if not distributed.is_main():  # rank k > 0 of a multi-process job: its share of the work, no outputs
        run_job(s)
        return float("nan")
    out = Path(s.paths.output_dir)
    choices, overrides = dashboard.hydra_view()
    who = dashboard.identity(s, choices, overrides)
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    write_text_atomic(out / "config.resolved.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
    tracker_settings = dataclasses.replace(s.tracker, group=s.tracker.group or _sweep_group())  # one group per sweep
    tracker = open_tracker(tracker_settings, {**config, "hydra": {"choices": choices, "overrides": overrides}},
                           str(out), name=who.name, job_type=who.job_type, tags=who.tags, quiet=s.report.quiet)
    try:
        def stream(stage: str, loop: str, step: int, loss: float, lr: float) -> None:
            tracker.log_point(dashboard.curve_prefix(stage, loop), step, loss, lr)

        with console.quiet(s.report.quiet, out / "console.log"), live.streaming(stream):
            result = run_job(s)
        summary = job_summary(s, result)
        images = write_outputs(summary, result, out)
        if s.save.model:  # the method's merged model (first seed) as a Hugging Face checkpoint
            from maet.scale import export

            export.save_model(s, ArtifactCache(s.paths.cache_dir), {n: r.key for n, r in result.stages.items() if r.key},
                              result.kept, result.per_seed[0])
        track(tracker, s, summary, result, images, out)
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.finish(exit_code=0)
    print(results_table(summary))
    if tracker.where:
        print(f"W&B run '{who.name}' (offline: wandb sync {tracker.where})" if s.tracker.mode == "offline"
              else f"W&B run '{who.name}'")
    return float(summary["metrics"][headline(s)])
