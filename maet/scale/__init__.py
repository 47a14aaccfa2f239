"""Scale-out outputs: the out-of-core streaming merge and saving / pushing merged checkpoints."""
