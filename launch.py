"""MAET entry point: `python launch.py [overrides]` or `python launch.py -m <sweep overrides>`."""

import os
import sys

# Idle OpenMP threads sleep at once instead of spinning when this job's processes share the cores
# (a parallel launcher named on the command line, or N processes under torchrun / accelerate):
# beside another busy process, spinning threads trained the world model 7x slower
# (benchmarks/threads.py: 1,040 vs 7,282 tok/s per process for two jobs on 2 cores), while alone
# on a quiet machine spinning is faster (17.8k vs 11.1k tok/s), so a single job keeps torch's
# default. Read when torch loads OpenMP: set before anything imports torch (inherited by the
# launchers' workers). OMP_WAIT_POLICY in the environment wins. Numbers do not change.
SHARING_LAUNCHERS = ("joblib", "submitit_local", "local_parallel")


def threads_share_the_cores(argv: list[str], env: dict) -> bool:
    launcher = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra/launcher=")), None)
    return launcher in SHARING_LAUNCHERS or int(env.get("WORLD_SIZE", "1") or 1) > 1


if threads_share_the_cores(sys.argv[1:], os.environ):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hydra
from omegaconf import DictConfig

from maet.config.compose import check_composition, check_group_overrides
from maet.schema.resolvers import PROJECT_ROOT, register_resolvers
from maet.schema.settings import ConfigError

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from maet.engine.pipeline import run  # imported here so that --help and bad overrides answer fast

    try:
        return run(cfg)
    except ConfigError as err:  # a bad value: one line naming key, value and what is allowed, no trace
        raise SystemExit(f"Error: {err}") from None


if __name__ == "__main__":
    try:  # a mistyped group choice or a value the schema rejects: one line naming the key, not Hydra's report
        check_group_overrides(sys.argv[1:], PROJECT_ROOT / "conf")
        check_composition(sys.argv[1:], PROJECT_ROOT / "conf")
        if {"-m", "--multirun"} & set(sys.argv[1:]):  # every sweep point, before the first job starts
            from maet.config.sweepcheck import check_sweep

            check_sweep(sys.argv[1:], PROJECT_ROOT / "conf")
    except ConfigError as err:
        sys.exit(f"Error: {err}")
    main()
