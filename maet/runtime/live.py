"""Training curves as they are made. The job installs a sink (its W&B run) around its work and
names the stage that is training; the training loop reports each curve point as it records it.
Without a sink (tests, rank k > 0 of a multi-process job, `tracker=none`) nothing is sent.

A loop is named as `TrainStats` names the curves it joins: its `desc`, and `desc #2`, `#3`, ...
when a stage runs the same loop again (locate's weight-change scores on ability and general text).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Sink = Callable[[str, str, int, float, float], None]  # (stage, loop, step, loss, lr)

_sink: Sink | None = None
_stage: str | None = None
_loops: dict[str, int] = {}  # loop desc -> how often the current stage has started it


@contextmanager
def streaming(sink: Sink) -> Iterator[None]:
    """Send every curve point made inside the block to `sink`."""
    global _sink
    previous, _sink = _sink, sink
    try:
        yield
    finally:
        _sink = previous


@contextmanager
def stage(name: str) -> Iterator[None]:
    """The loops started inside the block train stage `name` (with its replication suffix)."""
    global _stage, _loops
    previous = _stage, _loops
    _stage, _loops = name, {}
    try:
        yield
    finally:
        _stage, _loops = previous


def loop(desc: str) -> str:
    """The name of a training loop that starts now in the current stage."""
    _loops[desc] = _loops.get(desc, 0) + 1
    return desc if _loops[desc] == 1 else f"{desc} #{_loops[desc]}"


def point(loop_name: str, step: int, loss: float, lr: float) -> None:
    """One curve point of a running loop, to the sink if there is one (and a stage is named)."""
    if _sink is not None and _stage is not None:
        _sink(_stage, loop_name, step, loss, lr)
