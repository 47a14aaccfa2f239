"""The stages of METHOD.md, each declared once (`maet.stages.registry`): locate (stage 1), R(A) and
R(Lj) (stage 2), and the full-parameter trainings of the oracle and the baselines. A producer
reads the settings, θ0 (the model, restored afterwards), the corpora and its inputs, and returns
the tensors to cache; the math is in `maet.method` (`locate`, `extract`).
"""

from __future__ import annotations

import torch

from maet.corpora import data
from maet.corpora.roles import Corpora
from maet.method import extract, locate
from maet.method.train import TrainStats
from maet.method.types import Mask, pack_rows, rows_to_dense, unpack_rows
from maet.models.model import block_linear_names, block_param_names, language_param_names
from maet.schema import derived
from maet.schema.settings import Settings
from maet.stages import keys
from maet.stages.registry import Reference, Stage, register_stage
from maet.stages.training import batches, full, loop, steps


# ----------------------------------------------------------------------------- stage 1
def produce_mask(s: Settings, model, tokenizer, corpora: Corpora, inputs: dict):
    """The neuron mask {tensor name -> selected rows}, from scores on C(L0,A) (minus C(L0) when
    contrastive)."""
    names = block_linear_names(model, s.locate.modules)
    shapes = {n: p.shape for n, p in model.named_parameters() if n in names}
    n_steps = steps(s, s.locate.tokens)

    def score(docs: list[str]) -> tuple[dict[str, torch.Tensor], TrainStats]:
        stream = batches(s, docs, tokenizer, s.locate.tokens)
        if s.locate.score == "weight_change":  # a short real CPT; θ0 is restored afterwards
            delta, trained = extract.train_full(model, names, stream, n_steps, s.extract.full_lr,
                                                "locate: weight change", **full(s), **loop(s))
            return locate.weight_change_scores(delta), trained
        fn = locate.grad_scores if s.locate.score == "grad" else locate.activation_scores
        return fn(model, stream, names, n_steps), TrainStats(n_steps * s.train.batch_size * s.train.seq_len, n_steps)

    if s.locate.score == "random":
        scores, trained = locate.random_scores(shapes, s.seed), TrainStats()
    else:
        scores, trained = score(corpora.ability)
        # activation scores are contrastive by definition (METHOD.md): ability minus general text
        if keys.contrastive(s):
            general, general_trained = score(corpora.general)
            scores = {n: scores[n] - general[n] for n in names}
            trained = trained + general_trained
    mask = locate.select_rows(scores, s.locate.ratio, s.locate.scope)
    return mask, trained, {"selected_fraction": locate.mask_fraction(mask, shapes)}


# ----------------------------------------------------------------------------- stage 2
THETA_A = "theta_a:"  # θ_A − θ0 on the key rows, stored beside R(A) (the English-ability reference model)


def produce_ability(s: Settings, model, tokenizer, corpora: Corpora, inputs: dict):
    """R(A) from θ_A and θ_G on the key rows as `extract.general` says (θ_A − θ_G by default;
    θ_A − θ0 with extract.general=none), with θ_A − θ0 beside it."""
    mask: Mask = inputs["mask"]
    train_loop = loop(s) | {"optimizer": s.extract.optimizer}
    n_steps = steps(s, s.extract.tokens)
    theta_a, trained = extract.train_rows(model, mask, batches(s, corpora.ability, tokenizer, s.extract.tokens),
                                          n_steps, s.extract.lr, "extract: θ_A (ability)", **train_loop)
    theta_g = None
    if s.extract.general != "none":
        general_batches = batches(s, corpora.general, tokenizer, s.extract.tokens)
        theta_g, general = extract.train_rows(model, mask, general_batches, n_steps, s.extract.lr,
                                              "extract: θ_G (general)", **train_loop)
        trained = trained + general
    tensors = pack_rows(extract.ability_delta(theta_a, theta_g, s.extract.general))
    tensors |= {THETA_A + n: values for n, (_, values) in theta_a.items()}
    return tensors, trained, {}


def unpack_ability(tensors: dict[str, torch.Tensor]) -> dict:
    """{"ability": R(A), "theta_a": θ_A − θ0 on the same key rows}."""
    delta = unpack_rows({n: t for n, t in tensors.items() if not n.startswith(THETA_A)})
    return {"ability": delta, "theta_a": {n: (rows, tensors[THETA_A + n]) for n, (rows, _) in delta.items()}}


def language_reads_mask(s: Settings, artifact: str) -> bool:
    """R(Lj) reads the mask (and so needs locate) only when it trains the key neurons."""
    return artifact != "mask" or s.language.train == "key_neurons"


def produce_language(s: Settings, model, tokenizer, corpora: Corpora, inputs: dict):
    """R(Lj) = θ_Lj − θ0 by CPT on C(Lj) (the weights `language.params` names, or only the key rows)."""
    n_steps = steps(s, s.language.tokens)
    stream = batches(s, corpora.language, tokenizer, s.language.tokens)
    desc = f"language: CPT on {s.lang.code}"
    if language_reads_mask(s, "mask"):
        rows, trained = extract.train_rows(model, inputs["mask"], stream, n_steps, s.language.lr, desc, **loop(s))
        return rows_to_dense(rows, {n: p.shape for n, p in model.named_parameters()}), trained, {}
    delta, trained = extract.train_full(model, language_param_names(model, s.language.params), stream, n_steps,
                                        s.language.lr, desc, **full(s), **loop(s))
    return delta, trained, {"lang": s.lang.code}


# ----------------------------------------------------------------------------- full-parameter trainings
def full_cpt(s: Settings, model, tokenizer, docs: list[str], tokens: int, lr: float, desc: str, meta: dict,
             stream=None):
    """(θ' − θ0 of every block weight, training, meta) after full CPT of θ0 on `docs` for `tokens`
    tokens (or on `stream`, batches of that many tokens)."""
    stream = stream if stream is not None else batches(s, docs, tokenizer, tokens)
    delta, trained = extract.train_full(model, block_param_names(model), stream, steps(s, tokens), lr, desc,
                                        **full(s), **loop(s))
    return delta, trained, meta


def produce_oracle(s: Settings, model, tokenizer, corpora: Corpora, inputs: dict):
    """The oracle's delta: full CPT of θ0 on ability text *in* Lj (a ceiling MAET never uses)."""
    return full_cpt(s, model, tokenizer, corpora.oracle, s.oracle.tokens, s.oracle.lr,
                    f"oracle: ability text in {s.lang.code}", {"lang": s.lang.code})


def produce_ability_full(s: Settings, model, tokenizer, corpora: Corpora, inputs: dict):
    """θ_A,full − θ0: full-parameter CPT on C(L0,A) for extract.full_tokens (θ_A's budget when null)."""
    return full_cpt(s, model, tokenizer, corpora.ability, derived.full_ability_tokens(s), s.extract.full_lr,
                    "baselines: full CPT on C(L0,A)", {})


def produce_cpt_all(s: Settings, model, tokenizer, corpora: Corpora, inputs: dict):
    """The training baseline: full CPT of θ0 on C(Lj) ∪ C(L0,A) with MAET's total token budget,
    mixed by tokens exactly: the ability text gets θ_A's budget (extract.tokens), C(Lj) the rest."""
    total = derived.maet_training_tokens(s)
    parts = [(corpora.ability, s.extract.tokens), (corpora.language, total - s.extract.tokens)]
    stream = data.mixed_batches(parts, tokenizer, batch_size=s.train.batch_size, seq_len=s.train.seq_len, seed=s.seed)
    return full_cpt(s, model, tokenizer, [], total, s.language.lr, f"baselines: CPT on {s.lang.code} + ability text",
                    {"lang": s.lang.code, "ability_tokens": s.extract.tokens}, stream)


# ----------------------------------------------------------------------------- the declarations
register_stage(Stage("locate", ("mask",), ("base",), keys.locate_config, produce_mask, kind="mask"))
register_stage(Stage("ability", ("ability", "theta_a"), ("mask",), keys.ability_config, produce_ability,
                     unpack_ability, reference=Reference(
                         "ability", "theta_a", "θ_A: θ0 after key-neuron training on English ability text")))
register_stage(Stage("language", ("language",), ("base", "mask"), keys.language_config, produce_language,
                     reads=language_reads_mask))
register_stage(Stage("oracle", ("oracle",), ("base",), keys.oracle_config, produce_oracle, reference=Reference(
    "oracle", "oracle", "θ0 fully trained on ability text in the target language (a ceiling MAET never uses)")))
register_stage(Stage("ability_full", ("ability_full",), ("base",), keys.ability_full_config, produce_ability_full))
register_stage(Stage("cpt_all", ("cpt_all",), ("base",), keys.cpt_all_config, produce_cpt_all))
