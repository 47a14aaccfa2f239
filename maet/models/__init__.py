"""Models and their backends: scratch models, hub / local / GGUF loading, tokenizers, parameter
names by role, and lm-eval's model backends (hf | vllm)."""
