"""`make data`: sources in order, the manifest, and the hub schema converted to the files the
project reads (the hub itself is faked: no network here)."""

import hashlib
import json
from pathlib import Path

import pytest

from maet.corpora import fetch_data
from maet.corpora.data import load_documents
from maet.evaluation import evaluate
from maet.schema.settings import CorpusSettings


def _hub_rows(lang: str) -> dict[str, list[dict]]:
    """MGSM rows in the schema of `juletxara/mgsm` (made up here, not MGSM's text)."""
    train = [{"question": f"{lang} exemplar {i}?", "answer": f"{lang} step by step {i}. The answer is {i + 1}.",
              "answer_number": i + 1, "equation_solution": f"{i} + 1 = {i + 1}."} for i in range(8)]
    test = [{"question": f"{lang} question {i}\twith a tab?", "answer": None, "answer_number": float(i * 1000),
             "equation_solution": None} for i in range(5)]
    return {"train": train, "test": test}


def fake_load_dataset(path, name=None, split=None, streaming=False):
    if path == "juletxara/mgsm":
        return _hub_rows(name)[split]
    if path == "openai/gsm8k":
        return [{"question": f"Q{i} ({split})", "answer": f"Work <<1+1=2>>2.\n#### {i}"} for i in range(3)]
    if path == "wikimedia/wikipedia":
        code = name.split(".")[1]
        return iter([{"text": f"First sentence of an article in {code}. A second one that is long enough."}] * 3)
    raise AssertionError(path)


def test_hub_download_writes_the_layout_the_project_reads(tmp_path, monkeypatch):
    import datasets

    with monkeypatch.context() as m:
        m.setattr(datasets, "load_dataset", fake_load_dataset)
        m.delenv("HF_HUB_OFFLINE")
        m.delenv("HF_DATASETS_OFFLINE")
        m.setattr(fetch_data, "SIBLING", tmp_path / "no-sibling")
        manifest = fetch_data.fetch(tmp_path / "data")
    data = tmp_path / "data"
    assert manifest["origin"] == "hub" and fetch_data.missing_files(data) == [] and fetch_data.verify(data)
    train, test = evaluate.mgsm_rows(data, "sw")
    assert [r["answer_number"] for r in test] == [0, 1000, 2000, 3000, 4000]
    assert test[0]["question"] == "sw question 0 with a tab?"  # a tab would break the TSV
    assert train[3] == {"question": "sw exemplar 3?", "answer": "sw step by step 3. The answer is 4.",
                        "answer_number": 4, "equation_solution": "3 + 1 = 4."}
    docs = load_documents(CorpusSettings(path=str(data / "gsm8k" / "train.jsonl"), format="gsm8k"))
    assert docs[1] == "Question: Q1 (train)\nStep-by-Step Answer: Work 2. The answer is 1."
    sample = (data / "text" / "sw.txt").read_text()
    assert sample == "First sentence of an article in sw.\nA second one that is long enough.\n"
    licenses = {f["path"].split("/")[0]: f["license"] for f in manifest["files"]}
    assert licenses == {"mgsm": "CC BY 4.0", "gsm8k": "MIT", "text": "CC BY-SA 4.0"}


def test_folder_source_is_copied_with_checksums_and_kept_when_it_verifies(tmp_path, monkeypatch):
    source = tmp_path / "src"
    for rel in fetch_data.REQUIRED:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_text(f"content of {rel}\n")
    monkeypatch.setattr(fetch_data, "SIBLING", source)  # found as ../shared/data would be
    target = tmp_path / "data"
    manifest = fetch_data.fetch(target, local_only=True)
    assert manifest["origin"] == f"folder {source.resolve()}"
    assert {f["path"] for f in manifest["files"]} == set(fetch_data.REQUIRED)
    assert all(f["sha256"] == fetch_data.sha256(target / f["path"]) for f in manifest["files"])
    (source / "text" / "sw.txt").write_text("changed\n")
    assert fetch_data.fetch(target, local_only=True) == manifest  # verifies: left as it is
    (target / "text" / "sw.txt").write_text("corrupted\n")
    assert not fetch_data.verify(target)
    fetch_data.fetch(target, local_only=True)  # recopied
    assert (target / "text" / "sw.txt").read_text() == "changed\n"


def test_no_source_names_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_data, "SIBLING", tmp_path / "absent")
    monkeypatch.delenv("DATA_FROM", raising=False)  # `make data DATA_FROM=...` before the tests must not give a source
    with pytest.raises(fetch_data.DataUnavailable, match="no ../shared/data"):
        fetch_data.fetch(tmp_path / "data", local_only=True)
    with pytest.raises(fetch_data.DataUnavailable, match="lacks mgsm/exemplars.json"):
        fetch_data.fetch(tmp_path / "data", explicit=str(tmp_path))
    assert fetch_data.main(["--to", str(tmp_path / "data"), "--local-only", "--optional"]) == 0
    assert fetch_data.main(["--to", str(tmp_path / "data"), "--local-only"]) == 1
    assert not (tmp_path / "data").exists()


def test_fetched_data_matches_its_source(data_dir):
    """The project's data folder as `make data` left it, against the source it names: the same
    files, each with the checksum of the source's own bytes (hashed here, not read from the manifest)."""
    manifest = json.loads((data_dir / fetch_data.MANIFEST).read_text())
    if not manifest["origin"].startswith("folder "):
        pytest.skip(f"data fetched from {manifest['origin']}: the hub's files cannot be read offline")
    source = Path(manifest["origin"].removeprefix("folder "))
    if not source.is_dir():
        pytest.skip(f"the source folder {source} is not on this machine")

    def digests(folder: Path) -> dict[str, str]:
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for top in ("mgsm", "gsm8k", "text") for p in sorted((folder / top).glob("*")) if p.is_file()}

    ours, theirs = digests(data_dir), digests(source)
    assert ours == theirs and len(theirs) >= len(fetch_data.REQUIRED)
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == theirs  # the manifest records the source's bytes
    assert fetch_data.verify(data_dir)
    on_disk = {p.relative_to(data_dir).as_posix() for p in Path(data_dir).rglob("*") if p.is_file()}
    assert on_disk - set(theirs) == {fetch_data.MANIFEST}  # nothing else in the folder
