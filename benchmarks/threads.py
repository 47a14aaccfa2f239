"""torch CPU threads for the built-in world's model, alone and with a second job on the same cores.

The world's 0.67M-parameter Llama (`model=world_tiny`, batch 16 x 64 tokens as in
`experiment=world`) trains with `maet.method.extract.train_full` for `--steps` steps in a fresh process
per measurement, at three settings: one thread; torch's default (one per core) with OpenMP's
default waiting (idle threads spin before they sleep); torch's default with
`OMP_WAIT_POLICY=PASSIVE` (idle threads sleep at once; what `launch.py` sets unless the
environment says otherwise). Each setting runs alone, then as two identical processes started
together (a parallel launcher's two jobs); `--repeats` rounds interleave the settings. Prints
tokens/s per process of each; the answer decides the `threads` default and the wait policy
(it depends on the machine and on what else runs on it: measure on yours).

    python -m benchmarks.threads [--steps 20 --repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.common import OFFLINE, ROOT, machine, save_results

BATCH, SEQ = 16, 64
# name -> (threads: 0 for torch's default, OMP_WAIT_POLICY or None for OpenMP's default)
SETTINGS = {"one_thread": (1, None), "default_threads": (0, None), "default_threads_passive": (0, "PASSIVE")}


def child(threads: int, steps: int, start_at: float) -> None:
    """In a fresh process: build the world model, wait for `start_at`, train, print tok/s."""
    import torch

    from maet.method import extract
    from maet.models.model import build_scratch_model
    from maet.schema.settings import ScratchSettings, TrainSettings

    if threads:
        torch.set_num_threads(threads)
    arch = ScratchSettings(vocab_size=1024, hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4,
                           num_kv_heads=2, max_position_embeddings=256)

    class Tokenizer:  # what build_scratch_model reads of a tokenizer
        vocab_size, bos_token_id, eos_token_id, pad_token_id = 1024, 0, 1, 2

        def __len__(self) -> int:
            return self.vocab_size

    model = build_scratch_model(arch, Tokenizer(), 0)
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 1024, (BATCH, SEQ), generator=g) for _ in range(steps)]
    names = [n for n, _ in model.named_parameters()]
    t = TrainSettings(batch_size=BATCH, seq_len=SEQ)  # the loop's defaults
    time.sleep(max(0.0, start_at - time.time()))
    _, stats = extract.train_full(model, names, data, steps, 1e-3, "threads", warmup_ratio=t.warmup_ratio,
                                  weight_decay=t.weight_decay, grad_clip=t.grad_clip)
    print(json.dumps({"tok_s": stats.tokens / stats.seconds, "threads": torch.get_num_threads()}))


def run(setting: str, processes: int, steps: int) -> list[float]:
    """tok/s of each of `processes` identical children started together at `setting`."""
    threads, policy = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | OFFLINE
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    start_at = time.time() + 10  # after every child's imports and model build
    argv = [sys.executable, "-m", "benchmarks.threads", "--child", str(threads), "--steps", str(steps),
            "--start-at", str(start_at)]
    procs = [subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(processes)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{setting}: a child failed")
    return [json.loads(out.strip().splitlines()[-1])["tok_s"] for out in outs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", type=int, help="internal: train in this process with this many threads (0: default)")
    parser.add_argument("--start-at", type=float, default=0.0, help="internal: wall-clock time to start training")
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.steps, args.start_at)
        return
    machine_line = machine()
    alone = {s: [] for s in SETTINGS}
    paired = {s: [] for s in SETTINGS}  # per round: the mean tok/s of the two processes
    for _ in range(args.repeats):
        for setting in SETTINGS:
            alone[setting] += run(setting, 1, args.steps)
            pair = run(setting, 2, args.steps)
            paired[setting].append(sum(pair) / 2)
    best = {s: (max(alone[s]), max(paired[s])) for s in SETTINGS}
    print(f"{machine_line}\nworld model training, {args.steps} steps of {BATCH}x{SEQ} tokens, best of {args.repeats}, "
          f"tok/s per process (alone | two processes on the same cores):")
    for s, (one, two) in best.items():
        print(f"  {s:24s} {one:8,.0f} | {two:8,.0f}")
    save_results("threads", {"alone_tok_s": alone, "paired_tok_s": paired, "cpu_count": os.cpu_count(),
                             "steps": args.steps,
                             "ratio_one_vs_default": best["one_thread"][0] / best["default_threads"][0],
                             "paired_ratio_one_vs_default": best["one_thread"][1] / best["default_threads"][1],
                             "passive_vs_default_alone": best["default_threads_passive"][0] / best["default_threads"][0],
                             "passive_vs_default_paired": best["default_threads_passive"][1] / best["default_threads"][1]},
                 machine_line)


if __name__ == "__main__":
    main()
