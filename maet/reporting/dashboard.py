"""What a job's W&B run holds, as plain values (the tracker only sends them):

- identity: a name that differs whenever the settings differ (method, language, the command-line
  overrides; a hash when they are too long to show), `job_type` = method, tags from the Hydra
  choices, the Hydra choices and overrides in the config;
- curves: the loss and learning rate of every training loop of every stage, each on its own step
  axis (`train/<stage>/<loop>/step`): logged while the loop trains (`maet.runtime.live`), and at
  the end for artifacts read from the cache (the curves their meta.json keeps);
- summary scalars: everything the results tables show (per model and language: mean and 95%
  interval; paired differences vs base and vs language_only: diff, interval, p; compute), with
  stage timings and memory under `stages/`;
- lineage: cache entries this job made (logged) and read (used), and its own results files;
- predictions: one table row per evaluated item (model, seed, response, extracted answer, target,
  correct).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from maet.evaluation import lm_eval_files
from maet.reporting.metrics import Summary, headline_value
from maet.schema.settings import Settings

CHOICE_TAGS = ("ablation", "experiment", "model", "lang")  # Hydra groups whose choice becomes a tag
NOT_IN_NAME = {"method", "lang", "threads", "device"}       # keys a run's name never spells out
NOT_IN_NAME_PREFIXES = ("hydra.", "paths.", "tracker.")
NAME_LIMIT = 64


@dataclass
class Identity:
    name: str
    job_type: str
    tags: list[str]
    choices: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)


def hydra_view() -> tuple[dict[str, str], list[str]]:
    """(group choices, command-line overrides) of the running Hydra job; ({}, []) outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except Exception:  # no Hydra job (a test calling the pipeline directly)
        return {}, []
    choices = {k: str(v) for k, v in hc.runtime.choices.items()
               if v is not None and (not k.startswith("hydra/") or k in ("hydra/launcher", "hydra/sweeper"))}
    return choices, list(hc.overrides.task)


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def run_name(method: str, lang: str, overrides: list[str], limit: int = NAME_LIMIT) -> str:
    """`maet-sw merge.beta=0.5`: method, language and the overrides that set anything else (not
    paths, tracker, threads, device); over `limit` characters, cut and ended by a hash of them all."""
    distinct = [o.lstrip("+~") for o in overrides
                if _key(o) not in NOT_IN_NAME and not _key(o).startswith(NOT_IN_NAME_PREFIXES)]
    name = " ".join([f"{method}-{lang}", *distinct])
    if len(name) <= limit:
        return name
    digest = hashlib.sha256("\n".join(sorted(distinct)).encode()).hexdigest()[:6]
    return f"{name[:limit - 11].rstrip()}... #{digest}"


def identity(s: Settings, choices: dict[str, str], overrides: list[str]) -> Identity:
    """Name, job type (the method), tags (`group:choice` of CHOICE_TAGS, then tracker.tags)."""
    tags = [f"{g}:{choices.get(g, 'default' if g == 'ablation' else s.lang.code if g == 'lang' else 'none')}"
            for g in CHOICE_TAGS]
    return Identity(run_name(s.method.name, s.lang.code, overrides), s.method.name, tags + list(s.tracker.tags),
                    choices, overrides)


# ----------------------------------------------------------------------------- curves
def _slug(text: str) -> str:
    """`extract: θ_A (ability)` -> `theta_a_ability` (the part after the stage's `name:`)."""
    text = text.split(":", 1)[-1].replace("θ", "theta").lower()
    return re.sub(r"[^a-z0-9#]+", "_", text).strip("_").replace("#", "n")


def curve_prefix(stage: str, desc: str) -> str:
    """The W&B prefix of a training loop's curve: `train/<stage>/<loop>` (`train/ability/theta_a_ability`),
    the same whether it is logged live or replayed from the cache."""
    return f"train/{stage}/{_slug(desc)}"


def curve_names(curves: dict[str, dict[str, list]]) -> dict[tuple[str, str], str]:
    """(stage, loop desc) -> its W&B prefix (`curve_prefix`)."""
    return {(stage, desc): curve_prefix(stage, desc) for stage, loops in curves.items() for desc in loops}


def curve_rows(curves: dict[str, dict[str, list]]) -> tuple[list[str], list[dict]]:
    """(W&B prefixes, history rows): row i holds the i-th point of every curve that has one, as
    `<prefix>/step`, `<prefix>/loss`, `<prefix>/lr` (each curve plotted against its own step)."""
    names = curve_names(curves)
    series = [(names[stage, desc], points) for stage, loops in curves.items() for desc, points in loops.items()]
    rows = [{} for _ in range(max((len(p) for _, p in series), default=0))]
    for prefix, points in series:
        for row, (step, loss, lr) in zip(rows, points):
            row |= {f"{prefix}/step": step, f"{prefix}/loss": loss, f"{prefix}/lr": lr}
    return [prefix for prefix, _ in series], rows


# ----------------------------------------------------------------------------- summary scalars
def _cell_scalars(prefix: str, cell: dict) -> dict[str, float]:
    fields = ("mean", "low", "high") if "mean" in cell else ("diff", "low", "high", "p")  # accuracy | paired
    return {f"{prefix}/{f}": cell[f] for f in fields}


def summary_scalars(summary: Summary) -> dict[str, float | int | str | None]:
    """Every number the results tables show, cache-independent: `testbed/<model>/<metric>/{mean,low,
    high}` (95% interval over replications x items), `testbed/<model>/vs_<ref>/{diff,low,high,p}` (paired, target
    language), the method's own as `paired/vs_<ref>/...`, the method against every other model as
    `compare/<a>-<b>/{diff,low,high,p,p_holm,resolves}` (the comparisons table), `compute/*`, and
    `stages/<stage>/*` (seconds, memory, final loss; `stages/total/*`)."""
    out: dict = {"headline": headline_value(summary), **summary["metrics"]}
    for row in summary["testbed"]:
        for key, cell in row.items():
            if isinstance(cell, dict):
                out |= _cell_scalars(f"testbed/{row['model']}/{key}", cell)
                if row["model"] == summary["method"] and key.startswith("vs_"):
                    out |= _cell_scalars(f"paired/{key}", cell)
            elif key.startswith("heldout_"):
                out[f"testbed/{row['model']}/{key}"] = cell
    for row in summary.get("comparisons", []):
        out |= {f"compare/{row['a']}-{row['b']}/{k}": row[k] for k in ("diff", "low", "high", "p", "p_holm", "resolves")}
    c = summary["compute"]
    out |= {"compute/tokens": c["tokens"], "compute/flops": c["flops"], "compute/vs_cpt_all": c["vs_cpt_all"],
            "compute/cpt_all_tokens": c["cpt_all_tokens"], **{f"compute/tokens/{k}": v for k, v in c["per_stage"].items()}}
    for name, record in summary["stages"].items():
        out |= {f"stages/{name}/{k}": record[k] for k in ("seconds", "peak_rss_mib", "peak_gpu_mib", "optimizer_mib",
                                                           "final_loss", "cached") if record.get(k) is not None}
    out["stages/total/seconds"] = round(sum(r["seconds"] for r in summary["stages"].values()), 3)
    out["stages/total/trained_tokens_this_job"] = summary["train_tokens"]  # 0 on a warm re-run (cache-dependent)
    return out


# ----------------------------------------------------------------------------- lineage and files
def lineage(stage_entries: list[tuple[str, str, Path, bool]]) -> dict[str, list[str]]:
    """{"made": names of the cache entries this job computed, "read": those it took from the cache}."""
    return {"made": [n for n, _, _, made in stage_entries if made], "read": [n for n, _, _, made in stage_entries if not made]}


RESULT_FILES = ("metrics.json", "results.md", "config.resolved.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml",
                ".hydra/hydra.yaml")


def result_files(out: Path) -> list[Path]:
    """The job's own record files that exist (logged with the run and as its `results` artifact),
    with lm-eval's aggregated results files (its per-item samples stay in the run dir)."""
    return [out / name for name in RESULT_FILES if (out / name).is_file()] + lm_eval_files.results_files(out)


PREDICTION_COLUMNS = ["model", "seed", "lang", "item", "response", "extracted", "target", "correct"]


def prediction_rows(predictions: list[dict], filter_name: str) -> list[list]:
    """One row per (model, seed, item) under the headline answer filter `filter_name`."""
    rows = []
    for p in predictions:
        if p.get("filter") == filter_name:
            filtered = p.get("filtered")
            extracted = filtered[0] if isinstance(filtered, list) and filtered else filtered
            rows.append([p["model"], p["seed"], p["lang"], p["item"], p["response"], str(extracted),
                         str(p["target"]), p["correct"]])
    return rows
