"""Wiring: locate -> extract -> transfer -> evaluate for one job, every artifact through the cache.

Each stage's artifact key hashes exactly the settings it depends on plus its inputs' keys:
the mask and R(A) do not depend on the target language or the merge coefficients, R(Lj) does
not depend on the ability, so a sweep over `lang` and `merge.alpha` computes each once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tabulate import tabulate

from maet import data, evaluate, extract, locate, plots, transfer, world
from maet.cache import ArtifactCache, artifact_key, pack_rows, unpack_rows, write_text_atomic
from maet.methods import METHODS, MergeInputs
from maet.model import (block_linear_names, block_param_names, build_scratch_model, load_pretrained,
                        resolve_device, train_tokenizer)
from maet.settings import ConfigError, CorpusSettings, Settings, load_settings
from maet.stats import mean_interval, paired_difference
from maet.tracking import open_tracker

log = logging.getLogger(__name__)


@dataclass
class StageRecord:
    cached: bool
    seconds: float
    train_tokens: int = 0   # tokens trained on in this job (0 when the artifact came from the cache)
    steps: int = 0
    key: str | None = None
    cost_tokens: int = 0    # tokens the artifact cost when it was made (also when cached)
    peak_rss_mib: float = 0.0  # peak resident memory of the process during the stage (since the previous record)
    peak_gpu_mib: float = 0.0  # peak CUDA memory allocated during the stage (0 on CPU)
    optimizer_mib: float = 0.0  # optimizer state of the stage's training (0 when nothing was trained)
    in_memory: bool = False    # base only: the model of the previous job in this process, not reloaded from disk


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
    suffix: str = ""  # "/seed<k>" for every seed but the first

    def record(self, stage: str, cached: bool, start: float, key: str | None = None,
               trained: extract.TrainStats | None = None, cost_tokens: int | None = None) -> None:
        trained = trained or extract.TrainStats()
        cost = trained.tokens if cost_tokens is None else cost_tokens
        rss, gpu = stage_peak_memory()
        self.stages[stage + self.suffix] = StageRecord(cached, round(time.perf_counter() - start, 3),
                                                       trained.tokens, trained.steps, key, cost, round(rss, 1),
                                                       round(gpu, 1), round(trained.optimizer_bytes / 2**20, 3))


# ----------------------------------------------------------------------------- corpora
@dataclass
class Corpora:
    ability: list[str]     # C(L0,A)
    general: list[str]     # C(L0), training part
    language: list[str]    # C(Lj), training part
    heldout: list[str]     # C(Lj), held-out part (evaluation only)
    oracle: list[str]      # ability text in Lj (the built-in world only; trains the oracle, never MAET)


def documents(corpus: CorpusSettings, w: world.World | None, tokenizer=None) -> list[str]:
    """A corpus's documents; with a tokenizer, its `max_tokens` budget applies."""
    return world.corpus(w, corpus.path) if corpus.source == "world" else data.load_documents(corpus, tokenizer)


def fingerprint(s: Settings, corpus: CorpusSettings) -> dict:
    """What a cache key needs to know of a corpus (file content hash, or world settings + name)."""
    if corpus.source == "world":
        return {"source": "world", "world": world.world_fingerprint(s.world), "name": corpus.path}
    return data.corpus_fingerprint(corpus)


def load_corpora(s: Settings, w: world.World | None, tokenizer) -> Corpora:
    general, _ = data.split_heldout(documents(s.source_lang.corpus, w, tokenizer), s.train.heldout_fraction)
    language, heldout = data.split_heldout(documents(s.lang.corpus, w, tokenizer), s.train.heldout_fraction)
    oracle = world.corpus(w, f"ability:{s.lang.code}") if s.lang.corpus.source == "world" else []
    return Corpora(documents(s.ability.corpus, w, tokenizer), general, language, heldout, oracle)


def uses_world(s: Settings) -> bool:
    corpora = (s.ability.corpus, s.source_lang.corpus, s.lang.corpus)
    return any(c.source == "world" for c in corpora) or s.eval.benchmark == "arith" or \
        (s.model.source == "scratch" and s.model.scratch.corpus == "world")


def _batches(docs: list[str], tokenizer, tokens: int, s: Settings):
    return data.batches(docs, tokenizer, tokens=tokens, batch_size=s.train.batch_size,
                        seq_len=s.train.seq_len, seed=s.seed)


def _steps(tokens: int, s: Settings) -> int:
    return data.num_steps(tokens, s.train.batch_size, s.train.seq_len)


# ----------------------------------------------------------------------------- cache keys
# What each stage depends on, and nothing else (its inputs' keys are added by the stage).
def base_config(s: Settings) -> dict:
    """A scratch base: architecture, seed, pre-training, and the text it is built from (by content)."""
    sc = s.model.scratch
    if sc.corpus == "world":
        text = {"world": world.world_fingerprint(s.world)}
    else:
        files = [data.corpus_fingerprint(CorpusSettings(path=p)) for p in sc.tokenizer_files]
        text = {"ability": fingerprint(s, s.ability.corpus), "files": files}
    pretrain = dataclasses.asdict(s.train) if sc.pretrain_tokens else None
    return {"scratch": dataclasses.asdict(sc) | {"tokenizer_files": None}, "text": text, "train": pretrain}


def locate_config(s: Settings) -> dict:
    return {"locate": dataclasses.asdict(s.locate), "seed": s.seed,
            "batch": [s.train.batch_size, s.train.seq_len],
            "ability": fingerprint(s, s.ability.corpus),
            "general": fingerprint(s, s.source_lang.corpus) if _contrastive(s) else None,
            "heldout_fraction": s.train.heldout_fraction if _contrastive(s) else None,
            "full_lr": s.extract.full_lr if s.locate.score == "weight_change" else None}


def _contrastive(s: Settings) -> bool:
    return s.locate.contrast or s.locate.score == "activation"


def ability_config(s: Settings) -> dict:
    subtract = s.extract.subtract_general
    extract_keys = {k: v for k, v in dataclasses.asdict(s.extract).items() if k != "full_lr"}  # baselines only
    return {"extract": extract_keys, "train": dataclasses.asdict(s.train), "seed": s.seed,
            "ability": fingerprint(s, s.ability.corpus),
            "general": fingerprint(s, s.source_lang.corpus) if subtract else None}


def language_config(s: Settings) -> dict:
    return {"language": dataclasses.asdict(s.language), "train": dataclasses.asdict(s.train), "seed": s.seed,
            "corpus": fingerprint(s, s.lang.corpus)}


def ability_full_config(s: Settings) -> dict:
    return {"tokens": s.extract.tokens, "lr": s.extract.full_lr, "train": dataclasses.asdict(s.train),
            "seed": s.seed, "ability": fingerprint(s, s.ability.corpus)}


def cpt_all_config(s: Settings) -> dict:
    return {"tokens": maet_training_tokens(s), "lr": s.language.lr, "train": dataclasses.asdict(s.train),
            "seed": s.seed, "ability": fingerprint(s, s.ability.corpus), "corpus": fingerprint(s, s.lang.corpus)}


def oracle_config(s: Settings) -> dict:
    return {"oracle": dataclasses.asdict(s.oracle), "train": dataclasses.asdict(s.train), "seed": s.seed,
            "world": world.world_fingerprint(s.world), "lang": s.lang.code}


def evaluate_config(s: Settings) -> dict:
    if s.eval.benchmark == "arith":
        data_files = {"world": world.world_fingerprint(s.world)}
    elif s.eval.source == "hub":
        data_files = {"hub": [evaluate.task_name(s.eval, code) for code in s.eval.langs]}
    else:
        data_files = [evaluate.mgsm_file_fingerprint(Path(s.paths.data_dir), code) for code in s.eval.langs]
    return {"eval": dataclasses.asdict(s.eval), "heldout_fraction": s.train.heldout_fraction,
            "lang_corpus": fingerprint(s, s.lang.corpus) if s.eval.heldout else None, "data": data_files}


# ----------------------------------------------------------------------------- base model
def _scratch_text(s: Settings, w: world.World | None) -> tuple[list[str], list[str]]:
    """(tokenizer text, pre-training text) of a scratch base."""
    sc = s.model.scratch
    if sc.corpus == "world":
        mix = world.pretraining_mix(w)
        return mix + w.ability["en"], mix
    general = []
    for path in sc.tokenizer_files:
        general += data.load_documents(CorpusSettings(path=path))[:sc.tokenizer_max_docs]
    return documents(s.ability.corpus, w)[:sc.tokenizer_max_docs] + general, general


def base_artifact_key(s: Settings) -> str:
    """Cache key of θ0: its build recipe (scratch) or where it is loaded from."""
    m = s.model
    if m.source != "scratch":
        return artifact_key("base", {"source": m.source, "path": m.path, "dtype": m.dtype, "gguf_file": m.gguf_file})
    return artifact_key("base", base_config(s))


# θ0 of the previous job in this process (a sweep with Hydra's basic launcher runs its jobs in one
# process): (identity, model, tokenizer, θ0 of the block tensors). The next job's merges are
# built in place from it and the deltas, without reloading the model from disk.
_RESIDENT: dict[str, tuple] = {}


def resident_base(ctx: Context):
    """(model, tokenizer, key, θ0 of every block tensor), reusing the previous job's model when it is
    the same base on the same device (its block tensors are reset to θ0 first)."""
    start, s = time.perf_counter(), ctx.settings
    ident = (base_artifact_key(s), str(ctx.device), s.model.gradient_checkpointing)
    held = _RESIDENT.get("base")
    if held is not None and held[0] == ident:
        _, model, tokenizer, theta0 = held
        transfer.load_weights(model, theta0)
        ctx.record("base", cached=True, start=start, key=ident[0])
        ctx.stages["base"].in_memory = True
        return model, tokenizer, ident[0], theta0
    _RESIDENT.clear()  # free the previous job's model before loading another
    model, tokenizer, key = base_model(ctx)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters() if ".layers." in n}
    _RESIDENT["base"] = (ident, model, tokenizer, theta0)
    return model, tokenizer, key, theta0


def base_model(ctx: Context):
    """(model, tokenizer, key) of θ0; a scratch model is built (and pre-trained) once and cached."""
    s, start = ctx.settings, time.perf_counter()
    m = s.model
    key = base_artifact_key(s)
    if m.source != "scratch":
        model, tokenizer = load_pretrained(m.path, m, ctx.device)
        if m.gradient_checkpointing:
            model.gradient_checkpointing_enable()  # active in training mode only
        ctx.record("base", cached=True, start=start, key=key)
        return model, tokenizer, key

    with ctx.cache.lock("base", key):
        cached = ctx.cache.ready("base", key)
        stats = extract.TrainStats() if cached else _build_base(ctx, key)
    folder = ctx.cache.path("base", key) / "model"
    model, tokenizer = load_pretrained(str(folder), dataclasses.replace(m, trust_remote_code=False), ctx.device)
    ctx.record("base", cached=cached, start=start, key=key, trained=None if cached else stats)
    return model, tokenizer, key


def _build_base(ctx: Context, key: str) -> extract.TrainStats:
    """Build (and pre-train) a scratch base and publish it in the cache under `key`."""
    s, m, stats = ctx.settings, ctx.settings.model, extract.TrainStats()
    sc = m.scratch
    tokenizer_text, pretrain_text = _scratch_text(s, ctx.world)
    tokenizer = train_tokenizer(tokenizer_text, sc.vocab_size)
    model = build_scratch_model(sc, tokenizer, sc.seed).to(ctx.device)
    if sc.pretrain_tokens:
        names = [n for n, _ in model.named_parameters()]
        batches = data.batches(pretrain_text, tokenizer, tokens=sc.pretrain_tokens, batch_size=s.train.batch_size,
                               seq_len=s.train.seq_len, seed=sc.seed)
        delta, stats = extract.train_full(model, names, batches, _steps(sc.pretrain_tokens, s), sc.pretrain_lr,
                                          s.train, "base: pre-training")
        transfer.load_weights(model, {n: p.detach() + delta[n].to(p.device) for n, p in model.named_parameters()})

    def write(folder: Path) -> None:
        model.save_pretrained(folder / "model")
        tokenizer.save_pretrained(folder / "model")

    meta = {"stage": "base", "name": m.name, "params": model.num_parameters(), "config": base_config(s),
            "train_tokens": stats.tokens, "steps": stats.steps, "train_seconds": stats.seconds}
    ctx.cache.save("base", key, meta, write_extra=write)
    return stats


# ----------------------------------------------------------------------------- cached stages
def cached_stage(ctx: Context, stage: str, config: dict, inputs: dict, compute) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors, key) of a stage: from the cache when its key is there, else from
    `compute() -> (tensors, TrainStats, extra meta)`, saved before they are returned.
    Tensors come sorted by name either way, so that nothing downstream (DARE's random drops,
    the order of a sum) depends on whether they were computed or read."""
    start = time.perf_counter()
    key = artifact_key(stage, config, inputs)
    with ctx.cache.lock(stage, key):  # a parallel job needing the same entry waits, then reads it
        if ctx.cache.ready(stage, key):
            ctx.record(stage, True, start, key, cost_tokens=ctx.cache.meta(stage, key).get("train_tokens", 0))
            return dict(sorted(ctx.cache.tensors(stage, key).items())), key
        reseed(ctx.settings.seed, stage)
        tensors, trained, extra = compute()
        tensors = dict(sorted(tensors.items()))
        meta = {"stage": stage, "config": config, "inputs": inputs, "train_tokens": trained.tokens,
                "steps": trained.steps, "train_seconds": trained.seconds, **extra}
        ctx.cache.save(stage, key, meta, tensors)
    ctx.record(stage, False, start, key, trained)
    return tensors, key


def reseed(seed: int, stage: str) -> None:
    """Seed torch's global RNG from (seed, stage), so that what a stage computes never depends
    on which earlier stages ran in this process and which came from the cache."""
    torch.manual_seed(int.from_bytes(hashlib.sha256(f"{seed}:{stage}".encode()).digest()[:7], "little"))


# ----------------------------------------------------------------------------- stage 1
def locate_stage(ctx: Context, model, tokenizer, corpora: Corpora, base_key: str) -> tuple[locate.Mask, str]:
    """The neuron mask {tensor name -> selected rows}."""
    s = ctx.settings

    def compute():
        names = block_linear_names(model, s.locate.modules)
        shapes = {n: p.shape for n, p in model.named_parameters() if n in names}
        steps = _steps(s.locate.tokens, s)

        def score(docs: list[str]) -> tuple[dict[str, torch.Tensor], extract.TrainStats]:
            batches = _batches(docs, tokenizer, s.locate.tokens, s)
            if s.locate.score == "weight_change":  # a short real CPT; θ0 is restored afterwards
                delta, trained = extract.train_full(model, names, batches, steps, s.extract.full_lr, s.train,
                                                    "locate: weight change")
                return locate.weight_change_scores(delta), trained
            fn = locate.grad_scores if s.locate.score == "grad" else locate.activation_scores
            return fn(model, batches, names, steps), extract.TrainStats(steps * s.train.batch_size * s.train.seq_len, steps)

        if s.locate.score == "random":
            scores, trained = locate.random_scores(shapes, s.seed), extract.TrainStats()
        else:
            scores, trained = score(corpora.ability)
            # activation scores are contrastive by definition (METHOD.md): ability minus general text
            if s.locate.contrast or s.locate.score == "activation":
                general, general_trained = score(corpora.general)
                scores = {n: scores[n] - general[n] for n in names}
                trained = trained + general_trained
        mask = locate.select_rows(scores, s.locate.ratio, s.locate.scope)
        return mask, trained, {"selected_fraction": locate.mask_fraction(mask, shapes)}

    return cached_stage(ctx, "locate", locate_config(s), {"base": base_key}, compute)


# ----------------------------------------------------------------------------- stage 2
THETA_A = "theta_a:"  # θ_A − θ0 on the key rows, stored beside R(A) (the English-ability reference model)


def ability_stage(ctx: Context, model, tokenizer, corpora: Corpora, mask, mask_key: str):
    """(R(A), θ_A − θ0, key): R(A) = θ_A − θ_G on the key rows (θ_A − θ0 with
    extract.subtract_general=false)."""
    s = ctx.settings

    def compute():
        steps = _steps(s.extract.tokens, s)
        theta_a, trained = extract.train_rows(model, mask, _batches(corpora.ability, tokenizer, s.extract.tokens, s),
                                              steps, s.extract.lr, s.train, "extract: θ_A (ability)")
        theta_g = None
        if s.extract.subtract_general:
            theta_g, general = extract.train_rows(model, mask, _batches(corpora.general, tokenizer, s.extract.tokens, s),
                                                  steps, s.extract.lr, s.train, "extract: θ_G (general)")
            trained = trained + general
        tensors = pack_rows(extract.ability_delta(theta_a, theta_g))
        tensors |= {THETA_A + n: values for n, (_, values) in theta_a.items()}
        return tensors, trained, {}

    tensors, key = cached_stage(ctx, "ability", ability_config(s), {"mask": mask_key}, compute)
    delta = unpack_rows(tensors)
    theta_a = {n: (rows, tensors[THETA_A + n]) for n, (rows, _) in delta.items()}
    return delta, theta_a, key


def language_stage(ctx: Context, model, tokenizer, corpora: Corpora, base_key: str, mask, mask_key: str | None):
    """R(Lj) = θ_Lj − θ0 by CPT on C(Lj) (all block weights, or only the key rows)."""
    s = ctx.settings
    key_rows = s.language.train == "key_neurons"

    def compute():
        steps = _steps(s.language.tokens, s)
        batches = _batches(corpora.language, tokenizer, s.language.tokens, s)
        desc = f"language: CPT on {s.lang.code}"
        if key_rows:
            rows, trained = extract.train_rows(model, mask, batches, steps, s.language.lr, s.train, desc)
            return extract.rows_to_dense(rows, {n: p.shape for n, p in model.named_parameters()}), trained, {}
        delta, trained = extract.train_full(model, block_param_names(model), batches, steps, s.language.lr, s.train, desc)
        return delta, trained, {"lang": s.lang.code}

    inputs = {"base": base_key, "mask": mask_key if key_rows else None}
    return cached_stage(ctx, "language", language_config(s), inputs, compute)


def full_cpt_stage(ctx: Context, stage: str, config: dict, model, tokenizer, base_key: str, docs: list[str],
                   tokens: int, lr: float, desc: str, meta: dict):
    """(θ' − θ0 of every block weight, key) after full CPT of θ0 on `docs` for `tokens` tokens."""
    s = ctx.settings

    def compute():
        delta, trained = extract.train_full(model, block_param_names(model), _batches(docs, tokenizer, tokens, s),
                                            _steps(tokens, s), lr, s.train, desc)
        return delta, trained, meta

    return cached_stage(ctx, stage, config, {"base": base_key}, compute)


def oracle_stage(ctx: Context, model, tokenizer, corpora: Corpora, base_key: str):
    """The oracle's delta: full CPT of θ0 on ability text *in* Lj (a ceiling MAET never uses)."""
    s = ctx.settings
    return full_cpt_stage(ctx, "oracle", oracle_config(s), model, tokenizer, base_key, corpora.oracle,
                          s.oracle.tokens, s.oracle.lr, f"oracle: ability text in {s.lang.code}", {"lang": s.lang.code})


def ability_full_stage(ctx: Context, model, tokenizer, corpora: Corpora, base_key: str):
    """θ_A,full − θ0: full-parameter CPT on C(L0,A) with the budget of θ_A (merging baselines)."""
    s = ctx.settings
    return full_cpt_stage(ctx, "ability_full", ability_full_config(s), model, tokenizer, base_key, corpora.ability,
                          s.extract.tokens, s.extract.full_lr, "baselines: full CPT on C(L0,A)", {})


def maet_training_tokens(s: Settings) -> int:
    """Tokens MAET trains on: θ_A, θ_G (unless extract.subtract_general=false) and R(Lj)."""
    return s.extract.tokens * (2 if s.extract.subtract_general else 1) + s.language.tokens


def cpt_all_stage(ctx: Context, model, tokenizer, corpora: Corpora, base_key: str):
    """The training baseline: full CPT of θ0 on C(Lj) ∪ C(L0,A) with MAET's total token budget."""
    s = ctx.settings
    return full_cpt_stage(ctx, "cpt_all", cpt_all_config(s), model, tokenizer, base_key,
                          corpora.language + corpora.ability, maet_training_tokens(s), s.language.lr,
                          f"baselines: CPT on {s.lang.code} + ability text", {"lang": s.lang.code})


# ----------------------------------------------------------------------------- stage 3 + 4
def transfer_stage(ctx: Context, ability_delta, language_delta) -> tuple[dict[str, float], list[str]]:
    start, t = time.perf_counter(), ctx.settings.transfer
    if ability_delta is None:
        return {}, []
    similarity = transfer.tensor_similarity(ability_delta, language_delta or {})
    kept = transfer.select_tensors(similarity, t.select, t.tau, t.keep)
    ctx.record("transfer", False, start)
    return similarity, kept


def eval_tasks(ctx: Context, corpora: Corpora) -> list[dict]:
    """The lm-eval task configs of this job: the benchmark in every eval language, held-out text."""
    s, work = ctx.settings, ctx.cache.root / "data"
    if s.eval.benchmark == "arith":
        work = work / world.world_fingerprint(s.world)
        tasks = [evaluate.arith_task(code, ctx.world.benchmark[code], work, s.eval) for code in s.eval.langs]
    elif s.eval.benchmark == "task":
        tasks = [evaluate.task_name(s.eval, code) for code in s.eval.langs]
    else:
        tasks = [evaluate.mgsm_task(s.eval.task_family, code, Path(s.paths.data_dir), work, s.eval)
                 for code in s.eval.langs]
    if s.eval.heldout:
        tasks.append(evaluate.heldout_task(s.lang.code, corpora.heldout, work))
    return tasks


def evaluate_stage(ctx: Context, model, tokenizer, corpora: Corpora, model_key: str, name: str) -> tuple[dict, list[dict]]:
    s, start = ctx.settings, time.perf_counter()
    config = evaluate_config(s)
    key = artifact_key("evaluate", config, {"model": model_key})
    with ctx.cache.lock("evaluate", key):
        cached = ctx.cache.ready("evaluate", key)
        if cached:
            metrics = ctx.cache.meta("evaluate", key)["metrics"]
            predictions = [json.loads(line) for line in
                           (ctx.cache.path("evaluate", key) / "predictions.jsonl").read_text().splitlines()]
        else:
            model.eval()
            results = evaluate.run_lm_eval(model, tokenizer, eval_tasks(ctx, corpora), s.eval)
            metrics, predictions = evaluate.summarize(results, s.eval)

            def write(folder: Path) -> None:
                evaluate.write_jsonl(predictions, folder / "predictions.jsonl")

            ctx.cache.save("evaluate", key, {"stage": "evaluate", "config": config, "metrics": metrics},
                           write_extra=write)
    ctx.record(name, cached, start, key)
    return metrics, predictions


# ----------------------------------------------------------------------------- models to evaluate
@dataclass
class Artifacts:
    """Deltas of one seed, with their cache keys (None where the job does not need them)."""
    base_key: str
    mask: locate.Mask | None = None
    ability: extract.RowDelta | None = None
    theta_a: extract.RowDelta | None = None
    ability_key: str | None = None
    language: extract.DenseDelta | None = None
    language_key: str | None = None
    oracle: extract.DenseDelta | None = None
    oracle_key: str | None = None
    ability_full: extract.DenseDelta | None = None
    ability_full_key: str | None = None
    cpt_all: extract.DenseDelta | None = None
    cpt_all_key: str | None = None
    kept: list[str] = field(default_factory=list)


def variant_weights(name: str, s: Settings, base: dict[str, torch.Tensor], a: Artifacts):
    """(new tensor values, model key) of a method or a reference model of the testbed table."""
    inputs = {"base": a.base_key}
    if name == "ability":  # θ_A: the model trained on English ability text (key rows only)
        weights = transfer.merge_weights(base, None, a.theta_a, list(a.theta_a), alpha=1.0, beta=0.0)
        return weights, artifact_key("model", {"variant": "theta_a"}, inputs | {"ability": a.ability_key})
    if name == "oracle":
        weights = transfer.merge_weights(base, a.oracle, None, [], alpha=0.0, beta=1.0)
        return weights, artifact_key("model", {"variant": "oracle"}, inputs | {"oracle": a.oracle_key})
    method = METHODS[name]
    m = s.merge
    weights = method.build(MergeInputs(base, a.language, a.ability, a.kept, m.alpha, m.beta, a.ability_full,
                                       a.cpt_all, m.density, m.drop, m.swap_k, s.seed))
    config = {"method": name}
    if method.tunable:
        config |= {"merge": dataclasses.asdict(m), "transfer": dataclasses.asdict(s.transfer), "seed": s.seed}
    keys = {"ability": a.ability_key, "language": a.language_key, "ability_full": a.ability_full_key,
            "cpt_all": a.cpt_all_key}
    inputs |= {need: keys[need] for need in sorted(method.needs)}
    return weights, artifact_key("model", config, inputs)


def seed_artifacts(ctx: Context, model, tokenizer, corpora: Corpora, base_key: str, variants: list[str]) -> Artifacts:
    """Every stage output the variants need, for the seed in ctx.settings."""
    s = ctx.settings
    needs = set().union(*(METHODS[v].needs if v in METHODS else {v} for v in variants))
    a = Artifacts(base_key)
    mask = mask_key = None
    if needs & {"ability"} or ("language" in needs and s.language.train == "key_neurons"):
        mask, mask_key = locate_stage(ctx, model, tokenizer, corpora, base_key)
        a.mask = mask
    if "ability" in needs:
        a.ability, a.theta_a, a.ability_key = ability_stage(ctx, model, tokenizer, corpora, mask, mask_key)
    if "language" in needs:
        a.language, a.language_key = language_stage(ctx, model, tokenizer, corpora, base_key, mask, mask_key)
    if "oracle" in needs:
        a.oracle, a.oracle_key = oracle_stage(ctx, model, tokenizer, corpora, base_key)
    if "ability_full" in needs:
        a.ability_full, a.ability_full_key = ability_full_stage(ctx, model, tokenizer, corpora, base_key)
    if "cpt_all" in needs:
        a.cpt_all, a.cpt_all_key = cpt_all_stage(ctx, model, tokenizer, corpora, base_key)
    return a


# ----------------------------------------------------------------------------- one job
@dataclass
class JobResult:
    metrics: dict[str, float]              # the method's metrics, averaged over seeds
    per_seed: list[dict[str, float]]       # the method's metrics of each seed
    testbed: dict[str, list[dict]]         # variant -> metrics of each seed (method and references)
    items: dict[str, list[dict[str, float]]]  # variant -> per seed: item -> correct (target language)
    predictions: list[dict]                # every evaluated model's, every seed (with "model" and "seed")
    stages: dict[str, StageRecord]
    similarity: dict[str, float]           # first seed
    kept: list[str]                        # first seed
    tensors: list[dict]                    # first seed: one row per ability tensor (see tensor_rows)
    mask_rows: dict[str, int]
    n_params: int


def _mean_metrics(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}


def run_job(s: Settings) -> JobResult:
    """All stages of one job, for each seed; artifacts come from the cache when their key is there."""
    if s.threads:
        torch.set_num_threads(s.threads)
    cache = ArtifactCache(s.paths.cache_dir)
    ctx = Context(s, cache, resolve_device(s.device, _job_num()), world.generate(s.world) if uses_world(s) else None)
    model, tokenizer, base_key, base = resident_base(ctx)
    corpora = load_corpora(s, ctx.world, tokenizer)
    variants = list(dict.fromkeys([s.method.name, *s.report.references]))
    testbed: dict[str, list[dict]] = {v: [] for v in variants}
    items: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    all_predictions: list[dict] = []
    first = None
    for k in range(s.report.seeds):
        seed_settings = dataclasses.replace(s, seed=s.seed + k)
        ctx.settings, ctx.suffix = seed_settings, f"/seed{s.seed + k}" if k else ""
        torch.manual_seed(seed_settings.seed)
        a = seed_artifacts(ctx, model, tokenizer, corpora, base_key, variants)
        similarity, a.kept = transfer_stage(ctx, a.ability, a.language)
        for variant in variants:
            start = time.perf_counter()
            weights, model_key = variant_weights(variant, seed_settings, base, a)
            transfer.load_weights(model, weights)
            ctx.record("merge" if variant == s.method.name else f"merge/{variant}", False, start, model_key)
            name = "evaluate" if variant == s.method.name else f"evaluate/{variant}"
            metrics, predictions = evaluate_stage(ctx, model, tokenizer, corpora, model_key, name)
            transfer.load_weights(model, {n: base[n] for n in weights})
            testbed[variant].append(metrics)
            items[variant].append(evaluate.correctness(predictions, s.lang.code, s.eval.filter))
            all_predictions += [{"model": variant, "seed": seed_settings.seed, **p} for p in predictions]
            if first is None and variant == s.method.name:
                first = (similarity, list(a.kept), a)
    ctx.settings, ctx.suffix = s, ""
    similarity, kept, a = first
    mask_rows = {n: len(rows) for n, rows in (a.mask or {}).items()}
    runs = testbed[s.method.name]
    return JobResult(_mean_metrics(runs), runs, testbed, items, all_predictions, ctx.stages, similarity, kept,
                     tensor_rows(a, similarity, kept), mask_rows, model.num_parameters())


def tensor_rows(a: Artifacts, similarity: dict[str, float], kept: list[str]) -> list[dict]:
    """One row per ability tensor t: key rows, cos(R(A)[t], R(Lj)[t]), transferred or not, and the
    Frobenius norms of R(A)[t] and R(Lj)[t]."""
    language = a.language or {}
    return [{"tensor": name, "key_rows": len(rows), "similarity": similarity.get(name, 0.0), "kept": name in kept,
             "ability_norm": float(values.float().norm()),
             "language_norm": float(language[name].float().norm()) if name in language else 0.0}
            for name, (rows, values) in (a.ability or {}).items()]


def headline(s: Settings) -> str:
    """Name of the headline metric: accuracy on the benchmark in the target language."""
    return f"{s.eval.benchmark}_{s.lang.code}"


PAIRED_WITH = ("base", "language_only")


def paired_items(a: list[dict[str, float]], b: list[dict[str, float]]) -> tuple[list[float], list[float]]:
    """Correctness of two models on the same (seed, item) pairs, aligned."""
    xs, ys = [], []
    for run_a, run_b in zip(a, b):
        for doc in sorted(run_a.keys() & run_b.keys()):
            xs.append(run_a[doc])
            ys.append(run_b[doc])
    return xs, ys


def testbed_rows(s: Settings, result: JobResult) -> list[dict]:
    """One row per evaluated model: accuracy in each eval language (mean and 95% interval over
    seeds), the paired difference in the target language against the base and the language-only
    model (same items and seeds; exact McNemar p), and held-out bits per byte."""
    rows = []
    for variant, runs in result.testbed.items():
        row = {"model": variant, "seeds": len(runs)}
        for code in s.eval.langs:
            name = f"{s.eval.benchmark}_{code}"
            mean, low, high = mean_interval([r[name] for r in runs], int(runs[0][f"{name}/n"]))
            row[name] = {"mean": mean, "low": low, "high": high, "per_seed": [r[name] for r in runs]}
        for ref in PAIRED_WITH:
            if ref in result.items and ref != variant:
                row[f"vs_{ref}"] = paired_difference(*paired_items(result.items[variant], result.items[ref]))
        bpb = f"heldout_{s.lang.code}/bits_per_byte"
        if bpb in runs[0]:
            row[bpb] = sum(r[bpb] for r in runs) / len(runs)
        rows.append(row)
    return rows


STAGES_OF = {"ability": ("locate", "ability"), "language": ("language",), "ability_full": ("ability_full",),
             "cpt_all": ("cpt_all",), "oracle": ("oracle",)}


def training_compute(s: Settings, result: JobResult) -> dict:
    """Training compute of the method for one seed: tokens of every stage it needs (cached ones
    counted at what they cost when made), FLOPs ≈ 6 · params · tokens, and the ratio to the
    training baseline cpt_all, whose budget is MAET's total training tokens."""
    needs = METHODS[s.method.name].needs
    stages = {st for need in needs for st in STAGES_OF[need]}
    if "language" in needs and s.language.train == "key_neurons":
        stages.add("locate")
    per_stage = {st: result.stages[st].cost_tokens for st in sorted(stages) if st in result.stages}
    tokens = sum(per_stage.values())
    return {"tokens": tokens, "flops": 6 * result.n_params * tokens, "per_stage": per_stage,
            "cpt_all_tokens": maet_training_tokens(s), "vs_cpt_all": tokens / maet_training_tokens(s),
            "note": "per seed; cached stages count at their cost, once per sweep in wall-clock"}


def random_seeds(s: Settings) -> dict[str, int]:
    """Every seed a job uses, by config key: `seed` (data order, training, random locate, DARE;
    seed+k for the k-th of `report.seeds`), `eval.seed` (lm-eval), the world's and the scratch base's."""
    return {"seed": s.seed, "report.seeds": s.report.seeds, "eval.seed": s.eval.seed, "world.seed": s.world.seed,
            "model.scratch.seed": s.model.scratch.seed}


def job_summary(s: Settings, result: JobResult) -> dict:
    """The content of metrics.json."""
    stages = {name: dataclasses.asdict(r) for name, r in result.stages.items()}
    return {
        "model": s.model.name, "ability": s.ability.name, "lang": s.lang.code, "method": s.method.name,
        "alpha": s.merge.alpha, "beta": s.merge.beta, "seed": s.seed, "seeds": s.report.seeds,
        "random_seeds": random_seeds(s),
        "headline": headline(s), "split": s.eval.split, "metrics": result.metrics,
        "metrics_per_seed": result.per_seed,
        "testbed": testbed_rows(s, result), "stages": stages, "compute": training_compute(s, result),
        "train_tokens": sum(r.train_tokens for r in result.stages.values() if not r.cached),
        "transfer": {"similarity": result.similarity, "kept": result.kept, "tensors": result.tensors},
        "key_neurons": result.mask_rows,
    }


def testbed_flat(summary: dict) -> tuple[list[str], list[list]]:
    """(columns, rows) of the testbed with one number per cell (for W&B tables and CSV); a cell a
    row does not have (a model's difference to itself) is None."""
    flat_rows = []
    for r in summary["testbed"]:
        flat = {"model": r["model"], "seeds": r["seeds"]}
        for key, cell in r.items():
            if isinstance(cell, dict):
                fields = ["mean", "low", "high"] if "mean" in cell else ["diff", "low", "high", "p"]
                flat |= {key if f in ("mean", "diff") else f"{key}/{f}": cell[f] for f in fields}
            elif key.startswith("heldout_"):
                flat[key] = cell
        flat_rows.append(flat)
    columns = list(dict.fromkeys(c for flat in flat_rows for c in flat))
    return columns, [[flat.get(c) for c in columns] for flat in flat_rows]


def _fmt_interval(cell: dict) -> str:
    return f"{100 * cell['mean']:5.1f} [{100 * cell['low']:.1f}, {100 * cell['high']:.1f}]"


def _fmt_paired(cell: dict | None) -> str:
    if cell is None:
        return ""
    return f"{100 * cell['diff']:+5.1f} [{100 * cell['low']:+.1f}, {100 * cell['high']:+.1f}] p={cell['p']:.3f}"


def testbed_table(summary: dict, fmt: str = "github") -> str:
    """Accuracy (%) of every evaluated model with 95% intervals, paired differences (points) in the
    target language against the base and the language-only model, bits per byte of held-out text."""
    rows = summary["testbed"]
    acc_cols = [k for k in rows[0] if isinstance(rows[0][k], dict) and "mean" in rows[0][k]]
    paired_cols = [f"vs_{ref}" for ref in PAIRED_WITH if any(f"vs_{ref}" in r for r in rows)]
    extra = [k for k in rows[0] if k.startswith("heldout_")]
    body = [[r["model"], *[_fmt_interval(r[c]) for c in acc_cols], *[_fmt_paired(r.get(c)) for c in paired_cols],
             *[f"{r[c]:.3f}" for c in extra]] for r in rows]
    headers = ["model", *[f"{c} % [95% CI]" for c in acc_cols],
               *[f"Δ {summary['headline']} {c.replace('_', ' ', 1)} [95% CI]" for c in paired_cols], *extra]
    return tabulate(body, headers=headers, tablefmt=fmt)


def stage_table(summary: dict) -> str:
    """Stages grouped over seeds and models: computed / cached counts, seconds, training tokens,
    peak memory (RSS, GPU) and optimizer state (largest over the group)."""
    groups: dict[str, list[dict]] = {}
    for name, record in summary["stages"].items():
        groups.setdefault(name.split("/")[0], []).append(record)
    rows = [[stage, sum(not r["cached"] for r in records), sum(r["cached"] for r in records),
             f"{sum(r['seconds'] for r in records):.1f}", sum(r["train_tokens"] for r in records),
             f"{max(r.get('peak_rss_mib', 0) for r in records):.0f}", f"{max(r.get('peak_gpu_mib', 0) for r in records):.0f}",
             f"{max(r.get('optimizer_mib', 0) for r in records):.2f}"]
            for stage, records in groups.items()]
    return tabulate(rows, headers=["stage", "computed", "cached", "seconds", "train tokens", "peak RSS MiB",
                                   "peak GPU MiB", "optimizer MiB"], tablefmt="github")


def results_table(summary: dict) -> str:
    """The human-readable end of a run: models x languages, then the stages."""
    head = (f"MAET job: method={summary['method']} lang={summary['lang']} alpha={summary['alpha']} "
            f"beta={summary['beta']} model={summary['model']} seeds={summary['seeds']} (from {summary['seed']})")
    lines = [head, testbed_table(summary), "", stage_table(summary)]
    c = summary["compute"]
    lines.append(f"training compute of {summary['method']} (per seed): {c['tokens']:,} tokens, "
                 f"{c['flops']:.2e} FLOPs, {c['vs_cpt_all']:.2f}x the cpt_all budget of {c['cpt_all_tokens']:,} tokens")
    total = len(summary["transfer"]["similarity"])
    if total:
        lines.append(f"transfer (seed {summary['seed']}): kept {len(summary['transfer']['kept'])}/{total} ability tensors")
    return "\n".join(lines)


STAGE_ARTIFACTS = ("base", "locate", "ability", "language", "oracle", "ability_full", "cpt_all")


def stage_artifacts(summary: dict, cache: ArtifactCache) -> list[tuple[str, str, Path]]:
    """(name, type, cache folder) of every weight artifact this job used (W&B references, no upload)."""
    found = {}
    for name, record in summary["stages"].items():
        stage = name.split("/")[0]
        if stage in STAGE_ARTIFACTS and record["key"] and cache.exists(stage, record["key"]):
            found[f"{stage}-{record['key']}"] = ("mask" if stage == "locate" else "model" if stage == "base"
                                                 else "delta", cache.path(stage, record["key"]))
    return [(name, kind, path) for name, (kind, path) in found.items()]


def run_plots(summary: dict, folder: Path) -> dict[str, Path]:
    """PNG pictures of one run: key neurons and R(A)/R(Lj) similarity per layer x module."""
    images = {}
    if summary["key_neurons"]:
        images["plots/key_neurons"] = plots.key_neuron_plot(summary["key_neurons"], folder / "key_neurons.png")
    if summary["transfer"]["similarity"]:
        images["plots/similarity"] = plots.similarity_plot(summary["transfer"]["similarity"],
                                                           summary["transfer"]["kept"], folder / "similarity.png")
    return images


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


def check_writable(key: str, folder: str) -> None:
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    try:  # a real write: os.access says yes to root even on a read-only mount
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ConfigError(key, folder, f"a writable directory ({err.strerror})") from err


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
        write_text_atomic(out / "metrics.json", json.dumps(summary, indent=2, default=str))  # never half a file
        (out / "results.md").write_text(results_table(summary) + "\n")
        evaluate.write_jsonl(result.predictions, out / "predictions.jsonl")
        images = run_plots(summary, out / "plots")
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
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.finish(exit_code=0)
    print(results_table(summary))
    return float(summary["metrics"][headline(s)])
