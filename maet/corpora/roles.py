"""The corpora of one job by role (METHOD.md): English ability text C(L0,A), English general text
C(L0), target-language text C(Lj) with its held-out part, and ability text in the target language
(the built-in world only: it trains the oracle, never MAET)."""

from __future__ import annotations

from dataclasses import dataclass

from maet import world
from maet.corpora import data
from maet.schema.settings import CorpusSettings, Settings


@dataclass
class Corpora:
    ability: list[str]     # C(L0,A)
    general: list[str]     # C(L0), training part
    language: list[str]    # C(Lj), training part
    heldout: list[str]     # C(Lj), held-out part (evaluation only)
    oracle: list[str]      # ability text in Lj (the built-in world only; trains the oracle, never MAET)


def documents(corpus: CorpusSettings, w: world.World | None, tokenizer=None) -> list[str]:
    """A corpus's documents; with a tokenizer, its `max_tokens` budget applies."""
    return world.corpus(w, corpus.path) if corpus.source == "world" else data.load_documents(corpus, tokenizer)


def load_corpora(s: Settings, w: world.World | None, tokenizer) -> Corpora:
    general, _ = data.split_heldout(documents(s.source_lang.corpus, w, tokenizer), s.train.heldout_fraction)
    language, heldout = data.split_heldout(documents(s.lang.corpus, w, tokenizer), s.train.heldout_fraction)
    oracle = world.corpus(w, f"ability:{s.lang.code}") if s.lang.corpus.source == "world" else []
    return Corpora(documents(s.ability.corpus, w, tokenizer), general, language, heldout, oracle)


def uses_world(s: Settings) -> bool:
    corpora = (s.ability.corpus, s.source_lang.corpus, s.lang.corpus)
    return any(c.source == "world" for c in corpora) or s.eval.benchmark == "arith" or \
        (s.model.source == "scratch" and s.model.scratch.corpus == "world")
