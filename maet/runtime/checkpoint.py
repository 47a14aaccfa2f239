"""Checkpoints inside a training stage, so that a preempted or killed stage resumes where it was
rather than at step 0.

The job names the folder of the stage that is training and how often to save
(`checkpoint.every_steps`, `checkpoint.every_minutes`); each training loop started inside asks
for its own `Checkpoint` (named as `maet.runtime.live` names loops), loads what an earlier try
saved, and saves its state (trained tensors, fp32 masters, optimizer, schedule, step, curve, RNG)
every so often and once more at its end (a stage that runs several loops skips the finished ones
on resume). A file is written to a temporary name and renamed, so a kill never leaves half a
checkpoint. On SIGTERM (a scheduler's preemption or time limit) the loop saves at the next step
boundary and the process exits with 143. The stage's caller removes the folder once the stage's
cache entry is published. Without a folder (tests, `every_steps = every_minutes = 0`) nothing is
saved and nothing changes.

On N processes every rank restores the same file; rank 0 alone writes it (the trained tensors
and the optimizer state are whole on rank 0: ZeRO-1's shards are consolidated first). A loop
over FSDP2 shards (`maet.runtime.sharded`) saves through `torch.distributed.checkpoint` instead:
every rank writes its shards of the model and of AdamW's state into `<loop>.step<N>.dcp/`, rank 0
adds the rest (`extra.pt`, written last: a folder without it is incomplete and ignored) and
removes the older folders (DCP could reshard on another number of processes; only a resume on
the same number is tested).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from maet.runtime import distributed

EXIT_ON_SIGTERM = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM


@dataclass
class _Stage:
    folder: Path
    every_steps: int
    every_seconds: float


_stage: _Stage | None = None
_terminated = False  # SIGTERM seen while a checkpointed loop ran


@contextmanager
def stage(folder: Path | None, every_steps: int = 0, every_minutes: float = 0.0) -> Iterator[None]:
    """The loops started inside the block save into `folder` every `every_steps` steps and / or
    `every_minutes` minutes (0: not by that measure; both 0 or no folder: no checkpoints)."""
    global _stage
    previous = _stage
    on = folder is not None and (every_steps > 0 or every_minutes > 0)
    _stage = _Stage(Path(folder), every_steps, every_minutes * 60) if on else None
    try:
        yield
    finally:
        _stage = previous


def clear(folder: Path) -> None:
    """Remove a stage's checkpoints (after its result is published)."""
    if distributed.is_main():
        shutil.rmtree(folder, ignore_errors=True)


class Checkpoint:
    """The saved state of one training loop: `load()` what an earlier try saved, `due(step)`,
    `save(state)`."""

    def __init__(self, path: Path, every_steps: int, every_seconds: float):
        self.path, self.every_steps, self.every_seconds = path, every_steps, every_seconds
        self.last = time.monotonic()

    def load(self) -> dict | None:
        return torch.load(self.path, map_location="cpu", weights_only=True) if self.path.is_file() else None

    def due(self, step: int) -> bool:
        """Whether to save after `step`: its turn by steps or minutes, or a SIGTERM arrived. On N
        processes rank 0's clock and signal decide for all (saving is collective)."""
        by_steps = self.every_steps > 0 and step % self.every_steps == 0
        by_time = self.every_seconds > 0 and time.monotonic() - self.last >= self.every_seconds
        return by_steps or distributed.share(by_time or terminated())

    def save(self, state: dict) -> None:
        """Write `state` atomically (rank 0); then, if a SIGTERM arrived, exit."""
        if distributed.is_main():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            torch.save(state, tmp)
            os.replace(tmp, self.path)
        self._saved()

    def _saved(self) -> None:
        distributed.barrier()
        self.last = time.monotonic()
        if distributed.share(terminated()):  # every process ends when rank 0 got the signal
            raise SystemExit(EXIT_ON_SIGTERM)

    def _sharded_folders(self) -> list[Path]:
        """This loop's complete DCP folders, oldest first."""
        found = self.path.parent.glob(f"{self.path.stem}.step*.dcp") if self.path.parent.is_dir() else []
        done = [f for f in found if (f / "extra.pt").is_file()]
        return sorted(done, key=lambda f: int(f.name[len(self.path.stem) + 5:-4]))

    def save_sharded(self, module, optimizer: torch.optim.Optimizer, extra: dict) -> None:
        """Every rank's shards of `module` and `optimizer` through DCP, `extra` (plain state) by rank 0."""
        from torch.distributed.checkpoint import save
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(module, optimizer)
        folder = self.path.parent / f"{self.path.stem}.step{extra['steps']}.dcp"
        older = self._sharded_folders()
        save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))
        distributed.barrier()
        if distributed.is_main():
            tmp = folder / f".extra.{os.getpid()}.tmp"
            torch.save(extra, tmp)
            os.replace(tmp, folder / "extra.pt")
            for old in older:
                shutil.rmtree(old, ignore_errors=True)
        self._saved()

    def load_sharded(self, module, optimizer: torch.optim.Optimizer) -> dict | None:
        """The newest complete DCP checkpoint put back into `module` and `optimizer`; its `extra`, or None."""
        from torch.distributed.checkpoint import load
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        folders = self._sharded_folders()
        if not folders:
            return None
        model_state, optim_state = get_state_dict(module, optimizer)  # (initialises AdamW's state to load into)
        load({"model": model_state, "optim": optim_state}, checkpoint_id=str(folders[-1]))
        set_state_dict(module, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
        return torch.load(folders[-1] / "extra.pt", map_location="cpu", weights_only=True)


def for_loop(name: str) -> Checkpoint | None:
    """The checkpoint of the loop `name` of the current stage, or None when the stage keeps none."""
    if _stage is None:
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Checkpoint(_stage.folder / f"{safe}.pt", _stage.every_steps, _stage.every_seconds)


def terminated() -> bool:
    return _terminated


@contextmanager
def saving_on_sigterm(enabled: bool) -> Iterator[None]:
    """Inside the block a SIGTERM is noted (the loop saves and exits at its next step) instead of
    ending the process at once; the previous handler comes back afterwards. Main thread only."""
    global _terminated
    if not enabled:
        yield
        return
    try:
        previous = signal.signal(signal.SIGTERM, _note_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _terminated = False


def _note_sigterm(signum, frame) -> None:
    global _terminated
    _terminated = True
