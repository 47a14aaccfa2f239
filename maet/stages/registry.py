"""The one declaration of every cached training stage: its name, the artifacts it yields, the
artifacts it reads (whose keys enter its own), what else its cache key depends on, its producer
and the reference model it yields. Everything else is derived from `STAGES`: which stages a job
runs and in which order, the training compute of a method, the W&B artifacts of a run, the
files the out-of-core export reads, and the reference models `report.references` may name.

An artifact is a mask `{name: rows[k]}`, a row delta `{name: (rows[k], values[k, in])}` or a
dense delta `{name: [out, in]}`; `base` (θ0) is the job's base model, not a stage of this list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from maet.method.methods import MADE_FROM, register_linear
from maet.method.train import TrainStats
from maet.schema.settings import Settings

Tensors = dict[str, torch.Tensor]
# producer(settings, model, tokenizer, corpora, inputs: {artifact: value}) -> (tensors to cache, training, meta)
Producer = Callable[..., tuple[Tensors, TrainStats, dict]]


def _always(s: Settings, artifact: str) -> bool:
    return True


@dataclass(frozen=True)
class Reference:
    """A reference model of the testbed that a stage yields: θ0 + one of its artifacts."""
    name: str      # as `report.references` names it
    artifact: str  # the stage's artifact added to θ0
    doc: str


@dataclass(frozen=True)
class Stage:
    name: str                           # the cache folder, the stage record, the W&B artifact
    yields: tuple[str, ...]             # the artifacts it makes (the first is its main one)
    inputs: tuple[str, ...]             # the artifacts it reads, whose keys enter its key ("base": θ0)
    config: Callable[[Settings], dict]  # what else its key depends on (`maet.stages.keys`)
    produce: Producer
    unpack: Callable[[Tensors], dict[str, Any]] | None = None  # cached tensors -> {artifact: value}
    reads: Callable[[Settings, str], bool] = _always  # whether it reads an input with these settings
    reference: Reference | None = None
    kind: str = "delta"                 # W&B artifact type: "mask" | "delta"

    def artifacts(self, tensors: Tensors) -> dict[str, Any]:
        """Its artifacts from its cached tensors (by default the tensors are its one artifact)."""
        return self.unpack(tensors) if self.unpack else {self.yields[0]: tensors}

    def input_keys(self, s: Settings, keys: dict[str, str]) -> dict[str, str | None]:
        """The keys its own key takes: one per input, None for an input these settings do not read."""
        return {name: keys[name] if self.reads(s, name) else None for name in self.inputs}


STAGES: dict[str, Stage] = {}
PRODUCER: dict[str, str] = {"base": "base"}  # artifact -> the stage that yields it


def register_stage(stage: Stage) -> Stage:
    """Declare a stage (after the stages it reads from) and the reference model it yields."""
    if stage.name in STAGES or stage.name == "base":
        raise ValueError(f"stage {stage.name!r} is declared twice")
    unknown = [name for name in stage.inputs if name not in PRODUCER]
    if unknown:
        raise ValueError(f"stage {stage.name!r} reads {unknown}, which no earlier stage yields")
    STAGES[stage.name] = stage
    PRODUCER.update(dict.fromkeys(stage.yields, stage.name))
    if stage.reference:
        ref = stage.reference
        register_linear(ref.name, [(ref.artifact, 1.0)], ref.doc, reference=True)
    return stage


def unregister_stage(name: str) -> None:
    """Remove a stage and its reference model (tests that declare a toy stage)."""
    from maet.method.methods import METHODS

    stage = STAGES.pop(name)
    for artifact in stage.yields:
        PRODUCER.pop(artifact, None)
    if stage.reference:
        METHODS.pop(stage.reference.name, None)


def stage_of(artifact: str) -> str:
    """The stage whose cache entry holds an artifact (M_T ⊙ R(A) is R(A) cut to the kept tensors)."""
    return PRODUCER[MADE_FROM.get(artifact, artifact)]


def stages_for(s: Settings, artifacts: set[str]) -> list[Stage]:
    """The stages that make `artifacts` and what they read with these settings, in declaration order."""
    wanted = {stage_of(a) for a in artifacts} - {"base"}
    for stage in reversed(list(STAGES.values())):  # inputs are declared before their readers
        if stage.name in wanted:
            wanted |= {PRODUCER[i] for i in stage.inputs if stage.reads(s, i)} - {"base"}
    return [stage for name, stage in STAGES.items() if name in wanted]
