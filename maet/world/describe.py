"""What a language of the built-in world shares with English: the problem words (the concepts a
benchmark problem is written with) it writes as English does; and tokens per text. The table of
every language is `python -m maet.engine.world_table`. Which problem words a language shares is
one draw of `world.seed` (`maet.world.lexicon`: each concept independently, with probability
1 − distance); replications keep the world, so the intervals do not cover that draw
(docs/testbed.md).
"""

from __future__ import annotations

import re

from maet import world
from maet.schema.settings import WorldSettings


def problem_concepts(benchmark: list[dict]) -> list[str]:
    """The concepts whose English form occurs in the English benchmark problems (`how_many`: "how many")."""
    text = " ".join(p["question"] for p in benchmark)
    return [c for c in world.CONCEPTS if re.search(rf"(?<!\S){re.escape(c.replace('_', ' '))}(?!\S)", text)]


def shared_words(settings: WorldSettings, code: str, concepts: list[str]) -> list[str]:
    """The concepts among `concepts` that language `code` writes as English does."""
    lang = next(lang for lang in settings.languages if lang.code == code)
    lex = world.lexicon(lang, settings.seed)
    return [c for c in concepts if lex[c] == c.replace("_", " ")]


def tokens_per_text(tokenizer, texts: list[str]) -> float:
    """Mean tokens per text (no special tokens)."""
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts) / len(texts)
