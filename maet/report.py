"""One table over every job of a sweep: printed and written at the end of every multirun (the
`SweepReport` Hydra callback), and again on demand: `python -m maet.report <sweep dir>`.

Reads each job's `metrics.json` (jobs without one are listed as failed, not dropped), prints a
table of lang x method x alpha with accuracy and its 95% interval, the paired difference
against the language-only model, and training compute relative to cpt_all, and writes it as
`summary.md` and `summary.csv` into the sweep dir.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from tabulate import tabulate

COLUMNS = ["lang", "method", "alpha", "seeds", "accuracy", "low", "high", "vs_language_only", "vs_low", "vs_high",
           "vs_p", "english", "train_tokens", "vs_cpt_all"]


def job_dirs(sweep: Path) -> list[Path]:
    """Hydra job folders of a multirun dir (those with a .hydra/ record), in job order."""
    jobs = [p.parent.parent for p in sweep.glob("*/.hydra/overrides.yaml")]
    return sorted(jobs, key=lambda p: (len(p.name), p.name))


def job_row(summary: dict) -> dict:
    """The numbers of one job's method (its own testbed row)."""
    row = next(r for r in summary["testbed"] if r["model"] == summary["method"])
    head = row[summary["headline"]]
    english = next((v for k, v in row.items() if isinstance(v, dict) and k.endswith("_en") and "mean" in v), None)
    paired = row.get("vs_language_only") or {}
    return {
        "lang": summary["lang"], "method": summary["method"], "alpha": summary["alpha"], "seeds": summary["seeds"],
        "accuracy": head["mean"], "low": head["low"], "high": head["high"],
        "vs_language_only": paired.get("diff"), "vs_low": paired.get("low"), "vs_high": paired.get("high"),
        "vs_p": paired.get("p"), "english": english["mean"] if english else None,
        "train_tokens": summary["compute"]["tokens"], "vs_cpt_all": summary["compute"]["vs_cpt_all"],
    }


def collect(sweep: Path) -> tuple[list[dict], list[str]]:
    """(rows of finished jobs, overrides of jobs that wrote no metrics.json)."""
    rows, failed = [], []
    for job in job_dirs(sweep):
        metrics = job / "metrics.json"
        if metrics.is_file():
            rows.append(job_row(json.loads(metrics.read_text())))
        else:
            overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
            failed.append(f"job {job.name}: " + " ".join(overrides))
    rows.sort(key=lambda r: (r["lang"], r["method"], r["alpha"]))
    return rows, failed


def _pct(x: float | None, signed: bool = False) -> str:
    return "" if x is None else (f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}")


def markdown(rows: list[dict], failed: list[str]) -> str:
    body = [[r["lang"], r["method"], r["alpha"], r["seeds"],
             f"{_pct(r['accuracy'])} [{_pct(r['low'])}, {_pct(r['high'])}]",
             "" if r["vs_language_only"] is None else
             f"{_pct(r['vs_language_only'], True)} [{_pct(r['vs_low'], True)}, {_pct(r['vs_high'], True)}] p={r['vs_p']:.3f}",
             _pct(r["english"]), f"{r['train_tokens']:,}", f"{r['vs_cpt_all']:.2f}"] for r in rows]
    headers = ["lang", "method", "alpha", "seeds", "accuracy % [95% CI]", "Δ vs language_only [95% CI]",
               "English %", "train tokens", "compute / cpt_all"]
    text = tabulate(body, headers=headers, tablefmt="github")
    if failed:
        text += "\n\nFailed jobs (no metrics.json):\n" + "\n".join(f"- {f}" for f in failed)
    return text


def write(sweep: Path) -> str:
    """Aggregate the sweep dir; write summary.md / summary.csv there; return the markdown."""
    rows, failed = collect(sweep)
    text = markdown(rows, failed)
    (sweep / "summary.md").write_text(text + "\n")
    with open(sweep / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return text


class SweepReport(Callback):
    """Hydra callback: at the end of a multirun, print and write the sweep's table."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if sweep.is_dir():
            print(f"\nSweep summary ({sweep}):\n" + write(sweep))


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m maet.report <sweep dir>", file=sys.stderr)
        return 2
    print(write(Path(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
