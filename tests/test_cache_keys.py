"""Cache-key completeness, derived from the schema and from what the stages read: a change of any
settings field a stage reads changes that stage's own key or, recomputed, leaves its artifact
bit-identical; and a field no stage upstream of it reads changes nothing of its key (but the data
it trains on, which enters by content).

What a stage reads is traced, not listed by hand: the job's settings are copied into recording
subclasses of their dataclasses, and every field read while the stage function runs is noted.
Each stage runs once, from an empty cache, on a tiny world."""

import dataclasses
import enum
import importlib.metadata
import typing

import pytest
import torch
from conftest import load
from test_resident import SMALL

from maet import world
from maet.config.validate import validate
from maet.corpora.roles import load_corpora
from maet.engine import base, context
from maet.engine.runner import Artifacts, run_stage
from maet.schema import settings
from maet.schema.settings import ConfigError, Settings
from maet.stages import keys
from maet.stages.registry import STAGES as DECLARED
from maet.store.cache import ArtifactCache, artifact_key

READS: set[str] | None = None  # while a stage function runs: the settings fields it has read

# The data a stage reads enters its key by content (the corpus or world fingerprint, the text the
# scratch base is built from), so these fields change the key of every stage that trains on that
# data without being read by the stage; changing them here would read files this test has not.
DATA = ("world.", "ability.corpus.", "lang.corpus.", "source_lang.corpus.", "model.scratch.corpus",
        "model.scratch.tokenizer_files")
_RECORDING: dict[tuple[type, str], type] = {}


def _recording_class(cls: type, path: str) -> type:
    """A subclass of `cls` that notes reads of its fields as `path + name` (one class per path, so
    that `dataclasses.replace` of an instance records under the same path)."""
    if (cls, path) not in _RECORDING:
        names = {f.name for f in dataclasses.fields(cls)}

        def __getattribute__(self, name):
            value = object.__getattribute__(self, name)
            if READS is not None and name in names and not dataclasses.is_dataclass(value):
                READS.add(path + name)
            return value

        _RECORDING[cls, path] = type(f"Recording{cls.__name__}", (cls,), {"__getattribute__": __getattribute__})
    return _RECORDING[cls, path]


def recording(obj, path: str = ""):
    """A copy of a settings dataclass whose field reads are noted in READS (by dotted path)."""
    if not dataclasses.is_dataclass(obj):
        return obj
    copy = object.__new__(_recording_class(type(obj), path))
    for f in dataclasses.fields(obj):
        object.__setattr__(copy, f.name, recording(getattr(obj, f.name), f"{path}{f.name}."))
    return copy


def leaves(obj, path: str = "") -> list[str]:
    """Dotted paths of every non-dataclass field of the schema (lists are leaves)."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out += leaves(value, f"{path}{f.name}.") if dataclasses.is_dataclass(value) else [path + f.name]
    return out


def changed(value, kind):
    """Another value of a field that is not an enum (`kind`: the field's type in the schema)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, value[0] if value else "x"]
    if isinstance(value, dict):
        return {**value, "x": 1}
    return "x" if str in typing.get_args(kind) else 7  # None: a value of the Optional's type


def with_value(s, path: str, value):
    """A copy of the settings with the field at `path` set to `value`."""
    head, _, rest = path.partition(".")
    return dataclasses.replace(s, **{head: with_value(getattr(s, head), rest, value) if rest else value})


def with_values(s, changes: dict):
    """A copy of the settings with each field path of `changes` set to its value."""
    for path, value in changes.items():
        s = with_value(s, path, value)
    return s


def perturbed(s, path: str):
    """A copy of the settings with the field at `path` changed."""
    return with_value(s, path, alternatives(s, path)[0])


UPSTREAM = {"base": [], "locate": ["base"], "ability": ["locate", "base"], "language": ["base"],
            "oracle": ["base"], "ability_full": ["base"], "cpt_all": ["base"]}


def stage_keys(s: Settings, inputs: dict[str, str] | None = None) -> dict[str, str]:
    """Every stage's key as the stages build it: its config and its inputs' keys (R(Lj) trains all
    block weights here, so it takes no mask). With `inputs` (stage -> key), each stage's inputs
    are those keys: what the stage's own config holds, whatever its inputs hold."""
    out = {"base": keys.base_artifact_key(s, torch.device("cpu"))}
    up = inputs or out
    out["locate"] = artifact_key("locate", keys.locate_config(s), {"base": up["base"]})
    out["ability"] = artifact_key("ability", keys.ability_config(s), {"mask": up["locate"]})
    out["language"] = artifact_key("language", keys.language_config(s), {"base": up["base"], "mask": None})
    for stage in ("oracle", "ability_full", "cpt_all"):
        out[stage] = artifact_key(stage, getattr(keys, f"{stage}_config")(s), {"base": up["base"]})
    return out


def _muted(fn):
    """`fn` with recording off: what the key functions read is what the key holds, not a read of the stage."""
    def call(*args, **kwargs):
        global READS
        held, READS = READS, None
        try:
            return fn(*args, **kwargs)
        finally:
            READS = held
    return call


class Job:
    """The stages of one tiny job, each run on demand from an empty cache with any settings, on
    the base, corpora and mask of the job's own settings."""

    def __init__(self, tmp, s: Settings):
        self.tmp, self.s, self.world, self.runs = tmp, s, world.generate(s.world), 0
        self.reads: dict[str, set[str]] = {}
        self.model, self.tokenizer, self.base_key = self._call(base.base_model, s, self.reads.setdefault("base", set()))
        self.corpora = load_corpora(s, self.world, self.tokenizer)
        self.mask_key = stage_keys(s)["locate"]
        self.out, self.keys = {"base": self._weights(self.model)}, {"base": self.base_key}
        for stage in STAGES[1:]:
            self.out[stage], self.keys[stage] = self.run(stage, s, self.reads.setdefault(stage, set()))

    def _call(self, fn, s: Settings, reads: set[str] | None, *args):
        global READS
        self.runs += 1
        cache = ArtifactCache(self.tmp / f"run{self.runs}")
        ctx = context.Context(recording(s), cache, torch.device("cpu"), self.world)
        READS = reads
        try:
            return fn(ctx, *args)
        finally:
            READS = None

    @staticmethod
    def _weights(model) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    def run(self, stage: str, s: Settings, reads: set[str] | None = None) -> tuple[dict, str]:
        """(the stage's artifact: tensors by name, the key it is cached under) with settings `s`."""
        if stage == "base":
            model, _, key = self._call(base.base_model, s, reads)
            return self._weights(model), key
        a = Artifacts({"mask": self.out["locate"]} if "locate" in self.out else {},
                      {"base": self.base_key, "locate": self.mask_key})
        self._call(run_stage, s, reads, DECLARED[stage], self.model, self.tokenizer, self.corpora, a)
        main, *others = DECLARED[stage].yields  # the ability stage's θ_A beside R(A)
        return {**a.get(main), **{(o, n): v for o in others for n, v in a.get(o).items()}}, a.keys[stage]


STAGES = list(UPSTREAM)


def same(a: dict, b: dict) -> bool:
    """Two artifacts bit for bit (a value is a tensor or a tuple of tensors)."""
    def parts(value) -> tuple:
        return value if isinstance(value, tuple) else (value,)

    return a.keys() == b.keys() and all(
        len(parts(a[k])) == len(parts(b[k])) and all(map(torch.equal, parts(a[k]), parts(b[k]))) for k in a)


def alternatives(s, path: str) -> list:
    """Other values of the field at `path`: every other member of an enum, else one changed value."""
    *parents, name = path.split(".")
    owner = s
    for parent in parents:
        owner = getattr(owner, parent)
    kind = typing.get_type_hints(type(owner), vars(settings))[name]
    value = getattr(owner, name)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):  # loaded settings hold the value as a str
        return [m.value for m in kind if m.value != value]
    return [changed(value, kind)]


def valid(s: Settings) -> bool:
    """Whether launch.py would run these settings (a change it rejects never reaches a stage)."""
    try:
        validate(s)
    except ConfigError:
        return False
    return True


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    s = load(*SMALL, "model.scratch.pretrain_tokens=64", "train.batch_size=2", "train.seq_len=16",
             "locate.tokens=64", "extract.tokens=64", "language.tokens=64", "oracle.tokens=64", "report.seeds=1",
             f"paths.cache_dir={tmp_path_factory.mktemp('keys')}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keys, "base_artifact_key", _muted(keys.base_artifact_key))
        for name, stage in DECLARED.items():
            patch.setitem(DECLARED, name, dataclasses.replace(stage, config=_muted(stage.config)))
        yield Job(tmp_path_factory.mktemp("runs"), s)


def test_a_field_a_stage_reads_changes_its_own_key_or_leaves_its_artifact_bit_identical(job):
    """A stage that read a field whose change leaves its key alone would serve a stale artifact
    from the cache; every such change is made here and the stage recomputed. The key is the
    stage's own (its inputs' keys held): a stage does not rely on an upstream key for what it reads."""
    before, stale = stage_keys(job.s), []
    for stage in STAGES:
        for path in sorted(f for f in job.reads[stage] if not f.startswith(DATA)):
            for value in alternatives(job.s, path):
                s = with_value(job.s, path, value)
                if not valid(s) or stage_keys(s, inputs=before)[stage] != before[stage]:
                    continue
                try:
                    if not same(job.run(stage, s)[0], job.out[stage]):
                        stale.append(f"{stage}: {path}={value!r}")
                except Exception as err:  # noqa: BLE001 (a valid change that breaks the stage is read too)
                    stale.append(f"{stage}: {path}={value!r} ({err})")
    assert job.reads["ability"] >= {"seed", "extract.lr", "extract.optimizer", "train.batch_size"}  # the trace works
    assert not stale, stale


def test_each_stage_caches_under_the_key_of_its_own_config_and_inputs(job):
    """The keys the two tests here reason about (`stage_keys`: each stage's config function and its
    inputs' keys) are the keys the stages store their artifacts under; key-row R(Lj) takes the
    mask's key too. Each stage runs here (not only in the fixture) so that mutmut maps it to this test."""
    assert job.keys == stage_keys(job.s) == {stage: job.run(stage, job.s)[1] for stage in STAGES}
    key_rows = with_value(job.s, "language.train", "key_neurons")
    assert job.run("language", key_rows)[1] == artifact_key(
        "language", keys.language_config(key_rows), {"base": job.base_key, "mask": job.mask_key})


def test_a_field_no_stage_upstream_reads_leaves_the_key_alone(job):
    before = stage_keys(job.s)
    extra = {}
    for stage in STAGES:
        read = set().union(job.reads[stage], *(job.reads[up] for up in UPSTREAM[stage]))
        unread = [f for f in leaves(job.s) if f not in read and not f.startswith(DATA)]
        extra[stage] = sorted(f for f in unread if stage_keys(perturbed(job.s, f))[stage] != before[stage])
    assert not any(extra.values()), extra


def test_the_evaluation_key_holds_the_benchmark_it_reads(tmp_path):
    """Each benchmark source enters the evaluation key by what it reads and nothing else: the world's
    problems (its fingerprint), the bytes of the local MGSM files, for the hub its task names (in
    `eval`); the held-out text only when it is evaluated; the lm-eval version always."""
    def key(s):
        return keys.evaluate_config(s)

    def other_world(s):
        return with_value(s, "world.seed", s.world.seed + 1)

    s = with_value(load("report.seeds=1"), "eval.heldout", False)  # the built-in world's arithmetic
    assert key(other_world(s)) != key(s)
    assert key(with_value(s, "eval.num_fewshot", s.eval.num_fewshot + 1)) != key(s)
    assert key(s)["lm_eval"] == importlib.metadata.version("lm_eval")
    for name in ("mgsm/mgsm_sw.tsv", "mgsm/exemplars.json"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("a\t1\n")
    mgsm = with_values(s, {"eval.benchmark": "mgsm", "eval.langs": ["sw"]})
    local = with_values(mgsm, {"eval.source": "local", "paths.data_dir": str(tmp_path)})
    hub = with_value(local, "eval.source", "hub")
    before, hub_before = key(local), key(hub)
    (tmp_path / "mgsm" / "mgsm_sw.tsv").write_text("a\t2\n")  # one answer changed
    assert key(local) != before and key(hub) == hub_before  # the hub run reads no local file
    assert key(other_world(local)) == key(local)  # the world's problems are not read either
    assert key(with_value(s, "train.heldout_fraction", 0.5)) == key(s)
    held = with_value(s, "eval.heldout", True)  # the held-out text: its corpus and split are read
    assert key(with_value(held, "train.heldout_fraction", 0.5)) != key(held)
    assert key(with_value(held, "lang.corpus.path", "other")) != key(held)
    assert key(with_value(s, "lang.corpus.path", "other")) == key(s)


def test_the_text_a_stage_reads_enters_its_key_when_it_is_read_and_only_then(tmp_path):
    """The data fields are left out of the two tests above (they enter by content): each one,
    changed, changes the key of a stage that reads that text and of no other setting of it."""
    s = with_value(load("report.seeds=1"), "eval.heldout", False)
    general = ("source_lang.corpus.path", "general:xx")  # the English general text (θ_G, contrast)

    def moves(config, settings, path, value):
        return config(with_value(settings, path, value)) != config(settings)

    assert moves(keys.ability_config, s, *general)
    assert not moves(keys.ability_config, with_value(s, "extract.general", "none"), *general)
    assert moves(keys.locate_config, with_value(s, "locate.contrast", True), *general)
    assert not moves(keys.locate_config, with_value(s, "locate.contrast", False), *general)
    split = ("train.heldout_fraction", 0.5)  # which general documents are held out of training
    assert moves(keys.locate_config, with_value(s, "locate.contrast", True), *split)
    assert not moves(keys.locate_config, with_value(s, "locate.contrast", False), *split)
    weight_change = with_value(s, "locate.score", "weight_change")
    assert moves(keys.locate_config, weight_change, "extract.full_lr", 0.5)
    assert not moves(keys.locate_config, s, "extract.full_lr", 0.5)  # grad scores: no CPT
    # a scratch base: the world's text, or the tokenizer files' bytes and the ability corpus
    assert moves(keys.base_config, with_value(s, "model.scratch.corpus", "world"), "world.seed", 99)
    files = []
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(name)
        files.append(str(tmp_path / name))
    # a world base is built from the world's own text, whatever corpus the ability stage reads
    world_base = with_values(s, {"model.scratch.corpus": "world", "ability.corpus.source": "local",
                                 "ability.corpus.path": files[0]})
    assert moves(keys.base_config, world_base, "world.seed", 99)
    from_files = with_values(s, {"model.scratch.corpus": "files", "model.scratch.tokenizer_files": files})
    before = keys.base_config(from_files)
    (tmp_path / "b.txt").write_text("changed")
    assert keys.base_config(from_files) != before
    assert moves(keys.base_config, from_files, "ability.corpus.path", "ability:xx")
    pretrained = with_value(s, "model.scratch.pretrain_tokens", 64)
    assert moves(keys.base_config, pretrained, "train.warmup_ratio", 0.5)
    assert not moves(keys.base_config, with_value(s, "model.scratch.pretrain_tokens", 0), "train.warmup_ratio", 0.5)
