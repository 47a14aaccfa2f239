"""lm-eval's model for one evaluation (`eval.backend`): `hf`, lm-eval's HFLM over the in-memory
model (data-parallel when the job runs on N processes, `maet.runtime.distributed`); or `vllm`, lm-eval's
vLLM model over the same weights saved to a temporary folder (vLLM loads checkpoints, not
modules). vLLM is an optional extra (`pip install -e '.[vllm]'`, CUDA only); its own tensor /
data parallelism come from `eval.vllm` (e.g. `+eval.vllm.tensor_parallel_size=2`).
"""

from __future__ import annotations

import gc
import importlib.util
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from maet.runtime import distributed
from maet.schema.settings import ConfigError, EvalSettings

AUTO_BATCH = re.compile(r"auto(:[1-9][0-9]*)?")  # lm-eval's batch_size=auto / auto:N (re-detect N times)
RESERVED = ("pretrained", "tokenizer", "dtype", "batch_size", "seed")  # set from the model and eval.*


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def check_vllm(settings: EvalSettings) -> None:
    """eval.backend=vllm needs the package and leaves RESERVED model_args to maet (ConfigError otherwise)."""
    if settings.backend != "vllm":
        return
    if not vllm_installed():
        raise ConfigError("eval.backend", "vllm", "hf, or vllm once installed: pip install -e '.[vllm]' "
                                                  "on a CUDA machine (vllm is not installed here)")
    for key in settings.vllm:
        if key in RESERVED:
            raise ConfigError(f"eval.vllm.{key}", settings.vllm[key],
                              f"no value: maet sets {', '.join(RESERVED)} (other vllm model_args are passed on)")


def vllm_model_args(folder: str, settings: EvalSettings, dtype: torch.dtype) -> dict:
    """model_args of lm-eval's `vllm` model for a checkpoint folder: the folder's weights and
    tokenizer in the model's dtype, eval.batch_size, eval.seed, then `eval.vllm`."""
    return {"pretrained": folder, "tokenizer": folder, "dtype": str(dtype).removeprefix("torch."),
            "batch_size": settings.batch_size, "seed": settings.seed, **settings.vllm}


@contextmanager
def language_model(model, tokenizer, settings: EvalSettings) -> Iterator:
    """lm-eval's LM for the model as it is now (see the module doc)."""
    if settings.backend == "hf":
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size)
        distributed.share_evaluation(lm)  # one job on N processes: each generates for its share of the items
        yield lm
        return
    check_vllm(settings)
    if distributed.active():
        raise SystemExit("Error: eval.backend=vllm runs in one process; for several GPUs set "
                         "eval.vllm.data_parallel_size / tensor_parallel_size instead of launching N processes")
    with tempfile.TemporaryDirectory(prefix="maet-vllm-") as folder:  # $TMPDIR: room for one checkpoint
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        from lm_eval.models.vllm_causallms import VLLM

        lm = VLLM(**vllm_model_args(folder, settings, model.dtype))
        try:
            yield lm
        finally:
            del lm
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
