"""Check every point of a multirun before its first job starts.

A typo in the third value of `lang=sw,bn,xx` must not cost the first two jobs' hours. Each swept
value (from the command line and from a preset's `hydra.sweeper.params`) is composed with the
other keys at their first value and validated like a job's config; cross-key combinations are
left to the jobs. Search spaces (`interval(...)` of the Optuna sweeper) are not enumerable and
are left to the sweeper.
"""

from __future__ import annotations

from pathlib import Path

from maet.config.compose import compose_checked, hydra_arguments, load_settings
from maet.schema.resolvers import register_resolvers
from maet.schema.settings import ConfigError


def swept_values(overrides: list[str], preset_params: dict[str, str]) -> tuple[list[str], dict[str, list[str]]]:
    """(fixed overrides, {key: values}) of a multirun; command-line overrides win over the preset's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    swept = {}
    for o in parser.parse_overrides([f"{k}={v}" for k, v in preset_params.items()]):
        swept[o.get_key_element()] = _values(o)
    fixed = []
    for o in parser.parse_overrides(overrides):
        key = o.get_key_element()
        swept.pop(key, None)
        if o.is_sweep_override():
            swept[key] = _values(o)
        else:
            fixed.append(o.input_line)
    return fixed, {k: v for k, v in swept.items() if v}


def _values(override) -> list[str]:
    """The values of a sweep (or single) override; [] for a search space such as interval(...)."""
    if not override.is_sweep_override():
        return [override.get_value_element_as_str()]
    try:
        return list(override.sweep_string_iterator())
    except Exception:
        return []


def check_sweep(args: list[str], conf_dir: Path) -> int:
    """Validate each swept value of `launch.py -m <args>` (the others at their first value);
    raises ConfigError naming the sweep point. Returns the number of configs checked (0 when
    Hydra itself cannot compose them: it reports that better when it runs)."""
    from hydra import initialize_config_dir

    register_resolvers()
    overrides = hydra_arguments(args).overrides
    try:
        with initialize_config_dir(str(conf_dir), version_base="1.3"):
            fixed, swept = swept_values(overrides, {})
            sweeper = compose_checked(fixed, return_hydra_config=True).hydra.sweeper
            if sweeper._target_.endswith("BasicSweeper"):
                params = {str(k): str(v) for k, v in (sweeper.get("params") or {}).items()}
                fixed, swept = swept_values(overrides, params)
            first = {key: values[0] for key, values in swept.items()}
            points = [first] + [{**first, key: value} for key, values in swept.items() for value in values[1:]]
            for point in points:
                job = [*fixed, *(f"{k}={v}" for k, v in point.items()), "paths.output_dir=."]
                try:
                    load_settings(compose_checked(job))
                except ConfigError as err:
                    where = " ".join(f"{k}={v}" for k, v in point.items())
                    raise ConfigError(err.key, err.value, f"{err.allowed} (sweep point: {where})") from None
    except ConfigError:
        raise
    except Exception:
        return 0
    return len(points)
