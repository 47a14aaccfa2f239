"""The summary of a job: what the pipeline collected (`JobResult`) turned into the content of
`metrics.json` (`job_summary`, schema: `maet.reporting.metrics`), the tables printed at the end of
a run, and its pictures.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tabulate import tabulate

from maet.evaluation.stats import (
    ESTIMATOR,
    ONE_REPLICATION,
    accuracy,
    adjust_rows,
    common_items,
    interval_text,
    p_text,
    paired_difference,
    percent,
    score_table,
)
from maet.method.methods import METHODS
from maet.reporting.metrics import StageRecord, Summary, metric_name
from maet.schema.derived import base_is_random, maet_training_tokens
from maet.schema.settings import Settings
from maet.stages.registry import STAGES, stages_for
from maet.store.cache import ArtifactCache


@dataclass
class JobResult:
    metrics: dict[str, float]              # the method's metrics, averaged over seeds
    per_seed: list[dict[str, float]]       # the method's metrics of each seed
    testbed: dict[str, list[dict]]         # variant -> metrics of each seed (method and references)
    items: dict[str, dict[str, list[dict[str, float]]]]  # variant -> eval language -> per replication: item -> correct
    predictions: list[dict]                # every evaluated model's, every seed (with "model" and "seed")
    stages: dict[str, StageRecord]
    similarity: dict[str, float]           # first seed
    kept: list[str]                        # first seed
    tensors: list[dict]                    # first seed: one row per ability tensor (see tensor_rows)
    mask_rows: dict[str, int]
    n_params: int
    regime: dict = dataclasses.field(default_factory=dict)  # first seed: relative norms, disentanglement (maet.method.regime)
    curves: dict[str, dict[str, list]] = dataclasses.field(default_factory=dict)  # stage -> loop -> [[step, loss, lr]]
    replications: list[dict] = dataclasses.field(default_factory=list)  # per replication: seed, base_seed, base key


def headline(s: Settings) -> str:
    """Name of the headline metric: accuracy on the benchmark in the target language."""
    return metric_name(s.eval.benchmark, s.lang.code)


TEST_REFERENCES = ("base", "language_only", "language_beta")  # beside the one test run of a tuned setting
PAIRED_WITH = ("base", "language_only", "language_beta")  # language_beta: θ0 + merge.beta·R(Lj), when a reference


def target_tables(s: Settings, result: JobResult) -> tuple[list[str], dict[str, np.ndarray]]:
    """(item ids every model scored in every replication, model -> its `[replications, items]` 0/1
    table over them) in the target language: what every paired comparison of a job reads."""
    target = {v: result.items[v][s.lang.code] for v in result.items}
    items = common_items(list(target.values()))
    return items, {v: score_table(runs, items) for v, runs in target.items()}


def bits(table: np.ndarray) -> list[str]:
    """A 0/1 table as one string of digits per replication (metrics.json's compact form)."""
    return ["".join("1" if x else "0" for x in row) for row in table]


def unbits(rows: list[str]) -> np.ndarray:
    """Inverse of `bits`."""
    return np.array([[c == "1" for c in row] for row in rows], dtype=float)


def testbed_rows(s: Settings, result: JobResult) -> list[dict]:
    """One row per evaluated model: accuracy in each eval language (mean and 95% interval over
    replications x items, `maet.evaluation.stats`), the paired difference in the target language against the
    base and the language-only model (same replications and items), and held-out bits per byte."""
    rows = []
    _, target = target_tables(s, result)
    for variant, runs in result.testbed.items():
        row = {"model": variant, "seeds": len(runs)}
        for code in s.eval.langs:
            name = metric_name(s.eval.benchmark, code)
            per_lang = result.items[variant][code]
            estimate = accuracy(score_table(per_lang, common_items([per_lang])))
            row[name] = {"mean": estimate.mean, "low": estimate.low, "high": estimate.high,
                         "per_seed": [r[name] for r in runs], "se": estimate.se, "df": estimate.df}
        for ref in PAIRED_WITH:
            if ref in target and ref != variant:
                row[f"vs_{ref}"] = paired_difference(target[variant], target[ref])
        bpb = f"heldout_{s.lang.code}/bits_per_byte"
        if bpb in runs[0]:
            row[bpb] = sum(r[bpb] for r in runs) / len(runs)
        rows.append(row)
    return rows


def training_compute(s: Settings, result: JobResult) -> dict:
    """Training compute of the method for one seed: tokens of every stage it needs (cached ones
    counted at what they cost when made), FLOPs ≈ 6 · params · tokens, and the ratio to the
    training baseline cpt_all, whose budget is MAET's total training tokens."""
    stages = {stage.name for stage in stages_for(s, METHODS[s.method.name].needs)}
    per_stage = {st: result.stages[st].cost_tokens for st in sorted(stages) if st in result.stages}
    tokens = sum(per_stage.values())
    return {"tokens": tokens, "flops": 6 * result.n_params * tokens, "per_stage": per_stage,
            "cpt_all_tokens": maet_training_tokens(s), "vs_cpt_all": tokens / maet_training_tokens(s),
            "note": "per seed; cached stages count at their cost, once per sweep in wall-clock"}


def random_seeds(s: Settings) -> dict[str, int]:
    """Every seed a job uses, by config key: `seed` (data order, training, random locate, DARE;
    seed+k for replication k of `report.seeds`), `eval.seed` (lm-eval), the world's and the scratch
    base's (model.scratch.seed+seed+k for replication k unless report.shared_base)."""
    return {"seed": s.seed, "report.seeds": s.report.seeds, "eval.seed": s.eval.seed, "world.seed": s.world.seed,
            "model.scratch.seed": s.model.scratch.seed, "report.shared_base": s.report.shared_base}


def base_note(s: Settings) -> str:
    """How the base enters the replications, in words (printed under every table it affects)."""
    n = s.report.seeds
    if s.model.source != "scratch":
        return (f"{n} of the stage seeds; the base is a pretrained model ({s.model.source}: "
                f"{s.model.path}), fixed by nature: not a random factor")
    if not base_is_random(s):
        return (f"{n} on one base draw (report.shared_base=true, base seed {s.model.scratch.seed}): "
                f"the base's variance is not in these intervals")
    first = s.model.scratch.seed + s.seed
    return (f"{n}, each with its own base pre-training (base seeds {first}..{first + n - 1}) "
            f"and stage seeds ({s.seed}..{s.seed + n - 1})")


def comparisons(s: Settings, result: JobResult) -> list[dict]:
    """The method against every other evaluated model in the target language, on the same
    replications and items: difference, 95% interval, p and Holm's p across these rows, and the
    smallest difference each comparison resolves (80% power)."""
    _, target = target_tables(s, result)
    method = s.method.name
    return adjust_rows([{"a": method, "b": other, **paired_difference(target[method], target[other])}
                        for other in target if other != method])


def correct_record(s: Settings, result: JobResult) -> dict:
    """Per-item correctness in the target language of every evaluated model, as one string of 0/1
    per replication over `items` (what the sweep report pairs across jobs)."""
    items, target = target_tables(s, result)
    return {"items": items, "models": {v: bits(table) for v, table in target.items()}}


def job_summary(s: Settings, result: JobResult) -> Summary:
    """The content of metrics.json."""
    stages = {name: dataclasses.asdict(r) for name, r in result.stages.items()}
    return {
        "model": s.model.name, "ability": s.ability.name, "lang": s.lang.code, "source_lang": s.source_lang.code,
        "method": s.method.name,
        "alpha": s.merge.alpha, "beta": s.merge.beta, "seed": s.seed, "seeds": s.report.seeds,
        "random_seeds": random_seeds(s), "replications": result.replications, "base_random": base_is_random(s),
        "base_note": base_note(s), "estimator": ESTIMATOR if s.report.seeds > 1 else ONE_REPLICATION,
        "headline": headline(s), "split": s.eval.split, "metrics": result.metrics,
        "metrics_per_seed": result.per_seed,
        "testbed": testbed_rows(s, result), "comparisons": comparisons(s, result),
        "correct": correct_record(s, result),
        "stages": stages, "compute": training_compute(s, result),
        "train_tokens": sum(r.train_tokens for r in result.stages.values() if not r.cached),
        "transfer": {"similarity": result.similarity, "kept": result.kept, "tensors": result.tensors},
        "key_neurons": result.mask_rows,
        "regime": result.regime,
    }


def testbed_flat(summary: Summary) -> tuple[list[str], list[list]]:
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


def testbed_table(summary: Summary, fmt: str = "github") -> str:
    """Accuracy (%) of every evaluated model in each language with 95% intervals, and bits per
    byte of held-out target-language text."""
    rows = summary["testbed"]
    acc_cols = [k for k in rows[0] if isinstance(rows[0][k], dict) and "mean" in rows[0][k]]
    extra = [k for k in rows[0] if k.startswith("heldout_")]
    body = [[r["model"], *[interval_text(r[c]["mean"], r[c]["low"], r[c]["high"], width=5) for c in acc_cols],
             *[f"{r[c]:.3f}" for c in extra]] for r in rows]
    headers = ["model", *[f"{c} % [95% CI]" for c in acc_cols], *extra]
    return tabulate(body, headers=headers, tablefmt=fmt)


def comparisons_table(rows: list[dict], headline_name: str, fmt: str = "github") -> str:
    """Paired differences `a − b` in points with 95% intervals, p, Holm's p across the rows, and
    the smallest difference each row resolves (80% power); then one line on what the table resolves."""
    if not rows:
        return ""
    body = [[f"{r['a']} − {r['b']}", interval_text(r["diff"], r["low"], r["high"], signed=True, width=5),
             p_text(r["p"]), p_text(r["p_holm"]), f"{r['wins']}/{r['losses']}", percent(r["resolves"])]
            for r in rows]
    table = tabulate(body, headers=[f"Δ {headline_name}", "points [95% CI]", "p", "p (Holm)", "wins/losses",
                                    "resolves ≥"], tablefmt=fmt)
    return table + "\n" + resolution_line(rows)


def resolution_line(rows: list[dict]) -> str:
    """`Resolution: ... 3.1-12.0 points ...`: the range of the rows' detectable differences, for one
    comparison and at Holm's strictest step."""
    def span(key: str) -> str:
        found = [r[key] for r in rows if r.get(key) == r.get(key) and r.get(key) is not None]
        if not found:
            return "n/a"
        low, high = min(found), max(found)
        return percent(low) if abs(high - low) < 5e-4 else f"{percent(low)}-{percent(high)}"

    return (f"Resolution (80% power, from each row's measured variance components): a true difference of "
            f"{span('resolves')} points at p < 0.05 for one comparison, {span('resolves_holm')} points at Holm's "
            f"strictest step (p < 0.05/{rows[0].get('family', len(rows))}); a row whose interval spans 0 does not "
            f"resolve its difference.")


def stage_table(summary: Summary) -> str:
    """Stages grouped over seeds and models: computed / cached counts, seconds, training tokens,
    peak memory (RSS, GPU), optimizer state (largest over the group), final training loss (mean
    over the group's seeds; also for an artifact read from the cache)."""
    groups: dict[str, list[dict]] = {}
    for name, record in summary["stages"].items():
        groups.setdefault(name.split("/")[0], []).append(record)
    rows = [[stage, sum(not r["cached"] for r in records), sum(r["cached"] for r in records),
             f"{sum(r['seconds'] for r in records):.1f}", sum(r["train_tokens"] for r in records),
             f"{max(r.get('peak_rss_mib', 0) for r in records):.0f}", f"{max(r.get('peak_gpu_mib', 0) for r in records):.0f}",
             f"{max(r.get('optimizer_mib', 0) for r in records):.2f}", _mean_text([r.get("final_loss") for r in records])]
            for stage, records in groups.items()]
    return tabulate(rows, headers=["stage", "computed", "cached", "seconds", "train tokens", "peak RSS MiB",
                                   "peak GPU MiB", "optimizer MiB", "final loss"], tablefmt="github")


def _mean_text(values: list[float | None]) -> str:
    """`1.234`: the mean of the values that exist, "" if none does."""
    present = [v for v in values if v is not None]
    return f"{sum(present) / len(present):.3f}" if present else ""


def results_table(summary: Summary) -> str:
    """The human-readable end of a run: models x languages, then the stages."""
    head = (f"MAET job: method={summary['method']} lang={summary['lang']} alpha={summary['alpha']} "
            f"beta={summary['beta']} model={summary['model']} replications={summary['seeds']} "
            f"(seeds from {summary['seed']})")
    lines = [head, testbed_table(summary), intervals_note(summary)]
    if summary.get("comparisons"):
        lines += ["", comparisons_table(summary["comparisons"], summary["headline"])]
    lines += ["", stage_table(summary)]
    c = summary["compute"]
    lines.append(f"training compute of {summary['method']} (per seed): {c['tokens']:,} tokens, "
                 f"{c['flops']:.2e} FLOPs, {c['vs_cpt_all']:.2f}x the cpt_all budget of {c['cpt_all_tokens']:,} tokens")
    total = len(summary["transfer"]["similarity"])
    if total:
        rows = sum(t.get("kept_rows", 0) for t in summary["transfer"]["tensors"])
        all_rows = sum(t["key_rows"] for t in summary["transfer"]["tensors"])
        lines.append(f"transfer (seed {summary['seed']}): kept {len(summary['transfer']['kept'])}/{total} ability "
                     f"tensors, {rows}/{all_rows} key rows")
    lines += regime_lines(summary.get("regime") or {}, summary["seed"])
    return "\n".join(lines)


def intervals_note(summary: Summary) -> str:
    """The lines under an accuracy table: the replications (how the base enters) and the estimator."""
    return f"Replications: {summary.get('base_note', '')}.\nIntervals: {summary.get('estimator', '')}."


def regime_lines(regime: dict, seed: int) -> list[str]:
    """The regime of the deltas in words: relative norms and disentanglement errors (maet.method.regime)."""
    lines = []
    if regime.get("relative_norm"):
        norms = ", ".join(f"{k} {v:.3f}" for k, v in regime["relative_norm"].items())
        lines.append(f"‖Δ‖/‖θ0‖ (seed {seed}, over the entries each delta touches): {norms}")
    for k, d in (regime.get("disentanglement") or {}).items():
        lines.append(f"weight disentanglement error of {k} with R(Lj) (seed {seed}): {d['error']:.3f} "
                     f"(ability inputs {d['ability']:.3f}, language inputs {d['language']:.3f}; 0 = additive, max 2)")
    return lines


def stage_artifacts(summary: Summary, cache: ArtifactCache) -> list[tuple[str, str, Path, bool]]:
    """(name, type, cache folder, made by this job) of every weight artifact this job used (W&B
    references, no upload); made: computed here rather than read from the cache."""
    found: dict[str, list] = {}
    for name, record in summary["stages"].items():
        stage = name.split("/")[0]
        if stage in {"base", *STAGES} and record["key"] and cache.exists(stage, record["key"]):
            entry = found.setdefault(f"{stage}-{record['key']}", [
                "model" if stage == "base" else STAGES[stage].kind, cache.path(stage, record["key"]), False])
            entry[2] = entry[2] or not record["cached"]
    return [(name, kind, path, made) for name, (kind, path, made) in found.items()]


def run_plots(summary: Summary, folder: Path) -> dict[str, Path]:
    """PNG pictures of one run: key neurons and R(A)/R(Lj) similarity per layer x module."""
    from maet.reporting import plots  # matplotlib only where pictures are drawn

    images = {}
    if summary["key_neurons"]:
        images["plots/key_neurons"] = plots.key_neuron_plot(summary["key_neurons"], folder / "key_neurons.png")
    if summary["transfer"]["similarity"]:
        images["plots/similarity"] = plots.similarity_plot(summary["transfer"]["similarity"],
                                                           summary["transfer"]["kept"], folder / "similarity.png")
    return images


def paired_text(cell: dict | None) -> str:
    """`+3.1 [-2.0, +8.2] p=0.250`: a paired difference in points; "" for None."""
    if cell is None:
        return ""
    return f"{interval_text(cell['diff'], cell['low'], cell['high'], signed=True, width=5)} {p_text(cell['p'])}"
