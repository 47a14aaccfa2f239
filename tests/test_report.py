"""The sweep table, its plots, the W&B summary run, the per-run pictures, and the sweep presets."""

import csv
import json
import re
import warnings
from pathlib import Path

import pytest
import yaml
from conftest import load
from omegaconf import OmegaConf

from maet.evaluation.evaluate import split_items
from maet.method.types import layer_module
from maet.reporting import compare, metrics, plots, report
from maet.reporting import summary as job_summary
from maet.schema.resolvers import PROJECT_ROOT
from maet.schema.settings import ConfigError, EvalSettings


def fake_summary(lang: str, method: str, alpha: float, seed: int, per_seed: list[float],
                 correct: list[str] | None = None) -> dict:
    """The fields of a metrics.json that the sweep table reads; per-item correctness: the first
    round(50 p) of 50 items right in each replication, unless `correct` gives the 0/1 strings."""
    mean = sum(per_seed) / len(per_seed)
    cell = {"mean": mean, "low": max(0.0, mean - 0.1), "high": min(1.0, mean + 0.1), "per_seed": per_seed}
    correct = correct or ["1" * round(50 * p) + "0" * (50 - round(50 * p)) for p in per_seed]
    return {"lang": lang, "method": method, "alpha": alpha, "seed": seed, "seeds": len(per_seed), "split": "test",
            "headline": f"arith_{lang}", "metrics": {f"arith_{lang}": mean, f"arith_{lang}/n": 50},
            "testbed": [{"model": method, f"arith_{lang}": cell, "arith_en": {**cell, "mean": 0.8},
                         "vs_language_only": {"diff": 0.02, "low": -0.01, "high": 0.05, "p": 0.4, "n": 50}}],
            "compute": {"tokens": 1000, "vs_cpt_all": 1.02},
            "replications": [{"seed": seed + k, "base_seed": seed + k, "base": f"base{seed + k}"}
                             for k in range(len(correct))],
            "correct": {"items": [f"item{i:02d}" for i in range(len(correct[0]))], "models": {method: correct}}}


def make_sweep(root: Path, jobs: list[tuple[list[str], dict | None]]) -> Path:
    """A multirun dir as Hydra writes it: `<num>/.hydra/overrides.yaml` (+ metrics.json unless None)."""
    for num, (overrides, summary) in enumerate(jobs):
        (root / str(num) / ".hydra").mkdir(parents=True)
        (root / str(num) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        if summary is not None:
            (root / str(num) / "metrics.json").write_text(json.dumps(summary))
    return root


def test_sweep_table_lists_every_job_pools_seeds_and_names_failed_jobs(tmp_path):
    jobs = []
    for lang in ("sw", "bn"):
        for alpha in (0.5, 1.0):
            for seed in (0, 1):
                over = [f"merge.alpha={alpha}", f"lang={lang}", f"seed={seed}", "report.seeds=2"]
                jobs.append((over, fake_summary(lang, "maet", alpha, seed, [0.1 * (seed + 1), 0.2 * alpha])))
    jobs.append((["merge.alpha=2.0", "lang=sw", "seed=0", "report.seeds=2"], None))  # crashed: no metrics.json
    jobs.append((["merge.alpha=3.0", "lang=sw", "seed=0", "report.seeds=2"], None))
    sweep = make_sweep(tmp_path, jobs)
    (sweep / "9" / "metrics.json").write_text('{"lang": "sw", "testb')  # killed while writing

    text = report.write(sweep)
    assert "Failed jobs" in text and "job 8: merge.alpha=2.0 lang=sw seed=0 report.seeds=2" in text
    assert "job 9: merge.alpha=3.0 lang=sw seed=0 report.seeds=2 (unreadable metrics.json" in text
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert len(rows) == 8
    assert {(r["lang"], float(r["alpha"]), int(r["seed"])) for r in rows} == \
        {(lang, a, s) for lang in ("sw", "bn") for a in (0.5, 1.0) for s in (0, 1)}
    assert all(r["setting"] == "" for r in rows)  # only lang, alpha, seed varied
    # jobs that differ only in seed are pooled: 2 jobs x 2 seeds each
    pooled = compare.pooled(report.collect(sweep)[0])
    assert len(pooled) == 4 and all(p["jobs"] == 2 and p["seeds"] == 4 for p in pooled)
    sw_half = next(p for p in pooled if (p["lang"], p["alpha"]) == ("sw", 0.5))
    assert sw_half["accuracy"] == pytest.approx((0.1 + 0.1 + 0.2 + 0.1) / 4)
    assert sw_half["low"] < sw_half["accuracy"] < sw_half["high"]
    assert "Pooled over jobs that differ only in seed" in text
    assert (sweep / "plots" / "accuracy_vs_alpha.png").stat().st_size > 0


def test_jobs_are_compared_pairwise_on_the_same_replications_with_holm(tmp_path):
    # 3 replications x 4 items; maet beats ties by 2 items in each replication, ties and task
    # arithmetic are identical; another seed (other replications) and another language are never paired
    ties = ["1100", "1000", "0100"]
    jobs = [(["method=maet"], fake_summary("sw", "maet", 1.0, 0, [0.5] * 3, ["1111", "1110", "0111"])),
            (["method=ties"], fake_summary("sw", "ties", 1.0, 0, [0.5] * 3, ties)),
            (["method=task_arithmetic"], fake_summary("sw", "task_arithmetic", 1.0, 0, [0.5] * 3, ties)),
            (["method=maet", "seed=3"], fake_summary("sw", "maet", 1.0, 3, [0.5] * 3, ["0000", "0000", "0000"])),
            (["method=maet", "lang=bn"], fake_summary("bn", "maet", 1.0, 0, [0.5] * 3, ["1111", "1111", "1111"]))]
    sweep = make_sweep(tmp_path, jobs)
    rows = report.collect(sweep)[0]
    compared, note = compare.comparisons(rows)
    assert note == ""
    pairs = {(c["a"], c["b"]): c for c in compared}
    assert set(pairs) == {("maet seed=0", "task_arithmetic"), ("maet seed=0", "ties"), ("task_arithmetic", "ties")}
    beat = pairs[("maet seed=0", "ties")]
    assert beat["diff"] == pytest.approx(0.5) and beat["replications"] == 3 and beat["n"] == 12
    assert pairs[("task_arithmetic", "ties")]["diff"] == 0.0
    ps = sorted(c["p"] for c in compared)  # Holm written out: running max of (m - k) * p_(k), capped at 1
    expected = [min(1.0, max((3 - k) * ps[k] for k in range(j + 1))) for j in range(3)]
    assert sorted(c["p_holm"] for c in compared) == pytest.approx(expected)

    only = compare.comparisons(rows, "ties")[0]
    assert sorted((c["a"], c["b"]) for c in only) == [("ties", "maet seed=0"), ("ties", "task_arithmetic")]
    everything, note = compare.comparisons(rows, "nothing")
    assert "report.compare_to=nothing names no job" in note and len(everything) == 3
    text = report.write(sweep, "ties")
    assert "Paired differences between the jobs" in text and "ties − maet seed=0" in text and "Resolution" in text
    assert "maet seed=0" in (sweep / "comparisons.csv").read_text()


def test_two_runs_agree_when_every_interval_overlaps(tmp_path, capsys):
    def run(folder: str, low: float, high: float) -> Path:
        summary = fake_summary("sw", "maet", 1.0, 0, [0.3])
        summary["testbed"][0]["arith_sw"] |= {"low": low, "high": high}
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "metrics.json").write_text(json.dumps(summary))
        return tmp_path / folder

    a, b, c = run("a", 0.10, 0.30), run("b", 0.29, 0.50), run("c", 0.31, 0.50)
    cells = compare.interval_agreement(json.loads((a / "metrics.json").read_text()),
                                       json.loads((c / "metrics.json").read_text()))
    assert {(x["model"], x["metric"], x["overlap"]) for x in cells} == \
        {("maet", "arith_sw", False), ("maet", "arith_en", True)}
    assert compare.main([str(a), str(b)]) == 0 and "2 of 2 intervals overlap" in capsys.readouterr().out
    assert compare.main([str(a), str(c)]) == 1 and "NO" in capsys.readouterr().out


def test_references_are_listed_once_per_distinct_row(tmp_path):
    def with_refs(ability: float) -> dict:
        summary = fake_summary("sw", "maet", 1.0, 0, [0.3])
        cell = lambda mean: {"mean": mean, "low": mean - 0.05, "high": mean + 0.05}  # noqa: E731
        summary["testbed"] += [{"model": "base", "seeds": 1, "arith_sw": cell(0.1), "arith_en": cell(0.12)},
                               {"model": "ability", "seeds": 1, "arith_sw": cell(ability), "arith_en": cell(0.6)}]
        return summary
    sweep = make_sweep(tmp_path, [(["merge.beta=0.5"], with_refs(0.2)), (["merge.beta=1.0"], with_refs(0.2)),
                                  (["merge.beta=2.0"], with_refs(0.25)), (["merge.beta=3.0"], None)])
    refs = report.reference_rows(report.collect(sweep)[0])
    assert [(r["model"], r["accuracy"], r["jobs"]) for r in refs] == \
        [("ability", 0.2, ["0", "1"]), ("ability", 0.25, ["2"]), ("base", 0.1, ["0", "1", "2"])]
    text = report.write(sweep)
    assert "References evaluated by the jobs" in text and "| sw     | base    |" in text
    curve = report.numeric_settings(report.collect(sweep)[0] + report.reference_points(report.collect(sweep)[0]))
    assert {(p["method"], p["merge.beta"]) for p in curve["merge.beta"]} == \
        {(m, b) for m in ("maet", "base (reference)", "ability (reference)") for b in (0.5, 1.0, 2.0)}
    assert (sweep / "plots" / "accuracy_vs_merge.beta.png").is_file()
    assert "References" not in report.write(make_sweep(tmp_path / "plain", [(["lang=sw"], fake_summary("sw", "maet", 1.0, 0, [0.1]))]))


def test_the_regime_table_lists_each_jobs_norms_and_errors_on_request(tmp_path):
    first, second = fake_summary("sw", "maet", 1.0, 0, [0.3]), fake_summary("sw", "maet", 1.0, 0, [0.2])
    first["regime"] = {"relative_norm": {"language": 0.0421, "theta_a": 0.01},
                       "disentanglement": {"theta_a": {"error": 0.25, "ability": 0.2, "language": 0.3}}}
    second["regime"] = {"relative_norm": {"language": 0.5}}
    sweep = make_sweep(tmp_path, [(["world.languages.1.distance=0.0"], first),
                                  (["world.languages.1.distance=0.5"], second)])
    assert "Regime" not in report.write(sweep)  # report.regime_table is off by default
    table = report.write(sweep, regime=True).split("Regime of each job")[1].splitlines()
    assert [c.strip() for c in table[1].split("|")[2:5]] == ["‖language‖/‖θ0‖", "‖theta_a‖/‖θ0‖",
                                                             "disentanglement theta_a"]
    cells = [[c.strip() for c in line.split("|")[2:5]] for line in table[3:5]]
    assert cells == [["0.042", "0.010", "0.250"], ["0.500", "", ""]]


def test_the_chain_pairs_each_model_with_the_one_before_it_in_each_job(tmp_path):
    summary = fake_summary("sw", "maet", 1.0, 0, [0.5, 0.5])
    # 4 items, 2 replications: θ_A right on 4 + 3, θ0 + R(A) on 2 + 2, the merge on 1 + 1 (lang_only: not in the chain)
    summary["correct"]["items"] = ["a", "b", "c", "d"]
    summary["correct"]["models"] = {"ability": ["1111", "1110"], "ability_only": ["1100", "0110"],
                                    "maet": ["1000", "0010"], "language_only": ["0000", "0000"]}
    sweep = make_sweep(tmp_path, [(["transfer.select=all"], summary)])
    steps = report.chain_steps(report.collect(sweep)[0], ["ability", "ability_transferred", "ability_only", "maet"])
    assert [(s["a"], s["b"]) for s in steps] == [("ability_only", "ability"), ("maet", "ability_only")]
    assert [s["diff"] for s in steps] == pytest.approx([(4 - 7) / 8, (2 - 4) / 8])  # mean over replications x items
    assert all(s["family"] == 2 and s["p_holm"] >= s["p"] for s in steps)
    text = report.write(sweep, chain=["ability", "ability_only", "maet"])
    assert "Steps along report.chain in maet" in text and "ability_only − ability" in text
    assert "Steps along" not in report.write(sweep)


def test_other_swept_keys_become_the_setting_and_get_a_curve(tmp_path):
    jobs = [([f"locate.ratio={r}", "lang=sw", "tracker=none"], fake_summary("sw", "maet", 1.0, 0, [r]))
            for r in (0.01, 0.05, 0.2)]
    sweep = make_sweep(tmp_path, jobs)
    rows, failed = report.collect(sweep)
    assert not failed and [r["setting"] for r in rows] == ["locate.ratio=0.01", "locate.ratio=0.05", "locate.ratio=0.2"]
    long = make_sweep(tmp_path / "long", [([f"transfer.tau={t}", "lang=sw"], fake_summary("sw", "maet", 1.0, 0, [0.1]))
                                          for t in ("0.03917730007820798", "-0.011655848117422228")])
    text = report.write(long)
    assert "transfer.tau=0.03918" in text and "transfer.tau=-0.01166" in text  # short in the table
    assert "0.03917730007820798" in (long / "summary.csv").read_text()  # every digit in the CSV
    images = report.sweep_plots(rows, sweep / "plots")
    assert set(images) == {"sweep/accuracy_vs_locate.ratio"} and images["sweep/accuracy_vs_locate.ratio"].is_file()


def test_method_bars_when_methods_are_swept(tmp_path):
    jobs = [([f"method={m}", f"lang={lang}"], fake_summary(lang, m, 1.0, 0, [0.3]))
            for m in ("maet", "ties", "base") for lang in ("sw", "bn")]
    rows, _ = report.collect(make_sweep(tmp_path, jobs))
    assert set(report.sweep_plots(rows, tmp_path / "plots")) == {"sweep/methods"}


def _callback_config(sweep: Path, tracker: dict) -> OmegaConf:
    basic = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    hydra = {"sweep": {"dir": str(sweep)}, "sweeper": {"_target_": basic}}
    return OmegaConf.create({"hydra": hydra, "tracker": tracker})


def test_callback_writes_table_and_plots_and_an_offline_wandb_summary_run(tmp_path, capsys):
    jobs = [([f"merge.alpha={a}", "lang=sw"], fake_summary("sw", "maet", a, 0, [a / 2])) for a in (0.0, 0.5, 1.0)]
    sweep = make_sweep(tmp_path / "sweep", jobs)
    tracker = {"name": "wandb", "project": "maet", "entity": None, "mode": "offline", "group": None}
    report.SweepReport().on_multirun_end(_callback_config(sweep, tracker))
    out = capsys.readouterr().out
    assert "Sweep summary" in out and "accuracy % [95% CI]" in out and (sweep / "summary.md").is_file()
    assert (sweep / "plots" / "accuracy_vs_alpha.png").is_file()
    tables = list(sweep.glob("wandb/offline-run-*/files/media/table/sweep/results_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == report.COLUMNS and len(table["data"]) == 3
    assert list(sweep.glob("wandb/offline-run-*/files/media/images/sweep/accuracy_vs_alpha_*.png"))


def test_callback_survives_a_failing_tracker_with_one_warning(tmp_path, monkeypatch):
    import wandb

    def refuse(**kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", refuse)
    sweep = make_sweep(tmp_path, [(["lang=sw"], fake_summary("sw", "maet", 1.0, 0, [0.5]))])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report.SweepReport().on_multirun_end(_callback_config(sweep, {"name": "wandb", "mode": "online"}))
    messages = [str(w.message) for w in caught if "W&B" in str(w.message)]
    assert len(messages) == 1 and "unreachable" in messages[0]
    assert (sweep / "summary.csv").is_file()


def test_no_wandb_summary_run_when_tracking_is_off(tmp_path):
    sweep = make_sweep(tmp_path, [(["lang=sw"], fake_summary("sw", "maet", 1.0, 0, [0.5]))])
    report.SweepReport().on_multirun_end(_callback_config(sweep, {"name": "none", "mode": "disabled"}))
    assert (sweep / "summary.md").is_file() and not (sweep / "wandb").exists()


def test_report_cli_rebuilds_an_existing_sweep(tmp_path, capsys):
    sweep = make_sweep(tmp_path, [(["lang=sw"], fake_summary("sw", "maet", 1.0, 0, [0.5])), (["lang=bn"], None)])
    assert report.main([str(sweep)]) == 0
    assert "job 1: lang=bn" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "missing")])


# ----------------------------------------------------------------------------- per-run pictures and tables
def test_tensor_names_map_to_layer_and_module():
    assert layer_module("model.layers.3.mlp.down_proj.weight") == (3, "down_proj")
    assert layer_module("model.language_model.layers.12.self_attn.q_proj.weight") == (12, "q_proj")
    assert layer_module("model.embed_tokens.weight") is None
    layers, modules, grid = plots.tensor_grid({"model.layers.1.mlp.up_proj.weight": 2.0,
                                               "model.layers.0.self_attn.q_proj.weight": 1.0})
    assert layers == [0, 1] and modules == ["q_proj", "up_proj"] and grid == [[1.0, None], [None, 2.0]]


def test_run_plots_are_png_files(tmp_path):
    names = [f"model.layers.{i}.{m}.weight" for i in range(3) for m in ("self_attn.q_proj", "mlp.down_proj")]
    summary = {"key_neurons": {n: 4 + i for i, n in enumerate(names)},
               "transfer": {"similarity": {n: 0.1 * i - 0.2 for i, n in enumerate(names)}, "kept": names[:2]}}
    images = job_summary.run_plots(summary, tmp_path)
    assert set(images) == {"plots/key_neurons", "plots/similarity"}
    for path in images.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert job_summary.run_plots({"key_neurons": {}, "transfer": {"similarity": {}, "kept": []}}, tmp_path) == {}


def test_testbed_columns_line_up_when_rows_lack_a_comparison():
    cell = {"mean": 0.5, "low": 0.4, "high": 0.6, "per_seed": [0.5]}
    paired = {"diff": 0.1, "low": 0.0, "high": 0.2, "p": 0.3, "n": 10}
    bpb = "heldout_sw/bits_per_byte"
    summary = {"testbed": [{"model": "maet", "seeds": 1, "arith_sw": cell, "vs_base": paired, bpb: 1.5},
                           {"model": "base", "seeds": 1, "arith_sw": cell, bpb: 1.7}]}
    columns, rows = job_summary.testbed_flat(summary)
    assert columns == ["model", "seeds", "arith_sw", "arith_sw/low", "arith_sw/high", "vs_base", "vs_base/low",
                       "vs_base/high", "vs_base/p", "heldout_sw/bits_per_byte"]
    assert all(len(r) == len(columns) for r in rows)
    assert rows[1][columns.index("vs_base")] is None and rows[1][-1] == 1.7


# ----------------------------------------------------------------------------- dev split
def test_dev_and_test_splits_are_disjoint_and_cover_the_items():
    items = [{"q": i} for i in range(40)]
    dev = split_items(items, EvalSettings(split="dev", dev_size=10))
    test = split_items(items, EvalSettings(split="test", dev_size=10))
    assert len(dev) == 10 and len(test) == 30
    assert sorted(x["q"] for x in dev + test) == list(range(40))
    assert split_items(items, EvalSettings(split="dev", dev_size=10)) == dev  # same seed, same split
    assert split_items(items, EvalSettings(split="dev", dev_size=10, seed=7)) != dev
    assert split_items(items, EvalSettings()) == items


@pytest.mark.parametrize("overrides, key", [
    (["eval.split=dev", "eval.dev_size=0"], "eval.dev_size"),  # dev split without dev items
    (["eval.split=train", "eval.dev_size=5"], "eval.split"),
    (["eval.dev_size=-1"], "eval.dev_size"),
    (["eval=global_mmlu_stem", "ability=science", "eval.dev_size=5"], "eval.dev_size"),  # hub task: cannot split
])
def test_bad_dev_split_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        load(*overrides)
    assert err.value.key == key


# ----------------------------------------------------------------------------- presets
@pytest.mark.parametrize("preset", sorted(p.stem for p in (PROJECT_ROOT / "conf" / "sweep").glob("*.yaml")))
def test_every_hydra_sweep_preset_composes_to_valid_jobs(preset):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"+sweep={preset}"], return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params)
    searched = preset == "optuna" or preset.startswith("tune_")  # Optuna: interval(a, b) / choice(x, y)
    assert "lang" in params or searched
    load(f"+sweep={preset}")  # the preset's own keys validate
    for pick in (0, -1):  # the first and last point of every swept key validate
        values = {k: re.search(r"\(([^()]*)\)[)\s]*$", str(v))[1] if searched else str(v)  # tag(log, interval(a, b))
                  for k, v in params.items()}
        load(f"+sweep={preset}", *(f"{k}={v.split(',')[pick].strip()}" for k, v in values.items()))


@pytest.mark.parametrize("path", sorted((PROJECT_ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_wandb_sweep_file_calls_launch_py_with_valid_overrides(path):
    spec = yaml.safe_load(path.read_text())
    assert spec["program"] == "launch.py" and "${args_no_hyphens}" in spec["command"]
    assert spec["metric"]["name"] == "headline"
    params = {k: p for k, p in spec["parameters"].items() if not k.startswith("hydra.")}  # Hydra's own: not a job key
    firsts = {key: p["values"][0] if "values" in p else p["min"] if "min" in p else p["value"]
              for key, p in params.items()}
    overrides = [f"{k}={v}" for k, v in firsts.items() if k != "tracker.mode"]
    load(*overrides)
    lasts = [f"{k}={p['values'][-1] if 'values' in p else p['max']}" for k, p in params.items()
             if "values" in p or "max" in p]
    load(*lasts)


def test_the_bayes_wandb_sweep_searches_what_the_optuna_preset_searches_on_dev_only():
    spec = yaml.safe_load((PROJECT_ROOT / "sweeps" / "optuna.yaml").read_text())
    preset = yaml.safe_load((PROJECT_ROOT / "conf" / "sweep" / "optuna.yaml").read_text())
    assert spec["method"] == "bayes" and spec["run_cap"] == preset["hydra"]["sweeper"]["n_trials"]
    for key, interval in preset["hydra"]["sweeper"]["params"].items():
        low, high = (float(x) for x in interval.removeprefix("interval(").rstrip(")").split(","))
        assert (spec["parameters"][key]["min"], spec["parameters"][key]["max"]) == (low, high), key
    for key, value in [("eval.split", "dev"), ("eval.dev_size", preset["eval"]["dev_size"]),
                       ("report.seeds", preset["report"]["seeds"])]:
        assert spec["parameters"][key]["value"] == value
    assert "WANDB_SWEEP_ID" in spec["parameters"]["hydra.run.dir"]["value"]  # the runs in one folder for maet.reporting.report


def test_best_on_test_over_a_folder_of_runs_chooses_on_dev_only(tmp_path):
    jobs = [(["merge.alpha=0.5", "eval.split=dev", "hydra.run.dir=x"], {**fake_summary("sw", "maet", 0.5, 0, [0.2]), "split": "dev"}),
            (["merge.alpha=1.5", "eval.split=dev"], {**fake_summary("sw", "maet", 1.5, 0, [0.4]), "split": "dev"}),
            (["merge.alpha=1.0", "eval.split=dev"], None)]
    sweep = make_sweep(tmp_path / "runs", jobs)
    assert report.best_dev_job(sweep) == ("1", ["merge.alpha=1.5"])
    (sweep / "0" / "metrics.json").write_text(json.dumps(fake_summary("sw", "maet", 0.5, 0, [0.9])))  # a test-split job
    with pytest.raises(SystemExit, match="dev only"):
        report.best_dev_job(sweep)


def test_launcher_presets_compose():
    from hydra import compose, initialize_config_dir

    from maet.schema.resolvers import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        slurm = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        local = compose("config", overrides=["hydra/launcher=local_parallel"], return_hydra_config=True)
        optuna = compose("config", overrides=["+sweep=optuna"], return_hydra_config=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher") and slurm.hydra.launcher.gpus_per_node == 1
    assert local.hydra.launcher._target_.endswith("JoblibLauncher") and local.hydra.launcher.n_jobs == 2
    assert optuna.hydra.sweeper._target_.endswith("OptunaSweeper") and optuna.eval.split == "dev"
    assert set(optuna.hydra.sweeper.params) == {"merge.alpha", "merge.beta"}


def test_parallel_jobs_get_one_gpu_each(monkeypatch):
    import torch

    from maet.models.model import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [str(resolve_device("auto", k)) for k in range(6)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3",
                                                                  "cuda:0", "cuda:1"]
    assert str(resolve_device("auto")) == "cuda"  # a single run: the default device
    assert str(resolve_device("cpu", 3)) == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert str(resolve_device("cuda", 3)) == "cuda"


def test_cache_entries_are_logged_as_wandb_artifacts_by_reference(tmp_path):
    from maet.reporting.tracking import open_tracker
    from maet.schema.settings import TrackerSettings

    entry = tmp_path / "cache" / "ability" / "k123"
    entry.mkdir(parents=True)
    (entry / "tensors.safetensors").write_bytes(b"x" * 4096)
    tracker = open_tracker(TrackerSettings(mode="offline"), {"a": 1}, str(tmp_path / "run"), name="t")
    tracker.log_artifacts([("ability-k123", "delta", entry)])
    tracker.finish()
    [log] = list((tmp_path / "run").glob("wandb/offline-run-*/run-*.wandb"))
    data = log.read_bytes()
    assert b"ability-k123" in data and f"file://{entry.resolve()}".encode() in data
    # by reference: the tensors are not copied into W&B's staging area or the run's files
    assert not list((tmp_path / "run").rglob("tensors.safetensors"))


def test_the_source_language_column_follows_the_configured_source_language():
    summary = fake_summary("sw", "maet", 1.0, 0, [0.3])
    assert report.job_row(summary)["english"] == 0.8  # no source_lang recorded: English
    row = summary["testbed"][0]
    row["arith_es"] = {**row["arith_en"], "mean": 0.6}
    assert report.job_row({**summary, "source_lang": "es"})["english"] == 0.6  # not whatever ends in _en
    assert metrics.source_cell({**summary, "source_lang": "de"}, row) is None
    assert metrics.method_row(summary) is row and metrics.kept_tensors({"transfer": {"kept": ["t"]}}) == ["t"]
