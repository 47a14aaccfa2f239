"""The paper's method: locate key neurons (stage 1), the one training loop, extract R(A) and
R(Lj) (stage 2), the transfer rule (stage 3), the one merge arithmetic, the registry of methods
and baselines, and the regime measures. Pure functions of tensors and plain values."""
