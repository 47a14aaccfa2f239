"""Checks that a schema cannot express, run once at the edge (before any model or corpus loads).

Types and choices are the schema's job (`maet.schema.settings`, enforced by Hydra at composition);
here: errors of composition turned into one line that names the key the user typed, ranges,
settings that make no sense together, and the filesystem. Every failure is a `ConfigError`
naming the key, the value and what is allowed.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tempfile
import unicodedata
import warnings
from pathlib import Path
from typing import Any

from maet.schema.settings import (
    MODULES,
    ConfigError,
    CorpusSettings,
    LangSettings,
    ModelSettings,
    Settings,
    WorldSettings,
)

SAFE_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # language codes name files under the cache and run dirs
SCRIPT_PREFIX = {"han": "CJK"}  # lang.script -> prefix of the Unicode character names of its letters


# ----------------------------------------------------------------------------- small checks
def one_of(value: Any, allowed: list) -> str:
    close = difflib.get_close_matches(str(value), list(map(str, allowed)), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return "one of " + ", ".join(map(str, allowed)) + hint


def check_choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(key, value, one_of(value, list(allowed)))


def _check(key: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _positive_int(key: str, value: int) -> None:
    _check(key, value, isinstance(value, int) and value > 0, "an integer > 0")


def _positive(key: str, value: float) -> None:
    _check(key, value, _finite(value) and value > 0, "a number > 0")


def _code(key: str, code: str) -> None:
    _check(key, code, isinstance(code, str) and SAFE_CODE.fullmatch(code) is not None,
           "a language code of letters, digits, '_' or '-' (it names files)")


def check_writable(key: str, folder: str) -> None:
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    try:  # a real write: os.access says yes to root even on a read-only mount
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ConfigError(key, folder, f"a writable directory ({err.strerror})") from err


# ----------------------------------------------------------------------------- text and models
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


# ----------------------------------------------------------------------------- sections
def _corpus(key: str, corpus: CorpusSettings, world_corpora: set[str]) -> None:
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


def _world(w: WorldSettings) -> set[str]:
    """Checks the world settings; returns the names of its corpora."""
    codes = [lang.code for lang in w.languages]
    for i, code in enumerate(codes):
        _code(f"world.languages[{i}].code", code)
    _check("world.languages", codes, len(codes) == len(set(codes)) and "en" in codes,
           "a list of distinct languages that includes en (the source language)")
    for i, lang in enumerate(w.languages):
        _check(f"world.languages[{i}].distance", lang.distance, _finite(lang.distance) and 0 <= lang.distance <= 1,
               "a number in [0, 1]")
    for name in ("general_per_lang", "ability_per_lang", "benchmark_per_lang", "max_operand"):
        _positive_int(f"world.{name}", getattr(w, name))
    for name in [n for n in vars(w) if n.startswith(("pretrain_", "parallel_"))]:  # counts that may be 0
        _check(f"world.{name}", getattr(w, name), getattr(w, name) >= 0, "an integer >= 0")
    return {f"{kind}:{code}" for code in codes for kind in ("general", "ability", "parallel")}


def reads_data_dir(s: Settings) -> bool:
    """Whether a job reads `paths.data_dir` (local corpora, local MGSM, a tokenizer trained on its
    text files); the built-in world and hub experiments with hub models do not."""
    corpora = (s.ability.corpus, s.source_lang.corpus, s.lang.corpus)
    return any(c.source == "local" for c in corpora) or (s.eval.benchmark, s.eval.source) == ("mgsm", "local") or \
        (s.model.source == "scratch" and s.model.scratch.corpus == "files")


def _languages(s: Settings) -> None:
    _code("lang.code", s.lang.code)
    _code("source_lang.code", s.source_lang.code)
    _check("lang.code", s.lang.code, s.lang.code != s.source_lang.code,
           f"a target language other than the source language source_lang.code={s.source_lang.code!r}")
    _check("threads", s.threads, s.threads >= 0, "an integer >= 0 (0: torch's default)")
    if reads_data_dir(s):
        _check("paths.data_dir", s.paths.data_dir, Path(s.paths.data_dir).is_dir(), "an existing directory")
    world_corpora = _world(s.world)
    for key, corpus in (("ability", s.ability), ("source_lang", s.source_lang), ("lang", s.lang)):
        _corpus(f"{key}.corpus", corpus.corpus, world_corpora)
    _script("source_lang.corpus", s.source_lang)
    _script("lang.corpus", s.lang)


def _model(m: ModelSettings) -> None:
    if m.source != "scratch":
        _check("model.path", m.path, bool(m.path), f"a hub id or folder when model.source={m.source}")
        if m.source == "local":
            _check("model.path", m.path, Path(m.path).is_dir(), "an existing model folder")
            _local_model(m)
        return
    _check("model.gguf_file", m.gguf_file, not m.gguf_file, "null with model.source=scratch (GGUF: hub / local models)")
    sc = m.scratch
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "max_position_embeddings", "tokenizer_max_docs"):
        _positive_int(f"model.scratch.{name}", getattr(sc, name))
    _check("model.scratch.hidden_size", sc.hidden_size, sc.hidden_size % sc.num_heads == 0,
           f"a multiple of model.scratch.num_heads={sc.num_heads}")
    _check("model.scratch.num_kv_heads", sc.num_kv_heads, sc.num_heads % sc.num_kv_heads == 0,
           f"a divisor of model.scratch.num_heads={sc.num_heads}")
    for path in sc.tokenizer_files if sc.corpus == "files" else []:
        _check("model.scratch.tokenizer_files", path, Path(path).is_file(), "a list of existing text files")
    _check("model.scratch.pretrain_tokens", sc.pretrain_tokens, sc.pretrain_tokens >= 0, "an integer >= 0")
    _positive("model.scratch.pretrain_lr", sc.pretrain_lr)


def _training(s: Settings) -> None:
    t = s.train
    _positive_int("train.batch_size", t.batch_size)
    _positive_int("train.seq_len", t.seq_len)
    _check("train.warmup_ratio", t.warmup_ratio, _finite(t.warmup_ratio) and 0 <= t.warmup_ratio < 1, "a number in [0, 1)")
    _check("train.weight_decay", t.weight_decay, _finite(t.weight_decay) and t.weight_decay >= 0, "a number >= 0")
    _positive("train.grad_clip", t.grad_clip)
    c = s.checkpoint
    _check("checkpoint.every_steps", c.every_steps, c.every_steps >= 0, "an integer >= 0 (0: not by steps)")
    _check("checkpoint.every_minutes", c.every_minutes, _finite(c.every_minutes) and c.every_minutes >= 0,
           "a number >= 0 (0: not by time)")
    _check("train.heldout_fraction", t.heldout_fraction,
           _finite(t.heldout_fraction) and 0 < t.heldout_fraction < 0.5, "a number in (0, 0.5)")
    loc = s.locate
    _check("locate.ratio", loc.ratio, _finite(loc.ratio) and 0 < loc.ratio <= 1, "a number in (0, 1]")
    _check("locate.modules", loc.modules, len(loc.modules) > 0 and set(loc.modules) <= set(MODULES),
           "a non-empty subset of " + ", ".join(MODULES))
    _positive_int("locate.tokens", loc.tokens)
    _positive_int("extract.tokens", s.extract.tokens)
    _positive("extract.lr", s.extract.lr)
    _positive("extract.full_lr", s.extract.full_lr)
    if s.extract.full_tokens is not None:
        _positive_int("extract.full_tokens", s.extract.full_tokens)
    _positive_int("language.tokens", s.language.tokens)
    _positive("language.lr", s.language.lr)
    _positive_int("oracle.tokens", s.oracle.tokens)
    _positive_int("tracker.curve_every", s.tracker.curve_every)
    _positive("oracle.lr", s.oracle.lr)


def _context_window(s: Settings) -> None:
    """Training sequences fit the model: a position beyond its context window was never trained
    (a scratch Llama would run on it anyway, with rotary positions it has not seen)."""
    from maet.models.model import context_window

    window = context_window(s.model)
    if window is not None:
        _check("train.seq_len", s.train.seq_len, s.train.seq_len <= window,
               f"an integer <= {window}, the context window of model={s.model.name} (its max_position_embeddings)")


def _merging(s: Settings) -> None:
    tr, m = s.transfer, s.merge
    _check("transfer.tau", tr.tau, _finite(tr.tau) and -1 <= tr.tau <= 1, "a number in [-1, 1]")
    _check("transfer.keep", tr.keep, _finite(tr.keep) and 0 < tr.keep <= 1, "a number in (0, 1]")
    if tr.select == "abs_threshold":
        _check("transfer.tau", tr.tau, tr.tau > 0,
               "a number in (0, 1] with transfer.select=abs_threshold (it keeps |s_t| < tau)")
    _check("merge.alpha", m.alpha, _finite(m.alpha), "a finite number")
    _check("merge.beta", m.beta, _finite(m.beta), "a finite number")
    _check("merge.density", m.density, _finite(m.density) and 0 < m.density <= 1, "a number in (0, 1]")
    _check("merge.drop", m.drop, _finite(m.drop) and 0 <= m.drop < 1, "a number in [0, 1)")
    _check("merge.swap_k", m.swap_k, m.swap_k >= 0, "an integer >= 0 (layers at each end)")
    # the registries decide which names exist (imported late: they need torch); the declared
    # stages register the reference models they yield (θ_A as `ability`, the oracle)
    from maet.method import methods
    from maet.stages import registry  # noqa: F401

    check_choice("method.name", s.method.name, tuple(methods.choices()))
    _positive_int("report.seeds", s.report.seeds)
    for ref in s.report.references:
        check_choice("report.references", ref, tuple(sorted(methods.METHODS)))
    for model in s.report.chain:
        _check("report.chain", model, model in (s.method.name, *s.report.references),
               f"a model the job evaluates: the method ({s.method.name}) or one of report.references")
    if "oracle" in s.report.references:
        _check("report.references", "oracle", s.lang.corpus.source == "world",
               "oracle only where target-language ability text exists (the built-in world)")


def _evaluation(s: Settings) -> None:
    ev = s.eval
    _check("eval.num_fewshot", ev.num_fewshot, ev.num_fewshot >= 0, "an integer >= 0")
    _check("eval.limit", ev.limit, ev.limit is None or ev.limit >= 1, "null (all items) or an integer >= 1")
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
        check_choice("eval.filter", ev.filter, ("last-number",))
    else:
        check_choice("eval.filter", ev.filter, ("flexible-extract", "strict-match"))
        check_choice("eval.task_family", ev.task_family, ("mgsm_native_cot", "mgsm_direct", "mgsm_en_cot"))
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


def _scale(s: Settings) -> None:
    """eval.batch_size / eval.backend and save.*: the keys of runs at scale."""
    from maet.models import backends
    from maet.scale import export

    bs = s.eval.batch_size
    _check("eval.batch_size", bs, (type(bs) is int and bs > 0) or backends.AUTO_BATCH.fullmatch(str(bs)) is not None,
           "an integer > 0, auto or auto:N")
    backends.check_vllm(s.eval)
    if s.save.model:
        _check("save.model", True, s.method.name in export.exportable(), f"false with method={s.method.name}: "
               f"the out-of-core merge writes the linear merges ({', '.join(export.exportable())})")
        _check("save.model", True, not s.model.gguf_file, "false with a GGUF base (the merge reads safetensors)")
        _check("save.model", True, s.transfer.granularity == "tensor", "false with transfer.granularity=row")
    _check("save.push_to_hub", s.save.push_to_hub, s.save.push_to_hub is None or
           re.fullmatch(r"[\w.-]+/[\w.-]+", s.save.push_to_hub) is not None, "null or a hub repo id user/name")


def validate(s: Settings) -> None:
    """Range, cross-field and filesystem checks; raises ConfigError naming the first bad key."""
    _languages(s)
    _model(s.model)
    _training(s)
    _context_window(s)
    _merging(s)
    _evaluation(s)
    _scale(s)
