"""How long MGSM's chain-of-thought answers are, in tokens: what `eval.max_gen_toks` must allow.

    python -m benchmarks.mgsm_lengths [--tokenizer DIR [--gguf FILE]] [--data data]

Per language: the 8 exemplar answers (`<data>/mgsm/exemplars.json`: UTF-8 bytes and tokens), and
an estimate for the test items: MGSM's 250 items are the first 250 GSM8K test problems
translated, so the English reference answers (`<data>/gsm8k/test.jsonl`, rendered in MGSM's
format) give the English lengths, scaled per language by the exemplars' token ratio to English.
Without a tokenizer, tokens are UTF-8 bytes: an upper bound for byte-level BPE tokenizers
(Llama-3, Qwen2.5: no token is shorter than one byte). The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from maet.corpora.data import render_gsm8k


def _counter(tokenizer: str | None, gguf: str | None):
    if tokenizer is None:
        return lambda text: len(text.encode())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer, **({"gguf_file": gguf} if gguf else {}))
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def _quantile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def measure(data: Path, count) -> dict[str, dict]:
    """{lang: {exemplar_max, exemplar_mean, test_p95, test_max}} in the counter's units."""
    exemplars = json.loads((data / "mgsm" / "exemplars.json").read_text(encoding="utf-8"))["exemplars"]
    rows = [json.loads(line) for line in (data / "gsm8k" / "test.jsonl").read_text().splitlines()[:250]]
    english = [count(render_gsm8k(r["question"], r["answer"]).split("Step-by-Step Answer:", 1)[1]) for r in rows]
    lengths = {lang: [count(e["answer"]) for e in items] for lang, items in exemplars.items()}
    en_mean = sum(lengths["en"]) / len(lengths["en"])
    out = {}
    for lang, values in lengths.items():
        ratio = sum(values) / len(values) / en_mean
        out[lang] = {"exemplar_max": max(values), "exemplar_mean": round(sum(values) / len(values)),
                     "ratio_to_en": round(ratio, 2), "test_p95": round(_quantile(english, 0.95) * ratio),
                     "test_max": round(max(english) * ratio)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mgsm_lengths", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", help="a tokenizer folder (default: UTF-8 bytes)")
    parser.add_argument("--gguf", help="a GGUF file in that folder to read the tokenizer from")
    parser.add_argument("--data", type=Path, default=Path("data"))
    args = parser.parse_args(argv)
    result = measure(args.data, _counter(args.tokenizer, args.gguf))
    unit = f"tokens of {args.tokenizer}/{args.gguf or ''}" if args.tokenizer else "UTF-8 bytes"
    print(f"MGSM answer lengths in {unit}")
    for lang, r in result.items():
        print(f"{lang}: exemplars max {r['exemplar_max']} mean {r['exemplar_mean']}, x{r['ratio_to_en']} of en; "
              f"test estimate p95 {r['test_p95']} max {r['test_max']}")
    print(json.dumps({"unit": unit, "langs": result}))


if __name__ == "__main__":
    main()
