"""Stage 4, evaluate: the ability benchmark in each language through lm-eval, and the LM loss
on held-out general text (language retention).

MGSM uses lm-eval's own task definitions (`mgsm_native_cot_<lang>`: prompt, exemplars, stop
words, answer extraction) through a task folder of our own: one YAML per task that `include`s
lm-eval's file and overrides only the data source (local files built from `<data_dir>/mgsm`
with the hub dataset's schema), the few-shot count and `max_gen_toks`; lm-eval reads the folder
through `TaskManager(include_path=...)`. Nothing of the prompt is re-implemented.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
from pathlib import Path

import lm_eval
import yaml

from maet.models import backends
from maet.schema.settings import EvalSettings
from maet.store.cache import file_sha256, write_text_atomic

log = logging.getLogger(__name__)

FAMILY_DIRS = {"mgsm_native_cot": "native_cot", "mgsm_direct": "direct", "mgsm_en_cot": "en_cot"}


def _number(text: str) -> int | float:
    value = float(text.replace(",", ""))
    return int(value) if value.is_integer() else value


def mgsm_rows(data_dir: Path, lang: str) -> tuple[list[dict], list[dict]]:
    """(train, test) rows with the schema of the hub dataset `juletxara/mgsm`.

    test: `mgsm_<lang>.tsv` (question TAB answer); train: the 8 published exemplars.
    """
    test = []
    for line in (data_dir / "mgsm" / f"mgsm_{lang}.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip():
            question, answer = line.rsplit("\t", 1)
            test.append({"question": question, "answer": None, "answer_number": _number(answer),
                         "equation_solution": None})
    shared = json.loads((data_dir / "mgsm" / "exemplars.json").read_text(encoding="utf-8"))
    train = [{"question": ex["question"], "answer": ex["answer"], "answer_number": number,
              "equation_solution": equation}
             for ex, number, equation in zip(shared["exemplars"][lang], shared["numbers"], shared["equations"])]
    return train, test


def mgsm_file_fingerprint(data_dir: Path, lang: str) -> dict:
    """sha256 of the benchmark files a local MGSM task reads (for cache keys)."""
    files = [data_dir / "mgsm" / f"mgsm_{lang}.tsv", data_dir / "mgsm" / "exemplars.json"]
    return {"lang": lang, "sha256": [file_sha256(f) for f in files]}


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def split_items(items: list[dict], settings: EvalSettings) -> list[dict]:
    """The items of `eval.split`: with `eval.dev_size` = k > 0, k items drawn with `eval.seed` are
    the dev split and the others the test split (disjoint); with k = 0 every item is a test item."""
    if not settings.dev_size:
        return items
    dev = set(random.Random(settings.seed).sample(range(len(items)), min(settings.dev_size, len(items) - 1)))
    return [item for i, item in enumerate(items) if (i in dev) == (settings.split == "dev")]


def split_file(settings: EvalSettings) -> str:
    """File name of the split's items (distinct per split and dev size: parallel jobs never share one)."""
    return f"{settings.split}-dev{settings.dev_size}.jsonl" if settings.dev_size else "test.jsonl"


def lm_eval_task_file(family: str, lang: str) -> Path:
    """lm-eval's own YAML of `<family>_<lang>` in its installed task tree."""
    return Path(lm_eval.__file__).parent / "tasks" / "mgsm" / FAMILY_DIRS[family] / f"{family}_{lang}.yaml"


def mgsm_task(family: str, lang: str, data_dir: Path, work_dir: Path, settings: EvalSettings) -> dict:
    """Our task file for `lang`: lm-eval's own MGSM task (`include`), from the hub
    (`eval.source=hub`) or reading local data files with the hub dataset's schema
    (`eval.source=local`). Prompt, exemplars, stop words and answer extraction are lm-eval's in both."""
    source = lm_eval_task_file(family, lang)
    config = {"include": str(source), "task": f"{family}_{lang}", "num_fewshot": settings.num_fewshot}
    if settings.source == "local":
        train, test = mgsm_rows(data_dir, lang)
        files = {"train": str(write_jsonl(train, work_dir / "mgsm" / lang / "train.jsonl")),
                 "test": str(write_jsonl(split_items(test, settings), work_dir / "mgsm" / lang / split_file(settings)))}
        config.update(task=f"{family}_{lang}_local", dataset_path="json", dataset_name=None,
                      dataset_kwargs={"data_files": files})
    if settings.max_gen_toks is not None:  # an included key is replaced whole: keep the language file's stop words
        own = yaml.safe_load(source.read_text(encoding="utf-8")).get("generation_kwargs", {})
        config["generation_kwargs"] = {**own, "max_gen_toks": settings.max_gen_toks}
    return config


def task_folder(configs: list[dict], work_dir: Path) -> tuple[Path, list[str]]:
    """(folder, task names): one `<task>.yaml` per config in a folder named by their content, for
    `TaskManager(include_path=folder)` (parallel jobs with the same tasks write the same files)."""
    text = {c["task"]: yaml.safe_dump(c, allow_unicode=True, sort_keys=False) for c in configs}  # data_files: train first
    folder = work_dir / "tasks" / hashlib.sha256(json.dumps(text, sort_keys=True).encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in text.items():
        if not (folder / f"{name}.yaml").is_file():
            write_text_atomic(folder / f"{name}.yaml", body)
    return folder, list(text)


def arith_task(lang: str, items: list[dict], work_dir: Path, settings: EvalSettings) -> dict:
    """The built-in world's benchmark as an lm-eval generation task: the prompt is the problem
    up to the answer marker, the answer is the last number generated before `.` or a newline."""
    path = write_jsonl(split_items(items, settings), work_dir / "arith" / lang / split_file(settings))
    return {
        "task": f"arith_{lang}", "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(path)}}, "test_split": "test",
        "output_type": "generate_until", "doc_to_text": "{{question}}", "doc_to_target": "{{answer}}",
        "target_delimiter": " ", "num_fewshot": settings.num_fewshot,
        "generation_kwargs": {"until": ["\n", "."], "do_sample": False, "max_gen_toks": settings.max_gen_toks or 16},
        "filter_list": [{"name": "last-number", "filter": [
            {"function": "regex", "regex_pattern": "(-?[0-9]+)", "group_select": -1},
            {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }


def task_name(settings: EvalSettings, lang: str) -> str:
    if settings.benchmark == "arith":
        return f"arith_{lang}"
    if settings.benchmark == "task":
        return settings.task_template.format(family=settings.task_family, lang=lang)
    return f"{settings.task_family}_{lang}" + ("_local" if settings.source == "local" else "")


def heldout_task(lang: str, docs: list[str], work_dir: Path) -> dict:
    """Rolling log-likelihood of held-out general text (word/byte perplexity, bits per byte)."""
    path = write_jsonl([{"text": d} for d in docs], work_dir / "heldout" / lang / "test.jsonl")
    return {
        "task": f"heldout_{lang}", "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(path)}}, "test_split": "test",
        "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [
            {"metric": "word_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
            {"metric": "byte_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
            {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False},
        ],
    }


@functools.lru_cache(maxsize=4)
def _task_manager(builtin: bool, include_path: str | None = None):
    """One TaskManager per process and task folder. Without lm-eval's built-in index when every
    task is ours: indexing its ~14,000 task files costs seconds on every call that builds its own."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=builtin)


def run_lm_eval(model, tokenizer, tasks: list[dict | str], settings: EvalSettings,
                include_path: Path | None = None) -> dict | None:
    """lm-eval's `simple_evaluate` over the in-memory model (`eval.backend`: `maet.models.backends`); task
    names are lm-eval's or those of our task folder `include_path`, dicts are configs. None on the
    ranks > 0 of a data-parallel evaluation (rank 0 gets the results)."""
    import datasets

    datasets.disable_progress_bars()
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    with backends.language_model(model, tokenizer, settings) as lm:  # eval.backend: hf | vllm
        return lm_eval.simple_evaluate(
            model=lm, tasks=tasks, limit=settings.limit, log_samples=True, random_seed=settings.seed,
            numpy_random_seed=settings.seed, torch_random_seed=settings.seed, fewshot_random_seed=settings.seed,
            bootstrap_iters=0,
            task_manager=_task_manager(include_path is None and any(isinstance(t, str) for t in tasks),
                                       str(include_path) if include_path else None),
        )


def summarize(results: dict, settings: EvalSettings) -> tuple[dict, list[dict]]:
    """(metrics, predictions) from lm-eval's output.

    metrics: `<benchmark>_<lang>` (headline accuracy), `<benchmark>_<lang>/<filter>`,
    `<benchmark>_<lang>/n`, `heldout_<lang>/bits_per_byte` (and word/byte perplexity).
    predictions: one row per item and filter.
    """
    metrics: dict[str, float] = {}
    predictions: list[dict] = []
    bench = settings.benchmark
    for lang in settings.langs:
        task = task_name(settings, lang)
        res = results["results"][task]
        for key, value in res.items():
            name, _, filt = key.partition(",")
            if name == settings.metric and isinstance(value, (int, float)):
                metrics[f"{bench}_{lang}/{filt}"] = float(value)
        metrics[f"{bench}_{lang}"] = metrics[f"{bench}_{lang}/{settings.filter}"]
        subtasks = [t for t in results["samples"] if t == task or t in results.get("group_subtasks", {}).get(task, [])]
        metrics[f"{bench}_{lang}/n"] = sum(len({s["doc_id"] for s in results["samples"][t]}) for t in subtasks)
        for sub in subtasks:
            for sample in results["samples"][sub]:
                response = sample["resps"][0][0] if sample["resps"] else None
                predictions.append({
                    "task": sub, "lang": lang, "doc_id": sample["doc_id"], "item": f"{sub}/{sample['doc_id']}",
                    "target": sample["target"], "response": response if isinstance(response, str) else str(response),
                    "filtered": sample["filtered_resps"], "filter": sample.get("filter"),
                    "correct": float(sample[settings.metric]) if settings.metric in sample else None,
                })
    for task, res in results["results"].items():
        if task.startswith("heldout_"):
            for key, value in res.items():
                name, _, filt = key.partition(",")
                if filt == "none" and name in ("bits_per_byte", "byte_perplexity", "word_perplexity"):
                    metrics[f"{task}/{name}"] = float(value)
    return metrics, predictions


def correctness(predictions: list[dict], lang: str, filter_name: str) -> dict[str, float]:
    """item (task/doc id) -> correct (0/1) in one language under one answer filter."""
    return {p["item"]: p["correct"] for p in predictions if p["lang"] == lang and p["filter"] == filter_name}
