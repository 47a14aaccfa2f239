"""Composing a job's config and loading its settings: errors of composition turned into one line
that names the key the user typed, command-line group choices checked against `conf/`, and the
typed settings every job reads (validated by `maet.config.validate`)."""

from __future__ import annotations

import dataclasses
import enum
import re
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from maet.config.validate import check_choice, one_of, validate
from maet.schema.settings import ConfigError, Settings

GROUP_PACKAGES = {"source_lang": "lang"}  # config nodes filled from another group with `group@node=option`


# ----------------------------------------------------------------------------- loading
def load_settings(cfg: DictConfig) -> Settings:
    """Typed, validated settings from a composed config (raises ConfigError on a bad value).
    Choice keys come back as plain strings (the schema's Enums did their job at composition)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Settings), cfg)
        settings = OmegaConf.to_object(merged)
    except MissingMandatoryValue as err:
        raise ConfigError(err.full_key, "???", "a value: this key has no default and must be set") from err
    except OmegaConfBaseException as err:
        raise config_error(err) from err
    settings = plain(settings)
    validate(settings)
    return settings


def plain(value: Any) -> Any:
    """A copy of a settings tree with every Enum replaced by its string value."""
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)})
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def schema_type(key: str) -> Any:
    """The schema's type of a dotted key (`merge.alpha` -> float), None if the schema has no such key."""
    node: Any = Settings
    for part in re.sub(r"\[\d+\]", "", key).split("."):
        if not dataclasses.is_dataclass(node):
            return None
        hints = typing.get_type_hints(node)
        if part not in hints:
            return None
        node = hints[part]
        args = [a for a in typing.get_args(node) if a is not type(None)]
        if typing.get_origin(node) is typing.Union and len(args) == 1:  # Optional[X]
            node = args[0]
        elif typing.get_origin(node) is list:
            node = args[0]
    return node


def expected(key: str, value: Any) -> str:
    """What the schema allows at `key`, said for a person (with a did-you-mean for choices)."""
    kind = schema_type(key)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return one_of(value, [m.value for m in kind])
    if dataclasses.is_dataclass(kind):
        group = GROUP_PACKAGES.get(key)
        if group:
            return f"an option of conf/{group}/ chosen with the group syntax {group}@{key}=<option>"
        example = dataclasses.fields(kind)[0].name
        return f"a config node: set its keys one by one, e.g. {key}.{example}=<value>"
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
    name = getattr(kind, "__name__", str(kind))
    return f"a value of the schema's type {name}" + (f" ({names[kind]})" if kind in names else "")


def config_error(err: Exception, override: str | None = None) -> ConfigError:
    """A ConfigError naming the key of an OmegaConf / Hydra composition error. `override` is the
    `key=value` the user typed when the error says which (Hydra: "Error merging override k=v")."""
    cause = err
    while getattr(cause, "full_key", None) is None and (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__
    match = re.search(r"override (\S+?)=(\S*)", str(err))
    key = getattr(cause, "full_key", None) or _found(r"full_key: (\S+)", str(err)) or ""
    value = getattr(cause, "value", None) or _found(r"Invalid value '([^']*)'", str(err))
    if match and (not key or key == match[1].lstrip("+~")):
        key, value = match[1].lstrip("+~"), match[2]
    if not key and override and "=" in override:
        key, value = override.lstrip("+~").split("=", 1)
    return ConfigError(key or "?", value, expected(key, value))


def hydra_arguments(argv: list[str]):
    """Hydra's own reading of a command line (overrides, --multirun, --config-name ...)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(argv)


def check_composition(argv: list[str], conf_dir: Path) -> None:
    """Compose the config of `launch.py <argv>` as Hydra will: a value of the wrong type
    (`merge.alpha=abc`), a choice that is not one (`locate.score=gradd`) or a value given to a
    config node (`source_lang=bn`) raises a ConfigError naming the key, before Hydra prints its
    own multi-line report. A multirun is checked point by point (`maet.config.sweepcheck`)."""
    from hydra import initialize_config_dir

    args = hydra_arguments(argv)
    if args.multirun or args.config_name or args.config_path or args.config_dir or args.help or args.hydra_help \
            or args.shell_completion:  # -sc install=bash: Hydra reads the rest as completion commands
        return
    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        compose_checked(args.overrides)


def compose_checked(overrides: list[str], **kwargs):
    """`hydra.compose("config", overrides)` (Hydra initialized by the caller), with its errors about
    a key's value raised as ConfigError naming the key (others, e.g. a missing group option, as they are)."""
    from hydra import compose
    from hydra.errors import ConfigCompositionException, MissingConfigException

    try:
        return compose("config", overrides=overrides, **kwargs)
    except MissingConfigException:
        raise
    except ConfigCompositionException as err:
        error = config_error(err)
        if error.key == "?":
            raise
        raise error from None


def _found(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text)
    return match[1] if match else None


def check_group_overrides(args: list[str], conf_dir: Path) -> None:
    """Command-line choices of config groups (`method=maett`, `lang=sw,xx`, `+ablation=...`)
    against the files in `conf/<group>/`; raises ConfigError with a did-you-mean hint before
    Hydra composes anything. Sweep functions (`glob(...)`, `range(...)`) and interpolations are left to Hydra."""
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        group = key.lstrip("+~").split("@", 1)[0]
        folder = conf_dir / group
        if not group or not folder.is_dir() or any(ch in value for ch in "()[]{}$"):
            continue
        if group.startswith("hydra/"):  # plugins add options (joblib, submitit_local, ...); Hydra lists them all
            continue
        options = tuple(sorted(p.stem for p in folder.glob("*.yaml")))
        for choice in (v.strip() for v in value.split(",")):
            if choice and not (key.startswith("~") and choice == "null"):
                check_choice(group, choice, options)
