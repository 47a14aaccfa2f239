"""The typed settings of a job (the Hydra schema), the resolvers `conf/` uses, and the facts
derived from the settings alone. Every other layer reads it; it imports nothing of maet."""
