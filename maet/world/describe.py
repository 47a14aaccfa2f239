"""`python -m maet.world.describe [overrides]`: what each language of the built-in world shares with
English and how the tokenizer cuts it, for the world the overrides compose (default: the testbed).

Per language: its distance, the problem words (the concepts a benchmark problem is written with)
it shares with English, and the tokens per benchmark problem and per general sentence under each
pre-tokenizer (`model.scratch.pretokenizer`: GPT-2's regex, which cuts a combining mark from its
letter, against marks kept with their letters), each tokenizer trained on the base's own text.
Which problem words a language shares is one draw of `world.seed` (`maet.world.lexicon`: each
concept independently, with probability 1 − distance); replications keep the world, so the
intervals do not cover that draw (docs/testbed.md).
"""

from __future__ import annotations

import re
import sys
import tempfile

from tabulate import tabulate

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


def describe(s, sample: int = 200) -> list[list]:
    """Rows: language, distance, shared problem words, then tokens per problem and per sentence
    under each pre-tokenizer (on `sample` benchmark problems and general sentences)."""
    from maet.engine.base import scratch_text
    from maet.models.model import train_tokenizer

    w = world.generate(s.world)
    concepts = problem_concepts(w.benchmark["en"])
    text, _ = scratch_text(s, w)
    tokenizers = {p: train_tokenizer(text, s.model.scratch.vocab_size, p) for p in ("gpt2", "marks")}
    rows = []
    for lang in s.world.languages:
        shared = shared_words(s.world, lang.code, concepts)
        problems = [p["question"] for p in w.benchmark[lang.code][:sample]]
        sentences = w.general[lang.code][:sample]
        cut = [f"{tokens_per_text(tokenizers[p], problems):.1f} / {tokens_per_text(tokenizers[p], sentences):.1f}"
               for p in ("gpt2", "marks")]
        rows.append([lang.code, lang.distance, f"{len(shared)}/{len(concepts)}",
                     " ".join(c.replace("_", " ") for c in shared) or "-", *cut])
    return rows


def main(argv: list[str]) -> int:
    from hydra import compose, initialize_config_dir

    from maet.config.compose import load_settings
    from maet.schema.resolvers import PROJECT_ROOT, register_resolvers

    register_resolvers()
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        s = load_settings(compose("config", overrides=[f"paths.output_dir={tempfile.gettempdir()}", *argv]))
    headers = ["lang", "distance", "problem words shared", "shared with English",
               "tokens per problem / sentence (gpt2)", "(marks)"]
    print(tabulate(describe(s), headers=headers, tablefmt="github", disable_numparse=True))
    print(f"\nWorld seed {s.world.seed}, free order {s.world.free_order}; each tokenizer: byte-level BPE, "
          f"{s.model.scratch.vocab_size} tokens, trained on the base's text; means over 200 benchmark problems "
          "and 200 general sentences per language.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
