"""Paired comparisons between the jobs of a sweep: jobs of one language and split that ran the
same replications (stage seeds and bases) are compared on their common items, each against every
other or against the job `report.compare_to` names, with Holm's adjustment across the table;
and jobs that differ only in `seed` pooled as more replications of one setting. Also: whether two
runs of one job agree within their intervals (`python -m maet.reporting.compare RUN_A RUN_B`, e.g. a rerun
on another CPU against the README's run).
"""

from __future__ import annotations

import numpy as np

from maet.evaluation.stats import accuracy, adjust_rows, paired_difference
from maet.reporting import metrics
from maet.reporting.summary import comparisons_table, unbits

COMPARISON_COLUMNS = ["lang", "a", "b", "a_job", "b_job", "diff", "low", "high", "p", "p_holm", "se", "df",
                      "replications", "n", "wins", "losses", "resolves", "resolves_holm", "family"]


def short_setting(setting: str) -> str:
    """`transfer.tau=0.0391773000782` -> `transfer.tau=0.03918` (display only; the CSV keeps all digits)."""
    pairs = []
    for pair in setting.split():
        key, value = pair.split("=", 1)
        try:
            value = f"{float(value):.4g}" if "." in value or "e" in value else value
        except ValueError:
            pass
        pairs.append(f"{key}={value}")
    return " ".join(pairs)


def job_label(row: dict, rows: list[dict]) -> str:
    """`maet ablation=no_subtract`: the method and the swept setting, with alpha and seed where
    they vary between jobs of that method and setting."""
    parts = [row["method"], short_setting(row["setting"]) if row["setting"] else ""]
    same = [r for r in rows if (r["method"], r["setting"]) == (row["method"], row["setting"])]
    for key in ("alpha", "seed"):
        if len({r[key] for r in same}) > 1:
            parts.append(f"{key}={row[key]}")
    return " ".join(p for p in parts if p)


def matches(row: dict, compare_to: str) -> bool:
    """Whether a job is one that `report.compare_to` names: every word of it is a word of the job's
    label or the value of one (`maet`, `ablation=default`, `default`, `alpha=0.0`, `maet alpha=1.0`)."""
    words = row["label"].split()
    words += [w.split("=", 1)[1] for w in words if "=" in w]
    return all(w in words for w in compare_to.split())


def comparisons(rows: list[dict], compare_to: str | None = None) -> tuple[list[dict], str]:
    """(paired differences between the sweep's jobs, a note): jobs of one language and split that
    ran the same replications (stage seeds and bases) are compared on their common items, each
    against every other, or the job(s) `compare_to` names against every other; Holm across the
    rows of each language (the table it is shown in). The note says when `compare_to` names no job."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:  # test-split jobs only: a dev split is for tuning, never for conclusions
        if r.get("correct") and r["replications"] and r["split"] == "test":
            groups.setdefault((r["lang"], r["split"], r["replications"]), []).append(r)
    note = ""
    if compare_to and not any(matches(r, compare_to) for g in groups.values() for r in g):
        labels = sorted({r["label"] for g in groups.values() for r in g})
        note = (f"report.compare_to={compare_to} names no job of this sweep (labels: {', '.join(labels)}); "
                "every pair compared instead.")
        compare_to = None
    out = []
    for (lang, _, _), group in groups.items():
        if compare_to:
            pairs = [(a, b) for a in group if matches(a, compare_to) for b in group if not matches(b, compare_to)]
        else:
            pairs = [(a, b) for i, a in enumerate(group) for b in group[i + 1:]]
        for a, b in pairs:
            items = sorted(set(a["correct"][0]) & set(b["correct"][0]))
            out.append({"lang": lang, "a": a["label"], "b": b["label"], "a_job": a["job"], "b_job": b["job"],
                        **paired_difference(_table(a, items), _table(b, items))})
    for lang in dict.fromkeys(c["lang"] for c in out):
        adjust_rows([c for c in out if c["lang"] == lang])
    return out, note


def _table(row: dict, items: list[str]):
    """The job's `[replications, items]` 0/1 table restricted to `items`."""
    ids, strings = row["correct"]
    full = unbits(strings)
    index = {item: k for k, item in enumerate(ids)}
    return full[:, [index[i] for i in items]]


def comparisons_markdown(compared: list[dict], note: str) -> str:
    """The sweep's comparisons between jobs, one table per language ('' when there are none)."""
    text = f"\n\n{note}" if note else ""
    if not compared:
        return text
    text += ("\n\nPaired differences between the jobs (same language, replications and items; Holm across "
             "each language's rows):")
    for lang in sorted({c["lang"] for c in compared}):
        text += f"\n\n{lang}:\n" + comparisons_table([c for c in compared if c["lang"] == lang], "accuracy")
    return text


def chain_steps(rows: list[dict], chain: list[str]) -> list[dict]:
    """Each job's steps along `chain` (models in order, e.g. θ_A to the merge): every model the job
    evaluated against the one before it, paired on the job's replications and items; Holm across
    each job's steps."""
    out = []
    for r in rows:
        models = (r.get("models_correct") or {}).get("models", {})
        present = [m for m in chain if m in models]
        out += adjust_rows([{"lang": r["lang"], "job": r["label"], "a": after, "b": before,
                             **paired_difference(unbits(models[after]), unbits(models[before]))}
                            for before, after in zip(present, present[1:])])
    return out


def chain_markdown(steps: list[dict]) -> str:
    """The steps of every job, one table per job ('' when there are none)."""
    text = ""
    for job in dict.fromkeys(s["job"] for s in steps):
        text += f"\n\nSteps along report.chain in {job} (paired; Holm across the job's steps):\n" + comparisons_table(
            [s for s in steps if s["job"] == job], "accuracy")
    return text


def pooled(rows: list[dict]) -> list[dict]:
    """Rows that differ only in `seed` pooled into one: their replications stacked (each job's
    seeds draw their own replications), mean and 95% interval over replications x common items.
    Empty when no two jobs differ only in seed."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["lang"], r["method"], r["setting"], r["alpha"]), []).append(r)
    if all(len(g) == 1 for g in groups.values()):
        return []
    out = []
    for (lang, method, setting, alpha), group in groups.items():
        if not all(r.get("correct") for r in group):
            continue
        items = sorted(set.intersection(*(set(r["correct"][0]) for r in group)))
        e = accuracy(np.concatenate([_table(r, items) for r in group]))
        out.append({"lang": lang, "method": method, "setting": setting, "alpha": alpha, "jobs": len(group),
                    "seeds": e.replications, "accuracy": e.mean, "low": e.low, "high": e.high})
    return out


# ----------------------------------------------------------------------------- two runs of one job
def interval_agreement(a: dict, b: dict) -> list[dict]:
    """Every (model, metric) accuracy cell the two jobs' metrics.json share, with both 95%
    intervals and whether they overlap (two honest intervals of one quantity nearly always do:
    a rerun on another CPU is one more draw of the same experiment)."""
    theirs = {r["model"]: r for r in b["testbed"]}
    out = []
    for row in a["testbed"]:
        other = theirs.get(row["model"], {})
        for metric, cell in row.items():
            if isinstance(cell, dict) and "mean" in cell and isinstance(other.get(metric), dict):
                o = other[metric]
                out.append({"model": row["model"], "metric": metric, "a": cell, "b": o,
                            "overlap": cell["low"] <= o["high"] and o["low"] <= cell["high"]})
    return out


def main(argv: list[str]) -> int:
    """`python -m maet.reporting.compare RUN_A RUN_B`: do the intervals of two runs of one job overlap?
    Exit code 1 when a cell's do not."""
    import argparse
    from pathlib import Path

    from tabulate import tabulate

    from maet.evaluation.stats import interval_text

    parser = argparse.ArgumentParser(prog="python -m maet.reporting.compare", description=main.__doc__.split("\n")[0])
    parser.add_argument("runs", nargs=2, type=Path, help="two run dirs (or their metrics.json)")
    args = parser.parse_args(argv)
    a, b = (metrics.read(p) for p in args.runs)
    rows = interval_agreement(a, b)
    print(tabulate([[r["model"], r["metric"], interval_text(r["a"]["mean"], r["a"]["low"], r["a"]["high"]),
                     interval_text(r["b"]["mean"], r["b"]["low"], r["b"]["high"]), "yes" if r["overlap"] else "NO"]
                    for r in rows], headers=["model", "metric", "run A % [95% CI]", "run B % [95% CI]", "overlap"],
                   tablefmt="github"))
    disagree = [r for r in rows if not r["overlap"]]
    print(f"{len(rows) - len(disagree)} of {len(rows)} intervals overlap")
    return 1 if disagree else 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
