import json

import pytest
import torch

from maet.corpora import data
from maet.models.model import train_tokenizer
from maet.schema.settings import CorpusSettings


def _tokens(tokenizer, docs):
    return sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs)


def test_local_text_and_jsonl_read_by_token_budget(tmp_path, tokenizer):
    lines = [f"line {i} : the red fox jumps over {i} lazy dogs" for i in range(200)]
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": x}) + "\n" for x in lines))
    text = CorpusSettings(path=str(tmp_path / "c.txt"), format="text", max_tokens=300)
    jsonl = CorpusSettings(path=str(tmp_path / "c.jsonl"), format="jsonl", field="body", max_tokens=300)
    a, b = data.load_documents(text, tokenizer), data.load_documents(jsonl, tokenizer)
    assert a == b == lines[:len(a)]  # same documents, in file order, through the same loader
    assert _tokens(tokenizer, a) >= 300 > _tokens(tokenizer, a[:-1])  # stops as soon as the budget is read
    assert data.load_documents(CorpusSettings(path=str(tmp_path / "c.txt"))) == lines  # no budget: all
    assert len(data.load_documents(CorpusSettings(path=str(tmp_path / "c.txt"), max_docs=7))) == 7


def test_gsm8k_rows_render_as_mgsm_english_cot(data_dir, tokenizer):
    corpus = CorpusSettings(path=str(data_dir / "gsm8k" / "train.jsonl"), format="gsm8k", max_tokens=2000)
    docs = data.load_documents(corpus, tokenizer)
    assert 0 < len(docs) < 7473
    assert docs[0].startswith("Question: Natalia sold clips") and docs[0].endswith("The answer is 72.")
    assert "<<" not in docs[0] and "####" not in docs[0]


def test_fingerprint_follows_content_and_reading(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a\nb\n")
    first = data.corpus_fingerprint(CorpusSettings(path=str(path)))
    assert first != data.corpus_fingerprint(CorpusSettings(path=str(path), max_tokens=10))
    path.write_text("a\nc\n")
    assert first != data.corpus_fingerprint(CorpusSettings(path=str(path)))
    hub = data.corpus_fingerprint(CorpusSettings(source="hub", path="wikimedia/wikipedia", name="20231101.sw"))
    assert hub["path"] == "wikimedia/wikipedia" and hub["name"] == "20231101.sw" and "sha256" not in hub


def test_packed_batches_are_deterministic_per_seed(tokenizer):
    docs = [f"doc {i} has some words" for i in range(50)]
    a = list(data.batches(docs, tokenizer, tokens=256, batch_size=2, seq_len=16, seed=3))
    b = list(data.batches(docs, tokenizer, tokens=256, batch_size=2, seq_len=16, seed=3))
    c = list(data.batches(docs, tokenizer, tokens=256, batch_size=2, seq_len=16, seed=4))
    assert len(a) == 8 and all(x.shape == (2, 16) for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not all(torch.equal(x, y) for x, y in zip(a, c))


def test_heldout_split_is_disjoint_and_fixed():
    docs = [str(i) for i in range(100)]
    train, heldout = data.split_heldout(docs, 0.05)
    assert len(heldout) == 5 and not set(train) & set(heldout) and len(train) + len(heldout) == 100


class _CharTokenizer:
    """Every character is a token: its code point (EOS = 0)."""
    eos_token_id = 0

    def __call__(self, docs, add_special_tokens=False):
        return {"input_ids": [[ord(c) for c in doc] for doc in docs]}


def test_mixed_batches_give_each_corpus_its_exact_token_budget():
    tok, seq = _CharTokenizer(), 8
    parts = [(["aaaaaaa"] * 5, 10 * seq), (["bbbbbbbbbbb"] * 5, 22 * seq)]
    out = list(data.mixed_batches(parts, tok, batch_size=4, seq_len=seq, seed=0))
    assert len(out) == data.num_steps(32 * seq, 4, seq) == 8
    rows = torch.cat(out)
    from_a = [ord("a") in r.tolist() for r in rows]
    assert all((ord("a") in r.tolist()) != (ord("b") in r.tolist()) for r in rows)
    assert sum(from_a) == 10 and from_a[:10] != [True] * 10  # exact share, interleaved
    assert torch.equal(rows, torch.cat(list(data.mixed_batches(parts, tok, batch_size=4, seq_len=seq, seed=0))))


def test_hub_corpus_revision_reaches_load_dataset(monkeypatch):
    import datasets

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs, args=args)
        return iter([{"text": "one"}, {"text": "two"}])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    corpus = CorpusSettings(source="hub", path="org/corpus", name="sw", split="train", revision="abc123")
    assert data.load_documents(corpus) == ["one", "two"]
    assert seen["revision"] == "abc123" and seen["args"] == ("org/corpus", "sw") and seen["streaming"]


def test_documents_get_bos_only_where_the_tokenizer_adds_one(tokenizer):
    """The tokenizer's own framing: one that adds BOS (Llama-3, Gemma) starts every document
    with it; one that adds nothing (Qwen2.5, the built-in world's) gets documents + EOS, as before."""
    import copy

    from tokenizers.processors import TemplateProcessing

    docs = ["the red fox", "a tiny model"]
    plain = data.encode_documents(docs, tokenizer)
    assert plain == [ids + [tokenizer.eos_token_id] for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]]
    with_bos = copy.deepcopy(tokenizer)
    bos = with_bos.pad_token_id  # any special token serves as this tokenizer's BOS
    with_bos.backend_tokenizer.post_processor = TemplateProcessing(single=f"{with_bos.pad_token} $A",
                                                                   special_tokens=[(with_bos.pad_token, bos)])
    assert data.encode_documents(docs, with_bos) == [[bos] + ids for ids in plain]
    block = next(data.token_blocks(docs, with_bos, seq_len=4, seed=0))
    assert block[0] == bos


@pytest.mark.parametrize("pretokenizer, expected", [
    # GPT-2's regex: a vowel sign (a mark, not a letter) is a pre-token of its own, so no word forms
    ("gpt2", ["আম", "ি", " ভ", "া", "ত", " খ", "া", "ই", "।", " ", "1", "2"]),
    ("marks", ["আমি", " ভাত", " খাই", "।", " ", "1", "2"]),  # marks stay with their letters
])
def test_the_marks_pretokenizer_keeps_vowel_signs_with_their_letters(pretokenizer, expected):
    docs = ["আমি ভাত খাই। তিনি আপেল পান।", "Juma ana machungwa, anapata zaidi."] * 50
    tokenizer = train_tokenizer(docs, 400, pretokenizer)
    ids = tokenizer("আমি ভাত খাই। 12")["input_ids"]
    assert [tokenizer.decode([i]) for i in ids] == expected
    assert tokenizer.decode(ids) == "আমি ভাত খাই। 12"
