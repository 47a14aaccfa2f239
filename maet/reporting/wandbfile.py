"""Read back an offline W&B run file (`wandb/offline-run-*/run-<id>.wandb`) without the network.

The file is W&B's transaction log: a 7-byte header (`:W&B`, magic, version), then 32 KiB blocks of
records in LevelDB's log format (7-byte record header: checksum, length, type FULL / FIRST /
MIDDLE / LAST), each payload one `wandb_internal_pb2.Record`. wandb 0.31 has no public Python
reader (its own lives in the Go core), so this is the one here; it does not check checksums.

`read_run(path)` -> `OfflineRun` with the run's name, job type, group, tags, config, history rows,
summary and logged artifacts, as plain Python values.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def payloads(data: bytes) -> Iterator[bytes]:
    """The record payloads of a LevelDB-style log (W&B's run file), in order."""
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run file (no :W&B header)")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk, pos = data[pos + HEADER:pos + HEADER + length], pos + HEADER + length
        if kind == 0 and length == 0:  # zero padding at the end of the file
            break
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def records(path: str | Path):
    """Every `wandb_internal_pb2.Record` of a run file."""
    from wandb.proto import wandb_internal_pb2

    for payload in payloads(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _items(items) -> dict:
    """`{key: value}` of W&B's key / nested_key + value_json items."""
    out = {}
    for item in items:
        key = "/".join(item.nested_key) if item.nested_key else item.key
        out[key] = json.loads(item.value_json)
    return out


@dataclass
class OfflineRun:
    name: str = ""
    job_type: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    artifacts: list[dict] = field(default_factory=list)  # {name, type, use}: logged (False) or used (True)
    metrics: list[str] = field(default_factory=list)     # define_metric names (and their step metric)

    def curve(self, key: str) -> list[float]:
        """The history values of one metric, in logging order."""
        return [row[key] for row in self.history if key in row]


def read_run(path: str | Path) -> OfflineRun:
    """The run as it is recorded in its `.wandb` file (config and summary updates applied in order)."""
    run = OfflineRun()
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run.name, run.job_type, run.group = r.run.display_name, r.run.job_type, r.run.run_group
            run.tags = list(r.run.tags)
            run.config |= _items(r.run.config.update)
        elif kind == "config":
            run.config |= _items(r.config.update)
        elif kind == "history":
            run.history.append(_items(r.history.item))
        elif kind == "summary":
            run.summary |= _items(r.summary.update)
        elif kind == "artifact":
            run.artifacts.append({"name": r.artifact.name, "type": r.artifact.type, "use": False})
        elif kind == "use_artifact":
            run.artifacts.append({"name": r.use_artifact.name, "type": r.use_artifact.type, "use": True})
        elif kind == "metric":
            run.metrics.append(r.metric.name or r.metric.glob_name)
    return run


def run_file(run_dir: str | Path) -> Path:
    """The one `run-*.wandb` file of an offline run dir (`.../wandb/offline-run-*`)."""
    found = sorted(Path(run_dir).glob("run-*.wandb"))
    if len(found) != 1:
        raise FileNotFoundError(f"{run_dir}: expected one run-*.wandb file, found {len(found)}")
    return found[0]
