"""End to end through the real `launch.py`, in subprocesses: a single run, a repeated run that
computes nothing, and the user's 2x2 multirun that computes R(A) once and R(Lj) once per language."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import needs_data, require_data

from maet.reporting import report
from maet.schema.resolvers import PROJECT_ROOT

# The default (experiment=small_delta, the built-in world's testbed), reduced: same pipeline, smaller
# world, dev split, model and budgets.
SMALL = [
    "world.general_per_lang=400", "world.pretrain_general_per_lang=200", "eval.dev_size=4",
    "world.parallel_per_lang=100", "world.ability_per_lang=300",
    "world.benchmark_per_lang=16", "world.pretrain_equations=100", "world.pretrain_ability_en=20",
    "model.scratch.vocab_size=400", "model.scratch.hidden_size=32", "model.scratch.intermediate_size=64",
    "model.scratch.num_layers=2", "model.scratch.max_position_embeddings=128",
    "model.scratch.pretrain_tokens=4096", "train.batch_size=4", "train.seq_len=32",
    "locate.tokens=256", "extract.tokens=512", "language.tokens=256", "oracle.tokens=256",
    "eval.batch_size=16", "eval.max_gen_toks=8",
]
LEAN = ["report.seeds=1", "report.references=[]"]
# The real-data experiment (MGSM through lm-eval's own tasks), reduced.
SHARED_DATA = [
    "experiment=shared_data", "model.scratch.vocab_size=512", "model.scratch.hidden_size=32",
    "model.scratch.intermediate_size=64", "model.scratch.num_layers=2", "model.scratch.max_position_embeddings=512",
    "model.scratch.tokenizer_max_docs=400", "train.batch_size=2", "train.seq_len=64",
    "locate.tokens=256", "extract.tokens=256", "language.tokens=256",
    "eval.limit=2", "eval.max_gen_toks=4", "eval.batch_size=2",
]

pytestmark = pytest.mark.slow


def launch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    if needs_data(args):
        require_data()
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "launch.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def computed(summary: dict) -> set[str]:
    return {stage for stage, record in summary["stages"].items() if not record["cached"]}


def test_single_run_then_repeat_computes_nothing(tmp_path):
    common = [*SHARED_DATA, f"paths.cache_dir={tmp_path / 'cache'}", "tracker=none"]
    proc = launch(*common, f"hydra.run.dir={tmp_path / 'run1'}", cwd=tmp_path)
    first = json.loads((tmp_path / "run1" / "metrics.json").read_text())
    assert {"model", "ability", "lang", "method", "alpha", "metrics", "stages"} <= set(first)
    assert (first["lang"], first["method"], first["alpha"]) == ("sw", "maet", 0.99)  # method=maet's dev-tuned α (conf/merge/maet.yaml)
    assert 0.0 <= first["metrics"]["mgsm_sw"] <= 1.0 and first["metrics"]["mgsm_sw/n"] == 2
    assert "heldout_sw/bits_per_byte" in first["metrics"] and "mgsm_en" in first["metrics"]
    for stage in ("base", "locate", "ability", "language", "evaluate", "evaluate/base", "evaluate/language_only"):
        record = first["stages"][stage]
        assert record["cached"] is False and record["seconds"] >= 0
    assert first["stages"]["ability"]["train_tokens"] == 2 * 2 * 2 * 64  # θ_A and θ_G, 2 steps each
    assert first["stages"]["language"]["train_tokens"] == 2 * 2 * 64
    assert "mgsm_sw" in proc.stdout and "stage" in proc.stdout  # the results table
    rows = {r["model"]: r for r in first["testbed"]}
    assert list(rows) == ["maet", "base", "language_only"] and rows["maet"]["vs_base"]["n"] == 2
    predictions = [json.loads(line) for line in (tmp_path / "run1" / "predictions.jsonl").read_text().splitlines()]
    assert {p["model"] for p in predictions} == {"maet", "base", "language_only"}
    # 2 items x 2 languages x 2 filters per model; the headline is their mean
    maet_sw = [p for p in predictions if p["model"] == "maet" and p["lang"] == "sw" and p["filter"] == "flexible-extract"]
    assert len(maet_sw) == 2 and sum(p["correct"] for p in maet_sw) / 2 == first["metrics"]["mgsm_sw"]

    launch(*common, f"hydra.run.dir={tmp_path / 'run2'}", cwd=tmp_path)
    second = json.loads((tmp_path / "run2" / "metrics.json").read_text())
    assert {n.split("/")[0] for n in computed(second)} <= {"transfer", "merge", "regime"}, "a repeated run recomputed a stage"
    assert second["metrics"] == first["metrics"]
    assert second["train_tokens"] == 0


def test_default_world_run_prints_the_testbed_table(tmp_path):
    proc = launch(*SMALL, "report.seeds=2", f"paths.cache_dir={tmp_path / 'cache'}", "tracker=none",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["headline"] == "arith_sw" and summary["seeds"] == 2
    rows = {r["model"]: r for r in summary["testbed"]}
    assert list(rows) == ["maet", "base", "ability", "language_only", "oracle"]
    for row in rows.values():
        for lang in ("sw", "en"):
            cell = row[f"arith_{lang}"]
            assert len(cell["per_seed"]) == 2 and cell["low"] <= cell["mean"] <= cell["high"]
    # a replication redraws the base: its own pre-training seed, key and evaluation
    assert [(r["seed"], r["base_seed"]) for r in summary["replications"]] == [(0, 0), (1, 1)]
    assert len({r["base"] for r in summary["replications"]}) == 2 and summary["base_random"]
    paired = rows["maet"]["vs_language_only"]
    assert paired["n"] == 2 * (16 - 4) and 0 <= paired["p"] <= 1 and paired["low"] <= paired["diff"] <= paired["high"]  # 4 of the 16 are dev
    assert "vs_base" in rows["maet"] and "vs_base" not in rows["base"]
    assert paired["diff"] == pytest.approx(rows["maet"]["arith_sw"]["mean"] - rows["language_only"]["arith_sw"]["mean"])
    for stage in ("base", "locate", "ability", "language", "oracle", "base/seed1", "locate/seed1", "ability/seed1",
                  "oracle/seed1", "evaluate/base/seed1"):
        assert summary["stages"][stage]["cached"] is False, stage
    assert summary["stages"]["base"]["train_tokens"] == summary["stages"]["base/seed1"]["train_tokens"] == 4096
    assert summary["stages"]["oracle"]["train_tokens"] == 256
    # the method against every other model, Holm-adjusted, and the estimator named under the table
    assert [(c["a"], c["b"]) for c in summary["comparisons"]] == \
        [("maet", m) for m in ("base", "ability", "language_only", "oracle")]
    assert all(c["p"] <= c["p_holm"] <= 1 for c in summary["comparisons"])
    assert "arith_sw % [95% CI]" in proc.stdout and "maet − language_only" in proc.stdout and "p (Holm)" in proc.stdout
    assert "crossed random factors" in proc.stdout and "own base pre-training (base seeds 0..1)" in proc.stdout
    assert (tmp_path / "run" / "results.md").read_text().startswith("MAET job")
    assert "peak RSS MiB" in proc.stdout and summary["stages"]["ability"]["peak_rss_mib"] > 0
    assert 0 < summary["stages"]["ability"]["optimizer_mib"] < summary["stages"]["oracle"]["optimizer_mib"]

    # report.shared_base=true: both replications on base seed 0 (from the cache), labelled as such
    proc = launch(*SMALL, "report.seeds=2", "report.shared_base=true", f"paths.cache_dir={tmp_path / 'cache'}",
                  "tracker=none", f"hydra.run.dir={tmp_path / 'shared'}", cwd=tmp_path)
    shared = json.loads((tmp_path / "shared" / "metrics.json").read_text())
    assert [r["base"] for r in shared["replications"]] == [summary["replications"][0]["base"]] * 2
    assert shared["stages"]["evaluate/base/seed1"]["cached"] and "variance is not in these intervals" in proc.stdout


def test_user_sweep_computes_ability_once_and_language_once_per_language(tmp_path):
    sweep = tmp_path / "sweep"
    proc = launch("-m", "merge.alpha=0.5,1.0", "lang=sw,bn", *SMALL, *LEAN, f"paths.cache_dir={tmp_path / 'cache'}",
                  f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert "Sweep summary" in proc.stdout and (sweep / "summary.md").is_file()  # the end-of-multirun callback
    jobs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert sorted((j["lang"], j["alpha"]) for j in jobs) == [("bn", 0.5), ("bn", 1.0), ("sw", 0.5), ("sw", 1.0)]
    assert sum("locate" in computed(j) for j in jobs) == 1
    assert sum("ability" in computed(j) for j in jobs) == 1
    for lang in ("sw", "bn"):
        assert sum("language" in computed(j) for j in jobs if j["lang"] == lang) == 1
    keys = {j["stages"]["ability"]["key"] for j in jobs}
    assert len(keys) == 1
    assert len({j["stages"]["language"]["key"] for j in jobs}) == 2
    assert all("evaluate" in computed(j) for j in jobs)  # each point is its own model
    # θ0 is loaded once; the later jobs build their merges in place from the model in memory
    assert sorted(j["stages"]["base"]["in_memory"] for j in jobs) == [False, True, True, True]
    # one offline W&B run per job, grouped by the sweep
    assert len(list(sweep.glob("*/wandb/offline-run-*"))) == 4

    # the sweep's table, also when a job failed (listed, not dropped)
    text = report.write(sweep)
    assert len([line for line in text.splitlines() if line.startswith("| sw") or line.startswith("| bn")]) == 4
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert sorted((r["lang"], float(r["alpha"])) for r in rows) == [("bn", 0.5), ("bn", 1.0), ("sw", 0.5), ("sw", 1.0)]
    assert all(0 <= float(r["accuracy"]) <= 1 for r in rows)
    (sweep / "3" / "metrics.json").unlink()
    text = report.write(sweep)
    assert "Failed jobs" in text and "job 3: merge.alpha=1.0 lang=bn" in text
    assert len(list(csv.DictReader((sweep / "summary.csv").open()))) == 3


def test_every_baseline_runs_and_reports_its_compute(tmp_path):
    sweep = tmp_path / "sweep"
    methods = "task_arithmetic,ties,dare,layer_swap,cpt_all,ability_only,base"
    launch("-m", f"method={methods}", *SMALL, *LEAN, f"paths.cache_dir={tmp_path / 'cache'}", "tracker=none",
           f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    jobs = {j["method"]: j for j in (json.loads(p.read_text()) for p in sweep.glob("*/metrics.json"))}
    assert set(jobs) == set(methods.split(","))
    maet_tokens = 2 * 512 + 256  # θ_A + θ_G + R(Lj) at extract.tokens=512, language.tokens=256
    assert jobs["cpt_all"]["compute"]["tokens"] == jobs["cpt_all"]["stages"]["cpt_all"]["cost_tokens"] == maet_tokens
    assert jobs["cpt_all"]["compute"]["vs_cpt_all"] == 1.0
    for name in ("task_arithmetic", "ties", "dare", "layer_swap"):
        assert jobs[name]["compute"]["per_stage"] == {"ability_full": 512, "language": 256}
    assert sum(not j["stages"]["ability_full"]["cached"] for j in jobs.values() if "ability_full" in j["stages"]) == 1
    assert jobs["base"]["compute"]["tokens"] == 0
    assert 0 <= jobs["ties"]["metrics"]["arith_sw"] <= 1


def test_ablations_run_end_to_end(tmp_path):
    sweep = tmp_path / "sweep"
    ablations = ["score_weight_change", "score_activation", "contrast", "language_key_neurons", "no_subtract"]
    launch("-m", f"+ablation={','.join(ablations)}", *SMALL, *LEAN, f"paths.cache_dir={tmp_path / 'cache'}",
           "tracker=none", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    jobs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(jobs) == len(ablations)
    locate_keys = {j["stages"]["locate"]["key"] for j in jobs}
    assert len(locate_keys) == 4  # weight_change, activation, contrast, and the default grad (shared by two)
    by_ablation = dict(zip(ablations, jobs))
    assert by_ablation["score_weight_change"]["stages"]["locate"]["train_tokens"] == 256
    assert by_ablation["score_activation"]["stages"]["locate"]["train_tokens"] == 2 * 256  # ability and general
    assert by_ablation["no_subtract"]["stages"]["ability"]["train_tokens"] == 512  # θ_A only


def test_reconstruction_options_run_end_to_end(tmp_path):
    """The faithful options of the reconstruction (docs/method-options.md) each run through the
    pipeline and change what they should: R(A) (project, sgd), the kept rows (row granularity) and
    what R(Lj) covers (language.params). The default (project, every tensor) against Eq. 2 and SGD."""
    sweep = tmp_path / "sweep"
    ablations = ["default", "subtract_general", "sgd", "select_rows", "language_linear", "language_all"]
    launch("-m", f"+ablation={','.join(ablations)}", *SMALL, *LEAN, f"paths.cache_dir={tmp_path / 'cache'}",
           "tracker=none", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    jobs = dict(zip(ablations, [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]))
    assert len(jobs) == len(ablations)
    ability = {name: j["stages"]["ability"]["key"] for name, j in jobs.items()}
    assert len({ability["default"], ability["subtract_general"], ability["sgd"]}) == 3
    assert ability["select_rows"] == ability["default"]  # selection happens after extraction
    language = {name: j["stages"]["language"]["key"] for name, j in jobs.items()}
    assert len({language["default"], language["language_linear"], language["language_all"]}) == 3
    rows = jobs["select_rows"]["transfer"]["tensors"]
    kept = [t for t in rows if 0 < t["kept_rows"] < t["key_rows"]]
    assert kept, "row granularity kept no tensor partially"
    assert all(t["kept"] == (t["kept_rows"] > 0) for t in rows)
    assert all(t["kept_rows"] in (0, t["key_rows"]) for t in jobs["default"]["transfer"]["tensors"])
    regime = jobs["default"]["regime"]
    assert {"theta_a", "ability", "language"} <= set(regime["relative_norm"])
    assert 0 <= regime["disentanglement"]["theta_a"]["error"] <= 2


def test_user_sweep_on_the_local_submitit_launcher_gives_table_plots_and_wandb_summary(tmp_path):
    """The 2x2 sweep with jobs running concurrently in submitit's local executor: every job
    finishes, shared artifacts are published once per key, the sweep dir gets the table, the plots
    and an offline W&B summary run holding the table."""
    sweep = tmp_path / "sweep"
    launch("-m", "hydra/launcher=submitit_local", "merge.alpha=0.5,1.0", "lang=sw,bn", *SMALL, *LEAN, "threads=1",
           f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    jobs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert sorted((j["lang"], j["alpha"]) for j in jobs) == [("bn", 0.5), ("bn", 1.0), ("sw", 0.5), ("sw", 1.0)]
    assert len({j["stages"]["ability"]["key"] for j in jobs}) == 1
    # concurrent jobs wait for the one computing a shared entry (per-entry lock), then read it
    for stage in ("base", "locate", "ability"):
        assert sum(stage in computed(j) for j in jobs) == 1, stage
    for lang in ("sw", "bn"):
        assert sum("language" in computed(j) for j in jobs if j["lang"] == lang) == 1
    for stage in ("base", "locate", "ability", "language"):
        names = [p.name for p in (tmp_path / "cache" / stage).iterdir()]
        assert not [n for n in names if n.startswith(".tmp")], f"a partial {stage} entry was left behind"
        entries = [n for n in names if not n.startswith(".")]  # the rest: .<key>.lock files
        assert len(entries) == (2 if stage == "language" else 1)
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert sorted((r["lang"], float(r["alpha"])) for r in rows) == [("bn", 0.5), ("bn", 1.0), ("sw", 0.5), ("sw", 1.0)]
    assert (sweep / "plots" / "accuracy_vs_alpha.png").stat().st_size > 0
    for job in range(4):
        assert (sweep / str(job) / "plots" / "similarity.png").is_file()
    tables = list(sweep.glob("wandb/offline-run-*/files/media/table/sweep/results_*.table.json"))
    assert len(tables) == 1 and len(json.loads(tables[0].read_text())["data"]) == 4


def test_optuna_search_tunes_on_dev_and_reports_the_best_trial_once_on_test(tmp_path):
    sweep = tmp_path / "sweep"
    proc = launch("-m", "+sweep=optuna", "hydra.sweeper.n_trials=2", *SMALL, "eval.dev_size=6", "tracker=none",
                  f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    trials = [json.loads(p.read_text()) for p in sorted(sweep.glob("[0-9]*/metrics.json"))]
    assert len(trials) == 2 and all(t["split"] == "dev" for t in trials)
    assert all(t["metrics"]["arith_sw/n"] == 6 for t in trials)  # dev items only
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_params"]
    final = json.loads((sweep / "best_on_test" / "metrics.json").read_text())
    assert final["split"] == "test" and final["metrics"]["arith_sw/n"] == 16 - 6  # the test items, none of dev
    assert final["alpha"] == pytest.approx(best["merge.alpha"])
    dev_items = {p["doc_id"] for p in map(json.loads, (sweep / "0" / "predictions.jsonl").read_text().splitlines())}
    assert len(dev_items) == 6
    assert "Best trial on the test split" in proc.stdout and "vs language_only on the same items" in proc.stdout
    assert [r["model"] for r in final["testbed"]] == ["maet", "base", "language_only", "language_beta"]  # paired refs
    assert "Best trial on the test split" in (sweep / "summary.md").read_text()


def test_launch_makes_idle_openmp_threads_sleep_when_the_jobs_processes_share_the_cores():
    """OMP_WAIT_POLICY must be in the environment before torch loads OpenMP (benchmarks/threads.py):
    PASSIVE under a parallel launcher or N processes, torch's default for a single job, and what the
    environment says always wins."""
    def probe(argv, **extra):
        code = (f"import os, sys; sys.argv = {['launch.py', *argv]!r}; import launch; "
                "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "WORLD_SIZE")} | extra
        proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert probe([]) == ["None", "False"]
    assert probe(["-m", "merge.alpha=0.5,1.0"]) == ["None", "False"]  # sequential jobs: one at a time
    assert probe(["-m", "hydra/launcher=joblib", "lang=sw,bn"]) == ["PASSIVE", "False"]
    assert probe(["-m", "hydra/launcher=submitit_local"]) == ["PASSIVE", "False"]
    assert probe([], WORLD_SIZE="2") == ["PASSIVE", "False"]
    assert probe(["-m", "hydra/launcher=joblib"], OMP_WAIT_POLICY="ACTIVE") == ["ACTIVE", "False"]