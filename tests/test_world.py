"""The built-in world: deterministic, held-out benchmark, each language in its own words and script."""

import re

import pytest

from maet import world
from maet.world import describe
from maet.schema.settings import WorldLanguageSettings as Lang
from maet.schema.settings import WorldSettings

SMALL = WorldSettings(
    languages=[Lang("en", "latin", "SVO", False, 0.0), Lang("sw", "latin", "SVO", True, 0.5),
               Lang("bn", "bengali", "SOV", False, 0.5), Lang("te", "telugu", "VSO", False, 1.0)],
    general_per_lang=300, pretrain_general_per_lang=300, problem_forms=True, parallel_per_lang=50, ability_per_lang=500, benchmark_per_lang=100,
    pretrain_equations=20, pretrain_ability_en=10)


@pytest.fixture(scope="module")
def w():
    return world.generate(SMALL)


def test_generation_is_deterministic_per_seed(w):
    again = world.generate(SMALL)
    assert again.general == w.general and again.ability == w.ability and again.benchmark == w.benchmark
    other = world.generate(WorldSettings(**{**SMALL.__dict__, "seed": 1}))
    assert other.general != w.general and other.benchmark != w.benchmark
    assert world.world_fingerprint(SMALL) != world.world_fingerprint(WorldSettings(**{**SMALL.__dict__, "seed": 1}))


def _question(problem: str) -> str:
    return problem.split(world.ANSWER)[0] + world.ANSWER


def test_benchmark_never_overlaps_training_text(w):
    # a problem is rendered deterministically from (operation, people, object, operands), so equal
    # questions mean an equal problem: no benchmark question may occur in any training text
    pretraining = set(world.pretraining_mix(w))
    for code, items in w.benchmark.items():
        bench = {item["question"] for item in items}
        assert len(bench) == len(items) == SMALL.benchmark_per_lang
        assert bench.isdisjoint({_question(d) for d in w.ability[code]}), code
        assert not any(doc.startswith(q) for q in bench for doc in pretraining if world.ANSWER in doc)


def test_worked_answers_are_right(w):
    for code in w.ability:
        for doc in w.ability[code]:
            a, op, b, _, c = doc.split(world.ANSWER)[1].split()[:5]
            assert (int(a) + int(b) if op == "+" else int(a) - int(b)) == int(c)
    for items in w.benchmark.values():
        assert all(0 <= item["answer"] <= 2 * SMALL.max_operand for item in items)


def test_each_language_has_its_own_words_and_script(w):
    shared = set(world.NAMES) | {world.ANSWER, ".", "?", "|||"}
    english = {word for doc in w.general["en"] + w.ability["en"] for word in doc.split()}
    vocab = {}
    for lang in SMALL.languages:
        words = {word for doc in w.general[lang.code] + w.ability[lang.code] for word in doc.split()}
        own = {x for x in words - shared - english if not x.isdigit() and x not in {"+", "-", "="}}
        vocab[lang.code] = own
        if lang.code == "en":
            continue
        assert own, f"{lang.code} has no words of its own"
        assert all(world.in_script(x, lang.script) for x in own), f"{lang.code}: a word outside its script"
        if lang.distance == 1.0:  # no English content word left (function words are concepts too)
            assert not (words & english) - shared - {x for x in words if x.isdigit() or x in {"+", "-", "="}}
    codes = [c for c in vocab if c != "en"]
    for i, a in enumerate(codes):
        for b in codes[i + 1:]:
            assert vocab[a].isdisjoint(vocab[b]), f"{a} and {b} share words"


def test_word_orders_differ(w):
    # "X has N OBJ ." : SVO puts the verb second, SOV last, VSO first
    en = world.Renderer(SMALL.languages[0], SMALL.seed)
    sov = world.Renderer(SMALL.languages[2], SMALL.seed)
    vso = world.Renderer(SMALL.languages[3], SMALL.seed)
    frame = ("+", "tom", "ana", "apple", 3, 4)
    assert en.problem(frame)[0].startswith("tom has 3 apples .")
    assert sov.problem(frame)[0].split()[3] == sov.lex["has"]
    assert vso.problem(frame)[0].split()[0] == vso.lex["has"]
    assert en.problem(frame)[1] == "3 + 4 = 7 ." == sov.problem(frame)[1]


def test_parallel_pairs_say_the_same_thing(w):
    for pair in w.parallel["sw"][:20]:
        en, sw = pair.split(" ||| ")
        assert re.findall(r"\d+", en) == re.findall(r"\d+", sw)
        assert [x for x in en.split() if x in world.NAMES] == [x for x in sw.split() if x in world.NAMES]


def test_every_problem_word_occurs_in_its_languages_general_text(w):
    # problem_forms: a target language's words for "gets", "more", "how many" ... are learnable from
    # its general text (without them no method could read a problem it never saw in that language)
    for code, items in w.benchmark.items():
        general = {word for doc in w.general[code] for word in doc.split()}
        missing = {word for item in items for word in item["question"].split()} - general - {world.ANSWER}
        assert not missing, (code, missing)
    old = world.generate(WorldSettings(**{**SMALL.__dict__, "problem_forms": False}))
    assert any(word not in {x for doc in old.general["sw"] for x in doc.split()}
               for item in old.benchmark["sw"] for word in item["question"].split() if word != world.ANSWER)


def test_pretraining_general_text_is_drawn_apart_from_the_stages_text(w):
    assert len(w.pretrain_general["sw"]) == SMALL.pretrain_general_per_lang
    assert w.pretrain_general["sw"] != w.general["sw"][:SMALL.pretrain_general_per_lang]
    mix = world.pretraining_mix(w)
    assert all(doc in mix for doc in w.pretrain_general["bn"])
    legacy = world.generate(WorldSettings(**{**SMALL.__dict__, "pretrain_general_per_lang": 0}))
    assert all(doc in world.pretraining_mix(legacy) for doc in legacy.general["bn"])


def test_pretraining_may_hold_a_few_problems_per_target_language(w):
    assert not any(doc in world.pretraining_mix(w) for doc in w.ability["sw"])  # the default: English only
    with_targets = world.generate(WorldSettings(**{**SMALL.__dict__, "pretrain_ability_targets": 7}))
    mix = world.pretraining_mix(with_targets)
    assert [doc for doc in mix if doc in with_targets.ability["bn"]] == with_targets.ability["bn"][-7:]
    assert len(mix) == len(world.pretraining_mix(w)) + 7 * (len(w.ability) - 1)


def test_free_order_varies_noun_order_and_question_form_in_every_language(w):
    free = world.generate(WorldSettings(**{**SMALL.__dict__, "free_order": True}))
    english = " ".join(free.ability["en"])
    assert "how many" in english and " has how many " in english  # both question forms
    assert any(f" has {n} " in english for n in range(1, 10)) and any(f"s {n} ." in english for n in range(1, 10))
    assert free.ability["en"] != w.ability["en"] and free.general["sw"] != w.general["sw"]
    assert [b["answer"] for b in free.benchmark["sw"]] == [b["answer"] for b in w.benchmark["sw"]]  # same frames


def test_free_order_phrasing_of_a_corpus_does_not_depend_on_the_sizes_of_the_others():
    free = {**SMALL.__dict__, "free_order": True}
    one, other = world.generate(WorldSettings(**free)), world.generate(WorldSettings(**{**free, "general_per_lang": 77}))
    assert one.benchmark == other.benchmark and one.ability == other.ability


def test_the_problem_words_a_language_shares_with_english():
    question = "tom has 1 apple . how many apple does tom have ?"
    concepts = describe.problem_concepts([{"question": question}])
    assert concepts == ["apple", "has", "have", "how_many", "does"]  # CONCEPTS' order; "a" is no word here
    settings = WorldSettings(languages=[Lang(code="en", distance=0.0), Lang(code="xx", distance=1.0),
                                        Lang(code="yy", distance=0.5)])
    assert describe.shared_words(settings, "en", concepts) == concepts
    assert describe.shared_words(settings, "xx", concepts) == []  # distance 1: a word of its own for each
    lex = world.lexicon(settings.languages[2], settings.seed)
    assert describe.shared_words(settings, "yy", concepts) == [c for c in concepts if lex[c] == c.replace("_", " ")]
