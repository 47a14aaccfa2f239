"""`metrics.json`, the record of one job: its schema, typed, and the one way to read it.

`maet.reporting.summary.job_summary` writes a `Summary`; the sweep report, the dashboard, the
comparison of two runs, the coefficient search and the out-of-core export read it through `read`
and the accessors below. Metric names: `<benchmark>_<lang>` is the accuracy on the benchmark in a
language (the headline is the target language's; `<benchmark>_<source_lang>` the retention of
the ability in the source language), `<benchmark>_<lang>/n` its item count,
`heldout_<lang>/bits_per_byte` the LM loss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict


def metric_name(benchmark: str, code: str) -> str:
    """Accuracy on `benchmark` in language `code` (e.g. arith_sw)."""
    return f"{benchmark}_{code}"


@dataclass
class StageRecord:
    """One stage of the job (`stages` of metrics.json, by stage name, `/seed<k>` for replication k > 0)."""
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
    final_loss: float | None = None  # training loss at the last step of the stage's (last) loop, also when cached


class Cell(TypedDict):
    """An accuracy over replications x items (fractions in [0, 1])."""
    mean: float
    low: float
    high: float
    per_seed: list[float]
    se: float
    df: float


class Paired(TypedDict):
    """A paired difference `a − b` on the same replications and items (`maet.evaluation.stats`)."""
    diff: float
    low: float
    high: float
    p: float
    se: float
    df: float
    replications: int
    n: int
    wins: int
    losses: int
    resolves: float


class Comparison(Paired):
    """The job's method against another evaluated model, with Holm's p across the job's comparisons."""
    a: str
    b: str
    p_holm: float
    resolves_holm: float


# A testbed row: {"model": name, "seeds": replications, "<benchmark>_<lang>": Cell for every eval
# language, "vs_<reference>": Paired in the target language, "heldout_<lang>/bits_per_byte": float}.
TestbedRow = dict


class Compute(TypedDict):
    tokens: int          # training tokens of every stage the method needs, per seed
    flops: float         # ≈ 6 · params · tokens
    per_stage: dict[str, int]
    cpt_all_tokens: int  # MAET's total training budget, the training baseline's
    vs_cpt_all: float
    note: str


class Transfer(TypedDict):
    similarity: dict[str, float]  # s_t of every ability tensor (first seed)
    kept: list[str]               # the tensors M_T keeps
    tensors: list[dict]           # one row per ability tensor (pipeline.tensor_rows)


class Correct(TypedDict):
    items: list[str]              # item ids every model scored in every replication
    models: dict[str, list[str]]  # model -> one 0/1 string per replication over `items`


class Summary(TypedDict):
    model: str
    ability: str
    lang: str
    source_lang: str
    method: str
    alpha: float
    beta: float
    seed: int
    seeds: int
    random_seeds: dict[str, int]
    replications: list[dict]      # per replication: stage seed, base seed, base key
    base_random: bool
    base_note: str
    estimator: str
    headline: str                 # the metric name of the target-language accuracy
    split: str
    metrics: dict[str, float]     # the method's metrics, averaged over replications
    metrics_per_seed: list[dict[str, float]]
    testbed: list[TestbedRow]
    comparisons: list[Comparison]
    correct: Correct
    stages: dict[str, dict]       # StageRecord as a dict
    compute: Compute
    train_tokens: int
    transfer: Transfer
    key_neurons: dict[str, int]   # key rows per tensor (first seed)
    regime: dict


def read(path: str | Path) -> Summary:
    """A job's metrics.json (a run dir or the file itself)."""
    path = Path(path)
    return json.loads((path / "metrics.json" if path.is_dir() else path).read_text())


def headline_value(summary: Summary) -> float:
    """The job's headline: the method's accuracy in the target language (mean over replications)."""
    return float(summary["metrics"][summary["headline"]])


def method_row(summary: Summary) -> TestbedRow:
    """The testbed row of the job's own method."""
    return next(r for r in summary["testbed"] if r["model"] == summary["method"])


def source_cell(summary: Summary, row: TestbedRow) -> Cell | None:
    """The row's accuracy cell in the source language (English retention), None if not evaluated."""
    benchmark = summary["headline"].removesuffix(f"_{summary['lang']}")
    cell = row.get(metric_name(benchmark, summary.get("source_lang", "en")))  # older files: English was the source
    return cell if isinstance(cell, dict) and "mean" in cell else None


def kept_tensors(summary: Summary) -> list[str]:
    """The ability tensors the job transferred (its first seed)."""
    return summary["transfer"]["kept"]
