"""`python -m maet.engine.world_table [overrides]`: what each language of the built-in world shares
with English and how the tokenizer cuts it, for the world the overrides compose (default: the
testbed): per language its distance, the problem words it shares with English
(`maet.world.describe`), and the tokens per benchmark problem and per general sentence under each
pre-tokenizer (`model.scratch.pretokenizer`: GPT-2's regex, which cuts a combining mark from its
letter, against marks kept with their letters), each tokenizer trained on the base's own text.
"""

from __future__ import annotations

import sys
import tempfile

from hydra import initialize_config_dir
from tabulate import tabulate

from maet import world
from maet.config.compose import compose_checked, load_settings
from maet.engine.base import scratch_text
from maet.models.model import train_tokenizer
from maet.schema.resolvers import PROJECT_ROOT, register_resolvers
from maet.world.describe import problem_concepts, shared_words, tokens_per_text


def describe(s, sample: int = 200) -> list[list]:
    """Rows: language, distance, shared problem words, then tokens per problem and per sentence
    under each pre-tokenizer (on `sample` benchmark problems and general sentences)."""
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
    register_resolvers()
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        s = load_settings(compose_checked([f"paths.output_dir={tempfile.gettempdir()}", *argv]))
    headers = ["lang", "distance", "problem words shared", "shared with English",
               "tokens per problem / sentence (gpt2)", "(marks)"]
    print(tabulate(describe(s), headers=headers, tablefmt="github", disable_numparse=True))
    print(f"\nWorld seed {s.world.seed}, free order {s.world.free_order}; each tokenizer: byte-level BPE, "
          f"{s.model.scratch.vocab_size} tokens, trained on the base's text; means over 200 benchmark problems "
          "and 200 general sentences per language.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
