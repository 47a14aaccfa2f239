"""Cluster ergonomics: site settings in conf/local/, SLURM requeue and one job per node
of GPUs, the resumable Optuna search and its test run through the launcher, MGSM answer lengths."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import require_data
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_launch import SMALL, launch

from maet.reporting.optuna_search import best_trial_command
from maet.runtime import distributed
from maet.schema.resolvers import PROJECT_ROOT

CONF = str(PROJECT_ROOT / "conf")


def _hydra(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_site_settings_are_optional_and_git_ignored():
    plain, site = _hydra(), _hydra("local=example")
    assert plain.tracker.entity is None and plain.hydra.launcher._target_.endswith("BasicLauncher")
    assert site.tracker.entity == "my-team" and site.paths.cache_dir == "/shared/maet/cache"
    assert site.hydra.launcher.partition == "gpu" and site.hydra.launcher.account == "my-project"
    ignored = subprocess.run(["git", "check-ignore", "-q", "conf/local/default.yaml"], cwd=PROJECT_ROOT)
    kept = subprocess.run(["git", "check-ignore", "-q", "conf/local/example.yaml"], cwd=PROJECT_ROOT)
    assert ignored.returncode == 0 and kept.returncode == 1


def test_slurm_requeues_and_runs_one_rank_per_gpu():
    slurm = _hydra("hydra/launcher=slurm").hydra.launcher
    assert slurm.max_num_timeout > 0 and slurm.signal_delay_s > 0
    node = _hydra("hydra/launcher=slurm_multigpu").hydra.launcher
    assert node.tasks_per_node == node.gpus_per_node > 1 and node.max_num_timeout == slurm.max_num_timeout


def test_slurm_tasks_become_ranks(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the exported variables vanish with the test
    os.environ.update(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="42", SLURM_PROCID="1", SLURM_LOCALID="1",
                      SLURM_NTASKS="2", SLURM_JOB_NODELIST="node1", SLURM_JOB_NUM_NODES="1", SLURM_NNODES="1")
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (2, 1, False)
    assert os.environ["MASTER_ADDR"] == "node1" and os.environ["LOCAL_RANK"] == "1"


def test_best_trial_runs_through_the_sweeps_launcher(tmp_path):
    config = OmegaConf.create({
        "eval": {"dev_size": 50}, "report": {"seeds": 1},
        "hydra": {"overrides": {
            "task": ["+sweep=optuna", "lang=bn", "merge.alpha=0.3", "eval.dev_size=50", "world.seed=2"],
            "hydra": ["hydra.sweep.dir=/x", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                      "hydra.sweeper.n_trials=4"]}}})
    command = best_trial_command(config, {"merge.alpha": 0.7, "transfer.tau": 0.01}, tmp_path / "best", PROJECT_ROOT)
    args = command[2:]
    assert args[0] == "-m" and "+sweep=optuna" not in args and "merge.alpha=0.3" not in args
    assert {"lang=bn", "world.seed=2", "merge.alpha=0.7", "transfer.tau=0.01", "eval.split=test", "eval.dev_size=50",
            "report.seeds=1", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
            f"hydra.sweep.dir={tmp_path / 'best'}", "hydra.sweep.subdir=."} <= set(args)
    assert not any(a.startswith("hydra.sweeper") or a == "hydra.sweep.dir=/x" for a in args)
    assert args.count("eval.dev_size=50") == 1
    tuned = _hydra("+sweep=tune_ties", "lang=sw")  # the preset's experiment and method carry over
    args = best_trial_command(tuned, {"merge.alpha": 0.5}, tmp_path / "best", PROJECT_ROOT)[2:]
    assert {"experiment=small_delta", "method=ties", "lang=sw", "eval.dev_size=200",
            "report.references=[base,language_only,language_beta]"} <= set(args)


@pytest.mark.slow
def test_optuna_search_resumes_from_its_sweep_dir(tmp_path):
    sweep = tmp_path / "sweep"
    common = ["-m", "+sweep=optuna", "eval.dev_size=6", *SMALL, "tracker=none", f"paths.cache_dir={tmp_path / 'c'}",
              f"hydra.sweep.dir={sweep}"]
    launch(*common, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    first = (sweep / "0" / "metrics.json").read_text()
    (sweep / "1" / "metrics.json").unlink()  # trial 1 killed before it finished
    proc = launch(*common, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert "1 finished trials, running 2 more from job 2" in proc.stdout
    assert (sweep / "0" / "metrics.json").read_text() == first  # kept, not rerun
    assert not (sweep / "1" / "metrics.json").exists() and not (sweep / "4").exists()
    assert all((sweep / str(job) / "metrics.json").is_file() for job in (2, 3))
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_params"]
    values = {job: json.loads((sweep / str(job) / "metrics.json").read_text())["metrics"]["arith_sw"] for job in (0, 2, 3)}
    assert best and max(values.values()) == pytest.approx(
        yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"])
    assert json.loads((sweep / "best_on_test" / "metrics.json").read_text())["split"] == "test"


def test_mgsm_answer_lengths():
    data = require_data()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.mgsm_lengths", "--data", str(data)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    langs = result["langs"]
    assert result["unit"] == "UTF-8 bytes" and {"en", "bn", "te", "sw"} <= set(langs)
    assert langs["en"]["ratio_to_en"] == 1.0 and langs["te"]["ratio_to_en"] > 2  # Telugu script: 3 bytes a letter
    for r in langs.values():
        assert r["exemplar_mean"] <= r["exemplar_max"] and r["test_p95"] <= r["test_max"]


def test_gpu_check_fails_clearly_without_a_gpu(monkeypatch, capsys):
    from benchmarks import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    assert "FAILED: no CUDA device" in capsys.readouterr().out


def test_gpu_check_compares_deltas_by_norm():
    from benchmarks import gpu_check

    fp32 = {"w": torch.tensor([[3.0, 4.0]]), "rows:w": torch.tensor([0])}
    half = {"w": torch.tensor([[1.5, 2.0]]), "rows:w": torch.tensor([0])}
    assert gpu_check.compare(fp32, half) == {"norm_ratio": 0.5, "relative_difference": 0.5}
