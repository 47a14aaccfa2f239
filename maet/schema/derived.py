"""Facts derived from a job's settings alone, read by several layers."""

from maet.schema.settings import Settings


def base_is_random(s: Settings) -> bool:
    """Whether replications redraw the base: a scratch base pre-trained here, unless
    `report.shared_base`. A hub or local model is fixed by nature."""
    return s.model.source == "scratch" and not s.report.shared_base


def maet_training_tokens(s: Settings) -> int:
    """Tokens MAET trains on: θ_A, θ_G (unless extract.general=none) and R(Lj)."""
    return s.extract.tokens * (2 if s.extract.general != "none" else 1) + s.language.tokens


def full_ability_tokens(s: Settings) -> int:
    """Training tokens of θ_A,full: extract.full_tokens, or θ_A's budget (extract.tokens) when null."""
    return s.extract.tokens if s.extract.full_tokens is None else s.extract.full_tokens
