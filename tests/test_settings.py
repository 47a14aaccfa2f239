"""Bad values fail at the edge, before any model is loaded, naming the key and what is allowed."""

import subprocess
import sys

import pytest
import yaml
from conftest import load
from hydra.errors import MissingConfigException

from maet.schema.resolvers import PROJECT_ROOT
from maet.schema.settings import ConfigError

_load = load


def test_default_config_is_valid():
    s = _load()
    assert s.lang.code == "sw" and s.source_lang.code == "en" and s.eval.langs == ["sw", "en"]
    assert s.eval.benchmark == "arith" and s.lang.corpus.source == "world"


def test_shared_data_config_is_valid():
    shared = _load("experiment=shared_data", "lang=bn")
    assert shared.eval.benchmark == "mgsm" and shared.lang.corpus.path.endswith("text/bn.txt")


@pytest.mark.parametrize("override, key, allowed", [
    ("locate.ratio=0", "locate.ratio", "(0, 1]"),
    ("locate.ratio=1.5", "locate.ratio", "(0, 1]"),
    ("locate.ratio=-0.1", "locate.ratio", "(0, 1]"),
    ("locate.scope=row", "locate.scope", "tensor, layer, global"),
    ("locate.score=magic", "locate.score", "grad, weight_change, activation, random"),
    ("locate.modules=[q_proj,lm_head]", "locate.modules", "subset"),
    ("locate.tokens=0", "locate.tokens", "> 0"),
    ("extract.tokens=-5", "extract.tokens", "> 0"),
    ("language.tokens=-1", "language.tokens", "> 0"),
    ("language.train=half", "language.train", "full, key_neurons"),
    ("merge.alpha=nan", "merge.alpha", "finite"),
    ("merge.beta=inf", "merge.beta", "finite"),
    ("transfer.select=best", "transfer.select", "threshold, ratio, all"),
    ("transfer.select=abs_threshold", "transfer.tau", "(0, 1]"),
    ("transfer.similarity=cols", "transfer.similarity", "tensor, rows"),
    ("transfer.keep=0", "transfer.keep", "(0, 1]"),
    ("eval.limit=0", "eval.limit", ">= 1"),
    ("experiment=shared_data eval.langs=[sw,xx]", "eval.langs", "benchmark file"),
    ("eval.langs=[sw,xx]", "eval.langs", "languages of the built-in world"),
    ("lang=te", "lang.corpus.path", "a corpus of the built-in world"),
    ("world.languages=[]", "world.languages", "includes en"),
    ("report.references=[base,teacher]", "report.references", "ability, ability_full, ability_only, ability_transferred, base, cpt_all"),
    ("report.references=[base] report.chain=[base,ability]", "report.chain", "the method (maet) or one of report.references"),
    ("experiment=shared_data report.references=[oracle]", "report.references", "built-in world"),
    ("experiment=shared_data paths.data_dir=/nonexistent/data", "paths.data_dir", "existing directory"),
    ("experiment=shared_data lang.corpus.path=/nonexistent.txt", "lang.corpus.path", "existing file"),
    ("model.scratch.hidden_size=30", "model.scratch.hidden_size", "multiple"),
    ("model.gguf_file=model.gguf", "model.gguf_file", "null with model.source=scratch"),
    ("tracker.mode=loud", "tracker.mode", "offline, online, disabled"),
    ("locate.ratio=abc", "locate.ratio", "type"),
    ("method.name=maett", "method.name", "did you mean 'maet'?"),
    ("method.name=tie", "method.name", "did you mean 'ties'?"),
    ("merge.drop=1", "merge.drop", "[0, 1)"),
    ("merge.density=0", "merge.density", "(0, 1]"),
    ("experiment=shared_data model=local", "model.path", "hub id or folder"),
    ("experiment=shared_data model=local model.path=/nonexistent/model", "model.path", "existing model folder"),
    ("experiment=hub lang.corpus.max_tokens=0", "lang.corpus.max_tokens", "> 0"),
    ("experiment=hub eval=global_mmlu_stem eval.task_template=mmlu", "eval.task_template", "{lang}"),
])
def test_bad_values_name_the_key_and_what_is_allowed(override, key, allowed):
    with pytest.raises(ConfigError) as info:
        _load(*override.split())
    assert info.value.key == key
    assert key in str(info.value) and allowed in str(info.value)


@pytest.mark.parametrize("overrides", [
    "experiment=hub model=qwen2_5_0_5b lang=bn",
    "experiment=hub model=llama3_8b ability=science eval=global_mmlu_stem lang=te",
    "experiment=shared_data model=gemma3_270m eval.source=hub",
    "experiment=shared_data model=qwen2_5_7b",
])
def test_real_model_configs_compose(overrides):
    s = _load(*overrides.split())
    assert s.model.source == "hub" and "/" in s.model.path and s.model.trust_remote_code is False


def test_hub_corpora_are_named_by_language():
    s = _load("experiment=hub", "lang=bn")
    assert (s.lang.corpus.source, s.lang.corpus.path, s.lang.corpus.name) == ("hub", "wikimedia/wikipedia", "20231101.bn")
    assert s.source_lang.corpus.name == "20231101.en" and s.lang.corpus.max_tokens == 1_100_000
    science = _load("experiment=hub", "ability=science", "eval=global_mmlu_stem", "lang=sw")
    from maet.evaluation.evaluate import task_name
    assert task_name(science.eval, "sw") == "global_mmlu_full_sw_stem"


def test_the_built_in_world_needs_no_data_folder():
    assert _load("paths.data_dir=/nonexistent/data").paths.data_dir == "/nonexistent/data"


def test_unknown_language_lists_the_available_ones():
    with pytest.raises(MissingConfigException) as info:
        _load("lang=xx")
    message = str(info.value)
    assert "lang/xx" in message and "sw" in message and "bn" in message


def test_launch_fails_fast_on_a_bad_value_without_touching_the_cache(tmp_path):
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "launch.py"), "locate.ratio=2", f"paths.cache_dir={cache}",
         f"hydra.run.dir={tmp_path / 'run'}", "tracker=none"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "locate.ratio=2" in proc.stderr and "(0, 1]" in proc.stderr
    assert "Traceback" not in proc.stderr  # one clear line, not a stack trace
    assert not cache.exists(), "work started before the config was validated"


def test_a_bad_value_anywhere_in_a_sweep_fails_before_the_first_job(tmp_path):
    cache, sweep = tmp_path / "cache", tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "launch.py"), "-m", "lang=sw,bn", "merge.alpha=0.5,1.0,nan",
         f"paths.cache_dir={cache}", f"hydra.sweep.dir={sweep}", "tracker=none"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "merge.alpha=nan" in proc.stderr and "a finite number" in proc.stderr and "sweep point" in proc.stderr
    assert not cache.exists() and not sweep.exists(), "a job started before the sweep was validated"


def test_sweep_check_covers_every_value_of_presets_and_the_command_line():
    from maet.config.sweepcheck import check_sweep, swept_values

    conf = PROJECT_ROOT / "conf"
    fixed, swept = swept_values(["lang=sw,bn", "seed=3", "merge.alpha=interval(0,2)"],
                                {"lang": "te", "locate.ratio": "0.1,0.2"})
    assert fixed == ["seed=3"] and swept == {"lang": ["sw", "bn"], "locate.ratio": ["0.1", "0.2"]}
    assert check_sweep(["-m", "+sweep=baselines"], conf) == 1 + 8 + 1  # first point, 8 more methods, bn
    assert check_sweep(["-m", "+sweep=baselines", "lang=sw"], conf) == 1 + 8
    with pytest.raises(ConfigError, match=r"locate.ratio=2.0.*sweep point: .*locate.ratio=2"):
        check_sweep(["-m", "+sweep=ratio", "locate.ratio=0.1,2"], conf)


@pytest.mark.parametrize("override, key, allowed", [
    ("merge.alpha=abc", "merge.alpha", "float"),
    ("locate.score=gradd", "locate.score", "did you mean 'grad'?"),
    ("source_lang=bn", "source_lang", "lang@source_lang="),  # a value for a node that needs the group syntax
    ("train=5", "train", "train.batch_size="),
])
def test_composition_rejects_what_the_schema_forbids_in_one_line(override, key, allowed, tmp_path):
    """The schema registered with Hydra's ConfigStore: `--cfg job` (no model, no job) already fails."""
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "launch.py"), override, "--cfg", "job"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and proc.stdout == ""
    line, = proc.stderr.strip().splitlines()  # one line
    assert f"{key}=" in line and allowed in line and "?=" not in line, line


def test_the_schema_is_what_hydra_composes_against():
    with pytest.raises(ConfigError) as info:
        _load("locate.scope=row")
    assert info.value.key == "locate.scope" and "tensor, layer, global" in info.value.allowed
    s = _load("locate.score=weight_change", "eval.split=dev", "eval.dev_size=4")
    assert s.locate.score == "weight_change" and type(s.locate.score) is str  # jobs see plain strings


def test_a_target_language_equal_to_the_source_is_rejected():
    with pytest.raises(ConfigError) as info:
        _load("lang=en")
    assert info.value.key == "lang.code" and "source_lang.code='en'" in info.value.allowed



def test_each_config_group_sets_only_the_keys_under_its_own_name():
    """Only the presets (experiment, +ablation, +sweep, the site's local) write elsewhere (`@package _global_`)."""
    presets = {"experiment", "ablation", "sweep", "hydra", "local"}
    groups = [d for d in (PROJECT_ROOT / "conf").iterdir() if d.is_dir() and d.name not in presets]
    assert {"extract", "language", "transfer", "merge"} <= {d.name for d in groups}
    for folder in groups:
        for path in folder.glob("*.yaml"):
            assert "@package" not in path.read_text(), f"{path} writes outside `{folder.name}.*`"
    s = _load("language.tokens=7", "transfer.tau=0.1", "merge.alpha=0.5", "extract.lr=0.2")
    assert (s.language.tokens, s.transfer.tau, s.merge.alpha, s.extract.lr) == (7, 0.1, 0.5, 0.2)


def test_help_lists_the_groups_and_every_key_with_its_doc():
    from maet.config import helpdoc

    assert helpdoc.main(["--check"]) == 0, "conf/hydra/help/maet.yaml is stale: run python -m maet.config.helpdoc"
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "launch.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert "method: ability_full, ability_only, ability_transferred, base, cpt_all" in proc.stdout and "language: default" in proc.stdout
    assert "merge.alpha" in proc.stdout and "coefficient μ of the ability weights" in proc.stdout
    assert "defaults:" not in proc.stdout and "_target_" not in proc.stdout  # not a raw config dump


def test_each_merge_method_defaults_to_its_dev_tuned_setting_and_an_override_wins():
    """method=X selects conf/merge/X.yaml (from +sweep=tune_X); merge=default, a key=value and
    +ablation=literal (MAET as the paper reads most literally) each take precedence."""
    for method in ("maet", "task_arithmetic", "ties", "dare", "full_key_rows", "full_random_rows"):
        tuned = yaml.safe_load((PROJECT_ROOT / "conf" / "merge" / f"{method}.yaml").read_text())
        s = _load(f"method={method}")
        assert all(getattr(s.merge, key) == value for key, value in tuned.items() if key != "defaults"), method
        assert (s.merge.alpha, s.merge.beta) != (1.0, 1.0)
        shared, overridden = _load(f"method={method}", "merge=default"), _load(f"method={method}", "merge.alpha=0.3")
        assert (shared.merge.alpha, shared.merge.beta, overridden.merge.alpha) == (1.0, 1.0, 0.3)
    maet = _load()
    assert (maet.method.name, maet.extract.general, maet.transfer.select) == ("maet", "project", "all")
    literal = _load("+ablation=literal")
    assert (literal.extract.general, literal.transfer.select, literal.transfer.tau, literal.transfer.similarity) == (
        "subtract", "threshold", 0.0, "tensor")
    assert (literal.merge.alpha, literal.merge.beta) == (1.0, 1.0)
    assert _load("method=ties", "+ablation=literal").merge == _load("method=ties", "merge=default").merge
    assert _load("+ablation=literal", "merge.beta=0.5").merge.beta == 0.5  # a key override still wins
    assert _load("method=layer_swap").merge.alpha == 1.0  # untuned methods keep the shared values
