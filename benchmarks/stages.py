"""Locate and key-neuron training against the plain training step a user would write instead.

On one randomly initialised Llama (size set by flags) and the same random token batches:

- **locate**: `maet.method.locate.grad_scores` (the `grad` score) vs a plain forward + backward pass of
  the same model over the same tokens (every parameter requires grad): tokens/s of both; target
  grad / plain time ≤ 1.2.
- **key-neuron training** at `--ratio` (0.05): `maet.method.extract.train_rows` vs full fine-tuning of
  every parameter with the same loop (`maet.method.extract.train_full`): optimizer-state bytes (read
  from the AdamW state after the last step) and seconds per step; targets ≤ 10% and ≤ 1.0x.

    python -m benchmarks.stages [--hidden 256 --layers 4 --vocab 4000 --batch 8 --seq 128 --threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.common import machine, save_results, verdict
from maet.method import extract, locate
from maet.models.model import block_linear_names

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_model(hidden: int, layers: int, vocab: int) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 128),
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def batches(n: int, vocab: int, batch: int, seq: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, seq), generator=g) for _ in range(n)]


def plain_forward_backward(model, data: list[torch.Tensor]) -> float:
    """Seconds of forward + backward over `data`, every parameter requiring grad (no update)."""
    model.eval()
    model.requires_grad_(True)
    start = time.perf_counter()
    for batch in data:
        model(input_ids=batch, labels=batch).loss.backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


def grad_score(model, data: list[torch.Tensor], names: list[str]) -> float:
    start = time.perf_counter()
    locate.grad_scores(model, data, names, total=len(data))
    return time.perf_counter() - start


def bench_locate(model, data, names, repeats: int) -> dict:
    plain_forward_backward(model, data[:1]), grad_score(model, data[:1], names)  # warm-up
    plain, grad = [], []
    for _ in range(repeats):  # interleaved, best of each (the machine is shared)
        plain.append(plain_forward_backward(model, data))
        grad.append(grad_score(model, data, names))
    tokens = sum(b.numel() for b in data)
    return {"tokens": tokens, "plain_seconds": min(plain), "grad_seconds": min(grad),
            "plain_tok_s": tokens / min(plain), "grad_tok_s": tokens / min(grad), "ratio": min(grad) / min(plain)}


def bench_train(model, data, names, ratio: float, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    shapes = {n: p.shape for n, p in model.named_parameters() if n in names}
    mask = locate.select_rows({n: torch.rand(s[0], generator=g) for n, s in shapes.items()}, ratio, "tensor")
    loop = {"warmup_ratio": 0.0, "weight_decay": 0.0, "grad_clip": 1.0}  # train.* defaults, no warmup
    everything = [n for n, _ in model.named_parameters()]
    rows_runs, full_runs = [], []
    for _ in range(repeats):
        rows_runs.append(extract.train_rows(model, mask, data, len(data), 1e-3, "key neurons", **loop)[1])
        full_runs.append(extract.train_full(model, everything, data, len(data), 1e-3, "full fine-tuning", **loop)[1])
    rows, full = min(rows_runs, key=lambda s: s.seconds), min(full_runs, key=lambda s: s.seconds)
    trainable = sum(len(r) * shapes[n][1] for n, r in mask.items())
    return {"ratio": ratio, "trainable_key_neurons": trainable, "trainable_full": model.num_parameters(),
            "steps": len(data), "key_neurons_optimizer_bytes": rows.optimizer_bytes, "full_optimizer_bytes": full.optimizer_bytes,
            "optimizer_ratio": rows.optimizer_bytes / full.optimizer_bytes,
            "key_neurons_step_s": rows.seconds / rows.steps, "full_step_s": full.seconds / full.steps,
            "step_ratio": (rows.seconds / rows.steps) / (full.seconds / full.steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="batches per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default); 1 keeps a shared machine's noise down")
    parser.add_argument("--ratio", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurements of each (the best is reported)")
    args = parser.parse_args()
    machine_line = machine()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = make_model(args.hidden, args.layers, args.vocab)
    names = block_linear_names(model, MODULES)
    data = batches(args.steps, args.vocab, args.batch, args.seq)
    loc = bench_locate(model, data, names, args.repeats)
    tr = bench_train(model, data, names, args.ratio, args.repeats)
    print(f"\nstages on a {model.num_parameters() / 1e6:.1f}M-parameter Llama, {args.steps} batches of "
          f"{args.batch}x{args.seq} tokens, {torch.get_num_threads()} thread(s) — {machine_line}")
    print(f"locate (grad): {loc['grad_tok_s']:,.0f} tok/s vs plain forward+backward {loc['plain_tok_s']:,.0f} tok/s; "
          f"cost ratio {loc['ratio']:.2f} (target ≤ 1.2: {verdict(loc['ratio'] <= 1.2)})")
    print(f"key-neuron training (ratio {args.ratio}): optimizer state {tr['key_neurons_optimizer_bytes'] / 2**20:.2f} MiB vs "
          f"{tr['full_optimizer_bytes'] / 2**20:.1f} MiB for full fine-tuning (ratio {tr['optimizer_ratio']:.3f}, target ≤ 0.10: "
          f"{verdict(tr['optimizer_ratio'] <= 0.10)}); step {1e3 * tr['key_neurons_step_s']:.0f} ms vs "
          f"{1e3 * tr['full_step_s']:.0f} ms (ratio {tr['step_ratio']:.2f}, target ≤ 1.0: {verdict(tr['step_ratio'] <= 1.0)})")
    save_results("stages", {"args": vars(args), "params": model.num_parameters(), "locate": loc, "train": tr}, machine_line)


if __name__ == "__main__":
    main()
