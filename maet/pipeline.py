"""Wiring: locate -> extract -> transfer -> evaluate for one job, every artifact through the cache.

Each stage's artifact key hashes exactly the settings it depends on plus its inputs' keys:
the mask and R(A) do not depend on the target language or the merge coefficients, R(Lj) does
not depend on the ability, so a sweep over `lang` and `merge.alpha` computes each once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tabulate import tabulate

from maet import data, evaluate, extract, locate, transfer
from maet.cache import ArtifactCache, artifact_key, pack_rows, unpack_rows
from maet.methods import METHODS, MergeInputs
from maet.model import (block_linear_names, block_param_names, build_scratch_model, load_pretrained,
                        resolve_device, resolve_dtype, train_tokenizer)
from maet.settings import ConfigError, CorpusSettings, Settings, load_settings
from maet.tracking import open_tracker

log = logging.getLogger(__name__)


@dataclass
class StageRecord:
    cached: bool
    seconds: float
    train_tokens: int = 0
    steps: int = 0
    key: str | None = None


@dataclass
class Context:
    """What every stage of one job reads: settings, cache, device, and the records it appends."""
    settings: Settings
    cache: ArtifactCache
    device: torch.device
    stages: dict[str, StageRecord] = field(default_factory=dict)

    def record(self, stage: str, cached: bool, start: float, key: str | None = None,
               stats: extract.TrainStats | None = None) -> None:
        stats = stats or extract.TrainStats()
        self.stages[stage] = StageRecord(cached, round(time.perf_counter() - start, 3),
                                         stats.tokens, stats.steps, key)


# ----------------------------------------------------------------------------- corpora
@dataclass
class Corpora:
    ability: list[str]     # C(L0,A)
    general: list[str]     # C(L0), training part
    language: list[str]    # C(Lj), training part
    heldout: list[str]     # C(Lj), held-out part (evaluation only)


def load_corpora(s: Settings) -> Corpora:
    general, _ = data.split_heldout(data.load_documents(s.source_lang.corpus), s.train.heldout_fraction)
    language, heldout = data.split_heldout(data.load_documents(s.lang.corpus), s.train.heldout_fraction)
    return Corpora(data.load_documents(s.ability.corpus), general, language, heldout)


def _batches(docs: list[str], tokenizer, tokens: int, s: Settings):
    return data.batches(docs, tokenizer, tokens=tokens, batch_size=s.train.batch_size,
                        seq_len=s.train.seq_len, seed=s.seed)


def _steps(tokens: int, s: Settings) -> int:
    return data.num_steps(tokens, s.train.batch_size, s.train.seq_len)


# ----------------------------------------------------------------------------- cache keys
# What each stage depends on, and nothing else (its inputs' keys are added by the stage).
def base_config(s: Settings) -> dict:
    """A scratch base: architecture, tokenizer corpora (by content) and seed."""
    files = [data.corpus_fingerprint(s.ability.corpus)]
    files += [data.corpus_fingerprint(CorpusSettings(path=p)) for p in s.model.scratch.tokenizer_files]
    return {"scratch": dataclasses.asdict(s.model.scratch) | {"tokenizer_files": None},
            "corpora": files, "seed": s.seed}


def locate_config(s: Settings) -> dict:
    return {"locate": dataclasses.asdict(s.locate), "seed": s.seed,
            "batch": [s.train.batch_size, s.train.seq_len],
            "ability": data.corpus_fingerprint(s.ability.corpus),
            "general": data.corpus_fingerprint(s.source_lang.corpus) if s.locate.contrast else None,
            "heldout_fraction": s.train.heldout_fraction if s.locate.contrast else None}


def ability_config(s: Settings) -> dict:
    subtract = s.extract.subtract_general
    return {"extract": dataclasses.asdict(s.extract), "train": dataclasses.asdict(s.train), "seed": s.seed,
            "ability": data.corpus_fingerprint(s.ability.corpus),
            "general": data.corpus_fingerprint(s.source_lang.corpus) if subtract else None}


def language_config(s: Settings) -> dict:
    return {"language": dataclasses.asdict(s.language), "train": dataclasses.asdict(s.train), "seed": s.seed,
            "corpus": data.corpus_fingerprint(s.lang.corpus)}


def evaluate_config(s: Settings) -> dict:
    return {"eval": dataclasses.asdict(s.eval), "seed": s.seed, "heldout_fraction": s.train.heldout_fraction,
            "lang_corpus": data.corpus_fingerprint(s.lang.corpus) if s.eval.heldout else None,
            "data": [evaluate.mgsm_file_fingerprint(Path(s.paths.data_dir), code) for code in s.eval.langs]}


# ----------------------------------------------------------------------------- base model
def base_model(ctx: Context):
    """(model, tokenizer, key) of θ0; a scratch model is built once and cached."""
    s, start = ctx.settings, time.perf_counter()
    m = s.model
    if m.source != "scratch":
        model, tokenizer = load_pretrained(m.path, m, ctx.device)
        key = artifact_key("base", {"source": m.source, "path": m.path, "dtype": m.dtype})
        ctx.record("base", cached=True, start=start, key=key)
        return model, tokenizer, key

    key = artifact_key("base", base_config(s))
    cached = ctx.cache.exists("base", key)
    if not cached:
        limit = m.scratch.tokenizer_max_docs
        docs = data.load_documents(s.ability.corpus)[:limit]
        for path in m.scratch.tokenizer_files:
            docs += data.load_documents(CorpusSettings(path=path))[:limit]
        tokenizer = train_tokenizer(docs, m.scratch.vocab_size)
        model = build_scratch_model(m.scratch, tokenizer, s.seed)

        def write(folder: Path) -> None:
            model.save_pretrained(folder / "model")
            tokenizer.save_pretrained(folder / "model")

        ctx.cache.save("base", key, {"stage": "base", "name": m.name, "params": model.num_parameters()},
                       write_extra=write)
    folder = ctx.cache.path("base", key) / "model"
    model, tokenizer = load_pretrained(str(folder), dataclasses.replace(m, trust_remote_code=False), ctx.device)
    ctx.record("base", cached=cached, start=start, key=key)
    return model, tokenizer, key


# ----------------------------------------------------------------------------- stage 1
def locate_stage(ctx: Context, model, tokenizer, corpora: Corpora, base_key: str) -> tuple[locate.Mask, str]:
    s, start = ctx.settings, time.perf_counter()
    config = locate_config(s)
    key = artifact_key("locate", config, {"base": base_key})
    cached = ctx.cache.exists("locate", key)
    stats = extract.TrainStats()
    if cached:
        mask = ctx.cache.tensors("locate", key)
    else:
        names = block_linear_names(model, s.locate.modules)
        shapes = {n: p.shape for n, p in model.named_parameters() if n in names}
        if s.locate.score == "random":
            scores = locate.random_scores(shapes, s.seed)
        else:
            steps = _steps(s.locate.tokens, s)
            scores = locate.grad_scores(model, _batches(corpora.ability, tokenizer, s.locate.tokens, s), names, steps)
            stats = extract.TrainStats(steps * s.train.batch_size * s.train.seq_len, steps)
            if s.locate.contrast:
                general = locate.grad_scores(model, _batches(corpora.general, tokenizer, s.locate.tokens, s), names, steps)
                scores = {n: scores[n] - general[n] for n in names}
                stats = stats + stats
        mask = locate.select_rows(scores, s.locate.ratio, s.locate.scope)
        meta = {"stage": "locate", "config": config, "inputs": {"base": base_key},
                "selected_fraction": locate.mask_fraction(mask, shapes), "tokens": stats.tokens}
        ctx.cache.save("locate", key, meta, mask)
    ctx.record("locate", cached, start, key, stats if not cached else None)
    return mask, key


# ----------------------------------------------------------------------------- stage 2
def ability_stage(ctx: Context, model, tokenizer, corpora: Corpora, mask, mask_key: str):
    """R(A) = θ_A − θ_G on the key rows (θ_A − θ0 with extract.subtract_general=false)."""
    s, start = ctx.settings, time.perf_counter()
    config = ability_config(s)
    key = artifact_key("ability", config, {"mask": mask_key})
    cached = ctx.cache.exists("ability", key)
    stats = extract.TrainStats()
    if cached:
        delta = unpack_rows(ctx.cache.tensors("ability", key))
    else:
        steps = _steps(s.extract.tokens, s)
        theta_a, stats = extract.train_rows(model, mask, _batches(corpora.ability, tokenizer, s.extract.tokens, s),
                                            steps, s.extract.lr, s.train, "extract: θ_A (ability)")
        theta_g = None
        if s.extract.subtract_general:
            theta_g, general_stats = extract.train_rows(
                model, mask, _batches(corpora.general, tokenizer, s.extract.tokens, s),
                steps, s.extract.lr, s.train, "extract: θ_G (general)")
            stats = stats + general_stats
        delta = extract.ability_delta(theta_a, theta_g)
        meta = {"stage": "ability", "config": config, "inputs": {"mask": mask_key},
                "train_tokens": stats.tokens, "steps": stats.steps, "train_seconds": stats.seconds}
        ctx.cache.save("ability", key, meta, pack_rows(delta))
    ctx.record("ability", cached, start, key, stats if not cached else None)
    return delta, key


def language_stage(ctx: Context, model, tokenizer, corpora: Corpora, base_key: str, mask, mask_key: str | None):
    """R(Lj) = θ_Lj − θ0 by CPT on C(Lj) (all block weights, or only the key rows)."""
    s, start = ctx.settings, time.perf_counter()
    key_rows = s.language.train == "key_neurons"
    config = language_config(s)
    inputs = {"base": base_key, "mask": mask_key if key_rows else None}
    key = artifact_key("language", config, inputs)
    cached = ctx.cache.exists("language", key)
    stats = extract.TrainStats()
    if cached:
        delta = ctx.cache.tensors("language", key)
    else:
        steps = _steps(s.language.tokens, s)
        batches = _batches(corpora.language, tokenizer, s.language.tokens, s)
        desc = f"language: CPT on {s.lang.code}"
        if key_rows:
            rows, stats = extract.train_rows(model, mask, batches, steps, s.language.lr, s.train, desc)
            shapes = {n: p.shape for n, p in model.named_parameters()}
            delta = extract.rows_to_dense(rows, shapes)
        else:
            delta, stats = extract.train_full(model, block_param_names(model), batches, steps,
                                              s.language.lr, s.train, desc)
        meta = {"stage": "language", "config": config, "inputs": inputs, "lang": s.lang.code,
                "train_tokens": stats.tokens, "steps": stats.steps, "train_seconds": stats.seconds}
        ctx.cache.save("language", key, meta, delta)
    ctx.record("language", cached, start, key, stats if not cached else None)
    return delta, key


# ----------------------------------------------------------------------------- stage 3 + 4
def transfer_stage(ctx: Context, ability_delta, language_delta) -> tuple[dict[str, float], list[str]]:
    start, t = time.perf_counter(), ctx.settings.transfer
    if ability_delta is None:
        return {}, []
    similarity = transfer.tensor_similarity(ability_delta, language_delta or {})
    kept = transfer.select_tensors(similarity, t.select, t.tau, t.keep)
    ctx.record("transfer", False, start)
    return similarity, kept


def evaluate_stage(ctx: Context, model, tokenizer, corpora: Corpora, model_key: str) -> tuple[dict, list[dict]]:
    s, start = ctx.settings, time.perf_counter()
    config = evaluate_config(s)
    key = artifact_key("evaluate", config, {"model": model_key})
    cached = ctx.cache.exists("evaluate", key)
    if cached:
        metrics = ctx.cache.meta("evaluate", key)["metrics"]
        predictions = [json.loads(line) for line in
                       (ctx.cache.path("evaluate", key) / "predictions.jsonl").read_text().splitlines()]
    else:
        work = ctx.cache.root / "data"
        tasks = [evaluate.mgsm_local_task(s.eval.task_family, code, Path(s.paths.data_dir), work, s.eval)
                 for code in s.eval.langs]
        if s.eval.heldout:
            tasks.append(evaluate.heldout_task(s.lang.code, corpora.heldout, work))
        model.eval()
        results = evaluate.run_lm_eval(model, tokenizer, tasks, s.eval, s.seed)
        metrics, predictions = evaluate.summarize(results, s.eval.langs, s.eval.task_family, s.eval.filter)

        def write(folder: Path) -> None:
            evaluate.write_jsonl(predictions, folder / "predictions.jsonl")

        ctx.cache.save("evaluate", key, {"stage": "evaluate", "config": config, "metrics": metrics},
                       write_extra=write)
    ctx.record("evaluate", cached, start, key)
    return metrics, predictions


def build_model(ctx: Context, model, base_key: str, ability, ability_key, language, language_key, kept):
    """Load the method's weights into `model` in place; returns the key of the merged model."""
    s, start = ctx.settings, time.perf_counter()
    method = METHODS[s.method.name]
    touched = set(language or {}) | set(ability or {})
    params = dict(model.named_parameters())
    base = {n: params[n].detach().clone() for n in touched}
    weights = method.build(MergeInputs(base, language, ability, kept, s.merge.alpha, s.merge.beta))
    transfer.load_weights(model, weights)
    merge_config = {"method": s.method.name}
    if method.tunable:
        merge_config |= {"merge": dataclasses.asdict(s.merge), "transfer": dataclasses.asdict(s.transfer)}
    key = artifact_key("model", merge_config, {"base": base_key, "ability": ability_key, "language": language_key})
    ctx.record("merge", False, start, key)
    return key


# ----------------------------------------------------------------------------- one job
@dataclass
class JobResult:
    metrics: dict[str, float]
    predictions: list[dict]
    stages: dict[str, StageRecord]
    similarity: dict[str, float]
    kept: list[str]
    mask_rows: dict[str, int]


def run_job(s: Settings) -> JobResult:
    """All stages of one job; artifacts come from the cache when their key is there."""
    cache = ArtifactCache(s.paths.cache_dir)
    ctx = Context(s, cache, resolve_device(s.device))
    torch.manual_seed(s.seed)
    corpora = load_corpora(s)
    model, tokenizer, base_key = base_model(ctx)
    needs = METHODS[s.method.name].needs
    mask = mask_key = ability = ability_key = language = language_key = None
    if "ability" in needs or ("language" in needs and s.language.train == "key_neurons"):
        mask, mask_key = locate_stage(ctx, model, tokenizer, corpora, base_key)
    if "ability" in needs:
        ability, ability_key = ability_stage(ctx, model, tokenizer, corpora, mask, mask_key)
    if "language" in needs:
        language, language_key = language_stage(ctx, model, tokenizer, corpora, base_key, mask, mask_key)
    similarity, kept = transfer_stage(ctx, ability, language)
    model_key = build_model(ctx, model, base_key, ability, ability_key, language, language_key, kept)
    metrics, predictions = evaluate_stage(ctx, model, tokenizer, corpora, model_key)
    mask_rows = {n: len(r) for n, r in (mask or {}).items()}
    return JobResult(metrics, predictions, ctx.stages, similarity, kept, mask_rows)


def job_summary(s: Settings, result: JobResult) -> dict:
    """The content of metrics.json."""
    stages = {name: dataclasses.asdict(r) for name, r in result.stages.items()}
    return {
        "model": s.model.name, "ability": s.ability.name, "lang": s.lang.code, "method": s.method.name,
        "alpha": s.merge.alpha, "beta": s.merge.beta, "seed": s.seed,
        "metrics": result.metrics, "stages": stages,
        "train_tokens": sum(r.train_tokens for r in result.stages.values() if not r.cached),
        "transfer": {"similarity": result.similarity, "kept": result.kept},
        "key_neurons": result.mask_rows,
    }


def results_table(summary: dict) -> str:
    """A short human-readable table of the headline metrics and of the stages."""
    head = f"MAET job: method={summary['method']} lang={summary['lang']} alpha={summary['alpha']} " \
           f"beta={summary['beta']} model={summary['model']} seed={summary['seed']}"
    target = f"mgsm_{summary['lang']}"
    shown = sorted((k for k in summary["metrics"] if "/" not in k or k.endswith("bits_per_byte")),
                   key=lambda k: (k != target, k))
    metric_rows = [[k, f"{summary['metrics'][k]:.4f}"] for k in shown]
    stage_rows = [[name, "yes" if r["cached"] else "no", f"{r['seconds']:.1f}", r["train_tokens"]]
                  for name, r in summary["stages"].items()]
    kept = summary["transfer"]["kept"]
    total = len(summary["transfer"]["similarity"])
    lines = [head, tabulate(metric_rows, headers=["metric", "value"], tablefmt="github"), "",
             tabulate(stage_rows, headers=["stage", "cached", "seconds", "train tokens"], tablefmt="github")]
    if total:
        lines.append(f"transfer: kept {len(kept)}/{total} ability tensors")
    return "\n".join(lines)


def _sweep_group() -> str | None:
    """The multirun's sweep dir name (one W&B group per sweep), None outside a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    except Exception:
        return None


def check_writable(key: str, folder: str) -> None:
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    if not (path.is_dir() and os.access(path, os.W_OK)):
        raise ConfigError(key, folder, "a writable directory")


def run(cfg: DictConfig) -> float:
    """Run one job from a composed config; returns the headline metric (target-language accuracy)."""
    s = load_settings(cfg)
    check_writable("paths.cache_dir", s.paths.cache_dir)
    check_writable("paths.output_dir", s.paths.output_dir)
    out = Path(s.paths.output_dir)
    tracker_settings = dataclasses.replace(s.tracker, group=s.tracker.group or _sweep_group())
    tracker = open_tracker(tracker_settings, OmegaConf.to_container(cfg, resolve=True), str(out),
                           name=f"{s.method.name}-{s.lang.code}-a{s.merge.alpha}")
    try:
        result = run_job(s)
        summary = job_summary(s, result)
        (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
        evaluate.write_jsonl(result.predictions, out / "predictions.jsonl")
        tracker.log({**summary["metrics"], "train_tokens": summary["train_tokens"],
                     **{f"stages/{n}/seconds": r["seconds"] for n, r in summary["stages"].items()}})
        tracker.log_table("transfer/similarity", ["tensor", "similarity", "kept"],
                          [[n, v, n in result.kept] for n, v in result.similarity.items()])
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.finish(exit_code=0)
    print(results_table(summary))
    return float(summary["metrics"][f"mgsm_{s.lang.code}"])
