"""The job engine: the job context and corpora, cache keys, stage adapters, the resident base
model, and the pipeline that runs locate -> extract -> transfer -> evaluate."""
