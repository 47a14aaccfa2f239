"""Sweep reuse: the user's 2x2 sweep `-m merge.alpha=0.5,1.0 lang=sw,bn` vs the same four jobs run
as independent single runs, each with a cache of its own, on the default world.

Both start from a warm base (the pre-trained world model is copied into every fresh cache: it is
built once per machine, not per sweep). The sweep shares the mask and R(A) over all four jobs,
R(Lj) over the two alphas, every reference model's evaluation, and the in-memory base model
(one process). Target: sweep time ≤ 0.6 x the four single runs.

By default the stage budgets are cut (`REDUCED`, same world, model and pipeline) so that the
comparison runs in minutes on a laptop; `--full` uses the default budgets (about 10 min for the
sweep alone on 2 CPU cores).

    python -m benchmarks.sweep [--full] [--cache .cache]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, machine, run_measured, save_results, verdict

ALPHAS, LANGS = ("0.5", "1.0"), ("sw", "bn")
REDUCED = ["locate.tokens=2048", "extract.tokens=16384", "language.tokens=4096", "oracle.tokens=16384",
           "eval.limit=24", "report.seeds=1"]


def fresh_cache(source: Path, folder: Path) -> Path:
    """A cache holding only the pre-trained base models of `source`."""
    folder.mkdir(parents=True)
    if (source / "base").is_dir():
        shutil.copytree(source / "base", folder / "base")
    return folder


def computed_stages(metrics_files: list[Path]) -> int:
    return sum(not r["cached"] for f in metrics_files for r in json.loads(f.read_text())["stages"].values()
               if "seconds" in r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the default budgets instead of REDUCED")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache", help="where the warm base model is")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for every job")
    args = parser.parse_args()
    machine_line = machine()
    common = [*([] if args.full else REDUCED), *args.overrides]
    launch = [sys.executable, str(ROOT / "launch.py")]
    work = Path(tempfile.mkdtemp(prefix="maet-bench-sweep-"))
    try:
        sweep = run_measured([*launch, "-m", f"merge.alpha={','.join(ALPHAS)}", f"lang={','.join(LANGS)}", *common,
                              f"paths.cache_dir={fresh_cache(args.cache, work / 'cache-sweep')}",
                              f"hydra.sweep.dir={work / 'sweep'}"])
        sweep_metrics = sorted((work / "sweep").glob("*/metrics.json"))
        in_memory = sum(json.loads(f.read_text())["stages"]["base"].get("in_memory", False) for f in sweep_metrics)
        print(f"  sweep: {sweep['seconds']:.0f} s", flush=True)
        singles, single_metrics = [], []
        for i, (alpha, lang) in enumerate((a, l) for a in ALPHAS for l in LANGS):
            run = run_measured([*launch, f"merge.alpha={alpha}", f"lang={lang}", *common,
                                f"paths.cache_dir={fresh_cache(args.cache, work / f'cache-{i}')}",
                                f"hydra.run.dir={work / f'single-{i}'}"])
            singles.append(run["seconds"])
            single_metrics.append(work / f"single-{i}" / "metrics.json")
            print(f"  single alpha={alpha} lang={lang}: {run['seconds']:.0f} s", flush=True)
    finally:
        result_dirs = work
    result = {"budgets": "default" if args.full else REDUCED, "sweep_seconds": sweep["seconds"],
              "single_seconds": singles, "ratio": sweep["seconds"] / sum(singles),
              "sweep_jobs": len(sweep_metrics), "sweep_stages_computed": computed_stages(sweep_metrics),
              "singles_stages_computed": computed_stages(single_metrics), "sweep_jobs_with_base_in_memory": in_memory}
    shutil.rmtree(result_dirs, ignore_errors=True)
    print(f"\nsweep reuse, 2x2 (merge.alpha x lang) on the default world, "
          f"{'default' if args.full else 'reduced'} budgets — {machine_line}")
    print(f"sweep {result['sweep_seconds']:.0f} s vs four single runs {sum(singles):.0f} s: ratio {result['ratio']:.2f} "
          f"(target ≤ 0.6: {verdict(result['ratio'] <= 0.6)}); stages computed {result['sweep_stages_computed']} vs "
          f"{result['singles_stages_computed']}; sweep jobs reusing the base model in memory: {in_memory}/{len(sweep_metrics)}")
    save_results("sweep", result, machine_line)


if __name__ == "__main__":
    main()
