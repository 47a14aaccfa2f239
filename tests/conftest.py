"""Shared fixtures: no network, tiny models built in code, a tokenizer trained in the session."""

import os

os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline",
                  TOKENIZERS_PARALLELISM="false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from maet.config.compose import compose_checked, load_settings, plain  # noqa: E402
from maet.config.validate import reads_data_dir  # noqa: E402
from maet.corpora.fetch_data import missing_files  # noqa: E402
from maet.models.model import build_scratch_model, train_tokenizer  # noqa: E402
from maet.schema.resolvers import PROJECT_ROOT, register_resolvers  # noqa: E402
from maet.schema.settings import ScratchSettings, Settings  # noqa: E402

# Where `make data` puts MGSM, GSM8K and the text samples (the default `paths.data_dir`).
DATA_DIR = (PROJECT_ROOT / "data").resolve()

# A few sentences written for the tests (not taken from any corpus).
SENTENCES = [
    "the red fox jumps over the lazy dog", "a tiny model learns to add 3 and 4",
    "numbers like 12 and 45 are split into digits", "every morning the baker sells 30 loaves",
    "mchana mzuri rafiki yangu", "watoto wanacheza mpira uwanjani",
    "আমি ভাত খাই", "সে বই পড়ে", "question : how many apples ? answer : 7",
]


def require_data() -> Path:
    """The data folder, or a skip naming what is missing and how to fetch it. With
    MAET_REQUIRE_DATA=1 (CI) missing data fails the test instead: CI never goes green by skipping."""
    absent = missing_files(DATA_DIR)
    if absent:
        message = (f"needs MGSM / GSM8K / text data: {DATA_DIR} lacks {absent[0]}"
                   f"{f' (+{len(absent) - 1} more)' if len(absent) > 1 else ''}; run `make data`")
        if os.environ.get("MAET_REQUIRE_DATA") == "1":
            pytest.fail(message + " (MAET_REQUIRE_DATA=1)")
        pytest.skip(message)
    return DATA_DIR


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data folder (MGSM, GSM8K, text); tests that take it are skipped without it."""
    return require_data()


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(SENTENCES * 4, vocab_size=320)


TINY = ScratchSettings(vocab_size=320, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, max_position_embeddings=128)


@pytest.fixture
def tiny_model(tokenizer):
    """A 2-layer Llama (hidden 32), fresh for each test."""
    return build_scratch_model(TINY, tokenizer, seed=0)


def random_batches(vocab: int, n: int, batch: int = 2, seq: int = 16, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, seq), generator=g) for _ in range(n)]


def needs_data(overrides) -> bool:
    """Whether `launch.py` with these overrides reads the data folder (experiment=shared_data
    without a paths.data_dir of its own)."""
    args = " ".join(overrides).split()
    return "experiment=shared_data" in args and not any(a.startswith("paths.data_dir=") for a in args)


def _reads_project_data(cfg) -> bool:
    """Whether a composed config reads the project's data folder (a config that does not convert
    to settings is left to the test, which expects its error)."""
    try:
        settings = plain(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Settings), cfg)))
    except Exception:
        return False
    return reads_data_dir(settings) and Path(settings.paths.data_dir).resolve() == DATA_DIR


def compose_config(*overrides: str):
    """The config `launch.py` would compose with these overrides (paths.output_dir set); a value the
    schema rejects raises ConfigError, as in launch.py. Skipped (failed in CI) when it reads the
    project's data folder and `make data` has not filled it."""
    register_resolvers()
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose_checked(["paths.output_dir=/tmp", *overrides])  # schema errors as ConfigError
    if _reads_project_data(cfg):
        require_data()
    return cfg


def load(*overrides: str):
    """Validated settings of that config (raises ConfigError on a bad value)."""
    return load_settings(compose_config(*overrides))
