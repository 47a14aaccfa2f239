"""What each stage's cache key depends on, and nothing else (its inputs' keys are added by the
stage): the mask and R(A) do not depend on the target language or the merge coefficients, R(Lj)
does not depend on the ability, so a sweep over `lang` and `merge.alpha` computes each once.

What changes numbers besides the config enters through θ0's key, on which every other key
depends: the resolved device type and dtype and the versions of torch and transformers
(`runtime`); the evaluation's key adds lm-eval's version.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from maet import world
from maet.corpora import data
from maet.evaluation import evaluate
from maet.models.model import resolve_dtype
from maet.schema import derived
from maet.schema.settings import CorpusSettings, Settings
from maet.store.cache import artifact_key


def fingerprint(s: Settings, corpus: CorpusSettings) -> dict:
    """What a cache key needs to know of a corpus (file content hash, or world settings + name)."""
    if corpus.source == "world":
        return {"source": "world", "world": world.world_fingerprint(s.world), "name": corpus.path}
    return data.corpus_fingerprint(corpus)


# What each stage depends on, and nothing else (its inputs' keys are added by the stage).
def base_config(s: Settings) -> dict:
    """A scratch base: architecture, seed, pre-training, and the text it is built from (by content)."""
    sc = s.model.scratch
    if sc.corpus == "world":
        text = {"world": world.world_fingerprint(s.world)}
    else:
        files = [data.corpus_fingerprint(CorpusSettings(path=p)) for p in sc.tokenizer_files]
        text = {"ability": fingerprint(s, s.ability.corpus), "files": files}
    pretrain = dataclasses.asdict(s.train) if sc.pretrain_tokens else None
    return {"scratch": dataclasses.asdict(sc) | {"tokenizer_files": None}, "text": text, "train": pretrain}


def locate_config(s: Settings) -> dict:
    return {"locate": dataclasses.asdict(s.locate), "seed": s.seed,
            "batch": [s.train.batch_size, s.train.seq_len],
            "ability": fingerprint(s, s.ability.corpus),
            "general": fingerprint(s, s.source_lang.corpus) if contrastive(s) else None,
            "heldout_fraction": s.train.heldout_fraction if contrastive(s) else None,
            "full_lr": s.extract.full_lr if s.locate.score == "weight_change" else None}


def contrastive(s: Settings) -> bool:
    return s.locate.contrast or s.locate.score == "activation"


def ability_config(s: Settings) -> dict:
    subtract = s.extract.general != "none"
    extract_keys = {k: v for k, v in dataclasses.asdict(s.extract).items() if k not in ("full_lr", "full_tokens")}  # baselines only
    return {"extract": extract_keys, "train": dataclasses.asdict(s.train), "seed": s.seed,
            "ability": fingerprint(s, s.ability.corpus),
            "general": fingerprint(s, s.source_lang.corpus) if subtract else None}


def language_config(s: Settings) -> dict:
    return {"language": dataclasses.asdict(s.language), "train": dataclasses.asdict(s.train), "seed": s.seed,
            "corpus": fingerprint(s, s.lang.corpus)}


def ability_full_config(s: Settings) -> dict:
    return {"tokens": derived.full_ability_tokens(s), "lr": s.extract.full_lr, "train": dataclasses.asdict(s.train),
            "seed": s.seed, "ability": fingerprint(s, s.ability.corpus)}


def cpt_all_config(s: Settings) -> dict:
    return {"tokens": derived.maet_training_tokens(s), "ability_tokens": s.extract.tokens, "mix": "tokens",
            "lr": s.language.lr, "train": dataclasses.asdict(s.train),
            "seed": s.seed, "ability": fingerprint(s, s.ability.corpus), "corpus": fingerprint(s, s.lang.corpus)}


def oracle_config(s: Settings) -> dict:
    return {"oracle": dataclasses.asdict(s.oracle), "train": dataclasses.asdict(s.train), "seed": s.seed,
            "world": world.world_fingerprint(s.world), "lang": s.lang.code}


def evaluate_config(s: Settings) -> dict:
    """The benchmark as read: the world's problems, the local MGSM files' bytes, or for the hub
    nothing more than `eval` (the task names) and the lm-eval version (the tasks' content)."""
    if s.eval.benchmark == "arith":
        data_files = {"world": world.world_fingerprint(s.world)}
    elif s.eval.source == "hub":
        data_files = None
    else:
        data_files = [evaluate.mgsm_file_fingerprint(Path(s.paths.data_dir), code) for code in s.eval.langs]
    heldout = s.eval.heldout  # the held-out text (its corpus and split) is read only then
    return {"eval": dataclasses.asdict(s.eval), "heldout_fraction": s.train.heldout_fraction if heldout else None,
            "lang_corpus": fingerprint(s, s.lang.corpus) if heldout else None, "data": data_files,
            "lm_eval": package_version("lm_eval")}


@cache
def package_version(name: str) -> str | None:
    """Installed version of a distribution (None when it is not installed)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def runtime(s: Settings, device: torch.device) -> dict:
    """What changes every stage's numbers besides the config: where and in which dtype the model
    runs (resolved: `auto` is bf16 on cuda, fp32 on cpu) and the versions of torch and transformers."""
    return {"device": device.type, "dtype": str(resolve_dtype(s.model.dtype, device)).removeprefix("torch."),
            "torch": torch.__version__, "transformers": package_version("transformers")}


def base_artifact_key(s: Settings, device: torch.device) -> str:
    """Cache key of θ0: its build recipe (scratch) or where it is loaded from, and the runtime."""
    m = s.model
    if m.source != "scratch":
        return artifact_key("base", {"source": m.source, "path": m.path, "dtype": m.dtype, "gguf_file": m.gguf_file,
                                     "runtime": runtime(s, device)})
    return artifact_key("base", base_config(s) | {"runtime": runtime(s, device)})
