"""torch CPU threads for the built-in world's model: one thread vs torch's default (one per core).

The world's 0.67M-parameter Llama (`model=world_tiny`, batch 16 x 64 tokens as in
`experiment=world`) trains with `maet.extract.train_full` for `--steps` steps at each setting,
interleaved `--repeats` times in one process; prints tokens/s of both and the ratio. The answer
decides the `threads` key of `conf/experiment/world.yaml` (it depends on the machine and on
what else runs on it: measure on yours).

    python -m benchmarks.threads [--steps 40 --repeats 3]
"""

from __future__ import annotations

import argparse
import os

import torch

from benchmarks.common import machine, save_results
from maet import extract
from maet.model import build_scratch_model
from maet.settings import ScratchSettings, TrainSettings

WORLD_MODEL = ScratchSettings(vocab_size=1024, hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4,
                              num_kv_heads=2, max_position_embeddings=256)
BATCH, SEQ = 16, 64


class _Tokenizer:
    """What build_scratch_model reads of a tokenizer."""
    vocab_size, bos_token_id, eos_token_id, pad_token_id = 1024, 0, 1, 2

    def __len__(self) -> int:
        return self.vocab_size


def tokens_per_second(model, threads: int, steps: int) -> float:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 1024, (BATCH, SEQ), generator=g) for _ in range(steps)]
    names = [n for n, _ in model.named_parameters()]
    t = TrainSettings(batch_size=BATCH, seq_len=SEQ)  # the loop's defaults
    _, stats = extract.train_full(model, names, data, steps, 1e-3, f"{threads} thread(s)",
                                  warmup_ratio=t.warmup_ratio, weight_decay=t.weight_decay, grad_clip=t.grad_clip)
    return stats.tokens / stats.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    machine_line = machine()
    default = torch.get_num_threads()
    model = build_scratch_model(WORLD_MODEL, _Tokenizer(), 0)
    one, many = [], []
    for _ in range(args.repeats):
        one.append(tokens_per_second(model, 1, args.steps))
        many.append(tokens_per_second(model, default, args.steps))
    torch.set_num_threads(default)
    best_one, best_many = max(one), max(many)
    print(f"{machine_line}\nworld model training, {args.steps} steps of {BATCH}x{SEQ} tokens, best of {args.repeats}:")
    print(f"  1 thread: {best_one:,.0f} tok/s   {default} threads (torch's default): {best_many:,.0f} tok/s   "
          f"ratio 1 / default = {best_one / best_many:.2f}")
    save_results("threads", {"one_thread_tok_s": one, "default_threads": default, "default_tok_s": many,
                             "ratio_one_vs_default": best_one / best_many, "cpu_count": os.cpu_count()}, machine_line)


if __name__ == "__main__":
    main()
