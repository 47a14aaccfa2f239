"""The local MGSM task is lm-eval's own task with local data files: same prompts and answer
extraction as the hub task, checked on the real MGSM files under the shared data folder."""

import importlib.util
from pathlib import Path

import lm_eval
import pytest
from lm_eval.api.metrics import exact_match_hf_evaluate
from lm_eval.filters.extraction import RegexFilter
from lm_eval.tasks import TaskManager

from maet.evaluation import evaluate
from maet.schema.settings import EvalSettings

LANGS = ["bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"]


def _lm_eval_languages() -> dict:
    """lm-eval's own table of MGSM prompt words (tasks/mgsm/utils.py)."""
    path = Path(lm_eval.__file__).parent / "tasks" / "mgsm" / "utils.py"
    spec = importlib.util.spec_from_file_location("mgsm_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LANGUAGES


WORDS = _lm_eval_languages()


def _norm(text: str) -> str:
    """Full-width colons and spacing around them, as lm-eval's ja/zh templates mix both."""
    return " ".join(text.replace("：", ": ").replace(":", ": ").split())


# lm-eval's own quirks, reproduced on purpose (the local task must behave as the hub task does):
# its strict regex is English for bn and matches only some published de/ja answers
# ("Die Antwort ist" vs "lautet", "答えは39個。" vs "答えは..です。"); its ja/zh targets cut one
# character too many; its ru answer word has no space where the data has one.
STRICT_ON_EXEMPLARS = {"bn": 0.0, "de": 0.875, "ja": 0.625}
CUT_ONE_TOO_MANY = {"ja", "zh"}
ANSWER_WORD_DIFFERS = {"ru"}


def _config(lang, source, data_dir, tmp_path):
    return evaluate.mgsm_task("mgsm_native_cot", lang, data_dir, tmp_path, EvalSettings(source=source, max_gen_toks=32))


def _local_task(lang, data_dir, tmp_path):
    """The local task as lm-eval builds it from our task folder (`TaskManager(include_path=...)`)."""
    folder, names = evaluate.task_folder([_config(lang, "local", data_dir, tmp_path)], tmp_path)
    return next(iter(TaskManager(include_path=str(folder), include_defaults=False).load(names)["tasks"].values()))


def _lm_eval_config(lang):
    """lm-eval's own resolved config of the hub task, read by lm-eval's loader (the reference the
    package no longer imports)."""
    from lm_eval.tasks import _yaml_loader

    return _yaml_loader.load_yaml(evaluate.lm_eval_task_file("mgsm_native_cot", lang), resolve_func=True)


@pytest.mark.parametrize("lang", LANGS)
def test_local_and_hub_configs_differ_only_in_where_the_data_comes_from(lang, data_dir, tmp_path):
    hub, local = _config(lang, "hub", data_dir, tmp_path), _config(lang, "local", data_dir, tmp_path)
    data_keys = {"task", "dataset_path", "dataset_name", "dataset_kwargs"}
    assert {k: v for k, v in hub.items() if k not in data_keys} == {k: v for k, v in local.items() if k not in data_keys}
    assert "dataset_path" not in hub and hub["task"] == f"mgsm_native_cot_{lang}"  # the hub dataset of lm-eval's file
    assert Path(hub["include"]) == Path(lm_eval.__file__).parent / "tasks/mgsm/native_cot" / f"mgsm_native_cot_{lang}.yaml"
    assert local["num_fewshot"] == 8 and local["generation_kwargs"]["max_gen_toks"] == 32
    # what lm-eval builds from our folder is its own task but for data source, few-shot count and max_gen_toks
    built = _local_task(lang, data_dir, tmp_path).config.to_dict()
    own = {k: v for k, v in _lm_eval_config(lang).items() if k not in data_keys | {"tag", "generation_kwargs", "metadata"}}
    assert {k: built[k] for k in own if k in built} == {k: v for k, v in own.items() if k in built}
    assert len([k for k in own if k in built]) >= 8 and built["metadata"]["version"] == own_version(lang)
    assert {k: v for k, v in built["generation_kwargs"].items() if k != "max_gen_toks"} == \
        _lm_eval_config(lang)["generation_kwargs"]


def own_version(lang):
    return _lm_eval_config(lang)["metadata"]["version"]


def test_no_private_lm_eval_import_in_the_package():
    for path in Path(evaluate.__file__).parents[1].rglob("*.py"):  # the whole package
        assert "_yaml_loader" not in path.read_text(), path


@pytest.mark.parametrize("lang", LANGS)
def test_local_rows_have_the_hub_schema_and_prompts(lang, data_dir, tmp_path):
    train, test = evaluate.mgsm_rows(data_dir, lang)
    assert len(train) == 8 and len(test) == 250
    question_word, answer_word = WORDS[lang]["QUESTION"], WORDS[lang]["ANSWER"]
    task = _local_task(lang, data_dir, tmp_path)
    target_cut = int(task.config.doc_to_target.split("answer[")[1].split(":")[0])
    for ex in train:  # hub train rows carry the prompt words; lm-eval's target slices the answer word off
        assert _norm(ex["question"]).startswith(_norm(question_word))
        if lang not in ANSWER_WORD_DIFFERS:
            assert _norm(ex["answer"]).startswith(_norm(answer_word))
        if lang not in CUT_ONE_TOO_MANY | ANSWER_WORD_DIFFERS:
            assert ex["answer"][:target_cut].strip() == answer_word
        elif lang in CUT_ONE_TOO_MANY:
            assert len(_norm(ex["answer"][:target_cut])) > len(_norm(answer_word))
    assert all(not _norm(row["question"]).startswith(_norm(question_word)) and row["answer"] is None for row in test)

    doc = task.test_docs()[0]
    assert _norm(task.doc_to_text(doc)) == _norm(f"{question_word} {test[0]['question']}\n{answer_word}")
    assert task.doc_to_target(doc) == str(test[0]["answer_number"])
    prompt = task.fewshot_context(doc, num_fewshot=8)
    for ex in train:  # all 8 published exemplars, question and worked answer, then the item
        assert f"{ex['question']}\n" in prompt and f" {ex['answer'][target_cut:]}" in prompt
    assert prompt.endswith(task.doc_to_text(doc))


@pytest.mark.parametrize("lang", LANGS)
def test_answer_extraction_on_real_mgsm_answers(lang, data_dir, tmp_path):
    """lm-eval's filters on the published worked answers recover the right numbers."""
    config = _local_task(lang, data_dir, tmp_path).config.to_dict()
    train, _ = evaluate.mgsm_rows(data_dir, lang)
    responses = [[ex["answer"][len(WORDS[lang]["ANSWER"]):]] for ex in train]
    targets = [str(ex["answer_number"]) for ex in train]
    metric = next(m for m in config["metric_list"] if m["metric"] == "exact_match")
    options = {k: metric[k] for k in ("ignore_case", "ignore_punctuation") if k in metric}
    scores = {}
    for pipeline in config["filter_list"]:
        regex = next(f for f in pipeline["filter"] if f["function"] == "regex")
        extracted = [r[0] for r in RegexFilter(regex["regex_pattern"], regex.get("group_select", 0)).apply(responses, train)]
        scores[pipeline["name"]] = exact_match_hf_evaluate(extracted, targets, **options)["exact_match"]
    assert scores["flexible-extract"] == 1.0  # the last number of every worked answer is its result
    # strict-match needs lm-eval's exact answer phrase, which not every published answer uses
    assert scores["strict-match"] == pytest.approx(STRICT_ON_EXEMPLARS.get(lang, 1.0))
