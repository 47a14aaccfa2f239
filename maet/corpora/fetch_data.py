"""`make data`: put MGSM, GSM8K and general-text samples where the project reads them.

    python -m maet.corpora.fetch_data [--from DIR] [--to DIR] [--local-only] [--force]

Sources, first that works: `--from DIR` (or `DATA_FROM`), a sibling `../shared/data` of the
checkout, then the Hugging Face hub through `datasets` (needs network):

| folder | hub dataset | license |
| --- | --- | --- |
| `mgsm/` | `juletxara/mgsm` (one config per language; test = 250 items, train = 8 exemplars) | CC BY 4.0 |
| `gsm8k/` | `openai/gsm8k` (config `main`, train and test) | MIT |
| `text/` | `wikimedia/wikipedia` (`20231101.<code>`): sentences of the first articles, ~48k chars | CC BY-SA 4.0 |

A folder source must have the layout written here (that of `../shared/data`, whose texts are
Mozilla Common Voice sentences, CC0). `MANIFEST.json` records the source, license, size and
sha256 of every file; a data folder whose manifest verifies is left as it is. The files are
third-party texts: the default target (`data/` in the checkout) is git-ignored.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from maet.schema.resolvers import PROJECT_ROOT

DEFAULT_TARGET = PROJECT_ROOT / "data"
SIBLING = PROJECT_ROOT.parent / "shared" / "data"
MANIFEST = "MANIFEST.json"
MGSM_LANGS = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
TEXT_LANGS = ("en", "es", "zh", "sw", "th", "bn", "te")
# What the tests and `experiment=shared_data` read; a source without these is incomplete.
REQUIRED = ("mgsm/exemplars.json", "mgsm/mgsm_en.tsv", "mgsm/mgsm_sw.tsv", "mgsm/mgsm_bn.tsv",
            "gsm8k/train.jsonl", "gsm8k/test.jsonl", "text/en.txt", "text/sw.txt", "text/bn.txt")
DATASETS = {  # folder -> (dataset, hub id, license)
    "mgsm": ("MGSM (Shi et al., 2022)", "juletxara/mgsm", "CC BY 4.0"),
    "gsm8k": ("GSM8K (Cobbe et al., 2021)", "openai/gsm8k", "MIT"),
    "text": ("general text samples", "wikimedia/wikipedia", "CC BY-SA 4.0"),
}
FOLDER_TEXT_LICENSE = "CC0 1.0 (Mozilla Common Voice sentences) where the source is ../shared/data; see its README"
TEXT_CHARS = 48_000


class DataUnavailable(RuntimeError):
    """No source could provide the data."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def missing_files(folder: Path) -> list[str]:
    """Required files absent from a data folder (all of them when it does not exist)."""
    return [rel for rel in REQUIRED if not (folder / rel).is_file()]


def verify(folder: Path) -> bool:
    """True when `folder/MANIFEST.json` exists, lists every required file, and every checksum matches."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = {f["path"]: f["sha256"] for f in manifest["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return set(REQUIRED) <= set(files) and all(
        (folder / rel).is_file() and sha256(folder / rel) == digest for rel, digest in files.items())


def copy_folder(source: Path, out: Path) -> str:
    """Copies the mgsm/, gsm8k/ and text/ files of a data folder; returns a description of it."""
    absent = missing_files(source)
    if absent:
        raise DataUnavailable(f"{source} lacks {', '.join(absent)}")
    for folder in DATASETS:
        for path in sorted((source / folder).glob("*")):
            if path.is_file():
                (out / folder).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, out / folder / path.name)
    return f"folder {source.resolve()}"


def _number(value) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else str(value)


def mgsm_files(splits: dict[str, dict[str, list[dict]]]) -> dict[str, str]:
    """MGSM as this project stores it, from the hub schema (`splits[lang][split]` rows with
    question, answer, answer_number, equation_solution): `mgsm_<lang>.tsv` (question TAB number)
    per language and `exemplars.json` (the 8 exemplars per language, their numbers and equations)."""
    files = {f"mgsm_{lang}.tsv": "".join(f"{' '.join(r['question'].split())}\t{_number(r['answer_number'])}\n"
                                         for r in rows["test"])
             for lang, rows in splits.items()}
    english = splits["en"]["train"]
    exemplars = {"numbers": [int(float(r["answer_number"])) for r in english],
                 "equations": [r["equation_solution"] for r in english],
                 "exemplars": {lang: [{"question": r["question"], "answer": r["answer"]} for r in rows["train"]]
                               for lang, rows in splits.items()}}
    return files | {"exemplars.json": json.dumps(exemplars, ensure_ascii=False, indent=1) + "\n"}


def text_sample(articles, chars: int = TEXT_CHARS) -> str:
    """Lines (sentences split at '.', '।', '。') of the first articles, deduplicated, up to `chars`."""
    seen, lines, total = set(), [], 0
    for article in articles:
        for paragraph in article.splitlines():
            for sentence in _sentences(paragraph):
                if len(sentence) < 20 or sentence in seen:
                    continue
                if total + len(sentence) + 1 > chars:
                    return "".join(line + "\n" for line in lines)
                seen.add(sentence)
                lines.append(sentence)
                total += len(sentence) + 1
    return "".join(line + "\n" for line in lines)


def _sentences(paragraph: str) -> list[str]:
    out, current = [], ""
    for ch in paragraph:
        current += ch
        if ch in ".।。?!":
            out.append(current.strip())
            current = ""
    return [s for s in out + [current.strip()] if s]


def download_hub(out: Path) -> str:
    """MGSM, GSM8K and a Wikipedia text sample per language from the hub, via `datasets`."""
    import datasets

    datasets.disable_progress_bars()
    splits = {lang: {split: list(datasets.load_dataset("juletxara/mgsm", lang, split=split))
                     for split in ("train", "test")} for lang in MGSM_LANGS}
    _write_all(out / "mgsm", mgsm_files(splits))
    gsm8k = {f"{split}.jsonl": "".join(json.dumps({"question": r["question"], "answer": r["answer"]},
                                                  ensure_ascii=False) + "\n"
                                       for r in datasets.load_dataset("openai/gsm8k", "main", split=split))
             for split in ("train", "test")}
    gsm8k["LICENSE"] = "GSM8K (openai/grade-school-math) is released under the MIT License.\n"
    _write_all(out / "gsm8k", gsm8k)
    texts = {}
    for code in TEXT_LANGS:
        rows = datasets.load_dataset("wikimedia/wikipedia", f"20231101.{code}", split="train", streaming=True)
        texts[f"{code}.txt"] = text_sample(row["text"] for row in rows)
    _write_all(out / "text", texts)
    return "hub"


def _write_all(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")


def write_manifest(folder: Path, origin: str) -> dict:
    """MANIFEST.json: per file path, bytes, sha256, dataset, hub id and license, plus the origin."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        top = path.relative_to(folder).parts[0]
        dataset, hub_id, license_ = DATASETS.get(top, ("", "", ""))
        if top == "text" and origin != "hub":
            license_ = FOLDER_TEXT_LICENSE
        files.append({"path": path.relative_to(folder).as_posix(), "bytes": path.stat().st_size,
                      "sha256": sha256(path), "dataset": dataset, "hub_id": hub_id, "license": license_})
    manifest = {"origin": origin, "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def candidate_sources(explicit: str | None, local_only: bool) -> list[str | Path]:
    """In order: the explicit folder, the sibling ../shared/data, the hub (unless local only or offline)."""
    if explicit:
        return [Path(explicit)]
    sources: list[str | Path] = [SIBLING] if SIBLING.is_dir() else []
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    if not local_only and not offline:
        sources.append("hub")
    return sources


def fetch(target: Path, explicit: str | None = None, local_only: bool = False, force: bool = False) -> dict:
    """Fills `target` from the first source that works; returns its manifest. Raises
    DataUnavailable (naming every source tried) when none does."""
    if not force and verify(target):
        manifest = json.loads((target / MANIFEST).read_text())
        if explicit is None or manifest["origin"] == f"folder {Path(explicit).resolve()}":
            return manifest
    errors = []
    for source in candidate_sources(explicit, local_only):
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".data-") as tmp:
            out = Path(tmp) / "data"
            out.mkdir()
            try:
                origin = download_hub(out) if source == "hub" else copy_folder(Path(source), out)
            except Exception as err:  # noqa: BLE001 (any failure of one source: try the next)
                errors.append(f"{source}: {err}")
                continue
            manifest = write_manifest(out, origin)
            if target.exists():
                shutil.rmtree(target)
            out.rename(target)
            return manifest
    tried = "; ".join(errors) or ("no source: no --from / DATA_FROM, no ../shared/data next to the checkout, "
                                  "and the hub is not tried offline (HF_HUB_OFFLINE=1) or with --local-only")
    raise DataUnavailable(f"no data for {target}: {tried}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maet.corpora.fetch_data", description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="source", default=os.environ.get("DATA_FROM") or None,
                        help="a data folder to copy (default: $DATA_FROM, else ../shared/data, else the hub)")
    parser.add_argument("--to", default=str(DEFAULT_TARGET), help="target folder (paths.data_dir; default: data/)")
    parser.add_argument("--local-only", action="store_true", help="never the hub")
    parser.add_argument("--optional", action="store_true", help="no data is not an error (a note, exit 0)")
    parser.add_argument("--force", action="store_true", help="fetch again even when the target verifies")
    args = parser.parse_args(argv)
    target = Path(args.to).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        manifest = fetch(target, args.source, args.local_only, args.force)
    except DataUnavailable as err:
        then = "tests that need MGSM / GSM8K / text data will be skipped; " if args.optional else ""
        print(f"data: {err}. {then}fetch it with `make data` (online) or `make data DATA_FROM=<folder>`.",
              file=sys.stderr)
        return 0 if args.optional else 1
    print(f"data: {len(manifest['files'])} files in {target} (from {manifest['origin']}, {MANIFEST} verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
