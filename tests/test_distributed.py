"""One job on N processes (`maet.runtime.distributed`): the single-process no-ops, the launch checks, and
(`make test-distributed`, marker `distributed`) a reduced world job under torchrun on 2 CPU
processes (gloo) whose deltas match the single-process run's."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_launch import SMALL

from maet.runtime import distributed
from maet.schema.resolvers import PROJECT_ROOT
from maet.store.cache import ArtifactCache

# Relative Frobenius error allowed between a delta trained on 2 processes and on one: the two
# differ only in float rounding (the mean of two half-batch gradients vs the full-batch gradient;
# measured ~1e-6 after 16 AdamW steps), so 1e-4 leaves room without hiding a wrong split. AdamW
# hides a gradient off by a constant factor (a missing 1/N moved R(Lj) by ~2e-4), so the key rows
# train with plain SGD and no clipping here: there a missing 1/N doubles R(A) (relative error 1).
TOLERANCE = 1e-4


def test_single_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    batch = torch.arange(12).reshape(4, 3)
    assert distributed.local_batch(batch) is batch
    assert type(distributed.cache("/tmp/x")) is ArtifactCache
    assert distributed.is_main() and not distributed.active() and distributed.setup("cpu", 3) is None
    assert distributed.share({"a": 1}) == {"a": 1}


def test_local_batch_is_a_contiguous_share(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    batch = torch.arange(12).reshape(4, 3)
    monkeypatch.setenv("RANK", "1")
    assert torch.equal(distributed.local_batch(batch), batch[2:])
    monkeypatch.setenv("RANK", "0")
    assert torch.equal(distributed.local_batch(batch), batch[:2])


def test_launch_checks_name_the_key(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert "train.batch_size=6" in distributed.check_launch(6) and "multiple of the 4" in distributed.check_launch(6)
    assert distributed.check_launch(8) is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accepted: full-parameter stages shard with FSDP2
    assert distributed.check_launch(8) is None
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert "ACCELERATE_USE_DEEPSPEED" in distributed.check_launch(8) and "FSDP2" in distributed.check_launch(8)


def test_data_parallel_hands_ddp_the_trained_tensors_themselves():
    """One process: the loss function itself; N: DDP over a module whose parameters are the trained
    tensors (not copies: DDP averages the gradients of what the loss uses). The averaging itself
    is checked by test_two_processes_match_one, where a missing 1/N doubles R(A)."""
    def loss_fn(batch):
        return batch.sum()

    p = torch.nn.Parameter(torch.zeros(2))
    assert distributed.data_parallel([p], loss_fn) is loss_fn
    module = distributed._Loss([p], loss_fn)
    assert list(module.parameters())[0] is p and module(torch.ones(3)) == 3


# ----------------------------------------------------------------------------- make test-distributed
BUDGETS = [*SMALL, "extract.tokens=2048", "language.tokens=1024", "report.seeds=1", "report.references=[]",
           "tracker=none", "threads=1", "extract.optimizer=sgd", "train.grad_clip=1e9"]


def _launch(prefix: list[str], cache, run_dir, cwd, *extra: str) -> str:
    proc = subprocess.run([*prefix, str(PROJECT_ROOT / "launch.py"), *BUDGETS, *extra, f"paths.cache_dir={cache}",
                           f"hydra.run.dir={run_dir}"], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def _relative_errors(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor]) -> dict[str, float]:
    assert one.keys() == two.keys()
    errors = {}
    for name, a in one.items():
        b = two[name]
        if not a.is_floating_point():
            assert torch.equal(a, b), f"{name}: the rows differ"
            continue
        errors[name] = float((a.double() - b.double()).norm() / a.double().norm().clamp_min(1e-30))
    return errors


@pytest.mark.distributed
def test_the_sharded_stage_offloaded_to_the_host_matches_one_process(tmp_path):
    """R(Lj)'s full CPT under FSDP2 with CPU offload (distributed.offload=true) on 2 processes and on
    one (a process group of one) gives one process's unsharded delta within TOLERANCE."""
    _launch([sys.executable], tmp_path / "one", tmp_path / "run_one", tmp_path, "distributed.offload=false")
    reference = json.loads((tmp_path / "run_one" / "metrics.json").read_text())["stages"]["language"]["key"]
    one = load_file(tmp_path / "one" / "language" / reference / "tensors.safetensors")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    for name, prefix in (("offload_two", torchrun), ("offload_one", [sys.executable])):
        shutil.copytree(tmp_path / "one" / "base", tmp_path / name / "base")
        shutil.copytree(tmp_path / "one" / "locate", tmp_path / name / "locate")
        log = _launch(prefix, tmp_path / name, tmp_path / f"run_{name}", tmp_path, "distributed.offload=true")
        processes = 2 if prefix is torchrun else 1
        assert f"sharded over {processes} process(es) with FSDP2, offloaded to the host" in log
        worst = max(_relative_errors(one, load_file(tmp_path / name / "language" / reference / "tensors.safetensors"))
                    .values())
        print(f"{name}: language worst relative error {worst:.2e}")
        assert worst <= TOLERANCE, (name, worst)


@pytest.mark.distributed
def test_two_processes_match_one(tmp_path):
    """The same reduced world job on 1 process and under torchrun on 2 (gloo, one thread each):
    the same cache keys, the same mask, R(A) (SGD) and R(Lj) (AdamW) within TOLERANCE, the same
    token counts, AdamW's state halved on rank 0, the same cache entries published. Both start from the same θ0 (the base built by the first run),
    so that the comparison is of the training stages and not of two pre-trainings."""
    _launch([sys.executable], tmp_path / "one", tmp_path / "run_one", tmp_path)
    shutil.copytree(tmp_path / "one" / "base", tmp_path / "two" / "base")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    log = _launch(torchrun, tmp_path / "two", tmp_path / "run_two", tmp_path)
    assert "process 0 of 2" in log and "process 1 of 2" in log
    assert "sharded over 2 process(es) with FSDP2" in log, "R(Lj)'s full CPT did not run under the sharded engine"

    one, two = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("run_one", "run_two"))
    for stage in ("locate", "ability", "language"):
        key = one["stages"][stage]["key"]
        assert two["stages"][stage]["key"] == key and two["stages"][stage]["cached"] is False
        assert two["stages"][stage]["train_tokens"] == one["stages"][stage]["train_tokens"] > 0
        errors = _relative_errors(load_file(tmp_path / "one" / stage / key / "tensors.safetensors"),
                                  load_file(tmp_path / "two" / stage / key / "tensors.safetensors"))
        worst = max(errors.values(), default=0.0)  # the mask: rows only, compared exactly
        print(f"{stage}: worst relative error over {len(errors)} tensors {worst:.2e}")
        assert worst <= TOLERANCE, (stage, worst)
    assert one["metrics"].keys() == two["metrics"].keys()
    # R(Lj)'s AdamW state sharded over the 2 processes (ZeRO-1): rank 0 holds ~half (the key rows' SGD has none)
    assert 0 < two["stages"]["language"]["optimizer_mib"] < 0.75 * one["stages"]["language"]["optimizer_mib"]
    for name in [k for k in one["metrics"] if k.endswith("/n")]:
        assert two["metrics"][name] == one["metrics"][name]  # data-parallel evaluation covers every item once
    bits = "heldout_sw/bits_per_byte"
    assert two["metrics"][bits] == pytest.approx(one["metrics"][bits], rel=1e-4)
    entries = [sorted(p.relative_to(tmp_path / run).as_posix() for p in (tmp_path / run).glob("*/*/meta.json"))
               for run in ("one", "two")]
    assert entries[0] == entries[1], "the two runs published different cache entries"
    assert not list((tmp_path / "two").glob("*/.tmp-*")), "a temporary entry was left behind"


@pytest.mark.distributed
def test_the_gpu_check_runs_its_sharded_job_on_cpu_processes(capsys):
    """`make gpu-check`'s multi-process part, on 2 CPU processes (bf16, the reduced world): the
    sharded run's R(Lj) is compared with the one-process run's and the check passes."""
    from benchmarks import gpu_check

    assert gpu_check.main(["--device", "cpu", "--small", "--processes", "2"]) == 0
    out = capsys.readouterr().out
    assert "R(Lj) sharded over 2 processes differs from one process's by" in out
    assert json.loads(out.strip().splitlines()[-1])["sharded"]["relative_difference"] <= gpu_check.MAX_SHARDED_DIFFERENCE


@pytest.mark.distributed
def test_a_sharded_stage_killed_after_a_checkpoint_resumes_with_the_uninterrupted_bits(tmp_path):
    """R(Lj)'s full CPT sharded on 2 processes, checkpointed every 2 steps through
    torch.distributed.checkpoint: the whole process group killed (SIGKILL) after a checkpoint and
    run again resumes there and publishes the bits of an uninterrupted 2-process run."""
    import os
    import signal
    import time

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _launch([sys.executable], tmp_path / "base", tmp_path / "run_base", tmp_path)  # θ0 and the mask, one process
    for name in ("whole", "killed"):
        for stage in ("base", "locate"):
            shutil.copytree(tmp_path / "base" / stage, tmp_path / name / stage)
    every = "checkpoint.every_steps=2"
    _launch(torchrun, tmp_path / "whole", tmp_path / "run_whole", tmp_path, every)
    args = [*torchrun, str(PROJECT_ROOT / "launch.py"), *BUDGETS, every, f"paths.cache_dir={tmp_path / 'killed'}",
            f"hydra.run.dir={tmp_path / 'run_killed'}"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = lambda: list((tmp_path / "killed" / "language").glob(".checkpoints-*/*.dcp/extra.pt"))  # noqa: E731
    deadline = time.monotonic() + 600
    while not saved() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert saved() and proc.poll() is None, "no sharded checkpoint before the job ended"
    for pid in _processes_naming(str(tmp_path / "run_killed")):  # torchrun and both ranks (in sessions of their own)
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    assert not list((tmp_path / "killed" / "language").glob("*/meta.json")), "the stage finished before the kill"

    log = _launch(torchrun, tmp_path / "killed", tmp_path / "run_resumed", tmp_path, every)
    assert "resumed at step" in log
    key = json.loads((tmp_path / "run_whole" / "metrics.json").read_text())["stages"]["language"]["key"]
    whole, resumed = (load_file(tmp_path / run / "language" / key / "tensors.safetensors") for run in ("whole", "killed"))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[n], resumed[n]) for n in whole)
    assert not list((tmp_path / "killed").glob("*/.checkpoints-*")), "a finished stage's checkpoints were left behind"


def _processes_naming(marker: str) -> list[int]:
    """Pids of the processes whose command line contains `marker` (Linux /proc)."""
    from pathlib import Path

    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended meanwhile
            continue
    return pids
