"""The coefficient search (`+sweep=optuna`) at scale: resumable, and its test run on the launcher.

- `hydra_plugins.maet_optuna.ResumableOptunaSweeper` (Hydra loads sweepers from the
  `hydra_plugins` namespace only; its logic is `resumed` here): hydra-optuna-sweeper's sweeper,
  resumable from the sweep dir itself. Run the same command again with `hydra.sweep.dir=<that
  dir>` after a crash or a SLURM timeout: its finished jobs (overrides + metrics.json) enter the
  study as completed trials, only the trials still missing to `n_trials` run, numbered after the
  existing job folders, and the cache gives every artifact of a finished trial for free. (Optuna's
  own sqlite storage fails with the installed optuna 2.10 + SQLAlchemy 2: `assert version is not
  None` in RDBStorage; hydra-optuna-sweeper 1.3 needs optuna < 3.)
- `best_trial_command`: the best trial's single test run as a one-job multirun through the sweep's
  own launcher (`hydra/launcher` and its `hydra.launcher.*` overrides): on SLURM it is one more
  SLURM job, not a process on the submitting host.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from maet.reporting import metrics

# Keys the test run sets itself (the preset's dev-split settings do not apply to it).
TEST_RUN_KEYS = ("eval.split", "eval.dev_size", "report.seeds", "report.references")


def _cast(value: str, distribution):
    """An override's value as the distribution's type (int, float, or one of its choices)."""
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return next(c for c in choices if str(c) == value)
    return int(value) if "Int" in type(distribution).__name__ else float(value)


def finished_trials(sweep: Path, distributions: dict) -> tuple[list, int]:
    """(the sweep dir's finished jobs as completed Optuna trials, the next free job number): each
    job's searched parameters from `.hydra/overrides.yaml`, its objective (the headline) from
    `metrics.json`; a job without metrics.json (killed, failed) is not a trial but keeps its number."""
    import optuna

    trials, numbers = [], [-1]
    for overrides in sweep.glob("[0-9]*/.hydra/overrides.yaml"):
        job = overrides.parent.parent
        numbers.append(int(job.name))
        if not (job / "metrics.json").is_file():
            continue
        pairs = dict(o.lstrip("+").split("=", 1) for o in yaml.safe_load(overrides.read_text()) or [] if "=" in o)
        params = {k: _cast(pairs[k], d) for k, d in distributions.items()}
        trials.append(optuna.trial.create_trial(params=params, distributions=distributions,
                                                value=metrics.headline_value(metrics.read(job))))
    return trials, max(numbers) + 1


@contextmanager
def resumed(impl, arguments: list[str]) -> Iterator[None]:
    """For the duration of the search: the study starts with the sweep dir's finished trials
    (their parameters and values, so TPE continues from them), only the trials still missing to
    n_trials run, numbered after the existing job folders (`impl`: OptunaSweeperImpl)."""
    import optuna
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    distributions, _ = create_params_from_overrides([*impl._parse_sweeper_params_config(), *arguments])
    trials, next_job = finished_trials(Path(impl.config.hydra.sweep.dir), distributions)
    if next_job:
        print(f"Resuming the search in {impl.config.hydra.sweep.dir}: {len(trials)} finished trials, "
              f"running {max(0, impl.n_trials - len(trials))} more from job {next_job}")
    impl.n_trials, impl.job_idx = max(0, impl.n_trials - len(trials)), next_job
    create_study = optuna.create_study

    def with_history(*args, **kwargs):
        study = create_study(*args, **kwargs)
        for trial in trials:
            study.add_trial(trial)
        return study

    optuna.create_study = with_history
    try:
        yield
    finally:
        optuna.create_study = create_study


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def best_trial_command(config, best: dict, run_dir: Path, launch: Path) -> list[str]:
    """`python launch.py -m ...`: the sweep's task overrides with the best parameters, on the test
    split with the sweep's dev split held out, through the sweep's launcher, into `run_dir`."""
    skip = {*best, *TEST_RUN_KEYS, "sweep"}
    task = [o for o in config.hydra.overrides.task if _key(o) not in skip]
    launcher = [o for o in config.hydra.overrides.hydra
                if _key(o) == "hydra/launcher" or _key(o).startswith("hydra.launcher.")]
    from maet.reporting.summary import TEST_REFERENCES  # the same references as every test run of a search

    references = "[" + ",".join(TEST_REFERENCES) + "]"
    from omegaconf import OmegaConf

    choices = OmegaConf.select(config, "hydra.runtime.choices") or {}  # a preset's (tune_*: experiment, method)
    groups = [f"{g}={choices[g]}" for g in ("experiment", "method") if g in choices and g not in map(_key, task)]
    return [sys.executable, str(launch), "-m", *task, *groups, *(f"{k}={v}" for k, v in best.items()),
            "eval.split=test", f"eval.dev_size={config.eval.dev_size}", f"report.seeds={config.report.seeds}",
            f"report.references={references}", *launcher, f"hydra.sweep.dir={run_dir}", "hydra.sweep.subdir=.",
            "~hydra.callbacks.sweep_report"]
