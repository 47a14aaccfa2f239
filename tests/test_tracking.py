import pytest
from conftest import compose_config

from maet.engine import pipeline
from maet.reporting import tracking
from maet.schema.settings import TrackerSettings


class Recorder(tracking.NoTracker):
    def __init__(self):
        self.finished = []

    def finish(self, exit_code: int = 0) -> None:
        self.finished.append(exit_code)


def _cfg(tmp_path):
    return compose_config(f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'c'}")


def test_the_run_is_closed_even_when_the_job_fails(tmp_path, monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(pipeline, "open_tracker", lambda *a, **k: recorder)

    def crash(settings):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(pipeline, "run_job", crash)
    with pytest.raises(RuntimeError, match="out of memory"):
        pipeline.run(_cfg(tmp_path))
    assert recorder.finished == [1]


def test_a_tracker_that_cannot_start_warns_once_and_the_job_goes_on(monkeypatch):
    import wandb

    def refuse(**kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.warns(UserWarning, match="W&B could not start"):
        tracker = tracking.open_tracker(TrackerSettings(mode="online"), {"a": 1}, "/tmp")
    assert isinstance(tracker, tracking.NoTracker)


def test_config_is_flattened_for_grouping():
    flat = tracking.flatten({"merge": {"alpha": 0.5}, "lang": {"code": "sw"}, "seed": 0, "mods": [1, 2]})
    assert flat == {"merge.alpha": 0.5, "lang.code": "sw", "seed": 0, "mods": [1, 2]}
