"""Reporting and tracking: a job's summary (`metrics.json`) and table, a sweep's report and
comparisons, plots, W&B runs and dashboards, the coefficient search, and `make results`."""
