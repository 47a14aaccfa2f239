"""How a job runs: progress bars, the quiet console, and one job on N processes (the hooks
the training loop and the evaluation call; no-ops on one process)."""
