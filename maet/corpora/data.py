"""Corpora as documents, and documents as packed token batches.

A corpus is a list of documents (strings). Training reads a deterministic stream of packed
`[batch, seq_len]` token blocks from it, cycling (with a fresh shuffle per epoch) when the
token budget exceeds the corpus. A fixed slice of every general corpus is held out for the
LM-loss evaluation and never trained on.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterator

import torch

from maet.schema.settings import CorpusSettings
from maet.store.cache import file_sha256

log = logging.getLogger(__name__)

_CALCULATOR = re.compile(r"<<[^>]*>>")


def render_gsm8k(question: str, answer: str) -> str:
    """One GSM8K problem in MGSM's English chain-of-thought format."""
    rationale, _, final = answer.partition("####")
    rationale = " ".join(_CALCULATOR.sub("", rationale).split())
    return f"Question: {question.strip()}\nStep-by-Step Answer: {rationale} The answer is {final.strip()}."


def _rows(corpus: CorpusSettings):
    """Rows of a corpus as a stream: a hub dataset, or a local text / jsonl file, through the same
    `datasets` loader (nothing is downloaded beyond what is read)."""
    import datasets

    datasets.disable_progress_bars()
    if corpus.source == "hub":
        return datasets.load_dataset(corpus.path, corpus.name, split=corpus.split, revision=corpus.revision,
                                     streaming=True)
    builder = "text" if corpus.format == "text" else "json"
    return datasets.load_dataset(builder, data_files=corpus.path, split="train", streaming=True)


def _document(row: dict, corpus: CorpusSettings) -> str:
    if corpus.format == "gsm8k":
        return render_gsm8k(row["question"], row["answer"])
    return str(row[corpus.field]).strip()


def load_documents(corpus: CorpusSettings, tokenizer=None) -> list[str]:
    """Documents of a corpus in stream order, up to `corpus.max_docs` documents and, given a
    tokenizer, until `corpus.max_tokens` tokens are read (a budget: a 1M-token sample of a large
    hub corpus reads about 1M tokens, not the corpus)."""
    docs, tokens = [], 0
    max_tokens = corpus.max_tokens if tokenizer is not None else None
    for row in _rows(corpus):
        doc = _document(row, corpus)
        if not doc:
            continue
        docs.append(doc)
        if max_tokens is not None:
            tokens += len(tokenizer(doc, add_special_tokens=False)["input_ids"]) + 1
            if tokens >= max_tokens:
                break
        if corpus.max_docs is not None and len(docs) >= corpus.max_docs:
            break
    return docs


def corpus_fingerprint(corpus: CorpusSettings) -> dict:
    """What a cache key needs to know of a corpus: a local file by the sha256 of its content, a
    hub dataset by id, config, split and revision; plus how documents are read from it."""
    how = {"source": corpus.source, "format": corpus.format, "field": corpus.field, "max_docs": corpus.max_docs,
           "max_tokens": corpus.max_tokens}
    if corpus.source == "hub":
        return how | {"path": corpus.path, "name": corpus.name, "split": corpus.split, "revision": corpus.revision}
    return how | {"sha256": file_sha256(corpus.path)}


def split_heldout(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train, heldout): every round(1/fraction)-th document is held out, deterministically."""
    step = max(2, round(1 / fraction))
    heldout = docs[::step]
    train = [d for i, d in enumerate(docs) if i % step]
    return train, heldout


def encode_documents(docs: list[str], tokenizer) -> list[list[int]]:
    """Token ids of each document framed as the tokenizer frames a text (`add_special_tokens`: BOS
    first for Llama-3 or Gemma, nothing for Qwen2.5 or the built-in world's), ending with EOS."""
    eos = tokenizer.eos_token_id
    return [ids if ids and ids[-1] == eos else ids + [eos] for ids in tokenizer(docs, add_special_tokens=True)["input_ids"]]


def token_blocks(docs: list[str], tokenizer, seq_len: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless stream of `[seq_len]` blocks: documents (`encode_documents`) shuffled per epoch, joined, cut."""
    encoded = encode_documents(docs, tokenizer)
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


def mixed_batches(parts: list[tuple[list[str], int]], tokenizer, *, batch_size: int, seq_len: int,
                  seed: int) -> Iterator[torch.Tensor]:
    """Batches over several corpora with an exact token budget each: `parts` is `[(docs, tokens)]`;
    part i gives `round(tokens_i / seq_len)` sequences (the last part fills up to whole batches),
    interleaved in a seeded random order. Yields `[batch_size, seq_len]` token ids."""
    total = num_steps(sum(t for _, t in parts), batch_size, seq_len) * batch_size
    counts = [round(t / seq_len) for _, t in parts[:-1]]
    counts.append(total - sum(counts))
    streams = [token_blocks(docs, tokenizer, seq_len, seed + i) for i, (docs, _) in enumerate(parts)]
    order = torch.cat([torch.full((n,), i) for i, n in enumerate(counts)])
    order = order[torch.randperm(len(order), generator=torch.Generator().manual_seed(seed))].tolist()
    for start in range(0, total, batch_size):
        yield torch.stack([next(streams[i]) for i in order[start:start + batch_size]])


def num_steps(tokens: int, batch_size: int, seq_len: int) -> int:
    """Optimizer steps that cover a token budget (at least one)."""
    return max(1, -(-tokens // (batch_size * seq_len)))
