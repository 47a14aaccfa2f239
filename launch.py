"""MAET entry point: `python launch.py [overrides]` or `python launch.py -m <sweep overrides>`."""

import hydra
from omegaconf import DictConfig

from maet.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from maet.pipeline import run  # imported here so that --help and bad overrides answer fast

    return run(cfg)


if __name__ == "__main__":
    main()
