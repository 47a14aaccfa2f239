"""One table over every job of a sweep: printed and written at the end of every multirun (the
`SweepReport` Hydra callback), and again on demand: `python -m maet.reporting.report <sweep dir> [--wandb]`,
also over a W&B sweep's runs (`--from-wandb-sweep entity/project/id` downloads them; or the
folder the sweep file's `hydra.run.dir` puts them in) and then `--best-on-test`.

Reads each job's `metrics.json` (jobs without one are listed as failed, not dropped). One row
per job: lang, method, alpha, seed and the job's other swept overrides (`setting`), with the
headline accuracy and its 95% interval, the paired difference against the language-only model,
English accuracy and training compute relative to cpt_all. Jobs that differ only in `seed` are
also pooled (t interval over all their seeds). Written into the sweep dir as `summary.md`,
`summary.csv` and PNG plots (accuracy vs alpha and vs any other swept number, methods per
language); logged to one W&B summary run (a `wandb.Table` and the plots) when the sweep's jobs
were tracked. After an Optuna sweep (tuned on the dev split), the best trial's overrides are
run once more on the test split: the only test number that search reports.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import warnings
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from tabulate import tabulate

from maet.evaluation.stats import ESTIMATOR, interval_text, p_text, percent
from maet.reporting import metrics, plots
from maet.reporting.compare import (
    COMPARISON_COLUMNS,
    chain_markdown,
    chain_steps,
    comparisons,
    comparisons_markdown,
    job_label,
    pooled,
    short_setting,
)
from maet.reporting.metrics import method_row, source_cell
from maet.reporting.summary import TEST_REFERENCES
from maet.reporting.tracking import init_wandb

COLUMNS = ["job", "lang", "method", "alpha", "seed", "setting", "split", "seeds", "accuracy", "low", "high",
           "vs_language_only", "vs_low", "vs_high", "vs_p", "english", "train_tokens", "vs_cpt_all"]
# Keys that have their own column; every other override that varies across the jobs is the row's `setting`.
OWN_COLUMNS = {"lang", "method", "merge.alpha", "seed"}


def job_dirs(sweep: Path) -> list[Path]:
    """Hydra job folders of a multirun dir (those with a .hydra/ record), in job order."""
    jobs = [p.parent.parent for p in sweep.glob("*/.hydra/overrides.yaml")]
    return sorted(jobs, key=lambda p: (len(p.name), p.name))


def job_overrides(job: Path) -> dict[str, str]:
    """`{key: value}` of a job's command-line overrides (`+`/`++` prefixes dropped)."""
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    pairs = (o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)
    return {key: value for key, value in pairs if not key.startswith("hydra.")}


def varying_keys(overrides: list[dict[str, str]]) -> list[str]:
    """Override keys whose value is not the same in every job (what the sweep swept)."""
    keys = list(dict.fromkeys(k for o in overrides for k in o))
    return [k for k in keys if len({o.get(k) for o in overrides}) > 1]


def job_row(summary: metrics.Summary, job: str = "", setting: str = "") -> dict:
    """The numbers of one job's method (its own testbed row)."""
    row = method_row(summary)
    head = row[summary["headline"]]
    english = source_cell(summary, row)  # the ability in the source language (English by default)
    paired = row.get("vs_language_only") or {}
    return {
        "job": job, "lang": summary["lang"], "method": summary["method"], "alpha": summary["alpha"],
        "seed": summary["seed"], "setting": setting, "split": summary.get("split", "test"), "seeds": summary["seeds"],
        "accuracy": head["mean"], "low": head["low"], "high": head["high"],
        "vs_language_only": paired.get("diff"), "vs_low": paired.get("low"), "vs_high": paired.get("high"),
        "vs_p": paired.get("p"), "english": english["mean"] if english else None,
        "train_tokens": summary["compute"]["tokens"], "vs_cpt_all": summary["compute"]["vs_cpt_all"],
        "per_seed": head.get("per_seed", [head["mean"]]), "n": summary["metrics"].get(f"{summary['headline']}/n", 0),
        "references": job_references(summary),
        "replications": tuple((r["seed"], r["base"]) for r in summary.get("replications", [])),
        "base_note": summary.get("base_note", ""), "estimator": summary.get("estimator", ""),
        "correct": _method_correct(summary),
        "regime": summary.get("regime") or {},
        "models_correct": summary.get("correct"),
    }


def _method_correct(summary: metrics.Summary) -> tuple[list[str], list[str]] | None:
    """(item ids, one 0/1 string per replication) of the job's method; None in older metrics.json files."""
    record = summary.get("correct")
    if not record or summary["method"] not in record["models"]:
        return None
    return record["items"], record["models"][summary["method"]]


def collect(sweep: Path) -> tuple[list[dict], list[str]]:
    """(rows of finished jobs, `job <num>: <overrides>` of jobs that wrote no metrics.json)."""
    jobs = job_dirs(sweep)
    overrides = [job_overrides(job) for job in jobs]
    swept = [k for k in varying_keys(overrides) if k not in OWN_COLUMNS]
    rows, failed = [], []
    for job, over in zip(jobs, overrides, strict=True):
        listed = f"job {job.name}: " + " ".join(f"{k}={v}" for k, v in over.items())
        if not (job / "metrics.json").is_file():
            failed.append(listed)
            continue
        try:
            setting = " ".join(f"{k}={over[k]}" for k in swept if k in over)
            rows.append(job_row(metrics.read(job), job.name, setting))
        except (ValueError, KeyError, StopIteration) as err:  # a truncated or foreign metrics.json
            failed.append(f"{listed} (unreadable metrics.json: {type(err).__name__}: {err})")
    rows.sort(key=lambda r: (r["lang"], r["method"], r["setting"], r["alpha"], r["seed"]))
    for row in rows:
        row["label"] = job_label(row, rows)
    return rows, failed


def job_references(summary: metrics.Summary) -> list[dict]:
    """The models a job evaluated beside its method (`report.references`): model, seeds, headline
    accuracy with its interval, English accuracy."""
    out = []
    for r in (r for r in summary["testbed"] if r["model"] != summary["method"]):
        head, english = r[summary["headline"]], source_cell(summary, r)
        out.append({"model": r["model"], "seeds": r.get("seeds", summary["seeds"]), "accuracy": head["mean"],
                    "low": head["low"], "high": head["high"], "english": english["mean"] if english else None})
    return out


def reference_rows(rows: list[dict]) -> list[dict]:
    """One row per distinct (lang, reference model, numbers) over the jobs' rows, with the jobs it
    came from: jobs that share a reference's inputs show it once."""
    out: dict[tuple, dict] = {}
    for row in rows:
        for ref in row.get("references", []):
            entry = {"lang": row["lang"], **ref}
            out.setdefault(tuple(entry.values()), {**entry, "jobs": []})["jobs"].append(row["job"])
    return sorted(out.values(), key=lambda r: (r["lang"], r["model"], r["accuracy"]))


def reference_points(rows: list[dict]) -> list[dict]:
    """The references as curve points: method `<model> (reference)` at their job's setting and alpha."""
    points = {}
    for row in rows:
        for ref in row.get("references", []):
            point = {**row, **ref, "method": f"{ref['model']} (reference)"}
            points.setdefault((row["lang"], point["method"], row["setting"], row["alpha"]), point)
    return list(points.values())


def references_markdown(refs: list[dict]) -> str:
    """The references table under a sweep's summary ('' when the jobs evaluated none)."""
    if not refs:
        return ""
    every: dict[str, set[str]] = {}  # the jobs of each language
    for r in refs:
        every.setdefault(r["lang"], set()).update(r["jobs"])
    body = [[r["lang"], r["model"], r["seeds"], interval_text(r["accuracy"], r["low"], r["high"]), percent(r["english"]),
             f"all {r['lang']}" if set(r["jobs"]) == every[r["lang"]] else ", ".join(r["jobs"])] for r in refs]
    return "\n\nReferences evaluated by the jobs (report.references; identical rows shown once):\n" + tabulate(
        body, headers=["lang", "model", "replications", "accuracy % [95% CI]", "English %", "jobs"], tablefmt="github")


def _paired(r: dict) -> str:
    if r["vs_language_only"] is None:
        return ""
    return f"{interval_text(r['vs_language_only'], r['vs_low'], r['vs_high'], signed=True)} {p_text(r['vs_p'])}"


def intervals_lines(rows: list[dict]) -> str:
    """How the jobs' replications drew the base, and the estimator (each distinct line once)."""
    notes = list(dict.fromkeys(r["base_note"] for r in rows if r.get("base_note")))
    estimators = list(dict.fromkeys(r["estimator"] for r in rows if r.get("estimator"))) or [ESTIMATOR]
    return "\n".join([*(f"Replications: {n}." for n in notes), *(f"Intervals: {e}." for e in estimators)])


def markdown(rows: list[dict], failed: list[str]) -> str:
    show_setting = any(r["setting"] for r in rows)
    setting = (lambda r: [short_setting(r["setting"])]) if show_setting else (lambda r: [])
    body = [[r["lang"], r["method"], *setting(r), r["alpha"], r["seed"], r["seeds"],
             interval_text(r["accuracy"], r["low"], r["high"]),
             _paired(r),
             percent(r["english"]), f"{r['train_tokens']:,}", f"{r['vs_cpt_all']:.2f}"] for r in rows]
    headers = ["lang", "method", *(["setting"] if show_setting else []), "alpha", "seed", "replications",
               "accuracy % [95% CI]", "Δ vs language_only [95% CI]", "English %", "train tokens", "compute / cpt_all"]
    text = tabulate(body, headers=headers, tablefmt="github") + "\n" + intervals_lines(rows)
    dev = [r["job"] for r in rows if r["split"] == "dev"]
    if dev:
        text = f"Accuracy on the dev split (eval.split=dev) in jobs {', '.join(dev)}; never a test number.\n\n" + text
    pool = pooled(rows)
    if pool:
        text += "\n\nPooled over jobs that differ only in seed:\n" + tabulate(
            [[p["lang"], p["method"], *setting(p), p["alpha"], p["jobs"], p["seeds"],
              interval_text(p["accuracy"], p["low"], p["high"])] for p in pool],
            headers=["lang", "method", *(["setting"] if show_setting else []), "alpha", "jobs", "replications",
                     "accuracy % [95% CI]"], tablefmt="github")
    if failed:
        text += "\n\nFailed jobs (no metrics.json):\n" + "\n".join(f"- {f}" for f in failed)
    return text


def regime_markdown(rows: list[dict]) -> str:
    """Each job's regime (its first replication, `maet.method.regime`): ‖Δ‖/‖θ0‖ of every delta and
    the weight disentanglement error of each ability delta with R(Lj); '' when no job measured it."""
    norms = list(dict.fromkeys(k for r in rows for k in (r["regime"].get("relative_norm") or {})))
    errors = list(dict.fromkeys(k for r in rows for k in (r["regime"].get("disentanglement") or {})))
    if not norms and not errors:
        return ""
    body = [[r["label"], *(_figure((r["regime"].get("relative_norm") or {}).get(k)) for k in norms),
             *(_figure(((r["regime"].get("disentanglement") or {}).get(k) or {}).get("error")) for k in errors)]
            for r in rows]
    headers = ["job", *(f"‖{k}‖/‖θ0‖" for k in norms), *(f"disentanglement {k}" for k in errors)]
    return ("\n\nRegime of each job (first replication; disentanglement: 0 = the two deltas add, max 2):\n"
            + tabulate(body, headers=headers, tablefmt="github", disable_numparse=True))


def _figure(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def sweep_plots(rows: list[dict], folder: Path) -> dict[str, Path]:
    """PNG plots of a sweep: accuracy vs alpha and vs every other swept number (the jobs' references
    as lines of their own), methods per language."""
    images = {}
    if len({r["alpha"] for r in rows}) > 1:
        images["sweep/accuracy_vs_alpha"] = plots.curve(rows, "alpha", folder / "accuracy_vs_alpha.png")
    for key, points in numeric_settings(rows + reference_points(rows)).items():
        images[f"sweep/accuracy_vs_{key}"] = plots.curve(points, key, folder / f"accuracy_vs_{key}.png")
    pairs = [(r["lang"], r["method"]) for r in rows]
    if len({r["method"] for r in rows}) > 1 and len(set(pairs)) == len(pairs):  # one bar per (lang, method)
        images["sweep/methods"] = plots.method_bars(rows, folder / "methods.png")
    return images


def numeric_settings(rows: list[dict]) -> dict[str, list[dict]]:
    """For every swept key whose values are all numbers (e.g. locate.ratio): rows with that value as a column."""
    values: dict[str, list[str]] = {}
    for r in rows:
        for pair in r["setting"].split():
            key, value = pair.split("=", 1)
            values.setdefault(key, []).append(value)
    out = {}
    for key, vals in values.items():
        try:
            numbers = [float(v) for v in vals]
        except ValueError:
            continue
        if len(numbers) == len(rows) and len(set(numbers)) > 1:
            out[key] = [{**r, key: x, "setting": _without(r["setting"], key)}
                        for r, x in zip(rows, numbers, strict=True)]
    return out


def _without(setting: str, key: str) -> str:
    return " ".join(pair for pair in setting.split() if not pair.startswith(f"{key}="))


def write(sweep: Path, compare_to: str | None = None, regime: bool = False, chain: list[str] = ()) -> str:
    """Aggregate the sweep dir; write summary.md, summary.csv, comparisons.csv and plots there;
    return the markdown."""
    return build(sweep, compare_to, regime, chain)[0]


def build(sweep: Path, compare_to: str | None = None, regime: bool = False,
          chain: list[str] = ()) -> tuple[str, list[dict], dict[str, Path], list[dict]]:
    """(markdown, rows, plots, comparisons) of a sweep dir, all written into it (summary.md, summary.csv,
    comparisons.csv, plots/); `regime`: with each job's regime table (report.regime_table); `chain`:
    with each job's steps along those models (report.chain)."""
    rows, failed = collect(sweep)
    compared, note = comparisons(rows, compare_to)
    text = markdown(rows, failed) + comparisons_markdown(compared, note) + references_markdown(reference_rows(rows))
    text += chain_markdown(chain_steps(rows, list(chain))) + (regime_markdown(rows) if regime else "")
    (sweep / "summary.md").write_text(text + "\n")
    with open(sweep / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(sweep / "comparisons.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COMPARISON_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(compared)
    images = sweep_plots(rows, sweep / "plots") if rows else {}
    return text, rows, images, compared


def log_summary_run(sweep: Path, rows: list[dict], images: dict[str, Path], tracker: dict,
                    compared: list[dict] = ()) -> None:
    """One W&B run (job_type sweep-summary, the sweep's group) with the table, the comparisons
    (a table, and `compare/<lang>/<a> − <b>/{diff,low,high,p_holm}` summary scalars) and the plots.
    A tracker failure is one warning; the files in the sweep dir are the record."""
    try:
        import wandb

        run = init_wandb(tracker.get("project", "maet"), tracker.get("mode", "offline"), str(sweep),
                         {"sweep_dir": str(sweep), "jobs": len(rows)}, f"summary-{sweep.name}",
                         tracker.get("entity"), tracker.get("group") or sweep.name, job_type="sweep-summary",
                         quiet=True)
        run.log({"sweep/results": wandb.Table(columns=COLUMNS, data=[[r.get(c) for c in COLUMNS] for r in rows]),
                 "sweep/comparisons": wandb.Table(columns=COMPARISON_COLUMNS,
                                                  data=[[c.get(k) for k in COMPARISON_COLUMNS] for c in compared]),
                 **{name: wandb.Image(str(path)) for name, path in images.items()}})
        for c in compared:
            for key in ("diff", "low", "high", "p", "p_holm", "resolves"):
                run.summary[f"compare/{c['lang']}/{c['a']} − {c['b']}/{key}"] = c[key]
        run.finish()
    except Exception as err:
        warnings.warn(f"W&B: could not log the sweep summary run: {err}; {sweep}/summary.csv has the table")


def tracked(config) -> dict | None:
    """The sweep's tracker settings when its jobs log to W&B, else None."""
    tracker = config.get("tracker") or {}
    if tracker.get("name") == "none" or tracker.get("mode") == "disabled":
        return None
    return dict(tracker)


def best_on_test(config, sweep: Path) -> Path | None:
    """After an Optuna sweep: run the best trial's overrides once on the test split (one job in
    `<sweep>/best_on_test`, through the sweep's launcher); returns its run dir."""
    results = sweep / "optimization_results.yaml"
    if not results.is_file():
        return None
    best = (yaml.safe_load(results.read_text()) or {}).get("best_params") or {}
    from maet.reporting.optuna_search import best_trial_command
    from maet.schema.resolvers import PROJECT_ROOT

    command = best_trial_command(config, best, sweep / "best_on_test", PROJECT_ROOT / "launch.py")  # the sweep's launcher
    print(f"\nOptuna best (dev split): {best}; evaluating it once on the test split:")
    return test_run(sweep, command, str(best))


def test_command(overrides: list[str], run_dir: Path) -> list[str]:
    """`python launch.py <overrides>` once on the test split into `run_dir`, with the reference
    models of the paired differences beside it."""
    from maet.schema.resolvers import PROJECT_ROOT

    return [sys.executable, str(PROJECT_ROOT / "launch.py"), *overrides, "eval.split=test",
            f"report.references=[{','.join(TEST_REFERENCES)}]", f"hydra.run.dir={run_dir}"]


def test_run(sweep: Path, command: list[str], label: str) -> Path:
    """Run `command` (one job into `<sweep>/best_on_test` on the test split), print its line and
    append it to summary.md; returns its run dir."""
    run_dir = sweep / "best_on_test"
    print(f"  {' '.join(command[1:])}")
    proc = subprocess.run(command, text=True)
    if proc.returncode != 0:
        warnings.warn(f"the test run of the best trial failed (exit code {proc.returncode}); see {run_dir}")
        return run_dir
    row = job_row(metrics.read(run_dir), "best_on_test")
    line = (f"Best trial on the test split (chosen on dev, evaluated once): {label} -> "
            f"{interval_text(row['accuracy'], row['low'], row['high']).replace(' [', '% [', 1)}, "
            f"vs language_only on the same items {_paired(row) or 'n/a'} ({run_dir})")
    print(line)
    with open(sweep / "summary.md", "a") as fh:
        fh.write(f"\n{line}\n")
    return run_dir


def best_dev_job(sweep: Path) -> tuple[str, list[str]]:
    """(job, its overrides) of the finished job with the highest dev accuracy in a folder of runs
    (a W&B sweep's run dirs); refuses when any job did not score on the dev split."""
    rows = [r for r in collect(sweep)[0] if r["job"] != "best_on_test"]
    if not rows:
        raise SystemExit(f"{sweep}: no finished job (metrics.json) to choose from")
    if any(r["split"] != "dev" for r in rows):
        raise SystemExit(f"{sweep}: jobs scored on the test split; choose on eval.split=dev only")
    best = max(rows, key=lambda r: r["accuracy"])
    overrides = yaml.safe_load((sweep / best["job"] / ".hydra" / "overrides.yaml").read_text()) or []
    keep = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith("hydra.")
            and o.split("=", 1)[0].lstrip("+~") not in ("eval.split", "report.references")]
    return best["job"], keep


def download_wandb_sweep(path: str, folder: Path) -> Path:
    """Each finished run of the W&B sweep `entity/project/sweep_id` as `<folder>/<run id>/` with
    its metrics.json and .hydra/overrides.yaml (the files every job saves with its run)."""
    import wandb

    for run in wandb.Api().sweep(path).runs:
        if run.state != "finished":
            continue
        for name in ("metrics.json", ".hydra/overrides.yaml"):
            run.file(name).download(root=str(folder / run.id), replace=True)
    return folder


class SweepReport(Callback):
    """Hydra callback: at the end of a multirun, print and write the sweep's table and plots, log
    them to a W&B summary run, and after an Optuna search evaluate its best trial on the test split."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if not sweep.is_dir():
            return
        report = config.get("report") or {}
        text, rows, images, compared = build(sweep, report.get("compare_to"), bool(report.get("regime_table")),
                                             list(report.get("chain") or []))
        print(f"\nSweep summary ({sweep}):\n{text}")
        if images:
            print("plots: " + ", ".join(str(p) for p in images.values()))
        tracker = tracked(config)
        if tracker is not None:
            log_summary_run(sweep, rows, images, tracker, compared)
        if "optuna" in str(config.hydra.sweeper.get("_target_", "")):
            best_on_test(config, sweep)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m maet.reporting.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun dir, or a folder of run dirs (a W&B sweep's)")
    parser.add_argument("--wandb", choices=["offline", "online"], help="also log a W&B summary run")
    parser.add_argument("--from-wandb-sweep", metavar="ENTITY/PROJECT/ID",
                        help="first download each finished run of this W&B sweep into sweep_dir")
    parser.add_argument("--compare-to", metavar="LABEL",
                        help="compare this job (a method or a swept value, as report.compare_to) with every other")
    parser.add_argument("--regime", action="store_true", help="also each job's regime table (report.regime_table)")
    parser.add_argument("--chain", default="", help="also each job's steps along these models, comma-separated (report.chain)")
    parser.add_argument("--best-on-test", action="store_true",
                        help="then run the job with the best dev accuracy once on the test split")
    args = parser.parse_args(argv)
    if args.from_wandb_sweep:
        download_wandb_sweep(args.from_wandb_sweep, args.sweep_dir)
    if not args.sweep_dir.is_dir():
        parser.error(f"not a directory: {args.sweep_dir}")
    text, rows, images, compared = build(args.sweep_dir, args.compare_to, args.regime,
                                         [m for m in args.chain.split(",") if m])
    print(text)
    if args.wandb:
        log_summary_run(args.sweep_dir, rows, images, {"mode": args.wandb}, compared)
    if args.best_on_test:
        job, overrides = best_dev_job(args.sweep_dir)
        print(f"\nBest on dev: job {job}; evaluating it once on the test split:")
        test_run(args.sweep_dir, test_command(overrides, args.sweep_dir / "best_on_test"), f"job {job}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
