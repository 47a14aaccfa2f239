"""Base models θ0: a tiny Llama built from config (with a tokenizer trained here), or a
Hugging Face model from the hub or a local folder."""

from __future__ import annotations

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from maet.schema.settings import ModelSettings, ScratchSettings

EOS, PAD = "<|endoftext|>", "<|pad|>"


def resolve_device(device: str, job_num: int | None = None) -> torch.device:
    """auto: cuda if available, else cpu. With several GPUs and a multirun job number (parallel
    launchers such as joblib), job k gets GPU k mod n: one device per job."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and job_num is not None and torch.cuda.device_count() > 1:
        return torch.device(f"cuda:{job_num % torch.cuda.device_count()}")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on cuda, fp32 on cpu (bf16 is ~30x slower on CPU)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


# GPT-2's pre-tokenizer regex with combining marks (\p{M}: vowel signs, viramas) kept with their
# letters: in GPT-2's own regex the word class is \p{L} alone, so a Bengali or Devanagari vowel sign
# becomes a pre-token of its own and BPE can never form a word of those scripts.
MARKS_PATTERN = (r"'s|'t|'re|'ve|'m|'ll|'d| ?[\p{L}\p{M}]+| ?\p{N}+| ?[^\s\p{L}\p{M}\p{N}]+|\s+(?!\S)|\s+")


def train_tokenizer(docs: list[str], vocab_size: int, pretokenizer: str = "gpt2") -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `docs`; digits are split one per token (for arithmetic). Words are
    cut by GPT-2's regex (`pretokenizer="gpt2"`) or by the same regex with marks kept with their
    letters (`"marks"`, `MARKS_PATTERN`)."""
    tok = Tokenizer(models.BPE())
    words = ([pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)] if pretokenizer == "gpt2" else
             [pre_tokenizers.Split(Regex(MARKS_PATTERN), behavior="isolated"),
              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), *words])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   pad_token=PAD, model_max_length=1_000_000)


def build_scratch_model(arch: ScratchSettings, tokenizer, seed: int) -> LlamaForCausalLM:
    """A randomly initialised Llama of the configured shape (deterministic per seed)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size, num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads,
        max_position_embeddings=arch.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def context_window(m: ModelSettings) -> int | None:
    """The model's context window (`max_position_embeddings`) from its settings or its config.json
    alone (no weights loaded); None where the config cannot be read here (a GGUF file, a hub model
    not in the local cache while offline)."""
    if m.source == "scratch":
        return m.scratch.max_position_embeddings
    if m.gguf_file:
        return None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(m.path, trust_remote_code=m.trust_remote_code)
    except Exception:  # noqa: BLE001 (no network, no cache: the model's own load reports it)
        return None
    config = getattr(config, "text_config", None) or config
    return getattr(config, "max_position_embeddings", None)


def load_pretrained(path: str, settings: ModelSettings, device: torch.device):
    """(model, tokenizer) from a hub id or a local folder, in the resolved dtype, on `device`."""
    dtype = resolve_dtype(settings.dtype, device)
    extra = {"gguf_file": settings.gguf_file} if settings.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=settings.trust_remote_code, **extra)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype,
                                                 trust_remote_code=settings.trust_remote_code, **extra)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def block_linear_names(model, modules: list[str]) -> list[str]:
    """Names of the block linear weights `W[out, in]` whose rows are neurons, in model order."""
    return [name for name, p in model.named_parameters()
            if p.ndim == 2 and ".layers." in name and name.split(".")[-2] in modules]


def block_param_names(model) -> list[str]:
    """Every parameter inside the transformer blocks (what full CPT trains)."""
    return [name for name, _ in model.named_parameters() if ".layers." in name]


def language_param_names(model, params: str) -> list[str]:
    """What R(Lj) covers (`language.params`): blocks: every block parameter (norms included);
    linear: the block matrices only (no norms); all: every parameter (embeddings, head, final norm)."""
    if params == "all":
        return [name for name, _ in model.named_parameters()]
    if params == "linear":
        return [name for name, p in model.named_parameters() if ".layers." in name and p.ndim == 2]
    return block_param_names(model)
