"""What a researcher reads in W&B, read back from the offline run files themselves (`run-*.wandb`):
training curves on each stage's own axis, the results tables as summary scalars, runs that can be
told apart, lineage; and the pure pieces that build them."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from test_launch import SMALL

from maet.method import train
from maet.reporting import dashboard, wandbfile
from maet.runtime import live
from maet.schema.resolvers import PROJECT_ROOT


def offline_run(run_dir: Path) -> wandbfile.OfflineRun:
    [folder] = list(run_dir.glob("wandb/offline-run-*"))
    return wandbfile.read_run(wandbfile.run_file(folder))


@pytest.mark.slow
def test_two_default_runs_differing_in_beta_are_told_apart_with_curves_and_paired_scalars(tmp_path):
    """Two real offline runs of the default job (reduced budgets) that
    differ only in merge.beta, sharing one cache (the second reads every artifact)."""
    common = [*SMALL, "report.seeds=1", "report.references=[language_only]", "tracker.curve_every=1",
              f"paths.cache_dir={tmp_path / 'cache'}"]
    runs, outputs = {}, {}
    for beta in ("1.0", "0.5"):
        proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "launch.py"), *common, f"merge.beta={beta}",
                               f"hydra.run.dir={tmp_path / beta}"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        runs[beta], outputs[beta] = offline_run(tmp_path / beta), proc.stdout + proc.stderr
    for beta, run in runs.items():
        summary = json.loads((tmp_path / beta / "metrics.json").read_text())
        # a loss curve of >= 20 points on the stage's own step axis (the base's 32 pre-training steps),
        # also in the second run, whose base came from the cache
        base, ability = "train/base/pre_training", "train/ability/theta_a_ability"
        steps, losses = run.curve(f"{base}/step"), run.curve(f"{base}/loss")
        assert len(losses) >= 20 and steps == list(range(1, len(steps) + 1))
        assert f"{base}/loss" in run.metrics and len(run.curve(f"{ability}/loss")) >= 2
        # the first run trains: its curves were logged live, θ_A's after the base's last point (logged
        # at the end, row i of every curve together, θ_A's first point would come before)
        runtimes = {key: [row["_runtime"] for row in run.history if f"{key}/loss" in row] for key in (base, ability)}
        if beta == "1.0":
            assert runtimes[ability][0] > runtimes[base][-1]
        assert summary["stages"]["base"]["final_loss"] == pytest.approx(losses[-1], abs=1e-4)
        # the paired difference vs language_only as summary scalars (the numbers of metrics.json)
        paired = next(r for r in summary["testbed"] if r["model"] == "maet")["vs_language_only"]
        for field in ("diff", "low", "high", "p"):
            assert run.summary[f"paired/vs_language_only/{field}"] == pytest.approx(paired[field])
        assert run.summary["testbed/language_only/arith_sw/mean"] == pytest.approx(
            next(r for r in summary["testbed"] if r["model"] == "language_only")["arith_sw"]["mean"])
        assert run.summary["compute/tokens"] == summary["compute"]["tokens"] > 0  # also when cached
        assert not [k for k in run.summary if k.endswith("/seconds") and not k.startswith("stages/")]
        # identity: the Hydra choices and overrides in the config, job type, tags
        assert run.config["hydra.choices.model"] == "world_tiny" and run.config["hydra.choices.lang"] == "sw"
        assert f"merge.beta={beta}" in run.config["hydra.overrides"]
        assert run.job_type == "maet" and {"experiment:small_delta", "lang:sw", "ablation:default"} <= set(run.tags)
        # lineage: only what this job made is logged as its output; its own results files too
        made = run.config["lineage"]["made"]
        assert {a["name"] for a in run.artifacts if a["type"] in ("model", "mask", "delta")} == set(made)
        assert any(a["name"].startswith("results-") for a in run.artifacts)
        assert any(a["type"] == "run_table" and a["name"].endswith("predictions") for a in run.artifacts)
        # lm-eval's own results and samples files beside ours for every evaluation this job ran
        # (the second run reads language_only's evaluation from the cache: no files for it)
        ran = ("maet", "language_only") if beta == "1.0" else ("maet",)
        for model in ("maet", "language_only"):
            found = list((tmp_path / beta / "lm_eval" / model).rglob("results_*.json"))
            assert bool(found) == (model in ran), (beta, model)
            if found:
                assert json.loads(found[0].read_text())["results"]["arith_sw"]["exact_match,last-number"] == \
                    pytest.approx(summary["testbed"][[r["model"] for r in summary["testbed"]].index(model)]["arith_sw"]["mean"])
                assert list(found[0].parent.glob("samples_arith_sw_*.jsonl"))
        assert "wandb:" not in outputs[beta]  # no W&B banner on the console (report.quiet)
        assert "Running generate_until requests" not in outputs[beta]  # lm-eval's bars are in console.log
        assert "Running generate_until requests" in (tmp_path / beta / "console.log").read_text()
    assert runs["1.0"].name != runs["0.5"].name
    assert runs["0.5"].config["lineage"]["made"] == [] and runs["0.5"].config["lineage"]["read"]
    assert json.loads((tmp_path / "0.5" / "metrics.json").read_text())["beta"] == 0.5


def test_no_tracker_answers_everything_the_wandb_tracker_does():
    import inspect

    from maet.reporting import tracking

    public = {n for n, v in vars(tracking.WandbTracker).items() if callable(v) and not n.startswith("_")}
    assert public <= set(dir(tracking.NoTracker))
    for name in public:  # same arguments, so that tracker=none takes every call the pipeline makes
        assert list(inspect.signature(getattr(tracking.NoTracker, name)).parameters) == \
            list(inspect.signature(getattr(tracking.WandbTracker, name)).parameters), name


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_entries_read_from_the_cache_are_used_online_and_never_logged_as_outputs(tmp_path, monkeypatch, mode):
    import types

    import wandb

    from maet.reporting import tracking
    from maet.schema.settings import TrackerSettings

    calls = []
    run = types.SimpleNamespace(id="r1", dir=str(tmp_path), settings=types.SimpleNamespace(sync_dir=""),
                                use_artifact=lambda a: calls.append(("use", a.name)),
                                log_artifact=lambda a: calls.append(("log", a.name)))
    monkeypatch.setattr(wandb, "init", lambda **kwargs: run)
    tracker = tracking.open_tracker(TrackerSettings(mode=mode), {}, str(tmp_path))
    tracker.log_artifacts([("ability-made", "delta", tmp_path)])
    tracker.use_artifacts([("locate-read", "mask", tmp_path)])
    assert calls == [("log", "ability-made")] + ([("use", "locate-read")] if mode == "online" else [])


def test_run_names_differ_whenever_the_overrides_differ_and_stay_short():
    assert dashboard.run_name("maet", "sw", []) == "maet-sw"
    assert dashboard.run_name("maet", "sw", ["merge.beta=0.5", "paths.cache_dir=/x", "lang=sw"]) == "maet-sw merge.beta=0.5"
    assert dashboard.run_name("maet", "bn", ["+ablation=contrast"]) == "maet-bn ablation=contrast"
    long = [f"world.key_{i}=123456" for i in range(12)]
    a, b = dashboard.run_name("maet", "sw", long), dashboard.run_name("maet", "sw", [*long, "merge.beta=0.5"])
    assert a != b and len(a) <= dashboard.NAME_LIMIT and len(b) <= dashboard.NAME_LIMIT


def test_curves_share_history_rows_but_keep_their_own_step_axis():
    curves = {"base": {"base: pre-training": [[10, 3.0, 0.1], [20, 2.0, 0.05], [25, 1.5, 0.0]]},
              "ability": {"extract: θ_A (ability)": [[5, 4.0, 0.01]], "extract: θ_G (general)": [[5, 4.5, 0.01]]}}
    prefixes, rows = dashboard.curve_rows(curves)
    assert prefixes == ["train/base/pre_training", "train/ability/theta_a_ability", "train/ability/theta_g_general"]
    base = "train/base/pre_training"
    assert len(rows) == 3 and rows[2] == {f"{base}/step": 25, f"{base}/loss": 1.5, f"{base}/lr": 0.0}
    assert rows[0]["train/ability/theta_g_general/loss"] == 4.5


def test_the_training_loop_records_loss_and_lr_every_n_steps_and_the_last(tiny_model):
    from conftest import random_batches

    params = [p for p in tiny_model.parameters()]
    stats = train.optimize(lambda b: tiny_model(input_ids=b, labels=b).loss, params, random_batches(320, 7), 7,
                           1e-3, "t: loop", warmup_ratio=0.0, weight_decay=0.0, grad_clip=1.0, curve_every=3)
    points = stats.curves["t: loop"]
    assert [p[0] for p in points] == [3, 6, 7] and all(p[1] > 0 and p[2] > 0 for p in points)
    joined = (stats + stats).curves
    assert list(joined) == ["t: loop", "t: loop #2"]


def test_a_training_loop_streams_each_point_to_the_live_sink_as_it_is_made(tiny_model):
    from conftest import random_batches

    params, sent = [p for p in tiny_model.parameters()], []

    def run(desc):
        stats = train.optimize(lambda b: tiny_model(input_ids=b, labels=b).loss, params, random_batches(320, 7), 7,
                               1e-3, desc, warmup_ratio=0.0, weight_decay=0.0, grad_clip=1.0, curve_every=3)
        sent.append(len(points))  # what the sink had when the loop returned
        return stats

    points = []
    with live.streaming(lambda *point: points.append(point)), live.stage("locate/seed1"):
        joined = run("t: loop") + run("t: loop")  # the same loop twice in one stage: `#2`, as the curves name it
    assert sent == [3, 6]
    assert points == [("locate/seed1", name, *p) for name, curve in joined.curves.items() for p in curve]
    assert [p[1] for p in points] == ["t: loop"] * 3 + ["t: loop #2"] * 3
    run("t: loop")  # outside a stream: nothing sent
    assert len(points) == 6


class FakeRun:
    def __init__(self):
        self.logged, self.defined = [], []

    def log(self, row):
        self.logged.append(row)

    def define_metric(self, name, **kwargs):
        self.defined.append(name)


def test_curves_logged_live_are_not_logged_again_at_the_end():
    from maet.reporting.tracking import WandbTracker

    tracker = object.__new__(WandbTracker)
    tracker.run = FakeRun()
    tracker.log_point("train/ability/theta_a_ability", 5, 4.0, 0.01)
    curves = {"base": {"base: pre-training": [[10, 3.0, 0.1]]},  # read from the cache: replayed at the end
              "ability": {"extract: θ_A (ability)": [[5, 4.0, 0.01]]}}  # trained here: streamed already
    tracker.log_curves(*dashboard.curve_rows(curves))
    assert tracker.run.logged == [
        {"train/ability/theta_a_ability/step": 5, "train/ability/theta_a_ability/loss": 4.0,
         "train/ability/theta_a_ability/lr": 0.01},
        {"train/base/pre_training/step": 10, "train/base/pre_training/loss": 3.0, "train/base/pre_training/lr": 0.1}]
    assert tracker.run.defined.count("train/ability/theta_a_ability/loss") == 1


def test_the_run_file_reader_joins_records_split_across_blocks(tmp_path):
    """Records longer than a block come as FIRST, MIDDLE..., LAST pieces (LevelDB log format)."""
    from wandb.proto import wandb_internal_pb2

    record = wandb_internal_pb2.Record()
    item = record.summary.update.add()
    item.key, item.value_json = "big", json.dumps("x" * 70000)
    payload, data = record.SerializeToString(), bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 1))
    pieces, first = [], True
    while payload:
        room = wandbfile.BLOCK - len(data) % wandbfile.BLOCK - wandbfile.HEADER
        if room <= 0:
            data += b"\0" * (room + wandbfile.HEADER)
            continue
        chunk, payload = payload[:room], payload[room:]
        kind = wandbfile.FULL if first and not payload else wandbfile.FIRST if first else \
            wandbfile.LAST if not payload else wandbfile.MIDDLE
        pieces.append(kind)
        data += struct.pack("<IHB", 0, len(chunk), kind) + chunk
        first = False
    (tmp_path / "run-x.wandb").write_bytes(bytes(data))
    assert pieces[0] == wandbfile.FIRST and pieces[-1] == wandbfile.LAST
    assert wandbfile.read_run(tmp_path / "run-x.wandb").summary["big"] == "x" * 70000


def test_predictions_table_has_one_row_per_item_under_the_headline_filter():
    predictions = [{"model": "maet", "seed": 0, "lang": "sw", "item": "arith_sw/0", "response": " 7 .",
                    "filtered": ["7"], "filter": "last-number", "target": "7", "correct": 1.0},
                   {"model": "maet", "seed": 0, "lang": "sw", "item": "arith_sw/0", "response": " 7 .",
                    "filtered": ["7"], "filter": "other", "target": "7", "correct": 1.0}]
    rows = dashboard.prediction_rows(predictions, "last-number")
    assert rows == [["maet", 0, "sw", "arith_sw/0", " 7 .", "7", "7", 1.0]]
    assert len(dashboard.PREDICTION_COLUMNS) == len(rows[0])
