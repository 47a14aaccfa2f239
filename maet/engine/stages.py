"""Stage adapters: each stage of METHOD.md over one job's context, its artifact through the
cache (`maet.engine.context.cached_stage`), its key from `maet.engine.keys`; the math is in the pure modules
(`locate`, `extract`, `transfer`, `methods`, `evaluate`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from maet import world
from maet.corpora import data
from maet.engine import context as cx
from maet.engine import keys
from maet.engine.context import Context, Corpora, cached_stage
from maet.evaluation import evaluate, lm_eval_files
from maet.method import extract, locate, transfer
from maet.method.methods import METHODS, Deltas
from maet.method.train import TrainStats
from maet.method.types import DenseDelta, Mask, RowDelta, pack_rows, rows_to_dense, unpack_rows
from maet.models.model import block_linear_names, block_param_names, language_param_names
from maet.runtime import console
from maet.schema import derived
from maet.schema.settings import Settings
from maet.store.cache import artifact_key


# ----------------------------------------------------------------------------- stage 1
def locate_stage(ctx: Context, model, tokenizer, corpora: Corpora, base_key: str) -> tuple[Mask, str]:
    """The neuron mask {tensor name -> selected rows}."""
    s = ctx.settings

    def compute():
        names = block_linear_names(model, s.locate.modules)
        shapes = {n: p.shape for n, p in model.named_parameters() if n in names}
        steps = cx.steps(s, s.locate.tokens)

        def score(docs: list[str]) -> tuple[dict[str, torch.Tensor], TrainStats]:
            batches = cx.batches(s, docs, tokenizer, s.locate.tokens)
            if s.locate.score == "weight_change":  # a short real CPT; θ0 is restored afterwards
                delta, trained = extract.train_full(model, names, batches, steps, s.extract.full_lr,
                                                    "locate: weight change", **cx.loop(s))
                return locate.weight_change_scores(delta), trained
            fn = locate.grad_scores if s.locate.score == "grad" else locate.activation_scores
            return fn(model, batches, names, steps), TrainStats(steps * s.train.batch_size * s.train.seq_len, steps)

        if s.locate.score == "random":
            scores, trained = locate.random_scores(shapes, s.seed), TrainStats()
        else:
            scores, trained = score(corpora.ability)
            # activation scores are contrastive by definition (METHOD.md): ability minus general text
            if keys.contrastive(s):
                general, general_trained = score(corpora.general)
                scores = {n: scores[n] - general[n] for n in names}
                trained = trained + general_trained
        mask = locate.select_rows(scores, s.locate.ratio, s.locate.scope)
        return mask, trained, {"selected_fraction": locate.mask_fraction(mask, shapes)}

    return cached_stage(ctx, "locate", keys.locate_config(s), {"base": base_key}, compute)


# ----------------------------------------------------------------------------- stage 2
THETA_A = "theta_a:"  # θ_A − θ0 on the key rows, stored beside R(A) (the English-ability reference model)


def ability_stage(ctx: Context, model, tokenizer, corpora: Corpora, mask, mask_key: str):
    """(R(A), θ_A − θ0, key): R(A) from θ_A and θ_G on the key rows as `extract.general` says
    (θ_A − θ_G by default; θ_A − θ0 with extract.general=none)."""
    s = ctx.settings
    loop = cx.loop(s) | {"optimizer": s.extract.optimizer}

    def compute():
        steps = cx.steps(s, s.extract.tokens)
        theta_a, trained = extract.train_rows(model, mask, cx.batches(s, corpora.ability, tokenizer, s.extract.tokens),
                                              steps, s.extract.lr, "extract: θ_A (ability)", **loop)
        theta_g = None
        if s.extract.general != "none":
            general_batches = cx.batches(s, corpora.general, tokenizer, s.extract.tokens)
            theta_g, general = extract.train_rows(model, mask, general_batches, steps, s.extract.lr,
                                                  "extract: θ_G (general)", **loop)
            trained = trained + general
        tensors = pack_rows(extract.ability_delta(theta_a, theta_g, s.extract.general))
        tensors |= {THETA_A + n: values for n, (_, values) in theta_a.items()}
        return tensors, trained, {}

    tensors, key = cached_stage(ctx, "ability", keys.ability_config(s), {"mask": mask_key}, compute)
    delta = unpack_rows(tensors)
    theta_a = {n: (rows, tensors[THETA_A + n]) for n, (rows, _) in delta.items()}
    return delta, theta_a, key


def language_stage(ctx: Context, model, tokenizer, corpora: Corpora, base_key: str, mask, mask_key: str | None):
    """R(Lj) = θ_Lj − θ0 by CPT on C(Lj) (all block weights, or only the key rows)."""
    s = ctx.settings
    key_rows = s.language.train == "key_neurons"

    def compute():
        steps = cx.steps(s, s.language.tokens)
        batches = cx.batches(s, corpora.language, tokenizer, s.language.tokens)
        desc = f"language: CPT on {s.lang.code}"
        if key_rows:
            rows, trained = extract.train_rows(model, mask, batches, steps, s.language.lr, desc, **cx.loop(s))
            return rows_to_dense(rows, {n: p.shape for n, p in model.named_parameters()}), trained, {}
        delta, trained = extract.train_full(model, language_param_names(model, s.language.params), batches, steps,
                                            s.language.lr, desc, **cx.loop(s))
        return delta, trained, {"lang": s.lang.code}

    inputs = {"base": base_key, "mask": mask_key if key_rows else None}
    return cached_stage(ctx, "language", keys.language_config(s), inputs, compute)


def full_cpt_stage(ctx: Context, stage: str, config: dict, model, tokenizer, base_key: str, docs: list[str],
                   tokens: int, lr: float, desc: str, meta: dict, batches=None):
    """(θ' − θ0 of every block weight, key) after full CPT of θ0 on `docs` for `tokens` tokens
    (or on `batches` of that many tokens)."""
    s = ctx.settings

    def compute():
        stream = batches if batches is not None else cx.batches(s, docs, tokenizer, tokens)
        delta, trained = extract.train_full(model, block_param_names(model), stream,
                                            cx.steps(s, tokens), lr, desc, **cx.loop(s))
        return delta, trained, meta

    return cached_stage(ctx, stage, config, {"base": base_key}, compute)


def oracle_stage(ctx: Context, model, tokenizer, corpora: Corpora, base_key: str):
    """The oracle's delta: full CPT of θ0 on ability text *in* Lj (a ceiling MAET never uses)."""
    s = ctx.settings
    return full_cpt_stage(ctx, "oracle", keys.oracle_config(s), model, tokenizer, base_key, corpora.oracle,
                          s.oracle.tokens, s.oracle.lr, f"oracle: ability text in {s.lang.code}", {"lang": s.lang.code})


def ability_full_stage(ctx: Context, model, tokenizer, corpora: Corpora, base_key: str):
    """θ_A,full − θ0: full-parameter CPT on C(L0,A) with the budget of θ_A (merging baselines)."""
    s = ctx.settings
    return full_cpt_stage(ctx, "ability_full", keys.ability_full_config(s), model, tokenizer, base_key, corpora.ability,
                          s.extract.tokens, s.extract.full_lr, "baselines: full CPT on C(L0,A)", {})


def cpt_all_stage(ctx: Context, model, tokenizer, corpora: Corpora, base_key: str):
    """The training baseline: full CPT of θ0 on C(Lj) ∪ C(L0,A) with MAET's total token budget,
    mixed by tokens exactly: the ability text gets θ_A's budget (extract.tokens), C(Lj) the rest."""
    s = ctx.settings
    total = derived.maet_training_tokens(s)
    parts = [(corpora.ability, s.extract.tokens), (corpora.language, total - s.extract.tokens)]
    batches = data.mixed_batches(parts, tokenizer, batch_size=s.train.batch_size, seq_len=s.train.seq_len, seed=s.seed)
    return full_cpt_stage(ctx, "cpt_all", keys.cpt_all_config(s), model, tokenizer, base_key, [], total,
                          s.language.lr, f"baselines: CPT on {s.lang.code} + ability text",
                          {"lang": s.lang.code, "ability_tokens": s.extract.tokens}, batches)


# ----------------------------------------------------------------------------- stage 3 + 4
def transfer_stage(ctx: Context, ability_delta, language_delta) -> tuple[dict[str, float], list[str], RowDelta]:
    """(s_t of every ability tensor, the tensors that keep any row, M_T ⊙ R(A)). With
    transfer.granularity=row the rule selects single key rows by their own cosine."""
    start, t = time.perf_counter(), ctx.settings.transfer
    if ability_delta is None:
        return {}, [], {}
    similarity = transfer.tensor_similarity(ability_delta, language_delta or {}, t.similarity)
    scores = similarity if t.granularity == "tensor" else transfer.row_similarity(ability_delta, language_delta or {})
    keep = transfer.kept_rows(ability_delta, transfer.select_tensors(scores, t.select, t.tau, t.keep))
    transferred = transfer.masked(ability_delta, keep)
    ctx.record("transfer", False, start)
    return similarity, list(transferred), transferred


def eval_tasks(ctx: Context, corpora: Corpora) -> tuple[list[dict | str], Path | None]:  # pragma: no mutate block
    """(the lm-eval tasks of this job, our task folder or None): the benchmark in every eval
    language (MGSM: task names in our folder; the world's benchmark: configs), held-out text."""
    s, work, folder = ctx.settings, ctx.cache.root / "data", None
    if s.eval.benchmark == "arith":
        work = work / world.world_fingerprint(s.world)
        tasks = [evaluate.arith_task(code, ctx.world.benchmark[code], work, s.eval) for code in s.eval.langs]
    elif s.eval.benchmark == "task":
        tasks = [evaluate.task_name(s.eval, code) for code in s.eval.langs]
    else:
        folder, tasks = evaluate.task_folder([evaluate.mgsm_task(s.eval.task_family, code, Path(s.paths.data_dir),
                                                                 work, s.eval) for code in s.eval.langs], work)
    if s.eval.heldout:
        tasks.append(evaluate.heldout_task(s.lang.code, corpora.heldout, work))
    return tasks, folder


def evaluate_stage(ctx: Context, model, tokenizer, corpora: Corpora, model_key: str,
                   name: str) -> tuple[dict, list[dict]]:  # pragma: no mutate block
    """(metrics, predictions) of the model as it is now, recorded as stage `name`."""
    s, start = ctx.settings, time.perf_counter()
    config = keys.evaluate_config(s)
    key = artifact_key("evaluate", config, {"model": model_key})
    folder = ctx.cache.path("evaluate", key)

    def load():
        predictions = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        return ctx.cache.meta("evaluate", key)["metrics"], predictions

    def compute():
        model.eval()
        with console.muted():  # lm-eval's bars and warnings: into <run dir>/console.log when report.quiet
            tasks, task_dir = eval_tasks(ctx, corpora)
            results = evaluate.run_lm_eval(model, tokenizer, tasks, s.eval, include_path=task_dir)
        if results is None:  # rank k > 0 of a data-parallel evaluation: rank 0 scores and publishes
            return None
        metrics, predictions = evaluate.summarize(results, s.eval)
        ctx.cache.save("evaluate", key, {"stage": "evaluate", "config": config, "metrics": metrics},
                       write_extra=lambda tmp: evaluate.write_jsonl(predictions, tmp / "predictions.jsonl"))
        label = name.removeprefix("evaluate").strip("/") or s.method.name  # maet, base, language_only, ...
        with console.muted():  # lm-eval's own files (timestamped: beside ours in the run dir, not in the cache)
            lm_eval_files.save_standard(results, Path(s.paths.output_dir) / lm_eval_files.FOLDER / (label + ctx.suffix),
                                        s.model.name)
        return metrics, predictions

    (metrics, predictions), cached = ctx.cache.cached("evaluate", key, load, compute)
    ctx.record(name, cached, start, key)
    return metrics, predictions


# ----------------------------------------------------------------------------- models to evaluate
@dataclass
class Artifacts:
    """Deltas of one seed, with their cache keys (None where the job does not need them)."""
    base_key: str
    mask: Mask | None = None
    ability: RowDelta | None = None
    theta_a: RowDelta | None = None
    ability_key: str | None = None
    language: DenseDelta | None = None
    language_key: str | None = None
    oracle: DenseDelta | None = None
    oracle_key: str | None = None
    ability_full: DenseDelta | None = None
    ability_full_key: str | None = None
    cpt_all: DenseDelta | None = None
    cpt_all_key: str | None = None
    kept: list[str] = field(default_factory=list)
    transferred: RowDelta | None = None  # M_T ⊙ R(A)


def variant_weights(name: str, s: Settings, base: dict[str, torch.Tensor], a: Artifacts):
    """(new tensor values, model key) of a method or a reference model of the testbed table."""
    inputs = {"base": a.base_key}
    if name == "ability":  # θ_A: the model trained on English ability text (key rows only)
        weights = METHODS["ability_only"](Deltas(base, ability=a.theta_a), {})
        return weights, artifact_key("model", {"variant": "theta_a"}, inputs | {"ability": a.ability_key})
    if name == "oracle":  # θ0 + its full-parameter delta, as the ability_full baseline adds its own
        weights = METHODS["ability_full"](Deltas(base, ability_full=a.oracle), {})
        return weights, artifact_key("model", {"variant": "oracle"}, inputs | {"oracle": a.oracle_key})
    method, m = METHODS[name], s.merge
    deltas = Deltas(base, a.language, a.ability, a.transferred, a.ability_full, a.cpt_all)
    values = dataclasses.asdict(m) | {"seed": s.seed}
    weights = method(deltas, values)
    config = {"method": name, "params": {p: values[p] for p in method.params}}  # e.g. layer_swap's swap_k
    if method.tunable:
        config |= {"merge": dataclasses.asdict(m), "transfer": dataclasses.asdict(s.transfer), "seed": s.seed}
    by_need = {"ability": a.ability_key, "language": a.language_key, "ability_full": a.ability_full_key,
               "cpt_all": a.cpt_all_key}
    inputs |= {need: by_need[need] for need in sorted(method.needs)}
    return weights, artifact_key("model", config, inputs)


def seed_artifacts(ctx: Context, model, tokenizer, corpora: Corpora, base_key: str, variants: list[str]) -> Artifacts:
    """Every stage output the variants need, for the seed of `ctx`."""
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

