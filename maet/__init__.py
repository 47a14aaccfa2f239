"""MAET: Multi-lingual Ability Extraction and Transfer.

The subpackages by role, bottom to top. Each imports only its own layer and the layers below it
(`tests/test_house.py` checks every import, deferred ones included):

    schema      the typed settings of a job, conf/'s resolvers, facts derived from settings
    store       the content-addressed artifact cache
    runtime     progress bars, the quiet console, live training curves, one job on N processes
    method      the paper's method: locate, the training loop, extract, transfer, merging, registry
    world       the built-in world (languages, corpora, benchmark from seeded rules)
    corpora     text corpora: loading, framing, packing; fetching the data
    models      scratch / hub / local / GGUF models, tokenizers, lm-eval backends
    evaluation  lm-eval tasks and output files; intervals, paired differences, Holm
    stages      every cached training stage declared once: artifacts, inputs, cache key, producer
    reporting   a job's summary and metrics.json, sweep reports, plots, W&B, coefficient search
    scale       the out-of-core streaming merge; saving and pushing merged checkpoints
    config      the command-line edge: range and cross-field checks, sweep checks, --help
    engine      the job engine: context, the stage runner, the resident base, the pipeline
"""

LAYERS = ("schema", "store", "runtime", "method", "world", "corpora", "models", "evaluation", "stages",
          "reporting", "scale", "config", "engine")
