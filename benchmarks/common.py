"""What every benchmark shares: the machine line, timing a child process with its peak RSS, and
the results file (`benchmarks/results/<name>.json`, summarised in `benchmarks/README.md`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}


def machine() -> str:
    """One line: CPU model and cores, RAM, GPU, torch, and the load when the benchmark started."""
    from maet.reporting.results import load_average, machine_line

    return f"{machine_line()}, load average {load_average():.1f} at start"


def run_measured(cmd: list[str], env: dict | None = None, cwd: Path = ROOT) -> dict:
    """Run `cmd` as a child of the lean `benchmarks.peak` process: seconds, peak RSS (MiB), output."""
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "peak.json"
        proc = subprocess.run([sys.executable, "-S", str(ROOT / "benchmarks" / "peak.py"), str(record), *map(str, cmd)],
                              cwd=cwd, env={**os.environ, **OFFLINE, **(env or {})}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace")
        result = json.loads(record.read_text())
    if proc.returncode != 0 or result["returncode"] != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({result['returncode']}):\n{proc.stdout[-4000:]}")
    return {"seconds": result["seconds"], "peak_rss_mib": result["peak_rss_mib"], "output": proc.stdout}


def save_results(name: str, results: dict, machine_line: str) -> Path:
    """`benchmarks/results/<name>.json` with the machine line (taken at the start) and the command."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    from maet.reporting.results import git_commit

    payload = {"benchmark": name, "commit": git_commit(), "machine": machine_line,
               "command": " ".join([Path(sys.executable).name, *sys.argv]),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **results}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def verdict(ok: bool) -> str:
    return "holds" if ok else "DOES NOT HOLD"
