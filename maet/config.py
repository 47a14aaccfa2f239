"""OmegaConf resolvers used by `conf/` (registered before Hydra composes the config)."""

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def register_resolvers() -> None:
    """`${maet_root:}`: the checkout that holds `launch.py` and `conf/`."""
    if not OmegaConf.has_resolver("maet_root"):
        OmegaConf.register_new_resolver("maet_root", lambda: str(PROJECT_ROOT))
