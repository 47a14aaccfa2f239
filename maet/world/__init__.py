"""The built-in world: a miniature of the paper's setting, generated here from seeded rules.

Languages share concepts (people, objects, places, actions) but differ in surface form: each
has its own word list (made of syllables of its script), its own word order (SVO / SOV / VSO)
and noun-adjective / noun-number order. Numbers are written with shared digits; person names
and the answer marker `=>` are shared anchors, as names and numerals are across real languages.
`distance` is a knob per language: the fraction of English content words that get a language
word of their own (0: an English dialect; 1: no shared content word).

Corpora, in the roles of METHOD.md:
- `general:<code>`: general sentences (people having, seeing, going, liking things);
- `ability:<code>`: one-line arithmetic word problems with worked answers (`=> 3 + 4 = 7 .`);
  only `ability:en` trains MAET, `ability:<target>` trains the oracle (a ceiling, never MAET);
- `parallel:<code>`: `en sentence ||| <code> sentence` pairs (only in the base's pre-training);
- benchmark `<code>`: held-out problems (question + `=>`, answer number); their (frame, person,
  object, operands) never occur in any training problem.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass

from maet.schema.settings import WorldLanguageSettings as WorldLanguage
from maet.schema.settings import WorldSettings

ANSWER = "=>"
NAMES = ["tom", "ana", "ben", "eva", "sam", "lea", "max", "ida", "leo", "mia", "kai", "zoe"]
OBJECTS = ["apple", "book", "cup", "pen", "ball", "egg", "fish", "hat", "key", "coin", "box", "cake"]
PLACES = ["house", "park", "market", "school", "river", "farm", "shop", "garden"]
ADJECTIVES = ["big", "small", "red", "old", "new", "green", "blue", "good"]
TIMES = ["today", "yesterday", "tomorrow", "tonight"]
ACTIONS = ["sees", "likes", "wants", "finds", "sells", "buys", "makes", "takes"]
FUNCTION = ["has", "have", "gets", "more", "gives", "to", "goes", "in", "how_many", "does", "is", "the", "a"]
CONCEPTS = OBJECTS + PLACES + ADJECTIVES + TIMES + ACTIONS + FUNCTION

# Syllable inventories written for this project (not words of any real language).
SCRIPTS = {
    "latin": ([*"kmntwzlshbdgprvy"], [*"aeiou"]),
    "bengali": ([*"কখগচজটডতদনপবমরলসহ"], ["া", "ি", "ু", "ে", "ো", ""]),
    "telugu": ([*"కగచజటడతదనపబమయరలవసహ"], ["ా", "ి", "ు", "ె", "ో", ""]),
    "thai": ([*"กขคงจชดตทนบปผพมยรลวสห"], ["า", "ิ", "ุ", "ี", "ู", "ะ"]),
}
SCRIPT_RANGES = {"latin": (0x61, 0x7A), "bengali": (0x0980, 0x09FF), "telugu": (0x0C00, 0x0C7F), "thai": (0x0E00, 0x0E7F)}


def world_fingerprint(settings: WorldSettings) -> str:
    return hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- lexicon
def _make_word(rng: random.Random, script: str) -> str:
    consonants, vowels = SCRIPTS[script]
    return "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.choice((2, 2, 3))))


def lexicon(lang: WorldLanguage, seed: int) -> dict[str, str]:
    """Concept -> word. Shared with English with probability 1 - distance (English has no own words)."""
    rng = random.Random(f"{seed}:lexicon:{lang.code}")
    words, used = {}, set()
    for concept in CONCEPTS:
        english = concept.replace("_", " ")
        if lang.distance == 0 or rng.random() >= lang.distance:
            words[concept] = english
            continue
        word = _make_word(rng, lang.script)
        while word in used:
            word = _make_word(rng, lang.script)
        used.add(word)
        words[concept] = word
    return words


def _plural(lex: dict[str, str], obj: str, n: int | None) -> str:
    word = lex[obj]
    return word + "s" if n != 1 and word == obj and n is not None else word


# ----------------------------------------------------------------------------- rendering
class Renderer:
    """Turns semantic frames into sentences of one language."""

    def __init__(self, lang: WorldLanguage, seed: int, free_order: bool = False):
        self.lang, self.lex, self.seed, self.free_order = lang, lexicon(lang, seed), seed, free_order
        self.for_corpus("")

    def for_corpus(self, name: str) -> Renderer:
        """Restarts the free-order coin flips for corpus `name`, so that one corpus's phrasing does
        not depend on the sizes of the corpora drawn before it."""
        self.order_rng = random.Random(f"{self.seed}:order:{self.lang.code}:{name}")
        return self

    def _free(self, fixed: bool) -> bool:
        """`fixed` (the language's own form), or a coin flip per phrase under free_order."""
        return self.order_rng.random() < 0.5 if self.free_order else fixed

    def noun_phrase(self, obj: str, number: int | None = None, adjective: str | None = None) -> list[str]:
        noun = _plural(self.lex, obj, number)
        mods = ([self.lex[adjective]] if adjective else []) + ([str(number)] if number is not None else [])
        if self._free(self.lang.noun_first):
            return [noun, *mods]
        det = [self.lex["a"]] if number is None and adjective is None else []
        return [*det, *[m for m in reversed(mods)], noun]

    def clause(self, subj: list[str], verb: list[str], obj: list[str], extra: list[str] = ()) -> list[str]:
        order = {"SVO": [subj, verb, obj], "SOV": [subj, obj, verb], "VSO": [verb, subj, obj]}[self.lang.order]
        return [w for part in order for w in part] + list(extra)

    def sentence(self, words: list[str]) -> str:
        return " ".join(words) + " ."

    def question(self, name: str, obj: str) -> str:
        how_many = self.lex["how_many"].split()
        noun = [_plural(self.lex, obj, 2)]
        if self._free(self.lang.code == "en"):  # English's question form, else the clause form
            words = [*how_many, *noun, self.lex["does"], name, self.lex["have"]]
        else:
            words = self.clause([name], [self.lex["has"]], [*noun, *how_many] if self._free(self.lang.noun_first) else [*how_many, *noun])
        return " ".join(words) + " ?"

    # general sentences -------------------------------------------------------
    def general(self, rng: random.Random, problem_forms: bool = True) -> str:
        """One general sentence; `problem_forms` adds the sentence forms word problems use
        ("tom gets 4 more .", "how many cups does ana have ?"), so that every word of a problem
        also occurs in its language's general text."""
        name, kind = rng.choice(NAMES), rng.randrange(7 if problem_forms else 5)
        if kind == 5:
            extra = [self.lex["in"], self.lex["the"], self.lex[rng.choice(PLACES)]] if rng.random() < 0.5 else []
            return self.sentence(self.clause([name], [self.lex["gets"]], [str(rng.randint(1, 20)), self.lex["more"]], extra))
        if kind == 6:
            return self.question(name, rng.choice(OBJECTS))
        if kind == 0:
            n = rng.randint(1, 20)
            return self.sentence(self.clause([name], [self.lex["has"]], self.noun_phrase(rng.choice(OBJECTS), n)))
        if kind == 1:
            np = self.noun_phrase(rng.choice(OBJECTS), adjective=rng.choice(ADJECTIVES))
            extra = [self.lex["in"], self.lex["the"], self.lex[rng.choice(PLACES)]] if rng.random() < 0.5 else []
            return self.sentence(self.clause([name], [self.lex[rng.choice(ACTIONS)]], np, extra))
        if kind == 2:
            place = [self.lex["to"], self.lex["the"], self.lex[rng.choice(PLACES)]]
            return self.sentence(self.clause([name], [self.lex["goes"]], place, [self.lex[rng.choice(TIMES)]]))
        if kind == 3:
            other = rng.choice(NAMES)
            n = rng.randint(1, 20)
            return self.sentence(self.clause([name], [self.lex["gives"]], self.noun_phrase(rng.choice(OBJECTS), n),
                                             [self.lex["to"], other]))
        np = [self.lex["the"], self.lex[rng.choice(PLACES)]]
        return self.sentence(self.clause(np, [self.lex["is"]], [self.lex[rng.choice(ADJECTIVES)]]))

    # arithmetic word problems -----------------------------------------------
    def problem(self, frame: tuple) -> tuple[str, str]:
        """(question ending in the answer marker, worked answer) of one problem frame."""
        op, name, other, obj, a, b = frame
        first = self.sentence(self.clause([name], [self.lex["has"]], self.noun_phrase(obj, a)))
        if op == "+":
            second = self.sentence(self.clause([name], [self.lex["gets"]], [str(b), self.lex["more"]]))
            result = a + b
        else:
            second = self.sentence(self.clause([name], [self.lex["gives"]], self.noun_phrase(obj, b), [self.lex["to"], other]))
            result = a - b
        question = f"{first} {second} {self.question(name, obj)} {ANSWER}"
        return question, f"{a} {op} {b} = {result} ."


def all_frames(max_operand: int) -> list[tuple]:
    frames = []
    for op in "+-":
        for name in NAMES:
            for obj in OBJECTS:
                for a in range(1, max_operand + 1):
                    for b in range(1, max_operand + 1):
                        if op == "-" and b > a:
                            continue
                        other = NAMES[(NAMES.index(name) + 1 + (a + b) % (len(NAMES) - 1)) % len(NAMES)]
                        frames.append((op, name, other, obj, a, b))
    return frames


@dataclass
class World:
    settings: WorldSettings
    general: dict[str, list[str]]           # the stages' general text C(L) per language
    pretrain_general: dict[str, list[str]]  # the base's general text: other sentences of the same source
    parallel: dict[str, list[str]]
    ability: dict[str, list[str]]
    benchmark: dict[str, list[dict]]


def generate(settings: WorldSettings) -> World:
    """The whole world, deterministic per `settings` (seed included)."""
    renderers = {lang.code: Renderer(lang, settings.seed, settings.free_order) for lang in settings.languages}
    frames = all_frames(settings.max_operand)
    random.Random(f"{settings.seed}:frames").shuffle(frames)
    n_bench = settings.benchmark_per_lang
    bench_frames, train_frames = frames[:n_bench], frames[n_bench:]

    general, pretrain_general, parallel, ability, benchmark = {}, {}, {}, {}, {}
    forms = settings.problem_forms
    for code, r in renderers.items():
        rng = random.Random(f"{settings.seed}:general:{code}")
        r.for_corpus("general")
        general[code] = [r.general(rng, forms) for _ in range(settings.general_per_lang)]
        rng = random.Random(f"{settings.seed}:pretrain-general:{code}")
        r.for_corpus("pretrain-general")
        pretrain_general[code] = [r.general(rng, forms) for _ in range(settings.pretrain_general_per_lang)]
        prng = random.Random(f"{settings.seed}:parallel:{code}")
        pairs, en = [], renderers["en"].for_corpus(f"parallel:{code}")
        r.for_corpus("parallel")
        for _ in range(settings.parallel_per_lang if code != "en" else 0):
            state = prng.getstate()
            en_sentence = en.general(prng, forms)
            prng.setstate(state)
            pairs.append(f"{en_sentence} ||| {r.general(prng, forms)}")
        parallel[code] = pairs
        arng = random.Random(f"{settings.seed}:ability:{code}")
        chosen = [train_frames[arng.randrange(len(train_frames))] for _ in range(settings.ability_per_lang)]
        r.for_corpus("ability")
        ability[code] = [" ".join(r.problem(f)) for f in chosen]
        r.for_corpus("benchmark")
        benchmark[code] = [{"question": q, "answer": int(ans.split("=")[1].strip(" ."))}
                           for q, ans in (r.problem(f) for f in bench_frames)]
    return World(settings, general, pretrain_general, parallel, ability, benchmark)


def equations(max_operand: int) -> list[str]:
    """Every one-step fact `a + b = c .` / `a - b = c .` with operands 1..max_operand."""
    ops = range(1, max_operand + 1)
    return [f"{a} + {b} = {a + b} ." for a in ops for b in ops] + [f"{a} - {b} = {a - b} ." for a in ops for b in ops if b <= a]


def pretraining_mix(world: World) -> list[str]:
    """The base's pre-training text: general text of every language (its own sentences, so that
    the stages' general corpora are fresh text for the model, as continual pre-training data is),
    parallel pairs, bare equations (language-neutral math text, as web text has) and a little
    arithmetic: English problems, and optionally a few in each target language."""
    s = world.settings
    facts = equations(s.max_operand)
    facts = (facts * (s.pretrain_equations // len(facts) + 1))[:s.pretrain_equations]
    general = world.pretrain_general if s.pretrain_general_per_lang else world.general
    docs = [d for code in general for d in general[code]]
    docs += [d for code in world.parallel for d in world.parallel[code]]
    counts = {code: s.pretrain_ability_targets for code in world.ability} | {"en": s.pretrain_ability_en}
    problems = [d for code, n in counts.items() if n for d in world.ability[code][-n:]]  # the last n of each
    return docs + facts + problems


def corpus(world: World, name: str) -> list[str]:
    """A world corpus by name: `general:<code>`, `ability:<code>` or `parallel:<code>`."""
    kind, code = name.split(":")
    return {"general": world.general, "ability": world.ability, "parallel": world.parallel}[kind][code]


def in_script(word: str, script: str) -> bool:
    lo, hi = SCRIPT_RANGES[script]
    return all(lo <= ord(ch) <= hi for ch in word)
