"""Typed settings: the schema of `conf/`, and nothing else.

The dataclasses below are registered with Hydra's ConfigStore as `schema` (the first entry of
`conf/config.yaml`'s defaults), so composition itself rejects a value of the wrong type
(`merge.alpha=abc`) or a choice that is not one (`locate.score=gradd`). Choice keys are Enums
here; a job sees their plain string values (`maet.config.compose.load_settings`). Range, cross-field
and filesystem checks, which a schema cannot express, live in `maet.config.validate`. Stage functions
take these dataclasses (or plain values), never a DictConfig.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def choices(name: str, *values: str) -> type[StrEnum]:
    """An Enum whose member names are its values (OmegaConf converts strings by member name)."""
    return StrEnum(name, [(v, v) for v in values], module=__name__)  # picklable (submitit sends configs)


CorpusSource = choices("CorpusSource", "local", "hub", "world")
CorpusFormat = choices("CorpusFormat", "text", "jsonl", "gsm8k")
ScratchCorpus = choices("ScratchCorpus", "files", "world")
Pretokenizer = choices("Pretokenizer", "gpt2", "marks")
ModelSource = choices("ModelSource", "scratch", "hub", "local")
Dtype = choices("Dtype", "auto", "float32", "bfloat16", "float16")
Device = choices("Device", "auto", "cpu", "cuda")
WorldScript = choices("WorldScript", "latin", "bengali", "telugu", "thai")
WordOrder = choices("WordOrder", "SVO", "SOV", "VSO")
LocateScore = choices("LocateScore", "grad", "weight_change", "activation", "random")
LocateScope = choices("LocateScope", "tensor", "layer", "global")
TransferSelect = choices("TransferSelect", "threshold", "ratio", "all", "abs_threshold")
TransferSimilarity = choices("TransferSimilarity", "tensor", "rows")
TransferGranularity = choices("TransferGranularity", "tensor", "row")
ExtractGeneral = choices("ExtractGeneral", "subtract", "project", "none")
Optimizer = choices("Optimizer", "adamw", "sgd")
LanguageTrain = choices("LanguageTrain", "full", "key_neurons")
LanguageParams = choices("LanguageParams", "blocks", "linear", "all")
Benchmark = choices("Benchmark", "mgsm", "arith", "task")
EvalSource = choices("EvalSource", "local", "hub")
EvalBackend = choices("EvalBackend", "hf", "vllm")
Split = choices("Split", "test", "dev")
TrackerName = choices("TrackerName", "wandb", "none")
WandbMode = choices("WandbMode", "offline", "online", "disabled")


class ConfigError(ValueError):
    """A config value is not allowed; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"Bad config value {key}={value!r}: allowed is {allowed}.")


@dataclass
class CorpusSettings:
    source: CorpusSource = CorpusSource.local  # local: a file | hub: a HF dataset (streamed) | world: the built-in world
    path: str = "???"  # a file, a hub dataset id, or a world corpus `<general|ability|parallel>:<code>`
    format: CorpusFormat = CorpusFormat.text  # text: a document per line | jsonl: a JSON object per line | gsm8k: Q/A rows
    field: str = "text"    # the text field of jsonl / hub rows
    name: Optional[str] = None      # hub dataset config (e.g. 20231101.sw)
    split: str = "train"            # hub split
    revision: Optional[str] = None  # hub revision (recorded in cache keys)
    max_docs: Optional[int] = None    # stop after this many documents (null: no limit)
    max_tokens: Optional[int] = None  # stop once this many tokens are read (null: the whole corpus)


@dataclass
class LangSettings:
    code: str = "???"
    name: str = "???"
    script: str = "???"
    corpus: CorpusSettings = field(default_factory=CorpusSettings)


@dataclass
class ScratchSettings:
    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 2048
    tokenizer_files: list[str] = field(default_factory=list)
    tokenizer_max_docs: int = 20000
    corpus: ScratchCorpus = ScratchCorpus.files  # files: tokenizer_files (+ ability corpus) | world: the world's mix
    seed: int = 0               # init and pre-training seed of the base
    pretrain_tokens: int = 0    # pre-training tokens of the base (0: random init)
    pretrain_lr: float = 3e-3
    pretokenizer: Pretokenizer = Pretokenizer.gpt2  # gpt2: GPT-2's regex | marks: combining marks kept with their letters


@dataclass
class ModelSettings:
    name: str = "???"
    source: ModelSource = ModelSource.scratch
    path: Optional[str] = None
    dtype: Dtype = Dtype.auto
    trust_remote_code: bool = False
    gguf_file: Optional[str] = None
    gradient_checkpointing: bool = False
    scratch: ScratchSettings = field(default_factory=ScratchSettings)


@dataclass
class AbilitySettings:
    name: str = "???"
    corpus: CorpusSettings = field(default_factory=CorpusSettings)


@dataclass
class WorldLanguageSettings:
    code: str = "???"
    script: WorldScript = WorldScript.latin
    order: WordOrder = WordOrder.SVO
    noun_first: bool = False
    distance: float = 0.5


@dataclass
class WorldSettings:
    seed: int = 0
    languages: list[WorldLanguageSettings] = field(default_factory=list)
    general_per_lang: int = 6000
    pretrain_general_per_lang: int = 0
    problem_forms: bool = False
    free_order: bool = False
    parallel_per_lang: int = 1500
    ability_per_lang: int = 6000
    benchmark_per_lang: int = 200
    max_operand: int = 9
    pretrain_equations: int = 3000
    pretrain_ability_en: int = 300
    pretrain_ability_targets: int = 0


@dataclass
class OracleSettings:
    tokens: int = 32768
    lr: float = 3e-3


@dataclass
class ReportSettings:
    seeds: int = 1                     # replications: each its own stage seeds and (scratch) base seed
    shared_base: bool = False          # every replication on one base draw (its variance then left out)
    compare_to: Optional[str] = None   # sweep report: the job every other is compared with (null: all pairs)
    references: list[str] = field(default_factory=list)
    regime_table: bool = False         # sweep report: also each job's regime (relative norms, disentanglement)
    chain: list[str] = field(default_factory=list)  # sweep report: each job's steps along these models
    quiet: bool = True


@dataclass
class TrainSettings:
    batch_size: int = 8
    seq_len: int = 256
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    heldout_fraction: float = 0.05


@dataclass
class LocateSettings:
    score: LocateScore = LocateScore.grad
    ratio: float = 0.05
    scope: LocateScope = LocateScope.tensor
    modules: list[str] = field(default_factory=lambda: list(MODULES))
    tokens: int = 16384
    contrast: bool = False


@dataclass
class ExtractSettings:
    tokens: int = 32768
    lr: float = 1e-3
    optimizer: Optimizer = Optimizer.adamw       # of the key rows: adamw | sgd (plain, no momentum)
    general: ExtractGeneral = ExtractGeneral.subtract  # how θ_G enters R(A): subtract | project | none
    full_lr: float = 5e-4  # full-parameter CPT on C(L0,A): the ability delta of the merging baselines
    full_tokens: Optional[int] = None  # its training tokens (None: extract.tokens, θ_A's budget)


@dataclass
class LanguageSettings:
    tokens: int = 32768
    lr: float = 5e-4
    train: LanguageTrain = LanguageTrain.full
    params: LanguageParams = LanguageParams.blocks  # train=full: blocks (every block weight) | linear (no norms) | all (+ embeddings, head, final norm)


@dataclass
class TransferSettings:
    select: TransferSelect = TransferSelect.threshold
    tau: float = 0.0
    keep: float = 0.5
    similarity: TransferSimilarity = TransferSimilarity.tensor  # cosine over the whole tensor | its key rows
    granularity: TransferGranularity = TransferGranularity.tensor  # select whole tensors | single key rows


@dataclass
class MergeSettings:
    alpha: float = 1.0
    beta: float = 1.0
    density: float = 0.5   # ties: fraction of each task vector kept by magnitude
    drop: float = 0.9      # dare: drop probability
    swap_k: int = 1        # layer_swap: layers taken from the language model at each end


@dataclass
class MethodSettings:
    name: str = "maet"


@dataclass
class EvalSettings:
    benchmark: Benchmark = Benchmark.mgsm
    source: EvalSource = EvalSource.local
    task_family: str = "mgsm_native_cot"
    task_template: str = "{family}_{lang}"  # benchmark=task: an lm-eval task or group name per language
    metric: str = "exact_match"
    langs: list[str] = field(default_factory=list)
    num_fewshot: int = 8
    limit: Optional[int] = 16
    batch_size: Any = 8  # an integer > 0, or auto / auto:N (lm-eval finds the largest batch that fits)
    max_gen_toks: Optional[int] = 64
    filter: str = "flexible-extract"  # an lm-eval filter name (benchmark=task: the task's own, e.g. none)
    heldout: bool = True
    seed: int = 1234
    split: Split = Split.test     # test | dev (dev: eval.dev_size items set aside for tuning, never in test)
    dev_size: int = 0
    backend: EvalBackend = EvalBackend.hf  # hf: the in-memory model | vllm: lm-eval's vLLM over a saved checkpoint
    vllm: dict[str, Any] = field(default_factory=dict)  # extra model_args of lm-eval's vllm model


@dataclass
class SaveSettings:
    model: bool = False   # write the method's merged model (first seed) as a Hugging Face checkpoint
    dir: str = "???"
    dtype: Dtype = Dtype.auto  # auto: θ0's dtype
    push_to_hub: Optional[str] = None  # a hub repo id: upload the checkpoint there (needs a token)
    private: bool = True


@dataclass
class TrackerSettings:
    name: TrackerName = TrackerName.wandb
    project: str = "maet"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.offline
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    log_artifacts: bool = True
    curve_every: int = 10


@dataclass
class PathSettings:
    root_dir: str = "???"
    data_dir: str = "???"
    cache_dir: str = "???"
    output_dir: str = "???"


@dataclass
class DistributedSettings:
    shard: bool = True     # N processes: full-parameter stages train under FSDP2 (sharded weights, grads, AdamW)
    offload: bool = False  # FSDP2's CPU offload of the shards, gradients and optimizer state (also on 1 process)


@dataclass
class CheckpointSettings:
    every_steps: int = 0        # a training loop saves its state every N optimizer steps (0: not by steps)
    every_minutes: float = 0.0  # ... and / or every M minutes (0: not by time); both 0: no checkpoints


@dataclass
class Settings:
    seed: int = 0
    device: Device = Device.auto
    threads: int = 0  # torch intra-op CPU threads (0: torch's default, one per core)
    world: WorldSettings = field(default_factory=WorldSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    ability: AbilitySettings = field(default_factory=AbilitySettings)
    source_lang: LangSettings = field(default_factory=LangSettings)
    lang: LangSettings = field(default_factory=LangSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    locate: LocateSettings = field(default_factory=LocateSettings)
    extract: ExtractSettings = field(default_factory=ExtractSettings)
    language: LanguageSettings = field(default_factory=LanguageSettings)
    transfer: TransferSettings = field(default_factory=TransferSettings)
    merge: MergeSettings = field(default_factory=MergeSettings)
    oracle: OracleSettings = field(default_factory=OracleSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    method: MethodSettings = field(default_factory=MethodSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    tracker: TrackerSettings = field(default_factory=TrackerSettings)
    save: SaveSettings = field(default_factory=SaveSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    distributed: DistributedSettings = field(default_factory=DistributedSettings)
    paths: PathSettings = field(default_factory=PathSettings)


SCHEMA = "schema"  # the ConfigStore name that conf/config.yaml's defaults list starts with


def register_schema() -> None:
    """Register `Settings` with Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name=SCHEMA, node=Settings)


register_schema()  # on import: every composition that can see maet.schema.settings is typed
