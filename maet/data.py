"""Corpora as documents, and documents as packed token batches.

A corpus is a list of documents (strings). Training reads a deterministic stream of packed
`[batch, seq_len]` token blocks from it, cycling (with a fresh shuffle per epoch) when the
token budget exceeds the corpus. A fixed slice of every general corpus is held out for the
LM-loss evaluation and never trained on.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from maet.settings import CorpusSettings

log = logging.getLogger(__name__)

_CALCULATOR = re.compile(r"<<[^>]*>>")


def render_gsm8k(question: str, answer: str) -> str:
    """One GSM8K problem in MGSM's English chain-of-thought format."""
    rationale, _, final = answer.partition("####")
    rationale = " ".join(_CALCULATOR.sub("", rationale).split())
    return f"Question: {question.strip()}\nStep-by-Step Answer: {rationale} The answer is {final.strip()}."


def load_documents(corpus: CorpusSettings) -> list[str]:
    """All documents of a corpus, in file order."""
    path = Path(corpus.path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if corpus.format == "gsm8k":
        rows = [json.loads(line) for line in lines if line.strip()]
        return [render_gsm8k(r["question"], r["answer"]) for r in rows]
    return [line.strip() for line in lines if line.strip()]


def corpus_fingerprint(corpus: CorpusSettings) -> dict:
    """What a cache key needs to know of a corpus: its format and the sha256 of its content."""
    digest = hashlib.sha256(Path(corpus.path).read_bytes()).hexdigest()
    return {"source": corpus.source, "format": corpus.format, "sha256": digest}


def split_heldout(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train, heldout): every round(1/fraction)-th document is held out, deterministically."""
    step = max(2, round(1 / fraction))
    heldout = docs[::step]
    train = [d for i, d in enumerate(docs) if i % step]
    return train, heldout


def token_blocks(docs: list[str], tokenizer, seq_len: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless stream of `[seq_len]` blocks: documents shuffled per epoch, joined by EOS, cut."""
    eos = tokenizer.eos_token_id
    encoded = [ids + [eos] for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]]
    total = sum(map(len, encoded))
    if total < seq_len:
        raise ValueError(f"corpus has {total} tokens, fewer than one sequence of train.seq_len={seq_len}")
    generator = torch.Generator().manual_seed(seed)
    buffer: list[int] = []
    for epoch in itertools.count():
        if epoch == 1:
            log.info("corpus of %d tokens exhausted: repeating it, reshuffled", total)
        for i in torch.randperm(len(encoded), generator=generator).tolist():
            buffer.extend(encoded[i])
            while len(buffer) >= seq_len:
                yield torch.tensor(buffer[:seq_len])
                buffer = buffer[seq_len:]


def batches(docs: list[str], tokenizer, *, tokens: int, batch_size: int, seq_len: int,
            seed: int) -> Iterator[torch.Tensor]:
    """`ceil(tokens / (batch_size*seq_len))` batches of `[batch_size, seq_len]` token ids."""
    steps = num_steps(tokens, batch_size, seq_len)
    stream = token_blocks(docs, tokenizer, seq_len, seed)
    for _ in range(steps):
        yield torch.stack([next(stream) for _ in range(batch_size)])


def num_steps(tokens: int, batch_size: int, seq_len: int) -> int:
    """Optimizer steps that cover a token budget (at least one)."""
    return max(1, -(-tokens // (batch_size * seq_len)))
