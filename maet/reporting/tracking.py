"""Experiment tracking: one W&B run per job (offline by default), or none.

`metrics.json` in the run dir is always written by the pipeline; the tracker is never the only
record. A tracker that fails to start or to log produces one warning and the job goes on.
"""

from __future__ import annotations

import logging
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

from maet.schema.settings import TrackerSettings

log = logging.getLogger(__name__)
SECRET_KEY = re.compile(r"(^|[_.-])(api_?key|secret|password|passwd|token|auth|credentials?)$", re.IGNORECASE)


def redact(tree: Any) -> Any:
    """A copy of a config tree with the values of secret-looking keys (api_key, token, password,
    ...) replaced by "<redacted>", for anything that is logged (budget keys like `tokens` stay)."""
    if isinstance(tree, dict):
        return {k: "<redacted>" if SECRET_KEY.search(str(k)) and v is not None else redact(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    return tree


def init_wandb(project: str, mode: str, run_dir: str, config: dict, name: str | None = None,
               entity: str | None = None, group: str | None = None, tags: list[str] | None = None,
               job_type: str | None = None, quiet: bool = False):
    """The one `wandb.init` of the project (job runs and sweep-summary runs); `quiet`: no banner."""
    import wandb

    return wandb.init(project=project, entity=entity, group=group, tags=tags or None, mode=mode, dir=run_dir,
                      name=name, job_type=job_type, config=config, reinit="finish_previous",
                      settings=wandb.Settings(silent=True) if quiet else None)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """`{"merge": {"alpha": 1}}` -> `{"merge.alpha": 1}` (lists kept as values)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


class NoTracker:
    where = ""  # the offline run dir (W&B), "" without a tracker

    def log(self, metrics: dict[str, Any]) -> None:
        pass

    def set_summary(self, scalars: dict[str, Any]) -> None:
        pass

    def update_config(self, config: dict[str, Any]) -> None:
        pass

    def log_curves(self, prefixes: list[str], rows: list[dict[str, float]]) -> None:
        pass

    def log_point(self, prefix: str, step: int, loss: float, lr: float) -> None:
        pass

    def use_artifacts(self, artifacts: list[tuple[str, str, Path]]) -> None:
        pass

    def log_files(self, name: str, kind: str, files: list[Path], base: Path) -> None:
        pass

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def log_images(self, images: dict[str, Path]) -> None:
        pass

    def log_artifacts(self, artifacts: list[tuple[str, str, Path]]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbTracker:
    def __init__(self, settings: TrackerSettings, config: dict, run_dir: str, name: str | None,
                 job_type: str | None = None, tags: list[str] | None = None, quiet: bool = False):
        import wandb

        self._wandb = wandb
        self.run = init_wandb(settings.project, settings.mode, run_dir, config, name, settings.entity,
                              settings.group, settings.tags if tags is None else tags, job_type, quiet)
        self.mode = str(settings.mode)
        self.where = getattr(getattr(self.run, "settings", None), "sync_dir", "") or ""  # the offline run dir

    broken = False  # after the first failure nothing more is sent (and one warning is enough)

    def _safely(self, what: str, fn, always: bool = False) -> None:
        if self.broken and not always:
            return
        try:
            fn()
        except Exception as err:  # a flaky tracker must never kill the job
            if self.broken:
                return
            self.broken = True
            warnings.warn(f"W&B failed to {what} ({err}); nothing more of this job is logged to W&B, "
                          "metrics.json and results.md in the run dir have everything")

    def log(self, metrics: dict[str, Any]) -> None:
        def _log():
            self.run.log(metrics)
            self.run.summary.update(metrics)
        self._safely("log metrics", _log)

    def set_summary(self, scalars: dict[str, Any]) -> None:
        """Summary values only (no history point): the numbers a panel or a filter reads."""
        self._safely("log metrics (summary)", lambda: self.run.summary.update(scalars))

    def update_config(self, config: dict[str, Any]) -> None:
        self._safely("update the config", lambda: self.run.config.update(config, allow_val_change=True))

    streamed: set[str] = frozenset()  # the curve prefixes logged live (`log_point`)

    def _define_curve(self, prefix: str) -> None:
        self.run.define_metric(f"{prefix}/step", hidden=True)
        for kind in ("loss", "lr"):
            self.run.define_metric(f"{prefix}/{kind}", step_metric=f"{prefix}/step")

    def log_point(self, prefix: str, step: int, loss: float, lr: float) -> None:
        """One point of a curve while its loop trains (`<prefix>/loss`, `/lr` against `/step`)."""
        def _log():
            if prefix not in self.streamed:
                self.streamed = self.streamed | {prefix}
                self._define_curve(prefix)
            self.run.log({f"{prefix}/step": step, f"{prefix}/loss": loss, f"{prefix}/lr": lr})
        self._safely("log a training curve", _log)

    def log_curves(self, prefixes: list[str], rows: list[dict[str, float]]) -> None:
        """Training curves at the end of the job: `<prefix>/loss` and `<prefix>/lr` against
        `<prefix>/step` (define_metric), but for the curves already logged live."""
        replayed = [p for p in prefixes if p not in self.streamed]
        rows = [r for r in ({k: v for k, v in row.items() if k.rsplit("/", 1)[0] in replayed} for row in rows) if r]

        def _log():
            for prefix in replayed:
                self._define_curve(prefix)
            for row in rows:
                self.run.log(row)
        self._safely("log metrics (training curves)", _log)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        self._safely(f"log table {name}",
                     lambda: self.run.log({name: self._wandb.Table(columns=columns, data=rows)}))

    def log_images(self, images: dict[str, Path]) -> None:
        self._safely("log images", lambda: self.run.log({k: self._wandb.Image(str(p)) for k, p in images.items()}))

    def _reference(self, name: str, kind: str, folder: Path):
        artifact = self._wandb.Artifact(name, type=kind)
        artifact.add_reference(f"file://{Path(folder).resolve()}", checksum=False)
        return artifact

    def log_artifacts(self, artifacts: list[tuple[str, str, Path]]) -> None:
        """Cache entries this job made, as its outputs, by reference (`file://` URIs): W&B records
        paths, uploads nothing."""
        self._safely("log artifacts", lambda: [self.run.log_artifact(self._reference(*a)) for a in artifacts])

    def use_artifacts(self, artifacts: list[tuple[str, str, Path]]) -> None:
        """Cache entries this job read, as its inputs (same name and reference as their maker
        logged). Online only: W&B refuses `use_artifact` offline (the run's config has the names)."""
        if self.mode != "online" or not artifacts:
            return
        self._safely("use artifacts", lambda: [self.run.use_artifact(self._reference(*a)) for a in artifacts])

    def log_files(self, name: str, kind: str, files: list[Path], base: Path) -> None:
        """Files of this job: copied into the run's `files/` (synced with it) and logged as one
        artifact it made (`<name>-<run id>`)."""
        def _log():
            artifact = self._wandb.Artifact(f"{name}-{self.run.id}", type=kind)
            for path in files:
                relative = path.relative_to(base).as_posix()
                artifact.add_file(str(path), name=relative)
                (Path(self.run.dir) / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, Path(self.run.dir) / relative)
            self.run.log_artifact(artifact)
        self._safely("log files", _log)

    def finish(self, exit_code: int = 0) -> None:
        self._safely("finish the run", lambda: self.run.finish(exit_code=exit_code), always=True)


def open_tracker(settings: TrackerSettings, config: dict, run_dir: str, name: str | None = None,
                 job_type: str | None = None, tags: list[str] | None = None, quiet: bool = False):
    """The configured tracker; falls back to no tracker (with one warning) if W&B fails to start."""
    if settings.name == "none" or settings.mode == "disabled":
        return NoTracker()
    try:
        return WandbTracker(settings, flatten(redact(config)), run_dir, name, job_type, tags, quiet)
    except Exception as err:
        warnings.warn(f"W&B could not start ({err}); this job is not tracked, metrics.json is written")
        return NoTracker()
