"""lm-eval's own output files beside ours: `results_<date>.json` (aggregated) and
`samples_<task>_<date>.jsonl` (per item), written by lm-eval's `EvaluationTracker` exactly as
`lm_eval --output_path <dir> --log_samples` writes them, so lm-eval's tools and users read them.

They are written into the run dir (`<run dir>/lm_eval/<evaluated model>[/seed<k>]/<model name>/`)
when an evaluation runs; an evaluation read from the cache has none (they hold dates and timings,
and cache entries are bit-for-bit reproducible: tests/test_crash_resume.py).
"""

from __future__ import annotations

import re
from pathlib import Path

FOLDER = "lm_eval"


def save_standard(results: dict, folder: Path, model_name: str) -> None:
    """Write lm-eval's results and samples files of one `simple_evaluate` output under
    `folder/<model_name>/`. Consumes `results` (lm-eval's writer pops and sanitizes in place)."""
    from lm_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=str(folder))
    tracker.general_config_tracker.model_name = model_name
    tracker.general_config_tracker.model_name_sanitized = re.sub(r"[^\w.-]+", "__", model_name)
    samples = results.pop("samples", {})
    tracker.save_results_aggregated(results=results, samples=samples)
    for task_name in results.get("configs", {}):
        if task_name in samples:
            tracker.save_results_samples(task_name=task_name, samples=samples[task_name])


def results_files(run_dir: Path) -> list[Path]:
    """Every lm-eval results file of a run dir (the small aggregated ones, not the samples)."""
    return sorted((run_dir / FOLDER).rglob("results_*.json"))
