"""Every cached training stage declared once (`registry`): name, artifacts, inputs, cache key
(`keys`), producer and reference model; the stages of METHOD.md (`builtin`, registered on import)
and how a stage trains from the settings (`training`)."""

from maet.stages import builtin  # noqa: F401  (registers the built-in stages)
