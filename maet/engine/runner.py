"""Runs one replication of a job: the declared stages it needs through the cache
(`maet.stages`, `maet.engine.context.cached_stage`), the transfer step (stage 3), and each model
of the testbed built from θ0 and the artifacts, then evaluated (stage 4); the math is in
`maet.method` and `maet.evaluation`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from maet import world
from maet.corpora.roles import Corpora
from maet.engine.context import Context, cached_stage
from maet.evaluation import evaluate, lm_eval_files
from maet.method import transfer
from maet.method.methods import CONTROLS, METHODS, Deltas
from maet.runtime import console
from maet.schema.settings import Settings
from maet.stages import keys
from maet.stages.registry import PRODUCER, Stage, stage_of, stages_for
from maet.store.cache import artifact_key


# ----------------------------------------------------------------------------- stages 1 and 2
@dataclass
class Artifacts:
    """The artifacts of one replication by name (`maet.stages`: "mask", "ability", "theta_a",
    "language", ...; "transferred" after the transfer step) and the cache key of each stage that
    made them ("base": θ0's)."""
    values: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)  # the ability tensors the transfer step kept

    @classmethod
    def on(cls, base_key: str) -> "Artifacts":
        """No artifact yet, on the base θ0 of key `base_key`."""
        return cls(keys={"base": base_key})

    def get(self, artifact: str):
        """An artifact's value; None when this replication did not make it."""
        return self.values.get(artifact)

    def __getattr__(self, name: str):
        """`a.language`: an artifact (None when not made); `a.language_key`: its stage's cache key."""
        if name.startswith("_"):
            raise AttributeError(name)
        return self.keys.get(name.removesuffix("_key")) if name.endswith("_key") else self.values.get(name)


def run_stage(ctx: Context, stage: Stage, model, tokenizer, corpora: Corpora, a: Artifacts) -> None:
    """One declared stage through the cache for the replication of `ctx`; its artifacts and key go into `a`."""
    s = ctx.settings
    read = [name for name in stage.inputs if stage.reads(s, name)]
    inputs = {name: a.get(name) for name in read if name != "base"}
    keys = stage.input_keys(s, {name: a.keys.get(PRODUCER[name]) for name in stage.inputs})
    tensors, key = cached_stage(ctx, stage.name, stage.config(s), keys,
                                lambda: stage.produce(s, model, tokenizer, corpora, inputs))
    a.values |= stage.artifacts(tensors)
    a.keys[stage.name] = key


def seed_artifacts(ctx: Context, model, tokenizer, corpora: Corpora, base_key: str, variants: list[str]) -> Artifacts:
    """Every stage output the variants (methods and reference models) need, for the seed of `ctx`."""
    needs = set().union(*(METHODS[v].needs for v in variants))
    a = Artifacts.on(base_key)
    for stage in stages_for(ctx.settings, needs):
        run_stage(ctx, stage, model, tokenizer, corpora, a)
    return a


def job_variants(s: Settings) -> list[str]:
    """The models a job evaluates: its method, then each reference model (`report.references`), once each."""
    return list(dict.fromkeys([s.method.name, *s.report.references]))


# ----------------------------------------------------------------------------- stages 3 and 4
def row_sources(s: Settings, a: Artifacts) -> dict[str, dict]:
    """The row deltas the transfer step selects from, by the artifact it makes of them: R(A)
    ("transferred"); for a control the job evaluates (method or reference), θ_A,full − θ0 on MAET's
    key rows or on as many random rows per tensor (drawn with the replication's seed)."""
    sources = {"transferred": a.get("ability")}
    full, mask = a.get("ability_full"), a.get("mask")
    evaluated = job_variants(s)
    if "full_key_rows" in evaluated:
        sources[CONTROLS["full_key_rows"]] = transfer.restrict(full, mask)
    if "full_random_rows" in evaluated:
        shapes = {name: full[name].shape for name in mask if name in full}
        sources[CONTROLS["full_random_rows"]] = transfer.restrict(full, transfer.random_rows_like(mask, shapes, s.seed))
    return {made: rows for made, rows in sources.items() if rows is not None}


def transfer_step(ctx: Context, a: Artifacts) -> dict[str, float]:
    """Stage 3: M_T ⊙ R(A) into `a` as "transferred" (and the controls' deltas likewise, `row_sources`);
    the tensors the job's method keeps as `a.kept`, and its s_t of every tensor returned. With
    transfer.granularity=row the rule selects single key rows by their own cosine."""
    start, s = time.perf_counter(), ctx.settings
    t, language = s.transfer, a.get("language") or {}
    similarities = {}
    for made, rows in row_sources(s, a).items():
        similarities[made] = transfer.tensor_similarity(rows, language, t.similarity)
        scores = similarities[made] if t.granularity == "tensor" else transfer.row_similarity(rows, language)
        a.values[made] = transfer.masked(rows, transfer.kept_rows(rows, transfer.select_tensors(scores, t.select,
                                                                                                 t.tau, t.keep)))
    made = CONTROLS.get(s.method.name, "transferred")
    if made not in similarities:
        return {}
    a.kept = list(a.values[made])
    ctx.record("transfer", False, start)
    return similarities[made]


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
def variant_weights(name: str, s: Settings, base: dict[str, torch.Tensor], a: Artifacts):
    """(new tensor values, model key) of a method or a reference model of the testbed table."""
    method, values = METHODS[name], dataclasses.asdict(s.merge) | {"seed": s.seed}
    weights = method(Deltas(base, **a.values), values)
    inputs = {"base": a.keys["base"]}
    if method.reference:  # θ0 + one artifact of a stage: keyed by the artifact and that stage's key
        ((artifact, _),) = method.terms
        stage = stage_of(artifact)
        return weights, artifact_key("model", {"variant": artifact}, inputs | {stage: a.keys[stage]})
    config = {"method": name, "params": {p: values[p] for p in method.params}}  # e.g. layer_swap's swap_k
    if method.tunable:
        config |= {"merge": dataclasses.asdict(s.merge), "transfer": dataclasses.asdict(s.transfer), "seed": s.seed}
    inputs |= {need: a.keys[stage_of(need)] for need in sorted(method.needs)}
    return weights, artifact_key("model", config, inputs)
