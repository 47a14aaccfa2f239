"""Typed settings: the schema of `conf/`, checked once at the edge.

`load_settings(cfg)` turns the composed Hydra config into these dataclasses (OmegaConf checks
the types) and then checks every value's range, so that a bad value fails with a message that
names the key, the value and what is allowed, before any model or corpus is loaded. Stage
functions take these dataclasses, never a DictConfig.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LOCATE_SCORES = ("grad", "weight_change", "activation", "random")
LOCATE_SCOPES = ("tensor", "layer", "global")
TRANSFER_SELECTS = ("threshold", "ratio", "all")
LANGUAGE_TRAIN = ("full", "key_neurons")
CORPUS_FORMATS = ("text", "jsonl", "gsm8k")
CORPUS_SOURCES = ("local", "hub", "world")
BENCHMARKS = ("mgsm", "arith", "task")
REFERENCES = ("base", "ability", "language_only", "oracle")
MODEL_SOURCES = ("scratch", "hub", "local")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
EVAL_SOURCES = ("local", "hub")
TRACKERS = ("wandb", "none")
WANDB_MODES = ("offline", "online", "disabled")


SAFE_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # language codes name files under the cache and run dirs
SECRET_KEY = re.compile(r"(^|[_.-])(api_?key|secret|password|passwd|token|auth|credentials?)$", re.IGNORECASE)
SCRIPT_PREFIX = {"han": "CJK"}  # lang.script -> prefix of the Unicode character names of its letters


class ConfigError(ValueError):
    """A config value is not allowed; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"Bad config value {key}={value!r}: allowed is {allowed}.")


@dataclass
class CorpusSettings:
    source: str = "local"  # local: a file | hub: a Hugging Face dataset (streamed) | world: the built-in world
    path: str = "???"      # a file, a hub dataset id, or a world corpus `<general|ability|parallel>:<code>`
    format: str = "text"   # text: a document per line | jsonl: a JSON object per line | gsm8k: question/answer rows
    field: str = "text"    # the text field of jsonl / hub rows
    name: Optional[str] = None      # hub dataset config (e.g. 20231101.sw)
    split: str = "train"            # hub split
    revision: Optional[str] = None  # hub revision (recorded in cache keys)
    max_docs: Optional[int] = None    # stop after this many documents (null: no limit)
    max_tokens: Optional[int] = None  # stop once this many tokens are read (null: the whole corpus)


@dataclass
class LangSettings:
    code: str = "???"
    name: str = "???"
    script: str = "???"
    corpus: CorpusSettings = field(default_factory=CorpusSettings)


@dataclass
class ScratchSettings:
    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 2048
    tokenizer_files: list[str] = field(default_factory=list)
    tokenizer_max_docs: int = 20000
    corpus: str = "files"       # files: tokenizer_files (+ ability corpus) | world: the world's pre-training mix
    seed: int = 0               # init and pre-training seed of the base
    pretrain_tokens: int = 0    # pre-training tokens of the base (0: random init)
    pretrain_lr: float = 3e-3


@dataclass
class ModelSettings:
    name: str = "???"
    source: str = "scratch"
    path: Optional[str] = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    gguf_file: Optional[str] = None
    gradient_checkpointing: bool = False
    scratch: ScratchSettings = field(default_factory=ScratchSettings)


@dataclass
class AbilitySettings:
    name: str = "???"
    corpus: CorpusSettings = field(default_factory=CorpusSettings)


@dataclass
class WorldLanguageSettings:
    code: str = "???"
    script: str = "latin"
    order: str = "SVO"
    noun_first: bool = False
    distance: float = 0.5


@dataclass
class WorldSettings:
    seed: int = 0
    languages: list[WorldLanguageSettings] = field(default_factory=list)
    general_per_lang: int = 6000
    parallel_per_lang: int = 1500
    ability_per_lang: int = 6000
    benchmark_per_lang: int = 200
    max_operand: int = 9
    pretrain_equations: int = 3000
    pretrain_ability_en: int = 300


@dataclass
class OracleSettings:
    tokens: int = 32768
    lr: float = 3e-3


@dataclass
class ReportSettings:
    seeds: int = 1
    references: list[str] = field(default_factory=list)


@dataclass
class TrainSettings:
    batch_size: int = 8
    seq_len: int = 256
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    heldout_fraction: float = 0.05


@dataclass
class LocateSettings:
    score: str = "grad"
    ratio: float = 0.05
    scope: str = "tensor"
    modules: list[str] = field(default_factory=lambda: list(MODULES))
    tokens: int = 16384
    contrast: bool = False


@dataclass
class ExtractSettings:
    tokens: int = 32768
    lr: float = 1e-3
    subtract_general: bool = True
    full_lr: float = 5e-4  # full-parameter CPT on C(L0,A): the ability delta of the merging baselines


@dataclass
class LanguageSettings:
    tokens: int = 32768
    lr: float = 5e-4
    train: str = "full"


@dataclass
class TransferSettings:
    select: str = "threshold"
    tau: float = 0.0
    keep: float = 0.5


@dataclass
class MergeSettings:
    alpha: float = 1.0
    beta: float = 1.0
    density: float = 0.5   # ties: fraction of each task vector kept by magnitude
    drop: float = 0.9      # dare: drop probability
    swap_k: int = 1        # layer_swap: layers taken from the language model at each end


@dataclass
class MethodSettings:
    name: str = "maet"


@dataclass
class EvalSettings:
    benchmark: str = "mgsm"
    source: str = "local"
    task_family: str = "mgsm_native_cot"
    task_template: str = "{family}_{lang}"  # benchmark=task: an lm-eval task or group name per language
    metric: str = "exact_match"
    langs: list[str] = field(default_factory=list)
    num_fewshot: int = 8
    limit: Optional[int] = 16
    batch_size: int = 8
    max_gen_toks: Optional[int] = 64
    filter: str = "flexible-extract"
    heldout: bool = True
    seed: int = 1234
    split: str = "test"       # test | dev (dev: eval.dev_size items set aside for tuning, never in test)
    dev_size: int = 0


@dataclass
class TrackerSettings:
    name: str = "wandb"
    project: str = "maet"
    entity: Optional[str] = None
    mode: str = "offline"
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    log_artifacts: bool = True


@dataclass
class PathSettings:
    root_dir: str = "???"
    data_dir: str = "???"
    cache_dir: str = "???"
    output_dir: str = "???"


@dataclass
class Settings:
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch intra-op CPU threads (0: torch's default, one per core)
    world: WorldSettings = field(default_factory=WorldSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    ability: AbilitySettings = field(default_factory=AbilitySettings)
    source_lang: LangSettings = field(default_factory=LangSettings)
    lang: LangSettings = field(default_factory=LangSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    locate: LocateSettings = field(default_factory=LocateSettings)
    extract: ExtractSettings = field(default_factory=ExtractSettings)
    language: LanguageSettings = field(default_factory=LanguageSettings)
    transfer: TransferSettings = field(default_factory=TransferSettings)
    merge: MergeSettings = field(default_factory=MergeSettings)
    oracle: OracleSettings = field(default_factory=OracleSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    method: MethodSettings = field(default_factory=MethodSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    tracker: TrackerSettings = field(default_factory=TrackerSettings)
    paths: PathSettings = field(default_factory=PathSettings)


def load_settings(cfg: DictConfig) -> Settings:
    """Typed, validated settings from a composed config (raises ConfigError on a bad value)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Settings), cfg)
        settings = OmegaConf.to_object(merged)
    except MissingMandatoryValue as err:
        raise ConfigError(err.full_key, "???", "a value: this key has no default and must be set") from err
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(key, getattr(err, "value", None), f"a value of the schema's type ({err.msg})") from err
    validate(settings)
    return settings


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), list(map(str, allowed)), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(key, value, "one of " + ", ".join(map(str, allowed)) + hint)


def _check(key: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _positive_int(key: str, value: int) -> None:
    _check(key, value, isinstance(value, int) and value > 0, "an integer > 0")


def _corpus(key: str, corpus: CorpusSettings, world_corpora: set[str]) -> None:
    _choice(f"{key}.source", corpus.source, CORPUS_SOURCES)
    _choice(f"{key}.format", corpus.format, CORPUS_FORMATS)
    for name in ("max_docs", "max_tokens"):
        if getattr(corpus, name) is not None:
            _positive_int(f"{key}.{name}", getattr(corpus, name))
    if corpus.source == "world":
        _check(f"{key}.path", corpus.path, corpus.path in world_corpora,
               "a corpus of the built-in world: " + ", ".join(sorted(world_corpora)))
        return
    if corpus.source == "hub":
        _check(f"{key}.path", corpus.path, bool(corpus.path) and corpus.path != "???", "a hub dataset id")
        return
    path = Path(corpus.path)
    _check(f"{key}.path", corpus.path, path.is_file(), "an existing file (check paths.data_dir)")
    _check(f"{key}.path", corpus.path, path.stat().st_size > 0, "a non-empty file")


def _code(key: str, code: str) -> None:
    _check(key, code, isinstance(code, str) and SAFE_CODE.fullmatch(code) is not None,
           "a language code of letters, digits, '_' or '-' (it names files)")


def script_fraction(text: str, script: str) -> float:
    """Fraction of the letters of `text` whose Unicode name starts with the script's name
    (Latin -> LATIN ..., Han -> CJK ...); 1.0 for a text without letters."""
    prefix = SCRIPT_PREFIX.get(script.lower(), script.upper())
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 1.0
    return sum(unicodedata.name(ch, "").startswith(prefix) for ch in letters) / len(letters)


def _script(key: str, lang: LangSettings, min_fraction: float = 0.5) -> None:
    """Warns if a local text corpus is mostly not in the language's script (a wrong file?)."""
    c = lang.corpus
    if c.source != "local" or c.format != "text" or lang.script in ("???", ""):
        return
    with open(c.path, encoding="utf-8", errors="replace") as fh:
        fraction = script_fraction(fh.read(65536), lang.script)
    if fraction < min_fraction:
        warnings.warn(f"{key}.path={c.path!r}: only {fraction:.0%} of its letters are in "
                      f"{key.split('.')[0]}.script={lang.script!r} (expected at least {min_fraction:.0%}); "
                      f"is it the right file for {key.split('.')[0]}.code={lang.code!r}?", stacklevel=2)


def _local_model(m: ModelSettings) -> None:
    """A local model folder has a config and a tokenizer that fits the model's embedding."""
    if m.gguf_file:
        return
    config = Path(m.path) / "config.json"
    _check("model.path", m.path, config.is_file(), "a model folder with config.json (save_pretrained's layout)")
    raw = json.loads(config.read_text())
    vocab = raw.get("vocab_size") or raw.get("text_config", {}).get("vocab_size")
    from transformers import AutoTokenizer  # only here: loading a tokenizer is cheap, a model is not

    try:
        tokens = len(AutoTokenizer.from_pretrained(m.path, trust_remote_code=m.trust_remote_code))
    except Exception as err:  # no or broken tokenizer files
        raise ConfigError("model.path", m.path, f"a model folder with a tokenizer ({err})") from err
    if vocab:
        _check("model.path", m.path, tokens <= vocab,
               f"a folder whose tokenizer ({tokens} tokens) fits its model's embedding (vocab_size={vocab})")


def redact(tree: Any) -> Any:
    """A copy of a config tree with the values of secret-looking keys (api_key, token, password,
    ...) replaced by "<redacted>", for anything that is logged (budget keys like `tokens` stay)."""
    if isinstance(tree, dict):
        return {k: "<redacted>" if SECRET_KEY.search(str(k)) and v is not None else redact(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    return tree


def check_group_overrides(args: list[str], conf_dir: Path) -> None:
    """Command-line choices of config groups (`method=maett`, `lang=sw,xx`, `+ablation=...`)
    against the files in `conf/<group>/`; raises ConfigError with a did-you-mean hint before
    Hydra composes anything. Sweep functions (`glob(...)`, `range(...)`) and interpolations are left to Hydra."""
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        group = key.lstrip("+~").split("@", 1)[0]
        folder = conf_dir / group
        if not group or not folder.is_dir() or any(ch in value for ch in "()[]{}$"):
            continue
        if group.startswith("hydra/"):  # plugins add options (joblib, submitit_local, ...); Hydra lists them all
            continue
        options = tuple(sorted(p.stem for p in folder.glob("*.yaml")))
        for choice in (v.strip() for v in value.split(",")):
            if choice and not (key.startswith("~") and choice == "null"):
                _choice(group, choice, options)


def _world(w: WorldSettings) -> set[str]:
    """Checks the world settings; returns the names of its corpora."""
    codes = [lang.code for lang in w.languages]
    for i, code in enumerate(codes):
        _code(f"world.languages[{i}].code", code)
    _check("world.languages", codes, len(codes) == len(set(codes)) and "en" in codes,
           "a list of distinct languages that includes en (the source language)")
    for i, lang in enumerate(w.languages):
        _choice(f"world.languages[{i}].script", lang.script, ("latin", "bengali", "telugu", "thai"))
        _choice(f"world.languages[{i}].order", lang.order, ("SVO", "SOV", "VSO"))
        _check(f"world.languages[{i}].distance", lang.distance, _finite(lang.distance) and 0 <= lang.distance <= 1,
               "a number in [0, 1]")
    for name in ("general_per_lang", "ability_per_lang", "benchmark_per_lang", "max_operand"):
        _positive_int(f"world.{name}", getattr(w, name))
    for name in ("parallel_per_lang", "pretrain_equations", "pretrain_ability_en"):
        _check(f"world.{name}", getattr(w, name), getattr(w, name) >= 0, "an integer >= 0")
    return {f"{kind}:{code}" for code in codes for kind in ("general", "ability", "parallel")}


def reads_data_dir(s: Settings) -> bool:
    """Whether a job reads `paths.data_dir` (local corpora, local MGSM, a tokenizer trained on its
    text files); the built-in world and hub experiments with hub models do not."""
    corpora = (s.ability.corpus, s.source_lang.corpus, s.lang.corpus)
    return any(c.source == "local" for c in corpora) or (s.eval.benchmark, s.eval.source) == ("mgsm", "local") or \
        (s.model.source == "scratch" and s.model.scratch.corpus == "files")


def validate(s: Settings) -> None:
    """Range checks of every key; raises ConfigError naming the first bad one."""
    _choice("device", s.device, DEVICES)
    _code("lang.code", s.lang.code)
    _code("source_lang.code", s.source_lang.code)
    _check("threads", s.threads, s.threads >= 0, "an integer >= 0 (0: torch's default)")
    if reads_data_dir(s):
        _check("paths.data_dir", s.paths.data_dir, Path(s.paths.data_dir).is_dir(), "an existing directory")

    m = s.model
    _choice("model.source", m.source, MODEL_SOURCES)
    _choice("model.dtype", m.dtype, DTYPES)
    if m.source == "scratch":
        sc = m.scratch
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "max_position_embeddings", "tokenizer_max_docs"):
            _positive_int(f"model.scratch.{name}", getattr(sc, name))
        _check("model.scratch.hidden_size", sc.hidden_size, sc.hidden_size % sc.num_heads == 0,
               f"a multiple of model.scratch.num_heads={sc.num_heads}")
        _check("model.scratch.num_kv_heads", sc.num_kv_heads, sc.num_heads % sc.num_kv_heads == 0,
               f"a divisor of model.scratch.num_heads={sc.num_heads}")
        _choice("model.scratch.corpus", sc.corpus, ("files", "world"))
        for path in sc.tokenizer_files if sc.corpus == "files" else []:
            _check("model.scratch.tokenizer_files", path, Path(path).is_file(), "a list of existing text files")
        _check("model.scratch.pretrain_tokens", sc.pretrain_tokens, sc.pretrain_tokens >= 0, "an integer >= 0")
        _check("model.scratch.pretrain_lr", sc.pretrain_lr, _finite(sc.pretrain_lr) and sc.pretrain_lr > 0, "a number > 0")
    else:
        _check("model.path", m.path, bool(m.path), f"a hub id or folder when model.source={m.source}")
        if m.source == "local":
            _check("model.path", m.path, Path(m.path).is_dir(), "an existing model folder")
            _local_model(m)

    world_corpora = _world(s.world)
    _corpus("ability.corpus", s.ability.corpus, world_corpora)
    _corpus("source_lang.corpus", s.source_lang.corpus, world_corpora)
    _corpus("lang.corpus", s.lang.corpus, world_corpora)
    _script("source_lang.corpus", s.source_lang)
    _script("lang.corpus", s.lang)

    t = s.train
    _positive_int("train.batch_size", t.batch_size)
    _positive_int("train.seq_len", t.seq_len)
    _check("train.warmup_ratio", t.warmup_ratio, _finite(t.warmup_ratio) and 0 <= t.warmup_ratio < 1, "a number in [0, 1)")
    _check("train.weight_decay", t.weight_decay, _finite(t.weight_decay) and t.weight_decay >= 0, "a number >= 0")
    _check("train.grad_clip", t.grad_clip, _finite(t.grad_clip) and t.grad_clip > 0, "a number > 0")
    _check("train.heldout_fraction", t.heldout_fraction,
           _finite(t.heldout_fraction) and 0 < t.heldout_fraction < 0.5, "a number in (0, 0.5)")

    loc = s.locate
    _choice("locate.score", loc.score, LOCATE_SCORES)
    _check("locate.ratio", loc.ratio, _finite(loc.ratio) and 0 < loc.ratio <= 1, "a number in (0, 1]")
    _choice("locate.scope", loc.scope, LOCATE_SCOPES)
    _check("locate.modules", loc.modules, len(loc.modules) > 0 and set(loc.modules) <= set(MODULES),
           "a non-empty subset of " + ", ".join(MODULES))
    _positive_int("locate.tokens", loc.tokens)

    _positive_int("extract.tokens", s.extract.tokens)
    _check("extract.lr", s.extract.lr, _finite(s.extract.lr) and s.extract.lr > 0, "a number > 0")
    _positive_int("language.tokens", s.language.tokens)
    _check("language.lr", s.language.lr, _finite(s.language.lr) and s.language.lr > 0, "a number > 0")
    _choice("language.train", s.language.train, LANGUAGE_TRAIN)

    tr = s.transfer
    _choice("transfer.select", tr.select, TRANSFER_SELECTS)
    _check("transfer.tau", tr.tau, _finite(tr.tau) and -1 <= tr.tau <= 1, "a number in [-1, 1]")
    _check("transfer.keep", tr.keep, _finite(tr.keep) and 0 < tr.keep <= 1, "a number in (0, 1]")
    _positive_int("oracle.tokens", s.oracle.tokens)
    _check("oracle.lr", s.oracle.lr, _finite(s.oracle.lr) and s.oracle.lr > 0, "a number > 0")
    _positive_int("report.seeds", s.report.seeds)
    for ref in s.report.references:
        _choice("report.references", ref, REFERENCES)
    if "oracle" in s.report.references:
        _check("report.references", "oracle", s.lang.corpus.source == "world",
               "oracle only where target-language ability text exists (the built-in world)")
    _check("merge.alpha", s.merge.alpha, _finite(s.merge.alpha), "a finite number")
    _check("merge.beta", s.merge.beta, _finite(s.merge.beta), "a finite number")
    _check("merge.density", s.merge.density, _finite(s.merge.density) and 0 < s.merge.density <= 1, "a number in (0, 1]")
    _check("merge.drop", s.merge.drop, _finite(s.merge.drop) and 0 <= s.merge.drop < 1, "a number in [0, 1)")
    _check("merge.swap_k", s.merge.swap_k, s.merge.swap_k >= 0, "an integer >= 0 (layers at each end)")
    _check("extract.full_lr", s.extract.full_lr, _finite(s.extract.full_lr) and s.extract.full_lr > 0, "a number > 0")

    from maet.methods import METHODS  # the registry decides which names exist

    _choice("method.name", s.method.name, tuple(sorted(METHODS)))

    ev = s.eval
    _choice("eval.benchmark", ev.benchmark, BENCHMARKS)
    _choice("eval.source", ev.source, EVAL_SOURCES)
    _check("eval.num_fewshot", ev.num_fewshot, ev.num_fewshot >= 0, "an integer >= 0")
    _check("eval.limit", ev.limit, ev.limit is None or ev.limit >= 1, "null (all items) or an integer >= 1")
    _positive_int("eval.batch_size", ev.batch_size)
    _check("eval.max_gen_toks", ev.max_gen_toks, ev.max_gen_toks is None or ev.max_gen_toks >= 1,
           "null (the task's default) or an integer >= 1")
    _check("eval.langs", ev.langs, s.lang.code in ev.langs, f"a list that contains lang.code={s.lang.code!r}")
    for code in ev.langs:
        _code("eval.langs", code)
    if ev.benchmark == "task":
        _check("eval.task_template", ev.task_template, "{lang}" in ev.task_template,
               "an lm-eval task name with {lang}, e.g. global_mmlu_full_{lang}_stem")
        _check("eval.source", ev.source, ev.source == "hub", "hub (lm-eval reads the task's data)")
    elif ev.benchmark == "arith":
        codes = [lang.code for lang in s.world.languages]
        for code in ev.langs:
            _check("eval.langs", code, code in codes, "languages of the built-in world: " + ", ".join(codes))
        _choice("eval.filter", ev.filter, ("last-number",))
    else:
        _choice("eval.filter", ev.filter, ("flexible-extract", "strict-match"))
        _choice("eval.task_family", ev.task_family, ("mgsm_native_cot", "mgsm_direct", "mgsm_en_cot"))
    _choice("eval.split", ev.split, ("test", "dev"))
    _check("eval.dev_size", ev.dev_size, ev.dev_size >= 0, "an integer >= 0 (0: no dev split)")
    if ev.split == "dev":
        _check("eval.dev_size", ev.dev_size, ev.dev_size > 0, "an integer >= 1 with eval.split=dev")
    if ev.dev_size:
        _check("eval.dev_size", ev.dev_size, ev.benchmark == "arith" or (ev.benchmark, ev.source) == ("mgsm", "local"),
               "0 unless eval.benchmark=arith or eval.benchmark=mgsm with eval.source=local (items we can split)")
    mgsm_dir = Path(s.paths.data_dir) / "mgsm"
    for code in ev.langs if ev.benchmark == "mgsm" and ev.source == "local" else []:
        _check("eval.langs", code, (mgsm_dir / f"mgsm_{code}.tsv").is_file(),
               f"a language with a benchmark file under {mgsm_dir} "
               f"({', '.join(sorted(p.stem[5:] for p in mgsm_dir.glob('mgsm_*.tsv')))})")

    _choice("tracker.name", s.tracker.name, TRACKERS)
    _choice("tracker.mode", s.tracker.mode, WANDB_MODES)
