"""Peak memory of one training step where the weights dominate, and what bf16 training keeps of
the fp32 delta.

**Memory**: a Llama of `--hidden 768 --layers 8 --vocab 8000` (56M parameters, fp32) and one
sequence of `--seq 64` random tokens, so that weights, not activations, dominate. Each case runs
in a fresh process (`--case`); its peak is the process's resident high-water mark (Linux
`VmHWM`, reset through `/proc/self/clear_refs` once the model is built), so every peak includes
the interpreter, torch and the weights:

- `frozen`: forward + backward with every weight frozen (gradients of the activations only:
  the floor of any training step);
- `rows`: one `maet.method.extract.train_rows` step at `--ratio` 0.05 (forward, backward, clip, AdamW);
- `rows_upfront`: the same step with every masked weight patched up front (a full-size copy
  and gradient per weight: how maet trained key rows before `PatchedRowsLinear`);
- `full`: one `maet.method.extract.train_full` step of every parameter (with its CPU copy of θ0).

Target: `rows` / `frozen` ≤ 1.15.

**Sharded training state**: the bytes one process holds for full-parameter training (trained
weights = fp32 masters, their gradients, AdamW's two moments; θ0's resident copy aside) after one
step of `maet.method.extract.train_full`'s loop, under FSDP2 on `--processes` gloo processes
(`maet.runtime.sharded`, rank 0's local shards) over the same figure on one unsharded process.
Target at 2 processes: ≤ 0.55.

**bf16**: a small Llama (`--bf16-hidden 128`, weights of std 0.02) trained in bf16 at lr 2e-5
for 50 steps, against the same weights in fp32: norm of the bf16 delta ÷ norm of the fp32
delta, with fp32 master weights (target ≥ 0.95) and without (AdamW on the bf16 weights, as
maet did before), and for key-row training (lr 1e-3).

    python -m benchmarks.memory [--hidden 768 --layers 8 --vocab 8000 --seq 64 --ratio 0.05]

The last line printed is a JSON object (`key_rows_peak_vs_frozen`, `bf16_delta_retained`,
`sharded_state_vs_unsharded`, ...).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.common import OFFLINE, ROOT, machine, save_results, verdict

CASES = ("frozen", "rows", "rows_upfront", "full")
LOOP = {"warmup_ratio": 0.0, "weight_decay": 0.0, "grad_clip": 1.0}
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_model(hidden: int, layers: int, vocab: int, intermediate: int | None = None) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 192), tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def random_mask(model, ratio: float) -> dict[str, torch.Tensor]:
    from maet.method import locate
    from maet.models.model import block_linear_names

    names = block_linear_names(model, MODULES)
    shapes = {n: p.shape for n, p in model.named_parameters() if n in names}
    return locate.select_rows(locate.random_scores(shapes, 0), ratio, "tensor")


def rss_mib(field: str = "VmRSS") -> float:
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith(field + ":")) / 1024


def step(case: str, model, batch: torch.Tensor, ratio: float) -> None:
    """One training step of `case` on `batch` `[1, seq]`."""
    from maet.method import extract

    if case == "frozen":
        model.train()
        model.requires_grad_(False)
        embeds = model.get_input_embeddings()(batch).detach().requires_grad_()
        model(inputs_embeds=embeds, labels=batch).loss.backward()
    elif case in ("rows", "rows_upfront"):
        if case == "rows_upfront":
            extract.lean_linears = lambda model, names: {}  # this process only: patch every weight up front
        extract.train_rows(model, random_mask(model, ratio), [batch], 1, 1e-3, case, **LOOP)
    else:
        names = [n for n, _ in model.named_parameters()]
        extract.train_full(model, names, [batch], 1, 1e-3, case, **LOOP)


def measure_case(args) -> dict:
    """In this (fresh) process: build the model, reset the high-water mark, run one step."""
    from maet.engine.context import stage_peak_memory

    torch.set_num_threads(args.threads)
    model = make_model(args.hidden, args.layers, args.vocab)
    batch = torch.randint(0, args.vocab, (1, args.seq), generator=torch.Generator().manual_seed(0))
    stage_peak_memory()  # resets VmHWM to the current RSS
    before = rss_mib()
    step(args.case, model, batch, args.ratio)
    peak, _ = stage_peak_memory()
    return {"case": args.case, "params": model.num_parameters(), "rss_before_mib": before, "peak_mib": peak,
            "weights_mib": sum(p.nbytes for p in model.parameters()) / 2**20}


def run_case(case: str, args) -> dict:
    argv = [sys.executable, "-m", "benchmarks.memory", "--case", case, "--hidden", args.hidden, "--layers",
            args.layers, "--vocab", args.vocab, "--seq", args.seq, "--ratio", args.ratio, "--threads", args.threads]
    proc = subprocess.run(list(map(str, argv)), cwd=ROOT, env={**__import__("os").environ, **OFFLINE},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def training_state_bytes(params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> int:
    """This process's bytes of trained weights, their gradients and the optimizer state (shards'
    local tensors under FSDP2)."""
    from maet.method.train import local_tensor, optimizer_bytes

    weights = sum(local_tensor(p).nbytes for p in params)
    grads = sum(local_tensor(p.grad).nbytes for p in params if p.grad is not None)
    return weights + grads + optimizer_bytes(optimizer)


def state_after_one_step(hidden: int, layers: int, vocab: int, seq: int, sharded: bool) -> dict:
    """(In this process, one of the torchrun group when `sharded`) one full-parameter AdamW step of
    every block weight, its gradients kept: the training state's bytes on this process."""
    from maet.method.train import make_optimizer
    from maet.models.model import block_param_names
    from maet.runtime import sharded as fsdp

    model = make_model(hidden, layers, vocab)
    names = block_param_names(model)
    if sharded:
        torch.distributed.init_process_group("gloo")
        model = fsdp.sharded_copy(model, names)
    model.requires_grad_(False)
    params = dict(model.named_parameters())
    trained = [params[n].requires_grad_() for n in names]
    optimizer = make_optimizer("adamw", trained, 1e-3, 0.0, sharded=sharded)
    batch = torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(0))
    model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()
    rank = torch.distributed.get_rank() if sharded else 0
    return {"rank": rank, "bytes": training_state_bytes(trained, optimizer)}


def sharded_state(args) -> dict:
    """Rank 0's training-state bytes under FSDP2 on `args.processes` processes and one unsharded process's."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", args.processes,
            "-m", "benchmarks.memory", "--case", "sharded", "--hidden", args.hidden, "--layers", args.layers,
            "--vocab", args.vocab, "--seq", args.seq, "--threads", args.threads]
    proc = subprocess.run(list(map(str, argv)), cwd=ROOT, env={**__import__("os").environ, **OFFLINE},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(f"the sharded case failed:\n{proc.stderr[-3000:]}")
    ranks = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"rank"')]
    one = state_after_one_step(args.hidden, args.layers, args.vocab, args.seq, sharded=False)["bytes"]
    rank0 = next(r["bytes"] for r in ranks if r["rank"] == 0)
    return {"processes": args.processes, "unsharded_bytes": one, "sharded_rank0_bytes": rank0,
            "sharded_bytes_per_rank": sorted((r["rank"], r["bytes"]) for r in ranks), "ratio": rank0 / one}


def norm(delta: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in delta.values())))


def cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum((a[n].double() * b[n].double()).sum() for n in a)) / (norm(a) * norm(b))


def bf16_retention(hidden: int, steps: int, seq: int) -> dict:
    """Norm ratios (and cosines) of bf16 deltas to the fp32 delta from the same weights."""
    from maet.method import extract

    bf16 = make_model(hidden, 2, 1000, intermediate=2 * hidden).to(torch.bfloat16)
    fp32 = LlamaForCausalLM(bf16.config)
    fp32.load_state_dict({n: p.float() for n, p in bf16.state_dict().items()})
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, 1000, (4, seq), generator=g) for _ in range(steps)]
    names = [n for n, _ in bf16.named_parameters() if ".layers." in n]
    ref, _ = extract.train_full(fp32, names, data, steps, 2e-5, "fp32", **LOOP)
    master, _ = extract.train_full(bf16, names, data, steps, 2e-5, "bf16, fp32 master", **LOOP)
    plain, _ = extract.train_full(bf16, names, data, steps, 2e-5, "bf16, no master", fp32_master=False, **LOOP)
    mask = random_mask(fp32, 0.05)
    rows32, _ = extract.train_rows(fp32, mask, data, steps, 1e-3, "rows fp32", **LOOP)
    rows16, _ = extract.train_rows(bf16, mask, data, steps, 1e-3, "rows bf16", **LOOP)
    rows32, rows16 = ({n: v for n, (_, v) in d.items()} for d in (rows32, rows16))
    return {"params": bf16.num_parameters(), "steps": steps, "lr": 2e-5, "rows_lr": 1e-3,
            "full_master_retained": norm(master) / norm(ref), "full_master_cosine": cosine(master, ref),
            "full_no_master_retained": norm(plain) / norm(ref), "full_no_master_cosine": cosine(plain, ref),
            "rows_retained": norm(rows16) / norm(rows32), "rows_cosine": cosine(rows16, rows32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--seq", type=int, default=64, help="tokens of the one sequence of the memory cases")
    parser.add_argument("--ratio", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bf16-hidden", type=int, default=128)
    parser.add_argument("--bf16-steps", type=int, default=50)
    parser.add_argument("--processes", type=int, default=2, help="processes of the sharded training-state case")
    parser.add_argument("--case", choices=(*CASES, "sharded"), help="internal: measure one case in this process")
    args = parser.parse_args()
    if args.case == "sharded":
        torch.set_num_threads(args.threads)
        print(json.dumps(state_after_one_step(args.hidden, args.layers, args.vocab, args.seq, sharded=True)))
        return
    if args.case:
        print(json.dumps(measure_case(args)))
        return
    machine_line = machine()
    cases = {case: run_case(case, args) for case in CASES}
    torch.set_num_threads(args.threads)
    bf16 = bf16_retention(args.bf16_hidden, args.bf16_steps, args.seq)
    shard = sharded_state(args)
    frozen = cases["frozen"]["peak_mib"]
    summary = {"key_rows_peak_vs_frozen": cases["rows"]["peak_mib"] / frozen,
               "key_rows_upfront_peak_vs_frozen": cases["rows_upfront"]["peak_mib"] / frozen,
               "full_peak_vs_frozen": cases["full"]["peak_mib"] / frozen,
               "bf16_delta_retained": bf16["full_master_retained"],
               "bf16_delta_retained_without_master": bf16["full_no_master_retained"],
               "bf16_rows_delta_retained": bf16["rows_retained"], "sharded_state_vs_unsharded": shard["ratio"]}
    print(f"{machine_line}\npeak memory of one step, {cases['frozen']['params'] / 1e6:.0f}M-parameter Llama (fp32), "
          f"1x{args.seq} tokens, {args.threads} thread(s):")
    for case, r in cases.items():
        print(f"  {case:13s} peak {r['peak_mib']:7.0f} MiB ({r['peak_mib'] - r['rss_before_mib']:+6.0f} over the "
              f"{r['rss_before_mib']:.0f} MiB before the step)  ÷ frozen {r['peak_mib'] / frozen:.2f}")
    print(f"key rows ÷ frozen {summary['key_rows_peak_vs_frozen']:.3f} (target ≤ 1.15: "
          f"{verdict(summary['key_rows_peak_vs_frozen'] <= 1.15)})")
    print(f"bf16 delta retained, {bf16['steps']} steps at lr {bf16['lr']}: {bf16['full_master_retained']:.3f} with fp32 "
          f"master weights (cos {bf16['full_master_cosine']:.4f}; target ≥ 0.95: "
          f"{verdict(bf16['full_master_retained'] >= 0.95)}), {bf16['full_no_master_retained']:.3f} without "
          f"(cos {bf16['full_no_master_cosine']:.3f}); key rows {bf16['rows_retained']:.3f} (cos {bf16['rows_cosine']:.4f})")
    print(f"full-parameter training state per process (weights + gradients + AdamW), FSDP2 on {shard['processes']} "
          f"processes ÷ unsharded: {shard['ratio']:.3f} ({shard['sharded_rank0_bytes'] / 2**20:.0f} of "
          f"{shard['unsharded_bytes'] / 2**20:.0f} MiB on rank 0; target ≤ 0.55 at 2: {verdict(shard['ratio'] <= 0.55)})")
    save_results("memory", {"args": vars(args), "cases": cases, "bf16": bf16, "sharded": shard, **summary},
                 machine_line)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
