"""Checkpoints inside a training stage (maet.runtime.checkpoint through maet.method.train.optimize):
a loop that dies after a checkpoint and runs again resumes at the saved step and ends with the bits
of an uninterrupted loop; saves follow `every_steps`; a SIGTERM saves and exits with 143; nothing
is saved outside a checkpointed stage."""

import os
import signal

import pytest
import torch

from maet.method.train import optimize
from maet.runtime import checkpoint, live

STEPS = 6
LOOP = {"warmup_ratio": 0.2, "weight_decay": 0.01, "grad_clip": 1.0, "curve_every": 1}


class Died(Exception):
    pass


def batches():
    """STEPS batches `[4, 3]` of a fixed regression problem (the same on every call)."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, generator=g) for _ in range(STEPS)]


def run(die_at: int | None = None, masters: bool = False) -> tuple[torch.Tensor, list[int], object]:
    """(final weight, the steps whose loss was computed, stats); raises Died at step `die_at`.
    The loss uses dropout, so the RNG's state is part of what a resume must restore."""
    weight = torch.nn.Parameter(torch.linspace(-1, 1, 3))
    target = torch.tensor([0.5, -0.25, 2.0])
    seen = []
    master = [weight.detach().clone()] if masters else None

    def loss_fn(batch):
        seen.append(len(seen) + 1)
        if len(seen) == die_at:
            raise Died
        x = torch.nn.functional.dropout(batch, p=0.3)
        return ((x @ weight - x @ target) ** 2).mean()

    with live.stage("stage"):  # a try of a stage: its loops are named afresh ("toy")
        stats = optimize(loss_fn, [weight], batches(), STEPS, 0.1, "toy", masters=master, **LOOP)
    return weight.detach().clone(), seen, stats


def test_a_loop_that_dies_resumes_at_its_last_checkpoint_with_the_same_bits(tmp_path):
    torch.manual_seed(1)
    whole, _, whole_stats = run()
    torch.manual_seed(1)
    with checkpoint.stage(tmp_path, every_steps=2):
        with pytest.raises(Died):
            run(die_at=5)  # steps 1-4 trained, checkpoints after 2 and 4
        assert [p.name for p in tmp_path.iterdir()] == ["toy.pt"]
        torch.manual_seed(123)  # another process: another RNG state until the checkpoint's is restored
        resumed, seen, stats = run()
    assert seen == [1, 2], "the second try trained only steps 5 and 6"
    assert torch.equal(resumed, whole)
    assert (stats.steps, stats.tokens) == (STEPS, whole_stats.tokens)
    assert stats.curves["toy"] == whole_stats.curves["toy"]


def test_fp32_masters_are_restored_too(tmp_path):
    torch.manual_seed(1)
    whole, _, _ = run(masters=True)
    torch.manual_seed(1)
    with checkpoint.stage(tmp_path, every_steps=3):
        with pytest.raises(Died):
            run(die_at=5, masters=True)
        resumed, seen, _ = run(masters=True)
    assert seen == [1, 2, 3] and torch.equal(resumed, whole)


def test_saves_follow_every_steps_and_the_last_step(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(checkpoint.Checkpoint, "save", lambda self, state: saved.append(state["steps"]))
    with checkpoint.stage(tmp_path, every_steps=4):
        run()
    assert saved == [4, 6]


def test_no_checkpoint_without_a_folder_or_a_frequency(tmp_path):
    with checkpoint.stage(tmp_path, every_steps=0, every_minutes=0):
        run()
    with checkpoint.stage(None, every_steps=2):
        run()
    run()
    assert not list(tmp_path.iterdir())


def test_a_sigterm_saves_at_the_next_step_and_exits_143(tmp_path):
    torch.manual_seed(1)
    whole, _, _ = run()
    torch.manual_seed(1)
    with checkpoint.stage(tmp_path, every_minutes=60):  # no save due by time during the test

        with pytest.raises(SystemExit) as exit_:
            weight = torch.nn.Parameter(torch.linspace(-1, 1, 3))
            target, calls = torch.tensor([0.5, -0.25, 2.0]), []

            def loss_fn(batch):
                calls.append(1)
                if len(calls) == 3:
                    os.kill(os.getpid(), signal.SIGTERM)  # arrives during step 3
                x = torch.nn.functional.dropout(batch, p=0.3)
                return ((x @ weight - x @ target) ** 2).mean()

            with live.stage("stage"):
                optimize(loss_fn, [weight], batches(), STEPS, 0.1, "toy", **LOOP)
        assert exit_.value.code == checkpoint.EXIT_ON_SIGTERM
        assert torch.load(tmp_path / "toy.pt", weights_only=True)["steps"] == 3
        assert signal.getsignal(signal.SIGTERM) is not checkpoint._note_sigterm, "the handler was put back"
        resumed, seen, _ = run()
    assert seen == [1, 2, 3] and torch.equal(resumed, whole)


def test_clear_removes_a_stages_checkpoints(tmp_path):
    folder = tmp_path / ".checkpoints-key"
    with checkpoint.stage(folder, every_steps=1):
        run()
    assert (folder / "toy.pt").is_file()
    checkpoint.clear(folder)
    assert not folder.exists()
