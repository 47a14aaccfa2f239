"""`make mutation`'s report: mutmut's verdict on every mutant of the core modules, the equivalent
mutants recorded in docs/mutation.md (each with its reason), and the score the fast suite reaches:
killed / (mutants checked − equivalent). Exit status 1 below `--min` (default 0.9).

    python tests/mutation_report.py [--min 0.9]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "docs" / "mutation.md"
# a row names mutants of one function: a number (`maet.method.merging.x_trim__mutmut_11`), a range
# (`maet.method.methods.x_register__mutmut_1..18`) or a list of both (`maet.stages.keys.x_runtime__mutmut_1, 4..6`)
EQUIVALENT = re.compile(r"^\| `(maet\.[\w.ǁ]+__mutmut_)(\d+(?:\.\.\d+)?(?:, \d+(?:\.\.\d+)?)*)` \| (.+?) \|$", re.M)


def verdicts() -> dict[str, str]:
    """mutant name -> mutmut's verdict (killed, survived, timeout, not checked, ...)."""
    mutmut = Path(sys.executable).with_name("mutmut")
    out = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return dict(line.strip().rsplit(": ", 1) for line in out.splitlines() if ": " in line)


def equivalent() -> dict[str, str]:
    """mutant name -> why it cannot change what the code computes (docs/mutation.md)."""
    out = {}
    for name, numbers, reason in EQUIVALENT.findall(RECORD.read_text()):
        for part in numbers.split(", "):
            first, _, last = part.partition("..")
            out |= {f"{name}{n}": reason for n in range(int(first), int(last or first) + 1)}
    return out


def report(results: dict[str, str], equivalents: dict[str, str]) -> tuple[str, float]:
    checked = {m: v for m, v in results.items() if v != "not checked"}
    survivors = sorted(m for m, v in checked.items() if v != "killed" and m not in equivalents)
    stale = sorted(m for m in equivalents if checked.get(m, "survived") == "killed" or m not in results)
    equivalent_checked = sum(m in equivalents for m in checked)
    counted = len(checked) - equivalent_checked
    killed = sum(v == "killed" for m, v in checked.items() if m not in equivalents)
    score = killed / counted if counted else 0.0
    by_module = Counter(".".join(m.split(".")[:2]) for m in survivors)
    lines = [f"mutants: {len(results)}, checked {len(checked)}, {dict(Counter(checked.values()))}",
             f"equivalent (docs/mutation.md): {equivalent_checked}",
             f"killed by the fast suite: {score:.1%} of the {counted} non-equivalent mutants checked",
             f"survivors not recorded as equivalent ({len(survivors)}): {dict(by_module)}",
             *(f"  {m}" for m in survivors)]
    if stale:
        lines += ["recorded as equivalent but killed or gone (update docs/mutation.md):", *(f"  {m}" for m in stale)]
    return "\n".join(lines), score


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min", type=float, default=0.9, help="the score below which the exit status is 1")
    args = parser.parse_args(argv)
    text, score = report(verdicts(), equivalent())
    print(text)
    return 0 if score >= args.min else 1


if __name__ == "__main__":
    sys.exit(main())
