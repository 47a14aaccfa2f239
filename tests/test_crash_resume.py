"""Crashes, resume, races and determinism, with real processes: a job killed with SIGKILL during
each stage and re-run completes with the metrics and bits of an uninterrupted run; a multirun
re-run skips what its first try finished; two processes racing for one artifact compute it once;
the same seed gives the same bits also when some stages come from the cache; a tracker that
raises mid-run costs one warning, not the job."""

import json
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import compose_config, load
from test_launch import LEAN, SMALL, computed

from maet.engine import pipeline
from maet.schema.resolvers import PROJECT_ROOT
from maet.store.cache import ArtifactCache

pytestmark = pytest.mark.slow

# the reduced world, with training stages long enough (16 steps) that a kill lands inside one
KILLABLE = [*SMALL, *LEAN, "locate.tokens=2048", "extract.tokens=2048", "language.tokens=2048",
            "world.benchmark_per_lang=8", "tracker=none"]
STAGES = ("base", "locate", "ability", "language", "evaluate")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """(cache dir, result) of one uninterrupted in-process run of KILLABLE (tests copy from it)."""
    cache = tmp_path_factory.mktemp("uninterrupted")
    return cache, pipeline.run_job(load(*KILLABLE, f"paths.cache_dir={cache}"))


def warm(cache: Path, into: Path, stages=STAGES) -> Path:
    for stage in stages:
        shutil.copytree(cache / stage, into / stage)
    return into


def start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(PROJECT_ROOT / "launch.py"), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-5000:]
    return out


def kill_when(proc: subprocess.Popen, started) -> bool:
    """SIGKILL `proc` as soon as `started()` is true; False if it finished first."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if started():
            proc.kill()  # SIGKILL: no cleanup, no atexit, no finally
            proc.communicate()
            return True
        if proc.poll() is not None:
            proc.communicate()
            return False
        time.sleep(0.01)
    proc.kill()
    raise TimeoutError("the stage never started")


def entries(cache: Path) -> dict[str, bytes]:
    """Every published file of every entry, by `<stage>/<key>/<file>` (meta.json aside: it has timings)."""
    files = {}
    for path in sorted(cache.glob("*/*/**/*")):
        rel = path.relative_to(cache)
        if path.is_file() and rel.parts[0] != "data" and not rel.parts[1].startswith(".") and path.name != "meta.json":
            files[str(rel)] = path.read_bytes()
    return files


def test_sigkill_during_each_stage_then_rerun_gives_the_uninterrupted_result(tmp_path, uninterrupted):
    reference, expected = uninterrupted
    cache = tmp_path / "cache"
    store = ArtifactCache(cache)
    for i, stage in enumerate(STAGES):  # each try gets one stage further before it is killed
        proc = start(*KILLABLE, f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / f'try{i}'}", cwd=tmp_path)
        assert kill_when(proc, lambda: any((cache / stage).glob(".*.lock"))), f"finished before {stage} started"
        published = [p.parent.name for p in (cache / stage).glob("*/meta.json")]
        assert not published, f"the kill came after {stage} was published: not mid-stage"
        assert not (tmp_path / f"try{i}" / "metrics.json").exists()
        if i:  # what the earlier tries finished is in the cache, verified
            earlier = STAGES[i - 1]
            assert all(store.ready(earlier, p.parent.name) for p in (cache / earlier).glob("*/meta.json"))

    finish(start(*KILLABLE, f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'final'}", cwd=tmp_path))
    final = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert final["metrics"] == expected.metrics
    assert {s: r["cached"] for s, r in final["stages"].items() if s in STAGES[:-1]} == {s: True for s in STAGES[:-1]}
    assert entries(cache) == entries(reference), "a resumed run published different bits"
    assert not list(cache.glob("*/.tmp-*")), "a killed writer's temp folder was left behind"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_stage_killed_after_a_checkpoint_resumes_there_with_the_uninterrupted_bits(tmp_path, uninterrupted, sig):
    reference, expected = uninterrupted
    cache = warm(reference, tmp_path / "cache", ["base", "locate"])
    args = [*KILLABLE, "checkpoint.every_steps=4", f"paths.cache_dir={cache}"]
    proc = start(*args, f"hydra.run.dir={tmp_path / 'try'}", cwd=tmp_path)
    saved = lambda: list((cache / "ability").glob(".checkpoints-*/*.pt"))  # noqa: E731
    deadline = time.monotonic() + 600
    while not saved() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert saved(), "the ability stage saved no checkpoint before the job ended"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0, "the job finished before the signal: not mid-stage"
    assert not list((cache / "ability").glob("*/meta.json")), "the stage was published before the kill"
    if sig == signal.SIGTERM:  # saved at the next step boundary, then exited
        assert proc.returncode == 143, out[-3000:]
    state = torch.load(saved()[0], weights_only=True)
    assert 4 <= state["steps"] < 16

    out = finish(start(*args, f"hydra.run.dir={tmp_path / 'final'}", cwd=tmp_path))
    assert f"resumed at step {state['steps']} of 16 from its checkpoint" in out, out[-3000:]
    final = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert final["metrics"] == expected.metrics
    assert entries(cache) == entries(reference), "a resumed stage published different bits"
    assert not list(cache.glob("*/.checkpoints-*")), "a finished stage's checkpoints were left behind"


WRITER = """
import sys, time, torch
from maet.store.cache import ArtifactCache
def write(folder):
    (folder / "model.safetensors").write_bytes(b"half of a model")
    print("writing", flush=True)
    time.sleep(600)
with ArtifactCache(sys.argv[1]).lock("base", "k"):
    ArtifactCache(sys.argv[1]).save("base", "k", {}, {"x": torch.zeros(4)}, write_extra=write)
"""


def test_a_writer_killed_mid_write_publishes_nothing_and_blocks_no_one(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"  # inside save(), holding the lock
    temps = list((tmp_path / "base").glob(".tmp-k-*"))
    assert len(temps) == 1 and (temps[0] / "model.safetensors").is_file()
    proc.kill()
    proc.communicate()
    cache = ArtifactCache(tmp_path)
    assert not cache.exists("base", "k") and not cache.ready("base", "k")
    with cache.lock("base", "k"):  # the OS released the dead writer's lock; its temp folder is removed
        assert not temps[0].exists()
        cache.save("base", "k", {}, {"x": torch.ones(4)})
    assert cache.ready("base", "k") and torch.equal(cache.tensors("base", "k")["x"], torch.ones(4))


def test_multirun_rerun_after_a_kill_redoes_only_what_is_missing(tmp_path, uninterrupted):
    cache = warm(uninterrupted[0], tmp_path / "cache", ["base"])  # the same base; the rest is computed here
    sweep = tmp_path / "sweep1"
    args = ["-m", "lang=sw,bn", *SMALL, *LEAN, "tracker=none", f"paths.cache_dir={cache}"]
    proc = start(*args, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert kill_when(proc, lambda: (sweep / "0" / "metrics.json").exists() and (sweep / "1").exists())
    assert not (sweep / "1" / "metrics.json").exists()

    rerun = tmp_path / "sweep2"
    finish(start(*args, f"hydra.sweep.dir={rerun}", cwd=tmp_path))
    sw, bn = (json.loads((rerun / job / "metrics.json").read_text()) for job in ("0", "1"))
    assert {s.split("/")[0] for s in computed(sw)} <= {"transfer", "merge", "regime"}, computed(sw)
    assert sw["metrics"] == json.loads((sweep / "0" / "metrics.json").read_text())["metrics"]
    assert {"base", "locate", "ability"}.isdisjoint(computed(bn)), computed(bn)  # shared with sw: cached
    assert "evaluate" in computed(bn)  # never finished before the kill


def test_two_processes_racing_for_the_same_artifacts_compute_each_once(tmp_path):
    cache = tmp_path / "cache"
    procs = [start(*SMALL, *LEAN, "tracker=none", f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / f'run{i}'}",
                   cwd=tmp_path) for i in range(2)]
    for proc in procs:
        finish(proc)
    a, b = (json.loads((tmp_path / f"run{i}" / "metrics.json").read_text()) for i in range(2))
    for stage in STAGES:
        assert [a["stages"][stage]["cached"], b["stages"][stage]["cached"]].count(False) == 1, stage
    assert a["metrics"] == b["metrics"]
    store = ArtifactCache(cache)
    assert all(store.problem(p.parent.parent.name, p.parent.name) is None for p in cache.glob("*/*/meta.json"))


def test_same_seed_same_bits_also_with_stages_from_the_cache(tmp_path, uninterrupted):
    reference, first = uninterrupted
    cache = warm(reference, tmp_path / "cache", ["base", "locate"])  # the case seen before: locate cached, R(A) not
    second = pipeline.run_job(load(*KILLABLE, f"paths.cache_dir={cache}"))
    assert second.stages["locate"].cached and not second.stages["ability"].cached
    assert not second.stages["language"].cached and not second.stages["evaluate"].cached
    assert entries(cache) == entries(reference)
    assert second.testbed == first.testbed and second.metrics == first.metrics


def test_a_corrupted_artifact_is_recomputed_with_one_warning_and_the_same_result(tmp_path, uninterrupted):
    reference, first = uninterrupted
    cache = warm(reference, tmp_path / "cache")
    tensors = cache / "ability" / first.stages["ability"].key / "tensors.safetensors"
    original = tensors.read_bytes()
    data = bytearray(original)
    data[-4] ^= 0x01  # one bit of one weight
    tensors.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = pipeline.run_job(load(*KILLABLE, f"paths.cache_dir={cache}"))
    corrupted = [w for w in caught if "corrupted" in str(w.message)]
    assert len(corrupted) == 1 and "ability" in str(corrupted[0].message)
    assert not second.stages["ability"].cached and second.stages["locate"].cached
    assert tensors.read_bytes() == original and second.metrics == first.metrics


class FlakyRun:
    """A W&B run that starts, then raises on every call (the network went away)."""

    def __init__(self):
        self.summary, self.finished = self, False

    def log(self, *args, **kwargs):
        raise ConnectionError("api.wandb.ai: connection reset")

    update = log

    def finish(self, exit_code=0):
        self.finished = True
        raise ConnectionError("api.wandb.ai: connection reset")


def test_a_tracker_raising_mid_run_costs_one_warning_not_the_job(tmp_path, monkeypatch, uninterrupted):
    import wandb

    run = FlakyRun()
    monkeypatch.setattr(wandb, "init", lambda **kwargs: run)
    cache = warm(uninterrupted[0], tmp_path / "cache")
    cfg = compose_config(*KILLABLE, "tracker=wandb", f"paths.cache_dir={cache}",
                         f"paths.output_dir={tmp_path / 'out'}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipeline.run(cfg)
    about_wandb = [str(w.message) for w in caught if "W&B" in str(w.message)]
    assert len(about_wandb) == 1 and "log metrics" in about_wandb[0] and "metrics.json" in about_wandb[0]
    assert run.finished  # still closed
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary["random_seeds"] == {"seed": 0, "report.seeds": 1, "eval.seed": 1234, "world.seed": 0,
                                       "model.scratch.seed": 0, "report.shared_base": False}
    assert [(r["seed"], r["base_seed"]) for r in summary["replications"]] == [(0, 0)]
